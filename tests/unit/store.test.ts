import { afterAll, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import { Buffer } from "node:buffer";
import { openStore } from "../../io/store.ts";
import { SdError } from "../../core/errors.ts";
import { Res } from "../../core/proto.ts";

const roots: string[] = [];
function tmp(): string {
  const d = fs.mkdtempSync(`${os.tmpdir()}/sd-store-`);
  roots.push(d);
  return d;
}
afterAll(() => {
  for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
});

const INODE = 0x807c2b2500000000n;
const DATA0 = 0x007c2b2500000000n;
const DATA1 = 0x007c2b2500000001n;
const VMSTATE = (1n << 62n) | (0x7c2b25n << 32n) | 3n;
const ATTR = (0x7c2b25n << 32n) | (1n << 61n) | 7n;
const BTREE = (0x7c2b25n << 32n) | (1n << 60n) | 1n;
const LEDGER = DATA1 | (1n << 59n);
const MiB = 1 << 20;

async function expectRes(p: Promise<unknown>, code: number) {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(SdError);
    expect((e as SdError).code).toBe(code);
    return;
  }
  throw new Error("expected failure");
}

test("plain layout paths", async () => {
  const d = tmp();
  const s = openStore("plain", [d]);
  expect(s.kind).toBe("plain");
  await s.init();
  expect(s.path(INODE)).toBe(`${d}/807c2b2500000000`);
  expect(s.path(DATA1, 3)).toBe(`${d}/007c2b2500000001_3`);
  await s.createAndWrite(DATA1, 0, Buffer.from("x"), 4 * MiB, 3);
  expect(fs.existsSync(`${d}/007c2b2500000001_3`)).toBe(true);
  expect(fs.statSync(`${d}/007c2b2500000001_3`).size).toBe(4 * MiB);
  expect(s.exists(DATA1, 3)).toBe(true);
  expect(s.exists(DATA1)).toBe(false);
  expect(fs.existsSync(`${d}/.stale`)).toBe(true);
});

test("tree layout paths", async () => {
  const d = tmp();
  const s = openStore("tree", [d]);
  await s.init();
  expect(fs.statSync(`${d}/meta`).isDirectory()).toBe(true);
  expect(fs.statSync(`${d}/00`).isDirectory()).toBe(true);
  expect(fs.statSync(`${d}/ff`).isDirectory()).toBe(true);
  expect(s.path(INODE)).toBe(`${d}/meta/807c2b2500000000`);
  expect(s.path(VMSTATE)).toBe(`${d}/meta/${VMSTATE.toString(16)}`);
  expect(s.path(ATTR)).toBe(`${d}/meta/${ATTR.toString(16).padStart(16, "0")}`);
  expect(s.path(DATA0)).toBe(`${d}/25/007c2b2500000000`);
  expect(s.path(DATA1, 2)).toBe(`${d}/25/007c2b2500000001_2`);
  expect(s.path(BTREE)).toBe(`${d}/25/${BTREE.toString(16).padStart(16, "0")}`);
  expect(s.path(LEDGER)).toBe(`${d}/25/${LEDGER.toString(16).padStart(16, "0")}`);
  for (const oid of [INODE, VMSTATE, ATTR, DATA0, BTREE, LEDGER]) {
    await s.createAndWrite(oid, 0, Buffer.from([1, 2, 3]), 4096);
    expect(fs.existsSync(s.path(oid))).toBe(true);
  }
  expect(s.list()).toEqual(
    [DATA0, ATTR, BTREE, LEDGER, VMSTATE, INODE].sort((a, b) => (a < b ? -1 : 1)),
  );
  // a fresh instance finds them again
  const s2 = openStore("tree", [d]);
  await s2.init();
  expect(s2.list()).toEqual(s.list());
});

