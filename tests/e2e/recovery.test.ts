// Issue 6 acceptance: re-replication after kill -9, rejoin with stale cleanup, rebalance on join,
// a second failure during recovery, recovery disabled then enabled.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { storeObjects, TestCluster } from "../lib/cluster.ts";
import { Ring } from "../../core/ring.ts";
import { makeNode } from "../../core/node.ts";
import { oidHex } from "../../core/oid.ts";

const MiB = 1024 * 1024;
const SIZE = 1024 * MiB; // the issue asks for 1 GiB

/** Vnode counts as the cluster computes them (auto vnodes follow each node's capacity). */
async function vnodeCounts(c: TestCluster, alive: number[]): Promise<Map<number, number>> {
  const out = await c.dogOk(["node", "list", "-r"], { node: alive[0] });
  const m = new Map<number, number>();
  for (const line of out.trim().split("\n")) {
    const [, hp, vn] = line.split(" ");
    m.set(Number(hp.split(":")[1]), Number(vn));
  }
  return m;
}

/** Every object present on `alive` nodes sits on exactly the nodes the ring of `alive` names. */
function placementReport(
  c: TestCluster,
  alive: number[],
  copies: number,
  vnodes: Map<number, number>,
): string[] {
  const nodes = alive.map((i) =>
    makeNode("127.0.0.1", c.nodes[i].port, {
      zone: c.nodes[i].zone,
      nrVnodes: vnodes.get(c.nodes[i].port) ?? 128,
    })
  );
  const ring = new Ring(nodes);
  const files = alive.map((i) => new Set(c.objectFiles(i)));
  const all = new Set<string>();
  files.forEach((f) => f.forEach((x) => all.add(x)));
  const bad: string[] = [];
  for (const name of all) {
    const oid = BigInt("0x" + name);
    const want = ring.placeObject(oid, copies).map((n) => n.port).sort().join(",");
    const have = alive.filter((_, k) => files[k].has(name)).map((i) => c.nodes[i].port).sort().join(
      ",",
    );
    if (want !== have) bad.push(`${oidHex(oid)}: want ${want} have ${have}`);
  }
  return bad;
}

function staleCount(c: TestCluster, i: number): number {
  const d = path.join(c.nodes[i].dir, "obj", ".stale");
  try {
    return fs.readdirSync(d).length;
  } catch {
    return 0;
  }
}

async function waitPlacement(
  c: TestCluster,
  alive: number[],
  copies: number,
  what: string,
  ms = 120_000,
): Promise<void> {
  let last: string[] = [];
  try {
    await c.waitFor(
      async () => {
        last = placementReport(c, alive, copies, await vnodeCounts(c, alive));
        return last.length === 0;
      },
      ms,
      what,
    );
  } catch (e) {
    throw new Error(
      `${(e as Error).message}\n${last.slice(0, 10).join("\n")} (${last.length} bad)`,
    );
  }
}

async function readAll(c: TestCluster, name: string, size: number, node: number): Promise<Buffer> {
  const r = await c.dog(["vdi", "read", name, "0", String(size)], { node, timeoutMs: 300_000 });
  if (r.code !== 0) throw new Error(`vdi read failed: ${r.stderr}`);
  return r.stdout;
}

