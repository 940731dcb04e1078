// `make bench`: sheepdog against references measured in the same run on the same disk.
//
//   node_modules/.bin/bun bench/run.ts [--full]
//     [--only=appliance,nbd,membership,recovery,metrics,farm,ec,journal,c,scale]
//
// Environment: BENCH_FULL=1 (bigger sizes, longer runs), BENCH_ONLY=<sections>,
// BENCH_FIO_RUNTIME=<s>, BENCH_APPLIANCE_MB / BENCH_NBD_MB / BENCH_REC_MB / BENCH_FARM_MB=<MiB>,
// BENCH_ITERS=<n>, BENCH_C_MB / BENCH_C_ITERS / BENCH_C_CREATES (section c: against C Sheepdog,
// SHEEPDOG_C_REF=<dir>), BENCH_SCALE_MB (section scale: 1 to 8 sheep, 1 to 10,000 VDIs),
// BENCH_THROTTLE="<max> <interval ms>", BENCH_NBDKIT=0 (skip nbdkit, the second NBD reference).
// Every figure is printed beside its reference and as ours/ref; the table also goes to
// bench/last-results.md. Everything runs one at a time on 127.0.0.1, in temp dirs under /tmp.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { spawnSync } from "node:child_process";
import * as net from "node:net";
import { ROOT, sheepCommand, TestCluster } from "../tests/lib/cluster.ts";
import {
  cpuSeconds,
  dogArgv,
  fail,
  fio,
  GiB,
  haveTool,
  log,
  LogTail,
  MB,
  median,
  MiB,
  nbdcopy,
  now,
  objectSizes,
  quantile,
  replicaCounts,
  Results,
  run,
  sleep,
  staleCount,
  startRefServer,
  toolVersion,
} from "./lib.ts";
import { metricsBench } from "./metrics.ts";
import { farmBench } from "./farm.ts";
import { cRefBench } from "./c-ref.ts";
import { codecRates, nbdBench as ecNbdBench } from "./ec.ts";
import { journalBench } from "./journal.ts";
import { scaleBench } from "./scale.ts";

// ---------------------------------------------------------------------------------------------
// Configuration

const argv = process.argv.slice(2);
const env = process.env;
const FULL = env.BENCH_FULL === "1" || argv.includes("--full");
const onlyArg = argv.find((a) => a.startsWith("--only="))?.slice(7) ?? env.BENCH_ONLY ?? "";
const SECTIONS = [
  "appliance",
  "nbd",
  "membership",
  "recovery",
  "metrics",
  "farm",
  "ec",
  "journal",
  "c",
  "scale",
];
const ONLY = onlyArg ? onlyArg.split(",").map((s) => s.trim()).filter(Boolean) : SECTIONS;
for (const s of ONLY) {
  if (!SECTIONS.includes(s)) {
    throw new Error(`unknown section ${s}; sections: ${SECTIONS.join(",")}`);
  }
}

const mib = (name: string, dflt: number) => (env[name] ? Number(env[name]) * MiB : dflt);
const APPLIANCE_SIZE = mib("BENCH_APPLIANCE_MB", 1 * GiB);
const NBD_SIZE = mib("BENCH_NBD_MB", FULL ? 4 * GiB : 1 * GiB);
const REC_SIZE = mib("BENCH_REC_MB", FULL ? 2 * GiB : 1 * GiB);
const LOAD_SIZE = 256 * MiB;
const FIO_RUNTIME = Number(env.BENCH_FIO_RUNTIME ?? (FULL ? 30 : 10));
const ITERS = Number(env.BENCH_ITERS ?? (FULL ? 10 : 5));
const CREATES = FULL ? 100 : 30;
const [THR_MAX, THR_INTERVAL] = (env.BENCH_THROTTLE ?? "1 250").trim().split(/\s+/);
const NBDKIT = env.BENCH_NBDKIT !== "0";
const PRE_KILL_MS = FULL ? 10_000 : 6000;
/** The one random file every section reads; NBD copies all of it, the others a prefix. */
const FARM_SIZE = mib("BENCH_FARM_MB", 1 * GiB);
const FILE_SIZE = Math.max(APPLIANCE_SIZE, NBD_SIZE, REC_SIZE, FARM_SIZE);

const results = new Results();
const loadAtStart = os.loadavg().map((x) => x.toFixed(1)).join(" ");
const started = now();
const work = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-bench-"));
process.on("exit", () => {
  if (env.KEEP !== "1") fs.rmSync(work, { recursive: true, force: true });
});
const SRC = path.join(work, "random.bin");
let diskMBps: number | null = null; // cp + sync of SRC, the disk reference for recovery

function mbps(bytes: number, ms: number): number {
  return bytes / MB / (ms / 1000);
}

