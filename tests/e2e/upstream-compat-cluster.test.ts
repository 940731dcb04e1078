// Join rules and vnodes as upstream C Sheepdog 1.0 has them (issue 16). The scenarios were run
// against the C binaries in shared/reference/c-sheepdog first; the expected outputs below are what
// they print (times aside).
import { afterAll, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { freePort, TestCluster } from "../lib/cluster.ts";

async function status(c: TestCluster, node: number): Promise<string> {
  const r = await c.dog(["cluster", "info"], { node, timeoutMs: 10_000 });
  return r.stdout.toString().split("\n")[0];
}

/** The epoch lines of `dog cluster info`: times cut, ports as node indexes in index order. */
async function epochLines(c: TestCluster, node: number): Promise<string[]> {
  const idx = new Map(c.nodes.map((n, i) => [String(n.port), i]));
  const out = await c.dogOk(["cluster", "info"], { node });
  return out.split("\n").filter((l) => /^\d{4}-\d\d-\d\d /.test(l)).map((l) => {
    const [, e, list] = /^\S+ \S+\s+(\d+) \[(.*)\]$/.exec(l)!;
    const nodes = list.split(", ").map((n) => n.split(":")).map(([, p, v]) => [idx.get(p)!, v]);
    nodes.sort((x, y) => Number(x[0]) - Number(y[0]));
    return `${e} [${nodes.map(([i, v]) => `${i}:${v}`).join(", ")}]`;
  });
}

async function latestEpoch(c: TestCluster, node: number): Promise<number> {
  return Number((await epochLines(c, node))[0]?.split(" ")[0] ?? 0);
}

/** Kills node i and waits until `alive` sees the epoch that follows. */
async function killStep(c: TestCluster, i: number, alive: number | null): Promise<void> {
  const before = alive === null ? 0 : await latestEpoch(c, alive);
  await c.kill(i);
  if (alive !== null) {
    await c.waitFor(async () => await latestEpoch(c, alive) === before + 1, 30_000, "next epoch");
  }
}

test(
  "whole-cluster restart in any order comes back when the last epoch's nodes are back",
  async () => {
    const c = await TestCluster.start(3);
    try {
      await c.waitFor(async () =>
        (await c.dogOk(["node", "list", "-r"])).trim().split("\n").length === 3
      );
      await c.dogOk(["cluster", "format", "-c", "2", "-b", "tree"]);
      await c.waitRunning();
      await c.dogOk(["vdi", "create", "a", "8M"]);
      await c.dogOk(["vdi", "write", "a", "0", "3"], { input: "hi\n" });
      await killStep(c, 2, 0); // epoch 2: 0 1
      await killStep(c, 1, 0); // epoch 3: 0
      await killStep(c, 0, null);
      // Reverse order: 2 (epoch 1) and 1 (epoch 2) wait; 0 (epoch 3, the last) completes it.
      await c.startNode(2);
      await c.startNode(1);
      await c.waitFor(async () => (await c.dog(["node", "list", "-r"], { node: 2 })).code === 0);
      expect(await status(c, 2)).toBe("Cluster status: Waiting for other nodes to join cluster");
      await c.startNode(0);
      await c.waitRunning();
      const history = [
        "4 [0:128, 1:128, 2:128]",
        "3 [0:128]",
        "2 [0:128, 1:128]",
        "1 [0:128, 1:128, 2:128]",
      ];
      for (const i of [0, 1, 2]) {
        await c.waitFor(async () => (await epochLines(c, i)).length === 4, 30_000, "epoch log");
        expect(await epochLines(c, i)).toEqual(history);
      }
      expect(await c.dogOk(["vdi", "read", "a", "0", "3"], { node: 2 })).toBe("hi\n");

      // A sheep that joins unformatted keeps the cluster's identity: after the others stop it is the
      // last epoch's only node, and alone it brings the cluster back.
      await killStep(c, 0, 1); // 5: 1 2
      await killStep(c, 1, 2); // 6: 2
      await killStep(c, 2, null);
      const fresh = await c.addNode({ zone: 3 }); // node 3, never formatted, starts first
      await c.startNode(0);
      await c.startNode(1);
      await c.waitFor(async () => (await c.dog(["node", "list", "-r"], { node: 1 })).code === 0);
      expect(await status(c, fresh)).toBe(
        "Cluster status: Waiting for other nodes to join cluster",
      );
      await c.startNode(2);
      await c.waitRunning();
      expect(await latestEpoch(c, fresh)).toBe(7);
      // It took the cluster's store driver (tree) with the identity.
      expect(fs.existsSync(path.join(c.nodes[fresh].dir, "obj", "meta"))).toBe(true);
      await killStep(c, 0, fresh); // 8
      await killStep(c, 1, fresh); // 9
      await killStep(c, 2, fresh); // 10: 3 alone
      await killStep(c, fresh, null);
      await c.startNode(fresh);
      await c.waitFor(
        async () => await status(c, fresh) === "Cluster status: running, auto-recovery enabled",
        30_000,
        "the last epoch's only node to serve alone",
      );
      for (const i of [0, 1, 2]) await c.startNode(i);
      await c.waitRunning();
      expect(await latestEpoch(c, 0)).toBe(13); // each joined the running cluster: 11, 12, 13
      for (const i of [0, 1, 2, fresh]) {
        expect(await c.dogOk(["vdi", "read", "a", "0", "3"], { node: i })).toBe("hi\n");
      }

      // Another cluster's sheep (its own format, so its own creation time) is refused and exits 1.
      // Upstream accepts it for one epoch, then it exits ("failed to join Sheepdog"), another epoch.
      const other = await c.addNode({ zone: 9, driver: `local:${path.join(c.root, "other")}` });
      await c.dogOk(["cluster", "format", "-c", "1"], { node: other });
      await c.kill(other);
      c.nodes[other].driver = c.nodes[0].driver;
      await c.startNode(other).catch(() => {}); // it may exit before its port opens
      await c.waitFor(async () => !c.isRunning(other), 30_000, "the foreign sheep to exit");
      expect((await c.exitStatus(other))?.code).toBe(1);
      expect(fs.readFileSync(c.nodes[other].logFile, "utf8")).toContain(
        "sheep: failed to join the cluster: Creation times differ\n",
      );
      expect(await latestEpoch(c, 0)).toBe(13); // no epoch came and went with it
      expect((await c.dogOk(["node", "list", "-r"])).trim().split("\n").length).toBe(4);
    } finally {
      await c.stop();
    }
  },
  300_000,
);

const mounts: string[] = [];
function unmountAll(): void {
  for (const m of mounts.splice(0)) {
    try {
      execFileSync("umount", ["-l", m]);
    } catch { /* already gone */ }
  }
}
afterAll(unmountAll);

test("auto vnodes follow each sheep's exact capacity (not whole GiB)", async () => {
  const c = TestCluster.create();
  try {
    // 1.5 GiB, 2.5 GiB and 1000 MiB disks: upstream gives 116, 193 and 75 vnodes (whole GiB would
    // be 96, 192, 96 ... and 1000 MiB is under one).
    for (const [i, mb] of [1536, 2560, 1000].entries()) {
      const dir = path.join(c.root, `n${i}`);
      const obj = path.join(dir, "obj");
      fs.mkdirSync(obj, { recursive: true });
      execFileSync("mount", ["-t", "tmpfs", "-o", `size=${mb}m`, "tmpfs", obj]);
      mounts.push(obj);
      await c.addNode({ port: await freePort(), zone: i, dir });
    }
    // [node index, vnodes] in index order (the list is in port order)
    const vnodes = async () =>
      (await c.dogOk(["node", "list", "-r"])).trim().split("\n").map((l) => l.split(" "))
        .map((f) => [c.nodes.findIndex((n) => f[1].endsWith(`:${n.port}`)), f[2]].join(":"))
        .sort();
    await c.waitFor(async () => (await vnodes()).length === 3);
    expect(await vnodes()).toEqual(["0:116", "1:193", "2:75"]);
    await c.dogOk(["cluster", "format", "-c", "2"]);
    await c.waitRunning();
    expect(await epochLines(c, 0)).toEqual(["1 [0:116, 1:193, 2:75]"]);
    const info = await c.dogOk(["cluster", "info", "-v"]);
    expect(info).toContain("Cluster vnodes strategy: auto\nCluster vnode mode: node\n");
    // Fixed vnodes cannot be set on an auto cluster: upstream's message and exit status 255.
    const set = await c.dog(["node", "vnodes", "set", "100"]);
    expect([set.code, set.stderr]).toEqual([255, "Failed to execute request\n"]);
    // A new sheep with -V cannot join the auto cluster.
    const fixed = await c.addNode({ port: await freePort(), zone: 3, extra: ["-V", "50"] })
      .catch(() => c.nodes.length - 1);
    await c.waitFor(async () => !c.isRunning(fixed), 30_000, "the fixed sheep to be refused");
    expect((await c.exitStatus(fixed))?.code).toBe(1);
    expect(fs.readFileSync(c.nodes[fixed].logFile, "utf8")).toContain(
      "sheep: failed to join the cluster: vnodes strategy unmatch. cluster:auto, joined:fixed\n",
    );
    // Restarted with -V, a sheep of an auto cluster refuses to start.
    await c.kill(1);
    c.nodes[1].extra = ["-V", "32"];
    await c.startNode(1).catch(() => {});
    await c.waitFor(async () => !c.isRunning(1), 30_000, "the sheep to refuse");
    expect((await c.exitStatus(1))?.code).toBe(1);
    expect(fs.readFileSync(path.join(c.nodes[1].dir, "sheep.log"), "utf8")).toContain(
      "Designation of before a restart and a vnodes option is different.",
    );
  } finally {
    for (let i = 0; i < c.nodes.length; i++) await c.kill(i);
    unmountAll();
    await c.stop();
  }
}, 120_000);

test(
  "fixed vnodes: sheep -V, format -V checks, node vnodes set, strategy in cluster info",
  async () => {
    const c = TestCluster.create();
    try {
      await c.addNode({ port: await freePort(), zone: 0 });
      await c.addNode({ port: await freePort(), zone: 1, extra: ["-V", "64"] });
      await c.waitFor(async () =>
        (await c.dogOk(["node", "list", "-r"])).trim().split("\n").length === 2
      );
      const fmt = async (...a: string[]) => {
        const r = await c.dog(["cluster", "format", "-c", "2", ...a]);
        return [r.code, r.stderr];
      };
      // One auto and one fixed sheep: neither strategy fits both.
      expect(await fmt()).toEqual([
        1,
        "Need to specify the option of '-V', because there are vnode strategy of sheep is fixed in the cluster\n",
      ]);
      expect(await fmt("-V")).toEqual([
        1,
        "Can not apply the option of '-V', because there are vnode strategy of sheep is auto in the cluster\n",
      ]);
      await c.kill(0);
      c.nodes[0].extra = ["-V", "200"];
      await c.startNode(0);
      await c.waitFor(async () =>
        (await c.dogOk(["node", "list", "-r"])).trim().split("\n").length === 2
      );
      expect(await fmt()).toEqual([
        1,
        "Need to specify the option of '-V', because there are vnode strategy of sheep is fixed in the cluster\n",
      ]);
      expect(await fmt("-V")).toEqual([0, ""]);
      await c.waitRunning();
      const info = await c.dogOk(["cluster", "info", "-v"]);
      expect(info).toContain("Cluster vnodes strategy: fixed\nCluster vnode mode: node\n");
      expect(await epochLines(c, 0)).toEqual(["1 [0:200, 1:64]"]);

      const set = async (...a: string[]) => {
        const r = await c.dog(["node", "vnodes", "set", ...a]);
        return [r.code, r.stderr, r.stdout.toString()];
      };
      expect(await set("100")).toEqual([0, "", ""]);
      await c.waitFor(async () => (await epochLines(c, 1)).length === 2, 30_000, "epoch 2");
      expect(await epochLines(c, 1)).toEqual(["2 [0:100, 1:64]", "1 [0:200, 1:64]"]);
      const bad = (
        s: string,
      ) => [64, `Invalid number of vnodes '${s}': must be an integer between 1 and 65535\n`, ""];
      for (const s of ["0", "65536", "abc"]) expect(await set(s)).toEqual(bad(s));
      const usage = await set();
      expect(usage[0]).toBe(64);
      expect(usage[2]).toStartWith(
        "Usage: dog node vnodes set [-a address] [-p port] [-h] <num of vnodes>\nOptions:\n",
      );
      // Restarted without -V, a sheep of a fixed cluster refuses to start.
      await c.kill(1);
      c.nodes[1].extra = [];
      await c.startNode(1).catch(() => {});
      await c.waitFor(async () => !c.isRunning(1), 30_000, "the sheep to refuse");
      expect((await c.exitStatus(1))?.code).toBe(1);
      // A new sheep without -V cannot join the fixed cluster (upstream: admitted, then it exits).
      const auto = await c.addNode({ port: await freePort(), zone: 3 }).catch(() =>
        c.nodes.length - 1
      );
      await c.waitFor(async () => !c.isRunning(auto), 30_000, "the auto sheep to be refused");
      expect((await c.exitStatus(auto))?.code).toBe(1);
      expect(fs.readFileSync(c.nodes[auto].logFile, "utf8")).toContain(
        "sheep: failed to join the cluster: vnodes strategy unmatch. cluster:fixed, joined:auto\n",
      );
      expect(await epochLines(c, 0)).toEqual(["3 [0:100]", "2 [0:100, 1:64]", "1 [0:200, 1:64]"]);
      // A gateway has no vnodes to set.
      const gw = await c.addNode({ port: await freePort(), zone: 2, extra: ["-g"] });
      await c.waitFor(async () =>
        (await c.dogOk(["node", "list", "-r"])).trim().split("\n").length === 2
      );
      const g = await c.dog(["node", "vnodes", "set", "10"], { node: gw });
      expect([g.code, g.stderr]).toEqual([255, "Failed to execute request\n"]);
    } finally {
      await c.stop();
    }
  },
  120_000,
);

test("cluster recover force: a waiting cluster serves with the sheep present", async () => {
  const c = await TestCluster.start(3, { format: { copies: 2 } });
  try {
    await c.dogOk(["vdi", "create", "a", "8M"]);
    await c.dogOk(["vdi", "write", "a", "0", "3"], { input: "hi\n" });
    await c.dogOk(["cluster", "shutdown"]);
    for (const i of [0, 1, 2]) await c.waitFor(async () => !c.isRunning(i), 30_000, "shutdown");
    await c.startNode(0);
    await c.startNode(1);
    await c.waitFor(async () => (await c.dog(["node", "list", "-r"], { node: 1 })).code === 0);
    expect(await status(c, 0)).toBe("Cluster status: Waiting for other nodes to join cluster");
    const force = () => c.dog(["cluster", "recover", "force"], { input: "yes\n" });
    expect((await force()).code).toBe(0);
    await c.waitRunning();
    for (const i of [0, 1]) {
      expect(await epochLines(c, i)).toEqual(["2 [0:128, 1:128]", "1 [0:128, 1:128, 2:128]"]);
    }
    const again = await force();
    expect([again.code, again.stderr]).toEqual([
      1,
      "failed to execute request, Cluster is running/halted and cannot be force recovered\n",
    ]);
    expect(await c.dogOk(["vdi", "read", "a", "0", "3"])).toBe("hi\n");
    await c.startNode(2); // the missing one comes back into the running cluster
    await c.waitFor(async () => await latestEpoch(c, 2) === 3, 30_000, "epoch 3");
    expect(await epochLines(c, 2)).toEqual([
      "3 [0:128, 1:128, 2:128]",
      "2 [0:128, 1:128]",
      "1 [0:128, 1:128, 2:128]",
    ]);
    expect(await c.dogOk(["vdi", "read", "a", "0", "3"], { node: 2 })).toBe("hi\n");

    // Waiting in an epoch a joiner brought (not in this sheep's own log): refused, as upstream.
    await killStep(c, 0, 1); // 4: 1 2
    await killStep(c, 1, 2); // 5: 2
    await killStep(c, 2, null);
    await c.startNode(0); // epoch 3 ...
    await c.startNode(1); // ... takes node 1's epoch 4, which node 0 never logged
    await c.waitFor(async () => (await c.dog(["node", "list", "-r"], { node: 1 })).code === 0);
    const refused = await force();
    expect([refused.code, refused.stderr]).toEqual([
      1,
      "failed to execute request, Cluster is running/halted and cannot be force recovered\n",
    ]);
    expect(await status(c, 0)).toBe("Cluster status: Waiting for other nodes to join cluster");
    await c.startNode(2);
    await c.waitRunning();
    expect(await latestEpoch(c, 0)).toBe(6);
  } finally {
    await c.stop();
  }
}, 180_000);
