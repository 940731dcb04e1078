// Issue 2 acceptance: a 3-node local cluster on 127.0.0.1:7000-7002, format, node list, cluster info,
// vdi create/write/read/list/object, replica placement checked against the ring, kill -9 of a sheep.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import { TestCluster } from "../lib/cluster.ts";
import { Ring } from "../../core/ring.ts";
import { makeNode } from "../../core/node.ts";
import { oidHex, vidToDataOid, vidToVdiOid } from "../../core/oid.ts";

const MiB = 1024 * 1024;

/** VDI id of NAME from `dog vdi list -r` (raw row: marker name id size used shared time vid ...). */
async function vidOf(c: TestCluster, name: string, node = 0): Promise<number> {
  const out = await c.dogOk(["vdi", "list", "-r", name], { node });
  const row = out.trim().split("\n").find((l) => l.split(" ")[1] === name && l.startsWith("="));
  if (!row) throw new Error(`no working VDI ${name} in: ${out}`);
  return parseInt(row.split(" ")[7], 16);
}

/** Checks that every listed object exists on exactly the nodes the ring places it on. */
async function checkPlacement(c: TestCluster, oids: bigint[], copies: number): Promise<void> {
  // vnode counts as the cluster reports them (auto vnodes follow capacity)
  const vn = new Map<number, number>();
  for (const l of (await c.dogOk(["node", "list", "-r"])).trim().split("\n")) {
    const [, hp, v] = l.split(" ");
    vn.set(Number(hp.split(":")[1]), Number(v));
  }
  const nodes = c.nodes.map((n) =>
    makeNode("127.0.0.1", n.port, { zone: n.zone, nrVnodes: vn.get(n.port) ?? 128 })
  );
  const ring = new Ring(nodes);
  const files = c.nodes.map((_, i) => new Set(c.objectFiles(i)));
  for (const oid of oids) {
    const want = ring.placeObject(oid, copies).map((n) => n.port).sort();
    const have = c.nodes.filter((_, i) => files[i].has(oidHex(oid))).map((n) => n.port).sort();
    expect({ oid: oidHex(oid), nodes: have }).toEqual({ oid: oidHex(oid), nodes: want });
  }
}

