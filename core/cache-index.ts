// The object cache's bookkeeping (sheep/object-cache.ts does the I/O): which objects are cached,
// their LRU order, their dirty blocks, and the byte accounting that keeps the cache within its
// size. Also the codec of the 4 KiB header that starts every cache file. Pure: no files, no clock
// (callers pass `now`).
import { Buffer } from "node:buffer";

/** Dirty tracking granularity: an object is cut into at most 64 blocks (one bit each). */
export const CACHE_BLOCKS = 64;
/** Every cache file starts with one header page; the object's bytes follow it. */
export const CACHE_HEADER_SIZE = 4096;
const MAGIC = 0x3148434143445321n; // "!SDCACH1" little-endian

export interface CacheEntry {
  oid: bigint;
  vid: number;
  objSize: number;
  /** Bit i: sector i holds writes not yet pushed to the cluster. */
  dirty: bigint;
  /** Bit i: sector i in the file is the object's (a write miss fetches only what it must). */
  valid: bigint;
  /** The object does not exist in the cluster yet: the push is a CREATE_AND_WRITE of it all. */
  create: boolean;
  /** When the entry became dirty (caller's clock), for the age bound of the background writer. */
  dirtySince: number;
  /** Readers and writers in progress: a pinned entry is never reclaimed. */
  pins: number;
  /** CRC-32 of each block as it is in the file (checked at start). */
  crcs: Uint32Array;
}

/** Bytes a cached object takes on disk. */
export function fileBytes(objSize: number): number {
  return CACHE_HEADER_SIZE + objSize;
}

/** Block size for an object: a 64th of it, at least 4 KiB (the O_DIRECT alignment). */
export function blockSizeOf(objSize: number): number {
  return Math.max(4096, Math.ceil(objSize / CACHE_BLOCKS / 4096) * 4096);
}

export function blockCountOf(objSize: number): number {
  return Math.ceil(objSize / blockSizeOf(objSize));
}

// Dirty and valid bits are per sector (4 KiB, at most 1024 per object): a 4 KiB write makes one
// sector dirty and needs nothing from the cluster; CRCs stay per block (64 per object).
export const MAX_SECTORS = 1024;

export function sectorSizeOf(objSize: number): number {
  return Math.max(4096, Math.ceil(objSize / MAX_SECTORS / 4096) * 4096);
}

export function sectorCountOf(objSize: number): number {
  return Math.ceil(objSize / sectorSizeOf(objSize));
}

/** Every sector of an object. */
export function allSectors(objSize: number): bigint {
  return (1n << BigInt(sectorCountOf(objSize))) - 1n;
}

function bits(first: number, end: number): bigint {
  return end > first ? ((1n << BigInt(end - first)) - 1n) << BigInt(first) : 0n;
}

/** Sectors [off, off+len) touches. */
export function sectorMask(off: number, len: number, objSize: number): bigint {
  if (len <= 0) return 0n;
  const ss = sectorSizeOf(objSize);
  return bits(Math.floor(off / ss), Math.floor((off + len - 1) / ss) + 1);
}

/** Sectors [off, off+len) covers entirely (a write needs nothing else of them). */
export function coveredSectors(off: number, len: number, objSize: number): bigint {
  const ss = sectorSizeOf(objSize);
  const end = Math.min(off + len, objSize);
  const last = end === objSize ? sectorCountOf(objSize) : Math.floor(end / ss);
  return bits(Math.ceil(off / ss), last);
}

/** Bitmap of the blocks [off, off+len) touches. */
export function blockMask(off: number, len: number, objSize: number): bigint {
  if (len <= 0) return 0n;
  const bs = blockSizeOf(objSize);
  const first = Math.floor(off / bs), last = Math.floor((off + len - 1) / bs);
  let m = 0n;
  for (let b = first; b <= last; b++) m |= 1n << BigInt(b);
  return m;
}

/** First and one-past-last block set in a mask (upstream pushes that one range). */
export function maskRange(m: bigint): [number, number] | null {
  if (m === 0n) return null;
  let first = 0;
  while (!((m >> BigInt(first)) & 1n)) first++;
  let last = CACHE_BLOCKS - 1;
  while (!((m >> BigInt(last)) & 1n)) last--;
  return [first, last + 1];
}

