import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import {
  ClientFlag,
  Cmd,
  CmdFlag,
  decodeChunkPayload,
  decodeOptionReply,
  encodeBlockStatus,
  encodeClientFlags,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOffsetData,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeOption,
  encodeOptionReply,
  encodeRepServer,
  encodeRequest,
  encodeSimpleReply,
  encodeStructuredError,
  encodeStructuredNone,
  type HandshakeEvent,
  HandshakeParser,
  Info,
  NbdProtocolError,
  type NbdReply,
  type NbdRequest,
  Opt,
  OPTION_REPLY_MAGIC,
  parseInfoRequest,
  parseMetaContextRequest,
  Rep,
  ReplyFlag,
  ReplyParser,
  ReplyType,
  REQUEST_MAGIC,
  RequestParser,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
} from "../../core/nbd.ts";

/** Deterministic PRNG so failures reproduce. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(rand: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rand() * 256);
  return b;
}

/** Splits buf at the given cut points. */
function splitAt(buf: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of [...cuts].sort((a, b) => a - b)) {
    out.push(buf.subarray(prev, c));
    prev = c;
  }
  out.push(buf.subarray(prev));
  return out;
}

// -------------------------------------------------------------------------------- handshake

const tail = Buffer.from("transmission-bytes-after-go");

function handshakeStream(): Buffer {
  return Buffer.concat([
    encodeClientFlags(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES),
    encodeOption(Opt.STRUCTURED_REPLY),
    encodeOption(Opt.LIST),
    encodeOption(
      Opt.SET_META_CONTEXT,
      encodeMetaContextRequest("disk", ["base:allocation", "qemu:dirty-bitmap:x"]),
    ),
    encodeOption(0x1234, Buffer.alloc(70_000, 7)), // oversized with the default 64 KiB limit
    encodeOption(Opt.INFO, encodeInfoRequest("disk", [Info.NAME, Info.BLOCK_SIZE])),
    encodeOption(Opt.GO, encodeInfoRequest("disk", [Info.BLOCK_SIZE])),
    tail,
  ]);
}

/** Feeds chunks, pulling events until NBD_OPT_GO; returns the events and the leftover bytes. */
function runHandshake(chunks: Buffer[]): { events: HandshakeEvent[]; rest: Buffer } {
  const p = new HandshakeParser();
  const events: HandshakeEvent[] = [];
  let done = false;
  for (const c of chunks) {
    p.push(c);
    while (!done) {
      const ev = p.next();
      if (!ev) break;
      events.push(ev);
      if (ev.kind === "option" && ev.option === Opt.GO) done = true;
    }
  }
  return { events, rest: p.takeRest() };
}

function normEvents(evs: HandshakeEvent[]): unknown[] {
  return evs.map((e) => (e.kind === "option" ? { ...e, data: e.data.toString("hex") } : e));
}

test("handshake parser: whole stream", () => {
  const { events, rest } = runHandshake([handshakeStream()]);
  expect(events.map((e) => e.kind)).toEqual([
    "clientFlags",
    "option",
    "option",
    "option",
    "oversizedOption",
    "option",
    "option",
  ]);
  expect(events[0]).toEqual({ kind: "clientFlags", flags: 3 });
  expect(events[4]).toEqual({ kind: "oversizedOption", option: 0x1234, length: 70_000 });
  const go = events[6] as { data: Buffer };
  expect(parseInfoRequest(go.data)).toEqual({ name: "disk", infos: [Info.BLOCK_SIZE] });
  const meta = events[3] as { data: Buffer };
  expect(parseMetaContextRequest(meta.data)).toEqual({
    exportName: "disk",
    queries: ["base:allocation", "qemu:dirty-bitmap:x"],
  });
  expect(rest.equals(tail)).toBe(true);
});

test("handshake parser: every split point gives the same events", () => {
  const stream = handshakeStream();
  const ref = runHandshake([stream]);
  const refEvents = normEvents(ref.events);
  for (let i = 0; i <= stream.length; i += i < 400 || i > stream.length - 400 ? 1 : 97) {
    const got = runHandshake(splitAt(stream, [i]));
    expect(normEvents(got.events)).toEqual(refEvents);
    expect(got.rest.equals(tail)).toBe(true);
  }
});

