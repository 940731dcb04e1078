// The object cache (`sheep -w`, issue 12): a 3-node cluster (copies=3) where every sheep runs
// --nbd and a 64 MiB cache. Writes through node 0's NBD export are write-back; what FLUSH covers
// must be on every replica (kill -9 right after it), other gateways never read stale data,
// snapshots taken elsewhere see everything written before them, the cache stays within its size,
// and damaged cache files are caught at start. Tests share the cluster and run in file order.
import { afterAll, beforeAll, expect, test as bunTest } from "bun:test";
import { Buffer } from "node:buffer";
import { spawn } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { freePort, sheepCommand, storeObjects, TestCluster } from "../lib/cluster.ts";
import { testWith } from "../lib/components.ts";
import { RawNbd } from "../lib/raw-nbd.ts";
import { CmdFlag } from "../../core/nbd.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const OBJ = 4 * MiB;
const CACHE = 64 * MiB;
const test = testWith("nbd-clients");

let c: TestCluster;
let tmp = "";

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "object-cache-"));
  c = await TestCluster.start(3, {
    nbd: true,
    format: { copies: 3 },
    extra: ["-w", "size=64M"],
  });
}, 120_000);

afterAll(async () => {
  await c?.stop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
}, 60_000);

// ------------------------------------------------------------------------------ helpers

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], timeoutMs = 180_000): Promise<RunResult> {
  const proc = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], cwd: tmp });
  let stdout = "", stderr = "";
  proc.stdout!.on("data", (d) => (stdout += d));
  proc.stderr!.on("data", (d) => (stderr += d));
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  return new Promise((resolve, reject) => {
    proc.on("error", reject);
    proc.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const uri = (node: number, name: string) => `nbd://127.0.0.1:${c.nodes[node].nbdPort}/${name}`;
const nbd = (node: number, name: string) => RawNbd.open(c.nodes[node].nbdPort!, name);

async function vid(name: string): Promise<number> {
  const out = await c.dogOk(["vdi", "list", "-r"]);
  for (const line of out.split("\n")) {
    const f = line.split(" ");
    if (f[0] === "=" && f[1] === name) return parseInt(f[7], 16);
  }
  throw new Error(`no VDI ${name}:\n${out}`);
}

function dataOid(v: number, idx: number): string {
  return ((BigInt(v) << 32n) | BigInt(idx)).toString(16).padStart(16, "0");
}

/** Cache files of node i: path -> size. */
function cacheFiles(i: number): Map<string, number> {
  return cacheFilesOf(c.nodes[i].dir);
}

function cacheFilesOf(base: string): Map<string, number> {
  const out = new Map<string, number>();
  const root = path.join(base, "cache");
  if (!fs.existsSync(root)) return out;
  // Files come and go while the sheep works: one removed between listing and stat is gone.
  const statOr = (p: string) => {
    try {
      return fs.statSync(p);
    } catch {
      return null;
    }
  };
  for (const d of fs.readdirSync(root)) {
    const dir = path.join(root, d);
    if (!statOr(dir)?.isDirectory()) continue;
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir);
    } catch { /* the VDI's directory went away */ }
    for (const f of names) {
      const st = statOr(path.join(dir, f));
      if (st) out.set(path.join(dir, f), st.size);
    }
  }
  return out;
}

/** The object as node i's store holds it (null: not there). */
function storeObject(i: number, oid: string): Buffer | null {
  const p = storeObjects(c.nodes[i].dir).get(oid);
  return p ? fs.readFileSync(p) : null;
}

/** dog vdi read through node `node`. */
async function dogRead(node: number, name: string, off: number, len: number, snap?: string) {
  const args = ["vdi", "read", ...(snap ? ["-s", snap] : []), name, String(off), String(len)];
  const r = await c.dog(args, { node });
  if (r.code !== 0) throw new Error(`dog ${args.join(" ")} on ${node}: ${r.stderr}`);
  return r.stdout;
}

