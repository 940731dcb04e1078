// The Sheepdog frame codec accepts bytes split anywhere and rejects garbage.
import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { Flag, FrameParser, Header, Op, ProtocolError, strerror } from "../../core/proto.ts";

function requests(): Buffer[] {
  const out: Buffer[] = [];
  const ops = [
    Op.CREATE_AND_WRITE_OBJ,
    Op.READ_OBJ,
    Op.WRITE_OBJ,
    Op.REMOVE_OBJ,
    Op.NEW_VDI,
    Op.GET_VDI_INFO,
    Op.DEL_VDI,
    Op.READ_VDIS,
    Op.GET_NODE_LIST,
    Op.MAKE_FS,
    Op.STAT_CLUSTER,
    Op.CLUSTER_INFO,
    Op.READ_PEER,
    Op.CREATE_AND_WRITE_PEER,
    Op.GET_HASH,
    Op.EXIST,
  ];
  let id = 1;
  for (const op of ops) {
    const write = op === Op.CREATE_AND_WRITE_OBJ || op === Op.WRITE_OBJ || op === Op.NEW_VDI ||
      op === Op.GET_VDI_INFO || op === Op.DEL_VDI || op === Op.MAKE_FS ||
      op === Op.CREATE_AND_WRITE_PEER;
    const payload = write
      ? Buffer.from(Array.from({ length: 37 + id }, (_, i) => (i * 7 + id) & 0xff))
      : Buffer.alloc(0);
    const h = Header.req(op, {
      id: id++,
      flags: write ? Flag.CMD_WRITE : 0,
      dataLength: write ? payload.length : 4096,
    });
    h.oid = 0x807c2b2500000000n + BigInt(id);
    out.push(Buffer.concat([h.b, payload]));
  }
  return out;
}

test("every request type survives a split at every byte boundary", () => {
  const reqs = requests();
  for (const r of reqs) {
    for (let cut = 0; cut <= r.length; cut++) {
      const p = new FrameParser("request");
      const frames = [...p.push(r.subarray(0, cut)), ...p.push(r.subarray(cut))];
      expect(frames.length).toBe(1);
      expect(frames[0].hdr.b.equals(r.subarray(0, 48))).toBe(true);
      expect(frames[0].data.equals(r.subarray(48))).toBe(true);
      expect(p.pending).toBe(0);
    }
  }
});

test("a pipelined stream fed one byte at a time yields every frame in order", () => {
  const reqs = requests();
  const all = Buffer.concat(reqs);
  const p = new FrameParser("request");
  const got = [];
  for (let i = 0; i < all.length; i++) got.push(...p.push(all.subarray(i, i + 1)));
  expect(got.map((f) => f.hdr.id)).toEqual(reqs.map((r) => r.readUInt32LE(8)));
});

test("random splits of random pipelines", () => {
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  for (let round = 0; round < 200; round++) {
    const reqs = requests().filter(() => rnd() < 0.6);
    const all = Buffer.concat(reqs);
    const p = new FrameParser("request");
    const got = [];
    let pos = 0;
    while (pos < all.length) {
      const n = 1 + Math.floor(rnd() * 100);
      got.push(...p.push(all.subarray(pos, pos + n)));
      pos += n;
    }
    expect(got.length).toBe(reqs.length);
  }
});

test("responses always carry dataLength bytes", () => {
  const h = new Header();
  h.opcode = Op.READ_OBJ;
  h.dataLength = 10;
  const p = new FrameParser("response");
  const f = p.push(Buffer.concat([h.b, Buffer.alloc(10, 7)]));
  expect(f.length).toBe(1);
  expect(f[0].data.length).toBe(10);
});

test("garbage with an absurd payload length is rejected, not buffered", () => {
  let seed = 99;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 0xff);
  let rejected = 0;
  for (let round = 0; round < 500; round++) {
    const g = Buffer.from(Array.from({ length: 48 * 4 }, rnd));
    const p = new FrameParser("request");
    try {
      p.push(g);
    } catch (e) {
      expect(e).toBeInstanceOf(ProtocolError);
      rejected++;
    }
    expect(p.pending).toBeLessThanOrEqual(g.length);
  }
  expect(rejected).toBeGreaterThan(0);
});

test("strerror texts match dog's", () => {
  expect(strerror(0x08)).toBe("No VDI found");
  expect(strerror(0x16)).toBe("Waiting for cluster to be formatted");
  expect(strerror(0x92)).toBe("Invalid error code 92");
});
