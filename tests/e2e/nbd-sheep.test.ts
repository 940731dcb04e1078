// NBD access acceptance: a 3-node cluster (copies=3) where every sheep runs --nbd, driven by
// Debian's real NBD clients (nbdinfo, nbdcopy, qemu-img, qemu-io, fio's nbd engine) plus a tiny
// raw-socket client for the one case the real clients refuse to send (writes past the end).
// Tests run in file order and share the cluster; the one that kills a sheep comes last.
import { RawClient } from "../lib/nbd-raw-client.ts";
import { afterAll, beforeAll, expect } from "bun:test";
import { Buffer } from "node:buffer";
import { type ChildProcess, spawn } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { TestCluster } from "../lib/cluster.ts";
import { testWith } from "../lib/components.ts";
import { Cmd, TxFlag } from "../../core/nbd.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const LONG = process.env.SHEEPDOG_LONG === "1";
/** Every test here drives the Debian NBD clients (nbdinfo, nbdcopy, qemu-img, qemu-io, fio). */
const test = testWith("nbd-clients");

let c: TestCluster;
let tmp = "";

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "nbd-sheep-"));
  c = await TestCluster.start(3, { nbd: true, format: { copies: 3 } });
}, 120_000);

afterAll(async () => {
  for (const p of spawned) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  await c?.stop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
}, 60_000);

// ------------------------------------------------------------------------------ helpers

const uri = (node: number, name: string) => `nbd://127.0.0.1:${c.nodes[node].nbdPort}/${name}`;

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

const spawned = new Set<ChildProcess>();

/** Starts a tool in the scratch directory (fio and friends leave files in their cwd). */
function start(
  cmd: string,
  args: string[],
  timeoutMs = 120_000,
): { proc: ChildProcess; done: Promise<RunResult> } {
  const t0 = Date.now();
  const proc = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"], cwd: tmp });
  spawned.add(proc);
  let stdout = "";
  let stderr = "";
  proc.stdout!.on("data", (d) => (stdout += d));
  proc.stderr!.on("data", (d) => (stderr += d));
  proc.stdin!.on("error", () => {});
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const done = new Promise<RunResult>((resolve, reject) => {
    proc.on("error", reject);
    proc.on("close", (code, signal) => {
      clearTimeout(timer);
      spawned.delete(proc);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 });
    });
  });
  return { proc, done };
}

function run(cmd: string, args: string[], timeoutMs = 120_000): Promise<RunResult> {
  const s = start(cmd, args, timeoutMs);
  s.proc.stdin!.end();
  return s.done;
}

/** Throws with the tool's output unless it exited 0. */
function ok(r: RunResult, what: string): RunResult {
  if (r.code !== 0) {
    throw new Error(
      `${what}: exit ${r.code} signal ${r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`,
    );
  }
  return r;
}

/** qemu-io with one -c per command; fails unless every command succeeded and every pattern matched. */
async function qio(
  node: number,
  name: string,
  cmds: string[],
  opts: { readOnly?: boolean } = {},
): Promise<RunResult> {
  const args = ["-f", "raw", ...(opts.readOnly ? ["-r"] : [])];
  for (const cmd of cmds) args.push("-c", cmd);
  const r = ok(
    await run("qemu-io", [...args, uri(node, name)]),
    `qemu-io ${cmds.join("; ")} on node ${node}`,
  );
  if (/fail|error|denied/i.test(r.stdout + r.stderr)) {
    throw new Error(`qemu-io ${cmds.join("; ")}: ${r.stdout}\n${r.stderr}`);
  }
  return r;
}

