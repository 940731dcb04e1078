// The cost of stored checksums (issue 15, io/checksum.ts): dog vdi write/read and fio 4k random
// read/write QD32 over NBD, against a sheep with checksums and one with SHEEPDOG_CHECKSUMS=off,
// in one run. Both 1-node clusters (copies=1: the sheep does all the work) are up at once, only
// one is driven at a time, alternating which goes first so drift in the machine's load hits both
// alike. Goal: with/without >= 0.95.
//
//   node_modules/.bin/bun bench/checksum.ts
//
// Environment: BENCH_CSUM_MB (VDI size, default 256), BENCH_CSUM_ROUNDS (default 5),
// BENCH_FIO_RUNTIME (s per fio run, default 10). Also the `checksum` section of bench/run.ts.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { TestCluster } from "../tests/lib/cluster.ts";
import {
  cpuSeconds,
  dogArgv,
  fail,
  fio,
  haveTool,
  log,
  MB,
  median,
  MiB,
  nbdcopy,
  run,
  sleep,
} from "./lib.ts";

export type CsumKey = "write" | "read" | "randread" | "randwrite";
export const CSUM_METRICS: Record<CsumKey, { metric: string; unit: string }> = {
  write: { metric: "dog vdi write (fresh VDI)", unit: "MB/s" },
  read: { metric: "dog vdi read", unit: "MB/s" },
  randread: { metric: "NBD fio 4k randread QD32", unit: "IOPS" },
  randwrite: { metric: "NBD fio 4k randwrite QD32", unit: "IOPS" },
};

export type CsumFigures = Record<"on" | "off", Record<CsumKey, number[]>> & {
  /**
   * Sheep CPU per unit of work, steadier than throughput under load: microseconds per 4 KiB I/O
   * (randread, randwrite), milliseconds per MB (write, read).
   */
  cpu: Record<"on" | "off", Record<CsumKey, number[]>>;
};

