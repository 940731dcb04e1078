// `sheep --http`: /metrics, /healthz and the dashboard against a real 3-node cluster (copies=2,
// every sheep with --nbd and --http). Metrics are scraped while nbdcopy writes through NBD, and
// while the cluster recovers from a kill -9 (recovery throttled so its progress can be watched);
// the dashboard is loaded in headless Chromium before and after the kill. Tests run in file
// order and share the cluster.
import { afterAll, beforeAll, expect } from "bun:test";
import { type ChildProcess, spawn } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { freePort, sheepCommand, TestCluster } from "../lib/cluster.ts";
import { testWith } from "../lib/components.ts";
import { type ParsedFamily, parseExposition } from "../lib/prom-parse.ts";

const MiB = 1024 * 1024;
const nbdTest = testWith("nbd-clients");
const chromiumTest = testWith("chromium");
const test = nbdTest;

let c: TestCluster;
const httpPorts: number[] = [];
const spawned = new Set<ChildProcess>();

beforeAll(async () => {
  c = TestCluster.create();
  for (let i = 0; i < 3; i++) {
    const http = await freePort();
    httpPorts.push(http);
    await c.addNode({
      zone: i,
      nbdPort: await freePort(),
      // One object at a time every 300 ms: slow enough to watch the recovery gauges move.
      extra: ["--http", `127.0.0.1:${http}`, "-R", "max=1,interval=300"],
    });
  }
  await c.waitFor(
    async () => {
      for (let i = 0; i < 3; i++) {
        const r = await c.dog(["node", "list", "-r"], { node: i });
        if (r.code !== 0 || r.stdout.toString().trim().split("\n").length !== 3) return false;
      }
      return true;
    },
    30_000,
    "all 3 sheep to be members",
  );
}, 120_000);

afterAll(async () => {
  for (const p of spawned) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  await c?.stop();
}, 60_000);

// ------------------------------------------------------------------------------ helpers

async function get(node: number, url: string, method = "GET") {
  const r = await fetch(`http://127.0.0.1:${httpPorts[node]}${url}`, { method });
  return { status: r.status, type: r.headers.get("content-type") ?? "", body: await r.text() };
}

async function scrape(node: number): Promise<Map<string, ParsedFamily>> {
  const r = await get(node, "/metrics");
  expect(r.status).toBe(200);
  expect(r.type).toContain("text/plain; version=0.0.4");
  return parseExposition(r.body);
}

/** The value of one sample: family name, sample name (default: the family's), labels. */
function value(
  m: Map<string, ParsedFamily>,
  family: string,
  labels: Record<string, string> = {},
  sample = family,
): number {
  const f = m.get(family);
  if (!f) throw new Error(`no metric family ${family}`);
  const s = f.samples.find((x) =>
    x.name === sample && Object.entries(labels).every(([k, v]) => x.labels[k] === v)
  );
  if (!s) throw new Error(`no sample ${sample}${JSON.stringify(labels)}`);
  return s.value;
}

function run(cmd: string, args: string[], timeoutMs = 120_000) {
  const proc = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  spawned.add(proc);
  let out = "", err = "";
  proc.stdout!.on("data", (d) => (out += d));
  proc.stderr!.on("data", (d) => (err += d));
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const done = new Promise<{ code: number | null; out: string; err: string }>((resolve, reject) => {
    proc.on("error", reject);
    proc.on("close", (code) => {
      clearTimeout(timer);
      spawned.delete(proc);
      resolve({ code, out, err });
    });
  });
  return { proc, done };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Loads the dashboard in headless Chromium: the DOM after its script ran, and a screenshot. */
async function dashboard(node: number, shot: string): Promise<string> {
  const profile = fs.mkdtempSync(path.join(c.root, "chromium-"));
  const url = `http://127.0.0.1:${httpPorts[node]}/`;
  const common = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    `--user-data-dir=${profile}`,
    "--virtual-time-budget=5000",
  ];
  const dom = await run("chromium", [...common, "--dump-dom", url], 90_000).done;
  if (dom.code !== 0) {
    throw new Error(`chromium --dump-dom exited ${dom.code}: ${dom.err.slice(-2000)}`);
  }
  const pic = await run(
    "chromium",
    [...common, "--window-size=1200,900", `--screenshot=${shot}`, url],
    90_000,
  ).done;
  if (pic.code !== 0 || !fs.existsSync(shot)) {
    throw new Error(`chromium --screenshot exited ${pic.code}: ${pic.err.slice(-2000)}`);
  }
  console.log(`dashboard screenshot: ${shot} (removed with the cluster unless KEEP=1)`);
  // The page is only a shell until its script has drawn /api/state into it.
  expect(dom.out).toContain('id="updated" class="">updated ');
  return dom.out;
}

