// Stored checksums (issue 15; upstream stores none): one CRC-32 per 4 KiB block of an object
// file, kept in a side file `<object file>.csum` beside it, so the object files keep upstream's
// names and bytes. Side files written with 64 KiB blocks (before the 4 KiB change) stay valid:
// the block size of a side file is told from its length (blockSizeOf).
//
// Why CRC-32 from node:zlib: it is native (hardware CLMUL) on Bun and Deno, synchronous, and
// measured here at ~45-50 GB/s per core, against ~1.9 GB/s for hash-wasm's crc32c and ~7-9 GB/s
// for its xxhash64: the check must cost next to nothing beside a page-cache read. A CRC detects
// every burst error up to 32 bits and random corruption with probability 1 - 2^-32, which is what
// bit rot needs (it is not a defence against an adversary). Why 4 KiB: the unit of NBD and VM
// I/O, so a 4 KiB read or aligned write touches exactly one block: nothing read beyond what was
// asked, nothing read back to rewrite a block (64 KiB blocks cost a 4 KiB random read 16x the
// bytes and a 4 KiB write a 64 KiB read-back, ~0.25-0.4x the IOPS measured here); a 4 MiB object
// gets an 8 KiB side file.
//
// Side-file layout: per block 8 bytes, little-endian u32 `cur` and u32 `prev`. A block is good
// when its CRC equals either: a write stores {new, old} so a crash that persisted the side file
// but not the data still verifies (the old data matches `prev`). A crash that persisted the data
// but not the side file shows as a mismatch, i.e. the replica is repaired like a flipped bit;
// that only concerns a write that was never acknowledged.
import zlib from "node:zlib";
import process from "node:process";
import { Buffer } from "node:buffer";

export const CSUM_BLOCK = 4096;
/** Block size of side files written before the 4 KiB change. */
export const LEGACY_CSUM_BLOCK = 64 * 1024;
export const CSUM_SUFFIX = ".csum";
const ENTRY = 8;

const crc32 = (zlib as unknown as { crc32(d: Uint8Array, v?: number): number }).crc32;

export function crcOf(data: Uint8Array, initial = 0): number {
  return crc32(data, initial) >>> 0;
}

const zeroCrcs = new Map<number, number>();
const ZERO_BLOCK = Buffer.alloc(LEGACY_CSUM_BLOCK);
/** CRC of `len` zero bytes (blocks of a fresh object that no write touched). */
export function zeroCrc(len: number): number {
  let v = zeroCrcs.get(len);
  if (v === undefined) zeroCrcs.set(len, v = crcOf(ZERO_BLOCK.subarray(0, len)));
  return v;
}

export function blockCount(size: number, bs = CSUM_BLOCK): number {
  return Math.ceil(size / bs);
}

/** Length of block `i` of a file of `size` bytes. */
export function blockLen(i: number, size: number, bs = CSUM_BLOCK): number {
  return Math.max(0, Math.min(bs, size - i * bs));
}

/**
 * Block size of a side file of `tableLen` bytes for an object file of `size` bytes: a legacy
 * 64 KiB table has one entry per 64 KiB. (Up to 4 KiB the two layouts are the same bytes.)
 */
export function blockSizeOf(tableLen: number, size: number): number {
  const legacy = blockCount(size, LEGACY_CSUM_BLOCK) * ENTRY;
  return tableLen === legacy && tableLen !== blockCount(size) * ENTRY
    ? LEGACY_CSUM_BLOCK
    : CSUM_BLOCK;
}

/** Side file of a freshly created object of `size` bytes whose only non-zero bytes are `data` at `offset`. */
export function tableForCreate(size: number, offset: number, data: Buffer): Buffer {
  const n = blockCount(size);
  const t = Buffer.alloc(n * ENTRY);
  const end = offset + data.length;
  for (let i = 0; i < n; i++) {
    const bs = i * CSUM_BLOCK;
    const len = blockLen(i, size);
    const be = bs + len;
    let c: number;
    if (end <= bs || offset >= be || data.length === 0) c = zeroCrc(len);
    else {
      const s = Math.max(bs, offset);
      const e = Math.min(be, end);
      c = 0;
      if (s > bs) c = crcOf(ZERO_BLOCK.subarray(0, s - bs), c);
      c = crcOf(data.subarray(s - offset, e - offset), c);
      if (e < be) c = crcOf(ZERO_BLOCK.subarray(0, be - e), c);
    }
    t.writeUInt32LE(c, i * ENTRY);
    t.writeUInt32LE(c, i * ENTRY + 4);
  }
  return t;
}

export function entryMatches(table: Buffer, k: number, crc: number): boolean {
  const at = k * ENTRY;
  if (at + ENTRY > table.length) return false;
  return table.readUInt32LE(at) === crc || table.readUInt32LE(at + 4) === crc;
}

export function entryCur(table: Buffer, k: number): number {
  const at = k * ENTRY;
  return at + ENTRY > table.length ? 0 : table.readUInt32LE(at);
}

export function entryOffset(block: number): number {
  return block * ENTRY;
}

