// The EC gateway against in-memory peers: strip placement, read-modify-write, reconstruction on
// read, fewer zones than d+p, and concurrent writes into one stripe.
import { describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import { EcGateway, stripeRange } from "../../sheep/ec-io.ts";
import { ErasureCode } from "../../core/ec.ts";
import { Flag, Header, Op, Res } from "../../core/proto.ts";
import { makeNode, type SdNode } from "../../core/node.ts";

const OBJ = 64 * 1024; // small objects keep the test quick; the layout does not depend on it

class FakePeers {
  files = new Map<string, Buffer>(); // "port/ec" -> strip file
  down = new Set<number>();
  delayMs = 0;
  constructor(readonly nodes: SdNode[]) {}
  async send(node: SdNode, h: Header, data: Buffer): Promise<{ hdr: Header; data: Buffer }> {
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs * Math.random()));
    const rsp = new Header();
    if (this.down.has(node.port)) {
      rsp.result = Res.NETWORK_ERROR;
      return { hdr: rsp, data: Buffer.alloc(0) };
    }
    const key = `${node.port}/${h.ecIndex}`;
    const f = this.files.get(key);
    switch (h.opcode) {
      case Op.CREATE_AND_WRITE_PEER: {
        const nf = Buffer.alloc(OBJ / 4);
        data.copy(nf, h.offset);
        this.files.set(key, nf);
        break;
      }
      case Op.WRITE_PEER:
        if (!f) rsp.result = Res.NO_OBJ;
        else data.copy(f, h.offset);
        break;
      case Op.READ_PEER:
        if (!f) rsp.result = Res.NO_OBJ;
        else return { hdr: rsp, data: Buffer.from(f.subarray(h.offset, h.offset + h.dataLength)) };
        break;
      case Op.REMOVE_PEER:
        if (!f) rsp.result = Res.NO_OBJ;
        else this.files.delete(key);
        break;
    }
    return { hdr: rsp, data: Buffer.alloc(0) };
  }
}

function gateway(zones: number) {
  const nodes = [...Array(zones).keys()].map((i) => makeNode("127.0.0.1", 7000 + i, { zone: i }));
  const peers = new FakePeers(nodes);
  const gw = new EcGateway({
    targets: () => nodes.slice(0, Math.min(6, zones)),
    send: (n, h, d) => peers.send(n, h, d),
    peerHeader: (r, op, e) => {
      const h = r.clone();
      h.opcode = op;
      h.epoch = e;
      return h;
    },
    withRetry: (f) => f(1),
    retryable: (c) => c === Res.NETWORK_ERROR,
  });
  return { gw, peers, nodes };
}

const POLICY = 0x22; // 4:2

function req(op: number, off: number, len: number): Header {
  const h = Header.req(op, { flags: op === Op.READ_OBJ ? 0 : Flag.CMD_WRITE, dataLength: len });
  h.oid = 0x0000000100000003n;
  h.offset = off;
  return h;
}

describe("EC gateway", () => {
  test("create: strip k goes to the k-th node as `ec_index = k`, upstream's layout", async () => {
    const { gw, peers } = gateway(6);
    const obj = randomBytes(OBJ);
    await gw.write(req(Op.CREATE_AND_WRITE_OBJ, 0, OBJ), obj, POLICY);
    const want = new ErasureCode(4, 2).encodeObject(obj);
    for (let k = 0; k < 6; k++) {
      expect(peers.files.get(`${7000 + k}/${k}`)!.equals(want[k])).toBe(true);
    }
    expect(peers.files.size).toBe(6);
    const r = await gw.read(req(Op.READ_OBJ, 1000, 3000), POLICY);
    expect(r.data.equals(obj.subarray(1000, 4000))).toBe(true);
  });

  test("unaligned write keeps the rest of its stripes (read-modify-write)", async () => {
    const { gw } = gateway(6);
    const obj = randomBytes(OBJ);
    await gw.write(req(Op.CREATE_AND_WRITE_OBJ, 0, OBJ), obj, POLICY);
    const patch = randomBytes(700);
    await gw.write(req(Op.WRITE_OBJ, 300, 700), patch, POLICY);
    patch.copy(obj, 300);
    const small = randomBytes(5);
    await gw.write(req(Op.WRITE_OBJ, 2050, 5), small, POLICY); // head and tail in one stripe
    small.copy(obj, 2050);
    const r = await gw.read(req(Op.READ_OBJ, 0, OBJ), POLICY);
    expect(r.data.equals(obj)).toBe(true);
  });

  test("reads rebuild from parity when two data strips are gone", async () => {
    const { gw, peers } = gateway(6);
    const obj = randomBytes(OBJ);
    await gw.write(req(Op.CREATE_AND_WRITE_OBJ, 0, OBJ), obj, POLICY);
    peers.files.delete("7001/1");
    peers.down.add(7003);
    const r = await gw.read(req(Op.READ_OBJ, 512, OBJ - 1024), POLICY);
    expect(r.data.equals(obj.subarray(512, OBJ - 512))).toBe(true);
    peers.down.add(7004); // third strip lost: retryable failure (a holder did not answer)
    await expect(gw.read(req(Op.READ_OBJ, 0, 512), POLICY)).rejects.toMatchObject({
      code: Res.NETWORK_ERROR,
    });
  });

  test("d <= zones < d+p: only data strips are written; fewer than d: SYSTEM_ERROR", async () => {
    const five = gateway(5);
    await five.gw.write(req(Op.CREATE_AND_WRITE_OBJ, 0, OBJ), randomBytes(OBJ), POLICY);
    expect([...five.peers.files.keys()].sort()).toEqual(["7000/0", "7001/1", "7002/2", "7003/3"]);
    const three = gateway(3);
    await expect(three.gw.write(req(Op.CREATE_AND_WRITE_OBJ, 0, 512), randomBytes(512), POLICY))
      .rejects.toMatchObject({ code: Res.SYSTEM_ERROR });
  });

  test("concurrent unaligned writes into one stripe lose nothing", async () => {
    const { gw, peers } = gateway(6);
    const obj = randomBytes(OBJ);
    await gw.write(req(Op.CREATE_AND_WRITE_OBJ, 0, OBJ), obj, POLICY);
    peers.delayMs = 5;
    const writes = [...Array(16).keys()].map((i) => {
      const b = Buffer.alloc(30, i + 1);
      b.copy(obj, 1024 + i * 30);
      return gw.write(req(Op.WRITE_OBJ, 1024 + i * 30, 30), b, POLICY);
    });
    await Promise.all(writes);
    const r = await gw.read(req(Op.READ_OBJ, 0, OBJ), POLICY);
    expect(r.data.equals(obj)).toBe(true);
  });

  test("stripe range", () => {
    expect(stripeRange(0, 512, 4)).toEqual({
      start: 0,
      end: 1,
      stripes: 1,
      stripOff: 0,
      stripLen: 128,
    });
    expect(stripeRange(1000, 100, 8)).toMatchObject({
      start: 1,
      end: 3,
      stripOff: 64,
      stripLen: 128,
    });
  });
});
