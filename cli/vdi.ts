// dog vdi create, list, delete, resize, read, write, snapshot, clone, rollback and alter-copy
// (upstream dog/vdi.c).
import { toJson, vdiJson } from "./json.ts";
import { CLUSTER_INFO_SIZE, decodeClusterInfo } from "../core/payloads.ts";
import { Buffer } from "node:buffer";
import { errnoText, NetworkError } from "../io/client.ts";
import { ObjectError, SdError } from "../core/errors.ts";
import { decodeInodeHeader, type InodeHeader } from "../core/inode.ts";
import {
  dataOidToIdx,
  isDataObj,
  oidToVid,
  SD_INODE_HEADER_SIZE,
  SD_MAX_VDI_SIZE,
  vidToDataOid,
  vidToVdiOid,
} from "../core/oid.ts";
import { fixedString, Header, Op, Res, strerror } from "../core/proto.ts";
import {
  countDataObjs,
  Limiter,
  readObject,
  type SlotMap,
  writeObject,
} from "../core/object-io.ts";
import { readInodeWithSlots, VdiHandle } from "../core/vdi-io.ts";
import { vdiReadFast } from "./vdi-read-fast.ts";
import { banner, strnumber, VDI_LIST_HEADER, vdiListRow } from "./format.ts";
import {
  Ctx,
  err,
  Exit,
  EXIT_FAILURE,
  EXIT_SUCCESS,
  EXIT_SYSFAIL,
  EXIT_USAGE,
  OLD_MAX_DATA_OBJS,
  out,
  outPartsAsync,
  showProgress,
  StderrProgress,
} from "./common.ts";
import {
  checkNewVdiName,
  checkVdiName,
  doVdiCreate,
  doVdiDelete,
  emptySlots,
  findVdiName,
  hex,
  inodeStat,
  isSnap,
  parseSizeArg,
  parseVdi,
  readVdiObj,
  type VdiObj,
  writeSlots,
} from "./vdi-common.ts";

// ---------------------------------------------------------------------------------------------
// vdi commands

