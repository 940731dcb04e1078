// The zookeeper membership driver against Debian's ZooKeeper: appliance scenario, ZooKeeper
// outages shorter than the session timeout, session expiry of a stopped sheep, kill -9 and restart,
// whole-cluster restart, clusters sharing one ZooKeeper, concurrent cluster operations, queue
// purging and bad configuration.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import zookeeper from "node-zookeeper-client";
import * as net from "node:net";
import { TestCluster } from "../lib/cluster.ts";
import { describeWith } from "../lib/components.ts";
import { startZookeeper, type ZookeeperServer } from "../lib/zookeeper.ts";
import { createZookeeperDriver } from "../../drivers/zookeeper.ts";
import { parseZookeeperOption } from "../../drivers/zookeeper-session.ts";
import type { DriverHandlers } from "../../drivers/driver.ts";
import { makeNode } from "../../core/node.ts";

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** n sheep on the zookeeper driver, formatted (the harness waits until all of them are members). */
function startZkCluster(n: number, driver: string, copies: number): Promise<TestCluster> {
  return TestCluster.start(n, { driver, format: { copies } });
}

/** Ports listed by `dog node list -r` on node i. */
async function nodePorts(c: TestCluster, i: number): Promise<number[]> {
  const r = await c.dog(["node", "list", "-r"], { node: i, timeoutMs: 10_000 });
  if (r.code !== 0) return [];
  return r.stdout.toString().trim().split("\n").filter(Boolean).map((l) =>
    Number(l.split(" ")[1].split(":")[1])
  );
}

/** Waits until every running node lists exactly the running nodes' ports (or `count` of them). */
async function waitMembers(c: TestCluster, count: number, timeoutMs = 30_000): Promise<void> {
  const running = c.nodes.map((_, i) => i).filter((i) => c.isRunning(i));
  const want = running.map((i) => c.nodes[i].port).sort();
  expect(want.length).toBe(count);
  for (const i of running) {
    await c.waitFor(
      async () => {
        const ports = (await nodePorts(c, i)).sort();
        return JSON.stringify(ports) === JSON.stringify(want);
      },
      timeoutMs,
      `node ${i} to list ports ${want.join(",")}`,
    );
  }
}

