// Store layouts on disk: `tree` (objects under %02x subdirectories, metadata under meta/) chosen
// at `dog cluster format -b tree`, and multi-disk sheep (`sheep DIR,disk1,disk2`).
import { afterAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { freePort, TestCluster } from "../lib/cluster.ts";
import { oidHex, vidToDataOid, vidToVdiOid } from "../../core/oid.ts";

const MiB = 1024 * 1024;

async function vidOf(c: TestCluster, name: string): Promise<number> {
  const row = (await c.dogOk(["vdi", "list", "-r", name])).trim().split("\n")[0];
  return parseInt(row.split(" ")[7], 16);
}

describe("tree store", () => {
  let c: TestCluster;
  afterAll(async () => {
    await c?.stop();
  });

  test("objects live in <xx>/ by VID byte, inodes in meta/; data reads back", async () => {
    c = await TestCluster.start(2, { format: { copies: 2, store: "tree" } });
    const info = await c.dogOk(["cluster", "info", "-v"]);
    expect(info).toContain("Cluster store: tree");
    await c.dogOk(["vdi", "create", "t", "32M"]);
    const vid = await vidOf(c, "t");
    const data = randomBytes(9 * MiB);
    await c.dogOk(["vdi", "write", "t", "0"], { input: data });
    const r = await c.dog(["vdi", "read", "t", "0", String(data.length)], { node: 1 });
    expect(Buffer.compare(r.stdout, data)).toBe(0);
    const xx = (vid & 0xff).toString(16).padStart(2, "0");
    for (let i = 0; i < 2; i++) {
      const obj = path.join(c.nodes[i].dir, "obj");
      expect(fs.existsSync(path.join(obj, "meta", oidHex(vidToVdiOid(vid))))).toBe(true);
      for (let idx = 0; idx < 3; idx++) {
        expect(fs.existsSync(path.join(obj, xx, oidHex(vidToDataOid(vid, idx))))).toBe(true);
      }
      expect(fs.existsSync(path.join(obj, oidHex(vidToDataOid(vid, 0))))).toBe(false);
    }
  }, 120_000);
});

describe("multi-disk sheep", () => {
  let c: TestCluster;
  afterAll(async () => {
    await c?.stop();
  });

  test(
    "objects spread over the object directories; md info lists them; data survives a restart",
    async () => {
      c = TestCluster.create();
      const base = path.join(c.root, "n0");
      const disks = [path.join(c.root, "diskA"), path.join(c.root, "diskB")];
      await c.addNode({ port: await freePort(), zone: 0, dir: base, objDirs: disks });
      await c.dogOk(["cluster", "format", "-c", "1"]);
      await c.waitRunning();
      await c.dogOk(["vdi", "create", "m", "256M"]);
      const data = randomBytes(96 * MiB);
      await c.dogOk(["vdi", "write", "m", "0"], { input: data });
      const counts = disks.map((d) =>
        fs.readdirSync(d).filter((f) => /^[0-9a-f]{16}$/.test(f)).length
      );
      expect(counts[0] + counts[1]).toBe(25); // 24 data objects + the inode
      expect(counts[0]).toBeGreaterThan(0);
      expect(counts[1]).toBeGreaterThan(0);
      const md = await c.dogOk(["node", "md", "info"]);
      expect(md).toContain(disks[0]);
      expect(md).toContain(disks[1]);
      await c.kill(0, "SIGTERM");
      await c.startNode(0);
      await c.waitRunning();
      const r = await c.dog(["vdi", "read", "m", "0", String(data.length)]);
      expect(Buffer.compare(r.stdout, data)).toBe(0);
    },
    120_000,
  );
});