async function withCluster<T>(c: TestCluster, f: (c: TestCluster) => Promise<T>): Promise<T> {
  try {
    return await f(c);
  } finally {
    await c.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// 0. the random file and the disk reference

async function makeSource(): Promise<void> {
  log(`writing ${FILE_SIZE / MiB} MiB of random data to ${SRC}`);
  const r = await run(["head", "-c", String(FILE_SIZE), "/dev/urandom"], {
    timeoutMs: 600_000,
    stdoutFile: SRC,
  });
  if (r.code !== 0 || fs.statSync(SRC).size !== FILE_SIZE) throw fail("head /dev/urandom", r);
}

/** cp of SRC on the same disk, then sync of the copy: MB/s. */
async function cpSync(): Promise<number> {
  const dst = path.join(work, "copy.bin");
  fs.rmSync(dst, { force: true });
  const r = await run(["sh", "-c", `cp '${SRC}' '${dst}' && sync '${dst}'`], {
    timeoutMs: 600_000,
  });
  if (r.code !== 0) throw fail("cp + sync", r);
  return mbps(FILE_SIZE, r.ms);
}

async function diskRef(): Promise<number> {
  if (diskMBps === null) diskMBps = await cpSync();
  return diskMBps;
}

// ---------------------------------------------------------------------------------------------
// 1. appliance: dog vdi write / read

async function appliance(): Promise<void> {
  const size = APPLIANCE_SIZE;
  const copy = path.join(work, "copy.bin");
  const w = await cpSync();
  diskMBps = w;
  const rr = await run(["cat", copy], { timeoutMs: 600_000, stdoutFile: "/dev/null" });
  if (rr.code !== 0) throw fail("cat", rr);
  const readRef = mbps(FILE_SIZE, rr.ms);
  fs.rmSync(copy, { force: true });
  log(`reference: cp + sync ${w.toFixed(0)} MB/s, cat (page cache) ${readRef.toFixed(0)} MB/s`);

  for (const copies of [1, 3]) {
    await withCluster(await TestCluster.start(3, { format: { copies } }), async (c) => {
      const port = c.nodes[0].port;
      await c.dogOk(["vdi", "create", "v", String(size)]);
      const pids = c.nodes.map((n) => n.proc!.pid!);
      let cpu0 = cpuSeconds(pids);
      const wr = await run(dogArgv(port, ["vdi", "write", "v", "0", String(size)]), {
        timeoutMs: 900_000,
        stdinFile: SRC,
      });
      if (wr.code !== 0) throw fail(`dog vdi write (copies=${copies})`, wr);
      const wcpu = cpuSeconds(pids) - cpu0;
      cpu0 = cpuSeconds(pids);
      const rd = await run(dogArgv(port, ["vdi", "read", "v", "0", String(size)]), {
        timeoutMs: 900_000,
        stdoutFile: "/dev/null",
      });
      if (rd.code !== 0) throw fail(`dog vdi read (copies=${copies})`, rd);
      const rcpu = cpuSeconds(pids) - cpu0;
      // Untimed: the data read back is the data written.
      const [cmd, ...pre] = sheepCommand();
      const check = await run([
        "sh",
        "-c",
        `'${cmd}' ${
          pre.join(" ")
        } dog vdi read v 0 ${size} -a 127.0.0.1 -p ${port} | cmp -n ${size} - '${SRC}'`,
      ], { timeoutMs: 900_000 });
      if (check.code !== 0) {
        results.note(
          `appliance copies=${copies}: data read back differs from data written: ${check.out}${check.err}`,
        );
      }
      const sec = `appliance 3 nodes copies=${copies}`;
      results.add({
        section: sec,
        metric: `dog vdi write ${size / MiB} MiB`,
        unit: "MB/s",
        ours: mbps(size, wr.ms),
        refName: "cp + sync (same disk)",
        ref: w,
        better: "higher",
        cpu: [wcpu, 0],
      });
      results.add({
        section: sec,
        metric: `dog vdi read ${size / MiB} MiB`,
        unit: "MB/s",
        ours: mbps(size, rd.ms),
        refName: "cat > /dev/null (page cache)",
        ref: readRef,
        better: "higher",
        cpu: [rcpu, 0],
      });
    });
  }
}

// ---------------------------------------------------------------------------------------------
// 2. NBD: nbdcopy and fio against qemu-nbd (and nbdkit) serving a raw file

interface NbdFigures {
  write?: number; // MB/s, first write, one connection
  rewrite?: number; // MB/s, overwrite, one connection
  read?: number;
  fio: Record<string, { iops: number; p50us: number; p99us: number }>;
  cpu: Record<string, number>;
}

type Target = { name: string; uri: string; pids: () => number[] };

/**
 * nbdcopy with its default connections (multi-conn, 4) writing a 64 MiB prefix, three times:
 * our export advertises CAN_MULTI_CONN, so every connection should accept writes.
 */
async function multiConnProbe(t: Target): Promise<void> {
  const small = path.join(work, "probe.bin");
  if (!fs.existsSync(small)) {
    const r = await run(["head", "-c", String(64 * MiB), SRC], {
      timeoutMs: 60_000,
      stdoutFile: small,
    });
    if (r.code !== 0) throw fail("head", r);
  }
  const outcomes: string[] = [];
  for (let i = 0; i < 3; i++) {
    await sleep(1500);
    const r = await nbdcopy(small, t.uri, ["--flush"], 120_000);
    outcomes.push(
      r.code === 0 ? "ok" : `failed (${(r.err || r.out).trim().split("\n")[0].slice(0, 200)})`,
    );
  }
  log(`${t.name}: nbdcopy multi-conn write probe: ${outcomes.join("; ")}`);
  if (outcomes.some((o) => o !== "ok")) {
    results.note(
      `${t.name}: nbdcopy with default connections (multi-conn) writing 64 MiB, 3 tries: ${
        outcomes.join("; ")
      }. The export` +
        ` advertises CAN_MULTI_CONN, but connections opened while another holds the VDI lock are served read-only`,
    );
  }
}

async function nbdSuite(
  t: Target,
  opts: { writesOnly?: boolean; isRef: boolean },
): Promise<NbdFigures> {
  const f: NbdFigures = { fio: {}, cpu: {} };
  const timeoutMs = 30 * 60_000;
  const measure = async <T>(key: string, fn: () => Promise<T>): Promise<T> => {
    const c0 = cpuSeconds(t.pids());
    const v = await fn();
    f.cpu[key] = cpuSeconds(t.pids()) - c0;
    return v;
  };
  // Our exports take the cluster-wide VDI lock on open and drop it asynchronously on close, so a
  // client that connects right after another may be served read-only: retry (and say so).
  const retry = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    for (let a = 1;; a++) {
      try {
        return await fn();
      } catch (e) {
        if (opts.isRef || a >= 3) throw e;
        results.note(
          `${t.name}: ${what} failed (attempt ${a} of 3, retried after 2 s): ${
            (e as Error).message.split("\n")[0].slice(0, 300)
          }`,
        );
        await sleep(2000);
      }
    }
  };
  const copy = async (
    key: "write" | "rewrite" | "read",
    args: string[],
    src: string,
    dst: string,
  ) => {
    await measure(key, async () => {
      const r = await nbdcopy(src, dst, args, timeoutMs);
      if (r.code !== 0) {
        throw fail(`nbdcopy ${args.join(" ")} ${key === "read" ? "from" : "to"} ${t.name}`, r);
      }
      f[key] = mbps(FILE_SIZE, r.ms);
    });
  };
  // Sequential writes over one connection, as a VM's (QEMU uses one); --flush like sync. The
  // first pass allocates (sparse file / fresh VDI), the second overwrites.
  await retry("nbdcopy write", () => copy("write", ["--flush", "--connections=1"], SRC, t.uri));
  await retry("nbdcopy rewrite", () => copy("rewrite", ["--flush", "--connections=1"], SRC, t.uri));
  // Sequential read with nbdcopy's defaults (multi-conn when offered).
  if (!opts.writesOnly) await retry("nbdcopy read", () => copy("read", [], t.uri, "null:"));
  if (!opts.isRef) await multiConnProbe(t);
  const jobs: Array<["randread" | "randwrite", number]> = opts.writesOnly
    ? [["randwrite", 1], ["randwrite", 32]]
    : [["randread", 1], ["randread", 32], ["randwrite", 1], ["randwrite", 32]];
  for (const [rw, qd] of jobs) {
    const key = `${rw}${qd}`;
    f.fio[key] = await retry(
      `fio ${rw} QD${qd}`,
      () => measure(key, () => fio(t.uri, rw, qd, FIO_RUNTIME, FILE_SIZE)),
    );
    log(
      `${t.name} ${rw} QD${qd}: ${f.fio[key].iops.toFixed(0)} IOPS p50 ${
        f.fio[key].p50us.toFixed(0)
      } us p99 ${f.fio[key].p99us.toFixed(0)} us`,
    );
  }
  log(
    `${t.name}: write ${f.write?.toFixed(0)} / rewrite ${f.rewrite?.toFixed(0)} / read ${
      f.read?.toFixed(0)
    } MB/s`,
  );
  return f;
}

async function refSuite(
  kind: "qemu-nbd" | "qemu-nbd-writethrough" | "nbdkit",
  writesOnly: boolean,
): Promise<NbdFigures> {
  const disk = path.join(work, "disk.raw");
  fs.rmSync(disk, { force: true });
  fs.writeFileSync(disk, "");
  fs.truncateSync(disk, FILE_SIZE);
  const srv = await startRefServer(kind, disk, work);
  try {
    return await nbdSuite({ name: kind, uri: srv.uri, pids: () => [srv.pid] }, {
      writesOnly,
      isRef: true,
    });
  } finally {
    await srv.stop();
    fs.rmSync(disk, { force: true });
  }
}

function nbdRows(
  sec: string,
  ours: NbdFigures,
  ref: NbdFigures,
  refName: string,
  writesOnly: boolean,
): void {
  const cpu = (k: string, k2 = k): [number, number] | undefined =>
    ours.cpu[k] !== undefined && ref.cpu[k2] !== undefined ? [ours.cpu[k], ref.cpu[k2]] : undefined;
  const size = `${FILE_SIZE / MiB} MiB`;
  results.add({
    section: sec,
    metric: `nbdcopy seq write ${size}, 1 conn, first write`,
    unit: "MB/s",
    ours: ours.write ?? null,
    refName,
    ref: ref.write ?? null,
    better: "higher",
    cpu: cpu("write"),
  });
  results.add({
    section: sec,
    metric: `nbdcopy seq write ${size}, 1 conn, overwrite`,
    unit: "MB/s",
    ours: ours.rewrite ?? null,
    refName,
    ref: ref.rewrite ?? null,
    better: "higher",
    cpu: cpu("rewrite"),
  });
  if (!writesOnly) {
    results.add({
      section: sec,
      metric: `nbdcopy seq read ${size}`,
      unit: "MB/s",
      ours: ours.read ?? null,
      refName,
      ref: ref.read ?? null,
      better: "higher",
      cpu: cpu("read"),
    });
  }
  const jobs = writesOnly
    ? ["randwrite1", "randwrite32"]
    : ["randread1", "randread32", "randwrite1", "randwrite32"];
  for (const k of jobs) {
    const [, rw, qd] = /^(rand\w+?)(\d+)$/.exec(k)!;
    results.add({
      section: sec,
      metric: `fio 4k ${rw} QD${qd}`,
      unit: "IOPS",
      ours: ours.fio[k]?.iops ?? null,
      refName,
      ref: ref.fio[k]?.iops ?? null,
      better: "higher",
      cpu: cpu(k),
    });
  }
  for (const k of writesOnly ? ["randwrite1"] : ["randread1", "randwrite1"]) {
    const rw = k.replace(/\d+$/, "");
    for (const p of ["p50", "p99"] as const) {
      const field = p === "p50" ? "p50us" : "p99us";
      results.add({
        section: sec,
        metric: `fio 4k ${rw} QD1 ${p} latency`,
        unit: "us",
        ours: ours.fio[k]?.[field] ?? null,
        refName,
        ref: ref.fio[k]?.[field] ?? null,
        better: "lower",
      });
    }
  }
}

async function nbd(): Promise<void> {
  const missing = ["qemu-nbd", "nbdcopy", "fio"].filter((t) => !haveTool(t));
  if (missing.length) {
    results.note(`nbd section skipped: missing ${missing.join(", ")} (make apt-deps)`);
    return;
  }
  log("NBD reference: qemu-nbd (writeback page cache, as in real-components.md)");
  const qemu = await refSuite("qemu-nbd", false);
  log(
    "NBD reference for durable writes: qemu-nbd --cache=writethrough (fdatasync per write, like sheep)",
  );
  const qemuWt = await refSuite("qemu-nbd-writethrough", true);
  let kit: NbdFigures | null = null;
  if (NBDKIT) {
    if (haveTool("nbdkit")) kit = await refSuite("nbdkit", false);
    else results.note("nbdkit not installed: no nbdkit reference");
  }
  for (const [nodes, copies] of [[1, 1], [3, 3]]) {
    const figs = await withCluster(
      await TestCluster.start(nodes, { nbd: true, format: { copies } }),
      async (c) => {
        await c.dogOk(["vdi", "create", "disk", String(FILE_SIZE)]);
        const pids = c.nodes.map((n) => n.proc!.pid!);
        return await nbdSuite({
          name: `sheep ${nodes} node(s) copies=${copies}`,
          uri: `nbd://127.0.0.1:${c.nodes[0].nbdPort}/disk`,
          pids: () => pids,
        }, { isRef: false });
      },
    );
    const sec = `NBD ${nodes} node${nodes > 1 ? "s" : ""} copies=${copies}`;
    nbdRows(sec, figs, qemu, "qemu-nbd", false);
    nbdRows(sec, figs, qemuWt, "qemu-nbd writethrough", true);
    if (kit) nbdRows(sec, figs, kit, "nbdkit file", false);
  }
}

// ---------------------------------------------------------------------------------------------
// 3. membership: failure detection, join, cluster-wide op latency

async function versionStartMs(): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await run([...sheepCommand(), "--version"], { timeoutMs: 30_000 });
    if (r.code !== 0) throw fail("sheepdog --version", r);
    xs.push(r.ms);
  }
  return median(xs);
}

