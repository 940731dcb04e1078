// The cost of `sheep --http`: fio 4k random read QD32 over NBD against a sheep with --http whose
// /metrics is scraped every second, and against one without --http, in one run. Both 1-node
// clusters (copies=1, the sheep does all the work) are up at once but only one is driven at a
// time, alternating off/on so drift in the machine's load hits both alike. Goal: on/off >= 0.97.
//
//   node_modules/.bin/bun bench/metrics.ts
//
// Environment: BENCH_METRICS_MB (VDI size, default 256), BENCH_METRICS_ROUNDS (off/on pairs,
// default 4), BENCH_FIO_RUNTIME (s per fio run, default 10). Besides IOPS it reports the sheep's
// CPU time per read, which other load on the machine disturbs much less. Also the `metrics` section of
// bench/run.ts.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { freePort, TestCluster } from "../tests/lib/cluster.ts";
import { cpuSeconds, fail, fio, haveTool, log, median, MiB, nbdcopy, run, sleep } from "./lib.ts";

export interface MetricsBench {
  /** IOPS per run. */
  off: number[];
  on: number[];
  /** median(on) / median(off) */
  ratio: number;
  /** Sheep CPU microseconds per read, per run: steadier than IOPS on a loaded machine. */
  cpuOff: number[];
  cpuOn: number[];
  cpuRatio: number;
  scrapes: number;
}

/** The NBD read command count a scrape reports (to prove the scrapes see the load). */
function nbdReads(text: string): number {
  const m = /^sheep_nbd_command_duration_seconds_count\{command="read"\} (\d+)$/m.exec(text);
  return m ? Number(m[1]) : 0;
}

export async function metricsBench(
  o: { sizeBytes: number; rounds: number; runtimeS: number },
): Promise<MetricsBench> {
  const missing = ["nbdcopy", "fio"].filter((t) => !haveTool(t));
  if (missing.length) throw new Error(`missing ${missing.join(", ")} (make apt-deps)`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-bench-metrics-"));
  const src = path.join(work, "random.bin");
  const httpPort = await freePort();
  const clusters: TestCluster[] = [];
  try {
    const r = await run(["head", "-c", String(o.sizeBytes), "/dev/urandom"], {
      timeoutMs: 600_000,
      stdoutFile: src,
    });
    if (r.code !== 0) throw fail("head /dev/urandom", r);
    const off = await TestCluster.start(1, { nbd: true, format: { copies: 1 } });
    clusters.push(off);
    const on = await TestCluster.start(1, {
      nbd: true,
      format: { copies: 1 },
      extra: ["--http", `127.0.0.1:${httpPort}`],
    });
    clusters.push(on);
    const uri = (c: TestCluster) => `nbd://127.0.0.1:${c.nodes[0].nbdPort}/disk`;
    // Reads of allocated objects: fill the VDIs first.
    for (const c of [off, on]) {
      await c.dogOk(["vdi", "create", "disk", String(o.sizeBytes)]);
      const w = await nbdcopy(src, uri(c), ["--connections=1"], 600_000);
      if (w.code !== 0) throw fail("nbdcopy into the VDI", w);
    }

    let scrapes = 0, scraping = false, lastReads = 0, readsSeen = false;
    const scraper = setInterval(async () => {
      if (scraping) return;
      scraping = true;
      try {
        const res = await fetch(`http://127.0.0.1:${httpPort}/metrics`);
        const text = await res.text();
        if (res.status !== 200) throw new Error(`/metrics: HTTP ${res.status}`);
        const reads = nbdReads(text);
        if (reads > lastReads && lastReads > 0) readsSeen = true;
        lastReads = reads;
        scrapes++;
      } catch (e) {
        log(`scrape failed: ${(e as Error).message}`);
      } finally {
        scraping = false;
      }
    }, 1000);
    const figures = { off: [] as number[], on: [] as number[] };
    const cpu = { off: [] as number[], on: [] as number[] };
    try {
      for (let i = 0; i < o.rounds; i++) {
        // Alternate which goes first, so neither always runs right after the fill or the other.
        const order: Array<"off" | "on"> = i % 2 === 0 ? ["off", "on"] : ["on", "off"];
        for (const k of order) {
          const c = k === "off" ? off : on;
          const pids = [c.nodes[0].proc!.pid!];
          // fio's ramp second is not in its IOPS but is in the CPU time: count its reads too.
          const c0 = cpuSeconds(pids);
          const f = await fio(uri(c), "randread", 32, o.runtimeS, o.sizeBytes);
          const usPerRead = (cpuSeconds(pids) - c0) * 1e6 / (f.iops * (o.runtimeS + 1));
          figures[k].push(f.iops);
          cpu[k].push(usPerRead);
          log(
            `round ${i + 1} --http ${k}: ${f.iops.toFixed(0)} IOPS (p99 ${
              f.p99us.toFixed(0)
            } us), sheep CPU ${usPerRead.toFixed(1)} us per read`,
          );
          await sleep(500);
        }
      }
    } finally {
      clearInterval(scraper);
    }
    if (!readsSeen) throw new Error("the scrapes never saw the NBD read count rise");
    const ratio = median(figures.on) / median(figures.off);
    const cpuRatio = median(cpu.on) / median(cpu.off);
    return { ...figures, ratio, cpuOff: cpu.off, cpuOn: cpu.on, cpuRatio, scrapes };
  } finally {
    for (const c of clusters) await c.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const env = process.env;
  const b = await metricsBench({
    sizeBytes: Number(env.BENCH_METRICS_MB ?? 256) * MiB,
    rounds: Number(env.BENCH_METRICS_ROUNDS ?? 4),
    runtimeS: Number(env.BENCH_FIO_RUNTIME ?? 10),
  });
  const f = (xs: number[], d = 0) => xs.map((x) => x.toFixed(d)).join(", ");
  console.log(
    `fio 4k randread QD32 over NBD, 1 sheep: without --http ${f(b.off)} IOPS (median ${
      median(b.off).toFixed(0)
    }); with --http scraped every 1 s (${b.scrapes} scrapes) ${f(b.on)} IOPS (median ${
      median(b.on).toFixed(0)
    })`,
  );
  console.log(
    `sheep CPU per read: without ${f(b.cpuOff, 1)} us, with ${f(b.cpuOn, 1)} us (with/without ${
      b.cpuRatio.toFixed(3)
    }x)`,
  );
  console.log(
    `IOPS ratio with/without: ${b.ratio.toFixed(3)}x (goal >= 0.97x; load average ${
      os.loadavg()[0].toFixed(1)
    } on ${os.cpus().length} cores)`,
  );
  process.exit(0);
}
