// Stored checksums of the file store (io/checksum.ts): writes keep the side file in step, reads
// and scrubs detect a flipped byte as EIO for that copy only.
import { afterAll, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import { Buffer } from "node:buffer";
import { openStore } from "../../io/store.ts";
import {
  combinedCur,
  crcOf,
  CSUM_BLOCK,
  CSUM_SUFFIX,
  firstBadBlock,
  LEGACY_CSUM_BLOCK,
} from "../../io/checksum.ts";
import { SdError } from "../../core/errors.ts";
import { Res } from "../../core/proto.ts";

const roots: string[] = [];
function tmp(): string {
  const d = fs.mkdtempSync(`${os.tmpdir()}/sd-csum-`);
  roots.push(d);
  return d;
}
afterAll(() => {
  for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
});

const DATA0 = 0x007c2b2500000000n;
const MiB = 1 << 20;

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

async function code(p: Promise<unknown>): Promise<number> {
  try {
    await p;
    return Res.SUCCESS;
  } catch (e) {
    return e instanceof SdError ? e.code : -1;
  }
}

function flip(path: string, at: number) {
  const fd = fs.openSync(path, "r+");
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, at);
  b[0] ^= 0x40;
  fs.writeSync(fd, b, 0, 1, at);
  fs.closeSync(fd);
}

for (const kind of ["plain", "tree"] as const) {
  test(`${kind}: create, partial writes, reads verify; a flipped byte is EIO`, async () => {
    const s = openStore(kind, [tmp()], { nosync: true, checksums: true });
    await s.init();
    const model = Buffer.alloc(4 * MiB);
    const d0 = pattern(100_000, 1);
    await s.createAndWrite(DATA0, 5000, d0, 4 * MiB);
    d0.copy(model, 5000);
    const path = s.path(DATA0);
    expect(fs.statSync(path + CSUM_SUFFIX).size).toBe((4 * MiB / CSUM_BLOCK) * 8);
    // Unaligned writes across block boundaries, and a whole-block one.
    for (
      const [off, len, seed] of [[70_000, 3, 2], [CSUM_BLOCK - 10, 20, 3], [
        3 * CSUM_BLOCK,
        CSUM_BLOCK,
        4,
      ], [4 * MiB - 7, 7, 5]]
    ) {
      const d = pattern(len, seed);
      await s.write(DATA0, off, d);
      d.copy(model, off);
    }
    expect((await s.read(DATA0, 0, 4 * MiB)).equals(model)).toBe(true);
    expect((await s.read(DATA0, 4999, 17)).equals(model.subarray(4999, 5016))).toBe(true);
    expect(await s.scrubObject(DATA0)).toEqual({ ok: true, bytes: 4 * MiB });

    flip(path, 2 * CSUM_BLOCK + 123);
    expect(await code(s.read(DATA0, 2 * CSUM_BLOCK, 4096))).toBe(Res.EIO);
    expect(await code(s.read(DATA0, 0, 4 * MiB))).toBe(Res.EIO);
    // Other blocks still read fine: the error is for the bad block only.
    expect((await s.read(DATA0, 0, CSUM_BLOCK)).equals(model.subarray(0, CSUM_BLOCK))).toBe(true);
    expect((await s.scrubObject(DATA0)).ok).toBe(false);
    // A partial write into the bad block refuses to bless it; a full overwrite heals it.
    expect(await code(s.write(DATA0, 2 * CSUM_BLOCK + 5, Buffer.from("x")))).toBe(Res.EIO);
    await s.write(DATA0, 2 * CSUM_BLOCK, model.subarray(2 * CSUM_BLOCK, 3 * CSUM_BLOCK));
    expect((await s.read(DATA0, 0, 4 * MiB)).equals(model)).toBe(true);

    // Repair by re-create, as the gateway and scrub do.
    flip(path, 10);
    expect(await code(s.read(DATA0, 0, 100))).toBe(Res.EIO);
    await s.createAndWrite(DATA0, 0, model, 4 * MiB);
    expect((await s.read(DATA0, 0, 4 * MiB)).equals(model)).toBe(true);

    // The side file survives a restart and follows the object to .stale and back out.
    await s.init();
    flip(path, 4 * MiB - 1);
    expect(await code(s.read(DATA0, 4 * MiB - 1, 1))).toBe(Res.EIO);
    await s.moveToStale(DATA0, 3);
    expect(fs.existsSync(path + CSUM_SUFFIX)).toBe(false);
    expect(await code(s.readStale(DATA0, 3, 0, 4 * MiB))).toBe(Res.EIO);
    expect((await s.readStale(DATA0, 3, 0, 4096)).equals(model.subarray(0, 4096))).toBe(true);
  });
}