const nodeRows = (dom: string) => [...dom.matchAll(/<tr class="node( me)?" data-id="([^"]+)"/g)];

// ------------------------------------------------------------------------------ tests

test("/healthz: 503 before the cluster is formatted, 200 once it serves", async () => {
  const before = await get(0, "/healthz");
  expect(before.status).toBe(503);
  expect(before.body).toBe("unavailable: cluster not formatted\n");
  await c.dogOk(["cluster", "format", "-c", "2"]);
  await c.waitRunning();
  for (let i = 0; i < 3; i++) {
    const r = await get(i, "/healthz");
    expect(r.status).toBe(200);
    expect(r.body).toMatch(/^ok: serving, epoch 1, 3 nodes\n$/);
  }
  expect((await get(0, "/healthz", "HEAD")).status).toBe(200);
  expect((await get(0, "/nope")).status).toBe(404);
  expect((await get(0, "/metrics", "POST")).status).toBe(405);
  const miss = await c.dog(["vdi", "delete", "no-such-vdi"]);
  expect(miss.code).not.toBe(0);
  const m = await scrape(0);
  expect(value(m, "sheep_request_errors_total", { op: "get_vdi_info", result: "no_vdi" }))
    .toBeGreaterThanOrEqual(1);
  expect(value(m, "sheep_epoch")).toBe(1);
  expect(value(m, "sheep_cluster_nodes")).toBe(3);
  expect(value(m, "sheep_cluster_status", { status: "ok" })).toBe(1);
  expect(value(m, "sheep_cluster_status", { status: "wait" })).toBe(0);
  expect(value(m, "sheep_cluster_formatted")).toBe(1);
  expect(m.get("sheep_request_duration_seconds")!.type).toBe("histogram");
  // The format itself went through this sheep.
  expect(
    value(
      m,
      "sheep_request_duration_seconds",
      { op: "make_fs" },
      "sheep_request_duration_seconds_count",
    ),
  )
    .toBeGreaterThanOrEqual(1);
}, 60_000);

