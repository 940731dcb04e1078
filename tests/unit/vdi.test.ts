import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { Res } from "../../core/proto.ts";
import { SdError } from "../../core/errors.ts";
import { sdHashVdi } from "../../core/hash.ts";
import { emptyInodeHeader, Inode, type InodeHeader } from "../../core/inode.ts";
import {
  isAttrObj,
  ledgerOid,
  SD_INODE_HEADER_SIZE,
  SD_INODE_SIZE,
  SD_NR_VDIS,
  vidToAttrOid,
  vidToBtreeOid,
  vidToDataOid,
  vidToVdiOid,
} from "../../core/oid.ts";
import {
  applyLedgerDecref,
  applyVdiAdded,
  applyVdiDeleted,
  decrefPlan,
  deleteVdi,
  forgetVdis,
  getVdiAttr,
  hashVdiAttr,
  ledgerFromBuffer,
  ledgerToBuffer,
  lockVdi,
  lookupVdi,
  lookupVdiInfo,
  type MetaIO,
  newVdi,
  type NewVdiRequest,
  recyclableAfterDelete,
  registerInode,
  releaseVdi,
  VdiBitmap,
  vdiFamily,
  VdiTable,
} from "../../core/vdi.ts";

/** Sparse in-memory object store: reads beyond the stored extent return zeros. */
class MemIO implements MetaIO {
  objs = new Map<bigint, Buffer>();
  reads = 0;
  read(oid: bigint, offset: number, length: number): Promise<Buffer> {
    this.reads++;
    const o = this.objs.get(oid);
    if (!o) return Promise.reject(new SdError(Res.NO_OBJ));
    const out = Buffer.alloc(length);
    if (offset < o.length) o.copy(out, 0, offset, Math.min(o.length, offset + length));
    return Promise.resolve(out);
  }
  // Like the store: a created object has its full size, zero-filled around the payload.
  create(oid: bigint, data: Buffer, offset = 0): Promise<void> {
    const full = (oid >> 63n) & 1n ? SD_INODE_SIZE : 0;
    const b = Buffer.alloc(Math.max(full, offset + data.length));
    data.copy(b, offset);
    this.objs.set(oid, b);
    return Promise.resolve();
  }
  write(oid: bigint, offset: number, data: Buffer): Promise<void> {
    let o = this.objs.get(oid);
    if (!o) return Promise.reject(new SdError(Res.NO_OBJ));
    if (o.length < offset + data.length) {
      const n = Buffer.alloc(offset + data.length);
      o.copy(n);
      o = n;
      this.objs.set(oid, o);
    }
    data.copy(o, offset);
    return Promise.resolve();
  }
  removed: bigint[] = [];
  remove(oid: bigint): Promise<void> {
    this.removed.push(oid);
    this.objs.delete(oid);
    return Promise.resolve();
  }
  async inode(vid: number): Promise<Inode> {
    return Inode.decode(await this.read(vidToVdiOid(vid), 0, SD_INODE_SIZE));
  }
}

const DEFAULTS = { copies: 3, copyPolicy: 0, blockSizeShift: 22 };
const NOW = (1_700_000_000n << 32n) | 123_000n;

function req(name: string, extra: Partial<NewVdiRequest> = {}): NewVdiRequest {
  return {
    name,
    size: 64n << 20n,
    baseVid: 0,
    snapshot: false,
    copies: 0,
    copyPolicy: 0,
    storePolicy: 0,
    blockSizeShift: 0,
    now: NOW,
    ...extra,
  };
}

/** Run the work phase and then the main phase every node would run. */
async function create(io: MemIO, t: VdiTable, r: NewVdiRequest) {
  const res = await newVdi(io, t, r, DEFAULTS);
  applyVdiAdded(t, res.added);
  return res;
}

async function code(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (e) {
    if (e instanceof SdError) return e.code;
    throw e;
  }
  return Res.SUCCESS;
}

async function setTag(io: MemIO, vid: number, tag: string) {
  const b = Buffer.alloc(256);
  b.write(tag);
  await io.write(vidToVdiOid(vid), 256, b);
}

