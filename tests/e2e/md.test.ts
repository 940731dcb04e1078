// Issue 15, disks: `dog node md plug|unplug` under a running write, upstream's refusals, a disk
// that disappears under a running sheep, and `sheep -D` (O_DIRECT) on the root filesystem.
import { afterAll, afterEach, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { freePort, TestCluster } from "../lib/cluster.ts";

const MiB = 1024 * 1024;
let c: TestCluster | null = null;
const mounts: string[] = [];
function unmountAll() {
  for (const m of mounts.splice(0)) {
    try {
      execFileSync("umount", ["-l", m], { stdio: "ignore" });
    } catch { /* already unmounted */ }
  }
}
afterEach(async () => {
  // Before the cluster's temp dir is removed (a mount point in it cannot be).
  unmountAll();
  await c?.stop();
  c = null;
});
afterAll(unmountAll);

const objectsIn = (d: string) => fs.readdirSync(d).filter((f) => /^[0-9a-f]{16}$/.test(f));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 30_000) {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

function sheepLog(dir: string): string {
  return fs.readFileSync(path.join(dir, "sheep.log"), "utf8");
}

test(
  "unplug a disk during a 256 MiB write, then plug it back: no error, data intact, objects moved",
  async () => {
    c = TestCluster.create();
    const base = path.join(c.root, "n0");
    const disks = ["dA", "dB", "dC"].map((d) => path.join(c!.root, d));
    await c.addNode({ port: await freePort(), zone: 0, dir: base, objDirs: disks });
    await c.dogOk(["cluster", "format", "-c", "1"]);
    await c.waitRunning();
    await c.dogOk(["vdi", "create", "v", "256M"]);
    const data = randomBytes(256 * MiB);
    const writing = c.dog(["vdi", "write", "v", "0"], { input: data });
    await until("objects on the disk to unplug", () => objectsIn(disks[2]).length >= 4);
    const un = await c.dog(["node", "md", "unplug", "-f", disks[2]]);
    expect(un.code).toBe(0);
    const w = await writing;
    expect(w.stderr).toBe("");
    expect(w.code).toBe(0);
    await until("the unplugged disk to be emptied", () => objectsIn(disks[2]).length === 0);
    const md = await c.dogOk(["node", "md", "info"]);
    expect(md).not.toContain(disks[2]);
    expect(objectsIn(disks[0]).length + objectsIn(disks[1]).length).toBe(65); // 64 data + inode
    const r = await c.dog(["vdi", "read", "v", "0", String(data.length)]);
    expect(r.code).toBe(0);
    expect(Buffer.compare(r.stdout, data)).toBe(0);

    // Plug it back: the ring gives it a share again and objects move onto it.
    expect((await c.dog(["node", "md", "plug", "-f", disks[2]])).code).toBe(0);
    await until("objects to move onto the plugged disk", () => objectsIn(disks[2]).length >= 10);
    await until(
      "the rebalance to settle",
      () => disks.reduce((n, d) => n + objectsIn(d).length, 0) === 65,
    );
    expect(await c.dogOk(["node", "md", "info"])).toContain(disks[2]);
    const r2 = await c.dog(["vdi", "read", "v", "0", String(data.length)]);
    expect(Buffer.compare(r2.stdout, data)).toBe(0);
  },
  240_000,
);

test(
  "md plug/unplug refusals: upstream's message and exit code, the reason in sheep.log",
  async () => {
    c = TestCluster.create();
    const base = path.join(c.root, "n0");
    const disks = ["dA", "dB"].map((d) => path.join(c!.root, d));
    await c.addNode({ port: await freePort(), zone: 0, dir: base, objDirs: disks });
    await c.dogOk(["cluster", "format", "-c", "1"]);
    await c.waitRunning();
    const file = path.join(c.root, "a-file");
    fs.writeFileSync(file, "not a directory");
    const cases: Array<[string[], string]> = [
      [["plug", file], `can't mkdir for ${file}`],
      [["plug", disks[0]], `duplicate path ${disks[0]}`],
      [["unplug", path.join(c.root, "nowhere")], `invalid path ${path.join(c.root, "nowhere")}`],
      [["unplug", disks.join(",")], "refusing to unplug the last disk"],
    ];
    for (const [args, logged] of cases) {
      const r = await c.dog(["node", "md", ...args, "-f"]);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe("Failed to execute request, look for sheep.log for more information\n");
      expect(sheepLog(base)).toContain(logged);
    }
    // Without -f the purge warning is asked for, as upstream.
    const r = await c.dog(["node", "md", "plug", path.join(c.root, "dX")], { input: "no\n" });
    expect(r.stdout.toString()).toContain("Caution! The directories to be plugged will be purged.");
    expect(r.code).not.toBe(0);
    expect(fs.readFileSync(file, "utf8")).toBe("not a directory");
    const md = await c.dogOk(["node", "md", "info", "-r"]);
    expect(md.trim().split("\n").length).toBe(2);
  },
  120_000,
);

test(
  "a disk that disappears is unplugged and its objects recovered; a sheep with no disk left leaves",
  async () => {
    c = TestCluster.create();
    // Node 0: two tmpfs disks of one size (equal weights: both get objects); node 3: one tmpfs.
    // Nodes 1 and 2 store on tmpfs too: vnodes follow capacity exactly (as upstream), so next to
    // the root filesystem's free space the small disks would get almost no vnodes and no objects.
    const a0 = path.join(c.root, "tmpfs0a");
    const t0 = path.join(c.root, "tmpfs0b");
    const t1 = path.join(c.root, "tmpfs1");
    const t2 = path.join(c.root, "tmpfs2");
    const t3 = path.join(c.root, "tmpfs3");
    for (const t of [a0, t0, t1, t2, t3]) {
      fs.mkdirSync(t);
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=256m", "tmpfs", t]);
      mounts.push(t);
      // Each disk gets ceil(capacity / 1 GiB) vdisks (as upstream): 256 MiB is one, and two
      // points on node 0's disk ring split it at random, now and then leaving t0 no object.
      // A recorded capacity of 16 GiB (what upstream's user.md.size xattr holds) gives 16 each.
      fs.writeFileSync(path.join(t, ".md.size"), `${16n << 30n}\n`);
    }
    await c.addNode({ zone: 0, dir: path.join(c.root, "n0"), objDirs: [a0, t0] });
    await c.addNode({ zone: 1, dir: path.join(c.root, "n1"), objDirs: [t1] });
    await c.addNode({ zone: 2, dir: path.join(c.root, "n2"), objDirs: [t2] });
    await c.addNode({ zone: 3, dir: path.join(c.root, "n3"), objDirs: [t3] });
    await c.waitFor(async () => {
      const r = await c!.dog(["node", "list", "-r"]);
      return r.stdout.toString().trim().split("\n").length === 4;
    });
    await c.dogOk(["cluster", "format", "-c", "3"]);
    await c.waitRunning();
    await c.dogOk(["vdi", "create", "v", "64M"]);
    const data = randomBytes(64 * MiB);
    await c.dogOk(["vdi", "write", "v", "0"], { input: data });
    const onT0 = objectsIn(t0).length;
    expect(onT0).toBeGreaterThan(0);
    const total0 = onT0 + objectsIn(a0).length;

    // Node 0's second disk goes away under it; node 3 loses its only disk.
    execFileSync("umount", ["-l", t0]);
    execFileSync("umount", ["-l", t3]);
    await until(
      "node 0 to unplug the vanished disk",
      () => sheepLog(path.join(c!.root, "n0")).includes(`disk ${t0} failed`),
    );
    await until("node 3 to leave", () => !c!.isRunning(3));
    expect(sheepLog(path.join(c.root, "n3"))).toContain("no disk left");
    // Client I/O through node 0 goes on meanwhile, without an error.
    const r = await c.dog(["vdi", "read", "v", "0", String(data.length)]);
    expect(r.code).toBe(0);
    expect(Buffer.compare(r.stdout, data)).toBe(0);
    const patch = randomBytes(8 * MiB);
    expect((await c.dog(["vdi", "write", "v", String(16 * MiB)], { input: patch })).code).toBe(0);
    patch.copy(data, 16 * MiB);
    // Node 0 holds its share again, all on its remaining disk (recovered from the others).
    await until(
      "node 0 to recover its objects onto the remaining disk",
      () => objectsIn(a0).length >= total0,
    );
    const md = await c.dogOk(["node", "md", "info", "-r"]);
    expect(md).not.toContain(t0);
    expect(md).toContain(a0);
    const r2 = await c.dog(["vdi", "read", "v", "0", String(data.length)]);
    expect(Buffer.compare(r2.stdout, data)).toBe(0);
    const check = await c.dog(["vdi", "check", "v"]);
    expect(check.code).toBe(0);
  },
  240_000,
);

test("sheep -D: object files are opened O_DIRECT; writes and reads work", async () => {
  c = TestCluster.create();
  await c.addNode({ zone: 0, extra: ["-D"] });
  await c.dogOk(["cluster", "format", "-c", "1"]);
  await c.waitRunning();
  await c.dogOk(["vdi", "create", "v", "16M"]);
  const data = randomBytes(6 * MiB + 1234);
  await c.dogOk(["vdi", "write", "v", "777"], { input: data });
  const r = await c.dog(["vdi", "read", "v", "777", String(data.length)]);
  expect(Buffer.compare(r.stdout, data)).toBe(0);
  const pid = c.nodes[0].proc!.pid!;
  const O_DIRECT = 0o40000;
  const objFds = fs.readdirSync(`/proc/${pid}/fd`).map((fd) => {
    let target = "";
    try {
      target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch { /* closed meanwhile */ }
    return { fd, target };
  }).filter((f) => /\/obj\/[0-9a-f]{16}$/.test(f.target));
  expect(objFds.length).toBeGreaterThan(0);
  for (const f of objFds) {
    const flags = /flags:\s+([0-7]+)/.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${f.fd}`, "utf8"))!;
    expect(parseInt(flags[1], 8) & O_DIRECT).toBe(O_DIRECT);
  }
  expect(sheepLog(c.nodes[0].dir)).toContain("direct I/O (O_DIRECT)");
}, 120_000);
