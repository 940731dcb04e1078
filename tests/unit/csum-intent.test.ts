// The side files' write-intent log (io/csum-intent.ts): records and their torn tail, group commit
// of marks, the cleaner marking idle names clean, and the reseal at start of an object whose side
// file lags its data (the power-loss shim drops the side file's unflushed write).
import { afterAll, afterEach, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  CAP,
  dirtyNames,
  IDLE_MS,
  INTENT_FILE,
  IntentLog,
  type SyncObject,
} from "../../io/csum-intent.ts";
import { openStore } from "../../io/store.ts";
import { PowerLossLog } from "../../io/powerloss-store.ts";
import { SdError } from "../../core/errors.ts";
import { Res } from "../../core/proto.ts";

const roots: string[] = [];
function tmp(): string {
  const d = fs.mkdtempSync(`${os.tmpdir()}/sd-intent-`);
  roots.push(d);
  return d;
}
afterAll(() => {
  for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
});
let shim: PowerLossLog | null = null;
afterEach(() => {
  shim?.uninstall();
  shim = null;
});

/** A log in a new directory; `sync` defaults to a flush that commits what it saw. */
function newLog(sync?: SyncObject): { log: IntentLog; file: string } {
  const file = path.join(tmp(), INTENT_FILE);
  const log = new IntentLog(file, sync ?? ((_n, snap, commit) => Promise.resolve(commit(snap()))));
  expect(log.open()).toEqual(new Set());
  return { log, file };
}

test("records: D without a later C is dirty; a torn or corrupt tail ends the log", async () => {
  const { log, file } = newLog();
  await Promise.all(["a", "b", "c"].map((n) => log.mark(n)));
  log.forget("b");
  log.close();
  const buf = fs.readFileSync(file);
  expect(buf.length).toBe(4 * 32);
  expect(dirtyNames(buf)).toEqual(new Set(["a", "c"]));
  // A torn record (part of one) and a full record of garbage after the last good one: ignored.
  expect(dirtyNames(Buffer.concat([buf, buf.subarray(0, 20)]))).toEqual(new Set(["a", "c"]));
  expect(dirtyNames(Buffer.concat([buf, randomBytes(32)]))).toEqual(new Set(["a", "c"]));
  // A bad CRC in the third record: it and everything after are not read.
  const bad = Buffer.from(buf);
  bad[2 * 32 + 2] ^= 1;
  expect(dirtyNames(bad)).toEqual(new Set(["a", "b"]));
  // Reopened from a file with a torn tail.
  fs.appendFileSync(file, buf.subarray(32, 50));
  expect(new IntentLog(file, () => Promise.resolve()).open()).toEqual(new Set(["a", "c"]));
});

test("marks meanwhile share the log's flushes (group commit); a durable name costs none", async () => {
  const { log } = newLog();
  const orig = fs.fdatasync;
  let flushes = 0;
  (fs as { fdatasync: typeof fs.fdatasync }).fdatasync = ((fd, cb) => {
    flushes++;
    return orig(fd, cb);
  }) as typeof fs.fdatasync;
  try {
    expect(log.touch("o0")).toBe(false);
    const names = Array.from({ length: 50 }, (_, i) => `o${i}`);
    await Promise.all(names.map((n) => log.mark(n)));
    // One flush for the first record, one for all that were appended while it ran.
    expect(flushes).toBeGreaterThan(0);
    expect(flushes).toBeLessThanOrEqual(2);
    expect(names.every((n) => log.isDurable(n))).toBe(true);
    await log.mark("o7");
    expect(flushes).toBeLessThanOrEqual(2);
    expect(log.touch("o7")).toBe(true);
  } finally {
    (fs as { fdatasync: typeof fs.fdatasync }).fdatasync = orig;
    log.close();
  }
});

test("clean(): idle names flushed and marked clean, a write during the flush keeps it dirty", async () => {
  const synced: string[] = [];
  let during: ((name: string) => void) | null = null;
  const { log, file } = newLog((name, snap, commit) => {
    const g = snap();
    synced.push(name);
    during?.(name);
    commit(g);
    return Promise.resolve();
  });
  await log.mark("a");
  await log.mark("b");
  expect(log.touch("a")).toBe(true);
  await log.clean(Date.now());
  expect(synced).toEqual([]);
  expect(log.size).toBe(2);
  await log.clean(Date.now() + IDLE_MS);
  expect(synced.sort()).toEqual(["a", "b"]);
  expect(log.size).toBe(0);
  expect(dirtyNames(fs.readFileSync(file))).toEqual(new Set());

  await log.mark("c");
  during = (n) => log.touch(n);
  await log.clean(Date.now() + IDLE_MS);
  expect(log.names()).toEqual(["c"]);
  expect(dirtyNames(fs.readFileSync(file))).toEqual(new Set(["c"]));
  during = null;
  await log.clean(Date.now() + IDLE_MS);
  expect(log.size).toBe(0);

  // Past CAP, the least recently written are cleaned even when not idle.
  synced.length = 0;
  const names = Array.from({ length: CAP + 3 }, (_, i) => `n${i}`);
  for (const n of names) await log.mark(n);
  await log.clean(Date.now());
  expect(synced).toEqual(names.slice(0, 3));
  expect(log.size).toBe(CAP);
  log.close();
});

test("reseal at start: a side file that lags its data (lost at a cut) verifies again", async () => {
  const obj = path.join(tmp(), "obj");
  fs.mkdirSync(obj);
  const DATA0 = 0x007c2b2500000000n;
  const size = 256 * 1024;
  const want = randomBytes(size);
  const s0 = openStore("plain", [obj], { checksums: true });
  await s0.init();
  await s0.createAndWrite(DATA0, 0, want, size);
  s0.close(); // everything flushed, the log empty
  expect(fs.statSync(path.join(obj, INTENT_FILE)).size).toBe(0);

  shim = new PowerLossLog([path.dirname(obj)]);
  shim.install();
  const s1 = openStore("plain", [obj], { checksums: true });
  await s1.init();
  const b = randomBytes(8192);
  await s1.write(DATA0, 8192, b); // the data flushed, the side file only marked dirty
  b.copy(want, 8192);
  shim.undoAll();
  shim.uninstall();
  shim = null;
  const intent = fs.readFileSync(path.join(obj, INTENT_FILE));
  expect(dirtyNames(intent).size).toBe(1);

  // Without the log the lag shows: the two rewritten blocks fail their checksums.
  fs.writeFileSync(path.join(obj, INTENT_FILE), "");
  const s2 = openStore("plain", [obj], { checksums: true });
  await s2.init();
  const err = await s2.read(DATA0, 8192, 8192).catch((e) => e);
  expect(err instanceof SdError && err.code === Res.EIO).toBe(true);
  s2.close();

  fs.writeFileSync(path.join(obj, INTENT_FILE), intent);
  const msgs: string[] = [];
  const s3 = openStore("plain", [obj], { checksums: true, log: (_l, m) => msgs.push(m) });
  await s3.init();
  expect(msgs.join("\n")).toMatch(/resealed the checksums of 1 objects .*\(2 blocks had changed/);
  expect(fs.statSync(path.join(obj, INTENT_FILE)).size).toBe(0);
  expect(Buffer.compare(await s3.read(DATA0, 0, size), want)).toBe(0);
  expect((await s3.scrubObject(DATA0)).ok).toBe(true);
  s3.close();
  s1.close();
});
