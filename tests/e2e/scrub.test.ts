// Issue 15, background scrub: corruption is found and repaired without any client read, both a
// flipped byte its stored checksum catches and a replica that differs from the others' hashes.
import { afterEach, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { storeObjects, TestCluster } from "../lib/cluster.ts";
import { oidHex, vidToDataOid } from "../../core/oid.ts";

const MiB = 1024 * 1024;
let c: TestCluster | null = null;
afterEach(async () => {
  await c?.stop();
  c = null;
});

function flip(file: string, at: number) {
  const b = fs.readFileSync(file);
  b[at] ^= 0x01;
  fs.writeFileSync(file, b);
}

async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 30_000) {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function vdiVid(name: string): Promise<number> {
  const row = (await c!.dogOk(["vdi", "list", "-r", name])).trim().split("\n")[0];
  return parseInt(row.split(" ")[7], 16);
}

const replica = (i: number, name: string) => storeObjects(c!.nodes[i].dir).get(name)!;

test(
  "dog node scrub start: a flipped byte and a divergent replica repaired, no client read",
  async () => {
    c = await TestCluster.start(3, {
      format: { copies: 3 },
      extra: ["--scrub", "interval=1h,rate=200"],
    });
    await c.dogOk(["vdi", "create", "v", "16M"]);
    await c.dogOk(["vdi", "write", "v", "0"], { input: randomBytes(12 * MiB) });
    const vid = await vdiVid("v");
    const [o1, o2] = [1, 2].map((i) => oidHex(vidToDataOid(vid, i)));
    const good1 = fs.readFileSync(replica(0, o1));
    const good2 = fs.readFileSync(replica(0, o2));
    // Node 1: one flipped bit, caught by its stored checksum.
    flip(replica(1, o1), 2_000_003);
    // Node 2: a replica rewritten behind the sheep's back with its side file gone (unverifiable
    // locally), so only the comparison of the replicas' hashes can find it.
    const f2 = replica(2, o2);
    const bad = Buffer.from(good2);
    bad.fill(0x5a, 100_000, 100_100);
    fs.writeFileSync(f2, bad);
    fs.rmSync(f2 + ".csum");

    const before = await c.dogOk(["node", "scrub", "status", "-r"]);
    expect(before.trim().split("\n").map((l) => l.split(" ")[1])).toEqual(["idle", "idle", "idle"]);
    const started = await c.dogOk(["node", "scrub", "start", "-A"]);
    expect(started.match(/^scrub started on /gm)!.length).toBe(3);
    await until("every node to finish a scrub pass", async () => {
      const rows = (await c!.dogOk(["node", "scrub", "status", "-r"])).trim().split("\n");
      return rows.every((r) => r.split(" ")[1] === "idle" && r.split(" ")[2] !== "0");
    });
    expect(fs.readFileSync(replica(1, o1)).equals(good1)).toBe(true);
    expect(fs.readFileSync(replica(2, o2)).equals(good2)).toBe(true);
    const rows = (await c.dogOk(["node", "scrub", "status", "-r"])).trim().split("\n")
      .map((r) => r.split(" ").slice(3).map(Number)); // objects corrupt mismatched repaired failed
    // Node 1's corrupt copy is found by its own pass or by the first holder's hash comparison,
    // whichever comes first; node 2's divergent copy only by the latter.
    expect(rows.reduce((n, r) => n + r[1] + r[2], 0)).toBeGreaterThanOrEqual(2);
    expect(rows.reduce((n, r) => n + r[2], 0)).toBeGreaterThanOrEqual(1);
    expect(rows.reduce((n, r) => n + r[3], 0)).toBeGreaterThanOrEqual(2);
    expect(rows.every((r) => r[4] === 0 && r[0] >= 4)).toBe(true);
    const text = await c.dogOk(["node", "scrub", "status"]);
    expect(text.split("\n")[0]).toMatch(/^Id\s+Host:Port\s+Status\s+Last scrub/);
    const check = await c.dogOk(["cluster", "check"]);
    expect(check).toContain("Last scrub:\n");
    expect(check).toMatch(/ idle +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/);
  },
  180_000,
);

test("--scrub interval=1: the scheduled pass repairs a flipped byte by itself", async () => {
  c = await TestCluster.start(2, {
    format: { copies: 2 },
    extra: ["--scrub", "interval=1,rate=200"],
  });
  await c.dogOk(["vdi", "create", "v", "8M"]);
  await c.dogOk(["vdi", "write", "v", "0"], { input: randomBytes(8 * MiB) });
  const o1 = oidHex(vidToDataOid(await vdiVid("v"), 1));
  const good = fs.readFileSync(replica(1, o1));
  flip(replica(0, o1), 77);
  await until(
    "the scheduled scrub to repair node 0's replica",
    () => fs.readFileSync(replica(0, o1)).equals(good),
  );
  // Node 0's own pass, or the first holder's hash comparison, whichever came first.
  const logs = c.nodes.map((n) => fs.readFileSync(`${n.dir}/sheep.log`, "utf8")).join("");
  expect(logs).toMatch(
    new RegExp(`scrub: (${o1} fails its stored checksums here|repaired replica of ${o1})`),
  );
}, 120_000);

test("--scrub off: no pass is planned, one by hand still runs", async () => {
  c = await TestCluster.start(1, { format: { copies: 1 }, extra: ["--scrub", "off"] });
  expect((await c.dogOk(["node", "scrub", "status", "-r"])).split(" ")[1]).toBe("off");
  const r = await c.dog(["node", "scrub", "start"]);
  expect(r.code).toBe(0);
  expect(r.stdout.toString()).toMatch(/^scrub started on 127\.0\.0\.1:\d+\n$/);
  await until("the pass by hand to finish", async () => {
    const f = (await c!.dogOk(["node", "scrub", "status", "-r"])).trim().split(" ");
    return f[1] === "off" && f[2] !== "0";
  });
}, 60_000);
