// EC recovery against in-memory stores: a node fetches its own strip from the node that held the
// same position earlier, or rebuilds it from any d strips found where earlier epochs put them.
import { describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import { EcRecovery, localEcIndex } from "../../sheep/ec-recovery.ts";
import { ErasureCode } from "../../core/ec.ts";
import { Header, Op, Res } from "../../core/proto.ts";
import { makeNode, nodeEqual, type SdNode } from "../../core/node.ts";
import { Ring } from "../../core/ring.ts";
import { SdError } from "../../core/errors.ts";

const OID = 0x0000000700000005n;
const POLICY = 0x22; // 4:2
const LEN = 4096;

class MemStore {
  cur = new Map<number, Buffer>();
  stale = new Map<string, Buffer>(); // "idx.epoch"
  exists(_oid: bigint, idx?: number) {
    return idx !== undefined && this.cur.has(idx);
  }
  read(_oid: bigint, off: number, len: number, idx?: number) {
    const b = this.cur.get(idx!);
    if (!b) return Promise.reject(new SdError(Res.NO_OBJ));
    return Promise.resolve(Buffer.from(b.subarray(off, off + len)));
  }
  readStale(_oid: bigint, epoch: number, off: number, len: number, idx?: number) {
    const b = this.stale.get(`${idx}.${epoch}`);
    if (!b) return Promise.reject(new SdError(Res.NO_OBJ));
    return Promise.resolve(Buffer.from(b.subarray(off, off + len)));
  }
  createAndWrite(_oid: bigint, _off: number, data: Buffer, _size: number, idx?: number) {
    this.cur.set(idx!, Buffer.from(data));
    return Promise.resolve();
  }
  moveToStale(_oid: bigint, epoch: number, idx?: number) {
    const b = this.cur.get(idx!);
    if (!b) return Promise.reject(new SdError(Res.NO_OBJ));
    this.cur.delete(idx!);
    this.stale.set(`${idx}.${epoch}`, b);
    return Promise.resolve();
  }
}

function world(nNodes: number) {
  const nodes = [...Array(nNodes).keys()].map((i) => makeNode("127.0.0.1", 7100 + i, { zone: i }));
  const stores = new Map<number, MemStore>(nodes.map((n) => [n.port, new MemStore()]));
  let ring = new Ring(nodes);
  const rec = (me: SdNode) =>
    new EcRecovery({
      me,
      store: () => stores.get(me.port)!,
      ring: () => ring,
      copiesFor: () => 6,
      policyOf: () => POLICY,
      stripSize: () => LEN,
      epoch: () => 3,
      peer: async (node: SdNode, h: Header) => {
        expect(h.opcode).toBe(Op.READ_PEER);
        const st = stores.get(node.port)!;
        const rsp = new Header();
        try {
          const data = st.exists(h.oid, h.ecIndex)
            ? await st.read(h.oid, 0, h.dataLength, h.ecIndex)
            : await st.readStale(h.oid, h.tgtEpoch, 0, h.dataLength, h.ecIndex);
          return { hdr: rsp, data };
        } catch (e) {
          rsp.result = (e as SdError).code;
          return { hdr: rsp, data: Buffer.alloc(0) };
        }
      },
    });
  return { nodes, stores, rec, setRing: (r: Ring) => (ring = r) };
}

describe("EC recovery", () => {
  const code = new ErasureCode(4, 2);
  const strips = code.encodeObject(randomBytes(LEN * 4));

  test("two quick failures: every survivor gets the strip of its new position", async () => {
    // The first two positions die, so every position shifts. Object ids vary the placement.
    for (let k = 0n; k < 16n; k++) {
      const oid = OID + (k << 8n);
      const w = world(6);
      const r1 = new Ring(w.nodes);
      const p1 = r1.placeObject(oid, 6);
      p1.forEach((n, i) => w.stores.get(n.port)!.cur.set(i, strips[i]));
      const dead = [p1[0], p1[1]];
      const alive = w.nodes.filter((n) => !dead.some((d) => nodeEqual(d, n)));
      const r2 = new Ring(w.nodes.filter((n) => !nodeEqual(n, dead[0])));
      const r3 = new Ring(alive);
      w.setRing(r3);
      // The survivors' moves were done by the epoch-3 pass, so every stale strip is tagged 2 even
      // where the node held it only in epoch 1 (the race two quick epoch changes produce).
      for (const n of alive) {
        const st = w.stores.get(n.port)!;
        const mine = localEcIndex(r3, n, oid, 6);
        for (const i of [...st.cur.keys()]) if (i !== mine) await st.moveToStale(oid, 2, i);
      }
      const history = [{ epoch: 2, ring: r2 }, { epoch: 1, ring: r1 }, { epoch: 3, ring: r3 }];
      const isAlive = (n: SdNode) => alive.some((a) => nodeEqual(a, n));
      for (const n of alive) await w.rec(n).fetch(oid, history, isAlive, () => false);
      const p3 = r3.placeObject(oid, 6);
      expect(p3.length).toBe(4);
      p3.forEach((n, i) => expect(w.stores.get(n.port)!.cur.get(i)!.equals(strips[i])).toBe(true));
    }
  });

  test("moveUnowned keeps only the strip of this node's position", async () => {
    const w = world(6);
    const me = w.nodes[0];
    const st = w.stores.get(me.port)!;
    for (let i = 0; i < 6; i++) st.cur.set(i, strips[i]);
    await w.rec(me).moveUnowned([OID], 4, () => {});
    const mine = localEcIndex(new Ring(w.nodes), me, OID, 6)!;
    expect([...st.cur.keys()]).toEqual([mine]);
    expect(st.stale.size).toBe(5);
  });

  test("more than p strips gone: NO_OBJ naming what was tried", async () => {
    const w = world(6);
    const r1 = new Ring(w.nodes);
    const p1 = r1.placeObject(OID, 6);
    p1.slice(0, 3).forEach((n, i) => w.stores.get(n.port)!.cur.set(i, strips[i]));
    const me = p1[3];
    await expect(
      w.rec(me).fetch(OID, [{ epoch: 1, ring: r1 }], () => true, () => false),
    ).rejects.toThrow(/only 3 of 4 strips/);
  });
});