async function setSlots(io: MemIO, vid: number, start: number, vids: number[]) {
  const b = Buffer.alloc(4 * vids.length);
  vids.forEach((v, i) => b.writeUInt32LE(v, 4 * i));
  await io.write(vidToVdiOid(vid), SD_INODE_HEADER_SIZE + 4 * start, b);
}

// "v5zbhw" has the same sd_hash_vdi as "test"; "v1e8u7" hashes to 0xfffffd (near the top).
const COLLIDER = "v5zbhw";
const HIGH = "v1e8u7";

test("hash constants used by the tests", () => {
  expect(sdHashVdi("test")).toBe(0x7c2b25);
  expect(sdHashVdi(COLLIDER)).toBe(0x7c2b25);
  expect(sdHashVdi(HIGH)).toBe(0xfffffd);
});

test("VdiBitmap uses the READ_VDIS bit order", () => {
  const b = new VdiBitmap();
  b.set(0x7c2b25);
  b.set(9);
  const buf = b.toBuffer();
  expect(buf.length).toBe(2097152);
  expect(buf[0x7c2b25 >> 3]).toBe(1 << (0x7c2b25 & 7));
  expect(buf[1]).toBe(2);
  const c = VdiBitmap.from(buf);
  expect(c.test(9)).toBe(true);
  c.clear(9);
  expect(c.test(9)).toBe(false);
  expect(b.test(9)).toBe(true);
  b.set(10);
  b.set(11);
  expect(b.findNextZero(9)).toBe(12);
  expect(b.findNextZero(13)).toBe(13);
  expect(b.findNextSet(12)).toBe(0x7c2b25);
  b.bytes.fill(0xff);
  expect(b.findNextZero(1)).toBe(SD_NR_VDIS);
});

test("create: test -> 0x7c2b25 with a fresh inode", async () => {
  const io = new MemIO(), t = new VdiTable();
  expect(await code(lookupVdi(io, t, "test"))).toBe(Res.NO_VDI);
  const r = await create(io, t, req("test"));
  expect(r.vid).toBe(0x7c2b25);
  expect(r.nrCopies).toBe(3);
  expect(r.blockSizeShift).toBe(22);
  expect(r.snapId).toBe(1);
  expect(r.oldVid).toBe(0);
  expect(t.inuse.test(0x7c2b25)).toBe(true);
  expect(t.states.get(0x7c2b25)).toEqual({
    vid: 0x7c2b25,
    nrCopies: 3,
    snapshot: false,
    deleted: false,
    copyPolicy: 0,
    blockSizeShift: 22,
    parentVid: 0,
  });
  const raw = io.objs.get(vidToVdiOid(0x7c2b25))!;
  expect(raw.length).toBe(SD_INODE_SIZE);
  const ino = Inode.decode(raw);
  expect(ino.header).toEqual({
    ...emptyInodeHeader(),
    name: "test",
    createTime: NOW,
    vdiSize: 64n << 20n,
    nrCopies: 3,
    blockSizeShift: 22,
    snapId: 1,
    vdiId: 0x7c2b25,
  });
  const l = await lookupVdi(io, t, "test");
  expect(l.vid).toBe(0x7c2b25);
  expect(l.snapIdNext).toBe(2);
  expect(l.nrCopies).toBe(3);
  expect(await code(create(io, t, req("test")))).toBe(Res.VDI_EXIST);
});

test("copies / EC policy / block size defaults", async () => {
  const io = new MemIO(), t = new VdiTable();
  const a = await create(io, t, req("a", { copies: 2, blockSizeShift: 20 }));
  expect([a.nrCopies, a.blockSizeShift, a.copyPolicy]).toEqual([2, 20, 0]);
  const b = await create(io, t, req("b", { copies: 1, copyPolicy: 0x22 }));
  expect([b.nrCopies, b.copyPolicy]).toEqual([6, 0x22]);
  // copies 0: the cluster's copies AND policy win over the request's policy
  const c = await newVdi(io, t, req("c", { copyPolicy: 0x22 }), {
    copies: 4,
    copyPolicy: 0x11,
    blockSizeShift: 23,
  });
  expect([c.nrCopies, c.copyPolicy, c.blockSizeShift]).toEqual([3, 0x11, 23]);
  const ino = await io.inode(c.vid);
  expect([ino.header.nrCopies, ino.header.copyPolicy, ino.header.blockSizeShift]).toEqual([
    3,
    0x11,
    23,
  ]);
});

