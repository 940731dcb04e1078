// Cluster snapshots (`dog cluster snapshot`, the farm) on a real 3-node cluster: round trip
// through `cluster format`, incremental saves, verification before load, interrupted saves,
// errors and the progress bar. Expected bytes come from what the test wrote, not from dog.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { ROOT, sheepCommand, TestCluster } from "../lib/cluster.ts";

const MiB = 1024 * 1024;

let c: TestCluster;
let farm: string;

function treeSize(d: string): number {
  let n = 0;
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(d, { withFileTypes: true });
  } catch {
    return 0; // not created yet, or removed by the save meanwhile
  }
  for (const e of entries) {
    const p = path.join(d, e.name);
    try {
      n += e.isDirectory() ? treeSize(p) : fs.statSync(p).size;
    } catch { /* renamed or removed meanwhile */ }
  }
  return n;
}

/** Bytes under DIR/objects (what the farm stores). */
function farmBytes(dir: string): number {
  return treeSize(path.join(dir, "objects"));
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

async function write(name: string, offset: number, data: Buffer): Promise<void> {
  await c.dogOk(["vdi", "write", name, String(offset), String(data.length)], { input: data });
}

async function read(name: string, snap?: string): Promise<Buffer> {
  const args = ["vdi", "read", name];
  if (snap) args.push("-s", snap);
  const r = await c.dog(args);
  if (r.code !== 0) throw new Error(`vdi read ${name} ${snap ?? ""}: ${r.stderr}`);
  return r.stdout;
}

/** Everything a user can observe: contents of every VDI and snapshot, tree, list, attributes. */
async function observe(): Promise<Record<string, string>> {
  const o: Record<string, string> = {};
  for (
    const [name, snap] of [["a", undefined], ["a", "a1"], ["b", undefined], ["b", "b1"], [
      "bc",
      undefined,
    ], ["c", undefined]] as const
  ) {
    o[`${name}:${snap ?? ""}`] = sha(await read(name, snap));
  }
  o.tree = await c.dogOk(["vdi", "tree"]);
  // -r: VIDs, sizes, used/shared, creation times, copies, tags, block size shift
  o.list = await c.dogOk(["vdi", "list", "-r"]);
  o.attr = await c.dogOk(["vdi", "getattr", "c", "color"]);
  return o;
}

let before: Record<string, string>;
let firstBytes = 0;
/** Files of the first save: all of them belong to snapshot t1. */
const t1Files: string[] = [];

beforeAll(async () => {
  c = await TestCluster.start(3, { format: { copies: 2 } });
  farm = path.join(c.root, "farm");
  // a: 24 MiB, snapshot a1, then more writes; b (3 copies): snapshot b1 and clone bc; c: attr.
  await c.dogOk(["vdi", "create", "a", "24M"]);
  await write("a", 0, randomBytes(12 * MiB));
  await c.dogOk(["vdi", "snapshot", "-s", "a1", "a"]);
  await write("a", 4 * MiB, randomBytes(6 * MiB));
  await c.dogOk(["vdi", "create", "-c", "3", "b", "16M"]);
  await write("b", 2 * MiB, randomBytes(9 * MiB));
  await c.dogOk(["vdi", "snapshot", "-s", "b1", "b"]);
  await c.dogOk(["vdi", "clone", "-s", "b1", "b", "bc"]);
  await write("bc", 0, randomBytes(3 * MiB));
  await c.dogOk(["vdi", "create", "c", "8M"]);
  await write("c", 1 * MiB, randomBytes(5 * MiB));
  await c.dogOk(["vdi", "setattr", "c", "color", "blue"]);
  before = await observe();
}, 300_000);

afterAll(async () => {
  await c?.stop();
});

describe("dog cluster snapshot", () => {
  test(
    "save, cluster format, load: every VDI, snapshot, clone, tree and attribute back",
    async () => {
      await c.dogOk(["cluster", "snapshot", "save", "t1", farm]);
      firstBytes = farmBytes(farm);
      for (const d of fs.readdirSync(path.join(farm, "objects"))) {
        for (const f of fs.readdirSync(path.join(farm, "objects", d))) {
          t1Files.push(`objects/${d}/${f}`);
        }
      }
      // 12+6+9+3+5 MiB of data were written; inodes are mostly zeros (one file).
      expect(firstBytes).toBeGreaterThan(35 * MiB);
      expect(firstBytes).toBeLessThan(45 * MiB);
      await c.dogOk(["cluster", "format", "-c", "2", "-f"]);
      await c.waitRunning();
      expect((await c.dogOk(["vdi", "list", "-r"])).trim()).toBe("");
      const r = await c.dog(["cluster", "snapshot", "load", "-f", "t1", farm]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(await observe()).toEqual(before);
      // Every node knows every VDI (not only those holding its inode): lookups through node 2.
      const l2 = await c.dogOk(["vdi", "list", "-r"], { node: 2 });
      expect(l2).toBe(before.list);
      // The restored working VDI still takes writes; the snapshot stays read-only underneath.
      const fresh = randomBytes(MiB);
      await write("a", 20 * MiB, fresh);
      expect((await read("a")).subarray(20 * MiB, 21 * MiB).equals(fresh)).toBe(true);
      expect(sha(await read("a", "a1"))).toBe(before["a:a1"]);
    },
    300_000,
  );

  test("list and show print upstream's formats", async () => {
    const out = await c.dogOk(["cluster", "snapshot", "list", farm]);
    expect(out).toMatch(
      /^Index\t\tTag\t\tSnapshot Time\n1\t\tt1\t\t\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n$/,
    );
    const s = await c.dog(["cluster", "snapshot", "show", "t1", farm]);
    expect(s.code).toBe(0);
    const lines = s.stderr.trim().split("\n");
    expect(lines.length).toBe(6); // a, a1, b, b1, bc, c
    expect(lines[0]).toMatch(/^1\. VDI id: [0-9a-f]+, name: \w+, tag: \w*$/);
    const only = await c.dog(["cluster", "snapshot", "show", "1", farm, "b"]);
    expect(only.stderr.replace(/\n$/, "").split("\n").map((l) => l.replace(/VDI id: \w+/, "")))
      .toEqual([
        "1. , name: b, tag: b1",
        "2. , name: b, tag: ",
      ]);
  }, 60_000);

  test("saves are incremental: unchanged < 1 %, 10 MiB changed -> about 10 MiB", async () => {
    // (after the load above, "a" got 1 MiB at 20 MiB: take that into the next baseline)
    await c.dogOk(["cluster", "snapshot", "save", "t2", farm]);
    const b2 = farmBytes(farm);
    await c.dogOk(["cluster", "snapshot", "save", "t3", farm]);
    const b3 = farmBytes(farm);
    expect(b3 - b2).toBeLessThan(firstBytes / 100);
    await write("b", 0, randomBytes(10 * MiB));
    await c.dogOk(["cluster", "snapshot", "save", "t4", farm]);
    const added = farmBytes(farm) - b3;
    expect(added).toBeGreaterThanOrEqual(10 * MiB);
    expect(added).toBeLessThan(11 * MiB);
    const list = await c.dogOk(["cluster", "snapshot", "list", farm]);
    expect(list.trim().split("\n").slice(1).map((l) => l.split("\t\t").slice(0, 2).join(" ")))
      .toEqual(["1 t1", "2 t2", "3 t3", "4 t4"]);
  }, 300_000);

  test("a flipped byte or a missing file: load names it and leaves the cluster alone", async () => {
    const now = await observe();
    // A slice of real data (not the shared all-zero slice): the biggest files are 128 KiB.
    const files: string[] = [];
    for (const f of t1Files) {
      const p = path.join(farm, f);
      if (fs.statSync(p).size === 128 * 1024 && fs.readFileSync(p).some((x) => x !== 0)) {
        files.push(f);
      }
    }
    const victim = files[Math.floor(files.length / 2)];
    const p = path.join(farm, victim);
    const orig = fs.readFileSync(p);
    const bad = Buffer.from(orig);
    bad[777] ^= 0x40;
    fs.writeFileSync(p, bad);
    try {
      const r = await c.dog(["cluster", "snapshot", "load", "-f", "t1", farm]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(victim);
      expect(r.stderr).toContain("corrupt");
      expect(await observe()).toEqual(now);
      fs.rmSync(p);
      const m = await c.dog(["cluster", "snapshot", "load", "-f", "t1", farm]);
      expect(m.code).toBe(2);
      expect(m.stderr).toContain(`${victim} is missing`);
      expect(await observe()).toEqual(now);
    } finally {
      fs.writeFileSync(p, orig);
    }
  }, 300_000);

  test(
    "load asks first: anything but yes (or EOF) aborts without touching the cluster",
    async () => {
      const now = await c.dogOk(["vdi", "list", "-r"]);
      for (const input of ["no\n", ""]) {
        const r = await c.dog(["cluster", "snapshot", "load", "t1", farm], { input });
        expect(r.code).toBe(1);
        expect(r.stdout.toString()).toContain("[yes/no]");
        expect(r.stderr).toContain("aborted");
        expect(await c.dogOk(["vdi", "list", "-r"])).toBe(now);
      }
      const y = await c.dog(["cluster", "snapshot", "load", "t1", farm], { input: "yes\n" });
      expect(y.code).toBe(0);
      expect(await observe()).toEqual(before);
    },
    300_000,
  );

  test("errors: not a farm, unknown tag, numeric tag, tag reuse, missing path", async () => {
    const plain = path.join(c.root, "plain");
    fs.mkdirSync(plain);
    fs.writeFileSync(path.join(plain, "x"), "x");
    let r = await c.dog(["cluster", "snapshot", "list", plain]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("is not a farm");
    r = await c.dog(["cluster", "snapshot", "save", "s", plain]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("is not a farm");
    expect(fs.readdirSync(plain)).toEqual(["x"]);
    r = await c.dog(["cluster", "snapshot", "load", "-f", "nosuch", farm]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("Snapshot index or tag does not exist.");
    r = await c.dog(["cluster", "snapshot", "save", "1x", farm]);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain("Tag should not start with number.");
    r = await c.dog(["cluster", "snapshot", "save", "t1", farm]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("Snapshot tag has already been used");
    r = await c.dog(["cluster", "snapshot", "save", "zz"]);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain("Please specify the path to save snapshot.");
    // A save running into the same farm (its pid is alive: ours) is not disturbed.
    fs.writeFileSync(path.join(farm, "lock"), `${process.pid}\n`);
    fs.writeFileSync(path.join(farm, "tmp", "theirs"), "x");
    r = await c.dog(["cluster", "snapshot", "save", "zz", farm]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`Another save into ${farm} is running (pid ${process.pid})`);
    expect(fs.readdirSync(path.join(farm, "tmp"))).toEqual(["theirs"]);
    fs.rmSync(path.join(farm, "lock"));
    fs.rmSync(path.join(farm, "tmp", "theirs"));
    const f = path.join(c.root, "afile");
    fs.writeFileSync(f, "");
    r = await c.dog(["cluster", "snapshot", "save", "zz", f]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("Path is not a directory");
  }, 120_000);

  test(
    "a full disk during save: clear error, exit 2, no snapshot recorded, tmp/ emptied",
    async () => {
      const small = path.join(c.root, "small");
      fs.mkdirSync(small);
      // About half of what the cluster holds fits (a real tmpfs; tests run as root).
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=20m", "tmpfs", small]);
      try {
        const dir = path.join(small, "farm");
        const r = await c.dog(["cluster", "snapshot", "save", "full", dir]);
        expect(r.code).toBe(2);
        expect(r.stderr).toContain("No space left on device");
        expect(r.stderr).toContain(`Fail to save snapshot to path: ${dir}.`);
        expect(fs.readdirSync(path.join(dir, "tmp"))).toEqual([]);
        const l = await c.dog(["cluster", "snapshot", "list", dir]);
        expect(l.code).toBe(0);
        expect(l.stdout.toString()).toBe("Index\t\tTag\t\tSnapshot Time\n");
      } finally {
        execFileSync("umount", ["-l", small]);
      }
    },
    120_000,
  );

  test(
    "kill -9 in the middle of a save: the farm stays usable, the next save completes",
    async () => {
      await write("a", 0, randomBytes(16 * MiB));
      await write("c", 0, randomBytes(8 * MiB));
      const [cmd, ...pre] = sheepCommand();
      const args = [
        ...pre,
        "dog",
        "cluster",
        "snapshot",
        "save",
        "k1",
        farm,
        "-p",
        String(c.nodes[0].port),
      ];
      const proc = spawn(cmd, args, { cwd: ROOT, stdio: "ignore" });
      // New files go to tmp/ first, into objects/ once synced (in batches).
      const stored = () => farmBytes(farm) + treeSize(path.join(farm, "tmp"));
      const start = stored();
      // Kill once the save has written a few MiB of new files, well before it is done.
      const deadline = Date.now() + 60_000;
      while (stored() - start < 2 * MiB && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
      if (proc.exitCode === null) {
        proc.kill("SIGKILL");
        await new Promise((r) => proc.once("exit", r));
      }
      expect(stored() - start).toBeLessThan(24 * MiB);
      const list = await c.dogOk(["cluster", "snapshot", "list", farm]);
      expect(list).not.toContain("k1");
      await c.dogOk(["cluster", "snapshot", "save", "k1", farm]);
      expect(await c.dogOk(["cluster", "snapshot", "list", farm])).toContain("\t\tk1\t\t");
      const now = await observe();
      await c.dogOk(["cluster", "snapshot", "load", "-f", "k1", farm]);
      expect(await observe()).toEqual(now);
    },
    300_000,
  );

  test("save and load of named VDIs only", async () => {
    const b = sha(await read("b")), b1 = sha(await read("b", "b1"));
    await c.dogOk(["cluster", "snapshot", "save", "onlyb", farm, "b"]);
    const s = await c.dog(["cluster", "snapshot", "show", "onlyb", farm]);
    expect(s.stderr.split("\n").filter(Boolean).map((l) => l.replace(/VDI id: \w+, /, "")))
      .toEqual(["1. name: b, tag: b1", "2. name: b, tag: "]);
    await c.dogOk(["cluster", "snapshot", "load", "-f", "onlyb", farm, "b"]);
    const names = (await c.dogOk(["vdi", "list", "-r"])).trim().split("\n").map((l) =>
      l.split(" ").slice(0, 2).join(" ")
    );
    expect(names.sort()).toEqual(["= b", "s b"]);
    expect(sha(await read("b"))).toBe(b);
    expect(sha(await read("b", "b1"))).toBe(b1);
    const none = await c.dog(["cluster", "snapshot", "load", "-f", "onlyb", farm, "nosuch"]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("Objects of specified VDIs are not found");
  }, 300_000);

  test("progress bar on a terminal only", async () => {
    const [cmd, ...pre] = sheepCommand();
    const q = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;
    const line = [
      cmd,
      ...pre,
      "dog",
      "cluster",
      "snapshot",
      "save",
      "p1",
      farm,
      "-p",
      String(c.nodes[0].port),
    ].map(q).join(" ");
    const tty = spawnSync("script", ["-qec", line, "/dev/null"], { cwd: ROOT, timeout: 120_000 });
    expect(tty.status).toBe(0);
    expect(tty.stdout.toString()).toMatch(/\r\s*100\.0 % \[=+\]/);
    const errFile = path.join(c.root, "stderr.txt");
    const fd = fs.openSync(errFile, "w");
    const plain = spawnSync(cmd, [
      ...pre,
      "dog",
      "cluster",
      "snapshot",
      "save",
      "p2",
      farm,
      "-p",
      String(c.nodes[0].port),
    ], { cwd: ROOT, stdio: ["ignore", "ignore", fd], timeout: 120_000 });
    fs.closeSync(fd);
    expect(plain.status).toBe(0);
    expect(fs.readFileSync(errFile, "utf8")).toBe("");
  }, 300_000);
});
