// VDI helpers shared by the vdi command families: name checks, lookups, inode reads, VDI
// creation and deletion (do_vdi_create / do_vdi_delete), slot updates, VDI state and locks.
import {
  decodeVdiStates,
  LockState,
  VDI_STATE_SIZE,
  type VdiStateRecord,
} from "../core/payloads.ts";
import { vdiNameProblem } from "../core/vdi.ts";
import { Buffer } from "node:buffer";
import { NetworkError } from "../io/client.ts";
import { SdError } from "../core/errors.ts";
import { decodeInodeHeader, type InodeHeader } from "../core/inode.ts";
import { nodeString } from "../core/node.ts";
import { oidHex, SD_INODE_HEADER_SIZE, vidToDataOid, vidToVdiOid } from "../core/oid.ts";
import { fixedString, Flag, Header, Op, Res, strerror } from "../core/proto.ts";
import {
  countDataObjs,
  getVdiInfo,
  Limiter,
  readObject,
  type SlotMap,
  writeObject,
} from "../core/object-io.ts";
import { readInodeWithSlots } from "../core/vdi-io.ts";
import { countSlots, invalidSizeMessage, parseSize } from "./format.ts";
import {
  Ctx,
  err,
  Exit,
  EXIT_FAILURE,
  EXIT_MISSING,
  EXIT_SUCCESS,
  EXIT_USAGE,
  NR_BATCHED_DISCARD,
  VDI_BITMAP_SIZE,
} from "./common.ts";

// ---------------------------------------------------------------------------------------------
// VDI helpers

const MAX_NAME = 255;

/** A name for a VDI that does not exist yet: the length rule plus what the sheep refuses. */
export function checkNewVdiName(name: string): void {
  checkVdiName(name);
  const why = vdiNameProblem(name);
  if (why) {
    err(`Invalid VDI name '${name}': ${why}`);
    throw new Exit(EXIT_USAGE);
  }
}

/** pstrcpy() would silently truncate; refuse instead of acting on another name. */
export function checkVdiName(name: string, what = "VDI name"): void {
  if (Buffer.byteLength(name, "utf8") > MAX_NAME) {
    err(
      `${what} is too long (${
        Buffer.byteLength(name, "utf8")
      } bytes, the limit is ${MAX_NAME}): ${name}`,
    );
    throw new Exit(EXIT_USAGE);
  }
}

export async function findVdiName(
  c: Ctx,
  name: string,
  snapid: number,
  tag: string,
): Promise<{ result: number; vid: number }> {
  try {
    const info = await getVdiInfo(c.req, name, snapid, tag);
    return { result: Res.SUCCESS, vid: info.vid };
  } catch (e) {
    if (e instanceof SdError && !(e instanceof NetworkError)) return { result: e.code, vid: 0 };
    throw e;
  }
}

function openErrorMessage(name: string, snapid: number, tag: string, result: number): string {
  return `Failed to open VDI ${name} (snapshot id: ${snapid} snapshot tag: ${tag}): ${
    strerror(result)
  }`;
}

export interface VdiObj {
  vid: number;
  header: InodeHeader;
  raw: Buffer;
  slots: SlotMap;
}

/** read_vdi_obj(): GET_VDI_INFO + inode read; prints upstream's messages and throws Exit(1). */
export async function readVdiObj(
  c: Ctx,
  name: string,
  snapid: number,
  tag: string,
  full: boolean,
): Promise<VdiObj> {
  checkVdiName(name);
  const r = await findVdiName(c, name, snapid, tag);
  if (r.result !== Res.SUCCESS) {
    err(openErrorMessage(name, snapid, tag, r.result));
    throw new Exit(EXIT_FAILURE);
  }
  try {
    const raw = await readObject(c.req, vidToVdiOid(r.vid), SD_INODE_HEADER_SIZE, 0, true);
    const header = decodeInodeHeader(raw);
    const slots = full ? (await readInodeWithSlots(c.req, r.vid)).slots : emptySlots();
    return { vid: r.vid, header, raw, slots };
  } catch (e) {
    if (e instanceof SdError && !(e instanceof NetworkError)) {
      err(
        `Failed to read object ${oidHex(vidToVdiOid(r.vid)).replace(/^0+/, "")} ${
          strerror(e.code)
        }`,
      );
      if (snapid) err(`Failed to read a snapshot ${name}:${snapid}`);
      else if (tag) err(`Failed to read a snapshot ${name}:${tag}`);
      else err(`Failed to read a vdi ${name}`);
      throw new Exit(EXIT_FAILURE);
    }
    throw e;
  }
}

export function emptySlots(): SlotMap {
  return { flat: new Uint32Array(0), get: () => 0, *entries() {} };
}

export function isSnap(h: InodeHeader): boolean {
  return h.snapCtime !== 0n;
}

export function hex(n: number | bigint): string {
  return (typeof n === "bigint" ? BigInt.asUintN(64, n) : BigInt(n >>> 0)).toString(16);
}