function pattern(byte: number, len: number): Buffer {
  return Buffer.alloc(len, byte);
}

// ------------------------------------------------------------------------------ tests

bunTest("bad -w options: a clear error and exit 1", async () => {
  const [cmd, ...pre] = sheepCommand();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "object-cache-bad-"));
  const file = path.join(dir, "a-file");
  fs.writeFileSync(file, "x");
  const cases: Array<[string, RegExp]> = [
    ["size=10M", /at least 64M/],
    ["size=1G,colour=blue", /Invalid object cache option 'colour=blue'/],
    ["directio", /size= is required/],
    ["size=lots", /Invalid object cache size 'lots'/],
    [`size=1G,dir=${file}/cache`, /object cache: cannot create/],
  ];
  try {
    const bare = await run(cmd, [...pre, "sheep", "-w"], 20_000); // upstream prints the -w help
    expect(bare.code).toBe(1);
    expect(bare.stdout).toContain("size=: size of the cache in megabyes");
    for (const [arg, msg] of cases) {
      const r = await run(
        cmd,
        [...pre, "sheep", "-f", "-p", "1", "-w", arg, path.join(dir, "s")],
        20_000,
      );
      expect({ arg, code: r.code }).toEqual({ arg, code: 1 });
      expect(r.stderr).toMatch(msg);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);

test("write-back: acknowledged from the cache, on every replica after FLUSH", async () => {
  await c.dogOk(["vdi", "create", "wb", String(64 * MiB)]);
  const v = await vid("wb");
  const h = await nbd(0, "wb");
  try {
    const data = crypto.randomBytes(256 * KiB);
    await h.write(OBJ + 4096, data); // object 1, new
    // Acknowledged, but only in node 0's cache: no replica has the object yet.
    for (const i of [0, 1, 2]) expect(storeObject(i, dataOid(v, 1))).toBeNull();
    const info = await c.dogOk(["vdi", "cache", "info"]);
    expect(info).toMatch(/^Name\tTag\tTotal\tDirty\tClean\nwb\t\t4\.0 MB\t4\.0 MB\t0\.0 MB\n/);
    expect(info).toMatch(/\nCache size 64 MB, used 4\.0 MB, non-directio\n$/);
    // The reader sees its own writes.
    expect((await h.read(OBJ + 4096, data.length)).equals(data)).toBe(true);

    await h.flush();
    for (const i of [0, 1, 2]) {
      const obj = storeObject(i, dataOid(v, 1));
      expect(obj).not.toBeNull();
      expect(obj!.subarray(4096, 4096 + data.length).equals(data)).toBe(true);
    }
    // The slot reached the cluster with (not before) the data: another sheep reads it.
    expect((await dogRead(2, "wb", OBJ + 4096, data.length)).equals(data)).toBe(true);
    expect(await c.dogOk(["vdi", "cache", "info"])).toContain("wb\t\t4.0 MB\t0.0 MB\t4.0 MB\n");

    // FUA: the touched object is pushed before the reply.
    const fua = crypto.randomBytes(8 * KiB);
    await h.write(2 * OBJ, fua, CmdFlag.FUA);
    for (const i of [0, 1, 2]) {
      expect(storeObject(i, dataOid(v, 2))?.subarray(0, fua.length).equals(fua)).toBe(true);
    }
  } finally {
    await h.disconnect();
  }
  // Detach pushed everything and dropped the VDI's cache.
  await c.waitFor(async () => cacheFiles(0).size === 0, 10_000, "cache emptied at detach");
}, 120_000);

test("another gateway never reads data older than an acknowledged write", async () => {
  await c.dogOk(["vdi", "create", "coh", String(32 * MiB)]);
  const h = await nbd(0, "coh");
  let acked = 0;
  let stop = false;
  const blocks = 8; // one 4 KiB block in each of 8 objects
  const writer = (async () => {
    for (let seq = 1; !stop && seq < 100_000; seq++) {
      const b = Buffer.alloc(4096);
      b.writeUInt32LE(seq, 0);
      for (let k = 0; k < blocks; k++) await h.write(k * OBJ, b);
      acked = seq;
    }
  })();
  try {
    let reads = 0;
    const t0 = Date.now();
    while (Date.now() - t0 < 8_000) {
      const before = acked; // every write up to here was acknowledged before the read started
      const node = 1 + (reads % 2);
      for (let k = 0; k < blocks; k++) {
        const got = (await dogRead(node, "coh", k * OBJ, 4)).readUInt32LE(0);
        expect({ k, stale: got < before }).toEqual({ k, stale: false });
      }
      reads++;
    }
    expect(reads).toBeGreaterThan(3);
    expect(acked).toBeGreaterThan(10);
  } finally {
    stop = true;
    await writer;
    await h.disconnect();
  }
}, 120_000);

test(
  "snapshot and clone taken elsewhere see every write before them; COW through the cache",
  async () => {
    await c.dogOk(["vdi", "create", "snapv", String(32 * MiB)]);
    const h = await nbd(0, "snapv");
    try {
      const a = crypto.randomBytes(64 * KiB);
      await h.write(0, a); // dirty in node 0's cache
      await c.dogOk(["vdi", "snapshot", "-s", "s1", "snapv"], { node: 1 });
      expect((await dogRead(2, "snapv", 0, a.length, "s1")).equals(a)).toBe(true);
      // Writing on: the working VDI is a new VID now, its object a copy-on-write of the snapshot's.
      const b = crypto.randomBytes(4 * KiB);
      await h.write(8192, b);
      const expected = Buffer.from(a);
      b.copy(expected, 8192);
      expect((await h.read(0, a.length)).equals(expected)).toBe(true);
      await h.flush();
      expect((await dogRead(1, "snapv", 0, a.length)).equals(expected)).toBe(true);
      expect((await dogRead(2, "snapv", 0, a.length, "s1")).equals(a)).toBe(true);
      await c.dogOk(["vdi", "clone", "-s", "s1", "snapv", "clonev"], { node: 2 });
    } finally {
      await h.disconnect();
    }
    // A clone written through the cache pulls from its base and is created whole at push.
    const k = await nbd(0, "clonev");
    try {
      const x = crypto.randomBytes(4 * KiB);
      await k.write(4096 * 3, x);
      await k.flush();
      const base = await dogRead(1, "snapv", 0, 64 * KiB, "s1");
      x.copy(base, 4096 * 3);
      expect((await dogRead(1, "clonev", 0, 64 * KiB)).equals(base)).toBe(true);
    } finally {
      await k.disconnect();
    }
  },
  120_000,
);

test("kill -9 right after FLUSH: everything flushed reads back through another sheep", async () => {
  await c.dogOk(["vdi", "create", "crash", String(32 * MiB)]);
  const h = await nbd(0, "crash");
  const flushed = crypto.randomBytes(12 * MiB);
  for (let off = 0; off < flushed.length; off += MiB) {
    await h.write(off, flushed.subarray(off, off + MiB));
  }
  await h.flush();
  await c.kill(0, "SIGKILL"); // the connection is still open: no detach flush
  h.destroy();
  expect((await dogRead(1, "crash", 0, flushed.length)).equals(flushed)).toBe(true);
  await c.startNode(0);
  await c.waitRunning();
}, 120_000);

test(
  "SIGTERM with a client attached and another detaching: prompt exit, every write pushed, locks released",
  async () => {
    await c.dogOk(["vdi", "create", "term-a", String(16 * MiB)]);
    await c.dogOk(["vdi", "create", "term-b", String(16 * MiB)]);
    const a = await nbd(0, "term-a"), b = await nbd(0, "term-b");
    const da = crypto.randomBytes(8 * MiB), db = crypto.randomBytes(8 * MiB);
    for (let off = 0; off < da.length; off += MiB) {
      await a.write(off, da.subarray(off, off + MiB));
      await b.write(off, db.subarray(off, off + MiB));
    }
    // b's detach (its push and unlock) is under way when the sheep is told to stop; a stays
    // attached: the sheep ends its connection and detaches it itself.
    await b.disconnect();
    const t0 = Date.now();
    await c.kill(0, "SIGTERM");
    a.destroy();
    // Before the fix the detach waited for a cluster the sheep had already left: 30 s, SIGKILL.
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect((await dogRead(1, "term-a", 0, da.length)).equals(da)).toBe(true);
    expect((await dogRead(2, "term-b", 0, db.length)).equals(db)).toBe(true);
    const locks = await c.dogOk(["vdi", "lock", "list"], { node: 1 });
    expect(locks).not.toContain("term-a");
    expect(locks).not.toContain("term-b");
    await c.startNode(0);
    await c.waitRunning();
  },
  120_000,
);

test(
  "damaged cache files are found at start, never served; surviving dirty ones are pushed",
  async () => {
    await c.dogOk(["vdi", "create", "torn", String(32 * MiB)]);
    const v = await vid("torn");
    const old = crypto.randomBytes(3 * OBJ);
    {
      const h = await nbd(0, "torn");
      for (let off = 0; off < old.length; off += MiB) {
        await h.write(
          off,
          old.subarray(off, off + MiB),
        );
      }
      await h.disconnect(); // pushed
    }
    const h = await nbd(0, "torn");
    const fresh = [0, 1, 2].map(() => crypto.randomBytes(4 * KiB));
    for (let i = 0; i < 3; i++) await h.write(i * OBJ, fresh[i]);
    // Dirty in the cache (the writer pushes after 2 s); crash now.
    await c.kill(0, "SIGKILL");
    h.destroy();
    const dir = path.join(c.nodes[0].dir, "cache", v.toString(16).padStart(6, "0"));
    const f = (i: number) => path.join(dir, dataOid(v, i));
    for (const i of [0, 1, 2]) expect(fs.existsSync(f(i))).toBe(true);
    fs.truncateSync(f(0), 0);
    fs.truncateSync(f(1), Math.floor(fs.statSync(f(1)).size / 2));
    await c.startNode(0);
    await c.waitRunning();
    const log = fs.readFileSync(path.join(c.nodes[0].dir, "sheep.log"), "utf8");
    expect(log).toContain(`dropped ${f(0)}: 0 bytes`);
    expect(log).toMatch(new RegExp(`dropped ${f(1)}: short`));
    // Objects 0 and 1 read as they were last pushed; object 2's surviving write was pushed.
    const pushed = `VDI ${v.toString(16)}: unflushed objects pushed`;
    await c.waitFor(
      async () => fs.readFileSync(path.join(c.nodes[0].dir, "sheep.log"), "utf8").includes(pushed),
      20_000,
      "the surviving dirty object pushed",
    );
    for (const node of [0, 1]) {
      const got = await dogRead(node, "torn", 0, 3 * OBJ);
      expect(got.subarray(0, OBJ).equals(old.subarray(0, OBJ))).toBe(true);
      expect(got.subarray(OBJ, 2 * OBJ).equals(old.subarray(OBJ, 2 * OBJ))).toBe(true);
      const want = Buffer.from(old.subarray(2 * OBJ, 3 * OBJ));
      fresh[2].copy(want, 0);
      expect(got.subarray(2 * OBJ).equals(want)).toBe(true);
    }
  },
  120_000,
);

test("a working set 3x the cache stays within its size (files and bytes)", async () => {
  const size = 3 * CACHE;
  await c.dogOk(["vdi", "create", "big", String(size)]);
  let maxFiles = 0, maxBytes = 0;
  const sample = () => {
    const m = cacheFiles(0);
    maxFiles = Math.max(maxFiles, m.size);
    maxBytes = Math.max(maxBytes, [...m.values()].reduce((a, b) => a + b, 0));
  };
  const timer = setInterval(sample, 20);
  try {
    const h = await nbd(0, "big");
    const chunk = (i: number) => pattern(i & 0xff, MiB);
    for (let i = 0; i < size / MiB; i++) await h.write(i * MiB, chunk(i));
    for (let i = 0; i < size / MiB; i += 3) {
      expect((await h.read(i * MiB, MiB)).equals(chunk(i))).toBe(true);
    }
    sample();
    await h.disconnect();
  } finally {
    clearInterval(timer);
  }
  const fits = Math.floor(CACHE / (OBJ + 8192)); // each file: an 8 KiB header, then the object
  expect(maxFiles).toBeGreaterThan(fits / 2);
  expect(maxFiles).toBeLessThanOrEqual(fits);
  expect(maxBytes).toBeLessThanOrEqual(CACHE);
  const got = await dogRead(2, "big", size - MiB, MiB);
  expect(got.equals(pattern((size / MiB - 1) & 0xff, MiB))).toBe(true);
}, 300_000);

test(
  "fio over NBD with verify=crc32c, write-back; kill -9 after the flush; verified elsewhere",
  async () => {
    await c.dogOk(["vdi", "create", "fio", String(48 * MiB)]);
    const common = ["--ioengine=nbd", "--bs=4k", "--size=40m", "--verify=crc32c", "--name=fio"];
    const w = await run("fio", [
      ...common,
      `--uri=${uri(0, "fio")}`,
      "--rw=randwrite",
      "--iodepth=16",
      "--do_verify=0",
      "--verify_state_save=0",
      "--fsync=256", // an NBD FLUSH every 256 writes
      "--end_fsync=1",
      "--output-format=json",
    ]);
    expect(w.code).toBe(0);
    await c.kill(0, "SIGKILL");
    const r = await run("fio", [
      ...common,
      `--uri=${uri(1, "fio")}`,
      "--rw=randwrite",
      "--verify_only",
      "--verify_fatal=1",
      "--verify_state_save=0",
    ]);
    expect(r.stderr).not.toMatch(/verify|bad magic|crc32c/i);
    expect(r.code).toBe(0);
    await c.startNode(0);
    await c.waitRunning();
  },
  300_000,
);

test("dog vdi cache flush, delete and purge", async () => {
  await c.dogOk(["vdi", "create", "adm", String(16 * MiB)]);
  const v = await vid("adm");
  const h = await nbd(0, "adm");
  try {
    const d = crypto.randomBytes(4096);
    await h.write(0, d);
    expect(storeObject(1, dataOid(v, 0))).toBeNull();
    expect(await c.dogOk(["vdi", "cache", "flush", "adm"])).toBe("");
    // dog node info adds the caches of the nodes that have one (ids in dog's node order).
    const ni = await c.dogOk(["node", "info"]);
    const tail = ni.slice(ni.indexOf("\nObject cache:\n"));
    expect(tail).toMatch(
      /^\nObject cache:\nId\tSize\tUsed\tDirty\tMode\n( \d\t64 MB\t\S+ MB\t0\.0 MB\tnon-directio\n){3}$/,
    );
    expect(tail).toContain("\t64 MB\t4.0 MB\t0.0 MB\tnon-directio\n");
    expect(storeObject(1, dataOid(v, 0))?.subarray(0, 4096).equals(d)).toBe(true);
    await h.write(4096, d);
    expect(await c.dogOk(["vdi", "cache", "delete", "adm"])).toBe("");
    expect(storeObject(2, dataOid(v, 0))?.subarray(4096, 8192).equals(d)).toBe(true);
    expect(cacheFiles(0).size).toBe(0);
    await h.read(0, 4096); // cached again
    expect(cacheFiles(0).size).toBe(1);
    expect(await c.dogOk(["vdi", "cache", "purge", "adm"])).toBe("");
    expect(cacheFiles(0).size).toBe(0);
    const r = await c.dog(["vdi", "cache", "flush", "nosuch"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("Failed to open VDI nosuch");
  } finally {
    await h.disconnect();
  }
}, 120_000);

/** Write-through over O_DIRECT cache files, on the runtime SHEEPDOG_RUNTIME names. */
async function directioScenario(): Promise<void> {
  const http = await freePort();
  const c2 = await TestCluster.start(1, {
    nbd: true,
    format: { copies: 1 },
    extra: ["-w", "size=64M,directio", "--nbd-cache=writethrough", "--http", `127.0.0.1:${http}`],
  });
  try {
    await c2.dogOk(["vdi", "create", "wt", String(16 * MiB)]);
    const out = await c2.dogOk(["vdi", "list", "-r"]);
    const v = parseInt(out.split("\n").find((l) => l.split(" ")[1] === "wt")!.split(" ")[7], 16);
    const obj = () => {
      const p = storeObjects(c2.nodes[0].dir).get(dataOid(v, 0));
      return p ? fs.readFileSync(p) : null;
    };
    const h = await RawNbd.open(c2.nodes[0].nbdPort!, "wt");
    try {
      const a = crypto.randomBytes(4096), b = crypto.randomBytes(4096);
      await h.write(0, a);
      expect(obj()?.subarray(0, 4096).equals(a)).toBe(true); // before the reply
      expect((await h.read(0, 4096)).equals(a)).toBe(true); // pulls the object into the cache
      const files = [...cacheFilesOf(c2.nodes[0].dir).keys()];
      expect(files).toEqual([
        path.join(c2.nodes[0].dir, "cache", v.toString(16).padStart(6, "0"), dataOid(v, 0)),
      ]);
      await h.write(8192, b); // a cached object, written through
      expect(obj()?.subarray(8192, 12288).equals(b)).toBe(true);
      expect((await h.read(8192, 4096)).equals(b)).toBe(true);
      // The cache file is open with O_DIRECT (040000 in /proc's octal flags).
      const pid = c2.nodes[0].proc!.pid!;
      const fdDir = `/proc/${pid}/fd`;
      const fd = fs.readdirSync(fdDir).find((f) => {
        try {
          return fs.readlinkSync(path.join(fdDir, f)) === files[0];
        } catch {
          return false;
        }
      });
      expect(fd).toBeDefined();
      const flags = /flags:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, "utf8"))!;
      expect(parseInt(flags[1], 8) & 0o40000).toBe(0o40000);
      const m = await (await fetch(`http://127.0.0.1:${http}/metrics`)).text();
      expect(m).toContain(`sheep_cache_size_bytes ${CACHE}`);
      expect(m).toMatch(/sheep_cache_reads_total\{outcome="miss"\} [1-9]/);
      expect(m).toMatch(/sheep_cache_objects\{state="dirty"\} 0/);
      expect(await c2.dogOk(["vdi", "cache", "info"])).toMatch(/, directio\n$/);
    } finally {
      await h.disconnect();
    }
  } finally {
    await c2.stop();
  }
}

test(
  "--nbd-cache=writethrough with directio: writes on the replicas before the reply; O_DIRECT files; metrics",
  directioScenario,
  120_000,
);

// Neither runtime promises address-aligned Buffers (Deno's seldom are): the cache's O_DIRECT
// transfers use buffers aligned by address, so the same scenario runs on Deno from source.
test("the same on Deno (deno run mod.ts): aligned buffers, no EINVAL", async () => {
  const was = process.env.SHEEPDOG_RUNTIME;
  process.env.SHEEPDOG_RUNTIME = "deno";
  try {
    await directioScenario();
  } finally {
    if (was === undefined) delete process.env.SHEEPDOG_RUNTIME;
    else process.env.SHEEPDOG_RUNTIME = was;
  }
}, 180_000);
