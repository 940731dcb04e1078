// The object cache's bookkeeping (core/cache-index.ts): LRU order, dirty accounting, which
// objects may be reclaimed, and the header codec that catches torn cache files.
import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import zlib from "node:zlib";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { CacheFiles } from "../../io/cache-file.ts";
import { oidToVid } from "../../core/oid.ts";
import {
  allSectors,
  blockCountOf,
  blockMask,
  blockSizeOf,
  CACHE_FORMAT_1,
  CACHE_HEADER_SIZE,
  type CacheEntry,
  CacheIndex,
  coveredSectors,
  decodeCacheHeader,
  encodeCacheHeader,
  fileBytes,
  maskRange,
  maskRuns,
  popcount,
  sectorCountOf,
  sectorMask,
  sectorSizeOf,
} from "../../core/cache-index.ts";

const MiB = 1024 * 1024;
const OBJ = 4 * MiB;
const crc = (b: Uint8Array) => (zlib as unknown as { crc32(d: Uint8Array): number }).crc32(b) >>> 0;

function entry(oid: bigint, o: Partial<CacheEntry> = {}): CacheEntry {
  return {
    oid,
    vid: Number(oid >> 32n),
    objSize: OBJ,
    dirty: 0n,
    valid: 0n,
    create: false,
    dirtySince: 0,
    pins: 0,
    crcs: new Uint32Array(blockCountOf(OBJ)),
    ...o,
  };
}

test("blocks (CRCs) and sectors (dirty, valid): masks and runs", () => {
  // CRC blocks are sectors: a whole-sector write needs no read-modify-write.
  expect(blockSizeOf(OBJ)).toBe(4096);
  expect(blockCountOf(OBJ)).toBe(1024);
  expect(blockSizeOf(8 * OBJ)).toBe(32 * 1024);
  expect(blockSizeOf(64 * 1024)).toBe(4096); // never below the O_DIRECT alignment
  expect(blockMask(0, 1, OBJ)).toBe(1n);
  expect(blockMask(4096 - 1, 2, OBJ)).toBe(3n);
  expect(blockMask(OBJ - 1, 1, OBJ)).toBe(1n << 1023n);
  expect(blockMask(0, OBJ, OBJ)).toBe((1n << 1024n) - 1n);
  expect(blockMask(5, 0, OBJ)).toBe(0n);
  expect(maskRange(0n)).toBeNull();
  expect(maskRange((1n << 5n) | (1n << 9n))).toEqual([5, 10]);
  expect(popcount((1n << 64n) - 1n)).toBe(64);
  expect(popcount((1n << 1024n) - 1n)).toBe(1024);
  expect(popcount(0n)).toBe(0);
  expect(popcount(0xa5n << 700n)).toBe(4);
  // What a write covers whole needs nothing from the cluster; the partial ends do.
  // Dirty/valid sectors: 4 KiB, 1024 per 4 MiB object (bigger objects: bigger sectors).
  expect(sectorSizeOf(OBJ)).toBe(4096);
  expect(sectorCountOf(OBJ)).toBe(1024);
  expect(sectorSizeOf(8 * OBJ)).toBe(32 * 1024);
  expect(sectorMask(0, 1, OBJ)).toBe(1n);
  expect(sectorMask(4095, 2, OBJ)).toBe(3n);
  expect(sectorMask(OBJ - 1, 1, OBJ)).toBe(1n << 1023n);
  expect(sectorMask(0, OBJ, OBJ)).toBe(allSectors(OBJ));
  expect(allSectors(OBJ)).toBe((1n << 1024n) - 1n);
  expect(coveredSectors(0, 4096, OBJ)).toBe(1n);
  expect(coveredSectors(100, 4096, OBJ)).toBe(0n);
  expect(coveredSectors(100, 3 * 4096, OBJ)).toBe(6n);
  expect(coveredSectors(OBJ - 4096, 4096, OBJ)).toBe(1n << 1023n);
  expect(maskRuns((1n << 1000n) | (1n << 1001n))).toEqual([[1000, 1002]]);
  // A push sends only the dirty runs, not first..last.
  expect(maskRuns(0n)).toEqual([]);
  expect(maskRuns((1n << 5n) | (1n << 6n) | (1n << 9n) | (1n << 63n))).toEqual([[5, 7], [9, 10], [
    63,
    64,
  ]]);
  expect(maskRuns((1n << 64n) - 1n)).toEqual([[0, 64]]);
  expect(maskRuns(1n | (3n << 1022n))).toEqual([[0, 1], [1022, 1024]]);
});

test("LRU: victims are the least recently used clean, idle objects", () => {
  const ix = new CacheIndex(3 * fileBytes(OBJ));
  const a = entry(0x100000000n), b = entry(0x100000001n), c = entry(0x100000002n);
  for (const e of [a, b, c]) ix.add(e);
  expect(ix.usedBytes).toBe(3 * fileBytes(OBJ));
  expect(ix.fits(1)).toBe(false);
  ix.touch(a); // order now b, c, a
  expect(ix.victims(fileBytes(OBJ))).toEqual([b]);
  expect(ix.victims(2 * fileBytes(OBJ))).toEqual([b, c]);
  b.pins = 1; // in use: skipped
  expect(ix.victims(fileBytes(OBJ))).toEqual([c]);
  ix.markDirty(c, 1n, 10); // dirty: never a victim
  expect(ix.victims(fileBytes(OBJ))).toEqual([a]);
  a.create = true; // not in the cluster yet: never a victim
  expect(ix.victims(fileBytes(OBJ))).toBeNull();
  expect(ix.victims(0)).toEqual([]);
  ix.remove(b);
  expect(ix.fits(fileBytes(OBJ))).toBe(true);
  expect(ix.size).toBe(2);
});

