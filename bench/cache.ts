// Object cache benchmark (issue 12): 3 nodes copies=3, NBD on node 0, the same workload against
// the same sheep with `-w` (write-back; a second, read-only connection sends FLUSH every second,
// which pushes the writer's dirty objects: a guest syncing once a second) and without it.
// fio 4k randwrite QD1/QD32 and nbdcopy of BENCH_CACHE_MB (default 1024) MiB; then 4k random
// reads of objects that are in the cache against qemu-nbd on a raw file (page cache).
// Runs as the "cache" section of bench/run.ts, or alone: node_modules/.bin/bun bench/cache.ts
import { Buffer } from "node:buffer";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { TestCluster } from "../tests/lib/cluster.ts";
import { RawNbd } from "../tests/lib/raw-nbd.ts";
import {
  fail,
  fio,
  type FioResult,
  log,
  MB,
  MiB,
  nbdcopy,
  Results,
  startRefServer,
} from "./lib.ts";

export interface CacheBenchOpts {
  results: Results;
  work: string;
  /** A file of at least `size` random bytes. */
  src: string;
  size: number;
  fioRuntime: number;
}

interface Figures {
  /** Write-back with no FLUSH during the run: what the cache itself costs. */
  w1nf?: FioResult;
  w1: FioResult;
  w32: FioResult;
  copy: number;
  r1?: FioResult;
}

/** Sends FLUSH every second on a read-only connection until stopped. */
function flusher(port: number, name: string): { stop(): Promise<number> } {
  let stopped = false, n = 0;
  const done = (async () => {
    const h = await RawNbd.open(port, name);
    try {
      while (!stopped) {
        await new Promise((r) => setTimeout(r, 1000));
        await h.flush();
        n++;
      }
    } finally {
      await h.disconnect();
    }
  })();
  return {
    stop: async () => {
      stopped = true;
      await done;
      return n;
    },
  };
}

async function sheepFigures(o: CacheBenchOpts, cached: boolean): Promise<Figures> {
  const extra = cached ? ["-w", `size=${Math.max(2 * o.size, 1024 * MiB) / MiB}M`] : [];
  const c = await TestCluster.start(3, { nbd: true, format: { copies: 3 }, extra });
  try {
    await c.dogOk(["vdi", "create", "disk", String(o.size)]);
    const port = c.nodes[0].nbdPort!;
    const uri = `nbd://127.0.0.1:${port}/disk`;
    const t0 = performance.now();
    const r = await nbdcopy(o.src, uri, ["--flush", "--connections=1"], 30 * 60_000);
    if (r.code !== 0) throw fail("nbdcopy to sheep", r);
    const copy = o.size / MB / ((performance.now() - t0) / 1000);
    // The previous client's detach (a push with the cache) must be over before the next attaches.
    const unlocked = () =>
      c.waitFor(
        async () => !(await c.dogOk(["vdi", "lock", "list"])).includes("disk"),
        120_000,
        "the VDI lock released",
      );
    const job = async (qd: number) => {
      await unlocked();
      // fio's connection takes the lock; the flusher then gets a read-only one.
      const f = fio(uri, "randwrite", qd, o.fioRuntime, o.size);
      // Only once fio holds the lock: the flusher must get the read-only connection.
      if (cached) {
        await c.waitFor(
          async () => (await c.dogOk(["vdi", "lock", "list"])).includes("disk"),
          60_000,
          "fio attached",
        );
      }
      const fl = cached ? flusher(port, "disk") : null;
      const res = await f;
      const flushes = await fl?.stop();
      if (fl) log(`cache: ${flushes} FLUSHes during fio randwrite QD${qd}`);
      return res;
    };
    const w1 = await job(1);
    const w32 = await job(32);
    let w1nf: FioResult | undefined;
    if (cached) {
      await unlocked();
      w1nf = await fio(uri, "randwrite", 1, o.fioRuntime, o.size);
    }
    // Reads of cached objects: a 256 MiB region, read once to pull it in.
    // The holder connection keeps the VDI attached here (a detach drops its cached objects);
    // nbdcopy and fio then read through read-only connections served from this sheep's cache.
    let r1: FioResult | undefined;
    if (cached) {
      await unlocked();
      const holder = await RawNbd.open(port, "disk");
      try {
        const warm = await nbdcopy(uri, "null:", ["--connections=1"], 30 * 60_000);
        if (warm.code !== 0) throw fail("nbdcopy from sheep", warm);
        r1 = await fio(uri, "randread", 1, o.fioRuntime, Math.min(o.size, 256 * MiB));
      } finally {
        await holder.disconnect();
      }
    }
    return { w1, w32, copy, r1, w1nf };
  } finally {
    await c.stop();
  }
}

export async function cacheBench(o: CacheBenchOpts): Promise<void> {
  const { results } = o;
  const sec = "cache 3 nodes copies=3";
  const on = await sheepFigures(o, true);
  const off = await sheepFigures(o, false);
  const row = (metric: string, unit: string, ours: number, ref: number, note?: string) =>
    results.add({
      section: sec,
      metric,
      unit,
      ours,
      refName: "same sheep without -w",
      ref,
      better: "higher",
      note,
    });
  row(
    "fio 4k randwrite QD1, write-back, FLUSH every 1 s",
    "IOPS",
    on.w1.iops,
    off.w1.iops,
    "goal x5",
  );
  row("fio 4k randwrite QD32, write-back, FLUSH every 1 s", "IOPS", on.w32.iops, off.w32.iops);
  row(
    "fio 4k randwrite QD1, write-back, no FLUSH until the end",
    "IOPS",
    on.w1nf!.iops,
    off.w1.iops,
  );
  row(`nbdcopy seq write ${o.size / MiB} MiB --flush`, "MB/s", on.copy, off.copy);
  // Against qemu-nbd: write-back on a raw file, and 4k reads of cached objects.
  const disk = path.join(o.work, "cache-ref.raw");
  fs.writeFileSync(disk, "");
  fs.truncateSync(disk, o.size);
  const srv = await startRefServer("qemu-nbd", disk, o.work);
  try {
    const w1 = await fio(srv.uri, "randwrite", 1, o.fioRuntime, o.size);
    await nbdcopy(o.src, srv.uri, ["--connections=1"], 30 * 60_000);
    const r1 = await fio(srv.uri, "randread", 1, o.fioRuntime, Math.min(o.size, 256 * MiB));
    const ref = (metric: string, ours: number, v: number, note: string) =>
      results.add({
        section: sec,
        metric,
        unit: "IOPS",
        ours,
        refName: "qemu-nbd writeback raw",
        ref: v,
        better: "higher",
        note,
      });
    ref("fio 4k randwrite QD1, write-back", on.w1.iops, w1.iops, "goal x0.5");
    ref("fio 4k randread QD1 of cached objects", on.r1!.iops, r1.iops, "goal x0.8");
  } finally {
    await srv.stop();
    fs.rmSync(disk, { force: true });
  }
}

if (import.meta.main) {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-bench-cache-"));
  const size = Number(process.env.BENCH_CACHE_MB ?? 1024) * MiB;
  const src = path.join(work, "random.bin");
  const fd = fs.openSync(src, "w");
  const chunk = Buffer.alloc(16 * MiB);
  for (let off = 0; off < size; off += chunk.length) fs.writeSync(fd, crypto.randomFillSync(chunk));
  fs.closeSync(fd);
  const results = new Results();
  try {
    await cacheBench({
      results,
      work,
      src,
      size,
      fioRuntime: Number(process.env.BENCH_FIO_RUNTIME ?? 10),
    });
    console.log("\n" + results.table());
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  process.exit(0);
}
