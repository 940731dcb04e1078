// Benchmark helpers: bounded child processes (killed with the bench via the cluster.ts watchdog),
// fio/nbdcopy drivers, reference NBD servers, sheep.log tailing, store scans and the result table.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { Buffer } from "node:buffer";
import {
  freePort,
  portOpen,
  registerPid,
  ROOT,
  sheepCommand,
  storeObjects,
} from "../tests/lib/cluster.ts";

export const MB = 1e6;
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
export const now = () => performance.now();

export function log(msg: string): void {
  const t = new Date().toISOString().slice(11, 19);
  console.log(`[bench ${t}] ${msg}`);
}

// ---------------------------------------------------------------------------------------------
// Processes

export interface RunResult {
  code: number;
  ms: number;
  out: string;
  err: string;
  timedOut: boolean;
}

export interface RunOpts {
  timeoutMs: number;
  /** File to use as stdin (default: none). */
  stdinFile?: string;
  /** File to send stdout to ("/dev/null" is fine); default: captured (keep it small). */
  stdoutFile?: string;
  env?: Record<string, string>;
  /** Called with each chunk of stdout (when captured). */
  onStdout?: (s: string) => void;
  /** Called right after spawn with the child. */
  onSpawn?: (p: ChildProcess) => void;
}

const MAX_CAPTURE = 4 * MiB;

/** Runs argv (no shell), measuring wall time from spawn to exit; SIGKILL after timeoutMs. */
export async function run(argv: string[], o: RunOpts): Promise<RunResult> {
  const fds: number[] = [];
  const open = (f: string, flags: string) => {
    const fd = fs.openSync(f, flags);
    fds.push(fd);
    return fd;
  };
  const stdin = o.stdinFile ? open(o.stdinFile, "r") : "ignore";
  const stdout = o.stdoutFile ? open(o.stdoutFile, "w") : "pipe";
  const t0 = now();
  let proc: ChildProcess;
  try {
    proc = spawn(argv[0], argv.slice(1), {
      cwd: ROOT,
      stdio: [stdin, stdout, "pipe"],
      env: o.env ? { ...process.env, ...o.env } : process.env,
    });
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
  const reg = registerPid(proc);
  o.onSpawn?.(proc);
  let out = "", err = "";
  proc.stdout?.on("data", (b: Buffer) => {
    const s = b.toString();
    if (out.length < MAX_CAPTURE) out += s;
    o.onStdout?.(s);
  });
  proc.stderr?.on("data", (b: Buffer) => {
    if (err.length < MAX_CAPTURE) err += b.toString();
  });
  const outDone = new Promise<void>((
    r,
  ) => (proc.stdout ? proc.stdout.on("close", () => r()) : r()));
  const errDone = new Promise<void>((
    r,
  ) => (proc.stderr ? proc.stderr.on("close", () => r()) : r()));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      proc.kill("SIGKILL");
    } catch { /* gone */ }
  }, o.timeoutMs);
  const r = await reg.exited;
  const ms = now() - t0;
  clearTimeout(timer);
  await Promise.race([Promise.all([outDone, errDone]), sleep(2000)]);
  return { code: r.code ?? (r.signal ? 128 : -1), ms, out, err, timedOut };
}

export function fail(what: string, r: RunResult): Error {
  return new Error(
    `${what} failed (code ${r.code}${r.timedOut ? ", timed out" : ""}): ${
      (r.err || r.out).trim().slice(-1500)
    }`,
  );
}

/** `<product> dog <args> -a 127.0.0.1 -p <port>`. */
export function dogArgv(port: number, args: string[]): string[] {
  return [...sheepCommand(), "dog", ...args, "-a", "127.0.0.1", "-p", String(port)];
}

/** CPU seconds (user + system) used so far by the given pids (0 for pids that are gone). */
export function cpuSeconds(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const st = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
      ticks += Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
    } catch { /* exited */ }
  }
  return ticks / 100; // CLK_TCK is 100 on Linux
}

export function toolVersion(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 10_000 });
  return ((r.stdout || r.stderr || "").split("\n")[0] ?? "").trim() || "unknown";
}

