// VDI lifecycle acceptance: snapshots, clones, rollback, Used/Shared accounting, tree/graph,
// attributes, locks, resize, bad input, check/repair, snapshots over NBD, delete with space
// reclaim, 100 TiB hyper volumes, track and alter-copy. Expected content comes from a model
// of every VDI (bytes and the owner of every data slot), never from "it did not fail".
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { type DogResult, TestCluster } from "../lib/cluster.ts";
import { testWith } from "../lib/components.ts";
import {
  isDataObj,
  isLedgerObj,
  isVdiObj,
  oidHex,
  vidToDataOid,
  vidToVdiOid,
} from "../../core/oid.ts";
import { Ring } from "../../core/ring.ts";
import { makeNode } from "../../core/node.ts";

const MiB = 1024 * 1024;
const OBJ = 4 * MiB;
const SIZE = 24 * MiB;
const TiB = 1024 * 1024 * MiB;

// ---------------------------------------------------------------------------------------------
// model

interface MVdi {
  /** Model identity; a VID in the cluster. */
  key: string;
  name: string;
  tag: string;
  snapshot: boolean;
  /** Model key of the VDI owning each data slot (null = unallocated). */
  owners: (string | null)[];
  data: Buffer;
}

class Model {
  vdis: MVdi[] = [];
  private n = 0;

  private fresh(name: string, from?: MVdi, size = SIZE): MVdi {
    const v: MVdi = {
      key: `${name}#${this.n++}`,
      name,
      tag: "",
      snapshot: false,
      owners: from ? [...from.owners] : new Array(Math.ceil(size / OBJ)).fill(null),
      data: from ? Buffer.from(from.data) : Buffer.alloc(size),
    };
    this.vdis.push(v);
    return v;
  }

  working(name: string): MVdi {
    const v = this.vdis.find((x) => x.name === name && !x.snapshot);
    if (!v) throw new Error(`model: no working VDI ${name}`);
    return v;
  }

  snap(name: string, tag: string): MVdi {
    const v = this.vdis.find((x) => x.name === name && x.snapshot && x.tag === tag);
    if (!v) throw new Error(`model: no snapshot ${name}@${tag}`);
    return v;
  }

  create(name: string, size = SIZE): MVdi {
    return this.fresh(name, undefined, size);
  }

  write(name: string, off: number, buf: Buffer): void {
    const v = this.working(name);
    buf.copy(v.data, off);
    for (let i = Math.floor(off / OBJ); i * OBJ < off + buf.length; i++) v.owners[i] = v.key;
  }

  /** The working VDI keeps its VID and becomes the snapshot; the new working VDI shares everything. */
  snapshot(name: string, tag: string): void {
    const w = this.working(name);
    w.snapshot = true;
    w.tag = tag;
    this.fresh(name, w);
  }

  clone(src: string, tag: string, dst: string): void {
    this.fresh(dst, this.snap(src, tag));
  }

  rollback(name: string, tag: string): void {
    this.remove(this.working(name));
    this.fresh(name, this.snap(name, tag));
  }

  remove(v: MVdi): void {
    this.vdis = this.vdis.filter((x) => x !== v);
  }

  /** upstream's Used/Shared: slots owned by this VDI / by other VDIs, times the object size. */
  usage(v: MVdi): { used: number; shared: number } {
    let used = 0, shared = 0;
    for (const o of v.owners) {
      if (o === v.key) used += OBJ;
      else if (o !== null) shared += OBJ;
    }
    return { used, shared };
  }
}

// ---------------------------------------------------------------------------------------------
// helpers

interface Row {
  marker: string;
  name: string;
  snapid: number;
  size: number;
  used: number;
  shared: number;
  vid: number;
  copies: string;
  tag: string;
}

async function listRows(c: TestCluster): Promise<Row[]> {
  const out = await c.dogOk(["vdi", "list", "-r"]);
  return out.split("\n").filter((l) => l).map((l) => {
    const f = l.split(" ");
    return {
      marker: f[0],
      name: f[1],
      snapid: Number(f[2]),
      size: Number(f[3]),
      used: Number(f[4]),
      shared: Number(f[5]),
      vid: parseInt(f[7], 16),
      copies: f[8],
      tag: f[9],
    };
  });
}

function rowOf(rows: Row[], v: { name: string; tag: string; snapshot: boolean }): Row {
  const r = rows.find((x) =>
    x.name === v.name && (v.snapshot ? x.marker === "s" && x.tag === v.tag : x.marker !== "s")
  );
  if (!r) {
    throw new Error(
      `no list row for ${v.name}${v.snapshot ? "@" + v.tag : ""}: ${JSON.stringify(rows)}`,
    );
  }
  return r;
}

async function vidOf(c: TestCluster, name: string, tag = ""): Promise<number> {
  return rowOf(await listRows(c), { name, tag, snapshot: tag !== "" }).vid;
}