test("a colliding name probes to the next free bit", async () => {
  const io = new MemIO(), t = new VdiTable();
  await create(io, t, req("test"));
  const r = await create(io, t, req(COLLIDER));
  expect(r.vid).toBe(0x7c2b26);
  expect((await lookupVdi(io, t, COLLIDER)).vid).toBe(0x7c2b26);
  expect((await lookupVdi(io, t, "test")).vid).toBe(0x7c2b25);
  // the run interleaves: a snapshot of "test" goes after the collider
  const s = await create(io, t, req("test", { snapshot: true, baseVid: 0x7c2b25 }));
  expect(s.vid).toBe(0x7c2b27);
  expect((await lookupVdi(io, t, "test")).vid).toBe(0x7c2b27);
  expect((await lookupVdi(io, t, COLLIDER)).vid).toBe(0x7c2b26);
});

test("snapshot keeps the old VID as snapshot and moves the working VDI", async () => {
  const io = new MemIO(), t = new VdiTable();
  const v = (await create(io, t, req("test"))).vid;
  await setSlots(io, v, 0, [v, 0, v]);
  await setTag(io, v, "first");
  const later = NOW + (5n << 32n);
  const r = await create(io, t, req("test", { snapshot: true, baseVid: v, now: later }));
  expect(r.vid).toBe(0x7c2b26);
  expect(r.oldVid).toBe(v);
  expect(r.snapId).toBe(2);

  const snap = await io.inode(v);
  expect(snap.header.snapCtime).toBe(later);
  expect(snap.header.tag).toBe("first");
  expect(snap.header.name).toBe("test");
  expect(snap.isSnapshot()).toBe(true);
  expect([snap.gref[0], snap.gref[1]]).toEqual([0, 1]);
  expect([snap.gref[2], snap.gref[3]]).toEqual([0, 0]);
  expect([snap.gref[4], snap.gref[5]]).toEqual([0, 1]);

  const work = await io.inode(r.vid);
  expect(work.header.snapId).toBe(2);
  expect(work.header.parentVdiId).toBe(v);
  expect(work.header.tag).toBe("");
  expect(work.header.snapCtime).toBe(0n);
  expect(work.header.createTime).toBe(later);
  expect([...work.dataVdiId.subarray(0, 4)]).toEqual([v, 0, v, 0]);
  expect([...work.gref.subarray(0, 6)]).toEqual([1, 0, 0, 0, 1, 0]);

  expect(t.states.get(v)!.snapshot).toBe(true);
  expect(t.states.get(r.vid)!.snapshot).toBe(false);
  expect(t.states.get(r.vid)!.parentVid).toBe(v);

  // lookups: current, by tag, by snapid, NO_TAG vs NO_VDI
  expect((await lookupVdi(io, t, "test")).vid).toBe(r.vid);
  expect((await lookupVdi(io, t, "test")).snapIdNext).toBe(3);
  expect((await lookupVdi(io, t, "test", { tag: "first" })).vid).toBe(v);
  expect((await lookupVdi(io, t, "test", { snapid: 1 })).vid).toBe(v);
  expect(await code(lookupVdi(io, t, "test", { snapid: 2 }))).toBe(Res.NO_TAG); // 2 is the working VDI
  expect(await code(lookupVdi(io, t, "test", { tag: "nope" }))).toBe(Res.NO_TAG);
  expect(await code(lookupVdi(io, t, "nothere", { tag: "first" }))).toBe(Res.NO_VDI);
  expect(await code(lookupVdi(io, t, "nothere"))).toBe(Res.NO_VDI);

  // second snapshot: chain continues
  const r2 = await create(io, t, req("test", { snapshot: true, baseVid: r.vid }));
  expect(r2.vid).toBe(0x7c2b27);
  expect(r2.snapId).toBe(3);
  const w2 = await io.inode(r2.vid);
  expect([...w2.gref.subarray(0, 2)]).toEqual([2, 0]); // generation keeps growing
  expect((await lookupVdi(io, t, "test", { snapid: 2 })).vid).toBe(r.vid);
});

