// Server-side VDI metadata logic (protocol.md §9.4-§9.7): family-run VID lookup/allocation,
// create / clone / snapshot / rebase, delete, generational reference counting, attributes.
// All object I/O goes through MetaIO so the logic runs unchanged against the gateway or a fake.
import { Buffer } from "node:buffer";
import { Res } from "./proto.ts";
import { SdError } from "./errors.ts";
import { fnv1a, sdHashVdi } from "./hash.ts";
import {
  ledgerOid,
  MAX_DATA_OBJS,
  SD_ATTR_OBJ_SIZE,
  SD_INODE_DATA_INDEX_OFFSET,
  SD_INODE_GREF_OFFSET,
  SD_INODE_HEADER_SIZE,
  SD_NR_VDIS,
  vidToAttrOid,
  vidToBtreeOid,
  vidToDataOid,
  vidToVdiOid,
} from "./oid.ts";
import { decodeInodeHeader, encodeInodeHeader, Inode, type InodeHeader } from "./inode.ts";
import { lookupVdiInfo } from "./vdi-lookup.ts";

/** Gateway-level object I/O (replication is the implementer's business). */
export interface MetaIO {
  /** Throws SdError(NO_OBJ) when the object does not exist. */
  read(oid: bigint, offset: number, length: number): Promise<Buffer>;
  /** Create (or overwrite) the whole object: `data` at `offset`, everything else zero. */
  create(oid: bigint, data: Buffer, offset?: number): Promise<void>;
  /** Partial write into an existing object. */
  write(oid: bigint, offset: number, data: Buffer): Promise<void>;
  /** Only needed to delete hyper volumes (objects are removed directly, no ref counting). */
  remove?(oid: bigint): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Bitmaps and per-node state

const BITMAP_BYTES = SD_NR_VDIS / 8;

/** 2^24-bit VID bitmap, bit n = byte n>>3, bit n&7 (the READ_VDIS wire format). */
export class VdiBitmap {
  readonly bytes: Uint8Array;
  constructor(bytes?: Uint8Array) {
    this.bytes = bytes ?? new Uint8Array(BITMAP_BYTES);
    if (this.bytes.length !== BITMAP_BYTES) {
      throw new RangeError(`bitmap must be ${BITMAP_BYTES} bytes`);
    }
  }
  static from(buf: Uint8Array): VdiBitmap {
    return new VdiBitmap(new Uint8Array(buf));
  }
  set(vid: number): void {
    this.bytes[vid >>> 3] |= 1 << (vid & 7);
  }
  clear(vid: number): void {
    this.bytes[vid >>> 3] &= ~(1 << (vid & 7));
  }
  test(vid: number): boolean {
    return (this.bytes[vid >>> 3] & (1 << (vid & 7))) !== 0;
  }
  /** Copy in wire format (2,097,152 bytes). */
  toBuffer(): Buffer {
    return Buffer.from(this.bytes);
  }
  /** OR another bitmap in (state exchange at join). */
  merge(other: Uint8Array): void {
    const n = Math.min(other.length, this.bytes.length);
    for (let i = 0; i < n; i++) this.bytes[i] |= other[i];
  }
  /** First clear bit in [start, SD_NR_VDIS), or SD_NR_VDIS if none (find_next_zero_bit). */
  findNextZero(start: number): number {
    const b = this.bytes;
    let i = start;
    while (i < SD_NR_VDIS && (i & 7) !== 0) {
      if (!this.test(i)) return i;
      i++;
    }
    let byte = i >>> 3;
    while (byte < b.length && b[byte] === 0xff) byte++;
    for (i = byte << 3; i < SD_NR_VDIS; i++) if (!this.test(i)) return i;
    return SD_NR_VDIS;
  }
  /** First set bit in [start, SD_NR_VDIS), or SD_NR_VDIS. */
  findNextSet(start: number): number {
    const b = this.bytes;
    let i = start;
    while (i < SD_NR_VDIS && (i & 7) !== 0) {
      if (this.test(i)) return i;
      i++;
    }
    let byte = i >>> 3;
    while (byte < b.length && b[byte] === 0) byte++;
    for (i = byte << 3; i < SD_NR_VDIS; i++) if (this.test(i)) return i;
    return SD_NR_VDIS;
  }
}

export interface VdiState {
  vid: number;
  nrCopies: number;
  snapshot: boolean;
  deleted: boolean;
  copyPolicy: number;
  blockSizeShift: number;
  parentVid: number;
}

/** What every node keeps about VDIs: in-use/deleted bitmaps, state table, lock table. */
export class VdiTable {
  inuse = new VdiBitmap();
  deleted = new VdiBitmap();
  states = new Map<number, VdiState>();
  locks = new Map<number, { owner: string }>();
  /** Cluster flag RECYCLE_VID: lowest free VIDs, families freed when all their members are deleted. */
  recycle = false;
}

/** EC policy byte -> d+p; 0 (replication) -> 0. */
export function ecPolicyCopies(copyPolicy: number): number {
  if (!copyPolicy) return 0;
  return ((copyPolicy >> 4) & 0x0f) * 2 + (copyPolicy & 0x0f);
}

/**
 * NOTIFY_VDI_ADD main phase (plus the in-use bit NEW_VDI's main phase sets). `oldVid` (if any)
 * becomes a snapshot; the new VID is registered as a working VDI with parent = oldVid.
 */
export function applyVdiAdded(
  t: VdiTable,
  s: VdiState & { oldVid?: number; setBitmap?: boolean },
): void {
  const oldVid = s.oldVid ?? 0;
  if (oldVid) {
    const prev = t.states.get(oldVid);
    t.states.set(oldVid, {
      vid: oldVid,
      nrCopies: prev?.nrCopies ?? s.nrCopies,
      snapshot: true,
      deleted: prev?.deleted ?? false,
      copyPolicy: prev?.copyPolicy ?? s.copyPolicy,
      blockSizeShift: prev?.blockSizeShift ?? s.blockSizeShift,
      parentVid: prev?.parentVid ?? 0,
    });
  }
  if (s.setBitmap !== false) t.inuse.set(s.vid);
  t.states.set(s.vid, {
    vid: s.vid,
    nrCopies: s.nrCopies,
    snapshot: s.snapshot,
    deleted: s.deleted,
    copyPolicy: s.copyPolicy,
    blockSizeShift: s.blockSizeShift,
    parentVid: s.parentVid || oldVid,
  });
}

/** DEL_VDI main phase on every node. */
export function applyVdiDeleted(t: VdiTable, vid: number): void {
  t.deleted.set(vid);
  const s = t.states.get(vid);
  if (s) s.deleted = true;
}

/** The family of `vid`: the tree its parent links form (snapshots, working VDIs, clones). */
export function vdiFamily(t: VdiTable, vid: number): number[] {
  const seen = new Set<number>();
  let root = vid;
  for (;;) {
    seen.add(root);
    const p = t.states.get(root)?.parentVid ?? 0;
    if (!p || seen.has(p) || !t.states.has(p)) break;
    root = p;
  }
  const children = new Map<number, number[]>();
  for (const s of t.states.values()) {
    if (!s.parentVid) continue;
    const l = children.get(s.parentVid) ?? [];
    l.push(s.vid);
    children.set(s.parentVid, l);
  }
  const family = new Set<number>();
  const queue = [root];
  while (queue.length) {
    const v = queue.pop()!;
    if (family.has(v)) continue;
    family.add(v);
    queue.push(...(children.get(v) ?? []));
  }
  return [...family].sort((a, b) => a - b);
}

/**
 * RECYCLE_VID: the VIDs that deleting `vid` frees — its whole family once every other member is
 * deleted too, else none.
 */
export function recyclableAfterDelete(t: VdiTable, vid: number): number[] {
  const family = vdiFamily(t, vid);
  return family.every((v) => v === vid || t.states.get(v)?.deleted) ? family : [];
}

/** Forgets recycled VIDs: bits, states and locks, so they are handed out again. */
export function forgetVdis(t: VdiTable, vids: readonly number[]): void {
  for (const v of vids) {
    t.inuse.clear(v);
    t.deleted.clear(v);
    t.states.delete(v);
    t.locks.delete(v);
  }
}

/** Startup scan / recovery: register a local inode header in the bitmaps and state table. */
export function registerInode(t: VdiTable, h: InodeHeader): void {
  const vid = h.vdiId;
  if (!vid) return;
  t.inuse.set(vid);
  const deleted = h.name === "";
  if (deleted) t.deleted.set(vid);
  t.states.set(vid, {
    vid,
    nrCopies: h.nrCopies,
    snapshot: h.snapCtime !== 0n,
    deleted,
    copyPolicy: h.copyPolicy,
    blockSizeShift: h.blockSizeShift,
    parentVid: h.parentVdiId,
  });
}

// ---------------------------------------------------------------------------------------------
// Locks (LOCK_VDI / RELEASE_VDI with cluster flag USE_LOCK; normal locks)

/** Returns false when the VDI is already locked (upstream refuses even the same owner). */
export function lockVdi(t: VdiTable, vid: number, owner: string): boolean {
  if (t.locks.has(vid)) return false;
  t.locks.set(vid, { owner });
  return true;
}

export function releaseVdi(t: VdiTable, vid: number): boolean {
  return t.locks.delete(vid);
}

export { type LookupInfo, lookupVdi, lookupVdiInfo, vdiHashStart } from "./vdi-lookup.ts";

// ---------------------------------------------------------------------------------------------
// NEW_VDI

export interface NewVdiRequest {
  name: string;
  size: bigint;
  baseVid: number;
  snapshot: boolean;
  copies: number;
  copyPolicy: number;
  storePolicy: number;
  blockSizeShift: number;
  now: bigint;
}

export interface NewVdiResult {
  vid: number;
  nrCopies: number;
  blockSizeShift: number;
  copyPolicy: number;
  snapId: number;
  /** VID that becomes (or already is) a snapshot; NOTIFY_VDI_ADD old_vid. 0 = none. */
  oldVid: number;
  /** Ready-made argument for applyVdiAdded() on every node. */
  added: VdiState & { oldVid: number };
}

const INDEX_MAGIC = 0x6274;
const BTREE_NODE_SIZE = 4 * 1024 * 1024;

/**
 * Reads an inode: the header, then only the slots its size covers (flat) or the B-tree root
 * (hyper). A whole inode is 12.5 MB; reading it for every snapshot, clone and delete was the
 * bulk of their cost.
 */
async function readInode(io: MetaIO, vid: number, errCode: number): Promise<Inode> {
  try {
    const oid = vidToVdiOid(vid);
    const hdr = await io.read(oid, 0, SD_INODE_HEADER_SIZE);
    const h = decodeInodeHeader(hdr);
    const n = inodeSpan(h);
    const data = await io.read(oid, SD_INODE_DATA_INDEX_OFFSET, 4 * n);
    const ino = Inode.decode(Buffer.concat([hdr, data]));
    if (h.storePolicy === 0 && n > 0) {
      const g = await io.read(oid, SD_INODE_GREF_OFFSET, 8 * n);
      for (let i = 0; i < 2 * n; i++) ino.gref[i] = g.readInt32LE(4 * i);
    }
    return ino;
  } catch (e) {
    throw new SdError(errCode, `reading inode ${vid.toString(16)}: ${(e as Error).message}`);
  }
}

/** Slots of an inode that can be non-zero: those its size covers; the whole root for hyper volumes. */
function inodeSpan(h: InodeHeader): number {
  return h.storePolicy === 0 ? countDataObjs(h) : MAX_DATA_OBJS;
}

/** Creates an inode object from its non-zero parts (a created object is zero-filled). */
async function createInode(io: MetaIO, vid: number, ino: Inode): Promise<void> {
  const oid = vidToVdiOid(vid);
  await io.create(oid, ino.encodePrefix());
  const n = lastNonZeroGref(ino) + 1;
  if (n > 0) await io.write(oid, SD_INODE_GREF_OFFSET, ino.grefRange(0, n));
}

function lastNonZeroGref(ino: Inode): number {
  const g = ino.gref;
  for (let i = g.length - 1; i >= 0; i--) if (g[i] !== 0) return i >> 1;
  return -1;
}

async function guarded(code: number, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    throw new SdError(code, (e as Error).message);
  }
}

