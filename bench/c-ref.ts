// `make bench` section `c`: this sheepdog against C Sheepdog 1.0 (../shared/reference/c-sheepdog,
// or SHEEPDOG_C_REF=<dir with sbin/sheep and bin/dog>), the same workloads on the same disk, in
// alternating runs (ours, C, ours, C, ...) so drift in the machine's load hits both alike. Every
// row is ours/C. The C local driver uses fixed files under /tmp, so one C cluster runs at a time.
import * as fs from "node:fs";
import * as path from "node:path";
import { type ChildProcess, spawn } from "node:child_process";
import { freePort, ROOT, sheepCommand, TestCluster } from "../tests/lib/cluster.ts";
import { cpuSeconds, fail, log, MB, median, MiB, type Results, run, sleep } from "./lib.ts";

export interface CRefOptions {
  results: Results;
  work: string;
  /** Random data to write (at least `size` bytes). */
  src: string;
  size: number;
  /** Alternating runs per workload (the median is reported). */
  iters: number;
  /** VDIs created and deleted one dog call each. */
  creates: number;
  full: boolean;
}

/** The C binaries, or null (the section is skipped with a note). */
export function cRefDir(): string | null {
  const dir = process.env.SHEEPDOG_C_REF ?? path.resolve(ROOT, "../shared/reference/c-sheepdog");
  const ok = fs.existsSync(path.join(dir, "sbin/sheep")) &&
    fs.existsSync(path.join(dir, "bin/dog"));
  return ok ? dir : null;
}

/** One running cluster, ours or C, as the workloads see it. */
interface Bench {
  readonly kind: "ours" | "C";
  readonly port: number;
  /** argv of this implementation's dog against node `i` (default 0). */
  dog(args: string[], node?: number): string[];
  sheepPids(): number[];
  kill(i: number): Promise<void>;
  restart(i: number): Promise<void>;
  stop(): Promise<void>;
}

class OursBench implements Bench {
  readonly kind = "ours" as const;
  private constructor(private readonly c: TestCluster) {}
  static async start(n: number, copies: number): Promise<OursBench> {
    return new OursBench(await TestCluster.start(n, { format: { copies } }));
  }
  get port(): number {
    return this.c.nodes[0].port;
  }
  dog(args: string[], node = 0): string[] {
    return [
      ...sheepCommand(),
      "dog",
      ...args,
      "-a",
      "127.0.0.1",
      "-p",
      String(this.c.nodes[node].port),
    ];
  }
  sheepPids(): number[] {
    return this.c.nodes.filter((n) => n.proc).map((n) => n.proc!.pid!);
  }
  kill(i: number): Promise<void> {
    return this.c.kill(i);
  }
  restart(i: number): Promise<void> {
    return this.c.startNode(i);
  }
  stop(): Promise<void> {
    return this.c.stop();
  }
}

class CBench implements Bench {
  readonly kind = "C" as const;
  private procs: Array<ChildProcess | null> = [];
  private constructor(
    private readonly bin: string,
    private readonly dir: string,
    private readonly ports: number[],
  ) {}