describe("3 nodes, copies=3, ports 7000-7002", () => {
  let c: TestCluster;
  const data = randomBytes(64 * MiB);
  let vid = 0;

  beforeAll(async () => {
    c = await TestCluster.start(3, { basePort: 7000, zones: [0, 1, 2], format: { copies: 3 } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test("node list prints upstream's table", async () => {
    const out = await c.dogOk(["node", "list"]);
    expect(out).toBe(
      "  Id   Host:Port         V-Nodes       Zone\n" +
        "   0   127.0.0.1:7000      \t128          0\n" +
        "   1   127.0.0.1:7001      \t128          1\n" +
        "   2   127.0.0.1:7002      \t128          2\n",
    );
    const raw = await c.dogOk(["node", "list", "-r"]);
    expect(raw).toBe("0 127.0.0.1:7000 128 0\n1 127.0.0.1:7001 128 1\n2 127.0.0.1:7002 128 2\n");
  });

  test("cluster info shows status, creation time and the epoch table", async () => {
    const out = await c.dogOk(["cluster", "info"]);
    const lines = out.split("\n");
    expect(lines[0]).toBe("Cluster status: running, auto-recovery enabled");
    expect(lines[1]).toBe("");
    expect(lines[2]).toMatch(/^Cluster created at \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$/);
    expect(lines[3]).toBe("");
    expect(lines[4]).toBe("Epoch Time           Version [Host:Port:V-Nodes,,,]");
    expect(lines[5]).toMatch(
      /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d {6}1 \[127\.0\.0\.1:7000:128, 127\.0\.0\.1:7001:128, 127\.0\.0\.1:7002:128\]$/,
    );
  });

  test("vdi create, write 64 MiB at 3 MiB, read back byte for byte", async () => {
    await c.dogOk(["vdi", "create", "alpha", "1G"]);
    vid = await vidOf(c, "alpha");
    expect(vid).toBeGreaterThan(0);
    await c.dogOk(["vdi", "write", "alpha", String(3 * MiB), String(64 * MiB)], { input: data });
    const r = await c.dog(["vdi", "read", "alpha", String(3 * MiB), String(64 * MiB)]);
    expect(r.code).toBe(0);
    expect(r.stdout.length).toBe(data.length);
    expect(Buffer.compare(r.stdout, data)).toBe(0);
  }, 120_000);

  test("unwritten ranges read as zeros", async () => {
    const head = await c.dog(["vdi", "read", "alpha", "0", String(3 * MiB)]);
    expect(head.code).toBe(0);
    expect(head.stdout.equals(Buffer.alloc(3 * MiB))).toBe(true);
    const tail = await c.dog(["vdi", "read", "alpha", String(67 * MiB), String(5 * MiB)]);
    expect(tail.code).toBe(0);
    expect(tail.stdout.equals(Buffer.alloc(5 * MiB))).toBe(true);
    const last = await c.dog(["vdi", "read", "alpha", String(1024 * MiB - 4096), "4096"]);
    expect(last.stdout.equals(Buffer.alloc(4096))).toBe(true);
  });

  test("every object exists on exactly the 3 nodes the ring says", async () => {
    // 3 MiB .. 67 MiB touches objects 0..16
    const oids = [vidToVdiOid(vid)];
    for (let i = 0; i <= 16; i++) oids.push(vidToDataOid(vid, i));
    await checkPlacement(c, oids, 3);
    // and nothing else was allocated
    for (let i = 0; i < 3; i++) expect(c.objectFiles(i).length).toBe(18);
  });

  test("vdi list shows Used", async () => {
    const out = await c.dogOk(["vdi", "list"]);
    const lines = out.split("\n");
    expect(lines[0]).toBe(
      "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift",
    );
    // printf("%c %-8s %5d %7s %7s %7s %s  %7x %6s %13s %3u")
    const row = lines[1].replace(/\d{4}-\d\d-\d\d \d\d:\d\d/, "<time>");
    expect(row).toBe(
      `  alpha        0  1.0 GB   68 MB  0.0 MB <time>  ${vid.toString(16).padStart(7)}      3${
        " ".repeat(16)
      }22`,
    );
    const raw = await c.dogOk(["vdi", "list", "-r"]);
    expect(raw).toMatch(
      new RegExp(`^= alpha 0 1073741824 ${68 * MiB} 0 \\d+ ${vid.toString(16)} 3  22\\n$`),
    );
  });

  test("vdi object location reports the holders", async () => {
    const out = await c.dogOk(["vdi", "object", "location", "-i", "1", "alpha"]);
    // upstream prints the oid as %016x here
    expect(out).toContain(
      `Looking for the object ${vidToDataOid(vid, 1).toString(16).padStart(16, "0")}`,
    );
    expect(out.match(/has the object/g)?.length).toBe(3);
  });

  test("kill -9 of one sheep: data still reads through either survivor; new epoch", async () => {
    await c.kill(2, "SIGKILL");
    await c.waitFor(
      async () => {
        const r = await c.dog(["cluster", "info", "-r"]);
        return /^\d+ 2 \[/m.test(r.stdout.toString());
      },
      30_000,
      "epoch 2 after the kill",
    );
    for (const node of [0, 1]) {
      const r = await c.dog(["vdi", "read", "alpha", String(3 * MiB), String(64 * MiB)], { node });
      expect(r.code).toBe(0);
      expect(Buffer.compare(r.stdout, data)).toBe(0);
    }
    const info = await c.dogOk(["cluster", "info"]);
    expect(info).toMatch(/ {6}2 \[127\.0\.0\.1:7000:128, 127\.0\.0\.1:7001:128\]/);
  }, 120_000);
});

describe("copies=2 on 3 nodes", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await TestCluster.start(3, { format: { copies: 2 } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test("write, read back, each object on exactly the 2 ring nodes", async () => {
    const data = randomBytes(20 * MiB + 12345);
    await c.dogOk(["vdi", "create", "beta", "100M"]);
    const vid = await vidOf(c, "beta");
    await c.dogOk(["vdi", "write", "beta", String(MiB)], { input: data });
    const r = await c.dog(["vdi", "read", "beta", String(MiB), String(data.length)], { node: 1 });
    expect(Buffer.compare(r.stdout, data)).toBe(0);
    const last = Math.floor((MiB + data.length - 1) / (4 * MiB));
    const oids = [vidToVdiOid(vid)];
    for (let i = 0; i <= last; i++) oids.push(vidToDataOid(vid, i));
    await checkPlacement(c, oids, 2);
    const total = [0, 1, 2].reduce((s, i) => s + c.objectFiles(i).length, 0);
    expect(total).toBe(oids.length * 2);
  }, 120_000);
});

describe("copies=1 on a single node", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await TestCluster.start(1, { format: { copies: 1 } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test("write and read back", async () => {
    const data = randomBytes(9 * MiB);
    await c.dogOk(["vdi", "create", "gamma", "64M"]);
    await c.dogOk(["vdi", "write", "gamma", "0", String(data.length)], { input: data });
    const r = await c.dog(["vdi", "read", "gamma"]);
    expect(r.stdout.length).toBe(64 * MiB);
    expect(Buffer.compare(r.stdout.subarray(0, data.length), data)).toBe(0);
    expect(r.stdout.subarray(data.length).equals(Buffer.alloc(64 * MiB - data.length))).toBe(true);
    // 9 MiB = objects 0,1,2 plus the inode
    expect(c.objectFiles(0).length).toBe(4);
  }, 120_000);
});
