// `make bench` section nbd (bench/run.ts registers it).
import * as fs from "node:fs";
import * as path from "node:path";
import { TestCluster } from "../tests/lib/cluster.ts";
import {
  cpuSeconds,
  fail,
  fio,
  haveTool,
  log,
  MiB,
  nbdcopy,
  run,
  sleep,
  startRefServer,
} from "./lib.ts";

import { type BenchEnv, mbps, withCluster } from "./env.ts";

/** Set by the entry point: sections run one at a time. */
let cfg!: BenchEnv;

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
  const small = path.join(cfg.work, "probe.bin");
  if (!fs.existsSync(small)) {
    const r = await run(["head", "-c", String(64 * MiB), cfg.src], {
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
    cfg.results.note(
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
        cfg.results.note(
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
      f[key] = mbps(cfg.fileSize, r.ms);
    });
  };
  // Sequential writes over one connection, as a VM's (QEMU uses one); --flush like sync. The
  // first pass allocates (sparse file / fresh VDI), the second overwrites.
  await retry("nbdcopy write", () => copy("write", ["--flush", "--connections=1"], cfg.src, t.uri));
  await retry(
    "nbdcopy rewrite",
    () => copy("rewrite", ["--flush", "--connections=1"], cfg.src, t.uri),
  );
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
      () => measure(key, () => fio(t.uri, rw, qd, cfg.fioRuntime, cfg.fileSize)),
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
  const disk = path.join(cfg.work, "disk.raw");
  fs.rmSync(disk, { force: true });
  fs.writeFileSync(disk, "");
  fs.truncateSync(disk, cfg.fileSize);
  const srv = await startRefServer(kind, disk, cfg.work);
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
  const size = `${cfg.fileSize / MiB} MiB`;
  cfg.results.add({
    section: sec,
    metric: `nbdcopy seq write ${size}, 1 conn, first write`,
    unit: "MB/s",
    ours: ours.write ?? null,
    refName,
    ref: ref.write ?? null,
    better: "higher",
    cpu: cpu("write"),
  });
  cfg.results.add({
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
    cfg.results.add({
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
    cfg.results.add({
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
      cfg.results.add({
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

export async function nbdSection(env: BenchEnv): Promise<void> {
  cfg = env;
  const missing = ["qemu-nbd", "nbdcopy", "fio"].filter((t) => !haveTool(t));
  if (missing.length) {
    cfg.results.note(`nbd section skipped: missing ${missing.join(", ")} (make apt-deps)`);
    return;
  }
  log("NBD reference: qemu-nbd (writeback page cache, as in real-components.md)");
  const qemu = await refSuite("qemu-nbd", false);
  log(
    "NBD reference for durable writes: qemu-nbd --cache=writethrough (fdatasync per write, like sheep)",
  );
  const qemuWt = await refSuite("qemu-nbd-writethrough", true);
  let kit: NbdFigures | null = null;
  if (cfg.nbdkit) {
    if (haveTool("nbdkit")) kit = await refSuite("nbdkit", false);
    else cfg.results.note("nbdkit not installed: no nbdkit reference");
  }
  for (const [nodes, copies] of [[1, 1], [3, 3]]) {
    const figs = await withCluster(
      await TestCluster.start(nodes, { nbd: true, format: { copies } }),
      async (c) => {
        await c.dogOk(["vdi", "create", "disk", String(cfg.fileSize)]);
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
