// `make bench` section recovery (bench/run.ts registers it).
import * as fs from "node:fs";
import * as path from "node:path";
import { TestCluster } from "../tests/lib/cluster.ts";
import {
  dogArgv,
  fail,
  log,
  LogTail,
  MB,
  MiB,
  now,
  objectSizes,
  replicaCounts,
  run,
  sleep,
  staleCount,
} from "./lib.ts";

import { type BenchEnv, mbps, withCluster } from "./env.ts";

/** Set by the entry point: sections run one at a time. */
let cfg!: BenchEnv;

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
  const bwPrefix = path.join(cfg.work, `bw-${label.replace(/\W+/g, "_")}`);
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
      `--size=${cfg.loadSize}`,
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
    await sleep(cfg.preKillMs);
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
    await sleep(cfg.preKillMs);
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
      cfg.results.note(
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

export async function recoverySection(env: BenchEnv): Promise<void> {
  cfg = env;
  const ref = await cfg.diskRef();
  await withCluster(await TestCluster.start(4, { nbd: true, format: { copies: 3 } }), async (c) => {
    const port0 = c.nodes[0].port;
    await c.dogOk(["vdi", "create", "big", String(cfg.recSize)]);
    const w = await run(dogArgv(port0, ["vdi", "write", "big", "0", String(cfg.recSize)]), {
      timeoutMs: 1_800_000,
      stdinFile: cfg.src,
    });
    if (w.code !== 0) throw fail("dog vdi write big", w);
    log(
      `recovery setup: ${cfg.recSize / MiB} MiB written to 4 nodes copies=3 at ${
        mbps(cfg.recSize, w.ms).toFixed(0)
      } MB/s`,
    );
    await c.dogOk(["vdi", "create", "load", String(cfg.loadSize)]);
    const wl = await run(dogArgv(port0, ["vdi", "write", "load", "0", String(cfg.loadSize)]), {
      timeoutMs: 600_000,
      stdinFile: cfg.src,
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
      cfg.results.add({
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
      cfg.results.add({
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
      cfg.results.add({
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
        dogArgv(c.nodes[i].port, [
          "node",
          "recovery",
          "set-throttle",
          cfg.throttle[0],
          cfg.throttle[1],
        ]),
        { timeoutMs: 30_000 },
      );
      if (r.code !== 0) cfg.results.note(`set-throttle on node ${i} failed: ${r.err.trim()}`);
    }
    for (const i of [0, 1, 2, 3]) {
      const g = await run(dogArgv(c.nodes[i].port, ["node", "recovery", "get-throttle"]), {
        timeoutMs: 30_000,
      });
      log(`throttle on node ${i}: ${(g.out + g.err).trim()}`); // dog prints it on stderr, as upstream
    }
    const how = `throttled ${cfg.throttle[0]} obj/${cfg.throttle[1]} ms per node`;
    const d = await recoveryCycle(c, victim, load, "loaded throttled");
    add(d, `re-replication after kill -9 under client load, ${how}`);
    clientRows(d, how);
  });
}