/** Runs of consecutive set bits, [first, one past last]: a push sends each run, nothing else. */
export function maskRuns(m: bigint): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let b = 0; m >> BigInt(b); b++) {
    if (!((m >> BigInt(b)) & 1n)) continue;
    const last = out[out.length - 1];
    if (last && last[1] === b) last[1] = b + 1;
    else out.push([b, b + 1]);
  }
  return out;
}

export function popcount(m: bigint): number {
  let n = 0;
  for (; m; m &= m - 1n) n++;
  return n;
}

/**
 * Cached objects in LRU order (a Map keeps insertion order: a touch re-inserts), per VDI, with
 * the bytes they take and the bytes of their dirty blocks.
 */
export class CacheIndex {
  private readonly entries = new Map<bigint, CacheEntry>();
  private readonly byVid = new Map<number, Set<bigint>>();
  usedBytes = 0;
  dirtyBytes = 0;

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.entries.size;
  }

  get(oid: bigint): CacheEntry | undefined {
    return this.entries.get(oid);
  }

  /** Marks an entry most recently used. */
  touch(e: CacheEntry): void {
    if (this.entries.get(e.oid) !== e) return;
    this.entries.delete(e.oid);
    this.entries.set(e.oid, e);
  }

  /** Whether `bytes` more fit without reclaiming anything. */
  fits(bytes: number): boolean {
    return this.usedBytes + bytes <= this.capacity;
  }

  add(e: CacheEntry): void {
    if (this.entries.has(e.oid)) throw new Error(`cache: ${e.oid.toString(16)} already cached`);
    this.entries.set(e.oid, e);
    let s = this.byVid.get(e.vid);
    if (!s) this.byVid.set(e.vid, s = new Set());
    s.add(e.oid);
    this.usedBytes += fileBytes(e.objSize);
    this.dirtyBytes += this.dirtyOf(e);
  }

  remove(e: CacheEntry): void {
    if (this.entries.get(e.oid) !== e) return;
    this.entries.delete(e.oid);
    const s = this.byVid.get(e.vid);
    s?.delete(e.oid);
    if (s && s.size === 0) this.byVid.delete(e.vid);
    this.usedBytes -= fileBytes(e.objSize);
    this.dirtyBytes -= this.dirtyOf(e);
  }

  /** Sets dirty bits (after the data is in the file). */
  markDirty(e: CacheEntry, mask: bigint, now: number): void {
    const before = this.dirtyOf(e);
    if (e.dirty === 0n) e.dirtySince = now;
    e.dirty |= mask;
    if (this.entries.get(e.oid) === e) this.dirtyBytes += this.dirtyOf(e) - before;
  }

  /** Takes the dirty bits for a push: the entry reads as clean until the caller gives them back. */
  takeDirty(e: CacheEntry): bigint {
    const m = e.dirty;
    if (this.entries.get(e.oid) === e) this.dirtyBytes -= this.dirtyOf(e);
    e.dirty = 0n;
    return m;
  }

  /** A failed push: its bits are dirty again (with the oldest age). */
  restoreDirty(e: CacheEntry, mask: bigint, since: number): void {
    const before = this.dirtyOf(e);
    e.dirty |= mask;
    e.dirtySince = Math.min(e.dirtySince || since, since);
    if (this.entries.get(e.oid) === e) this.dirtyBytes += this.dirtyOf(e) - before;
  }

  private dirtyOf(e: CacheEntry): number {
    return popcount(e.dirty) * sectorSizeOf(e.objSize);
  }

  /**
   * Clean, unpinned entries to drop, least recently used first, until `bytes` more fit. Null
   * when even dropping all of them would not make room (the rest is dirty or in use).
   */
  victims(bytes: number): CacheEntry[] | null {
    const out: CacheEntry[] = [];
    let used = this.usedBytes;
    for (const e of this.entries.values()) {
      if (used + bytes <= this.capacity) break;
      if (e.dirty !== 0n || e.create || e.pins > 0) continue;
      out.push(e);
      used -= fileBytes(e.objSize);
    }
    return used + bytes <= this.capacity ? out : null;
  }

  /** Dirty entries, oldest dirt first. */
  dirtyEntries(vid?: number): CacheEntry[] {
    const src = vid === undefined
      ? [...this.entries.values()]
      : [...(this.byVid.get(vid) ?? [])].map((o) => this.entries.get(o)!);
    return src.filter((e) => e.dirty !== 0n || e.create).sort((a, b) =>
      a.dirtySince - b.dirtySince
    );
  }

  entriesOf(vid: number): CacheEntry[] {
    return [...(this.byVid.get(vid) ?? [])].map((o) => this.entries.get(o)!);
  }

  vids(): number[] {
    return [...this.byVid.keys()].sort((a, b) => a - b);
  }

  all(): IterableIterator<CacheEntry> {
    return this.entries.values();
  }
}

