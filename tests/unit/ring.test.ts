import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { sdHash, sdHashNext, sdHashOid } from "../../core/hash.ts";
import { makeNode, nodeEqual, type SdNode } from "../../core/node.ts";
import { vidToDataOid, vidToVdiOid } from "../../core/oid.ts";
import { autoVnodes, DiskRing, Ring, rintHalfEven } from "../../core/ring.ts";

const ports = (ns: SdNode[]) => ns.map((n) => n.port);
const local = (port: number, zone: number, o: { nrVnodes?: number; space?: bigint } = {}) =>
  makeNode("127.0.0.1", port, { zone, ...o });

// Straightforward BigInt reference of upstream oid_to_vnodes.
type RefRing = { vn: { key: bigint; node: SdNode }[]; zones: Set<number> };
const refCache = new WeakMap<SdNode[], RefRing>();
function refPlace(nodes: SdNode[], oid: bigint, copies: number): SdNode[] {
  let rr = refCache.get(nodes);
  if (!rr) {
    rr = refBuild(nodes);
    refCache.set(nodes, rr);
  }
  const { vn, zones } = rr;
  const n = Math.min(copies, Math.min(zones.size, 31));
  if (n <= 0 || !vn.length) return [];
  const k = sdHashOid(oid);
  let p = vn.findIndex((v) => v.key >= k);
  if (p < 0) p = 0;
  const out = [vn[p].node];
  while (out.length < n) {
    p = (p + 1) % vn.length;
    if (out.some((o) => o.zone === vn[p].node.zone)) continue;
    out.push(vn[p].node);
  }
  return out;
}

function refBuild(nodes: SdNode[]): RefRing {
  const sorted = [...nodes].sort((a, b) => Buffer.compare(a.addr, b.addr) || a.port - b.port);
  const vn: { key: bigint; node: SdNode }[] = [];
  const zones = new Set<number>();
  for (const n of sorted) {
    if (!n.nrVnodes) continue;
    zones.add(n.zone);
    const id = Buffer.alloc(18);
    n.addr.copy(id);
    id.writeUInt16LE(n.port, 16);
    let h = sdHash(id);
    for (let i = 0; i < n.nrVnodes; i++) {
      h = sdHashNext(h);
      vn.push({ key: h, node: n });
    }
  }
  vn.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return { vn, zones };
}

const VID = 0x7c2b25;

test("spec vector: two nodes, 2 copies", () => {
  const r = new Ring([local(7001, 1), local(7000, 0)]);
  expect(ports(r.nodes)).toEqual([7000, 7001]);
  expect(r.nrZones).toBe(2);
  expect(vidToDataOid(VID, 1)).toBe(0x007c2b2500000001n);
  expect(ports(r.placeObject(vidToVdiOid(VID), 2))).toEqual([7001, 7000]);
  expect(ports(r.placeObject(0x807c2b2500000000n, 2))).toEqual([7001, 7000]);
  expect(ports(r.placeObject(vidToDataOid(VID, 0), 2))).toEqual([7001, 7000]);
  expect(ports(r.placeObject(vidToDataOid(VID, 1), 2))).toEqual([7000, 7001]);
  expect(ports(r.placeObject(vidToDataOid(VID, 2), 2))).toEqual([7000, 7001]);
  expect(r.placeObjectIdx(vidToVdiOid(VID), 2)).toEqual([1, 0]);
});

test("spec vector: three nodes, 3 copies", () => {
  const r = new Ring([local(7000, 0), local(7001, 1), local(7002, 2)]);
  expect(ports(r.placeObject(vidToVdiOid(VID), 3))).toEqual([7002, 7001, 7000]);
  expect(ports(r.placeObject(vidToDataOid(VID, 0), 3))).toEqual([7001, 7000, 7002]);
  expect(ports(r.placeObject(vidToDataOid(VID, 1), 3))).toEqual([7000, 7001, 7002]);
});