test("objects without a side file (upstream's) are served unverified; remove drops it", async () => {
  const dir = tmp();
  const s = openStore("plain", [dir], { nosync: true, checksums: true });
  await s.init();
  await s.createAndWrite(DATA0, 0, pattern(1000, 9), MiB);
  const path = s.path(DATA0);
  fs.unlinkSync(path + CSUM_SUFFIX);
  flip(path, 0);
  expect((await s.read(DATA0, 1, 999)).equals(pattern(1000, 9).subarray(1))).toBe(true);
  expect(await s.scrubObject(DATA0)).toEqual({ ok: true, bytes: 0 });
  await s.createAndWrite(DATA0, 0, pattern(1000, 9), MiB);
  expect(fs.existsSync(path + CSUM_SUFFIX)).toBe(true);
  await s.remove(DATA0);
  expect(fs.readdirSync(dir).filter((n) => n.startsWith("007c"))).toEqual([]);
});

test("checksums off: no side files, and a write drops a now-outdated one", async () => {
  const dir = tmp();
  const on = openStore("plain", [dir], { nosync: true, checksums: true });
  await on.init();
  await on.createAndWrite(DATA0, 0, pattern(1000, 1), MiB);
  const off = openStore("plain", [dir], { nosync: true, checksums: false });
  await off.init();
  await off.write(DATA0, 0, pattern(10, 2));
  expect(fs.existsSync(off.path(DATA0) + CSUM_SUFFIX)).toBe(false);
  await on.init();
  expect((await on.read(DATA0, 0, 10)).equals(pattern(10, 2))).toBe(true);
});

test("a file that grows by a write past its end keeps valid checksums", async () => {
  const s = openStore("plain", [tmp()], { nosync: true, checksums: true });
  await s.init();
  await s.createAndWrite(DATA0, 0, pattern(100, 1), 1000);
  await s.write(DATA0, 3 * CSUM_BLOCK + 50, pattern(10, 2));
  const want = Buffer.alloc(3 * CSUM_BLOCK + 60);
  pattern(100, 1).copy(want, 0);
  pattern(10, 2).copy(want, 3 * CSUM_BLOCK + 50);
  expect((await s.read(DATA0, 0, want.length)).equals(want)).toBe(true);
  expect(await s.scrubObject(DATA0)).toEqual({ ok: true, bytes: want.length });
});