/** count++ for every allocated slot of a base that gains a child (§9.4). */
function bumpCounts(base: Inode): void {
  if (base.header.storePolicy !== 0) return; // no ref counting for hyper volumes
  const d = base.dataVdiId, g = base.gref;
  for (let i = 0; i < MAX_DATA_OBJS; i++) if (d[i]) g[2 * i + 1]++;
}

/** The new inode (alloc_inode): copies the base map, generation+1 for allocated slots. */
async function allocInode(
  io: MetaIO,
  req: NewVdiRequest,
  p: { nrCopies: number; copyPolicy: number; blockSizeShift: number },
  snapId: number,
  vid: number,
  parent: number,
  base?: Inode,
): Promise<Inode> {
  const ino = Inode.create({
    name: req.name,
    tag: "",
    createTime: req.now,
    snapCtime: 0n,
    vmClockNsec: 0n,
    vdiSize: req.size,
    vmStateSize: 0n,
    copyPolicy: p.copyPolicy,
    storePolicy: req.storePolicy,
    nrCopies: p.nrCopies,
    blockSizeShift: p.blockSizeShift,
    snapId,
    vdiId: vid,
    parentVdiId: parent,
    btreeCounter: 0,
  });
  if (base) {
    ino.dataVdiId.set(base.dataVdiId);
    if (req.storePolicy === 1) {
      await copyBtreeLeaves(io, ino);
    } else {
      const d = base.dataVdiId, g = base.gref;
      for (let i = 0; i < MAX_DATA_OBJS; i++) if (d[i]) ino.gref[2 * i] = g[2 * i] + 1;
    }
  } else if (req.storePolicy === 1) {
    // sd_inode_init(root, depth 1): magic, depth, 0 entries
    ino.dataVdiId[0] = INDEX_MAGIC | (1 << 16);
    ino.dataVdiId[1] = 0;
  }
  return ino;
}