function json(s: string): any {
  return JSON.parse(s.slice(s.search(/[{[]/)));
}

async function vdiCreate(name: string, size: number): Promise<void> {
  await c.dogOk(["vdi", "create", name, String(size)]);
}

/** `dog vdi list -r` row of the working (non-snapshot) VDI `name`. */
async function vdiRow(name: string, node = 0): Promise<{ used: number; vid: string }> {
  const out = await c.dogOk(["vdi", "list", "-r"], { node });
  for (const line of out.split("\n")) {
    const f = line.split(" ");
    if (f[0] === "=" && f[1] === name) return { used: Number(f[4]), vid: f[7] };
  }
  throw new Error(`VDI ${name} not in dog vdi list -r:\n${out}`);
}

/** Names of locked VDIs according to `dog vdi lock list` on `node`. */
async function lockedVdis(node = 0): Promise<string[]> {
  const out = await c.dogOk(["vdi", "lock", "list"], { node });
  return out.split("\n").slice(1).filter((l) => l.includes("|")).map((l) => l.split("|")[0].trim());
}

/** Data object indexes of VDI `vidHex` stored on node i. */
function dataObjects(i: number, vidHex: string): number[] {
  const prefix = vidHex.padStart(8, "0");
  return c.objectFiles(i).filter((f) => f.startsWith(prefix)).map((f) =>
    parseInt(f.slice(8, 16), 16)
  ).sort((a, b) => a - b);
}

/** Deterministic test image: pseudo-random data in a few regions, zeros elsewhere. */
function makeImage(size: number, seed: number): Buffer {
  const img = Buffer.alloc(size);
  let s = seed;
  const fill = (off: number, len: number) => {
    for (let i = 0; i < len; i += 4) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      img.writeUInt32LE(s, off + i);
    }
  };
  fill(0, 3 * MiB);
  fill(20 * MiB + 4096, 1 * MiB + 8192);
  fill(size - 2 * MiB, 2 * MiB);
  return img;
}

/** Index of the first byte of buf[from, to) that is not one of `allowed`, or -1. */
function firstOther(buf: Buffer, from: number, to: number, allowed: number[]): number {
  const a = new Uint8Array(256);
  for (const v of allowed) a[v] = 1;
  for (let i = from; i < to; i++) if (!a[buf[i]]) return i;
  return -1;
}

// ------------------------------------------------------------------------------ tests

test("nbdinfo --list lists the VDIs; nbdinfo shows size and block sizes", async () => {
  await vdiCreate("list-a", 1 * GiB);
  await vdiCreate("list-b", 10 * MiB);
  for (const node of [0, 1, 2]) {
    const r = ok(
      await run("nbdinfo", ["--list", "--json", `nbd://127.0.0.1:${c.nodes[node].nbdPort}`]),
      "nbdinfo --list",
    );
    const exps = json(r.stdout).exports as Array<Record<string, any>>;
    const byName = new Map(exps.map((e) => [e["export-name"], e]));
    expect(byName.has("list-a")).toBe(true);
    expect(byName.has("list-b")).toBe(true);
    expect(byName.get("list-a")!["export-size"]).toBe(1 * GiB);
  }
  // The human-readable listing names them too.
  const text = ok(
    await run("nbdinfo", ["--list", `nbd://127.0.0.1:${c.nodes[1].nbdPort}`]),
    "nbdinfo --list",
  );
  expect(text.stdout).toContain('export="list-a"');
  expect(text.stdout).toContain('export="list-b"');

  for (const [name, size] of [["list-a", 1 * GiB], ["list-b", 10 * MiB]] as const) {
    const r = ok(await run("nbdinfo", ["--json", uri(2, name)]), `nbdinfo ${name}`);
    const e = json(r.stdout).exports[0];
    expect(e["export-name"]).toBe(name);
    expect(e["export-size"]).toBe(size);
    expect(e.is_read_only).toBe(false);
    expect([1, 512]).toContain(e.block_size_minimum);
    expect(e.block_size_preferred).toBe(4096);
    expect(e.block_size_maximum).toBeLessThanOrEqual(32 * MiB);
    expect(e.block_size_maximum).toBeGreaterThanOrEqual(e.block_size_preferred);
    expect(e.contexts).toContain("base:allocation");
    expect([e.can_flush, e.can_trim, e.can_zero]).toEqual([true, true, true]);
  }
  // Inspection does not leave a lock behind.
  await c.waitFor(
    async () => (await lockedVdis()).length === 0,
    10_000,
    "no VDI locks after nbdinfo",
  );
}, 60_000);

test("qemu-img convert -n into a VDI and back out; qemu-img compare", async () => {
  const size = 64 * MiB;
  await vdiCreate("conv", size);
  const src = path.join(tmp, "conv-src.raw");
  const out = path.join(tmp, "conv-out.raw");
  const img = makeImage(size, 7);
  fs.writeFileSync(src, img);
  // Stale data where the image has zeros: convert -n must overwrite it.
  await qio(0, "conv", [`write -P 0xee ${30 * MiB} 8192`, `write -P 0xee ${size - 3 * MiB} 4096`]);

  ok(
    await run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", src, uri(0, "conv")]),
    "qemu-img convert in",
  );
  const cmp = ok(
    await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", src, uri(1, "conv")]),
    "qemu-img compare",
  );
  expect(cmp.stdout).toContain("Images are identical");

  fs.writeFileSync(out, "");
  fs.truncateSync(out, size);
  ok(
    await run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", uri(2, "conv"), out]),
    "qemu-img convert out",
  );
  expect(fs.readFileSync(out).equals(img)).toBe(true);
  const cmp2 = ok(
    await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", out, uri(0, "conv")]),
    "qemu-img compare out",
  );
  expect(cmp2.stdout).toContain("Images are identical");
}, 120_000);

test("nbdcopy with its default settings (multi-conn) writes into a VDI", async () => {
  // The server advertises CAN_MULTI_CONN, so nbdcopy opens several connections to the
  // destination and writes through all of them. Exclusive attach must not turn that into EPERM.
  // nbdcopy hands out work in 128 MiB chunks, one per thread and connection: a sparse 512 MiB
  // source (1 MiB of data per 64 MiB) makes every connection write data and zero holes.
  const size = 512 * MiB;
  await vdiCreate("mc", size);
  const src = path.join(tmp, "mc-src.raw");
  const fd = fs.openSync(src, "w");
  for (let off = 0; off < size; off += 64 * MiB) {
    fs.writeSync(fd, crypto.randomBytes(1 * MiB), 0, 1 * MiB, off);
  }
  fs.ftruncateSync(fd, size);
  fs.closeSync(fd);
  const up = await run("nbdcopy", ["--verbose", src, uri(0, "mc")]);
  await c.waitFor(async () => !(await lockedVdis()).includes("mc"), 10_000, "lock of mc released");
  const conns = up.stderr.match(/connections=(\d+)/)?.[1];
  // --verbose output is mostly libnbd debug lines; keep nbdcopy's own messages.
  const msgs = up.stderr.split("\n").filter((l) => /^(nbdcopy:|nbd:\/\/)/.test(l)).join("\n");
  ok({ ...up, stderr: msgs }, `nbdcopy (default settings: ${conns} connections) into VDI mc`);
  const cmp = ok(
    await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", src, uri(1, "mc")]),
    "qemu-img compare",
  );
  expect(cmp.stdout).toContain("Images are identical");
  fs.rmSync(src, { force: true });
}, 120_000);

test("nbdcopy 1 GiB of random data in and out (copies=3 on 3 nodes)", async () => {
  const size = 1 * GiB;
  await vdiCreate("big", size);
  const src = path.join(tmp, "big-src.raw");
  const out = path.join(tmp, "big-out.raw");
  const t0 = Date.now();
  const fd = fs.openSync(src, "w");
  const chunk = Buffer.allocUnsafe(16 * MiB);
  for (let off = 0; off < size; off += chunk.length) {
    crypto.randomFillSync(chunk);
    fs.writeSync(fd, chunk);
  }
  fs.closeSync(fd);
  const genMs = Date.now() - t0;

  // One connection for the upload: the extra connections of nbdcopy's default multi-conn mode
  // are served read-only (see the previous test); this one checks the data path at scale.
  const up = ok(
    await run("nbdcopy", ["--connections=1", src, uri(0, "big")], 300_000),
    "nbdcopy in",
  );
  expect((await vdiRow("big")).used).toBe(size);
  await c.waitFor(
    async () => !(await lockedVdis()).includes("big"),
    10_000,
    "lock of big released",
  );
  // Download through another sheep with nbdcopy's defaults (reads work on every connection).
  const down = ok(await run("nbdcopy", [uri(2, "big"), out], 300_000), "nbdcopy out");
  const same = await run("cmp", [src, out]);
  expect(same.stdout + same.stderr).toBe("");
  expect(same.code).toBe(0);
  const cmp = ok(
    await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", src, uri(1, "big")], 300_000),
    "qemu-img compare",
  );
  expect(cmp.stdout).toContain("Images are identical");
  console.log(
    `[nbd-sheep] 1 GiB: generate ${genMs} ms, nbdcopy in ${up.ms} ms (${
      (1024 / (up.ms / 1000)).toFixed(0)
    } MiB/s), ` +
      `nbdcopy out ${down.ms} ms (${
        (1024 / (down.ms / 1000)).toFixed(0)
      } MiB/s), qemu-img compare ${cmp.ms} ms`,
  );
  fs.rmSync(src, { force: true });
  fs.rmSync(out, { force: true });
}, 600_000);

test(
  "qemu-io patterns across object boundaries, at sub-4K offsets and at the end; writes past the end are refused",
  async () => {
    const size = 64 * MiB;
    await vdiCreate("pat", size);
    const writes: Array<[number, number, number]> = [
      [0x11, 100, 300], // sub-4K, inside the first sector
      [0x12, 4095, 2], // straddles a 4K boundary
      [0x13, 4 * MiB - 1000, 3000], // straddles the object 0/1 boundary
      [0x14, 8 * MiB - 512, 4 * MiB + 1024], // objects 1, 2 and 3
      [0x15, size - 4096, 4096], // the last 4K
      [0x16, size - 1, 1], // the very last byte
    ];
    await qio(0, "pat", writes.map(([p, o, l]) => `write -P ${p} ${o} ${l}`));
    // Read back through other sheep, with the gaps in between still zero.
    const reads = [
      "read -P 0 0 100",
      "read -P 0x11 100 300",
      "read -P 0 400 3695",
      "read -P 0x12 4095 2",
      `read -P 0 4097 ${4 * MiB - 1000 - 4097}`,
      `read -P 0x13 ${4 * MiB - 1000} 3000`,
      `read -P 0 ${4 * MiB + 2000} ${8 * MiB - 512 - 4 * MiB - 2000}`,
      `read -P 0x14 ${8 * MiB - 512} ${4 * MiB + 1024}`,
      `read -P 0 ${12 * MiB + 512} ${size - 4096 - 12 * MiB - 512}`,
      `read -P 0x15 ${size - 4096} 4095`,
      `read -P 0x16 ${size - 1} 1`,
    ];
    await qio(1, "pat", reads, { readOnly: true });
    await qio(2, "pat", reads);

    // qemu refuses out-of-range requests itself...
    for (
      const cmd of [
        `write -P 1 ${size - 2048} 4096`,
        `write -P 1 ${size} 1`,
        `write -z ${size - 512} 1024`,
      ]
    ) {
      const r = await run("qemu-io", ["-f", "raw", "-c", cmd, uri(0, "pat")]);
      expect(r.code).not.toBe(0);
      expect(r.stdout + r.stderr).toMatch(/failed|error/i);
    }
    // ...so check the server with a raw client that sends them anyway.
    const raw = await RawClient.open(c.nodes[1].nbdPort!, "pat");
    try {
      expect(raw.size).toBe(size);
      expect(raw.txFlags & TxFlag.READ_ONLY).toBe(0);
      expect((await raw.request(Cmd.WRITE, size - 2048, 4096, 0, Buffer.alloc(4096, 0x99))).error)
        .toBe(28); // ENOSPC
      expect((await raw.request(Cmd.WRITE, size, 1, 0, Buffer.from([0x99]))).error).toBe(28);
      expect((await raw.request(Cmd.WRITE_ZEROES, size - 512, 1024)).error).not.toBe(0);
      expect((await raw.request(Cmd.TRIM, size, 4096)).error).not.toBe(0);
      expect((await raw.request(Cmd.READ, size - 1, 2)).error).toBe(22); // EINVAL
      // In range up to the last byte is fine.
      expect((await raw.request(Cmd.WRITE, size - 1, 1, 0, Buffer.from([0x16]))).error).toBe(0);
      const tail = await raw.request(Cmd.READ, size - 4096, 4096);
      expect(tail.error).toBe(0);
      expect(tail.data!.subarray(0, 4095).equals(Buffer.alloc(4095, 0x15))).toBe(true);
      expect(tail.data![4095]).toBe(0x16);
    } finally {
      await raw.disconnect();
    }
    await qio(0, "pat", [`read -P 0x15 ${size - 4096} 4095`, `read -P 0x16 ${size - 1} 1`], {
      readOnly: true,
    });
  },
  60_000,
);

test(
  "nbdinfo --map shows holes; qemu-img convert of a 100 GiB VDI with 10 MiB written takes seconds",
  async () => {
    const size = 100 * GiB;
    await vdiCreate("huge", size);
    // 10 MiB in three places: a whole object at the start, half an object at 1 GiB + 2 MiB,
    // and the last object.
    await qio(1, "huge", [
      `write -P 0x71 0 ${4 * MiB}`,
      `write -P 0x72 ${1 * GiB + 2 * MiB} ${2 * MiB}`,
      `write -P 0x73 ${size - 4 * MiB} ${4 * MiB}`,
    ]);
    expect((await vdiRow("huge")).used).toBe(12 * MiB);

    const map = ok(await run("nbdinfo", ["--map", "--json", uri(0, "huge")]), "nbdinfo --map");
    expect(json(map.stdout)).toEqual([
      { offset: 0, length: 4 * MiB, type: 0, description: "data" },
      { offset: 4 * MiB, length: 1 * GiB - 4 * MiB, type: 3, description: "hole,zero" },
      { offset: 1 * GiB, length: 4 * MiB, type: 0, description: "data" },
      {
        offset: 1 * GiB + 4 * MiB,
        length: size - 1 * GiB - 8 * MiB,
        type: 3,
        description: "hole,zero",
      },
      { offset: size - 4 * MiB, length: 4 * MiB, type: 0, description: "data" },
    ]);
    const text = ok(await run("nbdinfo", ["--map", uri(2, "huge")]), "nbdinfo --map (text)");
    expect(text.stdout).toMatch(/hole,zero/);

    const out = path.join(tmp, "huge.raw");
    const conv = ok(
      await run("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri(2, "huge"), out], 120_000),
      "qemu-img convert",
    );
    console.log(`[nbd-sheep] qemu-img convert of 100 GiB VDI with 10 MiB written: ${conv.ms} ms`);
    expect(conv.ms).toBeLessThan(60_000);
    const st = fs.statSync(out);
    expect(st.size).toBe(size);
    // Sparse output: only the written data (plus a little slack) is allocated.
    expect(st.blocks * 512).toBeLessThan(32 * MiB);
    const fd = fs.openSync(out, "r");
    try {
      const at = (off: number, len: number) => {
        const b = Buffer.alloc(len);
        fs.readSync(fd, b, 0, len, off);
        return b;
      };
      expect(at(0, 4 * MiB).equals(Buffer.alloc(4 * MiB, 0x71))).toBe(true);
      expect(at(1 * GiB, 2 * MiB).equals(Buffer.alloc(2 * MiB))).toBe(true);
      expect(at(1 * GiB + 2 * MiB, 2 * MiB).equals(Buffer.alloc(2 * MiB, 0x72))).toBe(true);
      expect(at(size - 4 * MiB, 4 * MiB).equals(Buffer.alloc(4 * MiB, 0x73))).toBe(true);
      expect(at(50 * GiB, 1 * MiB).equals(Buffer.alloc(1 * MiB))).toBe(true);
    } finally {
      fs.closeSync(fd);
      fs.rmSync(out, { force: true });
    }
  },
  180_000,
);

test("fio --ioengine=nbd random read/write with verify=crc32c, 4 jobs", async () => {
  // fio's nbd engine opens one connection per job. Four jobs on ONE export would get one
  // writable connection and three read-only ones (exclusive attach), and the read-only jobs
  // fail with EPERM. So: four VDIs, one job each, spread over the three sheep.
  const runtime = LONG ? 300 : 10;
  const names = ["fio0", "fio1", "fio2", "fio3"];
  for (const n of names) await vdiCreate(n, 256 * MiB);
  const jobs: string[] = [];
  names.forEach((n, i) => jobs.push(`--name=${n}`, `--uri=${uri(i % 3, n)}`));
  const r = await run("fio", [
    "--ioengine=nbd",
    "--rw=randrw",
    "--bs=4k",
    "--iodepth=8",
    "--size=64m",
    "--verify=crc32c",
    // Verify written blocks while the job runs (a time-based job may never reach the final
    // verify phase) and make verify failures fatal.
    "--verify_backlog=256",
    "--verify_fatal=1",
    "--verify_state_save=0",
    `--runtime=${runtime}`,
    "--time_based",
    "--output-format=json",
    ...jobs,
  ], (runtime + 120) * 1000);
  expect(r.stderr).not.toMatch(/verify|bad magic|crc32c|error/i);
  expect(r.code).toBe(0);
  const out = json(r.stdout);
  expect(out.jobs.length).toBe(4);
  let total = 0;
  for (const job of out.jobs) {
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBeGreaterThan(0);
    // Random reads plus the verify reads of what was written.
    expect(job.read.io_bytes).toBeGreaterThan(job.write.io_bytes * 1.2);
    total += job.read.total_ios + job.write.total_ios;
  }
  console.log(`[nbd-sheep] fio 4 jobs x ${runtime} s: ${(total / runtime).toFixed(0)} IOPS total`);
  await c.waitFor(async () => (await lockedVdis()).length === 0, 10_000, "no locks after fio");
}, (LONG ? 300 : 10) * 1000 + 180_000);

test("TRIM and WRITE_ZEROES free whole objects", async () => {
  await vdiCreate("trim", 64 * MiB);
  await qio(0, "trim", [`write -P 7 0 ${24 * MiB}`]); // objects 0..5
  const { vid, used } = await vdiRow("trim");
  expect(used).toBe(24 * MiB);
  for (const i of [0, 1, 2]) expect(dataObjects(i, vid)).toEqual([0, 1, 2, 3, 4, 5]);

  await qio(1, "trim", [
    `discard 0 ${8 * MiB}`, // TRIM: objects 0, 1
    `write -z -u ${8 * MiB} ${8 * MiB}`, // WRITE_ZEROES that may unmap: objects 2, 3
    // qemu sends NO_HOLE for a plain `write -z`: zeros, but the object must stay allocated.
    `write -z ${16 * MiB} ${4 * MiB}`,
  ]);
  await c.waitFor(
    async () => (await vdiRow("trim")).used === 8 * MiB,
    10_000,
    "Used of trim to drop to 8 MiB",
  );
  await c.waitFor(
    async () => [0, 1, 2].every((i) => JSON.stringify(dataObjects(i, vid)) === "[4,5]"),
    30_000,
    "freed object files to disappear from every store",
  );
  await qio(2, "trim", [`read -P 0 0 ${20 * MiB}`, `read -P 7 ${20 * MiB} ${4 * MiB}`]);
  const map = ok(await run("nbdinfo", ["--map", "--json", uri(2, "trim")]), "nbdinfo --map");
  expect(json(map.stdout)).toEqual([
    { offset: 0, length: 16 * MiB, type: 3, description: "hole,zero" },
    { offset: 16 * MiB, length: 8 * MiB, type: 0, description: "data" },
    { offset: 24 * MiB, length: 40 * MiB, type: 3, description: "hole,zero" },
  ]);
  // Freed objects can be written again.
  await qio(0, "trim", [`write -P 9 ${4 * MiB - 512} 1024`, `read -P 9 ${4 * MiB - 512} 1024`]);
  expect((await vdiRow("trim")).used).toBe(16 * MiB);
}, 90_000);

test(
  "killing a client mid-write: acknowledged data intact, VDI readable, lock released",
  async () => {
    const size = 512 * MiB;
    await vdiCreate("crash", size);
    // Pattern A, fully acknowledged (qemu-io exited 0).
    await qio(0, "crash", [
      `write -P 0xaa 0 ${8 * MiB}`,
      `write -P 0xaa ${size - 8 * MiB} ${8 * MiB}`,
    ]);
    expect((await vdiRow("crash")).used).toBe(16 * MiB);

    // A second writer on other ranges, SIGKILLed once at least 16 MiB of it has landed.
    const w = start("qemu-io", [
      "-f",
      "raw",
      "-c",
      `write -P 0xbb ${16 * MiB} ${480 * MiB}`,
      uri(1, "crash"),
    ]);
    w.proc.stdin!.end();
    let exited = false;
    w.done.then(() => (exited = true));
    await c.waitFor(
      async () => exited || (await vdiRow("crash")).used >= 32 * MiB,
      60_000,
      "second writer to make progress",
    );
    w.proc.kill("SIGKILL");
    const wr = await w.done;
    expect(wr.signal).toBe("SIGKILL"); // it really was killed mid-write

    await c.waitFor(
      async () => !(await lockedVdis()).includes("crash"),
      15_000,
      "lock of crash released after the kill",
    );
    // A new writer attaches (through a different sheep), and pattern A is intact.
    await qio(2, "crash", [
      `read -P 0xaa 0 ${8 * MiB}`,
      `read -P 0xaa ${size - 8 * MiB} ${8 * MiB}`,
      `write -P 0xcc ${8 * MiB} ${4 * MiB}`,
      `read -P 0xcc ${8 * MiB} ${4 * MiB}`,
    ]);
    await c.waitFor(
      async () => !(await lockedVdis()).includes("crash"),
      10_000,
      "lock of crash released",
    );

    // The whole VDI reads; the killed writer's range holds its pattern or zeros, nothing else.
    const out = path.join(tmp, "crash.raw");
    ok(await run("nbdcopy", [uri(0, "crash"), out], 120_000), "nbdcopy out of crash");
    const img = fs.readFileSync(out);
    fs.rmSync(out, { force: true });
    expect(img.length).toBe(size);
    expect(img.subarray(0, 8 * MiB).equals(Buffer.alloc(8 * MiB, 0xaa))).toBe(true);
    expect(img.subarray(8 * MiB, 12 * MiB).equals(Buffer.alloc(4 * MiB, 0xcc))).toBe(true);
    expect(img.subarray(12 * MiB, 16 * MiB).equals(Buffer.alloc(4 * MiB))).toBe(true);
    expect(firstOther(img, 16 * MiB, 496 * MiB, [0, 0xbb])).toBe(-1);
    expect(img.subarray(16 * MiB, 496 * MiB).indexOf(0xbb)).toBeGreaterThanOrEqual(0);
    expect(img.subarray(496 * MiB, size - 8 * MiB).equals(Buffer.alloc(8 * MiB))).toBe(true);
    expect(img.subarray(size - 8 * MiB).equals(Buffer.alloc(8 * MiB, 0xaa))).toBe(true);
    await c.waitFor(async () => (await lockedVdis()).length === 0, 10_000, "no locks left");
  },
  180_000,
);

test("two writers on one VDI: the second is refused; snapshot exports are read-only", async () => {
  await vdiCreate("two", 64 * MiB);
  const holder = start("qemu-io", ["-f", "raw", uri(0, "two")]);
  let held = "";
  holder.proc.stdout!.on("data", (d) => (held += d));
  try {
    holder.proc.stdin!.write(`write -P 0x61 0 ${64 * KiB}\n`);
    await c.waitFor(async () => held.includes("wrote 65536/65536"), 15_000, "holder's write");
    expect(await lockedVdis(1)).toContain("two");
    const lockOut = await c.dogOk(["vdi", "lock", "list"], { node: 2 });
    expect(lockOut).toMatch(new RegExp(`two \\| .*port:${c.nodes[0].port}`));

    // A second writer, through the same sheep or another one, cannot open it for writing.
    for (const node of [0, 2]) {
      const r = await run("qemu-io", ["-f", "raw", "-c", "write -P 0x62 0 4096", uri(node, "two")]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/Permission denied|read-only/i);
      const cv = await run("qemu-img", [
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        "/dev/null",
        uri(node, "two"),
      ]);
      expect(cv.code).not.toBe(0);
    }
    // It is served read-only to everyone else, who can still read it.
    const info =
      json(ok(await run("nbdinfo", ["--json", uri(1, "two")]), "nbdinfo").stdout).exports[0];
    expect(info.is_read_only).toBe(true);
    expect(info.description).toMatch(/locked/);
    await qio(1, "two", [`read -P 0x61 0 ${64 * KiB}`], { readOnly: true });
    // Even a client that ignores READ_ONLY gets EPERM.
    const raw = await RawClient.open(c.nodes[2].nbdPort!, "two");
    try {
      expect(raw.txFlags & TxFlag.READ_ONLY).toBeTruthy();
      expect((await raw.request(Cmd.WRITE, 0, 4096, 0, Buffer.alloc(4096, 0x63))).error).toBe(1);
      expect((await raw.request(Cmd.TRIM, 0, 4 * MiB)).error).toBe(1);
      expect((await raw.request(Cmd.WRITE_ZEROES, 0, 4 * MiB)).error).toBe(1);
    } finally {
      await raw.disconnect();
    }
    holder.proc.stdin!.end("quit\n");
    const hr = await holder.done;
    expect(hr.code).toBe(0);
  } finally {
    holder.proc.kill("SIGKILL");
  }
  await c.waitFor(
    async () => !(await lockedVdis()).includes("two"),
    10_000,
    "holder's lock released",
  );
  await qio(2, "two", [`read -P 0x61 0 ${64 * KiB}`, `write -P 0x64 ${64 * KiB} 4096`]);

  // Snapshot: its export serves the data at snapshot time and cannot be written.
  await c.dogOk(["vdi", "snapshot", "-s", "snap1", "two"]);
  await qio(0, "two", [`write -P 0x65 0 ${64 * KiB}`]); // the working VDI moves on
  const list = json(
    ok(
      await run("nbdinfo", ["--list", "--json", `nbd://127.0.0.1:${c.nodes[1].nbdPort}`]),
      "nbdinfo --list",
    ).stdout,
  );
  const snapEntry = list.exports.find((e: Record<string, unknown>) =>
    e["export-name"] === "two@snap1"
  );
  expect(snapEntry).toBeDefined();
  expect(snapEntry.is_read_only).toBe(true);
  for (const name of ["two@snap1", "two@1"]) {
    await qio(1, name, [`read -P 0x61 0 ${64 * KiB}`, `read -P 0x64 ${64 * KiB} 4096`], {
      readOnly: true,
    });
    const w = await run("qemu-io", ["-f", "raw", "-c", "write -P 0x66 0 4096", uri(2, name)]);
    expect(w.code).not.toBe(0);
    expect(w.stderr).toMatch(/Permission denied|read-only/i);
  }
  const raw = await RawClient.open(c.nodes[0].nbdPort!, "two@snap1");
  try {
    expect(raw.txFlags & TxFlag.READ_ONLY).toBeTruthy();
    expect((await raw.request(Cmd.WRITE, 0, 4096, 0, Buffer.alloc(4096, 0x67))).error).toBe(1);
    expect((await raw.request(Cmd.WRITE_ZEROES, 0, 4 * MiB)).error).toBe(1);
  } finally {
    await raw.disconnect();
  }
  await qio(2, "two@snap1", [`read -P 0x61 0 ${64 * KiB}`], { readOnly: true });
  await qio(2, "two", [`read -P 0x65 0 ${64 * KiB}`, `read -P 0x64 ${64 * KiB} 4096`], {
    readOnly: true,
  });
  // The snapshot export is not a writer: it never took the working VDI's lock.
  await c.waitFor(async () => (await lockedVdis()).length === 0, 10_000, "no locks left");
}, 90_000);

test("any sheep serves any VDI: write through node 0, read through node 2", async () => {
  await vdiCreate("anyn", 64 * MiB);
  await qio(0, "anyn", [
    `write -P 0x5c ${1 * MiB} ${6 * MiB}`,
    `write -P 0x5d ${60 * MiB + 7} 4089`,
  ]);
  const reads = [
    `read -P 0x5c ${1 * MiB} ${6 * MiB}`,
    `read -P 0x5d ${60 * MiB + 7} 4089`,
    `read -P 0 0 ${1 * MiB}`,
  ];
  await qio(2, "anyn", reads, { readOnly: true });
  await qio(1, "anyn", reads);
  const { vid } = await vdiRow("anyn", 2);
  // copies=3 on 3 nodes: every store holds objects 0, 1 and 15.
  for (const i of [0, 1, 2]) expect(dataObjects(i, vid)).toEqual([0, 1, 15]);
}, 60_000);

test("a sheep holding a VDI lock is killed -9: the lock is dropped", async () => {
  await vdiCreate("owned", 64 * MiB);
  const holder = start("qemu-io", ["-f", "raw", uri(1, "owned")]);
  let out = "";
  holder.proc.stdout!.on("data", (d) => (out += d));
  try {
    holder.proc.stdin!.write(`write -P 0x41 0 ${64 * KiB}\n`);
    await c.waitFor(async () => out.includes("wrote 65536/65536"), 15_000, "holder's write");
    const lockOut = await c.dogOk(["vdi", "lock", "list"], { node: 0 });
    expect(lockOut).toMatch(new RegExp(`owned \\| .*port:${c.nodes[1].port}`));
    const refused = await run("qemu-io", [
      "-f",
      "raw",
      "-c",
      "write -P 0x42 0 4096",
      uri(0, "owned"),
    ]);
    expect(refused.code).not.toBe(0);

    const t0 = Date.now();
    await c.kill(1, "SIGKILL");
    await c.waitFor(
      async () => !(await lockedVdis(0)).includes("owned"),
      30_000,
      "lock of the dead sheep dropped",
    );
    console.log(`[nbd-sheep] lock dropped ${Date.now() - t0} ms after kill -9 of its sheep`);
    expect(await lockedVdis(2)).not.toContain("owned");
    // Another sheep's export attaches for writing.
    await qio(2, "owned", [
      `read -P 0x41 0 ${64 * KiB}`,
      `write -P 0x42 0 4096`,
      `read -P 0x42 0 4096`,
    ]);
    await qio(0, "owned", [`write -P 0x43 ${8 * MiB} 4096`, `read -P 0x43 ${8 * MiB} 4096`]);
  } finally {
    holder.proc.kill("SIGKILL");
    await holder.done;
  }
}, 90_000);