export async function vdiCreate(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const sizeStr = c.arg(1);
  const d = c.vdi;
  if (sizeStr === undefined) {
    err("Please specify the VDI size");
    return EXIT_USAGE;
  }
  const size = parseSizeArg(sizeStr);
  if (size === null) return EXIT_USAGE;
  checkNewVdiName(name);
  if (size === 0n) {
    // upstream creates it, and then every I/O to it fails
    err("VDI size must be larger than 0");
    return EXIT_USAGE;
  }
  // The ring places at most one copy per zone: more copies than zones are never all written.
  // (Erasure-coded VDIs follow upstream: created, and written degraded or refused by the sheep.)
  const wanted = d.copyPolicy ? 0 : d.nrCopies;
  if (wanted > c.zones) {
    err(
      `Failed to create VDI ${name}: number of copies (${wanted}) is larger than number of zones (${c.zones})`,
    );
    return EXIT_FAILURE;
  }
  if (d.storePolicy === 1 && d.blockSizeShift) {
    err("Don't specify both -y and -z options, please");
    return EXIT_FAILURE;
  }
  let objectSize: number;
  if (d.blockSizeShift) {
    objectSize = 2 ** d.blockSizeShift;
  } else if (d.storePolicy === 1) {
    d.blockSizeShift = 22;
    objectSize = 2 ** 22;
  } else {
    const rsp = await c.exec(Header.req(Op.CLUSTER_INFO, { dataLength: CLUSTER_INFO_SIZE }));
    const ci = decodeClusterInfo(rsp.data);
    if (!ci.ctime) {
      err(`Failed to create VDI ${name}: ${strerror(Res.WAIT_FOR_FORMAT)}`);
      return EXIT_FAILURE;
    }
    if (rsp.hdr.result !== Res.SUCCESS) {
      err(strerror(rsp.hdr.result));
      return EXIT_FAILURE;
    }
    objectSize = 2 ** ci.blockSizeShift;
  }
  const oldMax = BigInt(objectSize) * BigInt(OLD_MAX_DATA_OBJS);
  if (size > oldMax && d.storePolicy === 0) {
    err(
      `VDI size is larger than ${
        strnumber(oldMax, c.raw)
      } bytes, please use '-y' to create a hyper volume with size up to ` +
        `${
          strnumber(SD_MAX_VDI_SIZE, c.raw)
        } bytes or use '-z' to create larger object size volume`,
    );
    return EXIT_USAGE;
  }
  if (size > SD_MAX_VDI_SIZE) {
    err("VDI size is too large");
    return EXIT_USAGE;
  }
  const vid = await doVdiCreate(
    c,
    name,
    size,
    0,
    false,
    d.nrCopies,
    d.copyPolicy,
    d.storePolicy,
    d.blockSizeShift,
  );
  if (vid === null) return EXIT_FAILURE;
  if (d.prealloc) {
    let h: InodeHeader;
    try {
      h = decodeInodeHeader(
        await readObject(c.req, vidToVdiOid(vid), SD_INODE_HEADER_SIZE, 0, true),
      );
    } catch (e) {
      if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
      err("Failed to read a newly created VDI object");
      return EXIT_FAILURE;
    }
    if (h.storePolicy === 1) {
      err("Preallocation of hyper volumes is not supported");
      return EXIT_FAILURE;
    }
    const os = 2 ** h.blockSizeShift;
    const maxIdx = countDataObjs(h);
    const total = h.vdiSize;
    const lim = new Limiter(16);
    let done = 0;
    const BATCH = 256;
    for (let start = 0; start < maxIdx; start += BATCH) {
      const end = Math.min(maxIdx, start + BATCH);
      const slots = new Map<number, number>();
      const tasks: Promise<void>[] = [];
      for (let idx = start; idx < end; idx++) {
        tasks.push(lim.run(async () => {
          await writeObject(c.req, vidToDataOid(vid, idx), Buffer.alloc(0), 0, {
            create: true,
            copies: h.nrCopies,
            copyPolicy: h.copyPolicy,
            direct: true,
          });
          slots.set(idx, vid);
          done++;
          showProgress(
            BigInt(done) * BigInt(os) > total ? total : BigInt(done) * BigInt(os),
            total,
            false,
          );
        }));
      }
      const rs = await Promise.allSettled(tasks);
      try {
        if (slots.size) await writeSlots(c, vid, h, slots);
      } catch (e) {
        if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
        err(`Failed to write object ${hex(vidToVdiOid(vid))}: ${strerror(e.code)}`);
        return EXIT_FAILURE;
      }
      for (const r of rs) {
        if (r.status === "rejected") {
          const e = r.reason;
          if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
          err(`Failed to write object: ${strerror(e.code)}`);
          return EXIT_FAILURE;
        }
      }
    }
  }
  if (c.verbose) out(c.raw ? `${hex(vid)}\n` : `VDI ID of newly created VDI: ${hex(vid)}\n`);
  return EXIT_SUCCESS;
}

export async function vdiList(c: Ctx): Promise<number> {
  const name = c.arg();
  if (!c.raw && !c.json) out(VDI_LIST_HEADER);
  if (name === undefined && c.vdi.oid && !isDataObj(c.vdi.oid)) return EXIT_FAILURE;
  const list = await parseVdi(c, true);
  if (!list) {
    if (c.json) out("[]\n");
    return EXIT_SUCCESS;
  }
  const rows: ReturnType<typeof vdiJson>[] = [];
  for (const v of list) {
    if (name !== undefined) {
      if (v.name !== name) continue;
    } else if (c.vdi.oid) {
      const idx = dataOidToIdx(c.vdi.oid);
      const slot = v.slots!.get(idx);
      if (slot === 0 || slot !== oidToVid(c.vdi.oid)) continue;
    }
    const st = inodeStat(v.header, v.slots!);
    if (c.json) rows.push(vdiJson(v.header, st.my, st.cow));
    else out(vdiListRow(v.header, st.my, st.cow, c.raw));
  }
  if (c.json) out(toJson(rows));
  return EXIT_SUCCESS;
}

