// The WRITE_RUNS_PEER payload (core/write-runs.ts): round trip, every malformed shape refused
// as INVALID_PARMS, and random garbage never anything but INVALID_PARMS.
import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import {
  allocWriteRuns,
  decodeWriteRuns,
  encodeWriteRuns,
  MAX_WRITE_RUNS,
} from "../../core/write-runs.ts";
import { SdError } from "../../core/errors.ts";
import { Res } from "../../core/proto.ts";

const OBJ = 4 << 20;

function code(f: () => unknown): number {
  try {
    f();
    return Res.SUCCESS;
  } catch (e) {
    return e instanceof SdError ? e.code : -1;
  }
}

test("runs round-trip, as views of the payload", () => {
  const runs = [
    { off: 0, data: randomBytes(4096) },
    { off: 8192, data: randomBytes(100) },
    { off: OBJ - 4096, data: randomBytes(4096) },
  ];
  const p = encodeWriteRuns(runs);
  expect(p.length).toBe(4 + 8 * 3 + 4096 + 100 + 4096);
  const back = decodeWriteRuns(p, OBJ);
  expect(back.map((r) => r.off)).toEqual([0, 8192, OBJ - 4096]);
  back.forEach((r, i) => expect(Buffer.compare(r.data, runs[i].data)).toBe(0));
  expect(back[0].data.buffer).toBe(p.buffer);
});

test("runs filled in place in an allocated payload encode to the same bytes, without a copy", () => {
  const runs = [
    { off: 4096, data: randomBytes(4096) },
    { off: 65536, data: randomBytes(12288) },
    { off: OBJ - 512, data: randomBytes(512) },
  ];
  const packed = allocWriteRuns(runs.map((r) => ({ off: r.off, length: r.data.length })));
  packed.forEach((r, i) => runs[i].data.copy(r.data));
  const p = encodeWriteRuns(packed);
  expect(p).toBe(packed.payload); // the payload itself: nothing copied
  expect(Buffer.compare(p, encodeWriteRuns(runs))).toBe(0);
  expect(decodeWriteRuns(p, OBJ).map((r) => r.off)).toEqual([4096, 65536, OBJ - 512]);
});

test("malformed payloads are INVALID_PARMS", () => {
  const good = encodeWriteRuns([{ off: 0, data: Buffer.alloc(10) }, {
    off: 20,
    data: Buffer.alloc(10),
  }]);
  const bad = (b: Buffer, size = OBJ) => code(() => decodeWriteRuns(b, size));
  expect(bad(good)).toBe(Res.SUCCESS);
  expect(bad(Buffer.alloc(3))).toBe(Res.INVALID_PARMS); // no count
  expect(bad(Buffer.alloc(4))).toBe(Res.INVALID_PARMS); // zero runs
  const many = Buffer.alloc(4);
  many.writeUInt32LE(MAX_WRITE_RUNS + 1);
  expect(bad(many)).toBe(Res.INVALID_PARMS);
  expect(bad(good.subarray(0, 10))).toBe(Res.INVALID_PARMS); // table cut
  expect(bad(good.subarray(0, good.length - 1))).toBe(Res.INVALID_PARMS); // data cut
  expect(bad(Buffer.concat([good, Buffer.alloc(1)]))).toBe(Res.INVALID_PARMS); // trailing
  expect(bad(good, 25)).toBe(Res.INVALID_PARMS); // past the object's end
  const overlap = Buffer.from(good);
  overlap.writeUInt32LE(5, 12); // second run at 5, inside the first
  expect(bad(overlap)).toBe(Res.INVALID_PARMS);
  const empty = encodeWriteRuns([{ off: 0, data: Buffer.alloc(0) }]);
  expect(bad(empty)).toBe(Res.INVALID_PARMS);
  const huge = Buffer.from(good);
  huge.writeUInt32LE(0xffffffff, 8); // a length that wraps nothing: past the payload
  expect(bad(huge)).toBe(Res.INVALID_PARMS);
});

test("random garbage only ever gives INVALID_PARMS", () => {
  for (let i = 0; i < 5000; i++) {
    const b = randomBytes(1 + (i % 64));
    if (i % 3 === 0 && b.length >= 4) b.writeUInt32LE(1 + (i % 4), 0); // a plausible count
    const c = code(() => decodeWriteRuns(b, OBJ));
    expect(c === Res.SUCCESS || c === Res.INVALID_PARMS).toBe(true);
  }
});
