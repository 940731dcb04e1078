// The corosync membership driver against a real corosync 3 on 127.0.0.1: the appliance scenario,
// failures (kill -9 of a sheep, of its cpg-bridge, of corosync itself), concurrent cluster ops,
// and a clear startup error when corosync is not running.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { freePort, runDog, TestCluster } from "../lib/cluster.ts";
import { type Corosync, corosyncInstalled, corosyncReachable, startCorosync, uniqueGroup } from "../lib/corosync.ts";
import { bridgeCandidates } from "../../drivers/corosync.ts";

const MiB = 1024 * 1024;
const installed = corosyncInstalled();
const bridgeBuilt = bridgeCandidates().some((p) => fs.existsSync(p));
if (!installed) console.error("corosync is not installed (apt-get install corosync): skipping corosync tests");
if (!bridgeBuilt) console.error("drivers/cpg-bridge is not built (make; needs libcpg-dev): skipping corosync tests");
const runnable = installed && bridgeBuilt;
/** A corosync we did not start is running: we must not stop it, so the "not running" cases skip. */
const foreignCorosync = runnable && corosyncReachable();
if (foreignCorosync) console.error("a corosync is already running: skipping the tests that need it stopped");

/** Pids of the direct children of pid named comm (from /proc). */
function childrenNamed(pid: number, comm: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const st = fs.readFileSync(`/proc/${e}/stat`, "utf8");
      const close = st.lastIndexOf(")");
      const name = st.slice(st.indexOf("(") + 1, close);
      const ppid = Number(st.slice(close + 2).split(" ")[1]);
      if (ppid === pid && name === comm) out.push(Number(e));
    } catch { /* raced with exit */ }
  }
  return out;
}

/** Rows of `dog node list -r` ("idx ip:port vnodes zone") seen by node i. */
async function nodeList(c: TestCluster, i: number): Promise<string[]> {
  const out = await c.dogOk(["node", "list", "-r"], { node: i, timeoutMs: 15_000 });
  return out.trim().split("\n").filter((l) => l).map((l) => l.split(" ")[1]);
}