export async function vdiDelete(c: Ctx): Promise<number> {
  const name = c.arg()!;
  checkVdiName(name);
  return doVdiDelete(c, name, c.vdi.snapshotId, c.vdi.snapshotTag);
}

export async function vdiResize(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const sizeStr = c.arg(1);
  if (sizeStr === undefined) {
    err("Please specify the new size for the VDI");
    return EXIT_USAGE;
  }
  const newSize = parseSizeArg(sizeStr);
  if (newSize === null) return EXIT_USAGE;
  const v = await readVdiObj(c, name, 0, "", false);
  const h = v.header;
  const os = 2n ** BigInt(h.blockSizeShift);
  if (h.storePolicy === 0 && newSize > os * BigInt(OLD_MAX_DATA_OBJS)) {
    err(`New VDI size is too large. This volume's max size is ${os * BigInt(OLD_MAX_DATA_OBJS)}`);
    return EXIT_USAGE;
  }
  if (newSize > SD_MAX_VDI_SIZE) {
    err(`New VDI size is too large This volume's max size is ${SD_MAX_VDI_SIZE}`);
    return EXIT_USAGE;
  }
  if (newSize < h.vdiSize) {
    err("Shrinking VDIs is not implemented");
    return EXIT_USAGE;
  }
  const raw = Buffer.from(v.raw);
  raw.writeBigUInt64LE(newSize, 536);
  try {
    await writeObject(c.req, vidToVdiOid(v.vid), raw, 0, {
      copies: h.nrCopies,
      copyPolicy: h.copyPolicy,
      direct: true,
    });
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Failed to write object ${hex(vidToVdiOid(v.vid))}: ${strerror(e.code)}`);
    err("Failed to update an inode header");
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

function parseOffsetLen(c: Ctx): { offset: bigint; total: bigint | null } | number {
  let offset = 0n;
  let total: bigint | null = null;
  const o = c.arg(1);
  if (o !== undefined) {
    const v = parseSizeArg(o);
    if (v === null) return EXIT_USAGE;
    offset = v;
    const l = c.arg(2);
    if (l !== undefined) {
      const t = parseSizeArg(l);
      if (t === null) return EXIT_USAGE;
      total = t;
    }
  }
  return { offset, total };
}

export async function vdiRead(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const ol = parseOffsetLen(c);
  if (typeof ol === "number") return ol;
  const v = await readVdiObj(c, name, c.vdi.snapshotId, c.vdi.snapshotTag, false);
  const size = v.header.vdiSize;
  if (size < ol.offset) {
    err("Read offset is beyond the end of the VDI");
    return EXIT_FAILURE;
  }
  let handle: VdiHandle;
  try {
    handle = await VdiHandle.openVid(c.req, name, v.vid, {
      snapid: c.vdi.snapshotId,
      tag: c.vdi.snapshotTag,
    });
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Failed to read a vdi ${name}`);
    return EXIT_FAILURE;
  }
  const remain = size - ol.offset;
  const total = ol.total === null || ol.total > remain ? remain : ol.total;
  const os = handle.objectSize;
  const CHUNK = Math.min(os, 4 * 1024 * 1024);
  const WINDOW = 8;
  const progress = new StderrProgress(total, c.raw);
  const fast = await vdiReadFast(c, handle, Number(ol.offset), Number(ol.offset + total), progress);
  if (fast !== null) return fast;
  // Replies stay in the pieces the socket delivered (fresh per read on Bun) and go to stdout
  // as they are: joining them, or copying into reused buffers, was most of dog's CPU time.
  const queue: Promise<readonly Buffer[]>[] = [];
  let pos = Number(ol.offset);
  const end = Number(ol.offset + total);
  let failed: unknown = null;
  const next = () => {
    if (pos >= end) return false;
    const objEnd = (Math.floor(pos / os) + 1) * os;
    const len = Math.min(CHUNK, objEnd - pos, end - pos);
    const p = handle.readParts(pos, len);
    p.catch(() => {}); // observed when dequeued
    queue.push(p);
    pos += len;
    return true;
  };
  let sent = 0n;
  while (queue.length < WINDOW && next());
  while (queue.length) {
    let parts: readonly Buffer[];
    try {
      parts = await queue.shift()!;
    } catch (e) {
      failed = e;
      break;
    }
    next();
    try {
      await outPartsAsync(parts);
    } catch (e) {
      progress.end();
      err(`Failed to write to stdout: ${errnoText(e)}`);
      return EXIT_SYSFAIL;
    }
    for (const b of parts) sent += BigInt(b.length);
    progress.update(sent);
  }
  progress.end();
  if (failed) {
    if (failed instanceof NetworkError || !(failed instanceof SdError)) throw failed;
    err(`Failed to read VDI: ${strerror(failed.code)}`);
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

export async function vdiWrite(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const ol = parseOffsetLen(c);
  if (typeof ol === "number") return ol;
  const v = await readVdiObj(c, name, 0, "", false);
  const size = v.header.vdiSize;
  if (size < ol.offset) {
    err("Write offset is beyond the end of the VDI");
    return EXIT_FAILURE;
  }
  let handle: VdiHandle;
  try {
    handle = await VdiHandle.openVid(c.req, name, v.vid);
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Failed to read a vdi ${name}`);
    return EXIT_FAILURE;
  }
  // As upstream, a length past the end of the VDI is cut at the end (offset == size: nothing).
  const remain = size - ol.offset;
  const lenGiven = ol.total !== null;
  const total = Number(ol.total === null || ol.total > remain ? remain : ol.total);
  const base = Number(ol.offset);
  const os = handle.objectSize;
  // One object per request, a few in flight: enough to keep every replica busy, while the
  // sheep never holds more than DEPTH objects of this client's data (memory stays bounded).
  const CHUNK = os;
  let done = 0;
  let stdinDone = false;
  // Chunks end on object boundaries, so chunks in flight never share an object: several may
  // be written at once (one at a time left the cluster idle between chunks).
  const DEPTH = Math.max(2, Math.floor((32 * 1024 * 1024) / os));
  const pending: Promise<void>[] = [];
  // stdin is read into buffers reused once their write is acknowledged (DEPTH + 1 of them)
  const free: Buffer[] = [];
  const progress = new StderrProgress(BigInt(total), c.raw);
  let written = 0n;
  const flush = async (keep = 0) => {
    while (pending.length > keep) await pending.shift();
  };
  try {
    while (done < total) {
      // chunks end on object boundaries so short reads are handled per object as upstream
      const abs = base + done;
      let want = Math.min(total - done, CHUNK);
      const chunkEnd = abs + want;
      if (chunkEnd % os !== 0 && done + want < total) want = Math.floor(chunkEnd / os) * os - abs;
      const own = free.pop() ?? Buffer.allocUnsafe(CHUNK);
      const data = stdinDone ? Buffer.alloc(0) : await c.stdin.read(want, own);
      let buf = data;
      let last = false;
      if (data.length < want) {
        if (!stdinDone) stdinDone = true;
        if (!lenGiven) {
          last = true;
          const eofAbs = abs + data.length;
          if (data.length !== 0 && eofAbs % os !== 0) {
            // zero-fill the rest of the last object (upstream); stdin ending on an object
            // boundary writes nothing more (upstream wrote an extra all-zero object)
            const objEnd = (Math.floor(eofAbs / os) + 1) * os;
            buf = Buffer.alloc(Math.min(base + total, objEnd) - abs);
            data.copy(buf, 0);
          }
        } else {
          // a length was given (upstream): the object where stdin ended is zero-filled to its end
          // (the next whole one when it ended on a boundary), within the length; then stop
          last = true;
          const objEnd = (Math.floor((abs + data.length) / os) + 1) * os;
          buf = Buffer.alloc(Math.min(base + total, objEnd) - abs);
          data.copy(buf, 0);
        }
      }
      await flush(DEPTH - 1);
      if (buf.length) {
        const n = BigInt(buf.length);
        const w = handle.write(abs, buf).then(() => {
          free.push(own); // acknowledged: every byte of it was sent
          written += n;
          progress.update(written);
        });
        w.catch(() => {});
        pending.push(w);
      }
      done += buf.length;
      if (last) break;
    }
    await flush();
    progress.end();
  } catch (e) {
    progress.end();
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    if (e instanceof ObjectError) {
      err(`Failed to write object ${hex(e.oid).padStart(16, "0")}: ${strerror(e.code)}`);
      err("Failed to write VDI");
    } else err(`Failed to write VDI: ${strerror(e.code)}`);
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

export async function vdiSnapshot(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const d = c.vdi;
  if (d.snapshotId !== 0) {
    err("Please specify a non-integer value for a snapshot tag name");
    return EXIT_USAGE;
  }
  checkVdiName(name);
  const r = await findVdiName(c, name, 0, d.snapshotTag);
  let v: VdiObj;
  if (r.result === Res.SUCCESS) {
    const raw = await readObject(c.req, vidToVdiOid(r.vid), SD_INODE_HEADER_SIZE, 0, true).catch(
      (e) => {
        if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
        err(`Failed to read object ${hex(vidToVdiOid(r.vid))} ${strerror(e.code)}`);
        throw new Exit(EXIT_FAILURE);
      },
    );
    const header = decodeInodeHeader(raw);
    if (isSnap(header)) {
      err(
        `Failed to create snapshot for ${name}, maybe snapshot id (${d.snapshotId}) or tag (${d.snapshotTag}) is existed`,
      );
      return EXIT_FAILURE;
    }
    v = { vid: r.vid, header, raw, slots: emptySlots() };
  } else if (r.result === Res.NO_TAG) {
    v = await readVdiObj(c, name, 0, "", false);
  } else {
    err(`Failed to create snapshot for ${name}: ${strerror(r.result)}`);
    return EXIT_FAILURE;
  }
  const h = v.header;
  if (h.storePolicy) {
    err("creating a snapshot of hypervolume is not supported");
    return EXIT_FAILURE;
  }
  if (d.reduceIdentical) {
    const { slots } = await readInodeWithSlots(c.req, v.vid);
    let own = false;
    for (const [, vid] of slots.entries()) {
      if (vid === v.vid) {
        own = true;
        break;
      }
    }
    if (!own) return EXIT_SUCCESS;
  }
  try {
    await writeObject(c.req, vidToVdiOid(v.vid), fixedString(d.snapshotTag, 256), 256, {
      copies: h.nrCopies,
      copyPolicy: h.copyPolicy,
    });
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Failed to write object ${hex(vidToVdiOid(v.vid))}: ${strerror(e.code)}`);
    return EXIT_FAILURE;
  }
  const newVid = await doVdiCreate(
    c,
    name,
    h.vdiSize,
    v.vid,
    true,
    h.nrCopies,
    h.copyPolicy,
    h.storePolicy,
    h.blockSizeShift,
  );
  if (newVid === null) return EXIT_FAILURE;
  if (c.verbose) {
    out(
      c.raw
        ? `${hex(newVid)} ${hex(v.vid)}\n`
        : `new VID of original VDI: ${hex(newVid)}, VDI ID of newly created snapshot: ${
          hex(v.vid)
        }\n`,
    );
  }
  return EXIT_SUCCESS;
}