test("request counters rise while nbdcopy writes through NBD", async () => {
  const size = 96 * MiB;
  await c.dogOk(["vdi", "create", "disk", String(size)]);
  const src = path.join(c.root, "src.bin");
  fs.writeFileSync(src, crypto.randomBytes(size));
  const before = await scrape(0);
  const cmdCount = (m: Map<string, ParsedFamily>) =>
    value(
      m,
      "sheep_nbd_command_duration_seconds",
      { command: "write" },
      "sheep_nbd_command_duration_seconds_count",
    );
  const gwWrites = (m: Map<string, ParsedFamily>) =>
    value(m, "sheep_requests_total", { role: "gateway", kind: "write" });
  expect(before.get("sheep_nbd_command_duration_seconds")!.samples.length).toBe(0);
  const w0 = gwWrites(before);

  const copy = run("nbdcopy", [
    "--connections=1",
    "--requests=4",
    "--request-size=1048576",
    src,
    `nbd://127.0.0.1:${c.nodes[0].nbdPort}/disk`,
  ]);
  let exited = false;
  void copy.done.then(() => (exited = true));
  const during: Array<{ cmds: number; writes: number; dash: number }> = [];
  while (!exited) {
    const m = await scrape(0);
    // What the dashboard's throughput is computed from.
    const state = JSON.parse((await get(0, "/api/state")).body);
    during.push({
      cmds: m.get("sheep_nbd_command_duration_seconds")!.samples.length ? cmdCount(m) : 0,
      writes: gwWrites(m),
      dash: state.counters.nbdWrite,
    });
    await sleep(100);
  }
  const r = await copy.done;
  expect(r.code, r.out + r.err).toBe(0);
  const after = await scrape(0);
  const total = cmdCount(after);
  expect(total).toBe(size / MiB);
  // Seen moving mid-copy: some scrape saw part of the commands, and the counts never went down.
  const mid = during.filter((d) => d.cmds > 0 && d.cmds < total);
  expect(mid.length, JSON.stringify(during)).toBeGreaterThanOrEqual(1);
  for (let i = 1; i < during.length; i++) {
    expect(during[i].cmds).toBeGreaterThanOrEqual(during[i - 1].cmds);
    expect(during[i].writes).toBeGreaterThanOrEqual(during[i - 1].writes);
    expect(during[i].dash).toBeGreaterThanOrEqual(during[i - 1].dash);
  }
  expect(during.some((d) => d.dash > 0 && d.dash < size), JSON.stringify(during)).toBe(true);
  expect(gwWrites(after) - w0).toBeGreaterThanOrEqual(size / MiB);
  expect(value(after, "sheep_nbd_bytes_total", { direction: "write" })).toBe(size);
  expect(value(after, "sheep_request_bytes_total", { role: "gateway", direction: "rx" }))
    .toBeGreaterThanOrEqual(size);
  expect(value(after, "sheep_requests_in_flight", { role: "gateway" })).toBe(0);
  const writeObj = value(
    after,
    "sheep_request_duration_seconds",
    { op: "write_obj" },
    "sheep_request_duration_seconds_count",
  ) + value(
    after,
    "sheep_request_duration_seconds",
    { op: "create_and_write_obj" },
    "sheep_request_duration_seconds_count",
  );
  expect(writeObj).toBeGreaterThanOrEqual(size / MiB);
  // copies=2: every write went to two of the three sheep, at least one of them a peer (a copy
  // on the gateway itself is written in-process, not as a peer request).
  let peerWrites = 0, objects = 0;
  for (let i = 0; i < 3; i++) {
    const m = await scrape(i);
    peerWrites += value(m, "sheep_requests_total", { role: "peer", kind: "write" });
    objects += value(m, "sheep_store_objects");
    const disk = m.get("sheep_disk_objects")!.samples;
    expect(disk.length).toBe(1);
    expect(disk[0].labels.disk).toBe(path.join(c.nodes[i].dir, "obj"));
    expect(disk[0].value).toBe(value(m, "sheep_store_objects"));
    expect(value(m, "sheep_store_free_bytes")).toBeGreaterThan(0);
  }
  expect(peerWrites).toBeGreaterThanOrEqual(size / MiB);
  expect(objects).toBe(2 * (size / (4 * MiB) + 1)); // 24 data objects and the inode, twice
  await c.dogOk(["vdi", "snapshot", "-s", "snap1", "disk"]);
}, 180_000);