  static async start(bin: string, work: string, n: number, copies: number): Promise<CBench> {
    // The local driver's shared files: a previous run's leftovers would make a ghost cluster.
    fs.rmSync("/tmp/sheepdog_shm", { force: true });
    fs.rmSync("/tmp/sheepdog_locks", { recursive: true, force: true });
    const dir = fs.mkdtempSync(path.join(work, "c-"));
    const ports: number[] = [];
    for (let i = 0; i < n; i++) ports.push(await freePort());
    const b = new CBench(bin, dir, ports);
    for (let i = 0; i < n; i++) await b.restart(i);
    const f = await run(b.dog(["cluster", "format", "--copies", String(copies)]), {
      timeoutMs: 60_000,
    });
    if (f.code !== 0) throw fail("C dog cluster format", f);
    return b;
  }
  get port(): number {
    return this.ports[0];
  }
  dog(args: string[], node = 0): string[] {
    return [
      path.join(this.bin, "bin/dog"),
      ...args,
      "-a",
      "127.0.0.1",
      "-p",
      String(this.ports[node]),
    ];
  }
  sheepPids(): number[] {
    return this.procs.filter((p) => p && p.exitCode === null).map((p) => p!.pid!);
  }
  async kill(i: number): Promise<void> {
    const p = this.procs[i];
    if (!p || p.exitCode !== null) return;
    const gone = new Promise<void>((r) => p.once("exit", () => r()));
    p.kill("SIGKILL");
    await gone;
    this.procs[i] = null;
  }
  async restart(i: number): Promise<void> {
    const store = path.join(this.dir, String(i));
    fs.mkdirSync(store, { recursive: true });
    const p = spawn(path.join(this.bin, "sbin/sheep"), [
      "-f",
      "-c",
      "local",
      "-z",
      String(i),
      "-p",
      String(this.ports[i]),
      "-y",
      "127.0.0.1",
      "-b",
      "127.0.0.1",
      store,
    ], { stdio: ["ignore", "ignore", "pipe"] });
    // Its stderr: a missing runtime library (exit 127) shows only there, and stop() removes the
    // store with its sheep.log.
    let stderr = "";
    p.stderr!.on("data", (d) => (stderr = (stderr + d).slice(-2000)));
    this.procs[i] = p;
    // Up when it answers (before format it answers "Waiting for cluster to be formatted").
    for (let t = 0; t < 200; t++) {
      if (p.exitCode !== null) {
        const hint = p.exitCode === 127
          ? " (a runtime library missing? the C reference's README lists them; make deps installs them)"
          : "";
        throw new Error(`C sheep ${i} exited (${p.exitCode})${hint}: ${stderr.trim()}`);
      }
      const r = await run(this.dog(["node", "list"], i), { timeoutMs: 5000 });
      if (r.code === 0 || /format|Waiting/i.test(r.out + r.err)) return;
      await sleep(100);
    }
    throw new Error(`C sheep ${i} did not come up; see ${store}/sheep.log`);
  }
  async stop(): Promise<void> {
    for (let i = 0; i < this.procs.length; i++) await this.kill(i);
    fs.rmSync(this.dir, { recursive: true, force: true });
    fs.rmSync("/tmp/sheepdog_shm", { force: true });
    fs.rmSync("/tmp/sheepdog_locks", { recursive: true, force: true });
  }
}

/** Runs argv under bash's `time`: wall ms and the CPU seconds of the command itself. */
async function timed(
  argv: string[],
  o: { stdinFile?: string; stdoutFile?: string; timeoutMs?: number },
): Promise<{ ms: number; cpu: number }> {
  const quoted = argv.map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
  const redir = (o.stdinFile ? ` < '${o.stdinFile}'` : "") +
    (o.stdoutFile ? ` > '${o.stdoutFile}'` : "");
  const r = await run(["bash", "-c", `TIMEFORMAT='CPU %U %S'; time ${quoted}${redir}`], {
    timeoutMs: o.timeoutMs ?? 900_000,
  });
  if (r.code !== 0) throw fail(argv.slice(0, 4).join(" "), r);
  const m = /CPU ([\d.]+) ([\d.]+)\s*$/.exec(r.err);
  return { ms: r.ms, cpu: m ? Number(m[1]) + Number(m[2]) : NaN };
}

/** Resident set size of the largest sheep, in MB. */
function maxRssMB(pids: number[]): number {
  let max = 0;
  for (const pid of pids) {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
      if (m) max = Math.max(max, Number(m[1]) * 1024 / MB);
    } catch { /* exited */ }
  }
  return max;
}

function dropCaches(): boolean {
  try {
    fs.writeFileSync("/proc/sys/vm/drop_caches", "3");
    return true;
  } catch {
    return false;
  }
}

/** Waits until node `node` lists `count` members (the membership change has happened). */
async function waitMembers(b: Bench, node: number, count: number): Promise<void> {
  for (let t = 0; t < 6000; t++) {
    const r = await run(b.dog(["node", "list"], node), { timeoutMs: 10_000 });
    const rows = r.out.trim().split("\n").filter((l) => /^\s*\d+\s/.test(l));
    if (r.code === 0 && rows.length === count) return;
    await sleep(20);
  }
  throw new Error(`${b.kind}: node list never showed ${count} members`);
}

/** Waits until no node reports recovery work (`dog node recovery` lists none). */
async function recovered(b: Bench, node: number, timeoutMs = 600_000): Promise<void> {
  const t0 = performance.now();
  while (performance.now() - t0 < timeoutMs) {
    const r = await run(b.dog(["node", "recovery"], node), { timeoutMs: 10_000 });
    // Both print a header line and one row per node still recovering.
    const rows = r.out.trim().split("\n").filter((l) => /^\s*\d+\s/.test(l));
    if (r.code === 0 && rows.length === 0) return;
    await sleep(50);
  }
  throw new Error(`${b.kind}: recovery did not finish in ${timeoutMs / 1000} s`);
}