/** Copies (or zero-allocates) objects of `src` into the new VDI `newVid` and records the slots. */
async function copyObjects(
  c: Ctx,
  src: SlotMap,
  srcHeader: InodeHeader,
  newVid: number,
  allocateHoles: boolean,
): Promise<boolean> {
  const h = srcHeader;
  const os = 2 ** h.blockSizeShift;
  const maxIdx = countDataObjs(h);
  const lim = new Limiter(8);
  const BATCH = 64;
  let done = 0;
  for (let start = 0; start < maxIdx; start += BATCH) {
    const end = Math.min(maxIdx, start + BATCH);
    const slots = new Map<number, number>();
    const tasks: Promise<void>[] = [];
    for (let idx = start; idx < end; idx++) {
      const vid = src.get(idx);
      if (!vid && !allocateHoles) {
        done++;
        continue;
      }
      tasks.push(lim.run(async () => {
        const data = vid
          ? await readObject(c.req, vidToDataOid(vid, idx), os, 0, true)
          : Buffer.alloc(0);
        await writeObject(c.req, vidToDataOid(newVid, idx), data, 0, {
          create: true,
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
          direct: true,
        });
        slots.set(idx, newVid);
        done++;
        showProgress(BigInt(Math.min(done * os, Number(h.vdiSize))), h.vdiSize, false);
      }));
    }
    const rs = await Promise.allSettled(tasks);
    if (slots.size) await writeSlots(c, newVid, h, slots);
    for (const r of rs) {
      if (r.status === "rejected") {
        const e = r.reason;
        if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
        err(`Failed to copy object: ${strerror(e.code)}`);
        return false;
      }
    }
  }
  showProgress(h.vdiSize, h.vdiSize, false);
  return true;
}

