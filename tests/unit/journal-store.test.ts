// io/journal.ts against a real FileStore in a temp dir: replay after a "crash" (the journal is
// abandoned without its shutdown checkpoint and the object files are deleted, as if their
// unsynced pages were lost), torn tails, skip, a full journal that waits, the ring wrapping, and
// a journal I/O error turning the journal off.
import { afterAll, beforeAll, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import process from "node:process";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { openStore } from "../../io/store.ts";
import { Journal, JOURNAL_FILE } from "../../io/journal.ts";
import { DATA_START, RecordReader } from "../../core/journal-record.ts";

const roots: string[] = [];
let prevEnv: string | undefined;
beforeAll(() => {
  prevEnv = process.env.SHEEPDOG_JOURNAL_CHECKPOINT_MS;
  // Checkpoints only when full: the records stay in the journal for replay to prove itself.
  process.env.SHEEPDOG_JOURNAL_CHECKPOINT_MS = "0";
});
afterAll(() => {
  if (prevEnv === undefined) delete process.env.SHEEPDOG_JOURNAL_CHECKPOINT_MS;
  else process.env.SHEEPDOG_JOURNAL_CHECKPOINT_MS = prevEnv;
  for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
});

const MiB = 1 << 20;
const OBJ = 4 * MiB;
const oid = (i: number) => 0x00c0ffee00000000n + BigInt(i);

function setup(size = 64 * MiB, skip = false) {
  const root = fs.mkdtempSync(`${os.tmpdir()}/sd-journal-`);
  roots.push(root);
  return { root, disk: `${root}/obj`, jdir: `${root}/journal`, size, skip };
}

const logs: string[] = [];
const log = {
  info: (m: string) => logs.push(`I ${m}`),
  warn: (m: string) => logs.push(`W ${m}`),
  err: (m: string) => logs.push(`E ${m}`),
};

async function start(c: ReturnType<typeof setup>, opts: { skip?: boolean; owner?: string } = {}) {
  const raw = openStore("plain", [c.disk]);
  await raw.init();
  const j = new Journal(
    { size: c.size, dir: c.jdir, skip: opts.skip ?? c.skip },
    c.jdir,
    [c.disk],
    log,
    opts.owner ?? c.root,
  );
  const report = await j.open(raw);
  return { store: j.wrap(raw), j, report, raw };
}

function pattern(seed: number, len: number): Buffer {
  const d = createHash("sha256").update(String(seed)).digest();
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i += d.length) d.copy(b, i);
  return b;
}

function wipeObjects(disk: string) {
  for (const f of fs.readdirSync(disk)) {
    if (/^[0-9a-f]{16}/.test(f)) fs.unlinkSync(`${disk}/${f}`);
  }
}

test("replay rebuilds creates, writes and removes in order; checksums verify after it", async () => {
  const c = setup();
  const a = await start(c);
  expect(a.report).toEqual({ records: 0, skipped: false, torn: null });
  for (let i = 0; i < 4; i++) await a.store.createAndWrite(oid(i), 0, pattern(i, 64 * 1024), OBJ);
  await Promise.all([
    a.store.write(oid(0), 100, pattern(50, 5000)),
    a.store.write(oid(1), 70 * 1024, pattern(51, 3 * 65536)),
    a.store.write(oid(0), 4000, pattern(52, 200)), // overlaps the first: order matters
  ]);
  await a.store.remove(oid(3));
  const want = await Promise.all([0, 1, 2].map((i) => a.store.read(oid(i), 0, OBJ)));
  // Crash: no shutdown checkpoint, and the object files' unsynced state is lost.
  wipeObjects(c.disk);
  const b = await start(c);
  expect(b.report.records).toBe(8);
  expect(b.report.torn).toBeNull();
  for (let i = 0; i < 3; i++) {
    expect((await b.store.read(oid(i), 0, OBJ)).equals(want[i])).toBe(true);
  }
  expect(b.store.exists(oid(3))).toBe(false);
  // The new generation starts empty: a second crash replays nothing old over newer data.
  await b.store.write(oid(2), 0, pattern(60, 10));
  const c2 = await start(c);
  expect(c2.report.records).toBe(1);
  expect((await c2.store.read(oid(2), 0, 10)).equals(pattern(60, 10))).toBe(true);
});