test("side files with 64 KiB blocks (written before the 4 KiB change) still verify and update", async () => {
  const s = openStore("plain", [tmp()], { nosync: true, checksums: true });
  await s.init();
  const size = 300_000; // five 64 KiB blocks, the last one short
  const model = pattern(size, 4);
  await s.createAndWrite(DATA0, 0, model, size);
  const path = s.path(DATA0);
  const legacy = Buffer.alloc(Math.ceil(size / LEGACY_CSUM_BLOCK) * 8);
  for (let i = 0; i * LEGACY_CSUM_BLOCK < size; i++) {
    const c = crcOf(model.subarray(i * LEGACY_CSUM_BLOCK, (i + 1) * LEGACY_CSUM_BLOCK));
    legacy.writeUInt32LE(c, i * 8);
    legacy.writeUInt32LE(c, i * 8 + 4);
  }
  fs.writeFileSync(path + CSUM_SUFFIX, legacy);
  await s.init(); // forget cached descriptors
  expect((await s.read(DATA0, 70_000, 5000)).equals(model.subarray(70_000, 75_000))).toBe(true);
  await s.write(DATA0, 131_000, pattern(3000, 5));
  pattern(3000, 5).copy(model, 131_000);
  expect(fs.statSync(path + CSUM_SUFFIX).size).toBe(legacy.length); // stays 64 KiB blocks
  expect((await s.read(DATA0, 0, size)).equals(model)).toBe(true);
  expect(await s.scrubObject(DATA0)).toEqual({ ok: true, bytes: size });
  flip(path, 200_001);
  expect(await code(s.read(DATA0, 196_608, 10))).toBe(Res.EIO);
  expect(await s.scrubObject(DATA0)).toEqual({ ok: false, bytes: size });
});

test("a side file corrupted on disk while its entries are in memory: the scrub finds it, reads then fail", async () => {
  const s = openStore("plain", [tmp()], { nosync: true, checksums: true });
  await s.init();
  const model = pattern(64 * 1024, 7);
  await s.createAndWrite(DATA0, 0, model, 64 * 1024);
  expect((await s.read(DATA0, 0, 4096)).equals(model.subarray(0, 4096))).toBe(true); // cached
  // Both slots of block 3's entry (either one matching is a good block).
  flip(s.path(DATA0) + CSUM_SUFFIX, 8 * 3 + 1);
  flip(s.path(DATA0) + CSUM_SUFFIX, 8 * 3 + 5);
  expect((await s.read(DATA0, 3 * 4096, 4096)).equals(model.subarray(3 * 4096, 4 * 4096))).toBe(
    true,
  );
  expect(await s.scrubObject(DATA0)).toEqual({ ok: false, bytes: 64 * 1024 });
  expect(await code(s.read(DATA0, 3 * 4096, 4096))).toBe(Res.EIO);
});

test("a multi-block read checks one combined CRC: same verdicts as block by block", () => {
  // Property check of firstBadBlock's combined path against a per-block reference, on random
  // data, random runs (whole and partial last blocks), flips anywhere and prev-slot entries.
  let seed = 20261207;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % n;
  };
  for (const bs of [CSUM_BLOCK, LEGACY_CSUM_BLOCK]) {
    for (let round = 0; round < 60; round++) {
      const nb = 1 + rnd(bs === CSUM_BLOCK ? 40 : 6);
      const size = nb * bs - (rnd(3) === 0 ? 1 + rnd(bs - 1) : 0);
      const data = Buffer.alloc(size);
      for (let i = 0; i < size; i++) data[i] = rnd(256);
      const table = Buffer.alloc(nb * 8);
      for (let k = 0; k < nb; k++) {
        const c = crcOf(data.subarray(k * bs, Math.min(size, (k + 1) * bs)));
        const other = (c ^ 0x5a5a5a5a) >>> 0;
        // Some blocks hold their CRC only in the prev slot (a write whose data did not land).
        const inPrev = rnd(8) === 0;
        table.writeUInt32LE(inPrev ? other : c, k * 8);
        table.writeUInt32LE(inPrev ? c : other, k * 8 + 4);
      }
      // The combined path is taken (the entries combine to the CRC of all whole blocks).
      const whole = size % bs ? nb - 1 : nb;
      const curs = Buffer.alloc(whole * 8);
      for (let k = 0; k < whole; k++) {
        curs.writeUInt32LE(crcOf(data.subarray(k * bs, (k + 1) * bs)), k * 8);
      }
      expect(combinedCur(curs, 0, whole, bs)).toBe(crcOf(data.subarray(0, whole * bs)));
      const bad = rnd(3) === 0 ? rnd(nb) : -1;
      if (bad >= 0) {
        const at = bad * bs + rnd(Math.min(bs, size - bad * bs));
        data[at] ^= 1 << rnd(8);
      }
      const first = rnd(nb);
      const buf = data.subarray(first * bs);
      const want = bad >= first ? bad : -1;
      expect(firstBadBlock(buf, first, size, table, bs, 0)).toBe(want);
      expect(firstBadBlock(buf, first, size, table.subarray(first * 8), bs)).toBe(want);
    }
  }
});