test("snapshot of an unknown VDI is NO_VDI", async () => {
  const io = new MemIO(), t = new VdiTable();
  expect(await code(create(io, t, req("ghost", { snapshot: true, baseVid: 5 })))).toBe(Res.NO_VDI);
});

test("clone of a snapshot: snap_id 1, parent, copied map, grefs bumped", async () => {
  const io = new MemIO(), t = new VdiTable();
  const v = (await create(io, t, req("test"))).vid;
  await setSlots(io, v, 3, [v, v]);
  const w = await create(io, t, req("test", { snapshot: true, baseVid: v }));
  const c = await create(io, t, req("clone", { baseVid: v, size: 128n << 20n }));
  expect(c.vid).toBe(sdHashVdi("clone"));
  expect(c.snapId).toBe(1);
  expect(c.oldVid).toBe(v);
  const ci = await io.inode(c.vid);
  expect(ci.header.parentVdiId).toBe(v);
  expect(ci.header.snapId).toBe(1);
  expect(ci.header.vdiSize).toBe(128n << 20n);
  expect([...ci.dataVdiId.subarray(2, 6)]).toEqual([0, v, v, 0]);
  expect([...ci.gref.subarray(6, 10)]).toEqual([1, 0, 1, 0]);
  const base = await io.inode(v);
  // one count from the snapshot, one from the clone
  expect([...base.gref.subarray(6, 10)]).toEqual([0, 2, 0, 2]);
  expect(base.header.snapCtime).not.toBe(0n);
  expect(t.states.get(c.vid)!.parentVid).toBe(v);
  expect(t.states.get(v)!.snapshot).toBe(true);
  // working VDI of "test" untouched
  expect((await lookupVdi(io, t, "test")).vid).toBe(w.vid);
  // clone onto an existing name
  expect(await code(create(io, t, req("clone", { baseVid: v })))).toBe(Res.VDI_EXIST);
  // clone from a missing base
  expect(await code(create(io, t, req("other", { baseVid: 0x123 })))).toBe(Res.BASE_VDI_READ);
});

test("rebase: current becomes a snapshot, new working VDI based on an older snapshot", async () => {
  const io = new MemIO(), t = new VdiTable();
  const s1 = (await create(io, t, req("test"))).vid;
  await setSlots(io, s1, 0, [s1]);
  const cur = (await create(io, t, req("test", { snapshot: true, baseVid: s1 }))).vid;
  await setSlots(io, cur, 1, [cur]);
  const r = await create(io, t, req("test", { snapshot: true, baseVid: s1, now: NOW + 1n }));
  expect(r.vid).toBe(0x7c2b27);
  expect(r.oldVid).toBe(cur);
  expect(r.snapId).toBe(3);
  expect((await io.inode(cur)).header.snapCtime).toBe(NOW + 1n);
  const ni = await io.inode(r.vid);
  expect(ni.header.parentVdiId).toBe(s1);
  expect([...ni.dataVdiId.subarray(0, 2)]).toEqual([s1, 0]);
  expect((await io.inode(s1)).gref[1]).toBe(2);
  expect(t.states.get(cur)!.snapshot).toBe(true);
  expect((await lookupVdi(io, t, "test")).vid).toBe(r.vid);
  expect((await lookupVdi(io, t, "test", { snapid: 2 })).vid).toBe(cur);
});