export async function checksumBench(
  o: { sizeBytes: number; rounds: number; runtimeS: number },
): Promise<CsumFigures> {
  const missing = ["nbdcopy", "fio"].filter((t) => !haveTool(t));
  if (missing.length) throw new Error(`missing ${missing.join(", ")} (make apt-deps)`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-bench-csum-"));
  const src = path.join(work, "random.bin");
  const clusters: Record<"on" | "off", TestCluster | null> = { on: null, off: null };
  try {
    const r = await run(["head", "-c", String(o.sizeBytes), "/dev/urandom"], {
      timeoutMs: 600_000,
      stdoutFile: src,
    });
    if (r.code !== 0) throw fail("head /dev/urandom", r);
    clusters.on = await TestCluster.start(1, { nbd: true, format: { copies: 1 } });
    // The switch is read by the sheep at start: set only while the second cluster spawns.
    process.env.SHEEPDOG_CHECKSUMS = "off";
    try {
      clusters.off = await TestCluster.start(1, { nbd: true, format: { copies: 1 } });
    } finally {
      delete process.env.SHEEPDOG_CHECKSUMS;
    }
    const uri = (c: TestCluster) => `nbd://127.0.0.1:${c.nodes[0].nbdPort}/disk`;
    for (const k of ["on", "off"] as const) {
      const c = clusters[k]!;
      await c.dogOk(["vdi", "create", "disk", String(o.sizeBytes)]);
      const w = await nbdcopy(src, uri(c), ["--connections=1"], 600_000);
      if (w.code !== 0) throw fail("nbdcopy into the VDI", w);
    }
    const empty = (): Record<CsumKey, number[]> => ({
      write: [],
      read: [],
      randread: [],
      randwrite: [],
    });
    const f: CsumFigures = {
      on: empty(),
      off: empty(),
      cpu: { on: empty(), off: empty() },
    };
    for (let i = 0; i < o.rounds; i++) {
      const order: Array<"on" | "off"> = i % 2 === 0 ? ["off", "on"] : ["on", "off"];
      for (const k of order) {
        const c = clusters[k]!;
        const port = c.nodes[0].port;
        const vdi = `w${i}`;
        const pids = [c.nodes[0].proc!.pid!];
        const mb = o.sizeBytes / MB;
        await c.dogOk(["vdi", "create", vdi, String(o.sizeBytes)]);
        let c0 = cpuSeconds(pids);
        const wr = await run(dogArgv(port, ["vdi", "write", vdi, "0", String(o.sizeBytes)]), {
          timeoutMs: 900_000,
          stdinFile: src,
        });
        if (wr.code !== 0) throw fail(`dog vdi write (checksums ${k})`, wr);
        f.cpu[k].write.push((cpuSeconds(pids) - c0) * 1e3 / mb);
        c0 = cpuSeconds(pids);
        const rd = await run(dogArgv(port, ["vdi", "read", vdi, "0", String(o.sizeBytes)]), {
          timeoutMs: 900_000,
          stdoutFile: "/dev/null",
        });
        if (rd.code !== 0) throw fail(`dog vdi read (checksums ${k})`, rd);
        f.cpu[k].read.push((cpuSeconds(pids) - c0) * 1e3 / mb);
        await c.dogOk(["vdi", "delete", vdi]);
        f[k].write.push(o.sizeBytes / MB / (wr.ms / 1000));
        f[k].read.push(o.sizeBytes / MB / (rd.ms / 1000));
        for (const rw of ["randread", "randwrite"] as const) {
          c0 = cpuSeconds(pids);
          const iops = (await fio(uri(c), rw, 32, o.runtimeS, o.sizeBytes)).iops;
          // fio's ramp second is in the CPU time, not in its IOPS: count its I/Os too.
          f.cpu[k][rw].push((cpuSeconds(pids) - c0) * 1e6 / (iops * (o.runtimeS + 1)));
          f[k][rw].push(iops);
          await sleep(500);
        }
        log(
          `round ${i + 1} checksums ${k}: write ${f[k].write.at(-1)!.toFixed(0)} MB/s (${
            f.cpu[k].write.at(-1)!.toFixed(2)
          } ms CPU/MB), read ${f[k].read.at(-1)!.toFixed(0)} MB/s (${
            f.cpu[k].read.at(-1)!.toFixed(2)
          } ms CPU/MB), randread ${f[k].randread.at(-1)!.toFixed(0)} IOPS (${
            f.cpu[k].randread.at(-1)!.toFixed(1)
          } us CPU each), randwrite ${f[k].randwrite.at(-1)!.toFixed(0)} IOPS (${
            f.cpu[k].randwrite.at(-1)!.toFixed(1)
          } us CPU each)`,
        );
      }
    }
    // The "on" sheep really stored checksums (and the "off" one did not).
    const sides = (c: TestCluster) =>
      fs.readdirSync(path.join(c.nodes[0].dir, "obj")).filter((n) => n.endsWith(".csum")).length;
    if (sides(clusters.on!) === 0 || sides(clusters.off!) !== 0) {
      throw new Error("checksum switch not in effect (side files on the wrong sheep)");
    }
    return f;
  } finally {
    for (const c of [clusters.on, clusters.off]) await c?.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const env = process.env;
  const f = await checksumBench({
    sizeBytes: Number(env.BENCH_CSUM_MB ?? 256) * MiB,
    rounds: Number(env.BENCH_CSUM_ROUNDS ?? 5),
    runtimeS: Number(env.BENCH_FIO_RUNTIME ?? 10),
  });
  for (const k of Object.keys(CSUM_METRICS) as CsumKey[]) {
    const on = median(f.on[k]), off = median(f.off[k]);
    console.log(
      `${CSUM_METRICS[k].metric}: with ${on.toFixed(0)} ${CSUM_METRICS[k].unit}, without ${
        off.toFixed(0)
      } (with/without ${(on / off).toFixed(3)}x, goal >= 0.95x)`,
    );
  }
  for (const k of Object.keys(CSUM_METRICS) as CsumKey[]) {
    const on = median(f.cpu.on[k]), off = median(f.cpu.off[k]);
    const unit = k.startsWith("rand") ? "us per 4k I/O" : "ms per MB";
    console.log(
      `sheep CPU, ${CSUM_METRICS[k].metric}: with ${on.toFixed(2)}, without ${
        off.toFixed(2)
      } ${unit} (${(on / off).toFixed(3)}x)`,
    );
  }
  console.log(`load average ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} cores`);
  process.exit(0);
}
