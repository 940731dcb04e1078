// dog vdi lock and vdi check (consistency check and repair of a VDI's replicas).
import { checkErasureObject } from "./ec-check.ts";
import { isErasureOid } from "../core/ec.ts";
import { LockState } from "../core/payloads.ts";
import { Buffer } from "node:buffer";
import { type InodeHeader } from "../core/inode.ts";
import { nodeHostPort, nodeString, type SdNode } from "../core/node.ts";
import { oidHex, vidToDataOid, vidToVdiOid } from "../core/oid.ts";
import { Flag, Header, Op, Res, strerror } from "../core/proto.ts";
import { Limiter, type SlotMap } from "../core/object-io.ts";
import {
  Ctx,
  err,
  Exit,
  EXIT_FAILURE,
  EXIT_SUCCESS,
  EXIT_SYSFAIL,
  genericSubcommand,
  out,
  ring,
  StderrProgress,
} from "./common.ts";
import {
  checkVdiName,
  findVdiName,
  getVdiState,
  hex,
  parseVdi,
  readVdiObj,
  type VdiObj,
} from "./vdi-common.ts";

async function lockList(c: Ctx): Promise<number> {
  const vs = await getVdiState(c);
  const list = await parseVdi(c, false);
  if (!list) return EXIT_SUCCESS;
  out("VDI | owner node\n");
  for (const s of vs ?? []) {
    if (s.lockState === LockState.UNLOCKED) continue;
    const v = list.find((x) => x.vid === s.vid);
    const vname = v ? v.name : "";
    if (s.lockState === LockState.LOCKED) {
      out(`${vname} | ${s.lockOwner ? nodeString(s.lockOwner) : ""}\n`);
    } else {
      let line = `${vname} |`;
      for (const p of s.participants) {
        line += ` ${nodeString(p.node)}`;
        const st = p.state;
        line += st === 1
          ? "(modified)"
          : st === 2
          ? "(shared)"
          : st === 3
          ? "(invalidated)"
          : `(UNKNOWN ${st}, BUG!)`;
      }
      out(line + "\n");
    }
  }
  return EXIT_SUCCESS;
}

async function lockUnlock(c: Ctx): Promise<number> {
  const name = c.arg()!;
  checkVdiName(name);
  // the working VDI of that name (snapshots share the name and come first in VID order)
  const r = await findVdiName(c, name, 0, "");
  if (r.result !== Res.SUCCESS) {
    err(`VDI: ${name} not found`);
    return EXIT_SYSFAIL;
  }
  const v = { vid: r.vid };
  const vs = await getVdiState(c);
  if (!vs) return EXIT_SYSFAIL;
  for (const s of vs) {
    if (s.vid !== v.vid) continue;
    let type: number;
    switch (s.lockState) {
      case LockState.UNLOCKED:
        err(`VDI: ${name} is not locked`);
        return EXIT_SYSFAIL;
      case LockState.LOCKED:
        type = 0;
        break;
      case LockState.SHARED:
        type = 1;
        break;
      default:
        err(`VDI: ${name} unknown lock state`);
        return EXIT_SYSFAIL;
    }
    const h = Header.req(Op.RELEASE_VDI);
    h.baseVdiId = v.vid;
    h.lockType = type;
    await c.exec(h);
    return EXIT_SUCCESS;
  }
  return EXIT_SYSFAIL;
}

export function vdiLock(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, { list: lockList, unlock: lockUnlock });
}

// vdi check (replicated VDIs: SHA-1 majority vote via GET_HASH, repair with REPAIR_REPLICA)

/** The hash slot of a replica that answered EIO (a stored checksum did not match). */
const CORRUPT = "corrupt";