// ------------------------------------------------------------------ the cache file header
//
// 0 magic u64 | 8 oid u64 | 16 objSize u32 | 20 flags u32 (1: create) | 32 nblocks u32 |
// 64.. crc u32 per block | 320.. dirty sectors (128 bytes) | 448.. valid sectors (128 bytes) |
// 4092 crc32 of bytes 0..4091.
// A write stores the data, then the header with the new CRCs: a crash between the two leaves a
// block whose CRC does not match, and the file is dropped at start rather than served.

export interface CacheHeader {
  oid: bigint;
  objSize: number;
  create: boolean;
  dirty: bigint;
  valid: bigint;
  crcs: Uint32Array;
}

const DIRTY_AT = 320, VALID_AT = 448, BITMAP_BYTES = MAX_SECTORS / 8;

function writeBits(b: Buffer, at: number, m: bigint): void {
  for (let i = 0; i < BITMAP_BYTES; i++) b[at + i] = Number((m >> BigInt(8 * i)) & 0xffn);
}

function readBits(b: Buffer, at: number): bigint {
  let m = 0n;
  for (let i = BITMAP_BYTES - 1; i >= 0; i--) m = (m << 8n) | BigInt(b[at + i]);
  return m;
}

export function encodeCacheHeader(
  h: CacheHeader,
  crc: (b: Uint8Array) => number,
  out = Buffer.alloc(CACHE_HEADER_SIZE),
): Buffer {
  out.fill(0);
  out.writeBigUInt64LE(MAGIC, 0);
  out.writeBigUInt64LE(h.oid, 8);
  out.writeUInt32LE(h.objSize, 16);
  out.writeUInt32LE(h.create ? 1 : 0, 20);
  out.writeUInt32LE(h.crcs.length, 32);
  writeBits(out, DIRTY_AT, h.dirty);
  writeBits(out, VALID_AT, h.valid);
  for (let i = 0; i < h.crcs.length; i++) out.writeUInt32LE(h.crcs[i], 64 + 4 * i);
  out.writeUInt32LE(crc(out.subarray(0, CACHE_HEADER_SIZE - 4)), CACHE_HEADER_SIZE - 4);
  return out;
}

/** The header, or why the file cannot be trusted. */
export function decodeCacheHeader(
  b: Uint8Array,
  crc: (b: Uint8Array) => number,
): CacheHeader | string {
  if (b.length < CACHE_HEADER_SIZE) return `header is short (${b.length} bytes)`;
  const buf = Buffer.from(b.buffer, b.byteOffset, CACHE_HEADER_SIZE);
  if (buf.readBigUInt64LE(0) !== MAGIC) return "bad magic";
  if (buf.readUInt32LE(CACHE_HEADER_SIZE - 4) !== crc(buf.subarray(0, CACHE_HEADER_SIZE - 4))) {
    return "header checksum mismatch (torn header)";
  }
  const objSize = buf.readUInt32LE(16);
  const n = buf.readUInt32LE(32);
  if (objSize === 0 || n !== blockCountOf(objSize)) return "bad object size";
  const crcs = new Uint32Array(n);
  for (let i = 0; i < n; i++) crcs[i] = buf.readUInt32LE(64 + 4 * i);
  return {
    oid: buf.readBigUInt64LE(8),
    objSize,
    create: (buf.readUInt32LE(20) & 1) !== 0,
    dirty: readBits(buf, DIRTY_AT),
    valid: readBits(buf, VALID_AT),
    crcs,
  };
}
