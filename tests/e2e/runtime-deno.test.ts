// The same sources run unchanged on Deno: the appliance smoke scenario with `deno run -A mod.ts`
// for every sheep and every dog (the other e2e files use the Bun-compiled binary).
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import type { TestCluster as Cluster } from "../lib/cluster.ts";

process.env.SHEEPDOG_RUNTIME = "deno";
const { TestCluster } = await import("../lib/cluster.ts");

const MiB = 1024 * 1024;
let c: Cluster;

beforeAll(async () => {
  c = await TestCluster.start(3, { format: { copies: 3 } });
}, 180_000);
afterAll(async () => {
  await c?.stop();
});

test("deno: format, create, write, read, kill -9, read", async () => {
  const data = randomBytes(12 * MiB + 777);
  await c.dogOk(["vdi", "create", "alpha", "64M"]);
  await c.dogOk(["vdi", "write", "alpha", String(3 * MiB)], { input: data });
  const r = await c.dog(["vdi", "read", "alpha", String(3 * MiB), String(data.length)]);
  expect(Buffer.compare(r.stdout, data)).toBe(0);
  for (let i = 0; i < 3; i++) expect(c.objectFiles(i).length).toBe(5); // inode + objects 0..3
  await c.kill(2);
  await c.waitFor(
    async () => /^\d+ 2 \[/m.test((await c.dog(["cluster", "info", "-r"])).stdout.toString()),
    30_000,
    "epoch 2",
  );
  const r2 = await c.dog(["vdi", "read", "alpha", String(3 * MiB), String(data.length)], {
    node: 1,
  });
  expect(Buffer.compare(r2.stdout, data)).toBe(0);
}, 180_000);