export function haveTool(t: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${t}`], { stdio: "ignore" }).status === 0;
}

// ---------------------------------------------------------------------------------------------
// Reference NBD servers

export interface RefServer {
  name: string;
  uri: string;
  pid: number;
  stop(): Promise<void>;
}

/** qemu-nbd (cache "writeback" as in real-components.md, or "writethrough") or nbdkit file. */
export async function startRefServer(
  kind: "qemu-nbd" | "qemu-nbd-writethrough" | "nbdkit",
  file: string,
  logDir: string,
): Promise<RefServer> {
  const port = await freePort();
  let argv: string[];
  if (kind === "nbdkit") {
    argv = [
      "nbdkit",
      "-f",
      "-i",
      "127.0.0.1",
      "-p",
      String(port),
      "-e",
      "disk",
      "--threads=16",
      "file",
      file,
    ];
  } else {
    argv = [
      "qemu-nbd",
      "-f",
      "raw",
      "-b",
      "127.0.0.1",
      "-p",
      String(port),
      "-x",
      "disk",
      "--shared=16",
      "-t",
    ];
    if (kind === "qemu-nbd-writethrough") argv.push("--cache=writethrough");
    argv.push(file);
  }
  const logFile = path.join(logDir, `${kind}.log`);
  const fd = fs.openSync(logFile, "a");
  let proc: ChildProcess;
  try {
    proc = spawn(argv[0], argv.slice(1), { stdio: ["ignore", fd, fd] });
  } finally {
    fs.closeSync(fd);
  }
  const reg = registerPid(proc);
  let done = false;
  void reg.exited.then(() => (done = true));
  const stop = async () => {
    if (!done) {
      proc.kill("SIGTERM");
      const r = await Promise.race([reg.exited, sleep(5000).then(() => null)]);
      if (r === null) {
        proc.kill("SIGKILL");
        await reg.exited;
      }
    }
  };
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (done) {
      throw new Error(
        `${kind} exited during startup: ${fs.readFileSync(logFile, "utf8").slice(-1000)}`,
      );
    }
    if (await portOpen(port, 300)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${kind} not accepting on ${port} after 15 s`);
    }
    await sleep(30);
  }
  return { name: kind, uri: `nbd://127.0.0.1:${port}/disk`, pid: proc.pid!, stop };
}

// ---------------------------------------------------------------------------------------------
// fio and nbdcopy

export interface FioResult {
  iops: number;
  mbps: number;
  p50us: number;
  p99us: number;
}

/** fio's nbd engine; fio prints a "connected" line before its JSON. */
export async function fio(
  uri: string,
  rw: "randread" | "randwrite",
  qd: number,
  runtimeS: number,
  size: number,
): Promise<FioResult> {
  const argv = [
    "fio",
    "--name=bench",
    "--ioengine=nbd",
    `--uri=${uri}`,
    `--rw=${rw}`,
    "--bs=4k",
    `--iodepth=${qd}`,
    `--size=${size}`,
    `--runtime=${runtimeS}`,
    "--ramp_time=1",
    "--time_based",
    "--randrepeat=0",
    "--output-format=json",
  ];
  const r = await run(argv, { timeoutMs: (runtimeS + 60) * 1000 });
  const i = r.out.indexOf("{");
  if (r.code !== 0 || i < 0) throw fail(`fio ${rw} QD${qd} on ${uri}`, r);
  const j = JSON.parse(r.out.slice(i));
  const job = j.jobs[0];
  if (job.error) throw new Error(`fio ${rw} QD${qd}: job error ${job.error}`);
  const x = job[rw === "randread" ? "read" : "write"];
  const pct = x.clat_ns?.percentile ?? {};
  return {
    iops: x.iops,
    mbps: (x.bw_bytes ?? x.bw * 1024) / MB,
    p50us: (pct["50.000000"] ?? NaN) / 1000,
    p99us: (pct["99.000000"] ?? NaN) / 1000,
  };
}

/** nbdcopy SRC DST; returns wall ms (throws on failure). */
export async function nbdcopy(
  src: string,
  dst: string,
  extra: string[],
  timeoutMs: number,
): Promise<RunResult> {
  return await run(["nbdcopy", ...extra, src, dst], { timeoutMs });
}

// ---------------------------------------------------------------------------------------------
// Log tailing with millisecond arrival times (sheep.log timestamps only have 1 s resolution).

export class LogTail {
  private offset: number;
  private partial = "";
  constructor(readonly file: string) {
    try {
      this.offset = fs.statSync(file).size;
    } catch {
      this.offset = 0;
    }
  }

