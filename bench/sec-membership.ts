// `make bench` section membership (bench/run.ts registers it).
import * as fs from "node:fs";
import * as path from "node:path";
import * as net from "node:net";
import { ROOT, sheepCommand, TestCluster } from "../tests/lib/cluster.ts";
import { dogArgv, fail, log, LogTail, median, now, quantile, run, sleep } from "./lib.ts";

import { type BenchEnv, withCluster } from "./env.ts";

/** Set by the entry point: sections run one at a time. */
let cfg!: BenchEnv;

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
    for (let k = 0; k < cfg.creates; k++) {
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
    for (let it = 0; it < cfg.iters; it++) {
      const tails = survivors.map((i) => new LogTail(path.join(c.nodes[i].dir, "sheep.log")));
      const { closed } = await closeWatcher(c.nodes[victim].port);
      const t0 = now();
      const seen = tails.map((t) => t.waitFor(/ left; epoch \d+/, 120_000));
      await c.kill(victim, "SIGKILL");
      const tc = await closed;
      if (tc !== null) exits.push(tc - t0);
      const got = await Promise.all(seen);
      if (got.some((g) => g === null)) {
        cfg.results.note(
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
        cfg.results.note(
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
    cfg.results.add({
      section: sec,
      metric: `kill -9 → new epoch on all survivors, median of ${kills.length}`,
      unit: "ms",
      ours: kills.length ? median(kills) : null,
      refName: killRef?.name ?? "TCP peer of the killed sheep sees the close",
      ref: killRef?.ms ?? median(exits),
      better: "lower",
    });
    cfg.results.add({
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
    cfg.results.add({
      section: sec,
      metric: `dog vdi create p50 of ${cfg.creates}`,
      unit: "ms",
      ours: median(creates),
      refName: "dog node list p50 (1 round trip)",
      ref: median(lists),
      better: "lower",
    });
    cfg.results.add({
      section: sec,
      metric: `dog vdi create p99 of ${cfg.creates}`,
      unit: "ms",
      ours: quantile(creates, 0.99),
      refName: "dog node list p99",
      ref: quantile(lists, 0.99),
      better: "lower",
    });
  });
}

export async function membershipSection(env: BenchEnv): Promise<void> {
  cfg = env;
  await membershipFor("local", undefined, null);

  // corosync: the driver and tests/lib/corosync.ts exist once others land them.
  const coroDriver = path.join(ROOT, "drivers", "corosync.ts");
  const coroLib = path.join(ROOT, "tests", "lib", "corosync.ts");
  if (!fs.existsSync(coroDriver) || !fs.existsSync(coroLib)) {
    cfg.results.note(
      "corosync driver or tests/lib/corosync.ts missing: corosync membership skipped",
    );
  } else {
    try {
      const lib = await import(coroLib);
      const { bridgeCandidates } = await import(coroDriver);
      const bridge = (bridgeCandidates() as string[]).some((p) => fs.existsSync(p));
      if (!lib.corosyncInstalled()) {
        cfg.results.note("corosync not installed: corosync membership skipped");
      } else if (!bridge) {
        cfg.results.note("drivers/cpg-bridge not built: corosync membership skipped");
      } else {
        const cs = await lib.startCorosync();
        try {
          await membershipFor("corosync", `corosync:${lib.uniqueGroup()}`, null);
        } finally {
          await cs.stop();
        }
      }
    } catch (e) {
      cfg.results.note(
        `corosync membership failed: ${(e as Error).message.split("\n").slice(0, 6).join(" / ")}`,
      );
    }
  }

  const zkDriver = path.join(ROOT, "drivers", "zookeeper.ts");
  const zkLib = path.join(ROOT, "tests", "lib", "zookeeper.ts");
  if (!fs.existsSync(zkDriver) || !fs.existsSync(zkLib)) {
    cfg.results.note(
      "zookeeper driver or tests/lib/zookeeper.ts missing: zookeeper membership skipped",
    );
  } else if (!fs.existsSync("/usr/share/java/zookeeper.jar")) {
    cfg.results.note("zookeeper not installed: zookeeper membership skipped");
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
      cfg.results.note(
        `zookeeper membership failed: ${(e as Error).message.split("\n").slice(0, 6).join(" / ")}`,
      );
    }
  }
}