async function readVdi(
  c: TestCluster,
  name: string,
  tag = "",
  off?: number,
  len?: number,
): Promise<Buffer> {
  const args = ["vdi", "read", name];
  if (off !== undefined) args.push(String(off));
  if (len !== undefined) args.push(String(len));
  if (tag) args.push("-s", tag);
  const r = await c.dog(args);
  if (r.code !== 0) throw new Error(`dog ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

async function writeVdi(c: TestCluster, name: string, off: number, data: Buffer): Promise<void> {
  await c.dogOk(["vdi", "write", name, String(off), String(data.length)], { input: data });
}

function sha(b: Buffer): string {
  return createHash("sha1").update(b).digest("hex");
}

/** Path of the object file `name` on node i (plain store: <dir>/obj/<name>), or null. */
function objectPath(c: TestCluster, i: number, name: string): string | null {
  const find = (d: string): string | null => {
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return null;
    }
    for (const e of ents) {
      if (e.isDirectory()) {
        if (e.name === ".stale") continue;
        const r = find(path.join(d, e.name));
        if (r) return r;
      } else if (e.name === name) return path.join(d, e.name);
    }
    return null;
  };
  return find(path.join(c.nodes[i].dir, "obj"));
}

/** Content hash of every replica file of the VDI's data objects: "node:oid" -> sha1. */
function dataFileHashes(c: TestCluster, vid: number): Map<string, string> {
  const m = new Map<string, string>();
  const prefix = oidHex(vidToDataOid(vid, 0)).slice(0, 8);
  for (let i = 0; i < c.nodes.length; i++) {
    for (const f of c.objectFiles(i)) {
      if (!f.startsWith(prefix)) continue;
      m.set(`${i}:${f}`, sha(fs.readFileSync(objectPath(c, i, f)!)));
    }
  }
  return m;
}

/** Object file contents padded to `size` (a store may keep trailing zeros sparse or trimmed). */
function replicaContent(c: TestCluster, i: number, oid: bigint, size: number): Buffer | null {
  const p = objectPath(c, i, oidHex(oid));
  if (!p) return null;
  const b = fs.readFileSync(p);
  if (b.length >= size) return b;
  return Buffer.concat([b, Buffer.alloc(size - b.length)]);
}

function allOids(c: TestCluster): { node: number; oid: bigint; name: string }[] {
  const out: { node: number; oid: bigint; name: string }[] = [];
  for (let i = 0; i < c.nodes.length; i++) {
    for (const f of c.objectFiles(i)) {
      out.push({ node: i, oid: BigInt("0x" + f.slice(0, 16)), name: f });
    }
  }
  return out;
}

function hexs(n: number | bigint): string {
  return BigInt.asUintN(64, BigInt(n)).toString(16);
}

function run(
  cmd: string,
  args: string[],
  timeoutMs = 60_000,
): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => out.push(d));
    p.stderr.on("data", (d) => (stderr += d));
    const t = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    p.on("error", reject);
    p.on("close", (code) => {
      clearTimeout(t);
      resolve({ code, stdout: Buffer.concat(out), stderr });
    });
  });
}

function json(b: Buffer): any {
  const s = b.toString();
  return JSON.parse(s.slice(s.search(/[{[]/)));
}

/** Tests that drive the Debian NBD clients. */
const clientTest = testWith("nbd-clients");
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function expectFail(r: DogResult, code: number, msg: RegExp): void {
  expect({ code: r.code, stderr: r.stderr }).toMatchObject({
    code,
    stderr: expect.stringMatching(msg),
  });
}

// ---------------------------------------------------------------------------------------------
// 3 nodes, copies 3, NBD on every node

describe("snapshots, clones, rollback, accounting, repair and deletion (3 nodes, copies 3)", () => {
  let c: TestCluster;
  const m = new Model();
  const A = randomBytes(14 * MiB);
  const B = randomBytes(12 * MiB);
  const C = randomBytes(3 * MiB);
  /** Model key -> VID, filled as the VDIs appear. */
  const vids = new Map<string, number>();

  beforeAll(async () => {
    c = await TestCluster.start(3, { format: { copies: 3 }, nbd: true });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  async function expectContent(v: MVdi): Promise<void> {
    const got = await readVdi(c, v.name, v.snapshot ? v.tag : "");
    expect(got.length).toBe(v.data.length);
    if (!got.equals(v.data)) {
      let at = 0;
      while (got[at] === v.data[at]) at++;
      throw new Error(
        `${v.name}${
          v.snapshot ? "@" + v.tag : ""
        } differs from the model first at byte ${at} (object ${Math.floor(at / OBJ)})`,
      );
    }
  }

  async function expectAllContent(): Promise<void> {
    for (const v of m.vdis) await expectContent(v);
  }

  async function learnVids(): Promise<void> {
    const rows = await listRows(c);
    for (const v of m.vdis) vids.set(v.key, rowOf(rows, v).vid);
  }

  test(
    "write A, snapshot, write B, clone, write C, snapshot the clone, rollback: every VDI reads the model",
    async () => {
      await c.dogOk(["vdi", "create", "base", String(SIZE)]);
      m.create("base");
      await writeVdi(c, "base", 0, A);
      m.write("base", 0, A);
      await c.dogOk(["vdi", "snapshot", "-s", "s1", "base"]);
      m.snapshot("base", "s1");
      await learnVids();
      const s1 = m.snap("base", "s1");
      const s1Vid = vids.get(s1.key)!;
      expect(s1Vid).toBe(await vidOf(c, "base", "s1"));
      const parentFiles = dataFileHashes(c, s1Vid);
      expect(parentFiles.size).toBe(4 * 3); // 4 objects, 3 replicas

      // B over half the disk, partly inside objects the snapshot owns (COW) and one new object
      await writeVdi(c, "base", 6 * MiB, B);
      m.write("base", 6 * MiB, B);
      expect(dataFileHashes(c, s1Vid)).toEqual(parentFiles);

      await c.dogOk(["vdi", "clone", "-s", "s1", "base", "c1"]);
      m.clone("base", "s1", "c1");
      await writeVdi(c, "c1", 2 * MiB, C);
      m.write("c1", 2 * MiB, C);
      // writes to a clone never touch the objects of its parent snapshot
      expect(dataFileHashes(c, s1Vid)).toEqual(parentFiles);

      await c.dogOk(["vdi", "snapshot", "-s", "c1s", "c1"]);
      m.snapshot("c1", "c1s");
      await learnVids();
      await expectAllContent();

      const oldBase = vids.get(m.working("base").key)!;
      await c.dogOk(["vdi", "rollback", "-f", "-s", "s1", "base"]);
      m.rollback("base", "s1");
      await learnVids();
      expect(vids.get(m.working("base").key)).not.toBe(oldBase);
      await expectAllContent();
      expect(dataFileHashes(c, s1Vid)).toEqual(parentFiles);
      // the discarded working VDI's own objects are reclaimed
      await c.waitFor(
        async () => dataFileHashes(c, oldBase).size === 0,
        30_000,
        "objects of the rolled-back VDI to go",
      );
    },
    180_000,
  );

  test("vdi list: markers, Used and Shared as upstream defines them", async () => {
    const rows = await listRows(c);
    expect(rows.length).toBe(m.vdis.length);
    for (const v of m.vdis) {
      const r = rowOf(rows, v);
      const u = m.usage(v);
      expect({ vdi: `${v.name}@${v.tag}`, used: r.used, shared: r.shared, size: r.size })
        .toEqual({ vdi: `${v.name}@${v.tag}`, used: u.used, shared: u.shared, size: SIZE });
      expect(r.vid).toBe(vids.get(v.key)!);
      expect(r.copies).toBe("3");
    }
    // s = snapshot, c = clone (snap id 1 with a parent), = plain working VDI
    expect(rowOf(rows, m.snap("base", "s1")).marker).toBe("s");
    expect(rowOf(rows, m.snap("c1", "c1s")).marker).toBe("s");
    expect(rowOf(rows, m.working("base")).marker).toBe("=");
    expect(rowOf(rows, m.working("c1")).marker).toBe("=");
    expect(rowOf(rows, m.snap("c1", "c1s")).snapid).toBe(1);
    // the concrete numbers for this scenario (objects of 4 MiB)
    expect(m.usage(m.snap("base", "s1"))).toEqual({ used: 16 * MiB, shared: 0 });
    expect(m.usage(m.working("base"))).toEqual({ used: 0, shared: 16 * MiB });
    expect(m.usage(m.snap("c1", "c1s"))).toEqual({ used: 8 * MiB, shared: 8 * MiB });
    expect(m.usage(m.working("c1"))).toEqual({ used: 0, shared: 16 * MiB });
    // human-readable table
    const text = await c.dogOk(["vdi", "list"]);
    expect(text.split("\n")[0]).toBe(
      "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift",
    );
    expect(text).toMatch(/^s base +1 +24 MB +16 MB +0\.0 MB .* +s1 +22$/m);
    // a name filter keeps the header
    const one = await c.dogOk(["vdi", "list", "c1"]);
    expect(one.trim().split("\n").length).toBe(3);
  });

  test("vdi clone of a clone's snapshot is marked c; tree and graph show the families", async () => {
    const tree = await c.dogOk(["vdi", "tree"]);
    const date = String.raw`\[\d{4}-\d\d-\d\d \d\d:\d\d\]`;
    // the clone c1 is drawn under base's snapshot (upstream draws it as a tree of its own)
    expect(tree).toMatch(new RegExp(`^base---${date}-\\+-\\(you are here\\)$`, "m"));
    expect(tree).toMatch(new RegExp(`^ +\`-c1: ${date}---\\(you are here\\)$`, "m"));
    expect(tree.trim().split("\n").length).toBe(2);

    const g = await c.dogOk(["vdi", "graph"]);
    expect(
      g.startsWith(
        'digraph G {\n  node [shape = "box", fontname = "Courier"];\n\n  "0" [shape = "ellipse", label = "root"];\n',
      ),
    ).toBe(true);
    expect(g.endsWith("}\n")).toBe(true);
    const v = (s: MVdi) => hexs(vids.get(s.key)!);
    const s1 = m.snap("base", "s1"),
      base = m.working("base"),
      c1s = m.snap("c1", "c1s"),
      c1 = m.working("c1");
    for (const [p, ch] of [["0", v(s1)], [v(s1), v(base)], [v(s1), v(c1s)], [v(c1s), v(c1)]]) {
      expect(g).toContain(`  "${p}" -> "${ch}";\n`);
    }
    // working VDIs are red, snapshots are not
    expect(g).toMatch(
      new RegExp(
        `"${
          v(base)
        }" \\[\\n    group = "base",\\n    label = "Name: +base\\\\nTag: +0\\\\n[^"]*",\\n    color="red"`,
      ),
    );
    expect(g).toMatch(
      new RegExp(
        `"${
          v(s1)
        }" \\[\\n    group = "base",\\n    label = "Name: +base\\\\nTag: +1\\\\n[^"]*"\\n  \\];`,
      ),
    );

    // a clone of a snapshot gets the c marker (snap id 1, parent set)
    await c.dogOk(["vdi", "clone", "-s", "c1s", "c1", "c2"]);
    m.clone("c1", "c1s", "c2");
    await learnVids();
    expect(rowOf(await listRows(c), m.working("c2")).marker).toBe("c");
    await expectContent(m.working("c2"));
  });

  test("setattr / getattr: create, exclusive, overwrite, stdin, delete, missing key or VDI", async () => {
    await c.dogOk(["vdi", "setattr", "base", "k1", "v1"]);
    expect(await c.dogOk(["vdi", "getattr", "base", "k1"])).toBe("v1");
    expectFail(
      await c.dog(["vdi", "setattr", "-x", "base", "k1", "other"]),
      3,
      /The attribute 'k1' already exists/,
    );
    expect(await c.dogOk(["vdi", "getattr", "base", "k1"])).toBe("v1");
    await c.dogOk(["vdi", "setattr", "base", "k1", "v2"]);
    expect(await c.dogOk(["vdi", "getattr", "base", "k1"])).toBe("v2");
    await c.dogOk(["vdi", "setattr", "base", "k2"], { input: "from stdin\n" });
    expect(await c.dogOk(["vdi", "getattr", "base", "k2"])).toBe("from stdin\n");
    expectFail(await c.dog(["vdi", "getattr", "base", "nokey"]), 5, /Attribute 'nokey' not found/);
    expectFail(await c.dog(["vdi", "getattr", "nosuchvdi", "k1"]), 5, /VDI not found/);
    expectFail(await c.dog(["vdi", "setattr", "nosuchvdi", "k1", "v"]), 5, /VDI not found/);
    await c.dogOk(["vdi", "setattr", "-d", "base", "k1"]);
    expectFail(await c.dog(["vdi", "getattr", "base", "k1"]), 5, /Attribute 'k1' not found/);
    expectFail(await c.dog(["vdi", "setattr", "-d", "base", "k1"]), 5, /Attribute 'k1' not found/);
    expectFail(await c.dog(["vdi", "setattr", "base"]), 64, /Please specify the attribute key/);
    expect(await c.dogOk(["vdi", "getattr", "base", "k2"])).toBe("from stdin\n");
  });

  test("resize grows (content kept, new space reads zero, writable); shrinking and oversize are refused", async () => {
    await c.dogOk(["vdi", "create", "rz", String(8 * MiB)]);
    const v = m.create("rz", 8 * MiB);
    const P = randomBytes(5 * MiB);
    await writeVdi(c, "rz", 1 * MiB, P);
    m.write("rz", 1 * MiB, P);
    await c.dogOk(["vdi", "resize", "rz", "20M"]);
    v.data = Buffer.concat([v.data, Buffer.alloc(12 * MiB)]);
    v.owners.push(null, null, null);
    expect(rowOf(await listRows(c), v).size).toBe(20 * MiB);
    const Q = randomBytes(2 * MiB);
    await writeVdi(c, "rz", 18 * MiB, Q);
    m.write("rz", 18 * MiB, Q);
    await expectContent(v);
    const before = await listRows(c);
    expectFail(
      await c.dog(["vdi", "resize", "rz", "10M"]),
      64,
      /^Shrinking VDIs is not implemented$/m,
    );
    expectFail(
      await c.dog(["vdi", "resize", "rz", "5T"]),
      64,
      /New VDI size is too large. This volume's max size is 4398046511104/,
    );
    expectFail(await c.dog(["vdi", "resize", "rz"]), 64, /Please specify the new size for the VDI/);
    expect(await listRows(c)).toEqual(before);
    await expectContent(v);
    await learnVids();
  });

  test(
    "bad input: tag reuse, clone of a missing tag or of a working VDI, existing name: clear error, nothing changed",
    async () => {
      const before = await listRows(c);
      expectFail(
        await c.dog(["vdi", "snapshot", "-s", "s1", "base"]),
        1,
        /Failed to create snapshot for base, maybe snapshot id \(0\) or tag \(s1\) is existed/,
      );
      expectFail(
        await c.dog(["vdi", "snapshot", "-s", "123", "base"]),
        64,
        /Please specify a non-integer value for a snapshot tag name/,
      );
      expectFail(
        await c.dog(["vdi", "clone", "-s", "nosuch", "base", "c9"]),
        1,
        /Failed to open VDI base \(snapshot id: 0 snapshot tag: nosuch\): Failed to find requested tag/,
      );
      expectFail(
        await c.dog(["vdi", "clone", "-s", "7", "base", "c9"]),
        1,
        /Failed to open VDI base \(snapshot id: 7 snapshot tag: \): Failed to find requested tag/,
      );
      expectFail(
        await c.dog(["vdi", "clone", "base", "c9"]),
        64,
        /Only snapshot VDIs can be cloned/,
      );
      expectFail(
        await c.dog(["vdi", "clone", "-s", "s1", "base", "c1"]),
        1,
        /Failed to create VDI c1: VDI exists already/,
      );
      expectFail(
        await c.dog(["vdi", "create", "base", "1G"]),
        1,
        /Failed to create VDI base: VDI exists already/,
      );
      expectFail(
        await c.dog(["vdi", "rollback", "-f", "base"]),
        64,
        /Please specify the '-s' option/,
      );
      expectFail(
        await c.dog(["vdi", "rollback", "-f", "-s", "nosuch", "base"]),
        1,
        /Failed to open VDI base/,
      );
      // upstream exits 0 here; ours exits EXIT_MISSING so scripts can tell
      const d = await c.dog(["vdi", "delete", "nosuchvdi"]);
      expect(d.code).toBe(5);
      expect(d.stderr).toMatch(/Failed to open VDI nosuchvdi .*No VDI found/);
      expect(await listRows(c)).toEqual(before);
      await expectAllContent();
    },
    120_000,
  );

  clientTest(
    "a VDI attached for writing over NBD is locked: lock list shows it, delete and rollback are refused, unlock releases",
    async () => {
      const uri = `nbd://127.0.0.1:${c.nodes[1].nbdPort}/c1`;
      // an interactive qemu-io keeps the export open (read-write) until it is told to quit
      const q: ChildProcess = spawn("qemu-io", ["-f", "raw", uri], {
        stdio: ["pipe", "pipe", "pipe"],
      });
      let qout = "";
      q.stdout!.on("data", (d) => (qout += d));
      q.stderr!.on("data", (d) => (qout += d));
      const exited = new Promise<number | null>((r) => q.on("close", (code) => r(code)));
      try {
        await c.waitFor(
          async () => (await c.dogOk(["vdi", "lock", "list"])).includes("c1 |"),
          20_000,
          `c1 to be locked (qemu-io: ${qout})`,
        );
        const ll = await c.dogOk(["vdi", "lock", "list"]);
        expect(ll).toBe(`VDI | owner node\nc1 | IPv4 ip:127.0.0.1 port:${c.nodes[1].port}\n`);
        const before = await listRows(c);
        expectFail(
          await c.dog(["vdi", "delete", "c1"]),
          1,
          /Failed to delete c1: VDI is already locked/,
        );
        expectFail(
          await c.dog(["vdi", "rollback", "-f", "-s", "c1s", "c1"]),
          1,
          /Failed to delete the current state/,
        );
        expect(await listRows(c)).toEqual(before);
        await expectAllContent();
        // a second writer only gets read-only access
        const info = await run("nbdinfo", ["--json", uri]);
        if (info.code === 0) expect(json(info.stdout).exports[0]["is_read_only"]).toBe(true);

        await c.dogOk(["vdi", "lock", "unlock", "c1"], { node: 2 });
        expect(await c.dogOk(["vdi", "lock", "list"])).toBe("VDI | owner node\n");
        const nl = await c.dog(["vdi", "lock", "unlock", "c1"]);
        expect(nl.code).toBe(2);
        expect(nl.stderr).toMatch(/VDI: c1 is not locked/);
      } finally {
        q.stdin!.end("quit\n");
        await Promise.race([exited, sleep(10_000).then(() => q.kill("SIGKILL"))]);
      }
      expect(await c.dogOk(["vdi", "lock", "list"])).toBe("VDI | owner node\n");
    },
    60_000,
  );

  clientTest("snapshots are served over NBD read-only with the snapshot's content", async () => {
    const s1 = m.snap("base", "s1");
    const uri = `nbd://127.0.0.1:${c.nodes[2].nbdPort}/base@s1`;
    const info = await run("nbdinfo", ["--json", uri]);
    expect(info.code).toBe(0);
    const e = json(info.stdout).exports[0];
    expect(e["is_read_only"]).toBe(true);
    expect(e["export-size"]).toBe(SIZE);
    const cp = await run("nbdcopy", [uri, "-"]);
    expect(cp.code).toBe(0);
    expect(cp.stdout.equals(s1.data)).toBe(true);
    const wr = await run("qemu-io", ["-f", "raw", "-c", "write -P 1 0 4096", uri]);
    expect(wr.code).not.toBe(0);
    await expectContent(s1);
  }, 60_000);

  test(
    "vdi check repairs a deleted replica and a corrupted one; replicas are identical afterwards",
    async () => {
      await c.dogOk(["vdi", "create", "chk", String(12 * MiB)]);
      const v = m.create("chk", 12 * MiB);
      const D = randomBytes(12 * MiB);
      await writeVdi(c, "chk", 0, D);
      m.write("chk", 0, D);
      await learnVids();
      const vid = vids.get(v.key)!;
      const missing = vidToDataOid(vid, 0), corrupt = vidToDataOid(vid, 1);
      for (const oid of [missing, corrupt]) {
        for (let i = 0; i < 3; i++) expect(objectPath(c, i, oidHex(oid))).not.toBeNull();
      }
      fs.unlinkSync(objectPath(c, 1, oidHex(missing))!);
      const fd = fs.openSync(objectPath(c, 2, oidHex(corrupt))!, "r+");
      fs.writeSync(fd, Buffer.from("garbage garbage garbage"), 0, 23, 1000);
      fs.closeSync(fd);

      const out = await c.dogOk(["vdi", "check", "chk"]);
      expect(out.trim().split("\n").sort()).toEqual([
        `finish check&repair chk`,
        `fixed missing ${hexs(missing)}`,
        `fixed replica ${hexs(corrupt)}`,
      ].sort());
      for (const oid of [missing, corrupt]) {
        const reps = [0, 1, 2].map((i) => replicaContent(c, i, oid, OBJ));
        for (const r of reps) expect(r).not.toBeNull();
        expect(sha(reps[1]!)).toBe(sha(reps[0]!));
        expect(sha(reps[2]!)).toBe(sha(reps[0]!));
      }
      expect(replicaContent(c, 1, missing, OBJ)!.equals(D.subarray(0, OBJ))).toBe(true);
      expect(replicaContent(c, 2, corrupt, OBJ)!.equals(D.subarray(OBJ, 2 * OBJ))).toBe(true);
      // a second pass finds nothing to do
      expect(await c.dogOk(["vdi", "check", "chk"])).toBe("finish check&repair chk\n");
      const ex = await c.dog(["vdi", "check", "-e", "chk"]);
      expect({ code: ex.code, out: ex.stdout.toString() }).toEqual({
        code: 0,
        out: "chk is fine, no object is missing.\n",
      });
      await expectContent(v);
    },
    120_000,
  );

  test("vdi check restores a deleted replica of the inode object", async () => {
    const vid = vids.get(m.working("chk").key)!;
    const inode = vidToVdiOid(vid);
    // the node that serves dog's lookups has the inode open: the loss must still be seen
    fs.unlinkSync(objectPath(c, 0, oidHex(inode))!);
    const out = await c.dogOk(["vdi", "check", "chk"]);
    expect(out).toBe(`fixed missing ${hexs(inode)}\nfinish check&repair chk\n`);
    const reps = [0, 1, 2].map((i) => replicaContent(c, i, inode, 12587576));
    for (const r of reps) expect(r).not.toBeNull();
    expect(reps[0]!.equals(reps[1]!) && reps[0]!.equals(reps[2]!)).toBe(true);
  }, 60_000);

  test(
    "cluster check covers every VDI and snapshot and repairs a lost replica of a clone's object",
    async () => {
      const c1 = m.working("c1");
      // object 1 of the clone's snapshot, on a node that has not read it since it was created
      const c1Obj = vidToDataOid(vids.get(m.snap("c1", "c1s").key)!, 1);
      fs.unlinkSync(objectPath(c, 2, oidHex(c1Obj))!);
      const cc = await c.dogOk(["cluster", "check"]);
      const rows = await listRows(c);
      const headers = cc.split("\n").filter((l) => l.startsWith("fix "));
      expect(headers.length).toBe(rows.length);
      expect(cc).toContain(`fix snapshot base (id: 1, tag: "s1")\n`);
      expect(cc).toContain(`fix snapshot c1 (id: 1, tag: "c1s")\n`);
      expect(cc).toContain(`fix vdi c1\n`);
      expect(cc).toContain(`fixed missing ${hexs(c1Obj)}\n`);
      expect(cc.match(/^finish check&repair /gm)!.length).toBe(rows.length);
      expect(replicaContent(c, 2, c1Obj, OBJ)!.equals(replicaContent(c, 0, c1Obj, OBJ)!)).toBe(
        true,
      );
      await expectContent(c1);
    },
    120_000,
  );

  test("vdi track: the locations of the current epoch are where the replicas are", async () => {
    const vid = vids.get(m.working("chk").key)!;
    const out = await c.dogOk(["vdi", "track", "-i", "2", "chk"]);
    const oid = vidToDataOid(vid, 2);
    expect(out.split("\n")[0]).toBe(
      `Tracking the object 0x${hexs(oid)} (the inode vid 0x${hexs(vid)} idx 2) with 3 nodes`,
    );
    expect(out).toContain(
      `\nobj ${hexs(oid)} locations at epoch 1, copies = 3\n${"-".repeat(51)}\n`,
    );
    const ports = [...out.matchAll(/^127\.0\.0\.1:(\d+)$/gm)].map((x) => Number(x[1])).sort();
    expect(ports).toEqual(c.nodes.map((n) => n.port).sort());
    const ino = await c.dogOk(["vdi", "track", "chk"]);
    expect(ino.split("\n")[0]).toBe(`Tracking the inode object 0x${hexs(vid)} with 3 nodes`);
  });

  test(
    "delete everything (a snapshot still used by a clone first): clones stay readable, no data or ledger object remains",
    async () => {
      // the snapshot every other family member was built from goes first
      await c.dogOk(["vdi", "delete", "-s", "s1", "base"]);
      m.remove(m.snap("base", "s1"));
      await expectAllContent();
      await c.dogOk(["vdi", "delete", "-s", "c1s", "c1"]);
      m.remove(m.snap("c1", "c1s"));
      await expectAllContent();
      // the rest, working VDIs before the snapshots they came from
      const order = [...m.vdis].sort((a, b) => Number(a.snapshot) - Number(b.snapshot));
      for (const v of order) {
        const args = ["vdi", "delete", v.name];
        if (v.snapshot) args.push("-s", v.tag);
        await c.dogOk(args);
        m.remove(v);
        await expectAllContent();
      }
      expect(await listRows(c)).toEqual([]);
      const leftovers = () => allOids(c).filter((o) => isDataObj(o.oid) || isLedgerObj(o.oid));
      await c.waitFor(
        async () => leftovers().length === 0,
        30_000,
        "data and ledger objects to be reclaimed",
      ).catch(() => {
        throw new Error(
          `left on disk: ${leftovers().map((o) => `node${o.node}:${o.name}`).join(" ")}`,
        );
      });
      // inodes of deleted VDIs stay, but hold nothing beyond their header
      const inodes = allOids(c).filter((o) => isVdiObj(o.oid));
      expect(inodes.length).toBeGreaterThan(0);
      for (const o of inodes) {
        const b = fs.readFileSync(objectPath(c, o.node, o.name)!);
        const tail = b.subarray(4664);
        expect({ inode: o.name, nonzero: tail.some((x) => x !== 0) }).toEqual({
          inode: o.name,
          nonzero: false,
        });
        expect(b.subarray(0, 256).every((x) => x === 0)).toBe(true); // name cleared
      }
    },
    180_000,
  );
});