async function checkObject(c: Ctx, oid: bigint, nrCopies: number): Promise<void> {
  const copies = Math.min(nrCopies, c.zones);
  const targets = ring(c).placeObject(oid, copies);
  const found: { node: SdNode; hash: string | null }[] = [];
  for (const n of targets) {
    const h = Header.req(Op.GET_HASH);
    h.oid = oid;
    h.tgtEpoch = c.epoch;
    h.epoch = c.epoch;
    const rsp = await c.exec(h, undefined, n);
    if (rsp.hdr.result === Res.SUCCESS) {
      found.push({ node: n, hash: rsp.hdr.digest.toString("hex") });
    } else if (rsp.hdr.result === Res.NO_OBJ) found.push({ node: n, hash: null });
    else if (rsp.hdr.result === Res.EIO) {
      // its stored checksums caught a corrupt copy: no vote, repaired from the majority below
      found.push({ node: n, hash: CORRUPT });
    } else {
      err(`failed to read ${hex(oid)}, ${strerror(rsp.hdr.result)}`);
      throw new Exit(EXIT_FAILURE);
    }
  }
  const votes = new Map<string, number>();
  for (const f of found) {
    if (f.hash && f.hash !== CORRUPT) votes.set(f.hash, (votes.get(f.hash) ?? 0) + 1);
  }
  if (votes.size === 0) {
    err(`no node has ${hex(oid)}`);
    return;
  }
  let best = "", bestN = 0;
  for (const [h, n] of votes) {
    if (n > bestN) {
      best = h;
      bestN = n;
    }
  }
  const present = found.filter((f) => f.hash && f.hash !== CORRUPT).length;
  if (bestN * 2 <= present && votes.size > 1) {
    err(`no majority of ${hex(oid)}`);
    return;
  }
  const src = found.find((f) => f.hash === best)!.node;
  for (const f of found) {
    if (f.hash === best) continue;
    const h = Header.req(Op.REPAIR_REPLICA);
    h.epoch = c.epoch;
    h.oid = oid;
    src.addr.copy(h.b, 24, 0, 16);
    h.b.writeUInt16LE(src.port, 40);
    if (await c.light(h, f.node)) {
      out(f.hash ? `fixed replica ${hex(oid)}\n` : `fixed missing ${hex(oid)}\n`);
    } else {err(
        `failed to repair object ${oidHex(oid)} from ${nodeHostPort(src)} to ${
          nodeHostPort(f.node)
        }`,
      );}
  }
}

export async function doVdiCheck(c: Ctx, h: InodeHeader, slots: SlotMap): Promise<number> {
  if (h.copyPolicy) {
    const d = (h.copyPolicy >> 4) * 2, p = h.copyPolicy & 0xf;
    if (c.zones < d + p) {
      err("ABORT: Not enough active zones for consistency-checking erasure coded VDI");
      return EXIT_FAILURE;
    }
  }
  const oids: bigint[] = [vidToVdiOid(h.vdiId), ...(slots.leafOids?.() ?? [])];
  for (const [idx, vid] of slots.entries()) oids.push(vidToDataOid(vid, idx));
  const os = BigInt(2 ** h.blockSizeShift);
  const total = h.vdiSize;
  let done = 0n;
  const bar = new StderrProgress(total, false, 0n);
  const lim = new Limiter(8);
  await Promise.all(oids.map((oid) =>
    lim.run(async () => {
      if (isErasureOid(oid, h.copyPolicy)) {
        const io = { exec: c.exec.bind(c), epoch: c.epoch, out, err };
        const place = ring(c).placeObject(oid, Math.min(h.nrCopies, c.zones));
        const os = 2 ** h.blockSizeShift;
        if (!await checkErasureObject(io, oid, h.copyPolicy, os, place)) {
          throw new Exit(EXIT_FAILURE);
        }
      } else await checkObject(c, oid, h.nrCopies);
      done += os;
      bar.update(done);
    })
  ));
  bar.update(total);
  out(`finish check&repair ${h.name}\n`);
  return EXIT_SUCCESS;
}

async function doVdiCheckExist(c: Ctx, h: InodeHeader, slots: SlotMap): Promise<number> {
  const copies = Math.min(h.nrCopies, c.zones);
  const per = new Map<SdNode, bigint[]>();
  for (const n of c.nodes) per.set(n, []);
  const add = (oid: bigint) => {
    for (const n of ring(c).placeObject(oid, copies)) per.get(n)!.push(oid);
  };
  add(vidToVdiOid(h.vdiId));
  for (const oid of slots.leafOids?.() ?? []) add(oid);
  for (const [idx, vid] of slots.entries()) add(vidToDataOid(vid, idx));
  let total = 0;
  for (const [n, oids] of per) {
    const payload = Buffer.alloc(oids.length * 8);
    oids.forEach((o, i) => payload.writeBigUInt64LE(o, i * 8));
    const rsp = await c.exec(
      Header.req(Op.OIDS_EXIST, { flags: Flag.CMD_WRITE | Flag.CMD_PIGGYBACK }),
      payload,
      n,
    );
    const k = Math.floor(rsp.data.length / 8);
    total += k;
    for (let i = 0; i < k; i++) {
      out(`[${nodeHostPort(n)}] oid ${oidHex(rsp.data.readBigUInt64LE(i * 8))} is missing.\n`);
    }
  }
  if (total === 0) {
    out(`${h.name} is fine, no object is missing.\n`);
    return EXIT_SUCCESS;
  }
  out(`${h.name} lost ${total} object(s).\n`);
  return EXIT_FAILURE;
}

export async function vdiCheck(c: Ctx): Promise<number> {
  const name = c.arg()!;
  let v: VdiObj;
  try {
    v = await readVdiObj(c, name, c.vdi.snapshotId, c.vdi.snapshotTag, true);
  } catch (e) {
    if (e instanceof Exit) err(`FATAL: no inode objects`);
    throw e;
  }
  return c.vdi.exist ? doVdiCheckExist(c, v.header, v.slots) : doVdiCheck(c, v.header, v.slots);
}