/** A copied depth-2 B-tree root must point at private copies of the leaves (sd_inode_copy_vdis). */
async function copyBtreeLeaves(io: MetaIO, ino: Inode): Promise<void> {
  const d = ino.dataVdiId;
  const depth = d[0] >>> 16;
  if ((d[0] & 0xffff) !== INDEX_MAGIC || depth < 2) return;
  const entries = d[1];
  for (let k = 0; k < entries; k++) {
    const w = 2 + 4 * k; // sd_indirect_idx: idx u32, pad u32, oid u64
    const oid = (BigInt(d[w + 3]) << 32n) | BigInt(d[w + 2]);
    const leaf = await io.read(oid, 0, BTREE_NODE_SIZE);
    const newOid = vidToBtreeOid(ino.header.vdiId, ino.header.btreeCounter++);
    await io.create(newOid, leaf);
    d[w + 2] = Number(newOid & 0xffffffffn);
    d[w + 3] = Number(newOid >> 32n);
  }
}

/**
 * Why `name` cannot be a new VDI's name, or null. Upstream takes any string; ours refuses what
 * would be ambiguous or unsafe where a VDI name becomes an NBD export name (`name@snapshot`) or a
 * path component (cache and farm directories): empty, "." and "..", '/', '@' and control
 * characters.
 */
