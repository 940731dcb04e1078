// Payload of WRITE_RUNS_PEER (ours, no upstream counterpart): several runs of one object in one
// peer request, so the object cache's push of an object's dirty runs costs each replica one
// request and one fdatasync instead of one request per run (random 4 KiB writes leave ~20 runs
// per object between two FLUSHes; each request cost every replica a frame, a lock and a reply).
//
// Layout, little-endian: u32 count, count x (u32 offset, u32 length), then the runs' bytes in
// that order. Runs are ascending and do not overlap, so the order they are applied in does not
// matter. The frame around it is the usual header (core/proto.ts), which carries the length.
import { Buffer } from "node:buffer";
import { SdError } from "./errors.ts";
import { Res } from "./proto.ts";

export interface WriteRun {
  off: number;
  data: Buffer;
}

/** At most this many runs per request (an object has at most 1024 cache sectors). */
export const MAX_WRITE_RUNS = 1024;

/**
 * Runs already laid out in one payload (allocWriteRuns): each run's data is a view into
 * `payload`, filled in place, so encoding them is no copy.
 */
export type PackedRuns = WriteRun[] & { readonly payload: Buffer };

/** A payload for runs at these offsets and lengths (ascending, apart), its runs' views unfilled. */
export function allocWriteRuns(spans: ReadonlyArray<{ off: number; length: number }>): PackedRuns {
  const table = 4 + 8 * spans.length;
  let total = table;
  for (const s of spans) total += s.length;
  const payload = Buffer.allocUnsafe(total);
  payload.writeUInt32LE(spans.length, 0);
  const runs: WriteRun[] = [];
  let at = table;
  spans.forEach((s, i) => {
    payload.writeUInt32LE(s.off, 4 + 8 * i);
    payload.writeUInt32LE(s.length, 8 + 8 * i);
    runs.push({ off: s.off, data: payload.subarray(at, at + s.length) });
    at += s.length;
  });
  return Object.assign(runs, { payload });
}

export function encodeWriteRuns(runs: ReadonlyArray<WriteRun>): Buffer {
  const packed = (runs as Partial<PackedRuns>).payload;
  if (packed) return packed;
  const out = allocWriteRuns(runs.map((r) => ({ off: r.off, length: r.data.length })));
  for (let i = 0; i < runs.length; i++) runs[i].data.copy(out[i].data);
  return out.payload;
}

/**
 * The runs of a payload for an object of `objSize` bytes (views into `payload`, no copies).
 * Anything malformed is INVALID_PARMS: a short or long payload, no runs or too many, a run past
 * the object's end, runs out of order or overlapping, an empty run.
 */
export function decodeWriteRuns(payload: Buffer, objSize: number): WriteRun[] {
  const bad = (why: string) => new SdError(Res.INVALID_PARMS, `write runs: ${why}`);
  if (payload.length < 4) throw bad("payload too short for its count");
  const n = payload.readUInt32LE(0);
  if (n === 0 || n > MAX_WRITE_RUNS) throw bad(`${n} runs (1..${MAX_WRITE_RUNS})`);
  const table = 4 + 8 * n;
  if (payload.length < table) throw bad("payload too short for its run table");
  const out: WriteRun[] = [];
  let at = table, end = 0;
  for (let i = 0; i < n; i++) {
    const off = payload.readUInt32LE(4 + 8 * i);
    const len = payload.readUInt32LE(8 + 8 * i);
    if (len === 0) throw bad(`run ${i} is empty`);
    if (off < end) throw bad(`run ${i} at ${off} is before the end of the one before (${end})`);
    if (off + len > objSize) {
      throw bad(`run ${i} ends at ${off + len}, past the object's ${objSize}`);
    }
    if (at + len > payload.length) throw bad(`run ${i} is past the payload's end`);
    out.push({ off, data: payload.subarray(at, at + len) });
    at += len;
    end = off + len;
  }
  if (at !== payload.length) throw bad(`${payload.length - at} bytes after the last run`);
  return out;
}