test("handshake parser: byte at a time and random splits", () => {
  const stream = handshakeStream();
  const refEvents = normEvents(runHandshake([stream]).events);
  const bytes: Buffer[] = [];
  for (let i = 0; i < stream.length; i++) bytes.push(stream.subarray(i, i + 1));
  expect(normEvents(runHandshake(bytes).events)).toEqual(refEvents);
  const rand = rng(1);
  for (let k = 0; k < 200; k++) {
    const cuts = Array.from(
      { length: 1 + Math.floor(rand() * 8) },
      () => Math.floor(rand() * stream.length),
    );
    const got = runHandshake(splitAt(stream, cuts));
    expect(normEvents(got.events)).toEqual(refEvents);
    expect(got.rest.equals(tail)).toBe(true);
  }
});

test("handshake parser: bad option magic throws", () => {
  const p = new HandshakeParser();
  p.push(encodeClientFlags(1));
  const bad = encodeOption(Opt.LIST);
  bad[3] ^= 0xff;
  p.push(bad);
  expect(p.next()).toEqual({ kind: "clientFlags", flags: 1 });
  expect(() => p.next()).toThrow(NbdProtocolError);
});

test("handshake parser: random garbage never throws anything but NbdProtocolError", () => {
  const rand = rng(2);
  for (let k = 0; k < 500; k++) {
    const p = new HandshakeParser({ maxOptionLength: 4096 });
    const garbage = randomBytes(rand, Math.floor(rand() * 300));
    // Half the time, start with a valid option magic so lengths and skipping get exercised.
    const stream = k % 2
      ? Buffer.concat([encodeClientFlags(1), encodeOption(rand() * 20 | 0).subarray(0, 8), garbage])
      : garbage;
    try {
      for (const c of splitAt(stream, [Math.floor(rand() * stream.length)])) {
        p.push(c);
        while (p.next());
      }
    } catch (e) {
      expect(e).toBeInstanceOf(NbdProtocolError);
    }
    expect(p.buffered).toBeLessThanOrEqual(stream.length);
  }
});

test("option payload parsers reject malformed data", () => {
  expect(parseInfoRequest(encodeInfoRequest("", []))).toEqual({ name: "", infos: [] });
  expect(parseInfoRequest(Buffer.alloc(5))).toBeNull();
  const info = encodeInfoRequest("disk", [1, 2, 3]);
  for (let n = 0; n < info.length; n++) expect(parseInfoRequest(info.subarray(0, n))).toBeNull();
  expect(parseInfoRequest(Buffer.concat([info, Buffer.alloc(1)]))).toBeNull();
  const huge = Buffer.from(info);
  huge.writeUInt32BE(0xffffffff, 0);
  expect(parseInfoRequest(huge)).toBeNull();

  const meta = encodeMetaContextRequest("disk", ["base:allocation", "x-foo:bar"]);
  expect(parseMetaContextRequest(meta)).toEqual({
    exportName: "disk",
    queries: ["base:allocation", "x-foo:bar"],
  });
  for (let n = 0; n < meta.length; n++) {
    expect(parseMetaContextRequest(meta.subarray(0, n))).toBeNull();
  }
  expect(parseMetaContextRequest(Buffer.concat([meta, Buffer.alloc(1)]))).toBeNull();
  const manyQueries = encodeMetaContextRequest("d", []);
  manyQueries.writeUInt32BE(0xffffffff, 5); // claims 4 billion queries with no data
  expect(parseMetaContextRequest(manyQueries)).toBeNull();
  const rand = rng(3);
  for (let k = 0; k < 2000; k++) {
    const g = randomBytes(rand, Math.floor(rand() * 64));
    parseInfoRequest(g);
    parseMetaContextRequest(g);
  }
});

test("handshake encoders lay out bytes as proto.md says", () => {
  const g = encodeGreeting(3);
  expect(g.toString("latin1", 0, 16)).toBe("NBDMAGICIHAVEOPT");
  expect(g.readUInt16BE(16)).toBe(3);

  const r = encodeOptionReply(Opt.GO, Rep.ERR_UNKNOWN, "nope");
  expect(r.readBigUInt64BE(0)).toBe(OPTION_REPLY_MAGIC);
  expect(decodeOptionReply(r)).toEqual({
    option: Opt.GO,
    type: 0x80000006,
    data: Buffer.from("nope"),
    size: 24,
  });
  expect(decodeOptionReply(r.subarray(0, 23))).toBeNull();

  const e = encodeInfoExport(2 ** 40 + 5, 0x1ed);
  expect(e.readUInt16BE(0)).toBe(Info.EXPORT);
  expect(e.readBigUInt64BE(2)).toBe(2n ** 40n + 5n);
  expect(e.readUInt16BE(10)).toBe(0x1ed);
  const bs = encodeInfoBlockSize(512, 4096, 32 << 20);
  expect([
    bs.length,
    bs.readUInt16BE(0),
    bs.readUInt32BE(2),
    bs.readUInt32BE(6),
    bs.readUInt32BE(10),
  ])
    .toEqual([14, Info.BLOCK_SIZE, 512, 4096, 32 << 20]);
  const s = encodeRepServer("disk", "desc");
  expect([s.readUInt32BE(0), s.toString("utf8", 4)]).toEqual([4, "diskdesc"]);
  expect(encodeExportNameReply(1 << 20, 1, false).length).toBe(134);
  const x = encodeExportNameReply(1 << 20, 0x1ff, true);
  expect([x.length, Number(x.readBigUInt64BE(0)), x.readUInt16BE(8)]).toEqual([10, 1 << 20, 0x1ff]);
});