type Figures = Record<string, number[]>;
const push = (f: Figures, k: string, v: number) => (f[k] ??= []).push(v);

/** One round of the appliance workloads on a fresh 3-node cluster. */
async function applianceRound(b: Bench, o: CRefOptions, f: Figures, copies: number): Promise<void> {
  const size = o.size;
  const pre = `c${copies} `;
  await sleep(1000);
  push(f, pre + "rss idle", maxRssMB(b.sheepPids()));
  const create = await run(b.dog(["vdi", "create", "v", String(size)]), { timeoutMs: 60_000 });
  if (create.code !== 0) throw fail(`${b.kind} vdi create`, create);
  for (const phase of ["fresh", "overwrite"]) {
    const cpu0 = cpuSeconds(b.sheepPids());
    const w = await timed(b.dog(["vdi", "write", "v", "0", String(size)]), { stdinFile: o.src });
    push(f, pre + `write ${phase}`, size / MB / (w.ms / 1000));
    push(f, pre + `write ${phase} sheep cpu`, cpuSeconds(b.sheepPids()) - cpu0);
    push(f, pre + `write ${phase} dog cpu/GiB`, w.cpu / (size / 2 ** 30));
  }
  push(f, pre + "rss loaded", maxRssMB(b.sheepPids()));
  for (const phase of ["warm", "cold"]) {
    if (phase === "cold" && !dropCaches()) continue;
    const cpu0 = cpuSeconds(b.sheepPids());
    const r = await timed(b.dog(["vdi", "read", "v", "0", String(size)]), {
      stdoutFile: "/dev/null",
    });
    push(f, pre + `read ${phase}`, size / MB / (r.ms / 1000));
    push(f, pre + `read ${phase} sheep cpu`, cpuSeconds(b.sheepPids()) - cpu0);
    push(f, pre + `read ${phase} dog cpu/GiB`, r.cpu / (size / 2 ** 30));
  }
}

/** N creates then N deletes, one dog process each (what operators' scripts do). */
async function createDeleteRound(b: Bench, o: CRefOptions, f: Figures): Promise<void> {
  // b.dog([]) is [...command, "-a", addr, "-p", port]: the subcommand goes before the options.
  const dog = b.dog([]).map((a) => `'${a}'`);
  const bin = dog.slice(0, -4).join(" "), tail = dog.slice(-4).join(" ");
  const script = (verb: string) =>
    `for i in $(seq ${o.creates}); do ${bin} vdi ${verb} ${tail} >/dev/null || exit 1; done`;
  for (const [verb, key] of [["create v$i 4M", "create"], ["delete v$i", "delete"]]) {
    const r = await run(["bash", "-c", script(verb)], { timeoutMs: 1_800_000 });
    if (r.code !== 0) throw fail(`${b.kind} vdi ${key} loop`, r);
    push(f, `vdi ${key}`, o.creates / (r.ms / 1000));
  }
}

/** 4 nodes copies=3: kill -9 one after a write, time the recovery; restart it, time the rebalance. */
async function recoveryRound(b: Bench, o: CRefOptions, f: Figures): Promise<void> {
  const c = await run(b.dog(["vdi", "create", "r", String(o.size)]), { timeoutMs: 60_000 });
  if (c.code !== 0) throw fail(`${b.kind} vdi create`, c);
  await timed(b.dog(["vdi", "write", "r", "0", String(o.size)]), { stdinFile: o.src });
  let t0 = performance.now();
  await b.kill(3);
  await waitMembers(b, 0, 3);
  await recovered(b, 0);
  push(f, "recovery after kill", (performance.now() - t0) / 1000);
  t0 = performance.now();
  await b.restart(3);
  await waitMembers(b, 0, 4);
  await recovered(b, 0);
  push(f, "rebalance after join", (performance.now() - t0) / 1000);
}

async function alternate(
  o: CRefOptions,
  bin: string,
  n: number,
  copies: number,
  round: (b: Bench, f: Figures) => Promise<void>,
): Promise<{ ours: Figures; c: Figures }> {
  const ours: Figures = {}, c: Figures = {};
  for (let i = 0; i < o.iters; i++) {
    for (const kind of i % 2 === 0 ? ["ours", "C"] : ["C", "ours"]) {
      const b: Bench = kind === "ours"
        ? await OursBench.start(n, copies)
        : await CBench.start(bin, o.work, n, copies);
      try {
        await round(b, kind === "ours" ? ours : c);
      } finally {
        await b.stop();
      }
    }
  }
  return { ours, c };
}