export function vdiNameProblem(name: string): string | null {
  if (name === "") return "the name is empty";
  if (name === "." || name === "..") return `'${name}' is not a name`;
  if (name.includes("/")) return "it contains '/'";
  if (name.includes("@")) return "it contains '@' (NBD exports name snapshots VDI@snapshot)";
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x1f\x7f]/.test(name)) return "it contains control characters";
  return null;
}

/**
 * NEW_VDI work phase: create (base 0), clone (base = snapshot), snapshot (base == current) or
 * rebase (base != current). Writes inode objects through io; does not touch `t` — the caller
 * broadcasts NOTIFY_VDI_ADD / applies `result.added` on every node.
 */
export async function newVdi(
  io: MetaIO,
  t: VdiTable,
  req: NewVdiRequest,
  defaults: { copies: number; copyPolicy: number; blockSizeShift: number },
): Promise<NewVdiResult> {
  let nrCopies = req.copies, copyPolicy = req.copyPolicy;
  if (!nrCopies) {
    nrCopies = defaults.copies;
    copyPolicy = defaults.copyPolicy;
  }
  if (copyPolicy) nrCopies = ecPolicyCopies(copyPolicy);
  const blockSizeShift = req.blockSizeShift || defaults.blockSizeShift;
  const p = { nrCopies, copyPolicy, blockSizeShift };

  const info = await lookupVdiInfo(io, t, req.name, {});
  let vid: number, snapId: number, oldVid: number;

  if (req.snapshot) {
    if (info.result !== Res.SUCCESS) throw new SdError(info.result);
    vid = info.freeBit;
    snapId = info.snapIdNext;
    oldVid = info.vid;
    const baseVid = req.baseVid;
    if (baseVid === info.vid) {
      // snapshot: the current inode becomes the snapshot and keeps its VID
      const base = await readInode(io, baseVid, Res.BASE_VDI_READ);
      base.header.snapCtime = req.now;
      bumpCounts(base);
      await guarded(Res.BASE_VDI_WRITE, async () => {
        // Only the header (snap_ctime) and the reference counts change.
        await io.write(vidToVdiOid(baseVid), 0, encodeInodeHeader(base.header));
        await writeGref(io, baseVid, base);
      });
      const ino = await allocInode(io, req, p, snapId, vid, baseVid, base);
      await guarded(Res.VDI_WRITE, () => createInode(io, vid, ino));
    } else {
      // rebase: current becomes a snapshot, the new working VDI is based on baseVid
      const base = await readInode(io, baseVid, Res.BASE_VDI_READ);
      const ts = Buffer.alloc(8);
      ts.writeBigUInt64LE(BigInt.asUintN(64, req.now));
      await guarded(Res.VDI_WRITE, () => io.write(vidToVdiOid(info.vid), 520, ts));
      bumpCounts(base);
      await guarded(Res.VDI_WRITE, () => writeGref(io, baseVid, base));
      const ino = await allocInode(io, req, p, snapId, vid, baseVid, base);
      await guarded(Res.VDI_WRITE, () => createInode(io, vid, ino));
    }
  } else {
    if (info.result === Res.SUCCESS) throw new SdError(Res.VDI_EXIST);
    if (info.result !== Res.NO_VDI) throw new SdError(info.result);
    // A brand-new name only: a VDI family an older store already has keeps working.
    if (info.snapIdNext === 0 && vdiNameProblem(req.name)) throw new SdError(Res.INVALID_PARMS);
    vid = info.freeBit;
    snapId = info.snapIdNext || 1;
    oldVid = req.baseVid === 0 ? info.vid : req.baseVid;
    if (req.baseVid === 0) {
      const ino = await allocInode(io, req, p, snapId, vid, 0);
      await guarded(Res.VDI_WRITE, () => createInode(io, vid, ino));
    } else {
      const baseVid = req.baseVid;
      const base = await readInode(io, baseVid, Res.BASE_VDI_READ);
      bumpCounts(base);
      await guarded(Res.BASE_VDI_WRITE, () => writeGref(io, baseVid, base));
      const ino = await allocInode(io, req, p, snapId, vid, baseVid, base);
      await guarded(Res.VDI_WRITE, () => createInode(io, vid, ino));
    }
  }

  const added = {
    vid,
    nrCopies,
    snapshot: false,
    deleted: false,
    copyPolicy,
    blockSizeShift,
    parentVid: oldVid,
    oldVid,
  };
  return { vid, nrCopies, blockSizeShift, copyPolicy, snapId, oldVid, added };
}