// -------------------------------------------------------------------------------- requests

function requestStream(): {
  stream: Buffer;
  reqs: Array<Omit<NbdRequest, "data"> & { data?: string }>;
} {
  const rand = rng(4);
  const reqs: Array<Omit<NbdRequest, "data"> & { data?: string }> = [];
  const parts: Buffer[] = [];
  const add = (type: number, offset: number, length: number, flags = 0, data?: Buffer) => {
    const handle = BigInt(reqs.length) * 0x0101010101n + 0xfedcba0000000000n;
    parts.push(encodeRequest({ flags, type, handle, offset, length }, data));
    reqs.push({
      flags,
      type,
      handle,
      offset,
      length,
      ...(type === Cmd.WRITE ? { data: (data ?? Buffer.alloc(0)).toString("hex") } : {}),
    });
  };
  add(Cmd.READ, 0, 4096);
  add(Cmd.WRITE, 512, 1, CmdFlag.FUA, Buffer.from([0xab]));
  add(Cmd.WRITE, 4096, 0, 0, Buffer.alloc(0));
  add(Cmd.WRITE, 2 ** 33 + 7, 1000, 0, randomBytes(rand, 1000));
  add(Cmd.FLUSH, 0, 0);
  add(Cmd.WRITE, 8192, 3000, 0, randomBytes(rand, 3000));
  add(Cmd.BLOCK_STATUS, 1 << 20, 1 << 30, CmdFlag.REQ_ONE);
  add(Cmd.WRITE_ZEROES, 0, 0xffffffff, CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO);
  add(Cmd.TRIM, 12345, 678);
  add(Cmd.WRITE, 0, 28, 0, randomBytes(rand, 28)); // payload the size of a header
  add(99, 1, 2, 0xffff);
  add(Cmd.DISC, 0, 0);
  return { stream: Buffer.concat(parts), reqs };
}

function norm(rs: NbdRequest[]): unknown[] {
  // `allocated` only says whether the payload spanned chunks.
  return rs.map(({ allocated: _, ...r }) => ({
    ...r,
    ...(r.data ? { data: r.data.toString("hex") } : {}),
  }));
}

function parseAll(chunks: Buffer[], max = 1 << 20): NbdRequest[] {
  const p = new RequestParser({ maxWritePayload: max });
  const out: NbdRequest[] = [];
  for (const c of chunks) out.push(...p.push(c));
  expect(p.buffered).toBe(0);
  return out;
}

test("request parser: whole stream", () => {
  const { stream, reqs } = requestStream();
  expect(norm(parseAll([stream]))).toEqual(reqs);
});

test("request parser: every split point, and every pair of nearby split points", () => {
  const { stream, reqs } = requestStream();
  for (let i = 0; i <= stream.length; i++) {
    expect(norm(parseAll(splitAt(stream, [i])))).toEqual(reqs);
  }
  // Two cuts inside the first few requests' headers and payloads.
  for (let i = 0; i <= 120; i++) {
    for (let j = i; j <= 120; j += 3) expect(norm(parseAll(splitAt(stream, [i, j])))).toEqual(reqs);
  }
});

test("request parser: byte at a time and random splits", () => {
  const { stream, reqs } = requestStream();
  const bytes: Buffer[] = [];
  for (let i = 0; i < stream.length; i++) bytes.push(stream.subarray(i, i + 1));
  expect(norm(parseAll(bytes))).toEqual(reqs);
  const rand = rng(5);
  for (let k = 0; k < 300; k++) {
    const cuts = Array.from(
      { length: 1 + Math.floor(rand() * 20) },
      () => Math.floor(rand() * stream.length),
    );
    expect(norm(parseAll(splitAt(stream, cuts)))).toEqual(reqs);
  }
});

