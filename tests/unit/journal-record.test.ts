// The journal record codec (core/journal-record.ts): every split point, torn tails, garbage,
// header slots and the -j argument.
import { describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import {
  DATA_START,
  decodeRecord,
  encodeHeader,
  encodeRecord,
  HEADER_SLOT,
  type JournalRecord,
  parseJournalArg,
  parseJournalSize,
  pickHeader,
  RECORD_HEADER,
  recordLength,
  RecordReader,
  RecType,
} from "../../core/journal-record.ts";

function rec(seq: number, len: number, type = RecType.WRITE, ec?: number): JournalRecord {
  const data = Buffer.alloc(len);
  for (let i = 0; i < len; i++) data[i] = (i * 7 + seq) & 0xff;
  return {
    type,
    gen: 3,
    seq: BigInt(seq),
    oid: 0x00abcdef00000000n + BigInt(seq),
    ecIndex: ec,
    offset: seq * 512,
    arg: type === RecType.CREATE ? 4 << 20 : 0,
    data,
  };
}

const sample = [rec(1, 0), rec(2, 13, RecType.CREATE, 2), rec(3, 4096), rec(4, 0, RecType.REMOVE)];
const stream = Buffer.concat(sample.map(encodeRecord));

function readAll(chunks: Buffer[]) {
  const r = new RecordReader();
  const out: JournalRecord[] = [];
  for (const c of chunks) {
    r.push(c);
    for (let x = r.next(); x; x = r.next()) out.push(x.rec);
  }
  return { out, stop: r.finish() };
}

describe("journal records", () => {
  test("round trip keeps every field", () => {
    for (const r of sample) {
      const d = decodeRecord(encodeRecord(r));
      expect(d.kind).toBe("ok");
      if (d.kind !== "ok") continue;
      expect(d.length).toBe(recordLength(r.data.length));
      expect(d.rec).toEqual({ ...r, data: Buffer.from(r.data) });
    }
    expect(recordLength(13) % 8).toBe(0);
  });

  test("incremental reader: every split point gives the same records and a clean end", () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const { out, stop } = readAll([stream.subarray(0, cut), stream.subarray(cut)]);
      expect(out.map((r) => r.seq)).toEqual([1n, 2n, 3n, 4n]);
      expect(stop.torn).toBe(false);
      expect(stop.offset).toBe(stream.length);
    }
  });

  test("a stream cut anywhere is a torn tail after the whole records, never a bad record", () => {
    const ends: number[] = [];
    let at = 0;
    for (const r of sample) ends.push(at += recordLength(r.data.length));
    for (let cut = 1; cut < stream.length; cut++) {
      const { out, stop } = readAll([stream.subarray(0, cut)]);
      const whole = ends.filter((e) => e <= cut).length;
      expect(out.length).toBe(whole);
      const boundary = ends.includes(cut);
      expect(stop.torn).toBe(!boundary);
      expect(stop.offset).toBe(whole === 0 ? 0 : ends[whole - 1]);
    }
  });

  test("zero padding after the records is the end, not a tear", () => {
    const { out, stop } = readAll([stream, Buffer.alloc(100)]);
    expect(out.length).toBe(4);
    expect(stop).toEqual({ offset: stream.length, torn: false, reason: "end of records" });
  });

  test("a flipped byte anywhere in a record stops the reader there, flagged torn", () => {
    const one = encodeRecord(rec(9, 100));
    for (let i = 0; i < one.length; i++) {
      const b = Buffer.concat([encodeRecord(rec(8, 20)), one, encodeRecord(rec(10, 5))]);
      const at = recordLength(20) + i;
      b[at] ^= 0x40;
      const { out, stop } = readAll([b]);
      // Padding bytes after the data are not covered by a checksum; they carry nothing.
      if (i >= RECORD_HEADER + 100) {
        expect(out.length).toBe(3);
        continue;
      }
      expect(out.map((r) => r.seq)).toEqual([8n]);
      expect(stop.offset).toBe(recordLength(20));
      // A broken magic reads as "no record here", anything else as a torn record.
      expect(stop.torn).toBe(i >= 4);
    }
  });

  test("garbage never decodes to a record", () => {
    let seed = 12345;
    const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) & 0xff;
    for (let n = 0; n < 300; n++) {
      const g = Buffer.alloc(200 + (n % 50));
      for (let i = 0; i < g.length; i++) g[i] = rnd();
      if (n % 3 === 0) g.writeUInt32LE(0x524a4453, 0); // our magic, random rest
      const { out, stop } = readAll([g]);
      expect(out.length).toBe(0);
      expect(stop.offset).toBe(0);
    }
  });

  test("a huge length in a valid-looking header is refused, not waited for", () => {
    const b = encodeRecord(rec(1, 8));
    b.writeUInt32LE(0xffffffff, 12);
    const d = decodeRecord(b);
    expect(d.kind).toBe("bad"); // header checksum no longer matches
  });
});

describe("journal header slots", () => {
  const h = {
    counter: 5n,
    gen: 2,
    checkpointSeq: 77n,
    tail: DATA_START + 64,
    size: 64 << 20,
    owner: "/var/lib/sheepdog",
  };
  test("the newer valid slot wins; a torn slot leaves the other", () => {
    const a = encodeHeader(h);
    const b = encodeHeader({ ...h, counter: 6n, checkpointSeq: 80n });
    expect(pickHeader(a, b)).toEqual({ ...h, counter: 6n, checkpointSeq: 80n });
    expect(pickHeader(b, a)?.checkpointSeq).toBe(80n);
    const torn = Buffer.from(b);
    torn[30] ^= 1;
    expect(pickHeader(a, torn)?.checkpointSeq).toBe(77n);
    const ownerFlip = Buffer.from(b);
    ownerFlip[70] ^= 1; // the owner is covered by the checksum too
    expect(pickHeader(a, ownerFlip)?.checkpointSeq).toBe(77n);
    expect(pickHeader(Buffer.alloc(HEADER_SLOT), Buffer.alloc(HEADER_SLOT))).toBeNull();
  });
});

describe("-j argument", () => {
  test("sizes: bare bytes (as upstream's parser) and binary units", () => {
    expect(parseJournalSize("64")).toBe(64n);
    expect(parseJournalSize("67108864")).toBe(64n << 20n);
    expect(parseJournalSize("1G")).toBe(1n << 30n);
    expect(parseJournalSize("65536k")).toBe(64n << 20n);
    expect(parseJournalSize("1.5G")).toBeNull();
  });
  test("valid forms", () => {
    expect(parseJournalArg("size=1G")).toEqual({ size: 1 << 30, dir: null, skip: false });
    expect(parseJournalArg("dir=/j,size=128M,skip")).toEqual({
      size: 128 << 20,
      dir: "/j",
      skip: true,
    });
  });
  test("bad forms name the problem", () => {
    // Upstream's messages, word for word (checked against its sheep binary).
    expect(() => parseJournalArg("size=63M")).toThrow(
      "invalid size 63M, must be bigger than 64(M)",
    );
    expect(() => parseJournalArg("size=67108863")).toThrow(
      "invalid size 67108863, must be bigger than 64(M)",
    );
    expect(parseJournalArg("size=67108864").size).toBe(64 << 20);
    expect(() => parseJournalArg("dir=/x")).toThrow("you must specify size for journal");
    expect(() => parseJournalArg("size=1G,foo=1")).toThrow("invalid option foo=1");
    expect(() => parseJournalArg("size=1G,skip=1")).toThrow("invalid option skip=1");
    expect(() => parseJournalArg("size=lots")).toThrow("invalid size lots");
  });
});
