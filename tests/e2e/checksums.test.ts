// Issue 15, stored checksums: a byte flipped in one replica's object file behind the sheep's back
// is never served; the gateway reads another replica and repairs the corrupt one. The side files'
// write-intent log (io/csum-intent.ts): a clean stop leaves it empty (the restart reseals nothing),
// a SIGKILL right after writes leaves names dirty that the restart reseals.
import { afterAll, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { storeObjects, TestCluster } from "../lib/cluster.ts";
import { oidHex, vidToDataOid } from "../../core/oid.ts";
import { INTENT_FILE } from "../../io/csum-intent.ts";

const MiB = 1024 * 1024;
let c: TestCluster;
let one: TestCluster | undefined;
afterAll(async () => {
  await c?.stop();
  await one?.stop();
});

function flip(file: string, at: number) {
  const b = fs.readFileSync(file);
  b[at] ^= 0x01;
  fs.writeFileSync(file, b);
}

async function until(what: string, ok: () => boolean, ms = 10_000) {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("a flipped byte in one replica: the read returns good data and repairs it", async () => {
  c = await TestCluster.start(3, { format: { copies: 3 } });
  await c.dogOk(["vdi", "create", "v", "16M"]);
  const data = randomBytes(8 * MiB);
  await c.dogOk(["vdi", "write", "v", "0"], { input: data });
  const row = (await c.dogOk(["vdi", "list", "-r", "v"])).trim().split("\n")[0];
  const vid = parseInt(row.split(" ")[7], 16);
  const name = oidHex(vidToDataOid(vid, 1));
  const file = (i: number) => storeObjects(c.nodes[i].dir).get(name)!;
  const f0 = c.nodes.map((_, i) => file(i));
  expect(f0.every((f) => f !== undefined)).toBe(true);
  const good = fs.readFileSync(f0[1]);
  // Node 0 reads its local replica first: corrupt it.
  flip(f0[0], 123_457);
  expect(fs.readFileSync(f0[0]).equals(good)).toBe(false);
  const r = await c.dog(["vdi", "read", "v", "0", String(data.length)], { node: 0 });
  expect(r.code).toBe(0);
  expect(Buffer.compare(r.stdout, data)).toBe(0);
  await until("repair", () => fs.readFileSync(f0[0]).equals(good));
  const r2 = await c.dog(["vdi", "read", "v", String(4 * MiB), String(4 * MiB)], { node: 0 });
  expect(Buffer.compare(r2.stdout, data.subarray(4 * MiB))).toBe(0);
}, 120_000);

test(
  "write-intent log: empty after SIGTERM (nothing resealed), resealed after SIGKILL",
  async () => {
    one = await TestCluster.start(1, { format: { copies: 1 } });
    const n = one.nodes[0];
    const intent = path.join(n.dir, "obj", INTENT_FILE);
    const log = path.join(n.dir, "sheep.log");
    // sheep.log from byte `at` on (what a restart logged).
    const since = (at: number) => fs.readFileSync(log).subarray(at).toString("utf8");
    const data = randomBytes(8 * MiB);
    await one.dogOk(["vdi", "create", "w", "16M"]);
    const writeAll = () => one!.dogOk(["vdi", "write", "w", "0"], { input: data });
    await writeAll();
    // Well within the cleaner's idle time: the names are still dirty when the stop begins.
    expect(fs.statSync(intent).size).toBeGreaterThan(0);
    await one.kill(0, "SIGTERM");
    expect(fs.statSync(intent).size).toBe(0);
    let at = fs.statSync(log).size;
    await one.startNode(0);
    await one.waitRunning();
    expect(since(at)).not.toMatch(/resealed the checksums/);

    await writeAll();
    expect(fs.statSync(intent).size).toBeGreaterThan(0);
    await one.kill(0, "SIGKILL");
    expect(fs.statSync(intent).size).toBeGreaterThan(0);
    at = fs.statSync(log).size;
    await one.startNode(0);
    await one.waitRunning();
    expect(since(at)).toMatch(/resealed the checksums of \d+ objects .*\(0 blocks had changed/);
    expect(fs.statSync(intent).size).toBe(0);
    const r = await one.dog(["vdi", "read", "w", "0", String(data.length)]);
    expect(r.code).toBe(0);
    expect(Buffer.compare(r.stdout, data)).toBe(0);
  },
  120_000,
);
