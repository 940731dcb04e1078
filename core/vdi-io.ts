// Client side VDI I/O (protocol.md §10), shared by dog and the NBD gateway. Works over any
// request function, so it can talk to a remote sheep or to the local gateway directly.
import { Buffer } from "node:buffer";
import { ObjectError, SdError } from "./errors.ts";
import { decodeInodeHeader, Inode, type InodeHeader, InodeOff } from "./inode.ts";
import {
  MAX_DATA_OBJS,
  SD_INODE_HEADER_SIZE,
  vidToBtreeOid,
  vidToDataOid,
  vidToVdiOid,
} from "./oid.ts";
import { fixedString, Flag, Header, Op, Res } from "./proto.ts";

export type Requester = (hdr: Header, data?: Buffer) => Promise<{ hdr: Header; data: Buffer }>;

/** Parallel object requests per read/write call. */
export const IO_PARALLEL = 16;
/** Largest single READ_OBJ we issue; bigger objects are read in pieces. */
const MAX_READ_CHUNK = 4 * 1024 * 1024;

const INDEX_MAGIC = 0x6274;
const BTREE_COUNTER_OFFSET = InodeOff.btreeCounter;

/** Runs at most `n` tasks at once. */
export class Limiter {
  private active = 0;
  private readonly waiters: (() => void)[] = [];
  constructor(private readonly n: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.n) await new Promise<void>((r) => this.waiters.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      const w = this.waiters.shift();
      if (w) w();
    }
  }
}

function checkResult(rsp: { hdr: Header }): void {
  if (rsp.hdr.result !== Res.SUCCESS) throw new SdError(rsp.hdr.result);
}

// ---------------------------------------------------------------------------------------------
// single requests

export interface VdiInfo {
  vid: number;
  copies: number;
  blockSizeShift: number;
}

/** GET_VDI_INFO (payload name[256], or name+tag[512] when a tag is given). Throws SdError. */
export async function getVdiInfo(
  req: Requester,
  name: string,
  snapid = 0,
  tag = "",
): Promise<VdiInfo> {
  const payload = tag
    ? Buffer.concat([fixedString(name, 256), fixedString(tag, 256)])
    : fixedString(name, 256);
  const h = Header.req(Op.GET_VDI_INFO, { flags: Flag.CMD_WRITE, dataLength: payload.length });
  h.snapid = snapid;
  const rsp = await req(h, payload);
  checkResult(rsp);
  return {
    vid: rsp.hdr.rspVdiId,
    copies: rsp.hdr.rspVdiCopies,
    blockSizeShift: rsp.hdr.rspVdiBlockSizeShift,
  };
}

/** READ_OBJ of `len` bytes at `offset`; short or trimmed replies are zero-filled. */
export async function readObject(
  req: Requester,
  oid: bigint,
  len: number,
  offset = 0,
  direct = false,
): Promise<Buffer> {
  const h = Header.req(Op.READ_OBJ, { dataLength: len, flags: direct ? Flag.CMD_DIRECT : 0 });
  h.oid = oid;
  h.offset = offset;
  const rsp = await req(h);
  checkResult(rsp);
  const d = rsp.data;
  const at = Number(rsp.hdr.rspObjOffset);
  if (at === 0 && d.length === len) return d;
  const out = Buffer.alloc(len);
  d.copy(out, Math.min(at, len), 0, Math.max(0, Math.min(d.length, len - at)));
  return out;
}

export interface WriteOpts {
  create?: boolean;
  cowOid?: bigint;
  copies?: number;
  copyPolicy?: number;
  flags?: number;
  direct?: boolean;
}

