// Hyper volume B-tree index (protocol.md §9.6): insert/split algorithm, persisted layout, decode.
import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import {
  BTREE_MAX_INDEX,
  BTREE_MAX_INDIRECT,
  BtreeIndex,
  type BtreeWrite,
} from "../../core/btree.ts";
import { SD_INODE_HEADER_SIZE, vidToBtreeOid, vidToVdiOid } from "../../core/oid.ts";

const VID = 0xabcdef;

/** Objects as a sheep would store them after the writes (create = fresh zero object). */
class FakeObjects {
  objs = new Map<bigint, Buffer>();
  apply(ws: BtreeWrite[]): void {
    for (const w of ws) {
      let b = this.objs.get(w.oid);
      if (w.create || !b) {
        if (!w.create) throw new Error(`write to missing object ${w.oid.toString(16)}`);
        b = Buffer.alloc(4 * 1024 * 1024 + SD_INODE_HEADER_SIZE);
        this.objs.set(w.oid, b);
      }
      w.data.copy(b, w.offset);
    }
  }
  async decode(
    counter: number,
    limits: { maxIndex: number; maxIndirect: number },
  ): Promise<BtreeIndex> {
    const ino = this.objs.get(vidToVdiOid(VID))!;
    return BtreeIndex.decode(VID, counter, ino.subarray(SD_INODE_HEADER_SIZE), (oid, n) => {
      const o = this.objs.get(oid);
      if (!o) throw new Error(`no leaf ${oid.toString(16)}`);
      return Promise.resolve(o.subarray(0, 8 + Math.max(0, n) * 8));
    }, limits);
  }
}

test("capacities match upstream's node size", () => {
  expect(BTREE_MAX_INDEX).toBe(524287);
  expect(BTREE_MAX_INDIRECT).toBe(262143);
});

test("first insert writes a depth-1 root with one entry at offset 4664", () => {
  const t = new BtreeIndex(VID, 0);
  t.set(26214399, VID);
  const ws = t.takeWrites();
  expect(ws.length).toBe(1);
  expect(ws[0].oid).toBe(vidToVdiOid(VID));
  expect(ws[0].offset).toBe(4664);
  expect(ws[0].create).toBe(false);
  const b = ws[0].data;
  expect([b.readUInt16LE(0), b.readUInt16LE(2), b.readUInt32LE(4)]).toEqual([0x6274, 1, 1]);
  expect([b.readUInt32LE(8), b.readUInt32LE(12)]).toEqual([26214399, VID]);
  expect(b.length).toBe(16);
  expect(t.takeWrites()).toEqual([]);
  expect(t.get(26214399)).toBe(VID);
  expect(t.get(0)).toBe(0);
});

test("random inserts with tiny nodes: splits keep every entry, the persisted tree decodes back", async () => {
  const limits = { maxIndex: 4, maxIndirect: 40 };
  const t = new BtreeIndex(VID, 0, limits.maxIndex, limits.maxIndirect);
  const store = new FakeObjects();
  // the inode exists before the tree is written
  store.objs.set(vidToVdiOid(VID), Buffer.alloc(4 * 1024 * 1024 + SD_INODE_HEADER_SIZE));
  const model = new Map<number, number>();
  let seed = 12345;
  const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (let i = 0; i < 90; i++) {
    const idx = Math.floor(rnd() * 1000);
    const vid = 1 + Math.floor(rnd() * 5);
    t.set(idx, vid);
    model.set(idx, vid);
    if (i % 7 === 0) store.apply(t.takeWrites());
  }
  store.apply(t.takeWrites());
  expect(t.depth).toBe(2);
  const want = [...model.entries()].sort((a, b) => a[0] - b[0]);
  expect([...t.entries()]).toEqual(want);
  for (const [k, v] of model) expect(t.get(k)).toBe(v);
  expect(t.get(1001)).toBe(0);
  // leaves are numbered from btree_counter; every referenced leaf exists
  for (const oid of t.leafOids()) {
    expect(store.objs.has(oid)).toBe(true);
    expect(Number(oid & 0xffffffffn)).toBeLessThan(t.counter);
  }
  const back = await store.decode(t.counter, limits);
  expect([...back.entries()]).toEqual(want);
  expect(back.leafOids()).toEqual(t.leafOids());
  // the counter reached the inode header
  expect(store.objs.get(vidToVdiOid(VID))!.readUInt32LE(568)).toBe(t.counter);
});

test("root split moves halves into leaves 0 and 1; appends past the end fill the last leaf, then a new one", () => {
  const t = new BtreeIndex(VID, 7, 4, 10);
  for (const i of [10, 20, 30, 40]) t.set(i, VID);
  t.takeWrites();
  t.set(50, VID); // root full: split, then append to the right leaf
  expect(t.depth).toBe(2);
  expect(t.leafOids()).toEqual([vidToBtreeOid(VID, 7), vidToBtreeOid(VID, 8)]);
  const ws = t.takeWrites();
  expect(ws.filter((w) => w.create).map((w) => w.oid)).toEqual([
    vidToBtreeOid(VID, 7),
    vidToBtreeOid(VID, 8),
  ]);
  const root = ws[ws.length - 1].data;
  expect([root.readUInt16LE(2), root.readUInt32LE(4)]).toEqual([2, 2]);
  expect([root.readUInt32LE(8), root.readBigUInt64LE(16)]).toEqual([20, vidToBtreeOid(VID, 7)]);
  expect([root.readUInt32LE(24), root.readBigUInt64LE(32)]).toEqual([50, vidToBtreeOid(VID, 8)]);
  t.set(60, VID); // right leaf now full (30 40 50 60)
  t.set(70, VID); // new leaf 9
  expect(t.leafOids()).toEqual([7, 8, 9].map((n) => vidToBtreeOid(VID, n)));
  t.set(35, 3); // into the full middle leaf: split it, the lower half goes to leaf 10 before it
  expect(t.leafOids()).toEqual([7, 10, 8, 9].map((n) => vidToBtreeOid(VID, n)));
  expect([...t.entries()].map(([i]) => i)).toEqual([10, 20, 30, 35, 40, 50, 60, 70]);
  expect(t.get(35)).toBe(3);
  expect(t.counter).toBe(11);
});

test("setting an entry to 0 keeps it in the tree but hides it", () => {
  const t = new BtreeIndex(VID);
  t.set(5, VID);
  t.set(5, 0);
  expect(t.get(5)).toBe(0);
  expect([...t.entries()]).toEqual([]);
  expect(t.size).toBe(1);
});

test("a full tree refuses new leaves", () => {
  const t = new BtreeIndex(VID, 0, 2, 2);
  for (const i of [1, 2, 3]) t.set(i, VID); // root split into [1] [2], then [2 3]
  expect(() => t.set(4, VID)).toThrow("full");
  t.set(0, VID); // room left in the first leaf
  expect([...t.entries()].map(([i]) => i)).toEqual([0, 1, 2, 3]);
});