/** A TCP connection to port; `closed` resolves with the time its close is seen (null after 60 s). */
async function closeWatcher(port: number): Promise<{ closed: Promise<number | null> }> {
  const s = net.connect({ host: "127.0.0.1", port });
  s.on("data", () => {});
  await new Promise<void>((resolve, reject) => {
    s.once("connect", () => resolve());
    s.once("error", reject);
  });
  // Wrapped in an object: an async function returning a bare promise would wait for it.
  const closed = new Promise<number | null>((resolve) => {
    const t = setTimeout(() => {
      s.destroy();
      resolve(null);
    }, 60_000);
    const done = () => {
      clearTimeout(t);
      s.destroy();
      resolve(now());
    };
    s.once("end", done);
    s.once("close", done);
    s.once("error", done);
  });
  return { closed };
}

async function nodeListed(port0: number, port: number): Promise<boolean> {
  const r = await run(dogArgv(port0, ["node", "list", "-r"]), { timeoutMs: 15_000 });
  return r.code === 0 && r.out.includes(`127.0.0.1:${port} `);
}

async function membershipFor(
  label: string,
  driver: string | undefined,
  killRef: { name: string; ms: number } | null,
): Promise<void> {
  const startRef = await versionStartMs();
  await withCluster(await TestCluster.start(3, { driver, format: { copies: 3 } }), async (c) => {
    const port0 = c.nodes[0].port;
    for (let i = 0; i < 3; i++) await run(dogArgv(port0, ["node", "list"]), { timeoutMs: 15_000 });
    // Cluster-wide op latency beside a plain round trip; interleaved so both see the same noise.
    const creates: number[] = [], lists: number[] = [];
    for (let k = 0; k < CREATES; k++) {
      const cr = await run(dogArgv(port0, ["vdi", "create", `m${k}`, "16M"]), {
        timeoutMs: 60_000,
      });
      if (cr.code !== 0) throw fail(`dog vdi create (${label})`, cr);
      creates.push(cr.ms);
      const ls = await run(dogArgv(port0, ["node", "list"]), { timeoutMs: 60_000 });
      if (ls.code !== 0) throw fail(`dog node list (${label})`, ls);
      lists.push(ls.ms);
    }
    const victim = 2;
    const survivors = [0, 1];
    const kills: number[] = [], exits: number[] = [], joins: number[] = [], joinLogs: number[] = [];
    for (let it = 0; it < ITERS; it++) {
      const tails = survivors.map((i) => new LogTail(path.join(c.nodes[i].dir, "sheep.log")));
      const { closed } = await closeWatcher(c.nodes[victim].port);
      const t0 = now();
      const seen = tails.map((t) => t.waitFor(/ left; epoch \d+/, 120_000));
      await c.kill(victim, "SIGKILL");
      const tc = await closed;
      if (tc !== null) exits.push(tc - t0);
      const got = await Promise.all(seen);
      if (got.some((g) => g === null)) {
        results.note(
          `${label}: survivors did not log a new epoch within 120 s of kill -9 (iteration ${it})`,
        );
        break;
      }
      kills.push(Math.max(...got.map((g) => g!.t)) - t0);

      const vport = c.nodes[victim].port;
      const jt = new LogTail(path.join(c.nodes[0].dir, "sheep.log"));
      const t1 = now();
      const joinSeen = jt.waitFor(new RegExp(`127\\.0\\.0\\.1:${vport} joined; epoch`), 120_000);
      await c.startNode(victim, { timeoutMs: 120_000 });
      let listed = false;
      for (let k = 0; k < 600 && now() - t1 < 120_000; k++) {
        if (await nodeListed(port0, vport)) {
          listed = true;
          break;
        }
      }
      const tServe = now() - t1;
      const jl = await Promise.race([joinSeen, sleep(1000).then(() => null)]);
      if (!listed) {
        results.note(
          `${label}: restarted sheep not in dog node list within 120 s (iteration ${it})`,
        );
        break;
      }
      joins.push(tServe);
      if (jl) joinLogs.push(jl.t - t1);
      await c.waitRunning(60_000);
      await sleep(300);
    }
    log(
      `${label}: kill->epoch ${kills.map((x) => x.toFixed(0)).join(",")} ms; join ${
        joins.map((x) => x.toFixed(0)).join(",")
      } ms`,
    );
    const sec = `membership (${label})`;
    results.add({
      section: sec,
      metric: `kill -9 → new epoch on all survivors, median of ${kills.length}`,
      unit: "ms",
      ours: kills.length ? median(kills) : null,
      refName: killRef?.name ?? "TCP peer of the killed sheep sees the close",
      ref: killRef?.ms ?? median(exits),
      better: "lower",
    });
    results.add({
      section: sec,
      metric: `start → serving (port + in dog node list), median of ${joins.length}`,
      unit: "ms",
      ours: joins.length ? median(joins) : null,
      refName: "`sheepdog --version` (process start)",
      ref: startRef,
      better: "lower",
      note: joinLogs.length
        ? `join logged by node 0 after ${median(joinLogs).toFixed(0)} ms`
        : undefined,
    });
    results.add({
      section: sec,
      metric: `dog vdi create p50 of ${CREATES}`,
      unit: "ms",
      ours: median(creates),
      refName: "dog node list p50 (1 round trip)",
      ref: median(lists),
      better: "lower",
    });
    results.add({
      section: sec,
      metric: `dog vdi create p99 of ${CREATES}`,
      unit: "ms",
      ours: quantile(creates, 0.99),
      refName: "dog node list p99",
      ref: quantile(lists, 0.99),
      better: "lower",
    });
  });
}