/** WRITE_OBJ or CREATE_AND_WRITE_OBJ (with COW when cowOid is set). Throws SdError. */
export async function writeObject(
  req: Requester,
  oid: bigint,
  data: Buffer,
  offset = 0,
  o: WriteOpts = {},
): Promise<void> {
  let flags = (o.flags ?? 0) | Flag.CMD_WRITE;
  if (o.cowOid) flags |= Flag.CMD_COW;
  if (o.direct) flags |= Flag.CMD_DIRECT;
  const h = Header.req(o.create ? Op.CREATE_AND_WRITE_OBJ : Op.WRITE_OBJ, {
    flags,
    dataLength: data.length,
  });
  h.oid = oid;
  h.cowOid = o.cowOid ?? 0n;
  h.objCopies = o.copies ?? 0;
  h.objCopyPolicy = o.copyPolicy ?? 0;
  h.offset = offset;
  const rsp = await req(h, data);
  if (rsp.hdr.result !== Res.SUCCESS) throw new ObjectError(rsp.hdr.result, oid);
}

export async function readInodeHeader(req: Requester, vid: number): Promise<InodeHeader> {
  return decodeInodeHeader(await readObject(req, vidToVdiOid(vid), SD_INODE_HEADER_SIZE, 0, true));
}

export function objectSizeOf(h: InodeHeader): number {
  return 2 ** h.blockSizeShift;
}

/** count_data_objs(): number of data slots covering vdi_size. */
export function countDataObjs(h: InodeHeader): number {
  const os = BigInt(objectSizeOf(h));
  return Number((h.vdiSize + os - 1n) / os);
}

/** Data object map of a VDI: dense for flat volumes, sparse for hyper volumes (B-tree). */
export interface SlotMap {
  get(idx: number): number;
  /** Dense array for flat volumes (length = covered slots), null for hyper volumes. */
  flat: Uint32Array | null;
  /** Allocated (idx, vid) pairs in index order. */
  entries(): Iterable<[number, number]>;
  /** Hyper volumes: the B-tree leaf objects (not data). */
  leafOids?(): bigint[];
}

function flatMap(slots: Uint32Array): SlotMap {
  return {
    flat: slots,
    get: (idx) => (idx < slots.length ? slots[idx] : 0),
    *entries() {
      for (let i = 0; i < slots.length; i++) if (slots[i] !== 0) yield [i, slots[i]];
    },
  };
}