for (const kind of ["plain", "tree"] as const) {
  test(`${kind}: create/read/write/remove round trip`, async () => {
    const d = tmp();
    const s = openStore(kind, [d]);
    await s.init();
    const data = Buffer.alloc(8192, 0xab);
    await s.createAndWrite(DATA0, 4096, data, 4 * MiB);
    expect(s.list()).toEqual([DATA0]);
    expect(await s.read(DATA0, 4096, 8192)).toEqual(data);
    // zeros before and after the written range and beyond the object end
    expect(await s.read(DATA0, 0, 4096)).toEqual(Buffer.alloc(4096));
    expect(await s.read(DATA0, 4 * MiB - 10, 100)).toEqual(Buffer.alloc(100));
    await s.write(DATA0, 5000, Buffer.from("hello"));
    const r = await s.read(DATA0, 4096, 8192);
    expect(r.subarray(904, 909).toString()).toBe("hello");
    expect(r[903]).toBe(0xab);
    expect(r[909]).toBe(0xab);
    expect(s.objectBytes()).toBeGreaterThan(0n);
    const st = s.statfs();
    expect(st.size).toBe(st.free + s.objectBytes());
    await s.remove(DATA0);
    expect(s.exists(DATA0)).toBe(false);
    expect(s.list()).toEqual([]);
    expect(s.objectBytes()).toBe(0n);
    expect(fs.existsSync(s.path(DATA0))).toBe(false);
  });
}

test("missing objects give NO_OBJ", async () => {
  const d = tmp();
  const s = openStore("plain", [d]);
  await s.init();
  await expectRes(s.read(DATA0, 0, 10), Res.NO_OBJ);
  await expectRes(s.write(DATA0, 0, Buffer.from("a")), Res.NO_OBJ);
  await expectRes(s.remove(DATA0), Res.NO_OBJ);
  await expectRes(s.moveToStale(DATA0, 1), Res.NO_OBJ);
  await expectRes(s.readStale(DATA0, 1, 0, 1), Res.NO_OBJ);
  // an object removed behind the store's back
  await s.createAndWrite(DATA1, 0, Buffer.from("a"), 4096);
  fs.unlinkSync(s.path(DATA1));
  await expectRes(s.read(DATA1, 0, 1), Res.NO_OBJ);
  expect(s.exists(DATA1)).toBe(false);
});

test("leftover .tmp is removed by init and never listed", async () => {
  for (const kind of ["plain", "tree"] as const) {
    const d = tmp();
    const s = openStore(kind, [d]);
    await s.init();
    await s.createAndWrite(DATA0, 0, Buffer.from("old"), 4096);
    // simulate a crash in the middle of re-creating DATA0 and creating DATA1
    fs.writeFileSync(s.path(DATA0) + ".tmp", "partial");
    fs.writeFileSync(s.path(DATA1) + ".tmp", "partial");
    const s2 = openStore(kind, [d]);
    await s2.init();
    expect(s2.list()).toEqual([DATA0]);
    expect(fs.existsSync(s2.path(DATA0) + ".tmp")).toBe(false);
    expect(fs.existsSync(s2.path(DATA1) + ".tmp")).toBe(false);
    expect((await s2.read(DATA0, 0, 3)).toString()).toBe("old");
    expect(s2.exists(DATA1)).toBe(false);
  }
});