/** Writes the reference counts of the covered slots (the rest were read as, and stay, zero). */
async function writeGref(io: MetaIO, vid: number, ino: Inode): Promise<void> {
  const n = Math.max(
    lastNonZeroGref(ino) + 1,
    ino.header.storePolicy === 0 ? countDataObjs(ino.header) : 0,
  );
  if (n > 0) await io.write(vidToVdiOid(vid), SD_INODE_GREF_OFFSET, ino.grefRange(0, n));
}

// ---------------------------------------------------------------------------------------------
// DEL_VDI

/** Number of data objects covered by vdi_size (count_data_objs). */
function countDataObjs(h: InodeHeader): number {
  const shift = BigInt(h.blockSizeShift || 22);
  const n = (h.vdiSize + (1n << shift) - 1n) >> shift;
  return Number(n > BigInt(MAX_DATA_OBJS) ? BigInt(MAX_DATA_OBJS) : n);
}

/** B-tree leaf objects a depth-2 root points at. */
function btreeLeafOids(ino: Inode): bigint[] {
  const d = ino.dataVdiId;
  if ((d[0] & 0xffff) !== INDEX_MAGIC || d[0] >>> 16 !== 2) return [];
  const out: bigint[] = [];
  for (let k = 0; k < d[1]; k++) {
    const w = 2 + 4 * k;
    out.push((BigInt(d[w + 3]) << 32n) | BigInt(d[w + 2]));
  }
  return out;
}