describe("4 nodes, copies=3", () => {
  let c: TestCluster;
  const data = randomBytes(SIZE);

  beforeAll(async () => {
    c = await TestCluster.start(4, { format: { copies: 3 } });
    await c.dogOk(["vdi", "create", "big", String(SIZE)]);
    await c.dogOk(["vdi", "write", "big", "0", String(SIZE)], { input: data, timeoutMs: 600_000 });
  }, 600_000);
  afterAll(async () => {
    await c?.stop();
  });

  test("initial placement follows the ring", async () => {
    expect(placementReport(c, [0, 1, 2, 3], 3, await vnodeCounts(c, [0, 1, 2, 3]))).toEqual([]);
  });

  test("kill -9: objects return to 3 replicas on the survivors; data intact", async () => {
    await c.kill(3);
    await waitPlacement(c, [0, 1, 2], 3, "3 replicas on 3 survivors");
    const got = await readAll(c, "big", SIZE, 1);
    expect(Buffer.compare(got, data)).toBe(0);
    // Written while node 3 is away: its copies of these objects are outdated when it rejoins.
    const patch = randomBytes(32 * MiB);
    await c.dogOk(["vdi", "write", "big", String(100 * MiB), String(patch.length)], {
      node: 1,
      input: patch,
    });
    patch.copy(data, 100 * MiB);
  }, 300_000);

  test(
    "restart: rejoins, stale copies are removed, nobody holds what it does not own",
    async () => {
      await c.startNode(3);
      await waitPlacement(c, [0, 1, 2, 3], 3, "placement after rejoin");
      await c.waitFor(
        async () => [0, 1, 2, 3].every((i) => staleCount(c, i) === 0),
        60_000,
        "stale copies purged",
      );
      const got = await readAll(c, "big", SIZE, 3);
      expect(Buffer.compare(got, data)).toBe(0);
      // Its stale copies that still matched were put back, not fetched; the outdated ones were
      // fetched. Either way every object file on it equals another holder's copy.
      const done = c.logTail(3, 400).split("\n").filter((l) => l.includes("finished ("));
      const m = /finished \((\d+)\/(\d+), (\d+) from stale copies here\)/.exec(done.at(-1) ?? "");
      expect(m, done.join("\n")).not.toBeNull();
      const [total, revived] = [Number(m![2]), Number(m![3])];
      expect(revived).toBeGreaterThan(total / 2);
      expect(revived).toBeLessThan(total);
      const mine = storeObjects(c.nodes[3].dir);
      const others = [0, 1, 2].map((i) => storeObjects(c.nodes[i].dir));
      let compared = 0;
      for (const [name, p] of mine) {
        const other = others.find((o) => o.has(name))?.get(name);
        if (!other) continue;
        expect(fs.readFileSync(p).equals(fs.readFileSync(other)), name).toBe(true);
        compared++;
      }
      expect(compared).toBeGreaterThan(total / 2);
    },
    300_000,
  );

  test("a 5th node: objects move so the ring's placement holds", async () => {
    const i = await c.addNode({ zone: 4 });
    await waitPlacement(c, [0, 1, 2, 3, i], 3, "placement with 5 nodes");
    await c.waitFor(
      async () => [0, 1, 2, 3, i].every((k) => staleCount(c, k) === 0),
      60_000,
      "stale copies purged",
    );
    const got = await readAll(c, "big", SIZE, i);
    expect(Buffer.compare(got, data)).toBe(0);
  }, 300_000);

  test("a second node dies while recovering from the first: no data loss", async () => {
    await c.kill(4);
    await new Promise((r) => setTimeout(r, 300));
    await c.kill(0);
    await waitPlacement(c, [1, 2, 3], 3, "3 replicas after two failures");
    const got = await readAll(c, "big", SIZE, 2);
    expect(Buffer.compare(got, data)).toBe(0);
  }, 300_000);
});