test("copies capped at nrZones; same-zone nodes never share an object", () => {
  // default zone = IP, so all 127.0.0.1 nodes share one zone
  const r = new Ring([
    makeNode("127.0.0.1", 7000),
    makeNode("127.0.0.1", 7001),
    makeNode("127.0.0.1", 7002),
  ]);
  expect(r.nrZones).toBe(1);
  expect(r.placeObject(vidToDataOid(VID, 0), 3).length).toBe(1);
  const r2 = new Ring([local(7000, 0), local(7001, 1)]);
  expect(r2.placeObject(vidToDataOid(VID, 0), 3).length).toBe(2);
  expect(r2.placeObject(vidToDataOid(VID, 0), 0)).toEqual([]);
  expect(new Ring([]).placeObject(1n, 3)).toEqual([]);
});

test("gateways (0 vnodes) are listed but never placed and not counted as zones", () => {
  const gw = local(6999, 9, { nrVnodes: 0 });
  const r = new Ring([local(7000, 0), gw, local(7001, 1)]);
  expect(r.nodes.length).toBe(3);
  expect(r.nrZones).toBe(2);
  expect(r.nrVnodes).toBe(256);
  for (let i = 0; i < 500; i++) {
    const p = r.placeObject(vidToDataOid(VID, i), 3);
    expect(p.length).toBe(2);
    expect(p.some((n) => nodeEqual(n, gw))).toBe(false);
  }
  // same placement as without the gateway
  const r0 = new Ring([local(7000, 0), local(7001, 1)]);
  for (let i = 0; i < 50; i++) {
    expect(ports(r.placeObject(vidToDataOid(VID, i), 2))).toEqual(
      ports(r0.placeObject(vidToDataOid(VID, i), 2)),
    );
  }
  expect(new Ring([gw]).placeObject(1n, 3)).toEqual([]);
});

test("random rings: zone-distinct placements, matches BigInt reference", () => {
  let seed = 12345;
  const rnd = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  for (let iter = 0; iter < 25; iter++) {
    const count = 1 + rnd(12);
    const nodes: SdNode[] = [];
    const used = new Set<string>();
    while (nodes.length < count) {
      const ip = `10.0.${rnd(3)}.${1 + rnd(4)}`;
      const port = 7000 + rnd(5);
      if (used.has(`${ip}:${port}`)) continue;
      used.add(`${ip}:${port}`);
      const opt = rnd(3) === 0 ? {} : { zone: rnd(5) };
      nodes.push(makeNode(ip, port, { ...opt, nrVnodes: rnd(8) === 0 ? 0 : 1 + rnd(200) }));
    }
    const r = new Ring(nodes);
    const zones = new Set(nodes.filter((n) => n.nrVnodes > 0).map((n) => n.zone));
    expect(r.nrZones).toBe(zones.size);
    for (let i = 0; i < 60; i++) {
      const oid = i % 3 === 0
        ? vidToVdiOid(rnd(1 << 24))
        : vidToDataOid(rnd(1 << 24), rnd(1 << 20));
      const copies = 1 + rnd(6);
      const p = r.placeObject(oid, copies);
      expect(p.length).toBe(Math.min(copies, zones.size));
      expect(new Set(p.map((n) => n.zone)).size).toBe(p.length);
      for (const n of p) expect(n.nrVnodes).toBeGreaterThan(0);
      const ref = refPlace(nodes, oid, copies);
      expect(p.length).toBe(ref.length);
      p.forEach((n, j) => expect(nodeEqual(n, ref[j])).toBe(true));
    }
  }
});

test("nrZones capped at 31", () => {
  const ns: SdNode[] = [];
  for (let i = 0; i < 40; i++) ns.push(local(7000 + i, i, { nrVnodes: 4 }));
  const r = new Ring(ns);
  expect(r.nrZones).toBe(31);
  expect(r.placeObject(5n, 40).length).toBe(31);
});

test("rintHalfEven", () => {
  expect([0.5, 1.5, 2.5, 3.5, 2.4999, 2.5001, 0, 7].map(rintHalfEven)).toEqual([
    0,
    2,
    2,
    4,
    2,
    3,
    0,
    7,
  ]);
});