test("createAndWrite replaces an existing object atomically", async () => {
  const d = tmp();
  const s = openStore("plain", [d]);
  await s.init();
  await s.createAndWrite(DATA0, 0, Buffer.alloc(4096, 1), 8192);
  const ino1 = fs.statSync(s.path(DATA0)).ino;
  await s.write(DATA0, 4096, Buffer.alloc(4096, 9)); // caches an fd on the old file
  await s.createAndWrite(DATA0, 100, Buffer.alloc(10, 2), 8192);
  expect(fs.statSync(s.path(DATA0)).ino).not.toBe(ino1);
  const r = await s.read(DATA0, 0, 8192);
  const want = Buffer.alloc(8192);
  want.fill(2, 100, 110);
  expect(r).toEqual(want);
  // writes after the replace go to the new file, not a stale cached fd
  await s.write(DATA0, 0, Buffer.from("new"));
  expect(fs.readFileSync(s.path(DATA0)).subarray(0, 3).toString()).toBe("new");
  expect(fs.readdirSync(d).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  expect(s.list()).toEqual([DATA0]);
});

test("concurrent writes to one object all land; create racing writes stays consistent", async () => {
  const d = tmp();
  const s = openStore("plain", [d]);
  await s.init();
  await s.createAndWrite(DATA0, 0, Buffer.alloc(0), 1 * MiB);
  const ps: Promise<void>[] = [];
  for (let i = 0; i < 64; i++) ps.push(s.write(DATA0, i * 4096, Buffer.alloc(4096, i + 1)));
  await Promise.all(ps);
  const r = await s.read(DATA0, 0, 64 * 4096);
  for (let i = 0; i < 64; i++) expect(r[i * 4096]).toBe(i + 1);
  expect(r[64 * 4096 - 1]).toBe(64);

  // concurrent creates of the same oid run in call order (last create wins, the write queued
  // after them lands on the final file); never a mix, never a leftover .tmp
  const cs: Promise<void>[] = [];
  for (let i = 0; i < 8; i++) cs.push(s.createAndWrite(DATA1, 0, Buffer.alloc(4096, i + 1), 4096));
  cs.push(s.write(DATA1, 0, Buffer.from([0xee])));
  await Promise.all(cs);
  const r2 = await s.read(DATA1, 0, 4096);
  expect(r2[0]).toBe(0xee);
  expect(r2[1]).toBe(8);
  expect(r2[4095]).toBe(8);
  expect(fs.readdirSync(d).filter((n) => n.endsWith(".tmp"))).toEqual([]);
});

test("different objects in parallel and list() sorted", async () => {
  const d = tmp();
  const s = openStore("tree", [d], { nosync: true });
  await s.init();
  const oids = Array.from({ length: 50 }, (_, i) => ((BigInt(i * 7919 % 251) << 32n) | BigInt(i)));
  await Promise.all(oids.map((o) => s.createAndWrite(o, 0, Buffer.from(o.toString()), 4096)));
  expect(s.list()).toEqual([...oids].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
  for (const o of oids) {
    expect((await s.read(o, 0, o.toString().length)).toString()).toBe(o.toString());
  }
  // EC strips of one oid count once
  await s.createAndWrite(DATA1, 0, Buffer.from("a"), 512, 0);
  await s.createAndWrite(DATA1, 0, Buffer.from("b"), 512, 1);
  expect(s.list().filter((o) => o === DATA1).length).toBe(1);
  await s.remove(DATA1, 0);
  expect(s.list().includes(DATA1)).toBe(true);
  await s.remove(DATA1, 1);
  expect(s.list().includes(DATA1)).toBe(false);
});

test("stale move/read/purge", async () => {
  for (const kind of ["plain", "tree"] as const) {
    const d = tmp();
    const s = openStore(kind, [d]);
    await s.init();
    await s.createAndWrite(DATA0, 0, Buffer.from("epoch3"), 4096);
    await s.createAndWrite(DATA1, 0, Buffer.from("strip"), 4096, 2);
    await s.moveToStale(DATA0, 3);
    await s.moveToStale(DATA1, 4, 2);
    expect(s.exists(DATA0)).toBe(false);
    expect(s.list()).toEqual([]);
    expect(fs.existsSync(`${d}/.stale/007c2b2500000000.3`)).toBe(true);
    expect(fs.existsSync(`${d}/.stale/007c2b2500000001_2.4`)).toBe(true);
    expect((await s.readStale(DATA0, 3, 0, 6)).toString()).toBe("epoch3");
    expect(await s.readStale(DATA0, 3, 4090, 10)).toEqual(Buffer.alloc(10));
    expect((await s.readStale(DATA1, 4, 0, 5, 2)).toString()).toBe("strip");
    await expectRes(s.readStale(DATA0, 2, 0, 6), Res.NO_OBJ);
    // stale copies are not objects after a restart either
    const s2 = openStore(kind, [d]);
    await s2.init();
    expect(s2.list()).toEqual([]);
    await s2.purgeStale();
    expect(fs.readdirSync(`${d}/.stale`)).toEqual([]);
    await expectRes(s2.readStale(DATA0, 3, 0, 6), Res.NO_OBJ);
  }
});

test("format removes objects and stale copies", async () => {
  for (const kind of ["plain", "tree"] as const) {
    const d = tmp();
    const s = openStore(kind, [d]);
    await s.init();
    await s.createAndWrite(DATA0, 0, Buffer.from("a"), 4096);
    await s.createAndWrite(INODE, 0, Buffer.from("b"), 4096);
    await s.createAndWrite(DATA1, 0, Buffer.from("c"), 4096);
    await s.moveToStale(DATA1, 1);
    await s.format();
    expect(s.list()).toEqual([]);
    expect(s.objectBytes()).toBe(0n);
    expect(fs.readdirSync(`${d}/.stale`)).toEqual([]);
    expect(fs.existsSync(s.path(DATA0))).toBe(false);
    expect(fs.existsSync(s.path(INODE))).toBe(false);
    // still usable
    await s.createAndWrite(DATA0, 0, Buffer.from("z"), 4096);
    expect((await s.read(DATA0, 0, 1)).toString()).toBe("z");
  }
});

test("multi-disk placement is stable and misplaced objects are found", async () => {
  const base = tmp();
  const disks = [`${base}/d0`, `${base}/d1`, `${base}/d2`];
  const s = openStore("plain", disks);
  await s.init();
  for (const d of disks) {
    expect(Number(fs.readFileSync(`${d}/.md.size`, "utf8"))).toBeGreaterThan(0);
  }
  const oids = Array.from({ length: 60 }, (_, i) => DATA0 | BigInt(i));
  for (const o of oids) await s.createAndWrite(o, 0, Buffer.from(o.toString(16)), 4096);
  const where = oids.map((o) => s.path(o));
  const used = new Set(where.map((p) => p.slice(0, p.lastIndexOf("/"))));
  expect(used.size).toBe(3); // spread over all disks
  for (let i = 0; i < oids.length; i++) expect(fs.existsSync(where[i])).toBe(true);

  const s2 = openStore("plain", disks);
  await s2.init();
  expect(s2.list()).toEqual(oids);
  expect(oids.map((o) => s2.path(o))).toEqual(where);

  // move one object to a wrong disk behind the store's back
  const o = oids[5];
  const right = where[5];
  const rightDisk = right.slice(0, right.lastIndexOf("/"));
  const wrongDisk = disks.find((d) => d !== rightDisk)!;
  const wrong = `${wrongDisk}/${right.slice(right.lastIndexOf("/") + 1)}`;
  fs.renameSync(right, wrong);
  const s3 = openStore("plain", disks);
  await s3.init();
  expect(s3.exists(o)).toBe(true);
  expect(s3.list()).toEqual(oids);
  expect((await s3.read(o, 0, 14)).toString()).toBe(o.toString(16));
  // accessing it moved it back where the ring wants it
  expect(fs.existsSync(right)).toBe(true);
  expect(fs.existsSync(wrong)).toBe(false);
  await s3.write(o, 0, Buffer.from("Z"));
  expect(fs.readFileSync(right).subarray(0, 1).toString()).toBe("Z");

  // misplaced file appearing after init is found by a disk search
  const o2 = oids[7];
  const p2 = s3.path(o2);
  const d2 = disks.find((d) => !p2.startsWith(d + "/"))!;
  await s3.remove(o2);
  fs.writeFileSync(`${d2}/${p2.slice(p2.lastIndexOf("/") + 1)}`, "late");
  expect(s3.exists(o2)).toBe(true);
  expect((await s3.read(o2, 0, 4)).toString()).toBe("late");
  await s3.remove(o2);
  expect(s3.exists(o2)).toBe(false);
});

test("duplicate disks are rejected", () => {
  const d = tmp();
  expect(() => openStore("plain", [d, d + "/"])).toThrow();
});

test("ObjectIndex: counts an oid once per file, keeps bytes, and asserts its invariants", async () => {
  const { ObjectIndex } = await import("../../io/store.ts");
  const { AssertionError } = await import("../../core/assert.ts");
  const ix = new ObjectIndex<{ oid: bigint; bytes: bigint; ec?: number }>();
  ix.add("b_0", { oid: 0xbn, bytes: 10n, ec: 0 });
  ix.add("b_1", { oid: 0xbn, bytes: 10n, ec: 1 }); // EC strips share an oid
  ix.add("a", { oid: 0xan, bytes: 5n });
  expect(ix.list()).toEqual([0xan, 0xbn]);
  expect(ix.usedBytes).toBe(25n);
  ix.add("a", { oid: 0xan, bytes: 7n }); // rewritten: replaces, not adds
  ix.resize("b_0", 4n);
  expect(ix.usedBytes).toBe(21n);
  ix.drop("b_0");
  expect(ix.list()).toEqual([0xan, 0xbn]);
  ix.drop("b_1");
  ix.drop("b_1"); // already gone: nothing happens
  expect(ix.list()).toEqual([0xan]);
  expect(ix.usedBytes).toBe(7n);
  expect(() => ix.resize("nope", 1n)).toThrow(AssertionError);
  expect(() => ix.add("a", { oid: 0xcn, bytes: 1n })).toThrow(AssertionError);
  ix.clear();
  expect(ix.list()).toEqual([]);
  expect(ix.usedBytes).toBe(0n);
});