/** Latest epoch number in `dog cluster info -r` of node i (rows: "<time> <epoch> [nodes]"). */
async function epochOf(c: TestCluster, i: number): Promise<number> {
  const out = await c.dogOk(["cluster", "info", "-r"], { node: i, timeoutMs: 15_000 });
  const epochs = [...out.matchAll(/^-?\d+ (\d+) \[/gm)].map((m) => Number(m[1]));
  if (!epochs.length) throw new Error(`no epoch rows in: ${out}`);
  return Math.max(...epochs);
}

async function waitMembers(c: TestCluster, on: number[], expected: number[], what: string): Promise<void> {
  const want = expected.map((i) => `127.0.0.1:${c.nodes[i].port}`).sort();
  for (const i of on) {
    await c.waitFor(async () => {
      const have = (await nodeList(c, i)).sort();
      return JSON.stringify(have) === JSON.stringify(want);
    }, 30_000, `node ${i} to list ${what}`);
  }
}

/** VDI id of each working VDI in `dog vdi list -r` of node i, by name. */
async function vdiIds(c: TestCluster, i: number): Promise<Map<string, number>> {
  const out = await c.dogOk(["vdi", "list", "-r"], { node: i });
  const m = new Map<string, number>();
  for (const l of out.trim().split("\n")) {
    const f = l.split(" ");
    if (f[0] === "=") m.set(f[1], parseInt(f[7], 16));
  }
  return m;
}

describe.skipIf(!runnable || foreignCorosync)("without corosync", () => {
  test("sheep -c corosync exits non-zero with a clear error within 10 s", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-nocs-"));
    try {
      const port = await freePort();
      const t0 = Date.now();
      const r = await runDog(["sheep", "-b", "127.0.0.1", "-p", String(port), "-c", "corosync", "-f", dir], {
        timeoutMs: 20_000,
      });
      const took = Date.now() - t0;
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/corosync/);
      expect(r.stderr).toMatch(/cannot connect to corosync|is it running/);
      expect(took).toBeLessThan(10_000);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);
});

describe.skipIf(!runnable)("3 sheep on corosync", () => {
  let cs: Corosync;
  let c: TestCluster;
  const data = randomBytes(12 * MiB + 4321);
  const off = 3 * MiB;

  beforeAll(async () => {
    cs = await startCorosync();
    c = await TestCluster.start(3, { driver: `corosync:${uniqueGroup()}`, format: { copies: 3 } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
    await cs?.stop();
  });

  test("all three see the same membership and epoch 1", async () => {
    for (let i = 0; i < 3; i++) {
      expect((await nodeList(c, i)).length).toBe(3);
      expect(await epochOf(c, i)).toBe(1);
    }
    const info = await c.dogOk(["cluster", "info"], { node: 2 });
    expect(info.split("\n")[0]).toBe("Cluster status: running, auto-recovery enabled");
  });

  test("vdi create, write, read back byte for byte through every sheep", async () => {
    await c.dogOk(["vdi", "create", "alpha", "64M"], { node: 1 });
    await c.dogOk(["vdi", "write", "alpha", String(off), String(data.length)], { input: data });
    for (let i = 0; i < 3; i++) {
      const r = await c.dog(["vdi", "read", "alpha", String(off), String(data.length)], { node: i });
      expect(r.code).toBe(0);
      expect(Buffer.compare(r.stdout, data)).toBe(0);
    }
  }, 120_000);

  test("kill -9 of a sheep: survivors see the leave, new epoch, data reads; restart rejoins", async () => {
    const before = await epochOf(c, 0);
    await c.kill(2, "SIGKILL");
    await waitMembers(c, [0, 1], [0, 1], "2 members after the kill");
    await c.waitFor(async () => (await epochOf(c, 0)) === before + 1, 30_000, "epoch +1 after the kill");
    expect(await epochOf(c, 1)).toBe(before + 1);
    const info = await c.dogOk(["cluster", "info"]);
    const survivors = [c.nodes[0].port, c.nodes[1].port].sort((a, b) => a - b).map((p) => `127.0.0.1:${p}:128`);
    expect(info).toContain(` ${before + 1} [${survivors.join(", ")}]`);
    const r = await c.dog(["vdi", "read", "alpha", String(off), String(data.length)], { node: 1 });
    expect(r.code).toBe(0);
    expect(Buffer.compare(r.stdout, data)).toBe(0);

    await c.startNode(2);
    await waitMembers(c, [0, 1, 2], [0, 1, 2], "3 members after the restart");
    await c.waitFor(async () => (await epochOf(c, 2)) === before + 2, 30_000, "epoch +2 on the restarted sheep");
    expect(await epochOf(c, 0)).toBe(before + 2);
    await c.waitRunning();
    const r2 = await c.dog(["vdi", "read", "alpha", String(off), String(data.length)], { node: 2 });
    expect(r2.code).toBe(0);
    expect(Buffer.compare(r2.stdout, data)).toBe(0);
  }, 120_000);

  test("killing a sheep's cpg-bridge stops that sheep; the others see it leave", async () => {
    const pid = c.nodes[1].proc!.pid!;
    const bridges = childrenNamed(pid, "cpg-bridge");
    expect(bridges.length).toBe(1);
    const before = await epochOf(c, 0);
    process.kill(bridges[0], "SIGKILL");
    await c.waitFor(async () => !c.isRunning(1), 15_000, "sheep 1 to exit after losing its bridge");
    const st = await c.exitStatus(1);
    expect(st?.code).not.toBe(0);
    expect(c.logTail(1, 30)).toMatch(/membership lost: corosync driver: cpg-bridge exited/);
    await waitMembers(c, [0, 2], [0, 2], "2 members after the bridge died");
    await c.waitFor(async () => (await epochOf(c, 2)) === before + 1, 30_000, "epoch +1 after the bridge died");
    const r = await c.dog(["vdi", "read", "alpha", String(off), String(data.length)], { node: 2 });
    expect(Buffer.compare(r.stdout, data)).toBe(0);

    await c.startNode(1);
    await waitMembers(c, [0, 1, 2], [0, 1, 2], "3 members after restarting sheep 1");
    await c.waitRunning();
  }, 120_000);

  test("20 parallel creates of distinct names through different sheep all succeed", async () => {
    const names = Array.from({ length: 20 }, (_, i) => `par${i}`);
    const rs = await Promise.all(names.map((n, i) => c.dog(["vdi", "create", n, "8M"], { node: i % 3 })));
    for (const [i, r] of rs.entries()) expect({ name: names[i], code: r.code, err: r.stderr }).toEqual({ name: names[i], code: 0, err: "" });
    const lists = await Promise.all([0, 1, 2].map((i) => vdiIds(c, i)));
    const vids = names.map((n) => lists[0].get(n));
    expect(vids.every((v) => typeof v === "number" && v > 0)).toBe(true);
    expect(new Set(vids).size).toBe(20);
    for (const l of lists.slice(1)) for (const n of names) expect(l.get(n)).toBe(lists[0].get(n));
  }, 180_000);

  test("10 parallel creates of one name succeed exactly once", async () => {
    const rs = await Promise.all(Array.from({ length: 10 }, (_, i) => c.dog(["vdi", "create", "same", "8M"], { node: i % 3 })));
    expect(rs.filter((r) => r.code === 0).length).toBe(1);
    for (const r of rs.filter((r) => r.code !== 0)) expect(r.stderr).toMatch(/exist/i);
    for (let i = 0; i < 3; i++) expect((await vdiIds(c, i)).has("same")).toBe(true);
  }, 180_000);

  test.skipIf(foreignCorosync)("corosync going away stops every sheep", async () => {
    if (!cs.owned) return;
    await cs.stop();
    for (let i = 0; i < 3; i++) {
      await c.waitFor(async () => !c.isRunning(i), 30_000, `sheep ${i} to exit after corosync stopped`);
      expect((await c.exitStatus(i))?.code).not.toBe(0);
      expect(c.logTail(i, 30)).toMatch(/membership lost/);
    }
  }, 90_000);
});