test("a torn last record is reported and not applied; the rest is", async () => {
  const c = setup();
  const a = await start(c);
  await a.store.createAndWrite(oid(1), 0, pattern(1, 8192), OBJ);
  await a.store.write(oid(1), 0, pattern(2, 8192));
  await a.store.write(oid(1), 0, pattern(3, 8192));
  // Find the last record and cut it in half.
  const f = `${c.jdir}/${JOURNAL_FILE}`;
  const buf = fs.readFileSync(f).subarray(DATA_START);
  const r = new RecordReader();
  r.push(buf);
  let last = { offset: 0, length: 0 };
  for (let x = r.next(); x; x = r.next()) last = x;
  fs.truncateSync(f, DATA_START + last.offset + last.length / 2);
  wipeObjects(c.disk);
  const b = await start(c);
  expect(b.report.records).toBe(2);
  expect(b.report.torn?.reason).toContain("cut short");
  expect(logs.some((l) => l.startsWith("W journal: replayed 2 records") && l.includes("torn")))
    .toBe(
      true,
    );
  expect((await b.store.read(oid(1), 0, 8192)).equals(pattern(2, 8192))).toBe(true);
  expect(fs.statSync(f).size).toBe(c.size); // preallocated again
});

test("skip does not replay", async () => {
  const c = setup();
  const a = await start(c);
  await a.store.createAndWrite(oid(1), 0, pattern(1, 100), OBJ);
  wipeObjects(c.disk);
  const b = await start(c, { skip: true });
  expect(b.report.skipped).toBe(true);
  expect(b.store.exists(oid(1))).toBe(false);
  expect(logs.some((l) => l.includes("skip: records after checkpoint"))).toBe(true);
});

test("a full journal waits for a checkpoint and wraps; nothing fails, replay still exact", async () => {
  const c = setup(64 * MiB);
  const a = await start(c);
  for (let i = 0; i < 4; i++) await a.store.createAndWrite(oid(i), 0, Buffer.alloc(0), OBJ);
  // 200 MiB through a 64 MiB journal, 8 writers at a time.
  const final = new Map<number, Buffer>();
  for (let round = 0; round < 25; round++) {
    await Promise.all(Array.from({ length: 8 }, (_, k) => {
      const data = pattern(round * 8 + k, MiB);
      const o = k % 4;
      const off = (k >> 2) * MiB;
      final.set(o * 4 + (k >> 2), data);
      return a.store.write(oid(o), off, data);
    }));
  }
  const st = a.j.stats();
  expect(st.fullWaits).toBeGreaterThan(0);
  expect(st.checkpoints).toBeGreaterThan(0);
  expect(st.failed).toBe(false);
  // Crash (no shutdown checkpoint): exactly the records after the last checkpoint replay, none
  // of an earlier lap of the ring, and the objects end as written.
  const priv = a.j as unknown as { nextSeq: bigint; cpSeq: bigint };
  const pending = Number(priv.nextSeq - 1n - priv.cpSeq);
  const b = await start(c);
  expect(b.report.torn).toBeNull();
  expect(b.report.records).toBe(pending);
  for (const [k, data] of final) {
    const got = await b.store.read(oid(k >> 2), (k & 3) * MiB, MiB);
    expect(got.equals(data)).toBe(true);
  }
});

test("a journal I/O error turns it off for good; writes keep working, synced", async () => {
  const c = setup();
  const a = await start(c);
  await a.store.createAndWrite(oid(1), 0, pattern(1, 100), OBJ);
  // Break the journal's descriptor under it.
  fs.closeSync((a.j as unknown as { fd: number }).fd);
  await a.store.write(oid(1), 0, pattern(2, 100));
  expect(a.j.stats().failed).toBe(true);
  expect(logs.some((l) => l.startsWith("E journal: I/O error") && l.includes("OFF for good"))).toBe(
    true,
  );
  await a.store.write(oid(1), 100, pattern(3, 100));
  expect(
    (await a.store.read(oid(1), 0, 200)).equals(Buffer.concat([pattern(2, 100), pattern(3, 100)])),
  )
    .toBe(true);
  // The journal file is gone, so a restart replays nothing stale over the synced writes.
  expect(fs.existsSync(`${c.jdir}/${JOURNAL_FILE}`)).toBe(false);
});

test("moves to .stale and purges replay in order: no object comes back to life (upstream's bug)", async () => {
  const c = setup();
  const a = await start(c);
  await a.store.createAndWrite(oid(2), 0, pattern(3, 100), OBJ / 4, 2); // an EC strip
  await a.store.moveToStale(oid(2), 2, 2);
  await a.store.purgeStale();
  await a.store.createAndWrite(oid(1), 0, pattern(1, 1000), OBJ);
  await a.store.write(oid(1), 500, pattern(2, 100));
  const want = await a.store.read(oid(1), 0, OBJ);
  await a.store.moveToStale(oid(1), 3);
  await a.store.createAndWrite(oid(2), 0, pattern(4, 100), OBJ / 4, 2);
  // Crash, and the object files and stale copies are lost.
  wipeObjects(c.disk);
  fs.rmSync(`${c.disk}/.stale`, { recursive: true, force: true });
  fs.mkdirSync(`${c.disk}/.stale`);
  const b = await start(c);
  expect(b.report.records).toBe(7);
  expect(b.store.exists(oid(1))).toBe(false);
  expect(b.store.listStale()).toEqual([{ oid: oid(1), epoch: 3, ecIndex: undefined }]);
  expect((await b.store.readStale(oid(1), 3, 0, OBJ)).equals(want)).toBe(true);
  expect(b.store.exists(oid(2), 2)).toBe(true);
  expect((await b.store.read(oid(2), 0, 100, 2)).equals(pattern(4, 100))).toBe(true);
});

