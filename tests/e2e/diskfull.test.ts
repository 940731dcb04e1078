// A full disk: client writes fail with a clear error, the node keeps running and serving what it
// has; recovery onto a full node pauses with a message instead of filling the disk.
// The small disk is a real tmpfs mounted under the node's store directory (tests run as root).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { freePort, TestCluster } from "../lib/cluster.ts";

const MiB = 1024 * 1024;
const mounts: string[] = [];

function smallDisk(dir: string, mb: number): void {
  const obj = path.join(dir, "obj");
  fs.mkdirSync(obj, { recursive: true });
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${mb}m`, "tmpfs", obj]);
  mounts.push(obj);
}

/** Lazy unmount detaches the tmpfs even while the dying sheep still hold files open. */
function unmountAll(): void {
  for (const m of mounts.splice(0)) {
    try {
      execFileSync("umount", ["-l", m]);
    } catch { /* already gone */ }
  }
}

async function cluster(n: number, small: number[], mb: number): Promise<TestCluster> {
  const c = TestCluster.create();
  for (let i = 0; i < n; i++) {
    const dir = path.join(c.root, `n${i}`);
    if (small.includes(i)) smallDisk(dir, mb);
    // Fixed vnodes: with auto vnodes a tiny disk next to a big one gets none, and so no data.
    await c.addNode({ port: await freePort(), zone: i, dir, extra: ["-V", "128"] });
  }
  await c.dogOk(["cluster", "format", "-c", "2", "-V"]);
  await c.waitRunning();
  return c;
}

describe("disk full during client writes", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await cluster(2, [1], 24);
  }, 120_000);
  afterAll(async () => {
    unmountAll();
    await c?.stop();
  });

  test(
    "the write fails with a clear error; the node stays up; earlier data is intact",
    async () => {
      await c.dogOk(["vdi", "create", "v", "256M"]);
      const a = randomBytes(8 * MiB);
      await c.dogOk(["vdi", "write", "v", "0"], { input: a });
      const r = await c.dog(["vdi", "write", "v", String(16 * MiB), String(64 * MiB)], {
        input: randomBytes(64 * MiB),
      });
      // Upstream's words and exit status: the first object that did not fit, then the summary.
      // Which object that is depends on the filesystem's accounting (C Sheepdog preallocates).
      expect(r.code).toBe(1);
      const m = /^Failed to write object ([0-9a-f]{16}): Server has no space for new objects\n/
        .exec(r.stderr);
      expect(m).not.toBeNull();
      expect(r.stderr.slice(m![0].length)).toBe("Failed to write VDI\n");
      const vid = parseInt((await c.dogOk(["vdi", "list", "-r"])).split(" ")[7], 16);
      const oid = BigInt("0x" + m![1]);
      expect(Number(oid >> 32n)).toBe(vid);
      expect(Number(oid & 0xffffffffn)).toBeGreaterThanOrEqual(4); // past the 8 MiB written first
      expect(Number(oid & 0xffffffffn)).toBeLessThan(20);
      expect(c.isRunning(0) && c.isRunning(1)).toBe(true);
      const back = await c.dog(["vdi", "read", "v", "0", String(a.length)], { node: 1 });
      expect(back.code).toBe(0);
      expect(Buffer.compare(back.stdout, a)).toBe(0);
      // rewriting an object that already exists still works
      const b = randomBytes(MiB);
      await c.dogOk(["vdi", "write", "v", String(MiB), String(MiB)], { input: b });
      const back2 = await c.dog(["vdi", "read", "v", String(MiB), String(MiB)], { node: 1 });
      expect(Buffer.compare(back2.stdout, b)).toBe(0);
      const list = await c.dogOk(["node", "list", "-r"]);
      expect(list.trim().split("\n").length).toBe(2);
      // New objects still fail the same way, and the sheep goes on serving (as upstream's).
      await c.dogOk(["vdi", "create", "w", "64M"]);
      const big = randomBytes(32 * MiB);
      const w = await c.dog(["vdi", "write", "w", "0"], { input: big });
      expect(w.code).toBe(1);
      expect(w.stderr).toMatch(
        /^Failed to write object [0-9a-f]{16}: Server has no space for new objects\nFailed to write VDI\n$/,
      );
      expect(c.isRunning(1)).toBe(true);
      expect((await c.dog(["vdi", "read", "v", "0", "4096"], { node: 1 })).code).toBe(0);
    },
    120_000,
  );
});

describe("recovery onto a full node", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await cluster(2, [], 0);
  }, 120_000);
  afterAll(async () => {
    unmountAll();
    await c?.stop();
  });

  test("recovery pauses with a message and the node stays up", async () => {
    await c.dogOk(["vdi", "create", "v", "128M"]);
    // 16 objects on the two big nodes; a third node with a 16 MB disk then owns about 2/3 of
    // them, far more than fits: its recovery must stop before the disk is full.
    const data = randomBytes(64 * MiB);
    await c.dogOk(["vdi", "write", "v", "0"], { input: data });
    const dir = path.join(c.root, "small");
    smallDisk(dir, 16);
    const i = await c.addNode({ port: await freePort(), zone: 2, dir, extra: ["-V", "128"] });
    const log = path.join(dir, "sheep.log");
    await c.waitFor(
      async () =>
        fs.existsSync(log) && /recovery paused: store is full/.test(fs.readFileSync(log, "utf8")),
      60_000,
      "the pause message",
    );
    expect(c.isRunning(i)).toBe(true);
    const list = await c.dogOk(["node", "list", "-r"], { node: i });
    expect(list.trim().split("\n").length).toBe(3);
    // the data is still served (from the nodes that have it)
    const r = await c.dog(["vdi", "read", "v", "0", String(data.length)], { node: i });
    expect(r.code).toBe(0);
    expect(Buffer.compare(r.stdout, data)).toBe(0);
  }, 180_000);
});

describe("disk full under an erasure-coded VDI", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await cluster(3, [2], 12);
  }, 120_000);
  afterAll(async () => {
    unmountAll();
    await c?.stop();
  });

  test(
    "a strip that does not fit: upstream's words, exit 1, what was written reads back",
    async () => {
      await c.dogOk(["vdi", "create", "-c", "2:1", "e", "256M"]);
      const data = randomBytes(64 * MiB);
      const r = await c.dog(["vdi", "write", "e", "0", String(data.length)], { input: data });
      expect(r.code).toBe(1);
      const m = /^Failed to write object ([0-9a-f]{16}): Server has no space for new objects\n/
        .exec(r.stderr);
      expect(m).not.toBeNull();
      expect(r.stderr.slice(m![0].length)).toBe("Failed to write VDI\n");
      const failed = Number(BigInt("0x" + m![1]) & 0xffffffffn);
      expect(failed).toBeGreaterThan(0);
      for (let i = 0; i < 3; i++) expect(c.isRunning(i)).toBe(true);
      // Every object before the one that failed is whole.
      const n = failed * 4 * MiB;
      const back = await c.dog(["vdi", "read", "e", "0", String(n)], { node: 2 });
      expect(back.code).toBe(0);
      expect(Buffer.compare(back.stdout, data.subarray(0, n))).toBe(0);
    },
    120_000,
  );
});
