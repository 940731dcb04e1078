// `make bench` section `scale`: how the cost grows with the work, as tables rather than one
// point. From 1 to 8 sheep: `dog vdi write` / `dog vdi read` throughput, recovery after kill -9
// of one sheep, and `dog vdi list`; from 1 to 10,000 VDIs (quick mode: 1,000): `dog vdi list`
// and `dog vdi create`. Every row is compared with the same figure at the smallest size, so
// ours/ref is the growth factor (1.0 = flat). One fresh cluster per sheep count.
import { TestCluster } from "../tests/lib/cluster.ts";
import {
  cpuSeconds,
  dogArgv,
  fail,
  log,
  MB,
  median,
  MiB,
  type Results,
  run,
  sleep,
} from "./lib.ts";

export interface ScaleOptions {
  results: Results;
  /** Random data (at least `size` bytes). */
  src: string;
  size: number;
  /** Sheep counts, smallest first. */
  nodes: number[];
  /** VDI counts, smallest first. */
  vdis: number[];
}

const SEC = "scale";

interface Point {
  write: number;
  read: number;
  writeCpu: number;
  list: number;
  recovery: number | null;
}

/** Milliseconds of `dog vdi list`, median of 5 runs. */
async function listMs(port: number): Promise<number> {
  const ms: number[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await run(dogArgv(port, ["vdi", "list"]), { timeoutMs: 300_000 });
    if (r.code !== 0) throw fail("dog vdi list", r);
    ms.push(r.ms);
  }
  return median(ms);
}

/** Waits until `dog node recovery` on `port` lists no node still recovering. */
async function recovered(port: number, timeoutMs = 600_000): Promise<void> {
  const t0 = performance.now();
  while (performance.now() - t0 < timeoutMs) {
    const r = await run(dogArgv(port, ["node", "recovery"]), { timeoutMs: 10_000 });
    const rows = r.out.trim().split("\n").filter((l) => /^\s*\d+\s/.test(l));
    if (r.code === 0 && rows.length === 0) return;
    await sleep(50);
  }
  throw new Error(`recovery did not finish in ${timeoutMs / 1000} s`);
}

/** Waits until node 0 lists `count` members. */
async function members(port: number, count: number): Promise<void> {
  for (let i = 0; i < 3000; i++) {
    const r = await run(dogArgv(port, ["node", "list", "-r"]), { timeoutMs: 10_000 });
    if (r.code === 0 && r.out.trim().split("\n").filter(Boolean).length === count) return;
    await sleep(20);
  }
  throw new Error(`node list never showed ${count} members`);
}

async function nodePoint(n: number, o: ScaleOptions): Promise<Point> {
  const copies = Math.min(3, n);
  const c = await TestCluster.start(n, { format: { copies } });
  try {
    const port = c.nodes[0].port;
    const pids = () => c.nodes.filter((x) => x.proc).map((x) => x.proc!.pid!);
    await c.dogOk(["vdi", "create", "s", String(o.size)]);
    const cpu0 = cpuSeconds(pids());
    const w = await run(dogArgv(port, ["vdi", "write", "s", "0", String(o.size)]), {
      timeoutMs: 900_000,
      stdinFile: o.src,
    });
    if (w.code !== 0) throw fail(`vdi write (${n} sheep)`, w);
    const writeCpu = cpuSeconds(pids()) - cpu0;
    const r = await run(dogArgv(port, ["vdi", "read", "s", "0", String(o.size)]), {
      timeoutMs: 900_000,
      stdoutFile: "/dev/null",
    });
    if (r.code !== 0) throw fail(`vdi read (${n} sheep)`, r);
    const list = await listMs(port);
    // recovery needs a survivor set that can hold every copy again: more sheep than copies
    let recovery: number | null = null;
    if (n > copies) {
      const t0 = performance.now();
      await c.kill(n - 1);
      await members(port, n - 1);
      await recovered(port);
      recovery = (performance.now() - t0) / 1000;
    }
    const p = {
      write: o.size / MB / (w.ms / 1000),
      read: o.size / MB / (r.ms / 1000),
      writeCpu,
      list,
      recovery,
    };
    log(`scale ${n} sheep copies=${copies}: ${JSON.stringify(p)}`);
    return p;
  } finally {
    await c.stop();
  }
}