chromiumTest("the dashboard shows 3 nodes and the VDI tree with its snapshot", async () => {
  const dom = await dashboard(0, path.join(c.root, "dashboard-3-nodes.png"));
  const rows = nodeRows(dom);
  expect(rows.map((m) => m[2]).sort()).toEqual(c.nodes.map((n) => `127.0.0.1:${n.port}`).sort());
  expect(rows.filter((m) => m[1]).map((m) => m[2])).toEqual([`127.0.0.1:${c.nodes[0].port}`]);
  expect(dom).toContain("cluster ok, epoch 1, 3 nodes, 2 copies, 2 VDIs");
  // The snapshot is the parent; the working VDI hangs under it.
  expect(dom).toMatch(
    /<li class="vdi snapshot" data-name="disk"[^>]*><span class="name">disk@snap1<\/span><span class="meta">96\.0 MiB, 2 copies, snapshot 1<\/span><ul><li class="vdi" data-name="disk"[^>]*><span class="name">disk<\/span>/,
  );
  // Throughput is drawn from the difference of two polls.
  expect(dom).toMatch(/<div id="throughput">NBD read [^<]*\/s, write [^<]*requests\/s<\/div>/);
  // Objects per node add up to what the stores hold.
  const counts = [...dom.matchAll(/<td class="objects">(\d+)<\/td>/g)].map((m) => Number(m[1]));
  expect(counts.length).toBe(3);
  expect(counts.reduce((a, b) => a + b, 0)).toBe(2 * 26);
}, 240_000);

test("kill -9: epoch, node count and recovery gauges move; /healthz stays 200", async () => {
  const before = await scrape(0);
  const epoch0 = value(before, "sheep_epoch");
  await c.kill(2, "SIGKILL");
  const seen = [
    { running: false, partial: false, rate: 0 },
    { running: false, partial: false, rate: 0 },
  ];
  const deadline = Date.now() + 90_000;
  for (;;) {
    const ms = [await scrape(0), await scrape(1)];
    let done = true;
    ms.forEach((m, i) => {
      const total = value(m, "sheep_recovery_objects");
      const fin = value(m, "sheep_recovery_objects_done");
      expect(value(m, "sheep_recovery_objects_remaining")).toBe(total - fin);
      if (value(m, "sheep_recovery_running") === 1) seen[i].running = true;
      if (fin > 0 && fin < total) seen[i].partial = true;
      seen[i].rate = Math.max(seen[i].rate, value(m, "sheep_recovery_rate_objects_per_second"));
      const settled = value(m, "sheep_epoch") === epoch0 + 1 &&
        value(m, "sheep_cluster_nodes") === 2 && value(m, "sheep_recovery_running") === 0 &&
        value(m, "sheep_recovery_completed_epoch") === epoch0 + 1;
      if (!settled) done = false;
    });
    if (done) break;
    if (Date.now() > deadline) throw new Error(`recovery did not settle: ${JSON.stringify(seen)}`);
    await sleep(150);
  }
  const after = [await scrape(0), await scrape(1)];
  // Objects that had a copy on the dead sheep got a new one: some recovery work was done, and
  // throttled to one object per 300 ms it was seen in progress, at a measurable rate.
  const recovered = after.map((m) => value(m, "sheep_recovery_objects_done"));
  expect(Math.max(...recovered), JSON.stringify(seen)).toBeGreaterThan(1);
  after.forEach((m, i) => {
    expect(value(m, "sheep_recovery_objects_done")).toBe(value(m, "sheep_recovery_objects"));
    if (recovered[i] > 1) {
      expect(seen[i].running).toBe(true);
      expect(seen[i].partial).toBe(true);
      expect(seen[i].rate).toBeGreaterThan(0);
    }
  });
  expect(value(after[0], "sheep_cluster_members")).toBe(2);
  expect(after.map((m) => value(m, "sheep_store_objects")).reduce((a, b) => a + b, 0)).toBe(
    2 * 26, // both copies of 24 data objects and 2 inodes (the snapshot's and the working VDI's)
  );
  const h = await get(0, "/healthz");
  expect(h.status).toBe(200);
  expect(h.body).toBe(`ok: serving, epoch ${epoch0 + 1}, 2 nodes\n`);
}, 180_000);

