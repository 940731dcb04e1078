// sheep -j (issue 12): real sheep processes killed with SIGKILL during writes, then restarted.
//
// A SIGKILL keeps the page cache, so the object files would hold every write even without a
// replay. To make the replay prove itself, the object files are deleted while the sheep is down
// (as a power loss would lose their unsynced pages) and the journal keeps every record
// (SHEEPDOG_JOURNAL_CHECKPOINT_MS=0: checkpoints only when full, and the journals are big
// enough): what reads back after the restart came from the journal alone. Single-sheep clusters
// (copies=1), so no replica can fill in for a broken replay.
import { afterAll, afterEach, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import * as crypto from "node:crypto";
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { freePort, runDog, TestCluster } from "../lib/cluster.ts";
import { DATA_START, RecordReader } from "../../core/journal-record.ts";
import { JOURNAL_FILE } from "../../io/journal.ts";

const MiB = 1 << 20;
const OBJ = 4 * MiB;
process.env.SHEEPDOG_JOURNAL_CHECKPOINT_MS = "0";

let clusters: TestCluster[] = [];
afterEach(async () => {
  for (const c of clusters) await c.stop();
  clusters = [];
});
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "journal-e2e-"));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

async function oneSheep(journal: string, more: string[] = []): Promise<TestCluster> {
  const c = await TestCluster.start(1, { extra: ["-j", journal, ...more], format: { copies: 1 } });
  clusters.push(c);
  return c;
}

const sha = (b: Buffer) => crypto.createHash("sha256").update(b).digest("hex");
const sheepLog = (c: TestCluster) =>
  fs.readFileSync(path.join(c.nodes[0].dir, "sheep.log"), "utf8");

/** Deletes every object file and side file (what a power loss could take of unsynced files). */
function wipeObjects(c: TestCluster): number {
  let n = 0;
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        if (e.name !== ".stale") walk(p);
      } else if (/^[0-9a-f]{16}/.test(e.name)) {
        fs.unlinkSync(p);
        n++;
      }
    }
  };
  walk(path.join(c.nodes[0].dir, "obj"));
  return n;
}

async function readVdi(c: TestCluster, name: string, off: number, len: number): Promise<Buffer> {
  const r = await c.dog(["vdi", "read", name, String(off), String(len)]);
  if (r.code !== 0) throw new Error(`vdi read: ${r.stderr}\n${c.logTail(0)}`);
  return r.stdout;
}

/** The records of the newest generation in the journal file, with their file offsets. */
function journalRecords(file: string): Array<{ offset: number; length: number }> {
  const buf = fs.readFileSync(file).subarray(DATA_START);
  const r = new RecordReader();
  r.push(buf);
  const out: Array<{ offset: number; length: number; gen: number }> = [];
  for (let x = r.next(); x; x = r.next()) {
    if (out.length > 0 && x.rec.gen !== out[0].gen) break;
    out.push({ offset: DATA_START + x.offset, length: x.length, gen: x.rec.gen });
  }
  return out;
}

test(
  "kill -9 during heavy writes: every acknowledged write is rebuilt from the journal",
  async () => {
    const c = await oneSheep("size=512M");
    await c.dogOk(["vdi", "create", "v", "256M"]);
    const a = crypto.randomBytes(32 * MiB);
    await c.dogOk(["vdi", "write", "v", "0", String(a.length)], { input: a });
    // Acknowledged writes while a long one runs: small writes, each confirmed by dog's exit.
    const acked = new Map<number, Buffer>();
    const b = crypto.randomBytes(160 * MiB);
    const heavy = c.dog(["vdi", "write", "v", String(64 * MiB), String(b.length)], { input: b });
    for (let i = 0; i < 6; i++) {
      const d = crypto.randomBytes(4096);
      const off = 32 * MiB + i * 1024 * 1024 + 512;
      if ((await c.dog(["vdi", "write", "v", String(off), "4096"], { input: d })).code === 0) {
        acked.set(off, d);
      }
    }
    await c.kill(0, "SIGKILL");
    const heavyDone = await heavy;
    expect(acked.size).toBe(6);
    expect(wipeObjects(c)).toBeGreaterThan(0);

    await c.startNode(0);
    await c.waitRunning();
    const log = sheepLog(c);
    const m = /journal: replayed (\d+) records/.exec(log);
    expect(m).not.toBeNull();
    expect(Number(m![1])).toBeGreaterThan(8);
    expect(sha(await readVdi(c, "v", 0, a.length))).toBe(sha(a));
    for (const [off, d] of acked) expect((await readVdi(c, "v", off, 4096)).equals(d)).toBe(true);
    // The write cut by the kill: each object is all old (zeros) or all new, never torn or mixed.
    const got = await readVdi(c, "v", 64 * MiB, b.length);
    const zero = Buffer.alloc(OBJ);
    let fresh = 0;
    for (let o = 0; o < b.length; o += OBJ) {
      const piece = got.subarray(o, o + OBJ);
      const isNew = piece.equals(b.subarray(o, o + OBJ));
      if (isNew) fresh++;
      else expect(piece.equals(zero)).toBe(true);
    }
    if (heavyDone.code === 0) expect(fresh).toBe(b.length / OBJ);
    console.log(
      `journal e2e: ${m![1]} records replayed; cut write ${
        heavyDone.code === 0 ? "had finished" : "was cut"
      }, ${fresh}/${b.length / OBJ} of its objects back`,
    );
    // Every stored checksum matches after the replay (a mismatch reads as EIO).
    const check = await c.dog(["vdi", "check", "v"]);
    expect(check.code).toBe(0);
  },
  240_000,
);