/** do_vdi_create(): NEW_VDI. Returns the new vid or prints the error and returns null. */
export async function doVdiCreate(
  c: Ctx,
  name: string,
  size: bigint,
  baseVid: number,
  snapshot: boolean,
  copies: number,
  policy: number,
  storePolicy: number,
  shift: number,
): Promise<number | null> {
  const h = Header.req(Op.NEW_VDI, { flags: Flag.CMD_WRITE, dataLength: 256 });
  h.baseVdiId = baseVid;
  h.snapid = snapshot ? 1 : 0;
  h.vdiSize = size;
  h.vdiCopies = copies;
  h.vdiCopyPolicy = policy;
  h.storePolicy = storePolicy;
  h.vdiBlockSizeShift = shift;
  const rsp = await c.exec(h, fixedString(name, 256));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`Failed to create VDI ${name}: ${strerror(rsp.hdr.result)}`);
    return null;
  }
  return rsp.hdr.rspVdiId;
}

/** Writes data_vdi_id for the given (sorted) indexes, one WRITE_OBJ per run. */
export async function writeSlots(
  c: Ctx,
  vid: number,
  h: InodeHeader,
  slots: Map<number, number>,
): Promise<void> {
  const idxs = [...slots.keys()].sort((a, b) => a - b);
  let i = 0;
  const lim = new Limiter(8);
  const tasks: Promise<void>[] = [];
  while (i < idxs.length) {
    let j = i;
    while (j + 1 < idxs.length && idxs[j + 1] === idxs[j] + 1) j++;
    const start = idxs[i];
    const payload = Buffer.alloc((j - i + 1) * 4);
    for (let k = i; k <= j; k++) payload.writeUInt32LE(slots.get(idxs[k])! >>> 0, (k - i) * 4);
    tasks.push(
      lim.run(() =>
        writeObject(c.req, vidToVdiOid(vid), payload, SD_INODE_HEADER_SIZE + 4 * start, {
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
          direct: true,
        })
      ),
    );
    i = j + 1;
  }
  const rs = await Promise.allSettled(tasks);
  for (const r of rs) if (r.status === "rejected") throw r.reason;
}

interface ParsedVdi {
  vid: number;
  name: string;
  tag: string;
  snapid: number;
  header: InodeHeader;
  slots: SlotMap | null;
}

/**
 * parse_vdi(): every VDI in use and not deleted, with a non-empty name, in VID order.
 * Returns null (after printing the error) when the bitmaps cannot be read.
 */
export async function parseVdi(c: Ctx, withSlots: boolean): Promise<ParsedVdi[] | null> {
  const inuse = await c.exec(Header.req(Op.READ_VDIS, { dataLength: VDI_BITMAP_SIZE }));
  if (inuse.hdr.result !== Res.SUCCESS) {
    err(strerror(inuse.hdr.result));
    return null;
  }
  const del = await c.exec(Header.req(Op.READ_DEL_VDIS, { dataLength: VDI_BITMAP_SIZE }));
  if (del.hdr.result !== Res.SUCCESS) {
    err(strerror(del.hdr.result));
    return null;
  }
  const vids: number[] = [];
  const bm = inuse.data, dm = del.data;
  for (let byte = 0; byte < bm.length; byte++) {
    const b = bm[byte];
    if (!b) continue;
    for (let bit = 0; bit < 8; bit++) {
      if (!(b & (1 << bit))) continue;
      const nr = byte * 8 + bit;
      if (nr >> 3 < dm.length && dm[nr >> 3] & (1 << (nr & 7))) continue;
      vids.push(nr);
    }
  }
  const lim = new Limiter(16);
  const results = await Promise.all(
    vids.map((vid) =>
      lim.run(async (): Promise<ParsedVdi | null> => {
        let header: InodeHeader;
        try {
          header = decodeInodeHeader(
            await readObject(c.req, vidToVdiOid(vid), SD_INODE_HEADER_SIZE + 8, 0, true),
          );
        } catch (e) {
          if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
          err(`Failed to read object ${hex(vidToVdiOid(vid))} ${strerror(e.code)}`);
          err("Failed to read inode header");
          return null;
        }
        if (header.name === "") return null;
        let slots: SlotMap | null = null;
        if (withSlots) {
          try {
            slots = (await readInodeWithSlots(c.req, vid)).slots;
          } catch (e) {
            if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
            err("Failed to read inode");
            return null;
          }
        }
        return {
          vid: header.vdiId,
          name: header.name,
          tag: header.tag,
          snapid: isSnap(header) ? header.snapId : 0,
          header,
          slots,
        };
      })
    ),
  );
  return results.filter((x): x is ParsedVdi => x !== null);
}

/** sd_inode_stat(): slots owned by the VDI itself / by other VDIs. */
export function inodeStat(h: InodeHeader, slots: SlotMap): { my: number; cow: number } {
  if (slots.flat) return countSlots(slots.flat, h.vdiId, countDataObjs(h));
  let my = 0, cow = 0;
  for (const [, v] of slots.entries()) {
    if (v === h.vdiId) my++;
    else cow++;
  }
  return { my, cow };
}

export function parseSizeArg(s: string): bigint | null {
  const v = parseSize(s);
  if (v === null) err(invalidSizeMessage(s));
  return v;
}

