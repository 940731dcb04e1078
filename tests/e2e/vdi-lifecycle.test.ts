// VDI lifecycle acceptance: snapshots, clones, rollback, Used/Shared accounting, tree/graph,
// attributes, locks, resize, bad input, check/repair, snapshots over NBD, delete with space
// reclaim, 100 TiB hyper volumes, track and alter-copy. Expected content comes from a model
// of every VDI (bytes and the owner of every data slot), never from "it did not fail".
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { TestCluster } from "../lib/cluster.ts";
import {
  isDataObj,
  isLedgerObj,
  isVdiObj,
  oidHex,
  vidToDataOid,
  vidToVdiOid,
} from "../../core/oid.ts";

import {
  allOids,
  clientTest,
  dataFileHashes,
  expectFail,
  hexs,
  json,
  listRows,
  MiB,
  Model,
  MVdi,
  OBJ,
  objectPath,
  readVdi,
  replicaContent,
  rowOf,
  run,
  sha,
  SIZE,
  sleep,
  vidOf,
  writeVdi,
} from "../lib/vdi-model.ts";

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
