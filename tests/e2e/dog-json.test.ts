// Machine-readable output (`-j`/`--json`) of the list and info commands, and `dog benchmark io`,
// against a real 3-node cluster.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { sheepCommand, TestCluster } from "../lib/cluster.ts";
import { testWith } from "../lib/components.ts";

let c: TestCluster;

beforeAll(async () => {
  c = await TestCluster.start(3, { format: { copies: 2 } });
  await c.dogOk(["vdi", "create", "-P", "alpha", "16M"]);
  await c.dogOk(["vdi", "snapshot", "-s", "snap1", "alpha"]);
  await c.dogOk(["vdi", "clone", "-s", "snap1", "alpha", "beta"]);
  await c.dogOk(["vdi", "create", "gamma", "1G"]);
  await c.dogOk(["vdi", "create", "-P", "delta", "8M"]);
}, 120_000);

afterAll(async () => {
  await c?.stop();
});

const json = async (args: string[]) => JSON.parse(await c.dogOk(args));

test("vdi list --json: every VDI with stable fields", async () => {
  const rows = await json(["vdi", "list", "--json"]);
  expect(rows.map((r: { name: string }) => r.name).sort()).toEqual(
    ["alpha", "alpha", "beta", "delta", "gamma"],
  );
  const snap = rows.find((r: { snapshot: boolean }) => r.snapshot);
  expect(snap).toMatchObject({ name: "alpha", snapshotId: 1, tag: "snap1", size: 16 * 1048576 });
  expect(snap.used).toBe(16 * 1048576); // preallocated, and the snapshot owns the objects now
  const beta = rows.find((r: { name: string }) => r.name === "beta");
  expect(beta).toMatchObject({ clone: true, snapshot: false, copies: 2, redundancy: "2" });
  expect(beta.parentVdiId).toBe(snap.vdiId);
  const gamma = rows.find((r: { name: string }) => r.name === "gamma");
  expect(gamma.size).toBe(1073741824);
  expect(typeof gamma.createTime).toBe("number");
  // -j is the short form; a name filter works as for the text output
  expect((await json(["vdi", "list", "-j", "gamma"])).length).toBe(1);
});

testWith("jq")("dog vdi list --json | jq works", () => {
  const dog = [...sheepCommand(), "dog"].map((a) => `'${a}'`).join(" ");
  const r = spawnSync("sh", [
    "-c",
    `${dog} vdi list --json -a 127.0.0.1 -p ${
      c.nodes[0].port
    } | jq -r '.[] | select(.snapshot | not) | .name'`,
  ], { encoding: "utf8" });
  expect(r.status).toBe(0);
  expect(r.stdout.trim().split("\n").sort()).toEqual(["alpha", "beta", "delta", "gamma"]);
});

test("vdi tree --json: the clone hangs under the snapshot it came from", async () => {
  const roots = await json(["vdi", "tree", "--json"]);
  const alpha = roots.find((r: { name: string }) => r.name === "alpha");
  expect(alpha.snapshot).toBe(true);
  const kids = alpha.children.map((k: { name: string }) => k.name).sort();
  expect(kids).toEqual(["alpha", "beta"]);
  expect(roots.map((r: { name: string }) => r.name).sort()).toEqual(["alpha", "delta", "gamma"]);
});

test("node list / node info / node md info / cluster info --json", async () => {
  const nodes = await json(["node", "list", "--json"]);
  expect(nodes.length).toBe(3);
  expect(nodes.map((n: { port: number }) => n.port).sort()).toEqual(
    c.nodes.map((n) => n.port).sort(),
  );
  expect(nodes[0]).toMatchObject({ id: 0, host: "127.0.0.1" });
  const info = await json(["node", "info", "--json"]);
  expect(info.nodes.length).toBe(3);
  expect(info.total.size).toBeGreaterThan(0);
  expect(info.total.virtualImageSize).toBe(16 * 1048576 * 2 + 1073741824 + 8 * 1048576);
  const md = await json(["node", "md", "info", "--json"]);
  expect(md.disks.length).toBe(1);
  expect(md.disks[0].size).toBeGreaterThan(0);
  const mdAll = await json(["node", "md", "info", "-A", "--json"]);
  expect(mdAll.length).toBe(3);
  const ci = await json(["cluster", "info", "--json"]);
  expect(ci.status).toBe("running");
  expect(ci.copies).toBe(2);
  expect(ci.epochs[0].nodes.length).toBe(3);
  expect(ci.epochs.map((e: { epoch: number }) => e.epoch)).toContain(1);
});

test("benchmark io: writes, prints throughput and latency percentiles", async () => {
  const out = await c.dogOk([
    "benchmark",
    "io",
    "-f",
    "-t",
    "40",
    "-w",
    "dynamic",
    "-n",
    "4",
    "delta",
  ]);
  expect(out).toMatch(/^40 writes of 4\.0 MB with 4 in flight in [\d.]+ s: [\d.]+ IOPS/);
  expect(out).toMatch(
    /latency \(ms\): min [\d.]+ {2}p50 [\d.]+ {2}p90 [\d.]+ {2}p99 [\d.]+ {2}max/,
  );
  // upstream's refusals
  const unalloc = await c.dog(["benchmark", "io", "-f", "gamma"]);
  expect(unalloc.code).toBe(2);
  expect(unalloc.stderr).toContain("VDI gamma has unallocated data");
  const wq = await c.dog(["benchmark", "io", "-f", "-w", "bogus", "delta"]);
  expect(wq.code).toBe(2);
  expect(wq.stderr).toContain("unknown workqueue type: bogus");
  const ask = await c.dog(["benchmark", "io", "delta"], { input: "" });
  expect(ask.code).toBe(1);
  expect(ask.stderr).toContain("aborted");
  const none = await c.dog(["benchmark", "io", "-f", "nosuch"]);
  expect(none.code).toBe(2);
}, 120_000);