describe("recovery disabled, then enabled", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await TestCluster.start(4, { format: { copies: 2 } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test("objects written while recovery is off converge once it is on", async () => {
    const a = randomBytes(24 * MiB);
    await c.dogOk(["vdi", "create", "v", "64M"]);
    await c.dogOk(["vdi", "write", "v", "0"], { input: a });
    const off = await c.dogOk(["cluster", "recover", "disable"]);
    expect(off).toContain("Cluster recovery: disable");
    await c.kill(3);
    const b = randomBytes(16 * MiB);
    await c.dogOk(["vdi", "write", "v", String(32 * MiB)], { input: b });
    await new Promise((r) => setTimeout(r, 1000));
    const on = await c.dogOk(["cluster", "recover", "enable"]);
    expect(on).toContain("Cluster recovery: enable");
    await waitPlacement(c, [0, 1, 2], 2, "placement after enabling recovery");
    const got = await readAll(c, "v", 64 * MiB, 0);
    expect(Buffer.compare(got.subarray(0, a.length), a)).toBe(0);
    expect(Buffer.compare(got.subarray(32 * MiB, 48 * MiB), b)).toBe(0);
  }, 300_000);
});

describe("client I/O while nodes die and join", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await TestCluster.start(4, { nbd: true, format: { copies: 3 } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test(
    "fio with verify over NBD keeps running through a kill -9 and a join: no error, nothing lost",
    async () => {
      const { spawn } = await import("node:child_process");
      const os = await import("node:os");
      await c.dogOk(["vdi", "create", "io", "256M"]);
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-fio-"));
      const args = [
        "--name=churn",
        "--ioengine=nbd",
        `--uri=nbd://127.0.0.1:${c.nodes[0].nbdPort}/io`,
        "--rw=randrw",
        "--bs=16k",
        "--iodepth=8",
        "--size=64m",
        "--time_based",
        "--runtime=12",
        "--verify=crc32c",
        "--verify_backlog=128",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=json",
      ];
      const fio = spawn("fio", args, { cwd: tmp, stdio: ["ignore", "pipe", "pipe"] });
      let out = "", err = "";
      fio.stdout!.on("data", (d) => (out += d));
      fio.stderr!.on("data", (d) => (err += d));
      const done = new Promise<number>((resolve) => fio.on("exit", (code) => resolve(code ?? 1)));
      await new Promise((r) => setTimeout(r, 3000));
      await c.kill(3);
      await new Promise((r) => setTimeout(r, 3000));
      await c.addNode({ zone: 4 });
      const code = await done;
      fs.rmSync(tmp, { recursive: true, force: true });
      const json = JSON.parse(out.slice(out.indexOf("{")));
      const job = json.jobs[0];
      expect({
        code,
        error: job.error,
        stderr: err.split("\n").filter((l) => /error|verify/i.test(l)),
      })
        .toEqual({ code: 0, error: 0, stderr: [] });
      expect(job.write.io_bytes).toBeGreaterThan(0);
      expect(job.read.io_bytes).toBeGreaterThan(0);
    },
    120_000,
  );
});

describe("full-cluster restart in the middle of recovery", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await TestCluster.start(4, { format: { copies: 2 } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test(
    "every sheep killed while recovering, all restarted: the cluster converges, data intact",
    async () => {
      const data = randomBytes(128 * MiB);
      await c.dogOk(["vdi", "create", "r", "128M"]);
      await c.dogOk(["vdi", "write", "r", "0"], { input: data, timeoutMs: 300_000 });
      // slow recovery down so that the plug is surely pulled in the middle of it
      for (const i of [0, 1, 2]) {
        await c.dogOk(["node", "recovery", "set-throttle", "1", "300"], {
          node: i,
        });
      }
      await c.kill(3);
      await c.waitFor(
        async () => /^\d+ 2 \[/m.test((await c.dog(["cluster", "info", "-r"])).stdout.toString()),
        30_000,
        "epoch 2",
      );
      await new Promise((r) => setTimeout(r, 500));
      // objects still missing a replica on the new ring: recovery is not finished
      const missing = placementReport(c, [0, 1, 2], 2, await vnodeCounts(c, [0, 1, 2])).length;
      expect(missing).toBeGreaterThan(0);
      await Promise.all([0, 1, 2].map((i) => c.kill(i)));
      for (const i of [0, 1, 2]) await c.startNode(i);
      await c.waitRunning();
      await waitPlacement(c, [0, 1, 2], 2, "placement after the restart");
      // every sheep knows the VDI, also one that does not store its inode
      for (const i of [0, 1, 2]) {
        await c.waitFor(
          async () =>
            (await c.dog(["vdi", "list", "-r", "r"], { node: i })).stdout.toString().includes(
              " r ",
            ),
          10_000,
          `node ${i} to know VDI r`,
        );
      }
      const got = await readAll(c, "r", data.length, 2);
      expect(Buffer.compare(got, data)).toBe(0);
    },
    300_000,
  );
});