test(
  "a torn last record (journal truncated while down) replays the rest and reports the tail",
  async () => {
    const http = await freePort();
    const c = await oneSheep("size=128M", ["--http", String(http)]);
    await c.dogOk(["vdi", "create", "v", "64M"]);
    const parts = [0, 1, 2].map(() => crypto.randomBytes(OBJ));
    for (let i = 0; i < 3; i++) {
      await c.dogOk(["vdi", "write", "v", String(i * OBJ), String(OBJ)], { input: parts[i] });
    }
    await c.kill(0, "SIGKILL");
    const file = path.join(c.nodes[0].dir, "journal", JOURNAL_FILE);
    const recs = journalRecords(file);
    expect(recs.length).toBeGreaterThan(4);
    const last = recs[recs.length - 1];
    fs.truncateSync(file, last.offset + Math.floor(last.length / 2));
    wipeObjects(c);

    await c.startNode(0);
    await c.waitRunning();
    const log = sheepLog(c);
    expect(log).toContain(`journal: replayed ${recs.length - 1} records`);
    expect(log).toMatch(new RegExp(`torn record at offset ${last.offset} \\(record cut short`));
    // Everything before the torn record is back.
    for (let i = 0; i < 2; i++) {
      expect(sha(await readVdi(c, "v", i * OBJ, OBJ))).toBe(
        sha(parts[i]),
      );
    }
    // The journal file is whole again and takes new writes.
    expect(fs.statSync(file).size).toBe(128 * MiB);
    await c.dogOk(["vdi", "write", "v", "0", "4096"], { input: parts[2].subarray(0, 4096) });
    // Its use shows on /metrics.
    const metrics = await (await fetch(`http://127.0.0.1:${http}/metrics`)).text();
    expect(metrics).toContain(`sheep_journal_bytes{kind="size"} ${128 * MiB}`);
    expect(Number(/^sheep_journal_records_total (\d+)$/m.exec(metrics)?.[1])).toBeGreaterThan(0);
    expect(metrics).toContain("sheep_journal_failed 0");
  },
  120_000,
);

test("skip: the journal is not replayed, and the log says so", async () => {
  const c = await oneSheep("size=64M");
  await c.dogOk(["vdi", "create", "v", "16M"]);
  await c.dogOk(["vdi", "write", "v", "0", "4096"], { input: crypto.randomBytes(4096) });
  await c.kill(0, "SIGKILL");
  wipeObjects(c);
  c.nodes[0].extra = ["-j", "size=64M,skip"];
  await c.startNode(0);
  await c.waitFor(async () => sheepLog(c).includes("are NOT replayed"), 20_000, "skip log");
  expect(sheepLog(c)).toMatch(/journal: skip: records after checkpoint \d+ in .* are NOT replayed/);
  // Nothing came back: the VDI's inode was only in the journal.
  await c.waitRunning();
  const list = await c.dogOk(["vdi", "list", "-r"]);
  expect(list).not.toContain(" v ");
}, 120_000);

test("bad -j options: a clear error and exit 1", async () => {
  const base = path.join(scratch, "bad");
  const cases: Array<[string, RegExp]> = [
    ["size=63M", /^invalid size 63M, must be bigger than 64\(M\)$/m],
    ["size=1", /must be bigger than 64\(M\)/],
    ["dir=/tmp", /you must specify size for journal/],
    ["size=1G,colour=blue", /^invalid option colour=blue$/m],
    [
      "size=128M,dir=/proc/no-such/journal",
      /journal: cannot use directory \/proc\/no-such\/journal/,
    ],
  ];
  for (const [arg, want] of cases) {
    const r = await runDog(
      ["sheep", "-f", "-c", `local:${path.join(scratch, "cl")}`, "-j", arg, base],
      { timeoutMs: 20_000 },
    );
    expect({ arg, code: r.code }).toEqual({ arg, code: 1 });
    expect(r.stderr).toMatch(want);
  }
}, 120_000);

