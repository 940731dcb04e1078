// SheepClient against a tiny fake server, VdiHandle against an in-memory object store.
import { afterEach, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import * as net from "node:net";
import { ClientPool, NetworkError, ReplyReader, SheepClient } from "../../io/client.ts";
import { SdError } from "../../core/errors.ts";
import { SimClock } from "../../core/clock.ts";
import { emptyInodeHeader, encodeInodeHeader } from "../../core/inode.ts";
import {
  dataOidToIdx,
  isDataObj,
  oidToVid,
  SD_INODE_HEADER_SIZE,
  vidToDataOid,
  vidToVdiOid,
} from "../../core/oid.ts";
import { Flag, FrameParser, Header, Op, readFixedString, Res } from "../../core/proto.ts";
import { type Requester } from "../../core/object-io.ts";
import { VdiHandle } from "../../core/vdi-io.ts";

// ---------------------------------------------------------------------------------------------
// fake server

type OnRequest = (sock: net.Socket, hdr: Header, data: Buffer) => void;

const servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

async function fakeServer(
  onRequest: OnRequest,
): Promise<{ port: number; server: net.Server; conns: net.Socket[] }> {
  const conns: net.Socket[] = [];
  const server = net.createServer((sock) => {
    conns.push(sock);
    const p = new FrameParser("request");
    sock.on("data", (chunk: Buffer) => {
      for (const f of p.push(chunk)) onRequest(sock, f.hdr, f.data);
    });
    sock.on("error", () => {});
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as net.AddressInfo).port, server, conns };
}

function reply(req: Header, data: Buffer = Buffer.alloc(0), result: number = Res.SUCCESS): Buffer {
  const h = new Header();
  h.protoVer = req.protoVer;
  h.opcode = req.opcode;
  h.id = req.id;
  h.dataLength = data.length;
  h.result = result;
  return Buffer.concat([h.b, data]);
}

test("replies are matched by id when they arrive out of order", async () => {
  const held: { sock: net.Socket; hdr: Header }[] = [];
  const { port } = await fakeServer((sock, hdr) => {
    held.push({ sock, hdr });
    if (held.length === 3) {
      for (const r of held.reverse()) r.sock.write(reply(r.hdr, Buffer.from(`obj-${r.hdr.oid}`)));
    }
  });
  const c = await SheepClient.connect("127.0.0.1", port);
  const mk = (oid: bigint) => {
    const h = Header.req(Op.READ_OBJ, { dataLength: 16 });
    h.oid = oid;
    return c.request(h);
  };
  const rs = await Promise.all([mk(1n), mk(2n), mk(3n)]);
  expect(rs.map((r) => r.data.toString())).toEqual(["obj-1", "obj-2", "obj-3"]);
  expect(rs.map((r) => r.hdr.result)).toEqual([0, 0, 0]);
  // ids were assigned by the client and are distinct
  expect(new Set(held.map((h) => h.hdr.id)).size).toBe(3);
  c.close();
});

test("replies split at arbitrary byte boundaries are reassembled", async () => {
  const { port } = await fakeServer((sock, hdr, data) => {
    const whole = Buffer.concat([reply(hdr, data), reply(hdr, Buffer.alloc(0), Res.NO_OBJ)]);
    // one reply + a second (stray) frame, dribbled out in 5-byte pieces
    let i = 0;
    const t = setInterval(() => {
      sock.write(whole.subarray(i, i + 5));
      i += 5;
      if (i >= whole.length) clearInterval(t);
    }, 1);
  });
  const c = await SheepClient.connect("127.0.0.1", port);
  const payload = Buffer.from("hello, sheep");
  const h = Header.req(Op.WRITE_OBJ, { flags: Flag.CMD_WRITE });
  const r = await c.request(h, payload);
  expect(r.data.toString()).toBe("hello, sheep");
  expect(h.id).toBe(0); // caller's header untouched
  c.close();
});

test("ReplyReader: a stream of replies cut at every split point, read through one reused buffer", () => {
  const mk = (id: number, data: Buffer) => {
    const h = new Header();
    h.id = id;
    h.dataLength = data.length;
    return Buffer.concat([h.b, data]);
  };
  const payloads = [Buffer.from("first payload"), Buffer.alloc(0), Buffer.alloc(300, 7)];
  const stream = Buffer.concat(payloads.map((d, i) => mk(i + 1, d)));
  const into = Buffer.alloc(400, 0xee);
  for (let cut = 0; cut <= stream.length; cut++) {
    // the target for reply 3 is the caller's buffer; the others get their own
    const r = new ReplyReader((h) => (h.id === 3 ? into : null));
    const got: { id: number; data: Buffer }[] = [];
    const scratch = Buffer.alloc(stream.length);
    for (const [a, b] of [[0, cut], [cut, stream.length]]) {
      scratch.fill(0xaa); // the read buffer is overwritten between reads
      stream.copy(scratch, 0, a, b);
      r.push(scratch, b - a, (h, d) => got.push({ id: h.id, data: Buffer.from(d) }));
    }
    expect(got.map((g) => g.id)).toEqual([1, 2, 3]);
    got.forEach((g, i) => expect(g.data.equals(payloads[i])).toBe(true));
    expect(into.subarray(0, 300).equals(payloads[2])).toBe(true);
    expect(r.pending).toBe(0);
  }
  const big = new Header();
  big.dataLength = 1000;
  expect(() => new ReplyReader(() => null, 999).push(big.b, big.b.length, () => {})).toThrow();
});

test("ReplyReader: payloads kept as views of fresh chunks (emitParts), small ones copied", () => {
  const mk = (id: number, data: Buffer) => {
    const h = new Header();
    h.id = id;
    h.dataLength = data.length;
    return Buffer.concat([h.b, data]);
  };
  const big = Buffer.alloc(200_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
  const payloads = [Buffer.from("small"), big, Buffer.alloc(0), big.subarray(1000, 70_000)];
  const stream = Buffer.concat(payloads.map((d, i) => mk(i + 1, d)));
  for (const size of [1, 47, 48, 4096, 65_536, 300_000]) {
    const r = new ReplyReader();
    const got = new Map<number, Buffer>();
    let viewed = 0;
    for (let a = 0; a < stream.length; a += size) {
      const chunk = Buffer.from(stream.subarray(a, a + size)); // fresh, never reused
      r.push(chunk, chunk.length, (h, d) => got.set(h.id, Buffer.from(d)), (h, parts, len) => {
        viewed++;
        expect(parts.reduce((n, p) => n + p.length, 0)).toBe(len);
        got.set(h.id, Buffer.concat(parts));
      });
    }
    expect([...got.keys()].sort()).toEqual([1, 2, 3, 4]);
    payloads.forEach((d, i) => expect(got.get(i + 1)!.equals(d)).toBe(true));
    expect(viewed).toBe(2);
    expect(r.pending).toBe(0);
  }
});

test("a reply's payload lands in the caller's buffer when given", async () => {
  const { port } = await fakeServer((sock, hdr) => sock.write(reply(hdr, Buffer.alloc(64, 5))));
  const c = await SheepClient.connect("127.0.0.1", port);
  const into = Buffer.alloc(128);
  const r = await c.request(Header.req(Op.READ_OBJ, { dataLength: 64 }), undefined, into);
  expect(r.data.length).toBe(64);
  expect(r.data.buffer).toBe(into.buffer);
  expect(into.subarray(0, 64).equals(Buffer.alloc(64, 5))).toBe(true);
  // too small a buffer: the reply gets its own
  const small = Buffer.alloc(8);
  const r2 = await c.request(Header.req(Op.READ_OBJ, { dataLength: 64 }), undefined, small);
  expect(r2.data.equals(Buffer.alloc(64, 5))).toBe(true);
  expect(small.equals(Buffer.alloc(8))).toBe(true);
  c.close();
});

test("payload is sent only with the WRITE flag; data_length follows the payload", async () => {
  const seen: { flags: number; len: number; data: number }[] = [];
  const { port } = await fakeServer((sock, hdr, data) => {
    seen.push({ flags: hdr.flags, len: hdr.dataLength, data: data.length });
    sock.write(reply(hdr));
  });
  const c = await SheepClient.connect("127.0.0.1", port);
  await c.request(Header.req(Op.READ_OBJ, { dataLength: 4096 }), Buffer.alloc(100));
  await c.request(
    Header.req(Op.WRITE_OBJ, { flags: Flag.CMD_WRITE, dataLength: 9999 }),
    Buffer.alloc(100),
  );
  await c.request(Header.req(Op.CREATE_AND_WRITE_OBJ, { flags: Flag.CMD_WRITE }));
  expect(seen).toEqual([
    { flags: 0, len: 4096, data: 0 },
    { flags: Flag.CMD_WRITE, len: 100, data: 100 },
    { flags: Flag.CMD_WRITE, len: 0, data: 0 },
  ]);
  c.close();
});

test("large pipelined payloads survive backpressure", async () => {
  const { port } = await fakeServer((sock, hdr, data) =>
    sock.write(reply(hdr, data.subarray(0, 8)))
  );
  const c = await SheepClient.connect("127.0.0.1", port);
  const big = Buffer.alloc(4 * 1024 * 1024, 7);
  const rs = await Promise.all(
    Array.from({ length: 12 }, (_, i) => {
      big[0] = i;
      return c.request(Header.req(Op.WRITE_OBJ, { flags: Flag.CMD_WRITE }), Buffer.from(big));
    }),
  );
  expect(rs.map((r) => r.data[0])).toEqual(Array.from({ length: 12 }, (_, i) => i));
  c.close();
});

test("server closing mid-request rejects every pending request with NETWORK_ERROR", async () => {
  let count = 0;
  const { port } = await fakeServer((sock) => {
    if (++count === 2) sock.destroy();
  });
  const c = await SheepClient.connect("127.0.0.1", port);
  const p1 = c.request(Header.req(Op.READ_OBJ, { dataLength: 8 }));
  const p2 = c.request(Header.req(Op.READ_OBJ, { dataLength: 8 }));
  for (const p of [p1, p2]) {
    const e = await p.then(() => null, (x) => x);
    expect(e).toBeInstanceOf(SdError);
    expect((e as SdError).code).toBe(Res.NETWORK_ERROR);
  }
  expect(c.closed).toBe(true);
  const e3 = await c.request(Header.req(Op.READ_OBJ)).then(() => null, (x) => x);
  expect((e3 as SdError).code).toBe(Res.NETWORK_ERROR);
});

test("connect failure reports errno text", async () => {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  const e = await SheepClient.connect("127.0.0.1", port).then(() => null, (x) => x);
  expect(e).toBeInstanceOf(NetworkError);
  expect((e as NetworkError).connectFailed).toBe(true);
  expect((e as NetworkError).message).toBe(
    `failed to connect to 127.0.0.1:${port}: Connection refused`,
  );
});

test("ClientPool reuses connections and reconnects after a failure", async () => {
  let accepted = 0;
  const { port, conns } = await fakeServer((sock, hdr) => sock.write(reply(hdr)));
  const origCount = () => conns.length;
  const pool = new ClientPool({ idleMs: 0 });
  const [a, b] = await Promise.all([pool.get("127.0.0.1", port), pool.get("127.0.0.1", port)]);
  expect(a).toBe(b);
  await pool.request("127.0.0.1", port, Header.req(Op.STAT_SHEEP));
  await pool.request("127.0.0.1", port, Header.req(Op.STAT_SHEEP));
  accepted = origCount();
  expect(accepted).toBe(1);
  conns[0].destroy();
  await new Promise((r) => setTimeout(r, 20));
  const r = await pool.request("127.0.0.1", port, Header.req(Op.STAT_SHEEP));
  expect(r.hdr.result).toBe(0);
  expect(origCount()).toBe(2);
  pool.close();
});

test("ClientPool closes idle connections", async () => {
  const { port, conns } = await fakeServer((sock, hdr) => sock.write(reply(hdr)));
  const pool = new ClientPool({ idleMs: 50 });
  const c = await pool.get("127.0.0.1", port);
  await c.request(Header.req(Op.STAT_SHEEP));
  // reaper runs at most every second
  await new Promise((r) => setTimeout(r, 1200));
  expect(c.closed).toBe(true);
  expect(pool.size).toBe(0);
  expect(conns.length).toBe(1);
  pool.close();
});

test("ClientPool reaps on its injected clock: a busy or recently used connection stays", async () => {
  let hold: (() => void) | null = null;
  const { port } = await fakeServer((sock, hdr) => {
    if (hdr.opcode === Op.STAT_SHEEP) sock.write(reply(hdr));
    else hold = () => sock.write(reply(hdr)); // answered only when the test says so
  });
  const clock = new SimClock(5_000);
  const pool = new ClientPool({ idleMs: 10_000 }, clock);
  const c = await pool.get("127.0.0.1", port);
  await c.request(Header.req(Op.STAT_SHEEP));
  expect(clock.pending).toBe(1); // the reaper, every idleMs/2
  clock.advance(9_000); // one reaper pass: used 9 s ago, not idle yet
  expect(c.closed).toBe(false);
  // A request outstanding keeps the connection however long it takes.
  const slow = c.request(Header.req(Op.GET_NODE_LIST));
  await new Promise((r) => setTimeout(r, 20));
  clock.advance(60_000);
  expect(c.closed).toBe(false);
  hold!();
  await slow;
  expect(pool.size).toBe(1);
  clock.advance(9_999);
  expect(c.closed).toBe(false);
  clock.advance(10_001);
  expect(c.closed).toBe(true);
  expect(pool.size).toBe(0);
  expect(clock.pending).toBe(0); // no reaper left once the pool is empty
  pool.close();
});

// ---------------------------------------------------------------------------------------------
// in-memory object store implementing the client-visible object ops

const SHIFT = 12; // 4 KiB objects keep the fake small
const OS = 1 << SHIFT;

class FakeCluster {
  objects = new Map<bigint, Buffer>();
  snapshots = new Set<number>();
  names = new Map<string, number>();
  log: { op: number; oid: bigint; cow: bigint; offset: number; len: number }[] = [];

  createVdi(name: string, vid: number, size: number, slots: number[] = [], parent = 0): void {
    const h = emptyInodeHeader();
    h.name = name;
    h.vdiSize = BigInt(size);
    h.blockSizeShift = SHIFT;
    h.nrCopies = 3;
    h.vdiId = vid;
    h.parentVdiId = parent;
    h.snapId = 1;
    const nobj = Math.ceil(size / OS);
    const ino = Buffer.alloc(SD_INODE_HEADER_SIZE + 4 * nobj);
    encodeInodeHeader(h).copy(ino);
    slots.forEach((v, i) => ino.writeUInt32LE(v, SD_INODE_HEADER_SIZE + 4 * i));
    this.objects.set(vidToVdiOid(vid), ino);
    this.names.set(name, vid);
  }

  /** Turns the working VDI into a snapshot and makes a new working VDI sharing its map. */
  snapshot(name: string, newVid: number): void {
    const old = this.names.get(name)!;
    const ino = Buffer.from(this.objects.get(vidToVdiOid(old))!);
    ino.writeBigUInt64LE(1n << 32n, 520);
    this.objects.set(vidToVdiOid(old), ino);
    this.snapshots.add(old);
    const n = Buffer.from(ino);
    n.writeBigUInt64LE(0n, 520);
    n.writeUInt32LE(newVid, 560);
    n.writeUInt32LE(old, 564);
    this.objects.set(vidToVdiOid(newVid), n);
    this.names.set(name, newVid);
  }

  slot(vid: number, idx: number): number {
    const ino = this.objects.get(vidToVdiOid(vid))!;
    const off = SD_INODE_HEADER_SIZE + 4 * idx;
    return off + 4 <= ino.length ? ino.readUInt32LE(off) : 0;
  }

  private writeInto(oid: bigint, data: Buffer, offset: number): void {
    let o = this.objects.get(oid)!;
    if (offset + data.length > o.length) {
      const g = Buffer.alloc(offset + data.length);
      o.copy(g);
      o = g;
      this.objects.set(oid, o);
    }
    data.copy(o, offset);
  }

  requester(): Requester {
    return async (hdr, data) => {
      const rsp = new Header();
      rsp.opcode = hdr.opcode;
      const ok = (d = Buffer.alloc(0)) => {
        rsp.dataLength = d.length;
        return { hdr: rsp, data: d };
      };
      const fail = (code: number) => {
        rsp.result = code;
        return { hdr: rsp, data: Buffer.alloc(0) };
      };
      await new Promise((r) => setTimeout(r, Math.random() * 2));
      const oid = hdr.oid;
      this.log.push({
        op: hdr.opcode,
        oid,
        cow: hdr.flags & Flag.CMD_COW ? hdr.cowOid : 0n,
        offset: hdr.offset,
        len: data?.length ?? 0,
      });
      switch (hdr.opcode) {
        case Op.GET_VDI_INFO: {
          const name = readFixedString(data!, 0, 256);
          const vid = this.names.get(name);
          if (!vid) return fail(Res.NO_VDI);
          rsp.rspVdiId = vid;
          return ok();
        }
        case Op.READ_OBJ: {
          const o = this.objects.get(oid);
          if (!o) return fail(Res.NO_OBJ);
          const out = Buffer.alloc(hdr.dataLength);
          o.copy(out, 0, hdr.offset, Math.min(o.length, hdr.offset + hdr.dataLength));
          return ok(out);
        }
        case Op.CREATE_AND_WRITE_OBJ: {
          if (isDataObj(oid) && this.snapshots.has(oidToVid(oid))) return fail(Res.READONLY);
          let base = Buffer.alloc(OS);
          if (hdr.flags & Flag.CMD_COW) {
            const src = this.objects.get(hdr.cowOid);
            if (!src) return fail(Res.NO_OBJ);
            base = Buffer.from(src);
          }
          this.objects.set(oid, base);
          this.writeInto(oid, data!, hdr.offset);
          return ok();
        }
        case Op.WRITE_OBJ: {
          if (!this.objects.has(oid)) return fail(Res.NO_OBJ);
          if (isDataObj(oid) && this.snapshots.has(oidToVid(oid))) return fail(Res.READONLY);
          this.writeInto(oid, data!, hdr.offset);
          return ok();
        }
        default:
          return fail(Res.INVALID_PARMS);
      }
    };
  }

  count(op: number): number {
    return this.log.filter((l) => l.op === op).length;
  }
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
}

test("VdiHandle: holes read as zeros; missing VDI is NO_VDI", async () => {
  const fc = new FakeCluster();
  fc.createVdi("v", 0x10, 10 * OS);
  const h = await VdiHandle.open(fc.requester(), "v");
  expect(h.vid).toBe(0x10);
  expect(h.size).toBe(10 * OS);
  expect(h.objectSize).toBe(OS);
  expect(h.readOnly).toBe(false);
  const d = await h.read(OS - 10, 3 * OS);
  expect(d.equals(Buffer.alloc(3 * OS))).toBe(true);
  expect(fc.count(Op.READ_OBJ)).toBe(2); // inode header + data_vdi_id, no data reads
  const e = await VdiHandle.open(fc.requester(), "nope").then(() => null, (x) => x);
  expect((e as SdError).code).toBe(Res.NO_VDI);
});

test("VdiHandle: object-boundary-spanning write creates objects and updates slots in one inode write", async () => {
  const fc = new FakeCluster();
  fc.createVdi("v", 0x10, 10 * OS);
  const h = await VdiHandle.open(fc.requester(), "v");
  const data = pattern(2 * OS + 100, 1);
  await h.write(OS - 50, data);
  // [OS-50, 3*OS+50) touches objects 0..3
  expect(fc.count(Op.CREATE_AND_WRITE_OBJ)).toBe(4);
  const inodeWrites = fc.log.filter((l) => l.op === Op.WRITE_OBJ && l.oid === vidToVdiOid(0x10));
  expect(inodeWrites).toEqual([{
    op: Op.WRITE_OBJ,
    oid: vidToVdiOid(0x10),
    cow: 0n,
    offset: SD_INODE_HEADER_SIZE,
    len: 16,
  }]);
  expect([0, 1, 2, 3, 4].map((i) => fc.slot(0x10, i))).toEqual([0x10, 0x10, 0x10, 0x10, 0]);
  expect(h.isAllocated(0) && h.isAllocated(3) && !h.isAllocated(4)).toBe(true);
  expect((await h.read(OS - 50, data.length)).equals(data)).toBe(true);
  // a fresh handle sees the same data through the persisted inode
  const h2 = await VdiHandle.open(fc.requester(), "v");
  expect((await h2.read(OS - 50, data.length)).equals(data)).toBe(true);
  expect((await h2.read(0, OS - 50)).equals(Buffer.alloc(OS - 50))).toBe(true);
  // rewriting own objects is a plain WRITE_OBJ without inode updates
  fc.log = [];
  await h.write(OS, pattern(10, 9));
  expect(fc.log.map((l) => l.op)).toEqual([Op.WRITE_OBJ]);
  expect(fc.log[0].oid).toBe(vidToDataOid(0x10, 1));
});

test("VdiHandle: slot owned by another VID is copied on write", async () => {
  const fc = new FakeCluster();
  fc.createVdi("base", 0x20, 4 * OS, [0x20]);
  fc.objects.set(vidToDataOid(0x20, 0), pattern(OS, 3));
  fc.snapshots.add(0x20);
  fc.createVdi("v", 0x21, 4 * OS, [0x20], 0x20);
  const h = await VdiHandle.open(fc.requester(), "v");
  await h.write(100, Buffer.from("XYZ"));
  const cr = fc.log.filter((l) => l.op === Op.CREATE_AND_WRITE_OBJ);
  expect(cr).toEqual([{
    op: Op.CREATE_AND_WRITE_OBJ,
    oid: vidToDataOid(0x21, 0),
    cow: vidToDataOid(0x20, 0),
    offset: 100,
    len: 3,
  }]);
  expect(fc.slot(0x21, 0)).toBe(0x21);
  const expected = pattern(OS, 3);
  expected.write("XYZ", 100);
  expect((await h.read(0, OS)).equals(expected)).toBe(true);
  expect(fc.objects.get(vidToDataOid(0x20, 0))!.equals(pattern(OS, 3))).toBe(true);
});

test("VdiHandle: concurrent writes never create the same object twice", async () => {
  const fc = new FakeCluster();
  fc.createVdi("v", 0x30, 8 * OS);
  const h = await VdiHandle.open(fc.requester(), "v");
  await Promise.all(Array.from({ length: 20 }, (_, i) => h.write(i * 100, pattern(100, i))));
  expect(fc.count(Op.CREATE_AND_WRITE_OBJ)).toBe(1);
  const got = await h.read(0, 2000);
  for (let i = 0; i < 20; i++) {
    expect(got.subarray(i * 100, i * 100 + 100).equals(pattern(100, i))).toBe(true);
  }
});

test("VdiHandle: READONLY after a snapshot reloads and redoes the write as COW", async () => {
  const fc = new FakeCluster();
  fc.createVdi("v", 0x40, 4 * OS);
  const h = await VdiHandle.open(fc.requester(), "v");
  await h.write(0, pattern(OS, 5));
  fc.snapshot("v", 0x41);
  fc.log = [];
  await h.write(10, Buffer.from("after"));
  expect(h.vid).toBe(0x41);
  const cr = fc.log.filter((l) => l.op === Op.CREATE_AND_WRITE_OBJ);
  expect(cr.length).toBe(1);
  expect(cr[0].oid).toBe(vidToDataOid(0x41, 0));
  expect(cr[0].cow).toBe(vidToDataOid(0x40, 0));
  expect(fc.slot(0x41, 0)).toBe(0x41);
  expect(fc.slot(0x40, 0)).toBe(0x40);
  const snapData = fc.objects.get(vidToDataOid(0x40, 0))!;
  expect(snapData.equals(pattern(OS, 5))).toBe(true);
  const now = await h.read(0, OS);
  const exp = pattern(OS, 5);
  exp.write("after", 10);
  expect(now.equals(exp)).toBe(true);
  // the snapshot itself opens read-only
  fc.names.set("snap", 0x40);
  const s = await VdiHandle.open(fc.requester(), "snap", { snapid: 1 });
  expect(s.readOnly).toBe(true);
  const e = await s.write(0, Buffer.alloc(1)).then(() => null, (x) => x);
  expect((e as SdError).code).toBe(Res.READONLY);
});

test("VdiHandle: writes past the end fail without touching anything; discard clears the slot", async () => {
  const fc = new FakeCluster();
  fc.createVdi("v", 0x50, 2 * OS);
  const h = await VdiHandle.open(fc.requester(), "v");
  fc.log = [];
  const e = await h.write(2 * OS - 1, Buffer.alloc(2)).then(() => null, (x) => x);
  expect((e as SdError).code).toBe(Res.INVALID_PARMS);
  expect(fc.log.length).toBe(0);
  await h.write(OS, pattern(OS, 1));
  expect(fc.slot(0x50, 1)).toBe(0x50);
  await h.discardObject(1);
  expect(fc.slot(0x50, 1)).toBe(0);
  expect(h.isAllocated(1)).toBe(false);
  expect((await h.read(OS, OS)).equals(Buffer.alloc(OS))).toBe(true);
  await h.discardObject(0); // unallocated: no-op
  expect(dataOidToIdx(vidToDataOid(0x50, 1))).toBe(1);
});