test("delete working VDI: cleared inode, NO_VDI, snapshots survive, create reuses the run", async () => {
  const io = new MemIO(), t = new VdiTable();
  const v = (await create(io, t, req("test"))).vid;
  await setTag(io, v, "keep");
  const w = (await create(io, t, req("test", { snapshot: true, baseVid: v }))).vid;
  await setSlots(io, w, 0, [w]);
  // a flat VDI with live slots is left alone (upstream quirk) but the call succeeds
  expect(await deleteVdi(io, t, "test")).toBe(w);
  expect((await io.inode(w)).header.name).toBe("test");
  await setSlots(io, w, 0, [0]); // what dog does before DEL_VDI
  expect(await deleteVdi(io, t, "test")).toBe(w);
  applyVdiDeleted(t, w);
  expect(t.deleted.test(w)).toBe(true);
  expect(t.inuse.test(w)).toBe(true);
  expect(t.states.get(w)!.deleted).toBe(true);
  const gone = await io.inode(w);
  expect(gone.header.name).toBe("");
  expect(gone.header.vdiSize).toBe(0n);
  expect(gone.header.vdiId).toBe(w);
  expect(io.objs.get(vidToVdiOid(w))!.subarray(SD_INODE_HEADER_SIZE).every((x) => x === 0)).toBe(
    true,
  );

  expect(await code(lookupVdi(io, t, "test"))).toBe(Res.NO_VDI);
  const info = await lookupVdiInfo(io, t, "test");
  expect([info.result, info.vid, info.snapIdNext, info.freeBit]).toEqual([
    Res.NO_VDI,
    v,
    2,
    0x7c2b27,
  ]);
  expect((await lookupVdi(io, t, "test", { tag: "keep" })).vid).toBe(v);

  const again = await create(io, t, req("test"));
  expect(again.vid).toBe(0x7c2b27);
  expect(again.snapId).toBe(2);
  expect(again.oldVid).toBe(v);
  expect((await lookupVdi(io, t, "test")).vid).toBe(0x7c2b27);

  // deleting a snapshot by tag
  expect(await deleteVdi(io, t, "test", { tag: "keep" })).toBe(v);
  expect(await code(deleteVdi(io, t, "test", { tag: "keep" }))).toBe(Res.NO_TAG);
  expect(await code(deleteVdi(io, t, "zzz"))).toBe(Res.NO_VDI);
});

test("create after delete without snapshots gets the next bit of the run, snap_id 1", async () => {
  const io = new MemIO(), t = new VdiTable();
  const v = (await create(io, t, req("test"))).vid;
  applyVdiDeleted(t, await deleteVdi(io, t, "test"));
  const r = await create(io, t, req("test"));
  expect(r.vid).toBe(v + 1);
  expect(r.snapId).toBe(1);
  expect(r.oldVid).toBe(0);
});

test("FULL_VDI on a full bitmap; wrap-around allocation from VID 1", async () => {
  const io = new MemIO(), t = new VdiTable();
  t.inuse.bytes.fill(0xff);
  expect(await code(lookupVdi(io, t, "test"))).toBe(Res.FULL_VDI);
  expect(await code(newVdi(io, t, req("test"), DEFAULTS))).toBe(Res.FULL_VDI);

  // HIGH hashes to 0xfffffd: occupy 0xfffffd..0xffffff and VIDs 1..2 with other names
  const io2 = new MemIO(), t2 = new VdiTable();
  for (const vid of [0xfffffd, 0xfffffe, 0xffffff, 1, 2]) {
    const h: InodeHeader = { ...emptyInodeHeader(), name: `other${vid}`, vdiId: vid, snapId: 1 };
    await io2.create(vidToVdiOid(vid), Inode.create(h).encode());
    registerInode(t2, h);
  }
  const r = await create(io2, t2, req(HIGH));
  expect(r.vid).toBe(3);
  expect((await lookupVdi(io2, t2, HIGH)).vid).toBe(3);
  const s = await create(io2, t2, req(HIGH, { snapshot: true, baseVid: 3 }));
  expect(s.vid).toBe(4);
  expect((await lookupVdi(io2, t2, HIGH, { snapid: 1 })).vid).toBe(3);
  expect((await lookupVdi(io2, t2, HIGH)).vid).toBe(4);
  expect(await code(lookupVdi(io2, t2, HIGH, { snapid: 7 }))).toBe(Res.NO_TAG);
});

test("hyper volume create initializes the B-tree root", async () => {
  const io = new MemIO(), t = new VdiTable();
  const r = await create(io, t, req("hv", { storePolicy: 1, size: 1n << 44n }));
  const raw = io.objs.get(vidToVdiOid(r.vid))!;
  expect(raw.readUInt16LE(4664)).toBe(0x6274);
  expect(raw.readUInt16LE(4666)).toBe(1);
  expect(raw.readUInt32LE(4668)).toBe(0);
  expect(raw[553]).toBe(1);
  // delete removes objects owned by the VDI itself (no ref counting for hyper volumes)
  raw.writeUInt32LE(2, 4668);
  raw.writeUInt32LE(7, 4672);
  raw.writeUInt32LE(r.vid, 4676);
  raw.writeUInt32LE(9, 4680);
  raw.writeUInt32LE(0x42, 4684);
  expect(await deleteVdi(io, t, "hv")).toBe(r.vid);
  expect(io.removed).toEqual([vidToDataOid(r.vid, 7)]);
});