test("dirty accounting: bits in, taken by a push, restored when it fails", () => {
  const ix = new CacheIndex(10 * fileBytes(OBJ));
  const a = entry(0x200000000n), b = entry(0x200000001n);
  ix.add(a);
  ix.add(b);
  const bs = sectorSizeOf(OBJ);
  ix.markDirty(a, sectorMask(0, 3 * bs, OBJ), 100);
  expect(ix.dirtyBytes).toBe(3 * bs);
  ix.markDirty(a, sectorMask(0, bs, OBJ), 200); // already dirty: no double count, age kept
  expect(ix.dirtyBytes).toBe(3 * bs);
  expect(a.dirtySince).toBe(100);
  ix.markDirty(b, 1n << 10n, 50);
  expect(ix.dirtyEntries().map((e) => e.oid)).toEqual([b.oid, a.oid]); // oldest first
  expect(ix.dirtyEntries(2).length).toBe(2);
  const taken = ix.takeDirty(a);
  expect(taken).toBe(7n);
  expect(a.dirty).toBe(0n);
  expect(ix.dirtyBytes).toBe(bs);
  ix.markDirty(a, 1n << 20n, 300); // written during the push
  ix.restoreDirty(a, taken, 100); // the push failed
  expect(a.dirty).toBe(7n | (1n << 20n));
  expect(a.dirtySince).toBe(100);
  expect(ix.dirtyBytes).toBe(5 * bs);
  ix.remove(a);
  expect(ix.dirtyBytes).toBe(bs);
  expect(ix.entriesOf(2).map((e) => e.oid)).toEqual([b.oid]);
  expect(ix.vids()).toEqual([2]);
});

test("header codec round-trips and rejects torn, foreign or short headers", () => {
  const crcs = new Uint32Array(1024).map((_, i) => i * 7919);
  const h = {
    oid: 0x00c962cd00000007n,
    objSize: OBJ,
    create: true,
    dirty: 0xf0n | (1n << 1023n),
    valid: 0xff0n | (1n << 1023n),
    crcs,
  };
  const b = encodeCacheHeader(h, crc);
  expect(b.length).toBe(CACHE_HEADER_SIZE);
  const d = decodeCacheHeader(b, crc);
  expect(typeof d).toBe("object");
  if (typeof d === "object") {
    expect(d.oid).toBe(h.oid);
    expect(d.create).toBe(true);
    expect(d.dirty).toBe(0xf0n | (1n << 1023n));
    expect(d.valid).toBe(0xff0n | (1n << 1023n));
    expect([...d.crcs]).toEqual([...crcs]);
  }
  const torn = Buffer.from(b);
  torn[100] ^= 1;
  expect(decodeCacheHeader(torn, crc)).toMatch(/torn header/);
  const crcTorn = Buffer.from(b);
  crcTorn[CACHE_HEADER_SIZE - 100] ^= 1; // the second page is covered too
  expect(decodeCacheHeader(crcTorn, crc)).toMatch(/torn header/);
  expect(decodeCacheHeader(Buffer.alloc(CACHE_HEADER_SIZE), crc)).toBe("bad magic");
  const v1 = Buffer.from(b);
  v1.write("!SDCACH1", 0, "latin1");
  expect(decodeCacheHeader(v1, crc)).toBe(CACHE_FORMAT_1);
  expect(decodeCacheHeader(b.subarray(0, 100), crc)).toMatch(/short/);
  // Random masks into one reused buffer (the write path's): the same bytes as bit by bit, the
  // same values back, popcount right for sparse and dense masks.
  const out = Buffer.alloc(CACHE_HEADER_SIZE);
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0);
  for (let round = 0; round < 50; round++) {
    let dirty = 0n, valid = 0n;
    const density = rnd() % 4;
    for (let i = 0; i < 1024; i++) {
      if (rnd() % 1000 < [3, 50, 500, 1000][density]) dirty |= 1n << BigInt(i);
      if (rnd() % 2) valid |= 1n << BigInt(i);
    }
    const enc = encodeCacheHeader({ ...h, dirty, valid }, crc, out);
    for (let i = 0; i < 1024; i++) {
      expect((enc[64 + (i >> 3)] >> (i & 7)) & 1).toBe(Number((dirty >> BigInt(i)) & 1n));
    }
    const back = decodeCacheHeader(enc, crc);
    expect(typeof back === "object" && back.dirty === dirty && back.valid === valid).toBe(true);
    let n = 0;
    for (let i = 0; i < 1024; i++) n += Number((dirty >> BigInt(i)) & 1n);
    expect(popcount(dirty)).toBe(n);
  }
});

test("a format-1 cache file stops the scan (its unflushed writes are not dropped)", () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-cache-v1-"));
  try {
    const oid = 0x00c962cd00000007n;
    const h = encodeCacheHeader({
      oid,
      objSize: OBJ,
      create: false,
      dirty: 1n,
      valid: 1n,
      crcs: new Uint32Array(blockCountOf(OBJ)),
    }, crc);
    h.write("!SDCACH1", 0, "latin1");
    const dir = path.join(root, oidToVid(oid).toString(16).padStart(6, "0"));
    fs.mkdirSync(dir);
    const file = path.join(dir, oid.toString(16).padStart(16, "0"));
    fs.writeFileSync(file, h);
    const files = new CacheFiles(root, false);
    expect(() => files.scan(() => {})).toThrow(/cache format 1.*dog vdi cache flush/);
    expect(fs.existsSync(file)).toBe(true);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