function decodeSlots(buf: Buffer, n: number): Uint32Array {
  const out = new Uint32Array(n);
  const lim = Math.min(n, buf.length >> 2);
  for (let i = 0; i < lim; i++) out[i] = buf.readUInt32LE(i * 4);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Hyper volume B-tree index (protocol.md §9.6, upstream lib/sd_inode.c)

/** Size of a B-tree node: the root area (data_vdi_id[]) and every leaf object. */
export const BTREE_NODE_SIZE = 4 * 1024 * 1024;
const INDEX_HEADER_SIZE = 8;
/** sd_index entries per node (root at depth 1, or a leaf). */
export const BTREE_MAX_INDEX = Math.floor((BTREE_NODE_SIZE - INDEX_HEADER_SIZE) / 8);
/** sd_indirect_idx entries in a depth-2 root. */
export const BTREE_MAX_INDIRECT = Math.floor((BTREE_NODE_SIZE - INDEX_HEADER_SIZE) / 16);

interface BtreeLeaf {
  oid: bigint;
  /** Largest idx stored in the leaf (the indirect entry's key). */
  max: number;
  idx: number[];
  vid: number[];
}

/** One object write the index needs to persist its changes, in the order given. */
export interface BtreeWrite {
  oid: bigint;
  offset: number;
  data: Buffer;
  create: boolean;
}

/** First position whose key is >= k (upstream nbsearch). */
function lowerBound(keys: number[], k: number): number {
  let lo = 0, hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keys[mid] < k) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** First leaf whose largest idx is >= k. */
function leafFor(leaves: BtreeLeaf[], k: number): number {
  let lo = 0, hi = leaves.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (leaves[mid].max < k) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function encodeIndexNode(
  depth: number,
  n: number,
  body: (b: Buffer) => void,
  size: number,
): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt16LE(INDEX_MAGIC, 0);
  b.writeUInt16LE(depth, 2);
  b.writeUInt32LE(n, 4);
  body(b);
  return b;
}

function decodeEntries(b: Buffer, n: number, at: number): { idx: number[]; vid: number[] } {
  const idx: number[] = new Array(n), vid: number[] = new Array(n);
  for (let i = 0; i < n; i++) {
    idx[i] = b.readUInt32LE(at + i * 8);
    vid[i] = b.readUInt32LE(at + i * 8 + 4);
  }
  return { idx, vid };
}

/**
 * In-memory copy of a hyper volume's index with upstream's insert algorithm: a depth-1 root in
 * data_vdi_id[] holding sorted `sd_index {idx, vdi_id}` entries; when full it is split into two
 * leaf objects and becomes a depth-2 root of `sd_indirect_idx {max idx, oid}` entries; a full
 * leaf is split in halves, an index past the last leaf goes to the last leaf or a new one.
 * Changes are collected and handed out by takeWrites() for the caller to persist.
 */
export class BtreeIndex implements SlotMap {
  readonly flat = null;
  depth = 1;
  /** Depth-1 root entries. */
  private rootIdx: number[] = [];
  private rootVid: number[] = [];
  /** Depth-2 root: leaves in key order. */
  private leaves: BtreeLeaf[] = [];
  private rootDirty = false;
  private counterDirty = false;
  private readonly created = new Set<BtreeLeaf>();
  private readonly dirty = new Set<BtreeLeaf>();

  constructor(
    readonly vid: number,
    /** Next free btree node number (inode btree_counter). */
    public counter = 0,
    private readonly maxIndex = BTREE_MAX_INDEX,
    private readonly maxIndirect = BTREE_MAX_INDIRECT,
  ) {}

  /**
   * Decodes a root (bytes from offset 4664 of the inode: header + entries); leaves of a depth-2
   * root are fetched with readLeaf (header + entries of the leaf object). A root whose first u32
   * is 0 is an empty, uninitialised index.
   */
  static async decode(
    vid: number,
    counter: number,
    root: Buffer,
    readLeaf: (oid: bigint, entries: number) => Promise<Buffer>,
    limits: { maxIndex?: number; maxIndirect?: number } = {},
  ): Promise<BtreeIndex> {
    const t = new BtreeIndex(vid, counter, limits.maxIndex, limits.maxIndirect);
    if (root.length < INDEX_HEADER_SIZE || root.readUInt32LE(0) === 0) return t;
    const magic = root.readUInt16LE(0), depth = root.readUInt16LE(2), n = root.readUInt32LE(4);
    if (magic !== INDEX_MAGIC) {
      throw new SdError(
        Res.INVALID_PARMS,
        `B-tree of ${vid.toString(16)} is corrupt (magic ${magic.toString(16)})`,
      );
    }
    if (depth === 1) {
      const e = decodeEntries(
        root,
        Math.min(n, (root.length - INDEX_HEADER_SIZE) >> 3),
        INDEX_HEADER_SIZE,
      );
      t.rootIdx = e.idx;
      t.rootVid = e.vid;
      return t;
    }
    if (depth !== 2) {
      throw new SdError(Res.INVALID_PARMS, `B-tree of ${vid.toString(16)} has depth ${depth}`);
    }
    t.depth = 2;
    for (let k = 0; k < n; k++) {
      const at = INDEX_HEADER_SIZE + k * 16;
      const max = root.readUInt32LE(at);
      const oid = root.readBigUInt64LE(at + 8);
      const lh = await readLeaf(oid, -1);
      const ln = lh.readUInt16LE(0) === INDEX_MAGIC ? lh.readUInt32LE(4) : 0;
      const lb = ln ? await readLeaf(oid, ln) : Buffer.alloc(INDEX_HEADER_SIZE);
      const e = decodeEntries(
        lb,
        Math.min(ln, (lb.length - INDEX_HEADER_SIZE) >> 3),
        INDEX_HEADER_SIZE,
      );
      t.leaves.push({ oid, max, idx: e.idx, vid: e.vid });
    }
    return t;
  }

  get(idx: number): number {
    let keys = this.rootIdx, vals = this.rootVid;
    if (this.depth === 2) {
      const p = leafFor(this.leaves, idx);
      if (p >= this.leaves.length) return 0;
      keys = this.leaves[p].idx;
      vals = this.leaves[p].vid;
    }
    const q = lowerBound(keys, idx);
    return q < keys.length && keys[q] === idx ? vals[q] : 0;
  }

  *entries(): Iterable<[number, number]> {
    const nodes = this.depth === 1 ? [{ idx: this.rootIdx, vid: this.rootVid }] : this.leaves;
    for (const n of nodes) {
      for (let i = 0; i < n.idx.length; i++) if (n.vid[i] !== 0) yield [n.idx[i], n.vid[i]];
    }
  }

  /** B-tree leaf objects referenced by the root. */
  leafOids(): bigint[] {
    return this.depth === 2 ? this.leaves.map((l) => l.oid) : [];
  }

  /** Number of (idx, vid) entries, including ones set to 0. */
  get size(): number {
    return this.depth === 1
      ? this.rootIdx.length
      : this.leaves.reduce((s, l) => s + l.idx.length, 0);
  }

  private newLeafOid(): bigint {
    this.counterDirty = true;
    return vidToBtreeOid(this.vid, this.counter++);
  }

  /** sd_inode_set_vid() for store_policy 1. */
  set(idx: number, vid: number): void {
    if (!Number.isInteger(idx) || idx < 0 || idx > 0xffffffff) {
      throw new RangeError(`bad index ${idx}`);
    }
    for (;;) {
      if (this.depth === 1) {
        const p = lowerBound(this.rootIdx, idx);
        if (p < this.rootIdx.length && this.rootIdx[p] === idx) {
          this.rootVid[p] = vid;
        } else if (this.rootIdx.length >= this.maxIndex) {
          this.splitRoot();
          continue;
        } else {
          this.rootIdx.splice(p, 0, idx);
          this.rootVid.splice(p, 0, vid);
        }
        this.rootDirty = true;
        return;
      }
      const p = leafFor(this.leaves, idx);
      if (p < this.leaves.length) {
        const leaf = this.leaves[p];
        const q = lowerBound(leaf.idx, idx);
        if (q < leaf.idx.length && leaf.idx[q] === idx) {
          leaf.vid[q] = vid;
        } else if (leaf.idx.length >= this.maxIndex) {
          this.splitLeaf(p);
          continue;
        } else {
          leaf.idx.splice(q, 0, idx);
          leaf.vid.splice(q, 0, vid);
        }
        this.dirty.add(leaf);
        return;
      }
      // beyond the last leaf: append to it while it has room, else start a new leaf
      const last = this.leaves[this.leaves.length - 1];
      if (last && last.idx.length < this.maxIndex) {
        last.idx.push(idx);
        last.vid.push(vid);
        last.max = idx;
        this.dirty.add(last);
      } else {
        if (this.leaves.length >= this.maxIndirect) {
          throw new SdError(Res.NO_SPACE, "the B-tree index is full");
        }
        const leaf = { oid: this.newLeafOid(), max: idx, idx: [idx], vid: [vid] };
        this.leaves.push(leaf);
        this.created.add(leaf);
      }
      this.rootDirty = true;
      return;
    }
  }

  /** transfer_to_idx_root(): the full depth-1 root is moved into two leaves. */
  private splitRoot(): void {
    const num = this.rootIdx.length >>> 1;
    const mk = (a: number, b: number): BtreeLeaf => {
      const idx = this.rootIdx.slice(a, b), vid = this.rootVid.slice(a, b);
      return { oid: this.newLeafOid(), max: idx[idx.length - 1], idx, vid };
    };
    const left = mk(0, num), right = mk(num, this.rootIdx.length);
    this.leaves = [left, right];
    this.created.add(left);
    this.created.add(right);
    this.rootIdx = [];
    this.rootVid = [];
    this.depth = 2;
    this.rootDirty = true;
  }

  /** split_index_node(): the lower half of a full leaf moves to a new leaf placed before it. */
  private splitLeaf(p: number): void {
    const old = this.leaves[p];
    const num = old.idx.length >>> 1;
    const idx = old.idx.splice(0, num), vid = old.vid.splice(0, num);
    const leaf = { oid: this.newLeafOid(), max: idx[idx.length - 1], idx, vid };
    this.leaves.splice(p, 0, leaf);
    this.created.add(leaf);
    this.dirty.add(old);
    this.rootDirty = true;
  }

  private encodeLeaf(l: BtreeLeaf): Buffer {
    return encodeIndexNode(1, l.idx.length, (b) => {
      for (let i = 0; i < l.idx.length; i++) {
        b.writeUInt32LE(l.idx[i] >>> 0, INDEX_HEADER_SIZE + i * 8);
        b.writeUInt32LE(l.vid[i] >>> 0, INDEX_HEADER_SIZE + i * 8 + 4);
      }
    }, INDEX_HEADER_SIZE + 8 * l.idx.length);
  }

  /** Root bytes (header + entries) as stored at offset 4664 of the inode. */
  encodeRoot(): Buffer {
    if (this.depth === 1) {
      return this.encodeLeaf({ oid: 0n, max: 0, idx: this.rootIdx, vid: this.rootVid });
    }
    return encodeIndexNode(2, this.leaves.length, (b) => {
      this.leaves.forEach((l, k) => {
        b.writeUInt32LE(l.max >>> 0, INDEX_HEADER_SIZE + k * 16);
        b.writeBigUInt64LE(l.oid, INDEX_HEADER_SIZE + k * 16 + 8);
      });
    }, INDEX_HEADER_SIZE + 16 * this.leaves.length);
  }

  /**
   * The writes that persist every change since the last call: new leaves (created), changed
   * leaves, btree_counter, then the root — children before the nodes that point at them.
   */
  takeWrites(): BtreeWrite[] {
    const ino = vidToVdiOid(this.vid);
    const w: BtreeWrite[] = [];
    const live = new Set(this.leaves);
    for (const l of this.created) {
      if (live.has(l)) w.push({ oid: l.oid, offset: 0, data: this.encodeLeaf(l), create: true });
      this.dirty.delete(l);
    }
    for (const l of this.dirty) {
      if (live.has(l)) w.push({ oid: l.oid, offset: 0, data: this.encodeLeaf(l), create: false });
    }
    if (this.counterDirty) {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(this.counter >>> 0);
      w.push({ oid: ino, offset: BTREE_COUNTER_OFFSET, data: b, create: false });
    }
    if (this.rootDirty) {
      w.push({ oid: ino, offset: SD_INODE_HEADER_SIZE, data: this.encodeRoot(), create: false });
    }
    this.created.clear();
    this.dirty.clear();
    this.counterDirty = false;
    this.rootDirty = false;
    return w;
  }
}

/** Reads a hyper volume's B-tree index (protocol.md §9.6). */
export async function readBtree(
  req: Requester,
  vid: number,
  header: InodeHeader,
): Promise<BtreeIndex> {
  const oid = vidToVdiOid(vid);
  const rh = await readObject(req, oid, INDEX_HEADER_SIZE, SD_INODE_HEADER_SIZE, true);
  const depth = rh.readUInt16LE(2), n = rh.readUInt32LE(4);
  const ok = rh.readUInt16LE(0) === INDEX_MAGIC && n > 0;
  const size = INDEX_HEADER_SIZE + (ok ? n * (depth === 2 ? 16 : 8) : 0);
  const root = ok
    ? await readObject(req, oid, Math.min(size, BTREE_NODE_SIZE), SD_INODE_HEADER_SIZE, true)
    : rh;
  return BtreeIndex.decode(
    vid,
    header.btreeCounter,
    root,
    (leaf, entries) =>
      readObject(
        req,
        leaf,
        entries < 0 ? INDEX_HEADER_SIZE : INDEX_HEADER_SIZE + entries * 8,
        0,
        true,
      ),
  );
}

/** Header plus data map of the inode of `vid` (flat: the covered prefix of data_vdi_id). */
export async function readInodeWithSlots(
  req: Requester,
  vid: number,
): Promise<{ header: InodeHeader; slots: SlotMap }> {
  const header = await readInodeHeader(req, vid);
  if (header.storePolicy === 1) return { header, slots: await readBtree(req, vid, header) };
  const n = Math.min(countDataObjs(header), MAX_DATA_OBJS);
  if (n === 0) return { header, slots: flatMap(new Uint32Array(0)) };
  const buf = await readObject(req, vidToVdiOid(vid), n * 4, SD_INODE_HEADER_SIZE, true);
  return { header, slots: flatMap(decodeSlots(buf, n)) };
}

// ---------------------------------------------------------------------------------------------
// VdiHandle

export interface OpenOpts {
  snapid?: number;
  tag?: string;
}

export class VdiHandle {
  vid = 0;
  size = 0;
  objectSize = 0;
  readOnly = false;
  inode!: Inode;
  private slots!: SlotMap;
  private readonly limiter = new Limiter(IO_PARALLEL);
  private readonly creating = new Map<number, Promise<void>>();
  private generation = 0;
  private reloading: Promise<void> | null = null;
  private btreeFlush: Promise<void> = Promise.resolve();

  private constructor(
    private readonly req: Requester,
    readonly name: string,
    private readonly opts: OpenOpts,
  ) {}

  /** GET_VDI_INFO then READ_OBJ of the inode header and data_vdi_id prefix. */
  static async open(req: Requester, name: string, opts: OpenOpts = {}): Promise<VdiHandle> {
    const info = await getVdiInfo(req, name, opts.snapid ?? 0, opts.tag ?? "");
    return VdiHandle.openVid(req, name, info.vid, opts);
  }

  /** Opens a VDI whose vid was already looked up (name/opts are used by reload()). */
  static async openVid(
    req: Requester,
    name: string,
    vid: number,
    opts: OpenOpts = {},
  ): Promise<VdiHandle> {
    const h = new VdiHandle(req, name, opts);
    await h.load(vid);
    return h;
  }

  get header(): InodeHeader {
    return this.inode.header;
  }

  /** Number of data slots covering the VDI. */
  get objectCount(): number {
    return Math.ceil(this.size / this.objectSize);
  }

  private get pinned(): boolean {
    return !!(this.opts.snapid || this.opts.tag);
  }

  private async load(vid: number): Promise<void> {
    const { header, slots } = await readInodeWithSlots(this.req, vid);
    this.slots = slots;
    this.inode = new Inode(header, slots.flat ?? new Uint32Array(0), new Int32Array(0));
    this.vid = vid;
    this.size = Number(header.vdiSize);
    this.objectSize = objectSizeOf(header);
    this.readOnly = this.pinned || header.snapCtime !== 0n;
    this.generation++;
  }

  /** Re-resolves the name (the VDI may have been snapshotted) and re-reads the inode. */
  reload(): Promise<void> {
    if (!this.reloading) {
      this.reloading = (async () => {
        try {
          const info = await getVdiInfo(
            this.req,
            this.name,
            this.opts.snapid ?? 0,
            this.opts.tag ?? "",
          );
          await this.load(info.vid);
        } finally {
          this.reloading = null;
        }
      })();
    }
    return this.reloading;
  }

  /** VID owning data object idx (0 = unallocated). */
  slotOf(idx: number): number {
    return this.slots.get(idx);
  }

  isAllocated(idx: number): boolean {
    return this.slots.get(idx) !== 0;
  }

  /** Allocated (idx, vid) pairs. */
  allocated(): Iterable<[number, number]> {
    return this.slots.entries();
  }

  private segments(
    offset: number,
    length: number,
  ): { idx: number; off: number; len: number; pos: number }[] {
    const out = [];
    const os = this.objectSize;
    let pos = 0;
    while (pos < length) {
      const abs = offset + pos;
      const idx = Math.floor(abs / os);
      const off = abs - idx * os;
      const len = Math.min(os - off, length - pos);
      out.push({ idx, off, len, pos });
      pos += len;
    }
    return out;
  }

  private checkRange(offset: number, length: number): void {
    if (
      !(Number.isInteger(offset) && Number.isInteger(length)) || offset < 0 || length < 0 ||
      offset + length > this.size
    ) {
      throw new SdError(
        Res.INVALID_PARMS,
        `range ${offset}+${length} is beyond the end of the VDI (${this.size})`,
      );
    }
  }

  /** Reads [offset, offset+length); unallocated objects read as zeros. */
  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    const out = Buffer.alloc(length);
    const tasks: Promise<void>[] = [];
    for (const s of this.segments(offset, length)) {
      const vid = this.slots.get(s.idx);
      if (!vid) continue;
      const oid = vidToDataOid(vid, s.idx);
      for (let done = 0; done < s.len; done += MAX_READ_CHUNK) {
        const n = Math.min(MAX_READ_CHUNK, s.len - done);
        const at = s.pos + done, objOff = s.off + done;
        tasks.push(this.limiter.run(async () => {
          const d = await readObject(this.req, oid, n, objOff);
          d.copy(out, at, 0, n);
        }));
      }
    }
    await settleAll(tasks);
    return out;
  }

  /**
   * Writes data at offset: CREATE_AND_WRITE for empty slots, COW create for slots owned by
   * another VID, WRITE_OBJ for own objects; then one inode update per run of new slots.
   */
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.readOnly) throw new SdError(Res.READONLY);
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    for (let attempt = 0;; attempt++) {
      const gen = this.generation;
      try {
        await this.writeOnce(offset, data);
        return;
      } catch (e) {
        // The VDI was snapshotted under us: our VID is read-only now; follow the working VDI.
        if (e instanceof SdError && e.code === Res.READONLY && !this.pinned && attempt < 4) {
          if (gen === this.generation) await this.reload();
          if (this.readOnly) throw e;
          continue;
        }
        throw e;
      }
    }
  }

  private async writeOnce(offset: number, data: Buffer): Promise<void> {
    const created: number[] = [];
    const tasks = this.segments(offset, data.length).map((s) =>
      this.limiter.run(() =>
        this.writeSegment(s.idx, s.off, data.subarray(s.pos, s.pos + s.len), created)
      )
    );
    const results = await Promise.allSettled(tasks);
    if (created.length) await this.updateSlots(created);
    for (const r of results) if (r.status === "rejected") throw r.reason;
  }

  private async writeSegment(
    idx: number,
    off: number,
    buf: Buffer,
    created: number[],
  ): Promise<void> {
    for (;;) {
      const busy = this.creating.get(idx);
      if (busy) {
        await busy.catch(() => {});
        continue;
      }
      const h = this.header;
      const vid = this.vid;
      const cur = this.slots.get(idx);
      const oid = vidToDataOid(vid, idx);
      if (cur === vid) {
        await writeObject(this.req, oid, buf, off, {
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
        });
        return;
      }
      const p = (async () => {
        await writeObject(this.req, oid, buf, off, {
          create: true,
          cowOid: cur ? vidToDataOid(cur, idx) : 0n,
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
        });
        if (this.vid === vid) this.setSlot(idx, vid);
      })();
      this.creating.set(idx, p);
      try {
        await p;
        created.push(idx);
      } finally {
        this.creating.delete(idx);
      }
      return;
    }
  }

  private setSlot(idx: number, vid: number): void {
    const f = this.slots.flat;
    if (f && idx < f.length) f[idx] = vid;
    else if (this.slots instanceof BtreeIndex) this.slots.set(idx, vid);
  }

  /**
   * Persists the B-tree changes made so far. Serialized, so a later flush never lands before
   * an earlier one; the writes are taken synchronously, so every flush writes the newest state.
   */
  private flushBtree(): Promise<void> {
    const run = async () => {
      const t = this.slots;
      if (!(t instanceof BtreeIndex)) return;
      const h = this.header;
      for (const w of t.takeWrites()) {
        await writeObject(this.req, w.oid, w.data, w.offset, {
          create: w.create,
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
          direct: true,
        });
      }
    };
    const p = this.btreeFlush.catch(() => {}).then(run);
    this.btreeFlush = p;
    return p;
  }

  /** Writes data_vdi_id for the given indexes, one WRITE_OBJ per run of consecutive indexes. */
  private async updateSlots(idxs: number[]): Promise<void> {
    if (this.slots instanceof BtreeIndex) return this.flushBtree();
    const f = this.slots.flat;
    if (!f) return;
    const sorted = [...new Set(idxs)].sort((a, b) => a - b);
    const runs: [number, number][] = [];
    for (const i of sorted) {
      const last = runs[runs.length - 1];
      if (last && last[1] === i - 1) last[1] = i;
      else runs.push([i, i]);
    }
    const h = this.header;
    const ino = vidToVdiOid(this.vid);
    await settleAll(runs.map(([a, b]) => {
      const payload = Buffer.allocUnsafe((b - a + 1) * 4);
      for (let i = a; i <= b; i++) payload.writeUInt32LE(f[i], (i - a) * 4);
      return writeObject(this.req, ino, payload, SD_INODE_HEADER_SIZE + 4 * a, {
        copies: h.nrCopies,
        copyPolicy: h.copyPolicy,
        direct: true,
      });
    }));
  }

  /**
   * Unmaps object idx by zeroing its slot; the cluster reclaims the object. Hyper volumes have
   * no reference counting: an object of our own VID is removed here (only this VDI can refer to
   * it), one inherited from a snapshot just loses its slot.
   */
  async discardObject(idx: number): Promise<void> {
    if (this.readOnly) throw new SdError(Res.READONLY);
    const busy = this.creating.get(idx);
    if (busy) await busy.catch(() => {});
    const owner = this.slots.get(idx);
    if (!owner) return;
    const h = this.header;
    const t = this.slots;
    if (t instanceof BtreeIndex) {
      t.set(idx, 0);
      await this.flushBtree();
      if (owner === this.vid) {
        const rh = Header.req(Op.REMOVE_OBJ);
        rh.oid = vidToDataOid(owner, idx);
        const r = await this.req(rh);
        if (r.hdr.result !== Res.SUCCESS && r.hdr.result !== Res.NO_OBJ) {
          throw new SdError(r.hdr.result);
        }
      }
      return;
    }
    const f = t.flat!;
    f[idx] = 0;
    await writeObject(
      this.req,
      vidToVdiOid(this.vid),
      Buffer.alloc(4),
      SD_INODE_HEADER_SIZE + 4 * idx,
      {
        copies: h.nrCopies,
        copyPolicy: h.copyPolicy,
        direct: true,
      },
    );
  }
}

/** Waits for every task, then rethrows the first failure. */
async function settleAll(tasks: Promise<unknown>[]): Promise<void> {
  const rs = await Promise.allSettled(tasks);
  for (const r of rs) if (r.status === "rejected") throw r.reason;
}