test("snapshot of a depth-2 hyper volume copies the leaf nodes", async () => {
  const io = new MemIO(), t = new VdiTable();
  const v = (await create(io, t, req("hv", { storePolicy: 1, size: 1n << 44n }))).vid;
  const leafOid = vidToBtreeOid(v, 0);
  const leaf = Buffer.alloc(4 * 1024 * 1024);
  leaf.writeUInt16LE(0x6274, 0);
  leaf.writeUInt16LE(1, 2);
  leaf.writeUInt32LE(1, 4);
  leaf.writeUInt32LE(11, 8);
  leaf.writeUInt32LE(v, 12);
  await io.create(leafOid, leaf);
  const root = Buffer.alloc(8 + 16);
  root.writeUInt16LE(0x6274, 0);
  root.writeUInt16LE(2, 2);
  root.writeUInt32LE(1, 4);
  root.writeUInt32LE(11, 8);
  root.writeBigUInt64LE(leafOid, 16);
  await io.write(vidToVdiOid(v), 4664, root);
  await io.write(vidToVdiOid(v), 568, Buffer.from([1, 0, 0, 0]));

  const s = await create(
    io,
    t,
    req("hv", { snapshot: true, baseVid: v, storePolicy: 1, size: 1n << 44n }),
  );
  const raw = io.objs.get(vidToVdiOid(s.vid))!;
  expect(raw.readUInt32LE(568)).toBe(1); // btree_counter
  expect(raw.readUInt32LE(4664 + 8)).toBe(11);
  expect(raw.readBigUInt64LE(4664 + 16)).toBe(vidToBtreeOid(s.vid, 0));
  expect(io.objs.get(vidToBtreeOid(s.vid, 0))!.equals(leaf)).toBe(true);
  // the snapshot still points at its own leaf
  expect(io.objs.get(vidToVdiOid(v))!.readBigUInt64LE(4664 + 16)).toBe(leafOid);
  // deleting the working VDI removes its leaf, not the snapshot's object it refers to
  expect(await deleteVdi(io, t, "hv")).toBe(s.vid);
  expect(io.removed).toEqual([vidToBtreeOid(s.vid, 0)]);
});

test("decrefPlan: replaced slots decref with old gref, unchanged slots keep theirs", () => {
  const old = new Uint32Array([0, 5, 6, 7, 8]);
  const gref = new Int32Array([0, 0, 0, 0, 1, 2, 3, 0, 4, 4]);
  const neu = new Uint32Array([9, 5, 9, 0, 8]);
  const { decrefs, gref: g } = decrefPlan(100, old, gref, neu);
  expect(decrefs.map((d) => [d.idx, d.oid, d.generation, d.count, d.remove])).toEqual([
    [102, vidToDataOid(6, 102), 1, 2, false],
    [103, vidToDataOid(7, 103), 3, 0, false],
  ]);
  expect(decrefs[0].ledger).toBe(ledgerOid(vidToDataOid(6, 102)));
  expect([...new Int32Array(new Uint8Array(g).buffer)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 4, 4]);

  // sole owner (gref {0,0}) -> remove directly; Buffer inputs work too
  const ob = Buffer.alloc(4);
  ob.writeUInt32LE(0x7c2b25);
  const p = decrefPlan(0, ob, Buffer.alloc(8), Buffer.alloc(4));
  expect(p.decrefs).toEqual([{
    idx: 0,
    oid: vidToDataOid(0x7c2b25, 0),
    generation: 0,
    count: 0,
    remove: true,
    ledger: ledgerOid(vidToDataOid(0x7c2b25, 0)),
  }]);
});