// ---------------------------------------------------------------------------------------------
// 3 nodes, copies 2: hyper volumes, alter-copy

describe("hyper volume of 100 TiB, alter-copy (3 nodes, copies 2)", () => {
  let c: TestCluster;
  const LAST = 100 * TiB - OBJ; // start of the last object

  beforeAll(async () => {
    c = await TestCluster.start(3, { format: { copies: 2 } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test(
    "create -y 100T, write the last object (and two more), read back, list, map, check, no snapshot",
    async () => {
      await c.dogOk(["vdi", "create", "-y", "big", "100T"]);
      const rows = await listRows(c);
      expect(rows.length).toBe(1);
      expect(rows[0]).toMatchObject({
        name: "big",
        size: 100 * TiB,
        used: 0,
        shared: 0,
        copies: "2",
      });
      const vid = rows[0].vid;

      const P = randomBytes(OBJ), Q = randomBytes(1 * MiB), R = randomBytes(3 * MiB);
      await writeVdi(c, "big", LAST, P);
      await writeVdi(c, "big", 0, Q);
      await writeVdi(c, "big", 50 * TiB + 2 * MiB, R); // straddles objects 13107200 and 13107201
      expect((await readVdi(c, "big", "", LAST, OBJ)).equals(P)).toBe(true);
      expect((await readVdi(c, "big", "", 0, MiB)).equals(Q)).toBe(true);
      expect((await readVdi(c, "big", "", 50 * TiB + 2 * MiB, 3 * MiB)).equals(R)).toBe(true);
      // holes read as zeros; the read is clipped at the end of the VDI
      expect((await readVdi(c, "big", "", 7 * TiB, MiB)).equals(Buffer.alloc(MiB))).toBe(true);
      expect((await readVdi(c, "big", "", LAST + OBJ - 10, 100)).equals(P.subarray(OBJ - 10))).toBe(
        true,
      );
      // overwrite inside an existing object (plain WRITE_OBJ, no new index entry)
      const S = randomBytes(4096);
      await writeVdi(c, "big", LAST + 8192, S);
      S.copy(P, 8192);
      expect((await readVdi(c, "big", "", LAST, OBJ)).equals(P)).toBe(true);

      const last = 100 * 1024 * 1024 / 4 - 1; // 26214399
      const map = await c.dogOk(["vdi", "object", "map", "big"]);
      expect(map).toBe(
        "Index       VID\n" +
          [0, 13107200, 13107201, last].map((i) =>
            `${String(i).padStart(8, "0")} ${hexs(vid).padStart(8)}\n`
          ).join(""),
      );
      expect((await listRows(c))[0]).toMatchObject({ used: 4 * OBJ, shared: 0 });
      // the data objects live under the VDI's own VID, two replicas each
      const files = allOids(c).filter((o) => isDataObj(o.oid));
      expect(files.length).toBe(4 * 2);
      for (const o of files) expect(o.oid >> 32n).toBe(BigInt(vid));
      expect(await c.dogOk(["vdi", "check", "big"])).toBe("finish check&repair big\n");
      expectFail(
        await c.dog(["vdi", "snapshot", "big"]),
        1,
        /creating a snapshot of hypervolume is not supported/,
      );
      expectFail(
        await c.dog(["vdi", "create", "-y", "-z", "23", "big2", "1T"]),
        1,
        /Don't specify both -y and -z options, please/,
      );
      expectFail(
        await c.dog(["vdi", "create", "flat", "5T"]),
        64,
        /please use '-y' to create a hyper volume/,
      );
      expectFail(await c.dog(["vdi", "create", "-y", "huge", "17P"]), 64, /VDI size is too large/);
    },
    180_000,
  );

  test("deleting the hyper volume removes its data objects", async () => {
    await c.dogOk(["vdi", "delete", "big"]);
    expect(await listRows(c)).toEqual([]);
    const left = allOids(c).filter((o) => !isVdiObj(o.oid));
    expect(left.map((o) => `node${o.node}:${o.name}`)).toEqual([]);
    const ino = allOids(c).filter((o) => isVdiObj(o.oid));
    for (const o of ino) {
      expect(fs.readFileSync(objectPath(c, o.node, o.name)!).subarray(4664).every((x) => x === 0))
        .toBe(true);
    }
  }, 60_000);

  test(
    "alter-copy of a standalone VDI: header and placement follow (recovery adds the third replica)",
    async () => {
      await c.dogOk(["vdi", "create", "ac", String(8 * MiB)]);
      const D = randomBytes(5 * MiB);
      await writeVdi(c, "ac", 0, D);
      const vid = await vidOf(c, "ac");
      const oids = [vidToVdiOid(vid), vidToDataOid(vid, 0), vidToDataOid(vid, 1)];
      const holders = (oid: bigint) =>
        c.nodes.filter((_, i) => objectPath(c, i, oidHex(oid))).length;
      for (const oid of oids) expect(holders(oid)).toBe(2);
      const r = await c.dog(["vdi", "alter-copy", "-c", "3", "-f", "ac"]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({
        code: 0,
        stderr: "ac's redundancy level is set to 3, the old one was 2.\n",
      });
      expect(rowOf(await listRows(c), { name: "ac", tag: "", snapshot: false }).copies).toBe("3");
      await c.waitFor(
        async () => oids.every((oid) => holders(oid) === 3),
        30_000,
        "a third replica of every object of ac",
      );
      for (const oid of oids.slice(1)) {
        const reps = [0, 1, 2].map((i) => replicaContent(c, i, oid, OBJ)!);
        expect(reps[1].equals(reps[0]) && reps[2].equals(reps[0])).toBe(true);
      }
      expect((await readVdi(c, "ac", "", 0, 5 * MiB)).equals(D)).toBe(true);
      expectFail(
        await c.dog(["vdi", "alter-copy", "-c", "3", "-f", "ac"]),
        1,
        /ac's redundancy level is already set to 3, nothing changed/,
      );
      expectFail(
        await c.dog(["vdi", "alter-copy", "-c", "2:1", "-f", "ac"]),
        64,
        /Changing redundancy level of erasure coded vdi is not supported yet/,
      );
      // only standalone VDIs: not one with snapshots
      await c.dogOk(["vdi", "snapshot", "ac"]);
      expectFail(
        await c.dog(["vdi", "alter-copy", "-c", "2", "-f", "ac"]),
        1,
        /Only standalone vdi supports changing redundancy level/,
      );
    },
    60_000,
  );

  test("vdi track matches where the replicas are (copies 2 of 3 nodes)", async () => {
    await c.dogOk(["vdi", "create", "tr", String(8 * MiB)]);
    await writeVdi(c, "tr", 4 * MiB, randomBytes(4096));
    const vid = await vidOf(c, "tr");
    const out = await c.dogOk(["vdi", "track", "-i", "1", "tr"]);
    const oid = vidToDataOid(vid, 1);
    const section =
      out.split(`obj ${hexs(oid)} locations at epoch 1, copies = 2\n${"-".repeat(51)}\n`)[1];
    const ports = section.trim().split("\n").map((l) => Number(l.split(":")[1])).sort();
    expect(ports.length).toBe(2);
    const holders = c.nodes.map((n, i) => objectPath(c, i, oidHex(oid)) ? n.port : 0).filter((p) =>
      p
    ).sort();
    expect(ports).toEqual(holders);
    // the same answer from the ring dog and sheep share
    const vn = new Map<number, number>();
    for (const l of (await c.dogOk(["node", "list", "-r"])).trim().split("\n")) {
      const [, hp, v] = l.split(" ");
      vn.set(Number(hp.split(":")[1]), Number(v));
    }
    const ring = new Ring(
      c.nodes.map((n) =>
        makeNode("127.0.0.1", n.port, { zone: n.zone, nrVnodes: vn.get(n.port) ?? 128 })
      ),
    );
    expect(ring.placeObject(oid, 2).map((n) => n.port).sort()).toEqual(holders);
  });
});
