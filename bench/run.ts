// `make bench`: sheepdog against references measured in the same run on the same disk.
//
//   node_modules/.bin/bun bench/run.ts [--full]
//     [--only=appliance,nbd,membership,recovery,metrics,farm,ec,checksum,journal,cache,c,scale]
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
import { ROOT, sheepCommand, TestCluster } from "../tests/lib/cluster.ts";
import {
  cpuSeconds,
  dogArgv,
  fail,
  GiB,
  log,
  median,
  MiB,
  now,
  Results,
  run,
  toolVersion,
} from "./lib.ts";
import { metricsBench } from "./metrics.ts";
import { farmBench } from "./farm.ts";
import { cacheBench } from "./cache.ts";
import { cRefBench } from "./c-ref.ts";
import { codecRates, nbdBench as ecNbdBench } from "./ec.ts";
import { checksumBench, CSUM_METRICS, type CsumKey } from "./checksum.ts";
import { journalBench } from "./journal.ts";
import { type BenchEnv, mbps, withCluster } from "./env.ts";
import { nbdSection } from "./sec-nbd.ts";
import { membershipSection } from "./sec-membership.ts";
import { recoverySection } from "./sec-recovery.ts";
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
  "checksum",
  "journal",
  "cache",
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

const benchEnv: BenchEnv = {
  results,
  work,
  src: SRC,
  fileSize: FILE_SIZE,
  full: FULL,
  fioRuntime: FIO_RUNTIME,
  nbdkit: NBDKIT,
  nbdSize: NBD_SIZE,
  iters: ITERS,
  creates: CREATES,
  recSize: REC_SIZE,
  loadSize: LOAD_SIZE,
  preKillMs: PRE_KILL_MS,
  throttle: [THR_MAX, THR_INTERVAL],
  diskRef: () => diskRef(),
};

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
// 8. checksums: stored CRC-32 per 4 KiB against SHEEPDOG_CHECKSUMS=off (bench/checksum.ts)

async function checksum(): Promise<void> {
  // 5 rounds: single rounds move by up to 2x on 2 shared cores, 3 medians were not steady.
  const f = await checksumBench({
    sizeBytes: 256 * MiB,
    rounds: FULL ? 7 : 5,
    runtimeS: FIO_RUNTIME,
  });
  for (const k of Object.keys(CSUM_METRICS) as CsumKey[]) {
    results.add({
      section: "checksum 1 node copies=1",
      refName: "same, SHEEPDOG_CHECKSUMS=off (goal >= 0.95x)",
      metric: CSUM_METRICS[k].metric,
      unit: CSUM_METRICS[k].unit,
      ours: median(f.on[k]),
      ref: median(f.off[k]),
      better: "higher",
    });
  }
  for (const k of Object.keys(CSUM_METRICS) as CsumKey[]) {
    const rand = k.startsWith("rand");
    results.add({
      section: "checksum 1 node copies=1",
      refName: "same, SHEEPDOG_CHECKSUMS=off",
      metric: rand
        ? `sheep CPU per 4k I/O, ${CSUM_METRICS[k].metric}`
        : `sheep CPU per MB, ${CSUM_METRICS[k].metric}`,
      unit: rand ? "us" : "ms",
      ours: median(f.cpu.on[k]),
      ref: median(f.cpu.off[k]),
      better: "lower",
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
      nbd: () => nbdSection(benchEnv),
      membership: () => membershipSection(benchEnv),
      recovery: () => recoverySection(benchEnv),
      metrics,
      farm,
      ec,
      checksum,
      journal: () => journalBench({ results, src: SRC, size: NBD_SIZE, fioRuntime: FIO_RUNTIME }),
      cache: () =>
        cacheBench({
          results,
          work,
          src: SRC,
          size: Math.min(FILE_SIZE, mib("BENCH_CACHE_MB", 1 * GiB)),
          fioRuntime: FIO_RUNTIME,
        }),
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
