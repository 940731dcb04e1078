// The vdi backup stream codec: any split of a good stream parses to the same records; every
// single-byte change of a stream with our trailer is refused; upstream's streams (no trailer)
// still parse.
import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import {
  backupEndMarker,
  BackupFormatError,
  backupHeader,
  backupRecordHeader,
  BackupStreamParser,
  backupTrailer,
  StreamDigest,
} from "../../cli/backup-stream.ts";

const LIMITS = { nrObjs: 8, objectSize: 4096 };

async function makeStream(records: [number, number, Buffer][], trailer = true): Promise<Buffer> {
  const parts = [backupHeader()];
  for (const [idx, off, data] of records) {
    parts.push(backupRecordHeader(idx, off, data.length), data);
  }
  parts.push(backupEndMarker());
  const body = Buffer.concat(parts);
  if (!trailer) return body;
  const d = await StreamDigest.create();
  d.update(body);
  return Buffer.concat([body, backupTrailer(d.digest())]);
}

async function parse(chunks: Buffer[]): Promise<{ idx: number; offset: number; data: Buffer }[]> {
  const p = new BackupStreamParser(LIMITS, await StreamDigest.create());
  const out: { idx: number; offset: number; data: Buffer }[] = [];
  for (const ch of chunks) {
    for (const ev of p.push(ch)) if (ev.type === "record") out.push(ev);
  }
  p.finish();
  return out;
}

const RECORDS: [number, number, Buffer][] = [
  [0, 0, Buffer.alloc(512, 1)],
  [3, 1024, Buffer.alloc(1536, 2)],
  [7, 3584, Buffer.alloc(512, 3)],
];

/** A seeded xorshift so failures replay. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296;
  };
}

test("any split of a stream parses to the same records", async () => {
  const s = await makeStream(RECORDS);
  const whole = await parse([s]);
  expect(whole.map((r) => [r.idx, r.offset, r.data.length])).toEqual([
    [0, 0, 512],
    [3, 1024, 1536],
    [7, 3584, 512],
  ]);
  const r = rng(42);
  for (let round = 0; round < 200; round++) {
    const chunks: Buffer[] = [];
    let at = 0;
    while (at < s.length) {
      const n = 1 + Math.floor(r() * 40);
      chunks.push(s.subarray(at, at + n));
      at += n;
    }
    expect(await parse(chunks)).toEqual(whole);
  }
  const bytewise = [...s].map((b) => Buffer.from([b]));
  expect(await parse(bytewise)).toEqual(whole);
});

test("upstream's stream, without the trailer, parses", async () => {
  expect((await parse([await makeStream(RECORDS, false)])).length).toBe(3);
});

test("every single-byte change and every truncation is refused", async () => {
  const s = await makeStream(RECORDS);
  for (let i = 0; i < s.length; i++) {
    const x = Buffer.from(s);
    x[i] ^= 0x01;
    await expect(parse([x])).rejects.toBeInstanceOf(BackupFormatError);
  }
  for (let n = 0; n < s.length; n++) {
    // cutting exactly the trailer off leaves a valid upstream stream
    if (n === s.length - 16) continue;
    await expect(parse([s.subarray(0, n)])).rejects.toBeInstanceOf(BackupFormatError);
  }
});

test("records outside the snapshot, out of order or overlapping the object end are refused", async () => {
  const bad: [number, number, Buffer][][] = [
    [[8, 0, Buffer.alloc(512)]], // idx past nrObjs
    [[2, 0, Buffer.alloc(512)], [1, 0, Buffer.alloc(512)]], // descending
    [[2, 0, Buffer.alloc(512)], [2, 512, Buffer.alloc(512)]], // same idx twice
    [[0, 3800, Buffer.alloc(512)]], // past the object end
  ];
  for (const recs of bad) {
    await expect(parse([await makeStream(recs)])).rejects.toBeInstanceOf(BackupFormatError);
  }
  // garbage is refused at the header
  await expect(parse([Buffer.from("garbage\n")])).rejects.toBeInstanceOf(BackupFormatError);
});