test("request parser: payload is a view when it fits in one chunk, a copy otherwise", () => {
  const data = Buffer.alloc(100, 1);
  const msg = encodeRequest({ type: Cmd.WRITE, handle: 1n, offset: 0, length: 100 }, data);
  const [r] = new RequestParser({ maxWritePayload: 1000 }).push(msg);
  expect(r.data!.buffer).toBe(msg.buffer);
  const p = new RequestParser({ maxWritePayload: 1000 });
  expect(p.push(msg.subarray(0, 50))).toEqual([]);
  // Only what arrived is held, not the declared 100 (a lying length must cost nothing).
  expect(p.buffered).toBe(50 - 28);
  const [r2] = p.push(msg.subarray(50));
  expect(r2.data!.equals(data)).toBe(true);
});

test("request parser: offsets beyond 2^53 stay beyond any export size", () => {
  const b = encodeRequest({ type: Cmd.READ, handle: 1n, offset: 0, length: 1 });
  b.writeBigUInt64BE(0xffffffffffffffffn, 16);
  const [r] = new RequestParser({ maxWritePayload: 10 }).push(b);
  expect(r.offset).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
});

test("request parser: bad magic and oversize payload throw and poison the parser", () => {
  const good = encodeRequest({ type: Cmd.READ, handle: 7n, offset: 0, length: 512 });
  const bad = Buffer.from(good);
  bad.writeUInt32BE(0xdeadbeef, 0);
  const p = new RequestParser({ maxWritePayload: 4096 });
  expect(p.push(good).length).toBe(1);
  expect(() => p.push(bad)).toThrow(NbdProtocolError);
  expect(() => p.push(good)).toThrow(NbdProtocolError);

  const big = encodeRequest({ type: Cmd.WRITE, handle: 1n, offset: 0, length: 4097 });
  const p2 = new RequestParser({ maxWritePayload: 4096 });
  expect(() => p2.push(big)).toThrow(/exceeds/);
  expect(p2.buffered).toBe(0);

  const ext = Buffer.from(good);
  ext.writeUInt32BE(0x21e41c71, 0);
  expect(() => new RequestParser({ maxWritePayload: 1 }).push(ext)).toThrow(/extended/);

  // A magic split across chunks is still checked.
  const p3 = new RequestParser({ maxWritePayload: 10 });
  expect(p3.push(bad.subarray(0, 2))).toEqual([]);
  expect(() => p3.push(bad.subarray(2))).toThrow(NbdProtocolError);
});

test("request parser: random garbage and random headers keep memory bounded", () => {
  const rand = rng(6);
  const max = 64 * 1024;
  let sawRequest = 0;
  for (let k = 0; k < 3000; k++) {
    const p = new RequestParser({ maxWritePayload: max });
    let stream: Buffer;
    if (k % 3 === 0) stream = randomBytes(rand, Math.floor(rand() * 200));
    else {
      // Valid magic with random fields, sometimes a sane write length.
      const h = randomBytes(rand, 28);
      h.writeUInt32BE(REQUEST_MAGIC, 0);
      if (k % 3 === 2) {
        h.writeUInt16BE(Cmd.WRITE, 6);
        h.writeUInt32BE(Math.floor(rand() * max * 2), 24);
      }
      stream = Buffer.concat([h, randomBytes(rand, Math.floor(rand() * 300))]);
    }
    try {
      for (
        const c of splitAt(stream, [
          Math.floor(rand() * stream.length),
          Math.floor(rand() * stream.length),
        ])
      ) {
        sawRequest += p.push(c).length;
        expect(p.buffered).toBeLessThanOrEqual(max + 28);
      }
    } catch (e) {
      expect(e).toBeInstanceOf(NbdProtocolError);
    }
  }
  expect(sawRequest).toBeGreaterThan(0);
});

// -------------------------------------------------------------------------------- replies