test("ledger decref math follows generations", () => {
  // A owns X; snapshot -> A.gref {0,1}, B.gref {1,0}. B overwrites (COW) -> decref(gen 1, count 0).
  let r = applyLedgerDecref(null, 1, 0);
  expect(r.ledger[0]).toBe(1);
  expect(r.ledger[1]).toBe(0xffffffff);
  expect(r.empty).toBe(false);
  // then the snapshot A is deleted -> decref(gen 0, count 1): everything cancels
  r = applyLedgerDecref(r.ledger, 0, 1);
  expect(r.empty).toBe(true);

  // other order: snapshot dropped first, then B
  r = applyLedgerDecref(null, 0, 1);
  expect([r.ledger[0], r.ledger[1], r.empty]).toEqual([0, 1, false]);
  r = applyLedgerDecref(r.ledger, 1, 0);
  expect(r.empty).toBe(true);

  // two clones of one snapshot: snapshot {0,2}, clones {1,0} each
  r = applyLedgerDecref(null, 1, 0);
  r = applyLedgerDecref(r.ledger, 0, 2);
  expect(r.empty).toBe(false);
  r = applyLedgerDecref(r.ledger, 1, 0);
  expect(r.empty).toBe(true);

  const buf = ledgerToBuffer(applyLedgerDecref(null, 2, 3).ledger);
  expect(buf.length).toBe(4 * 1048576);
  const back = ledgerFromBuffer(buf.subarray(0, 16));
  expect([back[0], back[1], back[2], back[3]]).toEqual([1, 0, 0xffffffff, 3]);
  expect(() => applyLedgerDecref(null, 1048575, 0)).toThrow();
});

function attrBuf(name: string, key: string, value = "", tag = "", snapId = 0): Buffer {
  const b = Buffer.alloc(66320);
  b.write(name, 0);
  b.write(tag, 256);
  b.writeUInt32LE(snapId, 520);
  b.writeUInt32LE(value.length, 524);
  b.write(key, 528);
  b.write(value, 784);
  return b;
}

test("vdi attributes: create, read, excl, delete, probing", async () => {
  const io = new MemIO(), t = new VdiTable();
  const ct = NOW;
  const a = attrBuf("test", "k1", "v1");
  const id = hashVdiAttr(a);
  const none = { creat: false, excl: false, del: false };

  expect(await code(getVdiAttr(io, t, a, none, ct))).toBe(Res.NO_OBJ);
  const c = await getVdiAttr(io, t, a, { creat: true, excl: true, del: false }, ct);
  expect(c).toEqual({ vid: 0x7c2b25, attrId: id });
  const stored = io.objs.get(vidToAttrOid(0x7c2b25, id))!;
  expect(isAttrObj(vidToAttrOid(0x7c2b25, id))).toBe(true);
  expect(stored.readBigUInt64LE(512)).toBe(ct);
  expect(stored.subarray(784, 786).toString()).toBe("v1");

  expect(await getVdiAttr(io, t, attrBuf("test", "k1"), none, ct)).toEqual({
    vid: 0x7c2b25,
    attrId: id,
  });
  expect(await code(getVdiAttr(io, t, a, { creat: true, excl: true, del: false }, ct))).toBe(
    Res.VDI_EXIST,
  );

  // overwrite without EXCL
  await getVdiAttr(
    io,
    t,
    attrBuf("test", "k1", "v2"),
    { creat: true, excl: false, del: false },
    ct,
  );
  expect(io.objs.get(vidToAttrOid(0x7c2b25, id))!.subarray(784, 786).toString()).toBe("v2");
  expect(io.objs.get(vidToAttrOid(0x7c2b25, id))!.length).toBe(66320);

  // the tag and snap id are part of the key
  const snapAttr = attrBuf("test", "k1", "", "", 3);
  expect(hashVdiAttr(snapAttr)).not.toBe(id);
  expect(await code(getVdiAttr(io, t, snapAttr, none, ct))).toBe(Res.NO_OBJ);

  // a different attribute occupying the hash slot pushes the new one to attr_id + 1
  const b = attrBuf("test", "k2", "x");
  const bid = hashVdiAttr(b);
  await io.create(vidToAttrOid(0x7c2b25, bid), attrBuf("test", "squatter"));
  const cb = await getVdiAttr(io, t, b, { creat: true, excl: false, del: false }, ct);
  expect(cb.attrId).toBe((bid + 1) >>> 0);
  expect((await getVdiAttr(io, t, attrBuf("test", "k2"), none, ct)).attrId).toBe((bid + 1) >>> 0);

  // delete writes a NUL name; afterwards the attribute is gone
  await getVdiAttr(io, t, attrBuf("test", "k1"), { creat: false, excl: false, del: true }, ct);
  expect(io.objs.get(vidToAttrOid(0x7c2b25, id))![0]).toBe(0);
  expect(await code(getVdiAttr(io, t, attrBuf("test", "k1"), none, ct))).toBe(Res.NO_OBJ);
  expect(
    await code(
      getVdiAttr(io, t, attrBuf("test", "k1"), { creat: false, excl: false, del: true }, ct),
    ),
  )
    .toBe(Res.NO_OBJ);
});