chromiumTest("after the kill the dashboard shows 2 nodes", async () => {
  const dom = await dashboard(0, path.join(c.root, "dashboard-2-nodes.png"));
  expect(nodeRows(dom).map((m) => m[2]).sort()).toEqual(
    [0, 1].map((i) => `127.0.0.1:${c.nodes[i].port}`).sort(),
  );
  expect(dom).toMatch(/cluster ok, epoch \d+, 2 nodes/);
  expect(dom).toMatch(/idle \(last recovery: (\d+) of \1 objects\)/);
}, 240_000);

test("SIGHUP reopens sheep.log after logrotate renamed it", async () => {
  const log = path.join(c.nodes[0].dir, "sheep.log");
  fs.renameSync(log, log + ".1");
  process.kill(c.nodes[0].proc!.pid!, "SIGHUP");
  await c.waitFor(
    async () => fs.existsSync(log) && fs.readFileSync(log, "utf8").includes("log file reopened"),
    10_000,
    "a new sheep.log",
  );
  expect(c.isRunning(0)).toBe(true);
  expect((await get(0, "/healthz")).status).toBe(200);
  expect(fs.readFileSync(log + ".1", "utf8")).not.toContain("log file reopened");
}, 30_000);

test("--http on a port in use: the sheep says so and exits before joining", async () => {
  const epoch = value(await scrape(0), "sheep_epoch");
  const dir = path.join(c.root, "busy");
  const port = await freePort();
  const [cmd, ...pre] = sheepCommand();
  const args = [...pre, "sheep", "-f", "-b", "127.0.0.1", "-p", String(port), "-z", "9"];
  args.push("-c", c.nodes[0].driver, "--http", `127.0.0.1:${httpPorts[0]}`, dir);
  const r = await run(cmd, args, 30_000).done;
  expect(r.code).toBe(1);
  expect(r.err).toContain(`cannot listen on 127.0.0.1:${httpPorts[0]} (--http)`);
  const nodes = (await c.dogOk(["node", "list", "-r"])).trim().split("\n");
  expect(nodes.length).toBe(2);
  const m = await scrape(0);
  expect(value(m, "sheep_cluster_members")).toBe(2);
  expect(value(m, "sheep_epoch")).toBe(epoch); // never joined: no epoch for it coming and going
}, 60_000);

test(
  "request counters rise during an fio run over NBD (4k random writes, ioengine=nbd)",
  async () => {
    // last in the file: the object counts of the tests before do not see this VDI
    const n = c.nodes.findIndex((_, i) => c.isRunning(i));
    await c.dogOk(["vdi", "create", "fiodisk", String(64 * MiB)], { node: n });
    const writes = (m: Map<string, ParsedFamily>) =>
      m.get("sheep_nbd_command_duration_seconds")!.samples.length
        ? value(
          m,
          "sheep_nbd_command_duration_seconds",
          { command: "write" },
          "sheep_nbd_command_duration_seconds_count",
        )
        : 0;
    const before = writes(await scrape(n));
    const fio = run("fio", [
      "--name=metrics",
      "--ioengine=nbd",
      `--uri=nbd://127.0.0.1:${c.nodes[n].nbdPort}/fiodisk`,
      "--rw=randwrite",
      "--bs=4k",
      "--iodepth=4",
      "--size=16m",
      "--runtime=4",
      "--time_based",
    ]);
    let exited = false;
    void fio.done.then(() => (exited = true));
    const seen: number[] = [];
    while (!exited) {
      seen.push(writes(await scrape(n)));
      await sleep(250);
    }
    const r = await fio.done;
    expect(r.code, r.out + r.err).toBe(0);
    const after = writes(await scrape(n));
    // counted while fio ran, never going down, and more at the end
    expect(seen.some((x) => x > before && x < after), JSON.stringify(seen)).toBe(true);
    for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThanOrEqual(seen[i - 1]);
    expect(after - before).toBeGreaterThan(100);
  },
  60_000,
);