async function membership(): Promise<void> {
  await membershipFor("local", undefined, null);

  // corosync: the driver and tests/lib/corosync.ts exist once others land them.
  const coroDriver = path.join(ROOT, "drivers", "corosync.ts");
  const coroLib = path.join(ROOT, "tests", "lib", "corosync.ts");
  if (!fs.existsSync(coroDriver) || !fs.existsSync(coroLib)) {
    results.note("corosync driver or tests/lib/corosync.ts missing: corosync membership skipped");
  } else {
    try {
      const lib = await import(coroLib);
      const { bridgeCandidates } = await import(coroDriver);
      const bridge = (bridgeCandidates() as string[]).some((p) => fs.existsSync(p));
      if (!lib.corosyncInstalled()) {
        results.note("corosync not installed: corosync membership skipped");
      } else if (!bridge) results.note("drivers/cpg-bridge not built: corosync membership skipped");
      else {
        const cs = await lib.startCorosync();
        try {
          await membershipFor("corosync", `corosync:${lib.uniqueGroup()}`, null);
        } finally {
          await cs.stop();
        }
      }
    } catch (e) {
      results.note(
        `corosync membership failed: ${(e as Error).message.split("\n").slice(0, 6).join(" / ")}`,
      );
    }
  }

  const zkDriver = path.join(ROOT, "drivers", "zookeeper.ts");
  const zkLib = path.join(ROOT, "tests", "lib", "zookeeper.ts");
  if (!fs.existsSync(zkDriver) || !fs.existsSync(zkLib)) {
    results.note(
      "zookeeper driver or tests/lib/zookeeper.ts missing: zookeeper membership skipped",
    );
  } else if (!fs.existsSync("/usr/share/java/zookeeper.jar")) {
    results.note("zookeeper not installed: zookeeper membership skipped");
  } else {
    try {
      const lib = await import(zkLib);
      const zk = await lib.startZookeeper();
      const timeout = 3000;
      try {
        // A dead sheep is noticed when its session expires: the session timeout is the floor.
        await membershipFor("zookeeper", `zookeeper:${zk.hosts},timeout=${timeout}`, {
          name: `session timeout (timeout=${timeout})`,
          ms: timeout,
        });
      } finally {
        await zk.stop();
      }
    } catch (e) {
      results.note(
        `zookeeper membership failed: ${(e as Error).message.split("\n").slice(0, 6).join(" / ")}`,
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 4. recovery: re-replication after kill -9, client I/O during recovery

/** Waits until every object on `alive` has exactly `copies` replicas and no stale copies remain. */
async function settle(
  c: TestCluster,
  alive: number[],
  copies: number,
  timeoutMs: number,
): Promise<number> {
  const t0 = now();
  const dirs = alive.map((i) => c.nodes[i].dir);
  let stable = 0;
  for (let k = 0; now() - t0 < timeoutMs && k < 100_000; k++) {
    const counts = replicaCounts(dirs);
    const ok = counts.size > 0 && [...counts.values()].every((v) => v === copies) &&
      dirs.every((d) => staleCount(d) === 0);
    stable = ok ? stable + 1 : 0;
    if (stable >= 3) return now() - t0;
    await sleep(200);
  }
  throw new Error(
    `cluster did not settle (every object at ${copies} copies, no stale) within ${
      timeoutMs / 1000
    } s`,
  );
}

interface BwSample {
  t: number;
  kib: number;
  dir: number;
}

function readBwLog(file: string): BwSample[] {
  try {
    return fs.readFileSync(file, "utf8").trim().split("\n").filter(Boolean).map((l) => {
      const [t, kib, dir] = l.split(",").map((x) => Number(x.trim()));
      return { t, kib, dir };
    });
  } catch {
    return [];
  }
}

function meanBw(s: BwSample[], dir: number, from: number, to: number): number | null {
  const xs = s.filter((x) => x.dir === dir && x.t > from && x.t <= to).map((x) => x.kib);
  if (!xs.length) return null;
  return (xs.reduce((a, b) => a + b, 0) / xs.length) * 1024 / MB;
}

interface Cycle {
  bytes: number;
  objects: number;
  killToEpochMs: number | null;
  totalMs: number;
  client?: {
    beforeR: number | null;
    beforeW: number | null;
    duringR: number | null;
    duringW: number | null;
    afterR: number | null;
    afterW: number | null;
    windowMs: number;
  };
}

async function recoveryCycle(
  c: TestCluster,
  victim: number,
  load: string | null,
  label: string,
): Promise<Cycle> {
  const alive = c.nodes.map((_, i) => i).filter((i) => i !== victim);
  const all = replicaCounts(c.nodes.map((n) => n.dir));
  const names = [...all.keys()];
  const onVictim = objectSizes(c.nodes[victim].dir);
  const bytes = [...onVictim.values()].reduce((a, b) => a + b, 0);

  let fioDone: Promise<unknown> | null = null;
  let fioProc: import("node:child_process").ChildProcess | null = null;
  let fioStart = 0;
  const bwPrefix = path.join(work, `bw-${label.replace(/\W+/g, "_")}`);
  if (load) {
    let connected: () => void = () => {};
    const isConnected = new Promise<void>((r) => (connected = r));
    fioDone = run([
      "fio",
      "--name=load",
      "--ioengine=nbd",
      `--uri=${load}`,
      "--rw=randrw",
      "--rwmixread=50",
      "--bs=1M",
      "--iodepth=4",
      `--size=${LOAD_SIZE}`,
      "--runtime=900",
      "--time_based",
      `--write_bw_log=${bwPrefix}`,
      // Keep loading through I/O errors (they are counted and reported) so the window stays covered.
      "--continue_on_error=io",
      "--log_avg_msec=250",
      "--output-format=json",
    ], {
      timeoutMs: 960_000,
      onSpawn: (p) => (fioProc = p),
      onStdout: (s) => {
        if (s.includes("connected")) connected();
      },
    });
    const ok = await Promise.race([isConnected.then(() => true), sleep(15_000).then(() => false)]);
    fioStart = now();
    if (!ok) log(`${label}: fio did not report a connection within 15 s`);
    await sleep(PRE_KILL_MS);
  }
  const tails = alive.map((i) => new LogTail(path.join(c.nodes[i].dir, "sheep.log")));
  const t0 = now();
  const seen = Promise.all(tails.map((t) => t.waitFor(/ left; epoch \d+/, 120_000)));
  await c.kill(victim, "SIGKILL");
  const dirs = alive.map((i) => c.nodes[i].dir);
  let tDone: number | null = null;
  const limit = 900_000;
  for (let k = 0; now() - t0 < limit && k < 1_000_000; k++) {
    const counts = replicaCounts(dirs);
    if (names.every((n) => (counts.get(n) ?? 0) >= 3)) {
      tDone = now();
      break;
    }
    await sleep(100);
  }
  const ep = await Promise.race([seen, sleep(1000).then(() => null)]);
  const killToEpochMs = ep && ep.every((x) => x) ? Math.max(...ep.map((x) => x!.t)) - t0 : null;
  if (tDone === null) {
    throw new Error(`${label}: objects not back to 3 replicas within ${limit / 1000} s`);
  }
  const cycle: Cycle = { bytes, objects: onVictim.size, killToEpochMs, totalMs: tDone - t0 };
  if (load && fioDone) {
    // Keep loading a while after recovery: the reference is the same topology (survivors) at rest.
    await sleep(PRE_KILL_MS);
    try {
      (fioProc as import("node:child_process").ChildProcess | null)?.kill("SIGINT");
    } catch { /* gone */ }
    const r = (await fioDone) as Awaited<ReturnType<typeof run>>;
    let errors = 0;
    try {
      errors = JSON.parse(r.out.slice(r.out.indexOf("{"))).jobs.reduce(
        (a: number, j: { total_err?: number }) => a + (j.total_err ?? 0),
        0,
      );
    } catch { /* no JSON: see the exit code */ }
    const errLines = [
      ...new Set(
        (r.err + r.out).split("\n").filter((l) => /error/i.test(l) && !/"/.test(l)).map((l) =>
          l.replace(/offset=\d+/, "offset=N")
        ),
      ),
    ];
    // fio ends with code 128 after our SIGINT; count its I/O errors instead.
    if (errors > 0 || !r.out.includes("{")) {
      results.note(
        `recovery, ${label}: the client (fio over NBD, 1M randrw QD4 with continue_on_error) saw ${errors} I/O error(s)` +
          ` (EIO; in a probe QD1 gave 1 error and QD4 3: the requests in flight when the sheep died fail instead of being retried in the new epoch)` +
          (!r.out.includes("{") ? ` (no fio JSON; exit code ${r.code})` : "") +
          (errLines.length ? `: ${errLines.slice(0, 3).join("; ")}` : ""),
      );
    }
    const s = readBwLog(`${bwPrefix}_bw.1.log`);
    const kill = t0 - fioStart, done = tDone - fioStart;
    cycle.client = {
      beforeR: meanBw(s, 0, 1000, kill),
      beforeW: meanBw(s, 1, 1000, kill),
      duringR: meanBw(s, 0, kill, done),
      duringW: meanBw(s, 1, kill, done),
      afterR: meanBw(s, 0, done + 500, Infinity),
      afterW: meanBw(s, 1, done + 500, Infinity),
      windowMs: done - kill,
    };
  }
  log(
    `${label}: ${cycle.objects} objects / ${(bytes / MB).toFixed(0)} MB back at 3 replicas ${
      (cycle.totalMs / 1000).toFixed(1)
    } s after kill -9` +
      (killToEpochMs !== null ? ` (epoch after ${killToEpochMs.toFixed(0)} ms)` : ""),
  );
  return cycle;
}

async function recovery(): Promise<void> {
  const ref = await diskRef();
  await withCluster(await TestCluster.start(4, { nbd: true, format: { copies: 3 } }), async (c) => {
    const port0 = c.nodes[0].port;
    await c.dogOk(["vdi", "create", "big", String(REC_SIZE)]);
    const w = await run(dogArgv(port0, ["vdi", "write", "big", "0", String(REC_SIZE)]), {
      timeoutMs: 1_800_000,
      stdinFile: SRC,
    });
    if (w.code !== 0) throw fail("dog vdi write big", w);
    log(
      `recovery setup: ${REC_SIZE / MiB} MiB written to 4 nodes copies=3 at ${
        mbps(REC_SIZE, w.ms).toFixed(0)
      } MB/s`,
    );
    await c.dogOk(["vdi", "create", "load", String(LOAD_SIZE)]);
    const wl = await run(dogArgv(port0, ["vdi", "write", "load", "0", String(LOAD_SIZE)]), {
      timeoutMs: 600_000,
      stdinFile: SRC,
    });
    if (wl.code !== 0) throw fail("dog vdi write load", wl);
    const load = `nbd://127.0.0.1:${c.nodes[0].nbdPort}/load`;
    await settle(c, [0, 1, 2, 3], 3, 300_000);
    const victim = 3;
    const rejoin = async (what: string) => {
      const t = now();
      await c.startNode(victim, { timeoutMs: 120_000 });
      const ms = await settle(c, [0, 1, 2, 3], 3, 600_000);
      log(
        `rejoin after ${what}: settled ${((now() - t) / 1000).toFixed(1)} s after restart (${
          (ms / 1000).toFixed(1)
        } s after port open)`,
      );
    };
    const sec = "recovery 4 nodes copies=3";
    const add = (cyc: Cycle, metric: string) => {
      results.add({
        section: sec,
        metric,
        unit: "MB/s",
        ours: mbps(cyc.bytes, cyc.totalMs),
        refName: "cp + sync (same disk)",
        ref,
        better: "higher",
        note: `${cyc.objects} obj, ${(cyc.bytes / MB).toFixed(0)} MB, 3 replicas after ${
          (cyc.totalMs / 1000).toFixed(1)
        } s, epoch after ${cyc.killToEpochMs?.toFixed(0) ?? "?"} ms`,
      });
    };
    const clientRows = (cyc: Cycle, how: string) => {
      const cl = cyc.client;
      if (!cl) return;
      const f = (x: number | null) => (x === null ? "?" : x.toFixed(0));
      const refName = "same fio run after recovery (3 survivors, at rest)";
      results.add({
        section: sec,
        metric: `client 1M randrw QD4 read during recovery, ${how}`,
        unit: "MB/s",
        ours: cl.duringR,
        refName,
        ref: cl.afterR,
        better: "higher",
        note: `${(cl.windowMs / 1000).toFixed(1)} s window; ${
          f(cl.beforeR)
        } MB/s before the kill on 4 nodes`,
      });
      results.add({
        section: sec,
        metric: `client 1M randrw QD4 write during recovery, ${how}`,
        unit: "MB/s",
        ours: cl.duringW,
        refName,
        ref: cl.afterW,
        better: "higher",
        note: `${(cl.windowMs / 1000).toFixed(1)} s window; ${
          f(cl.beforeW)
        } MB/s before the kill on 4 nodes`,
      });
    };

    const a = await recoveryCycle(c, victim, null, "idle unthrottled");
    add(a, `re-replication after kill -9, idle cluster, unthrottled`);
    await rejoin("idle cycle");

    const b = await recoveryCycle(c, victim, load, "loaded unthrottled");
    add(b, `re-replication after kill -9 under client load, unthrottled`);
    clientRows(b, "unthrottled");
    await rejoin("loaded cycle");

    for (const i of [0, 1, 2, 3]) {
      const r = await run(
        dogArgv(c.nodes[i].port, ["node", "recovery", "set-throttle", THR_MAX, THR_INTERVAL]),
        { timeoutMs: 30_000 },
      );
      if (r.code !== 0) results.note(`set-throttle on node ${i} failed: ${r.err.trim()}`);
    }
    for (const i of [0, 1, 2, 3]) {
      const g = await run(dogArgv(c.nodes[i].port, ["node", "recovery", "get-throttle"]), {
        timeoutMs: 30_000,
      });
      log(`throttle on node ${i}: ${(g.out + g.err).trim()}`); // dog prints it on stderr, as upstream
    }
    const how = `throttled ${THR_MAX} obj/${THR_INTERVAL} ms per node`;
    const d = await recoveryCycle(c, victim, load, "loaded throttled");
    add(d, `re-replication after kill -9 under client load, ${how}`);
    clientRows(d, how);
  });
}

// ---------------------------------------------------------------------------------------------
// 5. metrics: the cost of sheep --http scraped every second (bench/metrics.ts)

async function metrics(): Promise<void> {
  const b = await metricsBench({
    sizeBytes: 256 * MiB,
    rounds: FULL ? 5 : 3,
    runtimeS: FIO_RUNTIME,
  });
  const row = { section: "metrics", refName: "same without --http" };
  results.add({
    ...row,
    metric: "fio 4k randread QD32, --http scraped every 1 s",
    unit: "IOPS",
    ours: median(b.on),
    ref: median(b.off),
    better: "higher",
  });
  results.add({
    ...row,
    metric: "sheep CPU per 4k read, --http scraped every 1 s",
    unit: "us",
    ours: median(b.cpuOn),
    ref: median(b.cpuOff),
    better: "lower",
  });
}

// ---------------------------------------------------------------------------------------------
// 7. erasure coding: codec MB/s per core (goal >= 1 GB/s encode) and NBD on an EC 4:2 VDI
//    against copies=3 on the same 6 nodes (bench/ec.ts)

async function ec(): Promise<void> {
  const row = { section: "ec" };
  for (const r of codecRates()) {
    results.add({
      ...row,
      refName: "goal 1000 MB/s",
      metric: `${r.code} encode (split + parity), one core`,
      unit: "MB/s",
      ours: r.encode,
      ref: 1000,
      better: "higher",
    });
    results.add({
      ...row,
      refName: "goal 1000 MB/s",
      metric: `${r.code} decode (p strips lost), one core`,
      unit: "MB/s",
      ours: r.decode,
      ref: 1000,
      better: "higher",
    });
  }
  const rows = await ecNbdBench(FULL ? 1024 : 256);
  const e = rows.find((r) => r.copies === "4:2")!, rep = rows.find((r) => r.copies === "3")!;
  for (const k of ["write", "read"] as const) {
    results.add({
      ...row,
      refName: "copies=3 VDI, same cluster",
      metric: `NBD sequential ${k} (nbdcopy), EC 4:2 VDI, 6 nodes`,
      unit: "MB/s",
      ours: e[k],
      ref: rep[k],
      better: "higher",
    });
  }
}

// ---------------------------------------------------------------------------------------------

function machineInfo(): string {
  const git = spawnSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT, encoding: "utf8" })
    .stdout.trim();
  const dirty = spawnSync("git", [
    "status",
    "--porcelain",
    "--",
    "core",
    "sheep",
    "drivers",
    "cli",
    "mod.ts",
  ], { cwd: ROOT, encoding: "utf8" }).stdout.trim();
  const fsType = spawnSync("stat", ["-f", "-c", "%T", os.tmpdir()], { encoding: "utf8" }).stdout
    .trim();
  return [
    `- date: ${new Date().toISOString()}, mode: ${FULL ? "full" : "quick"}, sections: ${
      ONLY.join(", ")
    }`,
    `- commit: ${git}${dirty ? " (+ uncommitted changes in product sources)" : ""}; product: ${
      sheepCommand().join(" ")
    }`,
    `- machine: ${os.cpus().length} cores (${os.cpus()[0]?.model ?? "?"}), ${
      (os.totalmem() / GiB).toFixed(0)
    } GiB RAM, kernel ${os.release()}, ${os.tmpdir()} on ${fsType}`,
    `- tools: ${toolVersion("qemu-nbd", ["--version"])}; ${toolVersion("fio", ["--version"])}; ${
      toolVersion("nbdcopy", ["--version"])
    }`,
    `- sizes: random file ${FILE_SIZE / MiB} MiB (NBD copies all of it), appliance ${
      APPLIANCE_SIZE / MiB
    } MiB, recovery ${REC_SIZE / MiB} MiB,` +
    ` fio ${FIO_RUNTIME} s per run (+1 s ramp), ${ITERS} membership iterations, ${CREATES} creates`,
    `- load average at start: ${loadAtStart}, at end: ${
      os.loadavg().map((x) => x.toFixed(1)).join(" ")
    } (other work on the machine makes figures noisy)`,
    `- ratio = ours/ref; "better" says which direction is good. Clients, servers and sheep share the same ${os.cpus().length} cores.`,
  ].join("\n");
}

async function main(): Promise<void> {
  log(`work dir ${work}; ${FULL ? "full" : "quick"} mode; sections ${ONLY.join(",")}`);
  const failures: string[] = [];
  try {
    await makeSource();
    const farm = () => farmBench({ results, work, src: SRC, size: FARM_SIZE });
    const sections: Record<string, () => Promise<void>> = {
      appliance,
      nbd,
      membership,
      recovery,
      metrics,
      farm,
      ec,
      journal: () => journalBench({ results, src: SRC, size: NBD_SIZE, fioRuntime: FIO_RUNTIME }),
      c: () =>
        cRefBench({
          results,
          work,
          src: SRC,
          size: mib("BENCH_C_MB", 1 * GiB),
          iters: Number(env.BENCH_C_ITERS ?? (FULL ? 3 : 1)),
          creates: Number(env.BENCH_C_CREATES ?? (FULL ? 1000 : 100)),
          full: FULL,
        }),
      scale: () =>
        scaleBench({
          results,
          src: SRC,
          size: mib("BENCH_SCALE_MB", FULL ? 1 * GiB : 256 * MiB),
          nodes: [1, 2, 4, 8],
          vdis: FULL ? [1, 10, 100, 1000, 10_000] : [1, 10, 100, 1000],
        }),
    };
    for (const s of SECTIONS) {
      if (!ONLY.includes(s)) continue;
      const t = now();
      log(`=== ${s} ===`);
      try {
        await sections[s]();
      } catch (e) {
        const msg = (e as Error).message.split("\n").slice(0, 8).join(" / ");
        failures.push(s);
        results.note(`section ${s} failed: ${msg}`);
      }
      log(`=== ${s} done in ${((now() - t) / 1000).toFixed(0)} s ===`);
    }
  } finally {
    fs.rmSync(SRC, { force: true });
  }
  const total = (now() - started) / 1000;
  const md = [
    "# sheepdog benchmark results",
    "",
    machineInfo(),
    `- total time: ${total.toFixed(0)} s`,
    "",
    results.table(),
    "",
    ...(results.notes.length ? ["## Notes", "", ...results.notes.map((n) => `- ${n}`), ""] : []),
  ].join("\n");
  console.log("\n" + md);
  const out = path.join(ROOT, "bench", "last-results.md");
  fs.writeFileSync(out, md + "\n");
  log(`written to ${out}`);
  if (failures.length) process.exitCode = 1;
}

await main();
process.exit(process.exitCode ?? 0);