export async function vdiClone(c: Ctx): Promise<number> {
  const src = c.arg()!;
  const dst = c.arg(1);
  const d = c.vdi;
  if (dst === undefined) {
    err("Destination VDI name must be specified");
    return EXIT_USAGE;
  }
  if (!d.snapshotId && !d.snapshotTag) {
    err("Only snapshot VDIs can be cloned");
    err("Please specify the '-s' option");
    return EXIT_USAGE;
  }
  checkNewVdiName(dst);
  const v = await readVdiObj(c, src, d.snapshotId, d.snapshotTag, true);
  const h = v.header;
  const baseVid = d.noShare ? 0 : v.vid;
  const newVid = await doVdiCreate(
    c,
    dst,
    h.vdiSize,
    baseVid,
    false,
    h.nrCopies,
    h.copyPolicy,
    h.storePolicy,
    h.blockSizeShift,
  );
  if (newVid === null) return EXIT_FAILURE;
  if (d.prealloc || d.noShare) {
    if (h.storePolicy === 1) {
      err("Copying objects of hyper volumes is not supported");
      return EXIT_FAILURE;
    }
    if (!await copyObjects(c, v.slots, h, newVid, d.prealloc)) return EXIT_FAILURE;
  }
  if (c.verbose) {
    out(c.raw ? `${hex(newVid)}\n` : `VDI ID of newly created clone: ${hex(newVid)}\n`);
  }
  return EXIT_SUCCESS;
}

