// One membership-driver contract, one suite: the same scenario against every driver. The daemon
// core does not know which driver it runs on, so epochs, the epoch log, `dog cluster info` and
// `dog node list` must come out the same way, and concurrent cluster operations must serialize.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { TestCluster } from "../lib/cluster.ts";
import { type Component, describeWith } from "../lib/components.ts";
import { startCorosync } from "../lib/corosync.ts";
import { startZookeeper } from "../lib/zookeeper.ts";

const MiB = 1024 * 1024;

interface DriverEnv {
  name: string;
  /** The real component the driver needs (tests/lib/components.ts), if any. */
  needs?: Component;
  /** Starts what the driver needs; returns the -c option and a cleanup. */
  setup(): Promise<{ spec: string; stop(): Promise<void> }>;
}

const drivers: DriverEnv[] = [
  { name: "local", setup: () => Promise.resolve({ spec: "", stop: () => Promise.resolve() }) },
  {
    name: "zookeeper",
    needs: "zookeeper",
    setup: async () => {
      const zk = await startZookeeper();
      return { spec: `zookeeper:127.0.0.1:${zk.port},timeout=10000`, stop: () => zk.stop() };
    },
  },
  {
    name: "corosync",
    needs: "corosync",
    setup: async () => {
      const cs = await startCorosync();
      return { spec: "corosync", stop: () => cs.stop() };
    },
  },
];

/** Normalizes the parts of `dog cluster info` that depend on time and ports. */
function shape(info: string, ports: number[]): string {
  let s = info.replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, "<time>").replace(
    /Cluster created at .*/,
    "Cluster created at <ctime>",
  );
  ports.forEach((p, i) => (s = s.replaceAll(`127.0.0.1:${p}:`, `N${i}:`)));
  return s.replace(/N\d:\d+/g, (m) => m.replace(/:\d+$/, ":V"));
}

const shapes = new Map<string, { info: string; list: string }>();

for (const drv of drivers) {
  const needs = drv.needs;
  const suite = needs ? (t: string, f: () => void) => describeWith(needs, t, f) : describe;
  suite(`driver ${drv.name}`, () => {
    let env: { spec: string; stop(): Promise<void> };
    let c: TestCluster;
    const data = randomBytes(10 * MiB + 5);

    beforeAll(async () => {
      env = await drv.setup();
      // Ascending fixed ports keep node order (and so the epoch table) comparable across drivers.
      c = await TestCluster.start(3, {
        basePort: 7400 + 10 * drivers.indexOf(drv),
        driver: env.spec || undefined,
        format: { copies: 3 },
      });
    }, 180_000);
    afterAll(async () => {
      await c?.stop();
      await env?.stop();
    });

    test("format, create, write, read", async () => {
      await c.dogOk(["vdi", "create", "alpha", "64M"]);
      await c.dogOk(["vdi", "write", "alpha", String(MiB)], { input: data });
      const r = await c.dog(["vdi", "read", "alpha", String(MiB), String(data.length)], {
        node: 2,
      });
      expect(Buffer.compare(r.stdout, data)).toBe(0);
    }, 60_000);

    test(
      "20 parallel creates of distinct names through different sheep: all succeed, distinct vids",
      async () => {
        const rs = await Promise.all(
          Array.from(
            { length: 20 },
            (_, i) => c.dog(["vdi", "create", "-v", `par${i}`, "4M"], { node: i % 3 }),
          ),
        );
        expect(rs.map((r) => r.code)).toEqual(Array(20).fill(0));
        const vids = rs.map((r) => r.stdout.toString().trim());
        expect(new Set(vids).size).toBe(20);
        const list = await c.dogOk(["vdi", "list", "-r"]);
        for (let i = 0; i < 20; i++) expect(list).toContain(` par${i} `);
      },
      120_000,
    );

    test("10 parallel creates of the same name: exactly one succeeds", async () => {
      const rs = await Promise.all(
        Array.from(
          { length: 10 },
          (_, i) => c.dog(["vdi", "create", "same", "4M"], { node: i % 3 }),
        ),
      );
      expect(rs.filter((r) => r.code === 0).length).toBe(1);
      for (const r of rs.filter((x) => x.code !== 0)) {
        expect(r.stderr).toContain("VDI exists already");
      }
      const list = await c.dogOk(["vdi", "list", "-r", "same"]);
      expect(list.trim().split("\n").length).toBe(1);
    }, 120_000);

    test("kill -9: survivors see the leave, new epoch, data still reads", async () => {
      await c.kill(2);
      await c.waitFor(
        async () => /^\d+ 2 \[/m.test((await c.dog(["cluster", "info", "-r"])).stdout.toString()),
        60_000,
        "epoch 2",
      );
      const r = await c.dog(["vdi", "read", "alpha", String(MiB), String(data.length)], {
        node: 1,
      });
      expect(Buffer.compare(r.stdout, data)).toBe(0);
    }, 120_000);

    test("restart: rejoins, epoch 3 with all nodes", async () => {
      await c.startNode(2);
      await c.waitFor(
        async () => /^\d+ 3 \[/m.test((await c.dog(["cluster", "info", "-r"])).stdout.toString()),
        60_000,
        "epoch 3",
      );
      const list = await c.dogOk(["node", "list", "-r"], { node: 2 });
      expect(list.trim().split("\n").length).toBe(3);
      const r = await c.dog(["vdi", "read", "alpha", String(MiB), String(data.length)], {
        node: 2,
      });
      expect(Buffer.compare(r.stdout, data)).toBe(0);
    }, 120_000);

    test("epoch history and node list look the same on every driver", async () => {
      const ports = c.nodes.map((n) => n.port);
      const info = shape(await c.dogOk(["cluster", "info"]), ports);
      const list = (await c.dogOk(["node", "list"])).replace(/127\.0\.0\.1:\d+/g, "ADDR").replace(
        /\t\d+/g,
        "\tV",
      );
      // every node's epoch log matches the first node's
      const epochs = (i: number) => fs.readdirSync(path.join(c.nodes[i].dir, "epoch")).sort();
      expect(epochs(1)).toEqual(epochs(0));
      for (const e of epochs(0)) {
        const a = fs.readFileSync(path.join(c.nodes[0].dir, "epoch", e)).subarray(0, -8);
        expect(fs.readFileSync(path.join(c.nodes[1].dir, "epoch", e)).subarray(0, -8).equals(a))
          .toBe(true);
      }
      shapes.set(drv.name, { info, list });
      const first = shapes.get(drivers[0].name);
      if (first && drv.name !== drivers[0].name) {
        expect(info).toBe(first.info);
        expect(list).toBe(first.list);
      }
      expect(info).toContain("Cluster status: running, auto-recovery enabled");
      expect(info.split("\n").filter((l) => l.includes("<time>")).length).toBe(3);
    });
  });
}