test("autoVnodes: integer average, single-precision factor, ties to even, gateways 0", () => {
  // total 1024 over 4 -> avg 256; 128*space/256 = 0.5, 1.5, 2.5, 507.5
  const ns = [1n, 3n, 5n, 1015n].map((s, i) => local(7000 + i, i, { space: s, nrVnodes: 1 }));
  const gw = local(7010, 9, { space: 0n, nrVnodes: 128 });
  const out = autoVnodes([...ns, gw]);
  expect(out.map((n) => n.nrVnodes)).toEqual([0, 2, 2, 508, 0]);
  expect(ns[0].nrVnodes).toBe(1); // inputs untouched
  // avg = floor(3/2) = 1
  expect(
    autoVnodes([local(1, 0, { space: 1n }), local(2, 1, { space: 2n })]).map((n) => n.nrVnodes),
  ).toEqual([128, 256]);
  // equal spaces -> 128 each
  const G = 1n << 30n;
  expect(
    autoVnodes([local(1, 0, { space: 100n * G }), local(2, 1, { space: 100n * G })]).map((n) =>
      n.nrVnodes
    ),
  )
    .toEqual([128, 128]);
  // avg 20G: factors 0.5, 1, 1.5
  const a = autoVnodes([
    local(1, 0, { space: 10n * G }),
    local(2, 1, { space: 20n * G }),
    local(3, 2, { space: 30n * G }),
  ]);
  expect(a.map((n) => n.nrVnodes)).toEqual([64, 128, 192]);
  // single precision matters: in double 128*3011718757/3e9 = 128.50000029.. would round to 129
  const sp = autoVnodes([local(1, 0, { space: 3011718757n }), local(2, 1, { space: 2988281243n })]);
  expect(sp[0].nrVnodes).toBe(128);
  // no node with space: unchanged
  expect(autoVnodes([local(1, 0, { nrVnodes: 7 })])[0].nrVnodes).toBe(7);
});

test("DiskRing", () => {
  const G = 1n << 30n;
  const disks = [{ path: "/d/a", capacity: 10n * G }, { path: "/d/b/", capacity: 10n * G + 1n }, {
    path: "/d/c",
    capacity: 0n,
  }];
  const dr = new DiskRing(disks);
  // reference: vdisk keys sd_hash_next chain seeded by sd_hash(path without trailing '/')
  const vd: { key: bigint; i: number }[] = [];
  const paths = ["/d/a", "/d/b", "/d/c"];
  const counts = [10, 11, 0];
  for (let i = 0; i < 3; i++) {
    let h = sdHash(Buffer.from(paths[i]));
    for (let k = 0; k < counts[i]; k++) {
      h = sdHashNext(h);
      vd.push({ key: h, i });
    }
  }
  vd.sort((x, y) => (x.key < y.key ? -1 : 1));
  const seen = new Set<number>();
  for (let idx = 0; idx < 2000; idx++) {
    const oid = vidToDataOid(VID, idx);
    const k = sdHashOid(oid);
    const ref = (vd.find((v) => v.key >= k) ?? vd[0]).i;
    const got = dr.pickDisk(oid);
    expect(got).toBe(ref);
    seen.add(got);
  }
  expect([...seen].sort()).toEqual([0, 1]);
  expect(new DiskRing([{ path: "/x", capacity: 5n }]).pickDisk(1n)).toBe(0);
  expect(new DiskRing([]).pickDisk(1n)).toBe(-1);
});

test("placement is fast", () => {
  const ns: SdNode[] = [];
  for (let i = 0; i < 32; i++) ns.push(local(7000 + i, i));
  const r = new Ring(ns);
  const t0 = performance.now();
  let acc = 0;
  for (let i = 0; i < 100000; i++) acc += r.placeObjectIdx(vidToDataOid(VID, i), 3)[0];
  const ms = performance.now() - t0;
  expect(acc).toBeGreaterThan(0);
  expect(ms).toBeLessThan(2000);
});