  private readNew(): string[] {
    let fd: number;
    try {
      fd = fs.openSync(this.file, "r");
    } catch {
      return [];
    }
    try {
      const size = fs.fstatSync(fd).size;
      if (size < this.offset) this.offset = 0;
      if (size === this.offset) return [];
      const buf = Buffer.alloc(size - this.offset);
      const n = fs.readSync(fd, buf, 0, buf.length, this.offset);
      this.offset += n;
      const text = this.partial + buf.subarray(0, n).toString();
      const lines = text.split("\n");
      this.partial = lines.pop() ?? "";
      return lines;
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Resolves with the performance.now() at which a line matching re was first seen, or null. */
  async waitFor(
    re: RegExp,
    timeoutMs: number,
    pollMs = 5,
  ): Promise<{ t: number; line: string } | null> {
    const deadline = now() + timeoutMs;
    for (;;) {
      for (const line of this.readNew()) {
        if (re.test(line)) return { t: now(), line };
      }
      if (now() > deadline) return null;
      await sleep(pollMs);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Store scans (object files as tests/e2e/recovery.test.ts sees them; .stale and *.tmp skipped)

export function objectSizes(storeDir: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const [name, file] of storeObjects(storeDir)) {
    try {
      out.set(name, fs.statSync(file).size);
    } catch { /* raced with a move */ }
  }
  return out;
}

export function staleCount(storeDir: string): number {
  try {
    return fs.readdirSync(path.join(storeDir, "obj", ".stale")).length;
  } catch {
    return 0;
  }
}

/** Replica count per object name over the given store dirs. */
export function replicaCounts(dirs: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const d of dirs) {
    for (const name of objectSizes(d).keys()) m.set(name, (m.get(name) ?? 0) + 1);
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// Statistics and the result table

export function quantile(xs: number[], q: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const idx = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[idx];
}

export const median = (xs: number[]) => quantile(xs, 0.5);

export interface Row {
  section: string;
  metric: string;
  unit: string;
  ours: number | null;
  refName: string;
  ref: number | null;
  better: "higher" | "lower";
  /** Server CPU seconds during the measurement (ours, reference), when measured. */
  cpu?: [number, number];
  note?: string;
}

export class Results {
  rows: Row[] = [];
  notes: string[] = [];

  add(r: Row): void {
    this.rows.push(r);
    const ratio = r.ours !== null && r.ref !== null && r.ref !== 0 ? r.ours / r.ref : null;
    log(
      `${r.section} | ${r.metric}: ${fmt(r.ours)} ${r.unit} vs ${r.refName} ${
        fmt(r.ref)
      } ${r.unit}` +
        (ratio !== null ? ` (x${ratio.toFixed(3)})` : "") + (r.note ? ` [${r.note}]` : ""),
    );
  }

  note(s: string): void {
    this.notes.push(s);
    log(`NOTE: ${s}`);
  }

  table(): string {
    const lines = [
      "| section | metric | sheepdog | reference | ref value | ours/ref | better | server CPU s (ours/ref) |",
      "|---|---|---:|---|---:|---:|---|---:|",
    ];
    for (const r of this.rows) {
      const ratio = r.ours !== null && r.ref !== null && r.ref !== 0 && isFinite(r.ours / r.ref)
        ? `${(r.ours / r.ref).toFixed(r.ours / r.ref >= 10 ? 1 : 3)}`
        : "n/a";
      const cpu = r.cpu ? `${r.cpu[0].toFixed(1)} / ${r.cpu[1].toFixed(1)}` : "";
      const metric = r.note ? `${r.metric} (${r.note})` : r.metric;
      lines.push(
        `| ${r.section} | ${metric} | ${fmt(r.ours)} ${r.unit} | ${r.refName} | ${
          fmt(r.ref)
        } ${r.unit} | ${ratio} | ${r.better === "higher" ? "higher ↑" : "lower ↓"} | ${cpu} |`,
      );
    }
    return lines.join("\n");
  }
}

export function fmt(x: number | null): string {
  if (x === null || !isFinite(x)) return "n/a";
  if (Math.abs(x) >= 1000) return x.toFixed(0);
  if (Math.abs(x) >= 100) return x.toFixed(1);
  if (Math.abs(x) >= 10) return x.toFixed(2);
  return x.toFixed(3);
}