/**
 * do_vdi_delete(). Upstream computes exit codes here and then discards them (always 0); ours
 * are returned: EXIT_MISSING for an unknown VDI or snapshot, EXIT_FAILURE when the cluster refuses.
 */
export async function doVdiDelete(
  c: Ctx,
  name: string,
  snapid: number,
  tag: string,
  missingOk = false,
): Promise<number> {
  const r = await findVdiName(c, name, snapid, tag);
  if (missingOk && r.result === Res.NO_VDI) return EXIT_SUCCESS;
  if (r.result !== Res.SUCCESS) {
    err(openErrorMessage(name, snapid, tag, r.result));
    return r.result === Res.NO_VDI || r.result === Res.NO_TAG ? EXIT_MISSING : EXIT_FAILURE;
  }
  const vid = r.vid;
  // Clearing the data map of a VDI a client has attached would destroy its disk under it;
  // upstream 1.0 does not look, we refuse (and change nothing).
  const states = await getVdiState(c);
  const lock = states?.find((s) => s.vid === vid && s.lockState !== LockState.UNLOCKED);
  if (lock) {
    err(
      `Failed to delete ${name}: ${strerror(Res.VDI_LOCKED)} (owner ${
        lock.lockOwner ? nodeString(lock.lockOwner) : "unknown"
      }); ` +
        `detach it first or run 'dog vdi lock unlock ${name}'`,
    );
    return EXIT_FAILURE;
  }
  let header: InodeHeader, slots: SlotMap;
  try {
    ({ header, slots } = await readInodeWithSlots(c.req, vid));
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`failed to read inode object: ${hex(vidToVdiOid(vid))}`);
    return EXIT_FAILURE;
  }
  const flat = slots.flat;
  if (flat && header.storePolicy === 0) {
    const nr = Math.min(flat.length, countDataObjs(header));
    let i = 0;
    while (i < nr) {
      while (i < nr && !flat[i]) i++;
      const start = i;
      let filled = 0;
      while (i < nr && filled < NR_BATCHED_DISCARD) {
        if (flat[i]) {
          flat[i] = 0;
          filled++;
        }
        i++;
      }
      if (i === start) break;
      try {
        await writeObject(
          c.req,
          vidToVdiOid(vid),
          Buffer.alloc((i - start) * 4),
          SD_INODE_HEADER_SIZE + 4 * start,
          {
            copies: header.nrCopies,
            copyPolicy: header.copyPolicy,
            direct: true,
          },
        );
      } catch (e) {
        if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
        err(`Failed to write object ${hex(vidToVdiOid(vid))}: ${strerror(e.code)}`);
        err(`failed to update inode for discarding objects: ${hex(vidToVdiOid(vid))}`);
        return EXIT_FAILURE;
      }
    }
  }
  const payload = Buffer.concat([fixedString(name, 256), fixedString(tag, 256)]);
  const h = Header.req(Op.DEL_VDI, { flags: Flag.CMD_WRITE, dataLength: payload.length });
  h.snapid = snapid;
  const rsp = await c.exec(h, payload);
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`Failed to delete ${name}: ${strerror(rsp.hdr.result)}`);
    return EXIT_FAILURE;
  }
  if (header.storePolicy === 1) await reclaimHyperObjects(c, vid, slots);
  return EXIT_SUCCESS;
}

/**
 * A deleted hyper volume's own data objects and its B-tree leaves: nothing reference-counts
 * them, so they are removed directly (objects of other VIDs belong to snapshots). Done after
 * DEL_VDI so a refused delete changes nothing; objects the server already removed are skipped.
 */
async function reclaimHyperObjects(c: Ctx, vid: number, slots: SlotMap): Promise<void> {
  const oids: bigint[] = [];
  for (const [idx, owner] of slots.entries()) if (owner === vid) oids.push(vidToDataOid(vid, idx));
  oids.push(...(slots.leafOids?.() ?? []));
  const lim = new Limiter(16);
  await Promise.all(oids.map((oid) =>
    lim.run(async () => {
      const h = Header.req(Op.REMOVE_OBJ);
      h.oid = oid;
      const r = await c.exec(h);
      if (r.hdr.result !== Res.SUCCESS && r.hdr.result !== Res.NO_OBJ) {
        err(`failed to remove object ${hex(oid)}: ${strerror(r.hdr.result)}`);
      }
    })
  ));
}

// vdi lock

export async function getVdiState(c: Ctx): Promise<VdiStateRecord[] | null> {
  let count = 512;
  for (;;) {
    const rsp = await c.exec(Header.req(Op.GET_VDI_COPIES, { dataLength: count * VDI_STATE_SIZE }));
    if (rsp.hdr.result === Res.BUFFER_SMALL) {
      count *= 2;
      continue;
    }
    if (rsp.hdr.result !== Res.SUCCESS) {
      err(`failed to execute SD_OP_GET_VDI_COPIES: ${strerror(rsp.hdr.result)}`);
      return null;
    }
    return decodeVdiStates(rsp.data);
  }
}