test("writeRuns (a push's runs, one side-file write after them) leaves what run-by-run writes leave", async () => {
  // nosync off: the write-intent log is on, which is when the entries are written at once.
  const [da, db] = [tmp(), tmp()];
  const a = openStore("plain", [da], { checksums: true });
  const b = openStore("plain", [db], { checksums: true });
  const base = pattern(4 * MiB, 9);
  for (const s of [a, b]) {
    await s.init();
    await s.createAndWrite(DATA0, 0, base, 4 * MiB);
  }
  // Whole blocks, partial ones (read back and verified), two runs in one block, the last block.
  const runs = [
    { off: 0, data: pattern(CSUM_BLOCK, 1) },
    { off: 3 * CSUM_BLOCK + 100, data: pattern(50, 2) },
    { off: 3 * CSUM_BLOCK + 1000, data: pattern(3000, 3) },
    { off: 100 * CSUM_BLOCK - 10, data: pattern(2 * CSUM_BLOCK + 20, 4) },
    { off: 4 * MiB - 512, data: pattern(512, 5) },
  ];
  await a.writeRuns(DATA0, runs);
  for (const r of runs) await b.write(DATA0, r.off, r.data);
  const pa = a.path(DATA0), pb = b.path(DATA0);
  expect(fs.readFileSync(pa).equals(fs.readFileSync(pb))).toBe(true);
  expect(fs.readFileSync(pa + CSUM_SUFFIX).equals(fs.readFileSync(pb + CSUM_SUFFIX))).toBe(true);
  // A store opened afresh reads the side file from disk: every block verifies.
  a.close();
  const again = openStore("plain", [da], { checksums: true });
  await again.init();
  const model = Buffer.from(base);
  for (const r of runs) r.data.copy(model, r.off);
  expect((await again.read(DATA0, 0, 4 * MiB)).equals(model)).toBe(true);
  again.close();
  b.close();
});

test("reviveStale puts a stale copy back with its side file; it verifies, and only once", async () => {
  for (const kind of ["plain", "tree"] as const) {
    const s = openStore(kind, [tmp()], { checksums: true });
    await s.init();
    const data = pattern(4 * MiB, 7);
    await s.createAndWrite(DATA0, 0, data, 4 * MiB);
    await s.moveToStale(DATA0, 3);
    expect(s.exists(DATA0)).toBe(false);
    // No stale copy of that epoch: NO_OBJ, nothing changes.
    const none = await s.reviveStale(DATA0, 4).catch((e) => e);
    expect(none instanceof SdError && none.code === Res.NO_OBJ).toBe(true);
    await s.reviveStale(DATA0, 3);
    expect(s.exists(DATA0)).toBe(true);
    expect(s.listStale()).toEqual([]);
    expect(fs.existsSync(s.path(DATA0) + CSUM_SUFFIX)).toBe(true);
    expect((await s.read(DATA0, 0, 4 * MiB)).equals(data)).toBe(true);
    expect((await s.scrubObject(DATA0)).ok).toBe(true);
    // A current copy is never replaced by a stale one.
    await s.write(DATA0, 0, pattern(4096, 8));
    await s.moveToStale(DATA0, 5);
    await s.createAndWrite(DATA0, 0, data, 4 * MiB);
    await s.reviveStale(DATA0, 5);
    expect((await s.read(DATA0, 0, 4 * MiB)).equals(data)).toBe(true);
    expect(s.listStale().length).toBe(1);
    s.close();
  }
});