test("reply encoders lay out bytes as proto.md says", () => {
  const s = encodeSimpleReply(0x0102030405060708n, 22);
  expect([s.length, s.readUInt32BE(0), s.readUInt32BE(4), s.readBigUInt64BE(8)])
    .toEqual([16, SIMPLE_REPLY_MAGIC, 22, 0x0102030405060708n]);

  const h = encodeOffsetDataHeader(ReplyFlag.DONE, 5n, 2 ** 40, 4096);
  expect([
    h.length,
    h.readUInt32BE(0),
    h.readUInt16BE(4),
    h.readUInt16BE(6),
    h.readBigUInt64BE(8),
    h.readUInt32BE(16),
  ])
    .toEqual([28, STRUCTURED_REPLY_MAGIC, 1, ReplyType.OFFSET_DATA, 5n, 4096 + 8]);
  expect(h.readBigUInt64BE(20)).toBe(2n ** 40n);

  const hole = encodeOffsetHole(0, 6n, 512, 1 << 20);
  expect([
    hole.length,
    hole.readUInt16BE(6),
    hole.readUInt32BE(16),
    Number(hole.readBigUInt64BE(20)),
    hole.readUInt32BE(28),
  ])
    .toEqual([32, ReplyType.OFFSET_HOLE, 12, 512, 1 << 20]);

  const bs = encodeBlockStatus(ReplyFlag.DONE, 7n, 1, [{ length: 4096, flags: 3 }, {
    length: 512,
    flags: 0,
  }]);
  expect([
    bs.length,
    bs.readUInt16BE(6),
    bs.readUInt32BE(16),
    bs.readUInt32BE(20),
    bs.readUInt32BE(24),
    bs.readUInt32BE(28),
  ])
    .toEqual([20 + 4 + 16, ReplyType.BLOCK_STATUS, 20, 1, 4096, 3]);

  const err = encodeStructuredError(ReplyFlag.DONE, 8n, 5, "boom");
  expect([
    err.readUInt16BE(6),
    err.readUInt32BE(16),
    err.readUInt32BE(20),
    err.readUInt16BE(24),
    err.toString("utf8", 26),
  ])
    .toEqual([ReplyType.ERROR, 10, 5, 4, "boom"]);
  expect(encodeStructuredError(0, 1n, 5, "x".repeat(10_000)).readUInt16BE(24)).toBe(4096);

  const none = encodeStructuredNone(9n);
  expect([none.length, none.readUInt16BE(4), none.readUInt16BE(6), none.readUInt32BE(16)]).toEqual([
    20,
    1,
    0,
    0,
  ]);
});

test("reply parser decodes every encoder at every split point", () => {
  const readLens = new Map<bigint, number>([[1n, 5], [2n, 0]]);
  const stream = Buffer.concat([
    encodeSimpleReply(1n, 0),
    Buffer.from("hello"),
    encodeSimpleReply(2n, 0),
    encodeSimpleReply(1n, 22), // error: no payload even though 1n is a read
    encodeOffsetData(0, 3n, 100, Buffer.from("abc")),
    encodeOffsetHole(0, 3n, 103, 97),
    encodeStructuredNone(3n),
    encodeBlockStatus(ReplyFlag.DONE, 4n, 1, [{ length: 10, flags: 3 }]),
    encodeStructuredError(ReplyFlag.DONE, 5n, 28, "no space"),
  ]);
  const decode = (rs: NbdReply[]) =>
    rs.map((
      r,
    ) => (r.kind === "simple" ? { ...r, data: r.data?.toString() } : {
      handle: r.handle,
      flags: r.flags,
      ...decodeChunkPayload(r.type, r.payload),
      data: undefined,
    }));
  const ref = decode(new ReplyParser((h) => readLens.get(h)).push(stream));
  expect(ref).toEqual([
    { kind: "simple", handle: 1n, error: 0, data: "hello" },
    { kind: "simple", handle: 2n, error: 0, data: undefined },
    { kind: "simple", handle: 1n, error: 22, data: undefined },
    { handle: 3n, flags: 0, type: "data", offset: 100, data: undefined },
    { handle: 3n, flags: 0, type: "hole", offset: 103, size: 97, data: undefined },
    { handle: 3n, flags: 1, type: "none", data: undefined },
    {
      handle: 4n,
      flags: 1,
      type: "status",
      contextId: 1,
      extents: [{ length: 10, flags: 3 }],
      data: undefined,
    },
    { handle: 5n, flags: 1, type: "error", error: 28, message: "no space", data: undefined },
  ]);
  for (let i = 0; i <= stream.length; i++) {
    const p = new ReplyParser((h) => readLens.get(h));
    const got = splitAt(stream, [i]).flatMap((c) => p.push(c));
    expect(decode(got)).toEqual(ref);
  }
  const bad = Buffer.from(stream);
  bad.writeUInt32BE(0x12345678, 0);
  expect(() => new ReplyParser(() => 0).push(bad)).toThrow(NbdProtocolError);
});