export async function cRefBench(o: CRefOptions): Promise<void> {
  const bin = cRefDir();
  if (!bin) {
    o.results.note("c section skipped: no C Sheepdog binaries (set SHEEPDOG_C_REF=<dir>)");
    return;
  }
  const refName = "C Sheepdog 1.0";
  // BENCH_C_PARTS=c3,c1,c8,create,recovery runs only those parts (default: all).
  const parts = (process.env.BENCH_C_PARTS ?? "").split(",").filter(Boolean);
  const want = (p: string) => parts.length === 0 || parts.includes(p);
  const gib = o.size / MiB;
  const add = (
    sec: string,
    metric: string,
    unit: string,
    r: { ours: Figures; c: Figures },
    key: string,
    better: "higher" | "lower",
    cpuKey?: string,
  ) => {
    const a = r.ours[key], b = r.c[key];
    if (!a?.length || !b?.length) return;
    o.results.add({
      section: sec,
      metric,
      unit,
      ours: median(a),
      refName,
      ref: median(b),
      better,
      cpu: cpuKey && r.ours[cpuKey] && r.c[cpuKey]
        ? [median(r.ours[cpuKey]), median(r.c[cpuKey])]
        : undefined,
      note: o.iters > 1 ? `median of ${o.iters}` : undefined,
    });
  };
  for (const copies of [3, 1]) {
    if (!want(`c${copies}`)) continue;
    log(`c: 3 nodes copies=${copies}, ${o.iters} alternating rounds`);
    const r = await alternate(o, bin, 3, copies, (b, f) => applianceRound(b, o, f, copies));
    const sec = `vs C, 3 nodes copies=${copies}`;
    const p = `c${copies} `;
    for (const ph of ["fresh", "overwrite"]) {
      add(
        sec,
        `dog vdi write ${gib} MiB ${ph}`,
        "MB/s",
        r,
        p + `write ${ph}`,
        "higher",
        p + `write ${ph} sheep cpu`,
      );
    }
    for (const ph of ["warm", "cold"]) {
      add(
        sec,
        `dog vdi read ${gib} MiB ${ph}`,
        "MB/s",
        r,
        p + `read ${ph}`,
        "higher",
        p + `read ${ph} sheep cpu`,
      );
    }
    add(sec, "dog CPU per GiB written (fresh)", "s", r, p + "write fresh dog cpu/GiB", "lower");
    add(sec, "dog CPU per GiB read (warm)", "s", r, p + "read warm dog cpu/GiB", "lower");
    add(sec, "largest sheep RSS, idle", "MB", r, p + "rss idle", "lower");
    add(sec, `largest sheep RSS, after ${gib} MiB written`, "MB", r, p + "rss loaded", "lower");
  }
  if (o.full && want("c8")) {
    log("c: 8 nodes copies=3");
    const r = await alternate(o, bin, 8, 3, (b, f) => applianceRound(b, o, f, 3));
    add(
      "vs C, 8 nodes copies=3",
      `dog vdi write ${gib} MiB fresh`,
      "MB/s",
      r,
      "c3 write fresh",
      "higher",
      "c3 write fresh sheep cpu",
    );
    add(
      "vs C, 8 nodes copies=3",
      `dog vdi read ${gib} MiB warm`,
      "MB/s",
      r,
      "c3 read warm",
      "higher",
      "c3 read warm sheep cpu",
    );
  }
  if (want("create")) {
    log(`c: ${o.creates} x vdi create / delete`);
    const r = await alternate(o, bin, 3, 3, (b, f) => createDeleteRound(b, o, f));
    add(
      "vs C, 3 nodes copies=3",
      `${o.creates} x dog vdi create`,
      "ops/s",
      r,
      "vdi create",
      "higher",
    );
    add(
      "vs C, 3 nodes copies=3",
      `${o.creates} x dog vdi delete`,
      "ops/s",
      r,
      "vdi delete",
      "higher",
    );
  }
  if (want("recovery")) {
    log("c: recovery, 4 nodes copies=3");
    const r = await alternate(o, bin, 4, 3, (b, f) => recoveryRound(b, o, f));
    add(
      "vs C, 4 nodes copies=3",
      `recovery after kill -9 (${gib} MiB)`,
      "s",
      r,
      "recovery after kill",
      "lower",
    );
    add(
      "vs C, 4 nodes copies=3",
      "rebalance after the node rejoins",
      "s",
      r,
      "rebalance after join",
      "lower",
    );
  }
}