/** Every (idx, vid) pair of a hyper volume's B-tree index. */
async function walkBtree(
  io: MetaIO,
  ino: Inode,
  fn: (idx: number, vid: number) => Promise<void>,
): Promise<void> {
  const d = ino.dataVdiId;
  if ((d[0] & 0xffff) !== INDEX_MAGIC) return;
  const depth = d[0] >>> 16, entries = d[1];
  if (depth === 1) {
    for (let k = 0; k < entries; k++) await fn(d[2 + 2 * k], d[3 + 2 * k]);
    return;
  }
  for (let k = 0; k < entries; k++) {
    const w = 2 + 4 * k;
    const oid = (BigInt(d[w + 3]) << 32n) | BigInt(d[w + 2]);
    const leaf = await io.read(oid, 0, BTREE_NODE_SIZE);
    const n = leaf.readUInt32LE(4);
    for (let j = 0; j < n; j++) {
      await fn(leaf.readUInt32LE(8 + 8 * j), leaf.readUInt32LE(12 + 8 * j));
    }
  }
}

/**
 * DEL_VDI work phase. Flat VDIs must already have an empty data map (dog clears it first);
 * if not, upstream leaves the inode alone but still succeeds. Returns the VID; the caller sets
 * the deleted bit on every node (applyVdiDeleted).
 */
export async function deleteVdi(
  io: MetaIO,
  t: VdiTable,
  name: string,
  opts: { tag?: string; snapid?: number } = {},
): Promise<number> {
  const info = await lookupVdiInfo(io, t, name, opts);
  if (info.result !== Res.SUCCESS) throw new SdError(info.result);
  const vid = info.vid;
  const ino = await readInode(io, vid, Res.NO_VDI);
  const h = ino.header;
  if (h.vdiSize === 0n && h.name === "") return vid;
  if (h.storePolicy === 0) {
    const n = countDataObjs(h);
    for (let i = 0; i < n; i++) if (ino.dataVdiId[i]) return vid; // upstream quirk: success, inode kept
  } else if (io.remove) {
    const remove = io.remove.bind(io);
    await walkBtree(io, ino, async (idx, owner) => {
      if (owner && owner === vid) {
        try {
          await remove(vidToDataOid(owner, idx));
        } catch { /* upstream only logs */ }
      }
    });
    // the index's own leaves are private to this inode (a snapshot copies them)
    for (const oid of btreeLeafOids(ino)) {
      try {
        await remove(oid);
      } catch { /* as above */ }
    }
  }
  const span = inodeSpan(h);
  h.vdiSize = 0n;
  h.name = "";
  // Header cleared, every slot and count it covered zeroed: only the header stays meaningful.
  const oid = vidToVdiOid(vid);
  await io.write(oid, 0, encodeInodeHeader(h));
  for (let i = 0; i < span; i += 1 << 18) {
    const k = Math.min(span - i, 1 << 18);
    await io.write(oid, SD_INODE_DATA_INDEX_OFFSET + 4 * i, Buffer.alloc(4 * k));
  }
  if (h.storePolicy === 0) {
    for (let i = 0; i < span; i += 1 << 18) {
      const k = Math.min(span - i, 1 << 18);
      await io.write(oid, SD_INODE_GREF_OFFSET + 8 * i, Buffer.alloc(8 * k));
    }
  }
  return vid;
}