export async function vdiRollback(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const d = c.vdi;
  if (!d.snapshotId && !d.snapshotTag) {
    err("Please specify the '-s' option");
    return EXIT_USAGE;
  }
  const v = await readVdiObj(c, name, d.snapshotId, d.snapshotTag, false);
  if (!d.force) {
    await c.confirm(
      "This operation discards any changes made since the previous\nsnapshot was taken.  Continue? [yes/no]: ",
    );
  }
  // No working VDI (only snapshots are left) is nothing to delete: rollback recreates it.
  const ret = await doVdiDelete(c, name, 0, "", true);
  if (ret !== EXIT_SUCCESS) {
    err("Failed to delete the current state");
    return EXIT_FAILURE;
  }
  const h = v.header;
  const newVid = await doVdiCreate(
    c,
    name,
    h.vdiSize,
    v.vid,
    false,
    d.nrCopies,
    h.copyPolicy,
    h.storePolicy,
    h.blockSizeShift,
  );
  if (newVid === null) return EXIT_FAILURE;
  if (c.verbose) out(c.raw ? `${hex(newVid)}\n` : `New VDI ID of rollbacked VDI: ${hex(newVid)}\n`);
  return EXIT_SUCCESS;
}

// vdi alter-copy

export async function vdiAlterCopy(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const d = c.vdi;
  if (d.copyPolicy !== 0) {
    err("Changing redundancy level of erasure coded vdi is not supported yet.");
    return EXIT_USAGE;
  }
  if (!d.nrCopies) {
    d.nrCopies = 3;
    out("The vdi's redundancy level is not specified, use 3 as default.\n");
  }
  if (d.nrCopies > c.nodes.length && !d.force) {
    await c.confirm(
      `Number of copies (${d.nrCopies}) is larger than number of nodes (${c.nodes.length}).\n` +
        "Are you sure you want to continue? [yes/no]: ",
    );
  }
  let v: VdiObj;
  try {
    v = await readVdiObj(c, name, 0, "", false);
  } catch (e) {
    if (e instanceof Exit) {
      err(`Reading ${name}'s vdi object failure.`);
      return EXIT_FAILURE;
    }
    throw e;
  }
  const h = v.header;
  if (h.copyPolicy) {
    err(`${name}'s copy policy is erasure code, changing it is not supported yet.`);
    return EXIT_FAILURE;
  }
  const old = h.nrCopies;
  if (old === d.nrCopies) {
    err(`${name}'s redundancy level is already set to ${old}, nothing changed.`);
    return EXIT_FAILURE;
  }
  const list = await parseVdi(c, false);
  if (!list) return EXIT_SYSFAIL;
  const standalone = h.parentVdiId === 0 &&
    !list.some((x) => x.header.parentVdiId === v.vid && x.name === h.name);
  if (!standalone) {
    err("Only standalone vdi supports changing redundancy level.");
    err(`Please clone ${name} with -n (--no-share) option first.`);
    return EXIT_FAILURE;
  }
  if (!d.force) {
    await c.confirm(
      banner(
        "Caution! Changing VDI's redundancy level will affect",
        "the VDI itself only and trigger recovery.",
      ),
    );
  }
  const raw = Buffer.from(v.raw);
  raw[554] = d.nrCopies;
  try {
    await writeObject(c.req, vidToVdiOid(v.vid), raw, 0, {
      copies: old,
      copyPolicy: h.copyPolicy,
      direct: true,
    });
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Overwrite the vdi object's header of ${name} failure while setting its redundancy level.`);
    return EXIT_FAILURE;
  }
  const ah = Header.req(Op.ALTER_VDI_COPY);
  ah.b.writeUInt32LE(v.vid >>> 0, 20);
  ah.b[24] = d.nrCopies;
  ah.b[26] = d.copyPolicy;
  ah.b[27] = h.blockSizeShift;
  const rsp = await c.exec(ah);
  if (rsp.hdr.result === Res.SUCCESS) {
    err(`${name}'s redundancy level is set to ${d.nrCopies}, the old one was ${old}.`);
    return EXIT_SUCCESS;
  }
  // Refused: put the old header back so nothing has changed.
  {
    try {
      await writeObject(c.req, vidToVdiOid(v.vid), v.raw, 0, {
        copies: old,
        copyPolicy: h.copyPolicy,
        direct: true,
      });
    } catch (e) {
      if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
      err(`Failed to restore the vdi object's header of ${name}: ${strerror(e.code)}`);
    }
  }
  if (rsp.hdr.result === Res.INVALID_PARMS || rsp.hdr.result === Res.NO_SUPPORT) {
    err(
      `Changing ${name}'s redundancy level is not supported: the sheep daemons do not implement ALTER_VDI_COPY ` +
        `(${strerror(rsp.hdr.result)}). Nothing was changed.`,
    );
    return EXIT_FAILURE;
  }
  err(`Response's result: ${strerror(rsp.hdr.result)}`);
  err(`Changing ${name}'s redundancy level failure.`);
  return EXIT_FAILURE;
}