test("replay reseals a block whose data reached the disk but whose side-file entry did not", async () => {
  const c = setup();
  const a = await start(c);
  await a.store.createAndWrite(oid(1), 0, pattern(1, 1000), OBJ);
  await a.j.checkpoint(); // the create is durable and out of the journal
  const side = `${a.store.path(oid(1))}.csum`;
  const before = fs.readFileSync(side);
  await a.store.write(oid(1), 500, pattern(2, 100));
  const want = await a.store.read(oid(1), 0, OBJ);
  // Crash: the data block is on disk, the side file still has the entry from before the write.
  fs.writeFileSync(side, before);
  await expect(openStoreAndRead(c.disk)).rejects.toThrow("checksum mismatch");
  const b = await start(c);
  expect(b.report.records).toBe(1);
  expect((await b.store.read(oid(1), 0, OBJ)).equals(want)).toBe(true);
});

async function openStoreAndRead(disk: string): Promise<Buffer> {
  const s = openStore("plain", [disk]);
  await s.init();
  return await s.read(oid(1), 0, OBJ);
}

test("a journal belongs to one sheep: another base directory is refused", async () => {
  const c = setup();
  const a = await start(c);
  await a.store.createAndWrite(oid(1), 0, pattern(1, 100), OBJ);
  await expect(start(c, { owner: "/elsewhere" })).rejects.toThrow(
    `belongs to the sheep of ${c.root}, not /elsewhere: give each sheep its own dir=`,
  );
  // The owner still replays it.
  wipeObjects(c.disk);
  expect((await start(c)).report.records).toBe(1);
});

test("tree layout over two disks: replay puts every object where the store looks for it", async () => {
  const c = setup();
  const disks = [`${c.root}/d0`, `${c.root}/d1`];
  const open = async () => {
    const raw = openStore("tree", disks);
    await raw.init();
    const j = new Journal({ size: c.size, dir: c.jdir, skip: false }, c.jdir, disks, log, c.root);
    const report = await j.open(raw);
    return { store: j.wrap(raw), report };
  };
  const a = await open();
  const inode = 0x80c0ffee00000000n;
  await a.store.createAndWrite(inode, 0, pattern(9, 4096), OBJ);
  for (let i = 0; i < 16; i++) await a.store.createAndWrite(oid(i), 0, pattern(i, 8192), OBJ);
  for (let i = 0; i < 16; i += 3) await a.store.write(oid(i), 4096, pattern(100 + i, 4096));
  const want = await Promise.all([...Array(16).keys()].map((i) => a.store.read(oid(i), 0, 16384)));
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory() && e.name !== ".stale") walk(`${d}/${e.name}`);
      else if (/^[0-9a-f]{16}/.test(e.name)) fs.unlinkSync(`${d}/${e.name}`);
    }
  };
  for (const d of disks) walk(d);
  const b = await open();
  expect(b.report.records).toBe(1 + 16 + 6);
  expect(b.store.path(inode)).toContain("/meta/");
  expect((await b.store.read(inode, 0, 4096)).equals(pattern(9, 4096))).toBe(true);
  for (let i = 0; i < 16; i++) {
    expect((await b.store.read(oid(i), 0, 16384)).equals(want[i])).toBe(true);
  }
  const used = disks.map((d) => fs.readdirSync(`${d}/ee`).length);
  expect(used.every((n) => n > 0)).toBe(true); // spread over both disks, as before the crash
});

test("a stale copy put back (reviveStale) replays after the move that made it stale", async () => {
  const c = setup();
  const a = await start(c);
  await a.store.createAndWrite(oid(1), 0, pattern(1, 1000), OBJ);
  await a.store.moveToStale(oid(1), 3);
  await a.store.reviveStale(oid(1), 3);
  await a.store.write(oid(1), 100, pattern(2, 100));
  const want = await a.store.read(oid(1), 0, OBJ);
  // Crash, and the files are lost: replay of create, move, revive, write ends where the live
  // store was.
  wipeObjects(c.disk);
  fs.rmSync(`${c.disk}/.stale`, { recursive: true, force: true });
  fs.mkdirSync(`${c.disk}/.stale`);
  const b = await start(c);
  expect(b.report.records).toBe(4);
  expect(b.store.listStale()).toEqual([]);
  expect((await b.store.read(oid(1), 0, OBJ)).equals(want)).toBe(true);
});