// ---------------------------------------------------------------------------------------------
// Generational reference counting (§9.4)

export interface Decref {
  idx: number;
  /** Data object whose reference is dropped. */
  oid: bigint;
  generation: number;
  count: number;
  /** gen == 0 && count == 0: sole owner, REMOVE_OBJ the data object directly. */
  remove: boolean;
  /** Ledger object to send DECREF_OBJ to when !remove. */
  ledger: bigint;
}

function u32At(src: Uint32Array | Buffer, i: number): number {
  return src instanceof Uint32Array ? src[i] : src.readUInt32LE(4 * i);
}

function i32At(src: Int32Array | Buffer, i: number): number {
  return src instanceof Int32Array ? src[i] : src.readInt32LE(4 * i);
}

/**
 * An inode write replaces data_vdi_id[start..start+n) (`oldVids` -> `newVids`, with `oldGref`
 * the gref pairs read before the write). Returns the decrefs to issue and the gref slice to write
 * back at gref[start]: pairs of replaced slots are zeroed, unchanged slots keep theirs.
 */
export function decrefPlan(
  startIdx: number,
  oldVids: Uint32Array | Buffer,
  oldGref: Int32Array | Buffer,
  newVids: Uint32Array | Buffer,
): { decrefs: Decref[]; gref: Buffer } {
  const n = oldVids instanceof Uint32Array ? oldVids.length : oldVids.length >>> 2;
  const gref = Buffer.alloc(8 * n);
  const decrefs: Decref[] = [];
  for (let i = 0; i < n; i++) {
    const oldVid = u32At(oldVids, i);
    const gen = i32At(oldGref, 2 * i), count = i32At(oldGref, 2 * i + 1);
    if (oldVid === 0 || oldVid === u32At(newVids, i)) {
      gref.writeInt32LE(gen, 8 * i);
      gref.writeInt32LE(count, 8 * i + 4);
      continue;
    }
    const oid = vidToDataOid(oldVid, startIdx + i);
    decrefs.push({
      idx: startIdx + i,
      oid,
      generation: gen,
      count,
      remove: gen === 0 && count === 0,
      ledger: ledgerOid(oid),
    });
  }
  return { decrefs, gref };
}

export const LEDGER_ENTRIES = MAX_DATA_OBJS;

/**
 * DECREF_PEER on one ledger replica: a missing ledger starts as [0] = 1; ledger[gen] -= 1,
 * ledger[gen+1] += count (u32 wrap-around like upstream). `empty` = all zero -> drop ledger and data.
 */
export function applyLedgerDecref(
  ledger: Uint32Array | null,
  gen: number,
  count: number,
): { ledger: Uint32Array; empty: boolean } {
  let l = ledger;
  if (!l) {
    l = new Uint32Array(LEDGER_ENTRIES);
    l[0] = 1;
  }
  if (gen < 0 || gen + 1 >= l.length) {
    throw new SdError(Res.INVALID_PARMS, `ledger generation ${gen} out of range`);
  }
  l[gen] = (l[gen] - 1) >>> 0;
  l[gen + 1] = (l[gen + 1] + count) >>> 0;
  let empty = true;
  for (let i = 0; i < l.length; i++) {
    if (l[i] !== 0) {
      empty = false;
      break;
    }
  }
  return { ledger: l, empty };
}

/** Ledger object bytes (any prefix; missing entries are zero) -> entries. */
export function ledgerFromBuffer(buf: Uint8Array): Uint32Array {
  const l = new Uint32Array(LEDGER_ENTRIES);
  const n = Math.min(buf.length >>> 2, LEDGER_ENTRIES);
  const v = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  for (let i = 0; i < n; i++) l[i] = v.readUInt32LE(4 * i);
  return l;
}

export function ledgerToBuffer(l: Uint32Array): Buffer {
  const b = Buffer.alloc(4 * l.length);
  for (let i = 0; i < l.length; i++) if (l[i]) b.writeUInt32LE(l[i], 4 * i);
  return b;
}

// ---------------------------------------------------------------------------------------------
// VDI attributes (§9.7)