/**
 * Checks the blocks `first..` held in `buf` (buf starts at block `first`, holds the file's bytes
 * up to `size`) against `table`, whose entry 0 is block `tableBase` (default `first`). Returns the
 * first bad block or -1.
 *
 * A run of whole blocks is checked as one: the CRC of all their bytes (one native call) against
 * the CRC the stored `cur` entries combine to (crc(A||B) = shift(crc(A), |B|) ^ crc(B), the shift
 * a GF(2)-linear map applied with four table lookups). That costs a 4 MiB read 0.08 ms instead of
 * 1024 calls (0.23 ms, 0.8x the read throughput of no checksums). Same odds for random corruption
 * (2^-32) and every burst up to 32 bits still caught; a mismatch (or a block matching its `prev`
 * slot after a crash) takes the block-by-block check, which names the bad block. The scrub reads
 * through here too, and a flipped byte in any block fails the combined CRC.
 */
export function firstBadBlock(
  buf: Buffer,
  first: number,
  size: number,
  table: Buffer,
  bs = CSUM_BLOCK,
  tableBase = first,
): number {
  const n = Math.ceil(Math.min(buf.length, size - first * bs) / bs);
  const whole = blockLen(first + n - 1, size, bs) === bs ? n : n - 1;
  let k = 0;
  if (whole >= 2 && (first - tableBase + whole) * ENTRY <= table.length) {
    const want = combinedCur(table, first - tableBase, whole, bs);
    if (want === crcOf(whole === buf.length / bs ? buf : buf.subarray(0, whole * bs))) k = whole;
  }
  for (; k < n; k++) {
    const len = blockLen(first + k, size, bs);
    const c = crcOf(n === 1 && len === buf.length ? buf : buf.subarray(k * bs, k * bs + len));
    if (!entryMatches(table, first + k - tableBase, c)) return first + k;
  }
  return -1;
}

/** The CRC of `n` whole blocks of `bs` bytes from entry `k`, combined from their `cur` slots. */
export function combinedCur(table: Buffer, k: number, n: number, bs = CSUM_BLOCK): number {
  const shift = shiftTable(bs);
  let acc = 0;
  for (let i = 0, at = k * ENTRY; i < n; i++, at += ENTRY) {
    acc = (shiftCrc(shift, acc) ^ table.readUInt32LE(at)) >>> 0;
  }
  return acc;
}

/** zlib's CRC-32 register step table (reflected 0xEDB88320), for the shift below. */
const STEP = (() => {
  const t = new Uint32Array(256);
  for (let b = 0; b < 256; b++) {
    let c = b;
    for (let j = 0; j < 8; j++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[b] = c >>> 0;
  }
  return t;
})();

const shiftTables = new Map<number, Uint32Array>();

/**
 * The map "CRC register after `len` more zero bytes" (linear over GF(2), so the conditioning
 * of the CRC cancels out of crc(A||B) ^ crc(B)) as four 256-entry tables, one per byte of the
 * register: built once per block size from where each of the 32 bits ends up.
 */
function shiftTable(len: number): Uint32Array {
  let t = shiftTables.get(len);
  if (t) return t;
  const col = new Uint32Array(32);
  for (let i = 0; i < 32; i++) {
    let c = (1 << i) >>> 0;
    for (let n = 0; n < len; n++) c = STEP[c & 0xff] ^ (c >>> 8);
    col[i] = c >>> 0;
  }
  t = new Uint32Array(1024);
  for (let k = 0; k < 4; k++) {
    for (let b = 0; b < 256; b++) {
      let v = 0;
      for (let j = 0; j < 8; j++) if (b & (1 << j)) v ^= col[8 * k + j];
      t[k * 256 + b] = v >>> 0;
    }
  }
  shiftTables.set(len, t);
  return t;
}

function shiftCrc(t: Uint32Array, c: number): number {
  return t[c & 0xff] ^ t[256 + ((c >>> 8) & 0xff)] ^ t[512 + ((c >>> 16) & 0xff)] ^
    t[768 + (c >>> 24)];
}

/**
 * New entries for blocks first..last after a write of `data` at `offset` into a file growing to
 * `newSize`; `old(i)` gives block i's current bytes (only asked for blocks the write does not
 * cover fully), `prevTable` the current entries from block `first`.
 */
export function tableForWrite(
  first: number,
  last: number,
  offset: number,
  data: Buffer,
  newSize: number,
  old: (i: number) => Buffer,
  prevTable: Buffer,
  blockSize = CSUM_BLOCK,
): Buffer {
  const t = Buffer.alloc((last - first + 1) * ENTRY);
  const end = offset + data.length;
  for (let i = first; i <= last; i++) {
    const bs = i * blockSize;
    const be = bs + blockLen(i, newSize, blockSize);
    const s = Math.max(bs, offset);
    const e = Math.min(be, end);
    let c = 0;
    if (s > bs || e < be) {
      const ob = old(i);
      if (s > bs) c = crcOf(ob.subarray(0, Math.min(s, be) - bs), c);
      if (e > s) c = crcOf(data.subarray(s - offset, e - offset), c);
      if (e < be) c = crcOf(ob.subarray(Math.max(e, bs) - bs, be - bs), c);
    } else c = crcOf(data.subarray(s - offset, e - offset));
    const k = i - first;
    t.writeUInt32LE(c, k * ENTRY);
    t.writeUInt32LE(entryCur(prevTable, k), k * ENTRY + 4);
  }
  return t;
}

/** Checksums are on unless SHEEPDOG_CHECKSUMS=off (an A/B benchmark switch, see README). */
export function checksumsEnabled(): boolean {
  return process.env.SHEEPDOG_CHECKSUMS !== "off";
}