/** Latest epoch in `dog cluster info -r` on node i (0 when unknown). */
async function epochOf(c: TestCluster, i: number): Promise<number> {
  const r = await c.dog(["cluster", "info", "-r"], { node: i, timeoutMs: 10_000 });
  const m = /^\S+ (\d+) \[/m.exec(r.stdout.toString());
  return m ? Number(m[1]) : 0;
}

/** Waits until every running node reports the same latest epoch, greater than `above`; returns it. */
async function waitEpochConverged(
  c: TestCluster,
  above: number,
  timeoutMs = 30_000,
): Promise<number> {
  let epoch = 0;
  await c.waitFor(
    async () => {
      const es = await Promise.all(
        c.nodes.map((_, i) => i).filter((i) => c.isRunning(i)).map((i) => epochOf(c, i)),
      );
      epoch = es[0];
      return es.every((e) => e === es[0]) && es[0] > above;
    },
    timeoutMs,
    `epochs to converge above ${above}`,
  );
  return epoch;
}

async function readBack(
  c: TestCluster,
  name: string,
  off: number,
  data: Buffer,
  node: number,
): Promise<void> {
  const r = await c.dog(["vdi", "read", name, String(off), String(data.length)], { node });
  expect(r.code).toBe(0);
  expect(r.stdout.length).toBe(data.length);
  expect(Buffer.compare(r.stdout, data)).toBe(0);
}

/** VDI ids by name from `dog vdi list -r` (raw row: marker name id size used shared time vid ...). */
async function vids(c: TestCluster, node = 0): Promise<Map<string, number>> {
  const out = await c.dogOk(["vdi", "list", "-r"], { node });
  const m = new Map<string, number>();
  for (const l of out.trim().split("\n").filter(Boolean)) {
    const f = l.split(" ");
    if (f[0] === "=") m.set(f[1], parseInt(f[7], 16));
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// A tiny ZooKeeper client for looking at the znodes the sheep maintain.

interface Zk {
  children(path: string): Promise<string[]>;
  close(): void;
}

async function zkClient(hosts: string): Promise<Zk> {
  // deno-lint-ignore no-explicit-any
  const cl: any = zookeeper.createClient(hosts, { sessionTimeout: 10_000 });
  cl.connect();
  await new Promise((r) => cl.once("connected", r));
  return {
    children: (p) =>
      new Promise((resolve, reject) =>
        cl.getChildren(p, (e: Error | null, k: string[]) => (e ? reject(e) : resolve(k)))
      ),
    close: () => cl.close(),
  };
}

// ---------------------------------------------------------------------------------------------

describeWith("zookeeper", "zookeeper: 3 nodes, copies=3", () => {
  let zk: ZookeeperServer;
  let c: TestCluster;
  const TIMEOUT = 8000;
  const data = randomBytes(20 * MiB);
  const small = randomBytes(MiB + 4321);
  const OFF = 3 * MiB;

  beforeAll(async () => {
    zk = await startZookeeper();
    c = await startZkCluster(3, `zookeeper:${zk.hosts},timeout=${TIMEOUT}`, 3);
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
    await zk?.stop();
  });

  test("format, vdi create, write and read back through every node", async () => {
    const info = await c.dogOk(["cluster", "info"]);
    expect(info.split("\n")[0]).toBe("Cluster status: running, auto-recovery enabled");
    expect(info).toMatch(
      / {6}1 \[127\.0\.0\.1:\d+:128, 127\.0\.0\.1:\d+:128, 127\.0\.0\.1:\d+:128\]/,
    );
    await c.dogOk(["vdi", "create", "alpha", "256M"]);
    await c.dogOk(["vdi", "write", "alpha", String(OFF), String(data.length)], { input: data });
    for (const node of [0, 1, 2]) await readBack(c, "alpha", OFF, data, node);
  }, 120_000);

  test("the znodes follow upstream's layout", async () => {
    const z = await zkClient(zk.hosts);
    try {
      const members = (await z.children("/sheepdog/member")).sort();
      expect(members).toEqual(c.nodes.map((n) => `IPv4 ip:127.0.0.1 port:${n.port}`).sort());
      expect((await z.children("/sheepdog/queue_pos")).length).toBe(3);
      expect((await z.children("/sheepdog/master")).length).toBe(3);
      expect((await z.children("/sheepdog/queue")).length).toBeGreaterThan(0);
    } finally {
      z.close();
    }
  });

  test("ZooKeeper down for less than the session timeout: nothing happens", async () => {
    const before = await epochOf(c, 0);
    await zk.kill();
    await sleep(2000);
    await zk.restart();
    // Give the clients time to reconnect with their sessions, and the sessions time to expire
    // if they had been lost.
    await sleep(TIMEOUT + 2000);
    for (const i of [0, 1, 2]) expect(c.isRunning(i)).toBe(true);
    for (const i of [0, 1, 2]) expect(await epochOf(c, i)).toBe(before);
    await waitMembers(c, 3);
    await c.dogOk(["vdi", "create", "after-zk-restart", "16M"], { node: 1 });
    await readBack(c, "alpha", OFF, data, 2);
    for (let i = 0; i < 3; i++) {
      expect(fs.readFileSync(c.nodes[i].logFile, "utf8")).not.toContain("session expired");
    }
  }, 120_000);

  test("a sheep stopped past its session timeout leaves, then notices and rejoins", async () => {
    const before = await epochOf(c, 0);
    const p = c.nodes[2].proc!;
    p.kill("SIGSTOP");
    try {
      // The others see it leave once ZooKeeper expires its session.
      await c.waitFor(
        async () =>
          JSON.stringify(await nodePorts(c, 0)) ===
            JSON.stringify([c.nodes[0].port, c.nodes[1].port].sort()),
        TIMEOUT + 15_000,
        "node 0 to drop the stopped node",
      );
      expect(await epochOf(c, 0)).toBeGreaterThan(before);
      await readBack(c, "alpha", OFF, data, 1);
      // A VDI created while it is away (2 nodes left, copies=3: written to both).
      await c.dogOk(["vdi", "create", "while-away", "16M"], { node: 0 });
      await c.dogOk(["vdi", "write", "while-away", "0", String(small.length)], {
        node: 1,
        input: small,
      });
    } finally {
      p.kill("SIGCONT");
    }
    await waitMembers(c, 3);
    await waitEpochConverged(c, before + 1);
    expect(fs.readFileSync(c.nodes[2].logFile, "utf8")).toContain("session expired");
    expect(c.isRunning(2)).toBe(true);
    await readBack(c, "alpha", OFF, data, 2);
    // It learned about the VDI created while it was away (the broadcasts it missed are delivered
    // before its new JOIN), and can read it.
    const v = await vids(c, 2);
    expect(v.has("while-away")).toBe(true);
    expect(v.has("alpha")).toBe(true);
    await readBack(c, "while-away", 0, small, 2);
  }, 180_000);

  test("kill -9 of one sheep: new epoch, data reads through the survivors", async () => {
    const before = await epochOf(c, 0);
    await c.kill(2, "SIGKILL");
    await c.waitFor(
      async () => (await epochOf(c, 0)) > before,
      TIMEOUT + 15_000,
      "a new epoch after the kill",
    );
    await waitMembers(c, 2);
    for (const node of [0, 1]) await readBack(c, "alpha", OFF, data, node);
    const info = await c.dogOk(["cluster", "info"]);
    expect(info).toMatch(
      new RegExp(` ${before + 1} \\[127\\.0\\.0\\.1:\\d+:128, 127\\.0\\.0\\.1:\\d+:128\\]`),
    );
  }, 120_000);

  test("the killed sheep restarts and rejoins at once", async () => {
    await c.startNode(2);
    await waitMembers(c, 3, 15_000);
    await readBack(c, "alpha", OFF, data, 2);
  }, 60_000);

  test("kill -9 and immediate restart: no wait for the old session to time out", async () => {
    const t0 = Date.now();
    await c.kill(1, "SIGKILL");
    await c.startNode(1);
    await waitMembers(c, 3, TIMEOUT);
    // The new incarnation removed its stale znodes, so this took less than the session timeout.
    expect(Date.now() - t0).toBeLessThan(TIMEOUT);
    await waitEpochConverged(c, 0);
    await readBack(c, "alpha", OFF, data, 1);
  }, 60_000);

  test("restart every sheep at once: the cluster comes back with the same data", async () => {
    const vBefore = await vids(c);
    await Promise.all([0, 1, 2].map((i) => c.kill(i, "SIGKILL")));
    await Promise.all([0, 1, 2].map((i) => c.startNode(i)));
    await c.waitRunning(60_000);
    await waitMembers(c, 3);
    for (const node of [0, 1, 2]) await readBack(c, "alpha", OFF, data, node);
    expect(await vids(c, 1)).toEqual(vBefore);
  }, 180_000);
});

describeWith(
  "zookeeper",
  "zookeeper: clusters sharing one ZooKeeper, concurrency, queue purging",
  () => {
    let zk: ZookeeperServer;
    let a: TestCluster;
    let b: TestCluster;

    beforeAll(async () => {
      zk = await startZookeeper();
      a = await startZkCluster(3, `zookeeper:${zk.hosts}/alpha,timeout=10000`, 2);
      b = await startZkCluster(2, `zookeeper:${zk.hosts}/beta,timeout=10000`, 2);
    }, 120_000);
    afterAll(async () => {
      await a?.stop();
      await b?.stop();
      await zk?.stop();
    });

    test("two clusters with different ids do not see each other", async () => {
      expect((await nodePorts(a, 0)).sort()).toEqual(a.nodes.map((n) => n.port).sort());
      expect((await nodePorts(b, 1)).sort()).toEqual(b.nodes.map((n) => n.port).sort());
      await a.dogOk(["vdi", "create", "only-in-a", "8M"]);
      await b.dogOk(["vdi", "create", "only-in-b", "8M"]);
      expect([...(await vids(a, 2)).keys()]).toEqual(["only-in-a"]);
      expect([...(await vids(b, 0)).keys()]).toEqual(["only-in-b"]);
      const z = await zkClient(zk.hosts);
      try {
        expect((await z.children("/")).sort()).toEqual(["alpha", "beta", "zookeeper"]);
        expect((await z.children("/alpha/member")).length).toBe(3);
        expect((await z.children("/beta/member")).length).toBe(2);
      } finally {
        z.close();
      }
    }, 60_000);

    test("20 parallel creates through different sheep all succeed with distinct ids", async () => {
      const names = Array.from({ length: 20 }, (_, i) => `par${i}`);
      const rs = await Promise.all(
        names.map((n, i) => a.dog(["vdi", "create", n, "4M"], { node: i % 3 })),
      );
      for (const r of rs) {
        expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
      }
      for (const node of [0, 1, 2]) {
        const v = await vids(a, node);
        const ids = names.map((n) => v.get(n));
        expect(ids.every((x) => typeof x === "number" && x > 0)).toBe(true);
        expect(new Set(ids).size).toBe(20);
      }
    }, 120_000);

    test("10 parallel creates of the same name: exactly one succeeds", async () => {
      const rs = await Promise.all(
        Array.from(
          { length: 10 },
          (_, i) => a.dog(["vdi", "create", "same", "4M"], { node: i % 3 }),
        ),
      );
      expect(rs.filter((r) => r.code === 0).length).toBe(1);
      for (const r of rs.filter((r) => r.code !== 0)) {
        expect(r.stderr).toContain("VDI exists already");
      }
      const rows = (await a.dogOk(["vdi", "list", "-r"])).split("\n").filter((l) =>
        l.split(" ")[1] === "same"
      );
      expect(rows.length).toBe(1);
    }, 120_000);

    test("processed queue znodes are deleted", async () => {
      // Enough cluster operations that the queue would otherwise hold well over a hundred events.
      for (let round = 0; round < 4; round++) {
        const rs = await Promise.all(
          Array.from(
            { length: 15 },
            (_, i) => a.dog(["vdi", "create", `q${round}-${i}`, "4M"], { node: i % 3 }),
          ),
        );
        for (const r of rs) expect(r.code).toBe(0);
      }
      const z = await zkClient(zk.hosts);
      try {
        await a.waitFor(
          async () => (await z.children("/alpha/queue")).length <= 40,
          30_000,
          "the alpha queue to be purged",
        );
      } finally {
        z.close();
      }
      expect((await vids(a, 1)).size).toBe(20 + 1 + 1 + 60);
    }, 180_000);
  },
);

describe("zookeeper: bad configuration", () => {
  async function expectStartupFailure(driver: string, message: string | RegExp): Promise<void> {
    const c = TestCluster.create(driver);
    try {
      const t0 = Date.now();
      let i = -1;
      try {
        i = await c.addNode();
      } catch {
        i = c.nodes.length - 1; // exited before its port opened
      }
      let st = await c.exitStatus(i);
      while (!st && Date.now() - t0 < 15_000) {
        await sleep(100);
        st = await c.exitStatus(i);
      }
      expect(st).not.toBeNull();
      expect(st!.code).not.toBe(0);
      expect(Date.now() - t0).toBeLessThan(15_000);
      expect(fs.readFileSync(c.nodes[i].logFile, "utf8")).toMatch(message);
    } finally {
      await c.stop();
    }
  }

  test("unreachable ZooKeeper: the sheep exits non-zero within 15 s", async () => {
    await expectStartupFailure(
      "zookeeper:127.0.0.1:1",
      /cannot connect to ZooKeeper at 127\.0\.0\.1:1/,
    );
  }, 30_000);

  test("empty option: rejected", async () => {
    await expectStartupFailure(
      "zookeeper:",
      /Invalid cluster driver 'zookeeper:'|no ZooKeeper server/,
    );
  }, 30_000);

  test("bad port, cluster id and timeout: rejected with a clear message", async () => {
    await expectStartupFailure("zookeeper:127.0.0.1:99999", /zookeeper driver: invalid port/);
    await expectStartupFailure("zookeeper:127.0.0.1:2181/", /zookeeper driver: invalid cluster id/);
    await expectStartupFailure(
      "zookeeper:127.0.0.1:2181,timeout=soon",
      /zookeeper driver: invalid timeout 'soon'/,
    );
  }, 60_000);
});

describe("zookeeper: option parsing", () => {
  test("defaults, cluster id, timeout, several servers", () => {
    expect(parseZookeeperOption("127.0.0.1:2181")).toEqual({
      servers: [{ host: "127.0.0.1", port: 2181 }],
      connect: "127.0.0.1:2181",
      base: "/sheepdog",
      timeout: 30000,
    });
    const o = parseZookeeperOption("zk1:2181,zk2:2182,10.0.0.3:2183/prod/east,timeout=5000");
    expect(o.connect).toBe("zk1:2181,zk2:2182,10.0.0.3:2183");
    expect(o.base).toBe("/prod/east");
    expect(o.timeout).toBe(5000);
    expect(parseZookeeperOption("h:1/x").base).toBe("/x");
  });

  test("bad syntax throws a clear error", () => {
    for (
      const [opt, msg] of [
        ["", "no ZooKeeper server"],
        ["host", "invalid server 'host'"],
        ["host:", "invalid server"],
        [":2181", "invalid server"],
        ["h:0", "invalid port"],
        ["h:70000", "invalid port"],
        ["h:1,timeout=0", "invalid timeout"],
        ["h:1,timeout=1.5", "invalid timeout"],
        ["h:1/", "invalid cluster id"],
        ["h:1/a//b", "invalid cluster id"],
        ["h:1/a b", "invalid cluster id"],
        ["h:1/zookeeper", "reserved"],
        ["h:1/x,h2:2", "after the cluster id"],
        ["[::1]:2181", "invalid server"],
      ] as const
    ) {
      expect(() => parseZookeeperOption(opt)).toThrow(msg);
    }
  });
});

describeWith("zookeeper", "zookeeper: a connection stuck in the handshake is retried", () => {
  // ZooKeeper 3.8 can accept a connection while it starts and then neither answer nor close it;
  // a blackholing proxy reproduces that. The session must survive a 3 s blackout.
  test("blackout shorter than the session timeout: no expiry, events keep flowing", async () => {
    const zk = await startZookeeper();
    let hole = false;
    const socks = new Set<net.Socket>();
    const proxy = net.createServer((c) => {
      socks.add(c);
      c.on("close", () => socks.delete(c));
      c.on("error", () => {});
      if (hole) return;
      const u = net.connect(zk.port, "127.0.0.1");
      socks.add(u);
      u.on("error", () => c.destroy());
      u.on("close", () => {
        socks.delete(u);
        c.destroy();
      });
      c.on("close", () => u.destroy());
      c.pipe(u);
      u.pipe(c);
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", () => r()));
    const port = (proxy.address() as net.AddressInfo).port;
    const events: string[] = [];
    let joined!: () => void;
    const isJoined = new Promise<void>((r) => (joined = r));
    const d = createZookeeperDriver(`127.0.0.1:${port},timeout=6000`);
    const h: DriverHandlers = {
      join: (_n, _m, o) => ({ accept: true, opaque: o }),
      accept: () => joined(),
      rejected: () => events.push("rejected"),
      leave: () => void events.push("leave"),
      notify: (_s, m) => void events.push(`notify ${m}`),
      block: () => false,
      updateNode: () => {},
      fatal: (r) => events.push(`fatal ${r}`),
    };
    try {
      await d.init(h);
      await d.join(makeNode("127.0.0.1", 7000), Buffer.from("x"));
      await isJoined;
      hole = true;
      for (const x of socks) x.destroy();
      await sleep(3000);
      hole = false;
      await sleep(8000); // past the session timeout
      await d.notify(Buffer.from("after"));
      const deadline = Date.now() + 5000;
      while (!events.includes("notify after") && Date.now() < deadline) await sleep(50);
      expect(events).toEqual(["notify after"]);
    } finally {
      await d.close();
      proxy.close();
      for (const x of socks) x.destroy();
      await zk.stop();
    }
  }, 60_000);
});