export const AttrOff = {
  name: 0,
  tag: 256,
  ctime: 512,
  snapId: 520,
  valueLen: 524,
  key: 528,
  value: 784,
} as const;

/** attr_id = FNV-1a-64(name[256] ‖ tag[256] ‖ snap_id ‖ key[256]) & 0xffffffff. */
export function hashVdiAttr(attr: Buffer): number {
  const a = padAttr(attr);
  let h = fnv1a(a.subarray(AttrOff.name, AttrOff.name + 256));
  h = fnv1a(a.subarray(AttrOff.tag, AttrOff.tag + 256), h);
  h = fnv1a(a.subarray(AttrOff.snapId, AttrOff.snapId + 4), h);
  h = fnv1a(a.subarray(AttrOff.key, AttrOff.key + 256), h);
  return Number(h & 0xffffffffn);
}

function padAttr(attr: Buffer): Buffer {
  if (attr.length >= SD_ATTR_OBJ_SIZE) return attr.subarray(0, SD_ATTR_OBJ_SIZE);
  const b = Buffer.alloc(SD_ATTR_OBJ_SIZE);
  attr.copy(b);
  return b;
}

/** C strcmp over a NUL-terminated field. */
function cstrEq(a: Buffer, b: Buffer, off: number, size: number): boolean {
  for (let i = off; i < off + size; i++) {
    if (a[i] !== b[i]) return false;
    if (a[i] === 0) return true;
  }
  return true;
}

function attrHeaderEq(a: Buffer, b: Buffer): boolean {
  return cstrEq(a, b, AttrOff.name, 256) &&
    cstrEq(a, b, AttrOff.tag, 256) &&
    a.readUInt32LE(AttrOff.snapId) === b.readUInt32LE(AttrOff.snapId) &&
    cstrEq(a, b, AttrOff.key, 256);
}

/**
 * GET_VDI_ATTR work phase (after the caller's lookup of name/tag/snapid supplied create_time).
 * Probes attr_id, attr_id+1, ... until an absent slot or one with the same (name, tag, snap_id,
 * key). CREAT creates (data as sent) or overwrites; EXCL -> VDI_EXIST if present; DEL writes a
 * NUL at offset 0; no flags -> NO_OBJ if absent.
 */
export async function getVdiAttr(
  io: MetaIO,
  _t: VdiTable,
  attr: Buffer,
  flags: { creat: boolean; excl: boolean; del: boolean },
  vdiCreateTime: bigint,
): Promise<{ vid: number; attrId: number }> {
  if (attr.length < AttrOff.key + 256) throw new SdError(Res.INVALID_PARMS, "short vdi attr");
  const data = Buffer.from(attr);
  data.writeBigUInt64LE(BigInt.asUintN(64, vdiCreateTime), AttrOff.ctime);
  const full = padAttr(data);
  const nameEnd = full.indexOf(0, AttrOff.name);
  const name = full.subarray(AttrOff.name, nameEnd < 0 || nameEnd > 256 ? 256 : nameEnd);
  const vid = sdHashVdi(name);
  let attrId = hashVdiAttr(full);
  const end = (attrId - 1) >>> 0;
  while (attrId !== end) {
    const oid = vidToAttrOid(vid, attrId);
    let cur: Buffer | null = null;
    try {
      cur = await io.read(oid, 0, SD_ATTR_OBJ_SIZE);
    } catch (e) {
      if (!(e instanceof SdError) || e.code !== Res.NO_OBJ) throw e;
    }
    if (!cur) {
      if (!flags.creat) throw new SdError(Res.NO_OBJ);
      await guarded(Res.EIO, () => io.create(oid, data));
      return { vid, attrId };
    }
    if (attrHeaderEq(padAttr(cur), full)) {
      if (flags.excl) throw new SdError(Res.VDI_EXIST);
      if (flags.del) await guarded(Res.EIO, () => io.write(oid, AttrOff.name, Buffer.alloc(1)));
      else if (flags.creat) await guarded(Res.EIO, () => io.create(oid, full));
      return { vid, attrId };
    }
    attrId = (attrId + 1) >>> 0;
  }
  throw new SdError(Res.FULL_VDI);
}