test(
  "3 sheep copies=3 over NBD: the whole cluster killed during nbdcopy comes back from the journals",
  async () => {
    if (!["nbdcopy"].every((t) => spawnSync("which", [t]).status === 0)) {
      throw new Error("nbdcopy missing (Debian libnbd-bin)");
    }
    const c = await TestCluster.start(3, {
      nbd: true,
      extra: ["-j", "size=256M"],
      format: { copies: 3 },
    });
    clusters.push(c);
    const uri = (name: string) => `nbd://127.0.0.1:${c.nodes[0].nbdPort}/${name}`;
    const a = crypto.randomBytes(48 * MiB);
    const b = crypto.randomBytes(96 * MiB);
    fs.writeFileSync(path.join(scratch, "a"), a);
    fs.writeFileSync(path.join(scratch, "b"), b);
    await c.dogOk(["vdi", "create", "a", "48M"]);
    await c.dogOk(["vdi", "create", "b", "96M"]);
    const done = spawnSync("nbdcopy", ["--flush", path.join(scratch, "a"), uri("a")], {
      timeout: 120_000,
    });
    expect(done.status).toBe(0); // acknowledged and flushed
    const cut = spawn("nbdcopy", ["--flush", path.join(scratch, "b"), uri("b")], {
      stdio: "ignore",
    });
    await new Promise((r) => setTimeout(r, 700));
    await Promise.all([0, 1, 2].map((i) => c.kill(i, "SIGKILL")));
    await new Promise((r) => cut.once("exit", r).exitCode !== null && r(null));
    for (const i of [0, 1, 2]) wipeNode(c, i);
    for (const i of [0, 1, 2]) await c.startNode(i);
    await c.waitRunning();
    for (const i of [0, 1, 2]) {
      const log = fs.readFileSync(path.join(c.nodes[i].dir, "sheep.log"), "utf8");
      expect(Number(/journal: replayed (\d+) records/.exec(log)?.[1])).toBeGreaterThan(0);
    }
    expect(sha(await readVdi(c, "a", 0, a.length))).toBe(sha(a));
    const check = await c.dog(["vdi", "check", "a"]);
    expect({ code: check.code, err: check.stderr }).toEqual({ code: 0, err: check.stderr });
    // The cut copy: every 64 KiB piece all old (zeros) or all new. Not per object: a kill in the
    // middle of an object leaves the requests acknowledged before it (nbdcopy's are 256 KiB),
    // so an object may rightly be part new, part zeros, but no write is ever half applied.
    const got = await readVdi(c, "b", 0, b.length);
    const PIECE = 64 * 1024;
    const zero = Buffer.alloc(PIECE);
    let fresh = 0;
    for (let o = 0; o < b.length; o += PIECE) {
      const piece = got.subarray(o, o + PIECE);
      if (piece.equals(b.subarray(o, o + PIECE))) fresh++;
      else expect(piece.equals(zero)).toBe(true);
    }
    fresh = Math.floor(fresh / (OBJ / PIECE));
    console.log(
      `journal e2e (3 nodes): ~${fresh}/${b.length / OBJ} objects' worth of the cut copy back`,
    );
  },
  300_000,
);

function wipeNode(c: TestCluster, i: number): void {
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        if (e.name !== ".stale") walk(p);
      } else if (/^[0-9a-f]{16}/.test(e.name)) fs.unlinkSync(p);
    }
  };
  walk(path.join(c.nodes[i].dir, "obj"));
}

test("two sheep never share a journal: the second one exits 1 naming the owner", async () => {
  const shared = path.join(scratch, "shared-journal");
  const c = await oneSheep(`size=64M,dir=${shared}`);
  const other = path.join(scratch, "other");
  const r = await runDog(
    [
      "sheep",
      "-f",
      "-c",
      `local:${path.join(scratch, "cl2")}`,
      "-j",
      `size=64M,dir=${shared}`,
      other,
    ],
    { timeoutMs: 20_000 },
  );
  expect(r.code).toBe(1);
  expect(r.stderr).toContain(
    `belongs to the sheep of ${fs.realpathSync(c.nodes[0].dir)}, not ${fs.realpathSync(other)}`,
  );
  // The owner is unharmed.
  await c.dogOk(["vdi", "create", "v", "4M"]);
}, 60_000);
