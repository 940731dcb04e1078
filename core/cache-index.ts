// The object cache's bookkeeping (sheep/object-cache.ts does the I/O): which objects are cached,
// their LRU order, their dirty blocks, and the byte accounting that keeps the cache within its
// size. Also the codec of the 4 KiB header that starts every cache file. Pure: no files, no clock
// (callers pass `now`).
import { Buffer } from "node:buffer";

/** CRC granularity: an object is cut into at most 1024 blocks, the same as its sectors. */
export const CACHE_BLOCKS = 1024;
/** Every cache file starts with two header pages (1024 CRCs fill one); the object follows. */
export const CACHE_HEADER_SIZE = 8192;
const MAGIC = 0x3248434143445321n; // "!SDCACH2" little-endian
/** "!SDCACH1": an earlier build's format (64 KiB CRC blocks), which this one cannot read. */
const MAGIC_V1 = 0x3148434143445321n;
/** decodeCacheHeader's answer for a format-1 file: its dirty data must not be dropped. */
export const CACHE_FORMAT_1 = "cache format 1 (an earlier sheepdog build)";

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

/**
 * CRC block size: a sector (at least 4 KiB, the O_DIRECT alignment). A whole-sector write
 * then has every byte its CRCs need: no read-modify-write on the ack path.
 */
export function blockSizeOf(objSize: number): number {
  return sectorSizeOf(objSize);
}

export function blockCountOf(objSize: number): number {
  return Math.ceil(objSize / blockSizeOf(objSize));
}

// Dirty and valid bits are per sector (4 KiB, at most 1024 per object): a 4 KiB write makes one
// sector dirty and needs nothing from the cluster; CRCs stay per block (64 per object).
export const MAX_SECTORS = CACHE_BLOCKS;

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
  return bits(Math.floor(off / bs), Math.floor((off + len - 1) / bs) + 1);
}

/** Bits of a mask, lowest first, as a string of '0'/'1' (one native conversion, no shifts). */
function bitString(m: bigint): string {
  return m.toString(2).split("").reverse().join("");
}

/** First and one-past-last bit set in a mask. */
export function maskRange(m: bigint): [number, number] | null {
  if (m === 0n) return null;
  const s = bitString(m);
  return [s.indexOf("1"), s.length];
}

/** Runs of consecutive set bits, [first, one past last]: a push sends each run, nothing else. */
export function maskRuns(m: bigint): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  if (m <= 0n) return out;
  const s = bitString(m);
  for (let b = s.indexOf("1"); b >= 0 && b < s.length;) {
    let e = s.indexOf("0", b);
    if (e < 0) e = s.length;
    out.push([b, e]);
    b = s.indexOf("1", e);
  }
  return out;
}

/**
 * Runs joined across gaps of at most `maxGap` sectors that are all valid: one request (one
 * fdatasync on each replica) then carries both, at the price of rewriting the gap's bytes,
 * which are the object's own.
 */
export function mergeRuns(
  runs: Array<[number, number]>,
  valid: bigint,
  maxGap: number,
): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const r of runs) {
    const last = out[out.length - 1];
    if (last && r[0] - last[1] <= maxGap && (valid & bits(last[1], r[0])) === bits(last[1], r[0])) {
      last[1] = r[1];
    } else out.push([r[0], r[1]]);
  }
  return out;
}

const NIBBLE_BITS = [0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4];

export function popcount(m: bigint): number {
  // Sparse masks (a write's few sectors) by clearing the lowest bit; dense ones by hex digits
  // (one toString of a 1024-bit mask costs ~4 us, called per write before).
  let n = 0;
  for (; m !== 0n && n < 8; n++) m &= m - 1n;
  if (m === 0n) return n;
  const s = m.toString(16);
  for (let i = 0; i < s.length; i++) n += NIBBLE_BITS[s.charCodeAt(i) - (s[i] <= "9" ? 48 : 87)];
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
    if (e.dirty === 0n) e.dirtySince = now;
    // Only the newly dirty sectors are counted: a write's mask is small, the entry's is not.
    const added = mask & ~e.dirty;
    e.dirty |= mask;
    if (added !== 0n && this.entries.get(e.oid) === e) {
      this.dirtyBytes += popcount(added) * sectorSizeOf(e.objSize);
    }
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
// 64.. dirty sectors (128 bytes) | 192.. valid sectors (128 bytes) | 512.. crc u32 per block |
// 8188 crc32 of bytes 0..8187.
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

const DIRTY_AT = 64, VALID_AT = 192, CRCS_AT = 512, BITMAP_BYTES = MAX_SECTORS / 8;

// Little-endian bitmaps through one hex conversion (per-byte BigInt shifts cost ~50 us a header).
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function writeBits(b: Buffer, at: number, m: bigint): void {
  // 64 bits at a time, little-endian; the words above the mask's top bit stay zero (filled).
  for (let i = 0; i < BITMAP_BYTES && m !== 0n; i += 8, m >>= 64n) {
    b.writeBigUInt64LE(BigInt.asUintN(64, m), at + i);
  }
}

function readBits(b: Buffer, at: number): bigint {
  const be = Buffer.from(b.subarray(at, at + BITMAP_BYTES)).reverse();
  return BigInt("0x" + be.toString("hex"));
}

export function encodeCacheHeader(
  h: CacheHeader,
  crc: (b: Uint8Array) => number,
  out: Buffer = Buffer.alloc(CACHE_HEADER_SIZE),
): Buffer {
  out.fill(0);
  out.writeBigUInt64LE(MAGIC, 0);
  out.writeBigUInt64LE(h.oid, 8);
  out.writeUInt32LE(h.objSize, 16);
  out.writeUInt32LE(h.create ? 1 : 0, 20);
  out.writeUInt32LE(h.crcs.length, 32);
  writeBits(out, DIRTY_AT, h.dirty);
  writeBits(out, VALID_AT, h.valid);
  if (LITTLE_ENDIAN) {
    // One copy of the CRCs (they are little-endian u32s in memory too) instead of 1024 calls.
    const c = h.crcs;
    out.set(new Uint8Array(c.buffer, c.byteOffset, c.length * 4), CRCS_AT);
  } else for (let i = 0; i < h.crcs.length; i++) out.writeUInt32LE(h.crcs[i], CRCS_AT + 4 * i);
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
  const magic = buf.readBigUInt64LE(0);
  if (magic === MAGIC_V1) return CACHE_FORMAT_1;
  if (magic !== MAGIC) return "bad magic";
  if (buf.readUInt32LE(CACHE_HEADER_SIZE - 4) !== crc(buf.subarray(0, CACHE_HEADER_SIZE - 4))) {
    return "header checksum mismatch (torn header)";
  }
  const objSize = buf.readUInt32LE(16);
  const n = buf.readUInt32LE(32);
  if (objSize === 0 || n !== blockCountOf(objSize)) return "bad object size";
  const crcs = new Uint32Array(n);
  for (let i = 0; i < n; i++) crcs[i] = buf.readUInt32LE(CRCS_AT + 4 * i);
  return {
    oid: buf.readBigUInt64LE(8),
    objSize,
    create: (buf.readUInt32LE(20) & 1) !== 0,
    dirty: readBits(buf, DIRTY_AT),
    valid: readBits(buf, VALID_AT),
    crcs,
  };
}