/** Creates VDIs up to each count (4 dog processes at a time), timing list and create. */
async function vdiPoints(o: ScaleOptions): Promise<{ n: number; list: number; create: number }[]> {
  const c = await TestCluster.start(3, { format: { copies: 3 } });
  const out: { n: number; list: number; create: number }[] = [];
  try {
    const port = c.nodes[0].port;
    let have = 0;
    for (const n of o.vdis) {
      const t0 = performance.now();
      const todo = n - have;
      let next = have;
      const worker = async () => {
        while (next < n) {
          const i = next++;
          const r = await run(dogArgv(port, ["vdi", "create", `v${i}`, "4M"]), {
            timeoutMs: 60_000,
          });
          if (r.code !== 0) throw fail(`vdi create v${i}`, r);
        }
      };
      await Promise.all([worker(), worker(), worker(), worker()]);
      const create = todo > 0 ? todo / ((performance.now() - t0) / 1000) : 0;
      have = n;
      const list = await listMs(port);
      log(`scale ${n} VDIs: list ${list.toFixed(0)} ms, ${create.toFixed(1)} creates/s`);
      out.push({ n, list, create });
    }
  } finally {
    await c.stop();
  }
  return out;
}

export async function scaleBench(o: ScaleOptions): Promise<void> {
  const pts: [number, Point][] = [];
  for (const n of o.nodes) pts.push([n, await nodePoint(n, o)]);
  const [n0, p0] = pts[0];
  const rec0 = pts.find(([, p]) => p.recovery !== null);
  const mb = o.size / MiB;
  for (const [n, p] of pts) {
    const sheep = `${n} sheep copies=${Math.min(3, n)}`;
    const base = `${n0} sheep`;
    const row = (
      metric: string,
      unit: string,
      ours: number | null,
      ref: number | null,
      better: "higher" | "lower",
    ) =>
      o.results.add({
        section: SEC,
        metric: `${metric}, ${sheep}`,
        unit,
        ours,
        refName: base,
        ref,
        better,
      });
    row(`dog vdi write ${mb} MiB`, "MB/s", p.write, p0.write, "higher");
    row(
      `sheep CPU s per GiB written`,
      "s",
      p.writeCpu / (o.size / 2 ** 30),
      p0.writeCpu / (o.size / 2 ** 30),
      "lower",
    );
    row(`dog vdi read ${mb} MiB`, "MB/s", p.read, p0.read, "higher");
    row(`dog vdi list (1 VDI)`, "ms", p.list, p0.list, "lower");
    if (p.recovery !== null && rec0) {
      o.results.add({
        section: SEC,
        metric: `recovery after kill -9 of 1 sheep, ${mb} MiB, ${sheep}`,
        unit: "s",
        ours: p.recovery,
        refName: `${rec0[0]} sheep`,
        ref: rec0[1].recovery,
        better: "lower",
      });
    }
  }
  const vs = await vdiPoints(o);
  for (const v of vs) {
    const add = (
      metric: string,
      unit: string,
      ours: number,
      ref: number,
      better: "higher" | "lower",
    ) =>
      o.results.add({
        section: SEC,
        metric: `${metric}, ${v.n} VDIs`,
        unit,
        ours,
        refName: `${vs[0].n} VDIs`,
        ref,
        better,
      });
    add("dog vdi list, 3 sheep", "ms", v.list, vs[0].list, "lower");
    if (v.create > 0 && vs[0].create > 0) {
      add("dog vdi create (4 at a time)", "/s", v.create, vs[0].create, "higher");
    }
  }
}