test("lock table and registerInode", () => {
  const t = new VdiTable();
  expect(lockVdi(t, 5, "a")).toBe(true);
  expect(lockVdi(t, 5, "b")).toBe(false);
  expect(t.locks.get(5)).toEqual({ owner: "a" });
  expect(releaseVdi(t, 5)).toBe(true);
  expect(lockVdi(t, 5, "b")).toBe(true);

  registerInode(t, {
    ...emptyInodeHeader(),
    name: "",
    vdiId: 9,
    nrCopies: 2,
    snapCtime: 1n,
    parentVdiId: 4,
  });
  expect(t.inuse.test(9)).toBe(true);
  expect(t.deleted.test(9)).toBe(true);
  expect(t.states.get(9)).toEqual({
    vid: 9,
    nrCopies: 2,
    snapshot: true,
    deleted: true,
    copyPolicy: 0,
    blockSizeShift: 0,
    parentVid: 4,
  });
});

test("RECYCLE_VID: lowest free VIDs, a family freed once all of it is deleted", async () => {
  const io = new MemIO(), t = new VdiTable();
  t.recycle = true;
  const a = (await create(io, t, req("a"))).vid;
  expect(a).toBe(1);
  await setTag(io, a, "s1");
  const w = (await create(io, t, req("a", { snapshot: true, baseVid: a }))).vid;
  const b = (await create(io, t, req("b"))).vid;
  const c = (await create(io, t, req("c", { baseVid: a }))).vid; // clone of a@s1
  expect([w, b, c]).toEqual([2, 3, 4]);
  expect(vdiFamily(t, c)).toEqual([1, 2, 4]);
  const del = async (name: string, opts = {}) => {
    const vid = await deleteVdi(io, t, name, opts);
    const freed = recyclableAfterDelete(t, vid);
    applyVdiDeleted(t, vid);
    forgetVdis(t, freed);
    return freed;
  };
  expect(await del("a")).toEqual([]);
  expect(await del("a", { tag: "s1" })).toEqual([]);
  expect(await del("c")).toEqual([1, 2, 4]);
  expect([t.inuse.test(1), t.inuse.test(2), t.inuse.test(3), t.inuse.test(4)]).toEqual([
    false,
    false,
    true,
    false,
  ]);
  expect(t.states.has(1)).toBe(false);
  expect((await create(io, t, req("d"))).vid).toBe(1);
  expect((await create(io, t, req("a"))).vid).toBe(2);
  // A reused (lower) VID for the working VDI: the newest member by snap_id is found, not the
  // highest VID (upstream's lookup takes the snapshot at the higher VID there).
  await setTag(io, 3, "t");
  const nb = (await create(io, t, req("b", { snapshot: true, baseVid: 3 }))).vid;
  expect(nb).toBe(4);
  await del("d");
  await setTag(io, nb, "t2");
  const nb2 = (await create(io, t, req("b", { snapshot: true, baseVid: nb }))).vid;
  expect(nb2).toBe(1);
  expect((await lookupVdi(io, t, "b")).vid).toBe(1);
  expect((await lookupVdi(io, t, "b", { tag: "t" })).vid).toBe(3);
  expect((await lookupVdi(io, t, "b", { tag: "t2" })).vid).toBe(4);
  expect(await code(lookupVdi(io, t, "b", { tag: "nope" }))).toBe(Res.NO_TAG);
  expect(await code(lookupVdi(io, t, "zz"))).toBe(Res.NO_VDI);
});
