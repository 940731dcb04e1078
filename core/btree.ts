// The hyper-volume index (protocol.md §9.6): a B-tree of (index, vid) entries in the inode and
// its leaf objects, read, updated and written back in batches.
import { Buffer } from "node:buffer";
import { SdError } from "./errors.ts";
import { type InodeHeader, InodeOff } from "./inode.ts";
import { SD_INODE_HEADER_SIZE, vidToBtreeOid, vidToVdiOid } from "./oid.ts";
import { Res } from "./proto.ts";
import { readObject, type Requester, type SlotMap } from "./object-io.ts";

const INDEX_MAGIC = 0x6274;
const BTREE_COUNTER_OFFSET = InodeOff.btreeCounter;

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
