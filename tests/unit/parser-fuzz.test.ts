// Property tests of the incremental parsers on seeded garbage (tests/lib/fuzz.ts): they throw
// nothing but their own error type, give the same result however the input is split, finish
// (a hang fails the test by its timeout) and hold no more than what was pushed.
import { describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import process from "node:process";
import { ByteQueue } from "../../core/byte-queue.ts";
import {
  type Frame,
  FrameParser,
  MAX_PAYLOAD,
  ProtocolError,
  SD_REQ_SIZE,
} from "../../core/proto.ts";
import {
  HandshakeParser,
  NbdProtocolError,
  type NbdRequest,
  ReplyParser,
  RequestParser,
} from "../../core/nbd.ts";
import {
  BACKUP_END_IDX,
  BackupFormatError,
  backupHeader,
  backupRecordHeader,
  BackupStreamParser,
  StreamDigest,
} from "../../cli/backup-stream.ts";
import { fuzzSeed, mutate, nbdStream, Rng, sheepFrame } from "../lib/fuzz.ts";

const SEED = fuzzSeed();
console.log(`parser-fuzz: SEED=${SEED}`);
const ROUNDS = process.env.SHEEPDOG_LONG === "1" ? 20_000 : 2_000;

/** Splits b at random points (single bytes sometimes, to reach every partial state). */
function split(rng: Rng, b: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let pos = 0;
  while (pos < b.length) {
    const n = rng.chance(0.2) ? 1 : rng.range(1, 300);
    out.push(b.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}

/** Runs `feed` over the chunks; returns what it produced and the error it threw, if any. */
function drive<T>(
  chunks: Buffer[],
  feed: (c: Buffer, out: T[]) => void,
  own: new (...a: never[]) => Error,
) {
  const out: T[] = [];
  for (const c of chunks) {
    try {
      feed(c, out);
    } catch (e) {
      if (!(e instanceof own)) throw e;
      return { out, err: e as Error };
    }
  }
  return { out, err: null };
}

const sheepStream = (rng: Rng) => {
  const parts: Buffer[] = [];
  for (let i = rng.range(1, 8); i > 0; i--) parts.push(sheepFrame(rng));
  return Buffer.concat(parts);
};

describe("FrameParser", () => {
  test("garbage: only ProtocolError, and the same frames however it is split", () => {
    const rng = new Rng(SEED);
    for (let r = 0; r < ROUNDS; r++) {
      const s = rng.chance(0.1) ? mutate(rng, sheepStream(rng)) : sheepStream(rng);
      for (const kind of ["request", "response"] as const) {
        const whole = drive(
          [s],
          (c, o: Frame[]) => o.push(...new FrameParser(kind).push(c)),
          ProtocolError,
        );
        const p = new FrameParser(kind);
        let pushed = 0, consumed = 0;
        const parts = drive(split(rng, s), (c, o: Frame[]) => {
          pushed += c.length;
          const fs = p.push(c);
          o.push(...fs);
          for (const f of fs) consumed += SD_REQ_SIZE + f.data.length;
          // Holds only what arrived and is not yet a frame.
          // (a header already parsed while its payload arrives is not counted)
          expect(p.pending).toBeLessThanOrEqual(pushed - consumed);
          expect(p.pending).toBeGreaterThanOrEqual(pushed - consumed - SD_REQ_SIZE);
        }, ProtocolError);
        const key = (fs: Frame[]) =>
          fs.map((f) => f.hdr.b.toString("hex") + f.data.toString("hex"));
        // A push that throws drops the frames it completed; before that, splitting changes nothing.
        if (whole.err) expect(key(parts.out).slice(0, whole.out.length)).toEqual(key(whole.out));
        else expect(key(parts.out)).toEqual(key(whole.out));
        expect(parts.err === null).toBe(whole.err === null);
      }
    }
  });

  test("a declared payload is not allocated before it arrives", () => {
    const p = new FrameParser("request");
    const h = Buffer.alloc(SD_REQ_SIZE);
    h[0] = 2;
    h[1] = 3;
    h.writeUInt16LE(1, 2);
    h.writeUInt32LE(MAX_PAYLOAD, 12);
    const before = process.memoryUsage().rss;
    // 2,000 parsers each waiting for 64 MiB would need 128 GiB if they allocated up front.
    const ps = Array.from({ length: 2000 }, () => new FrameParser("request"));
    for (const q of ps) expect(q.push(Buffer.concat([h, Buffer.alloc(100)]))).toEqual([]);
    expect(process.memoryUsage().rss - before).toBeLessThan(256 * 1024 * 1024);
    expect(ps[0].pending).toBe(100);
    const over = Buffer.from(h);
    over.writeUInt32LE(MAX_PAYLOAD + 1, 12);
    expect(() => p.push(over)).toThrow(ProtocolError);
  });
});

describe("NBD parsers", () => {
  const target = { exportName: "fuzz", exportSize: 1 << 26 };

  test("HandshakeParser: only NbdProtocolError; oversized options are skipped, not buffered", () => {
    const rng = new Rng(SEED ^ 0x1111);
    for (let r = 0; r < ROUNDS; r++) {
      const { bytes } = nbdStream(rng, target, rng.range(1, 12));
      const run = (chunks: Buffer[]) => {
        const hs = new HandshakeParser();
        return drive(chunks, (c, o: unknown[]) => {
          hs.push(c);
          for (let ev = hs.next(); ev; ev = hs.next()) o.push(ev);
          // Without a pending event, at most one option (header + limit) is held.
          expect(hs.buffered).toBeLessThanOrEqual(16 + hs.maxOptionLength + c.length);
        }, NbdProtocolError);
      };
      const whole = run([bytes]);
      const parts = run(split(rng, bytes));
      expect(JSON.stringify(parts.out, big)).toBe(JSON.stringify(whole.out, big));
      expect(parts.err === null).toBe(whole.err === null);
    }
  });

  test("RequestParser: only NbdProtocolError, sticky; same requests however split", () => {
    const rng = new Rng(SEED ^ 0x2222);
    for (let r = 0; r < ROUNDS; r++) {
      const { bytes } = nbdStream(rng, target, rng.range(1, 16));
      // Start at a random point: the transmission phase sees whatever the handshake left.
      const s = bytes.subarray(rng.int(Math.min(bytes.length, 200)));
      const allocated: number[] = [];
      const run = (chunks: Buffer[]) => {
        const p = new RequestParser({
          maxWritePayload: 32 << 20,
          alloc: (n) => (allocated.push(n), Buffer.allocUnsafe(n)),
        });
        let pushed = 0;
        const res = drive(chunks, (c, o: NbdRequest[]) => {
          pushed += c.length;
          o.push(...p.push(c));
          // Never holds more than twice what the peer actually sent (a lying length is cheap).
          expect(p.buffered).toBeLessThanOrEqual(2 * pushed + 28);
        }, NbdProtocolError);
        if (res.err) expect(() => p.push(Buffer.alloc(1))).toThrow(NbdProtocolError);
        return res;
      };
      const strip = (xs: { data?: Buffer; allocated?: boolean }[]) =>
        JSON.stringify(
          xs.map((x) => ({ ...x, allocated: undefined, data: x.data?.toString("hex") })),
          big,
        );
      const whole = run([s]);
      const parts = run(split(rng, s));
      if (whole.err) expect(strip(parts.out.slice(0, whole.out.length))).toBe(strip(whole.out));
      else expect(strip(parts.out)).toBe(strip(whole.out));
      expect(parts.err === null).toBe(whole.err === null);
    }
  });

  test("ReplyParser: only NbdProtocolError on garbage", () => {
    const rng = new Rng(SEED ^ 0x3333);
    for (let r = 0; r < ROUNDS; r++) {
      const s = rng.bytes(rng.range(4, 400));
      if (rng.chance(0.5)) s.writeUInt32BE(rng.pick([0x67446698, 0x668e33ef]), 0);
      const p = new ReplyParser(() => rng.int(64));
      drive(split(rng, s), (c, o) => o.push(...p.push(c)), NbdProtocolError);
    }
  });
});

describe("ByteQueue", () => {
  test("random push/take/peek/skip agree with a flat model", () => {
    const rng = new Rng(SEED ^ 0x4444);
    const q = new ByteQueue();
    let model = Buffer.alloc(0);
    for (let i = 0; i < ROUNDS * 20; i++) {
      const op = rng.int(4);
      if (op === 0 || model.length === 0) {
        const b = rng.bytes(rng.int(100));
        q.push(b);
        model = Buffer.concat([model, b]);
      } else {
        const n = rng.int(model.length + 1);
        if (op === 1) expect(q.take(n).equals(model.subarray(0, n))).toBe(true);
        else if (op === 2) expect(q.peek(n).equals(model.subarray(0, n))).toBe(true);
        else q.skip(n);
        if (op !== 2) model = model.subarray(n);
      }
      expect(q.length).toBe(model.length);
    }
    expect(() => q.take(q.length + 1)).toThrow(RangeError);
  });
});

describe("BackupStreamParser", () => {
  test("garbage and mutated streams: only BackupFormatError", async () => {
    const rng = new Rng(SEED ^ 0x5555);
    const limits = { nrObjs: 8, objectSize: 4096 };
    // One digest, reset per stream: a new one per round (a WASM instance each) was most of the
    // test's time, and several times more late in a full unit run (over bun's 5 s limit).
    const digest = await StreamDigest.create();
    for (let r = 0; r < ROUNDS; r++) {
      const parts = [backupHeader()];
      let idx = 0;
      for (let i = rng.int(4); i > 0; i--) {
        idx += rng.range(0, 3);
        const len = rng.range(1, 200);
        parts.push(backupRecordHeader(idx, rng.int(4096 - len), len), rng.bytes(len));
      }
      parts.push(backupRecordHeader(BACKUP_END_IDX, 0, 0));
      let s: Buffer = Buffer.concat(parts);
      if (rng.chance(0.7)) s = mutate(rng, s);
      if (rng.chance(0.2)) s = s.subarray(0, rng.int(s.length));
      const p = new BackupStreamParser(limits, digest.reset());
      const res = drive(split(rng, s), (c, o) => o.push(...p.push(c)), BackupFormatError);
      if (!res.err) {
        try {
          p.finish();
        } catch (e) {
          if (!(e instanceof BackupFormatError)) throw e;
        }
      }
    }
  });
});

function big(_k: string, v: unknown) {
  return typeof v === "bigint" ? v.toString() : v;
}
