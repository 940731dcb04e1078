// The `dog vdi backup` stream (farm-backup.md §2): an 8-byte header, records (idx, offset,
// length, reserved, then `length` bytes) in ascending idx, and an end marker. Upstream's format
// has no checksum, so a flipped bit in the data would be restored silently; ours appends a
// trailer after the end marker (magic, version, xxhash64 of every byte before it). Upstream's
// restore stops reading at the end marker and never sees it; ours checks it when it is there.
//
// The parser is incremental (bytes may be split anywhere) and checks every field it can against
// the snapshot the stream is restored onto, so `restore` can refuse a bad stream before it
// changes anything.
import { Buffer } from "node:buffer";
import { ByteQueue } from "../core/byte-queue.ts";
import { createXXHash64 } from "hash-wasm";

export const VDI_BACKUP_FORMAT_VERSION = 1;
export const VDI_BACKUP_MAGIC = 0x11921192;
export const BACKUP_HEADER_SIZE = 8;
export const BACKUP_RECORD_SIZE = 16;
export const BACKUP_END_IDX = 0xffffffff;
/** "SDCK": our checksum trailer after the end marker. */
export const BACKUP_TRAILER_MAGIC = 0x4b434453;
export const BACKUP_TRAILER_VERSION = 1;
export const BACKUP_TRAILER_SIZE = 16;

export class BackupFormatError extends Error {
  override name = "BackupFormatError";
}

export function backupHeader(): Buffer {
  const b = Buffer.alloc(BACKUP_HEADER_SIZE);
  b.writeUInt32LE(VDI_BACKUP_FORMAT_VERSION, 0);
  b.writeUInt32LE(VDI_BACKUP_MAGIC, 4);
  return b;
}

export function backupRecordHeader(idx: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(BACKUP_RECORD_SIZE);
  b.writeUInt32LE(idx, 0);
  b.writeUInt32LE(offset, 4);
  b.writeUInt32LE(length, 8);
  return b;
}

export function backupEndMarker(): Buffer {
  return backupRecordHeader(BACKUP_END_IDX, 0, 0);
}

export function backupTrailer(digest: bigint): Buffer {
  const b = Buffer.alloc(BACKUP_TRAILER_SIZE);
  b.writeUInt32LE(BACKUP_TRAILER_MAGIC, 0);
  b.writeUInt32LE(BACKUP_TRAILER_VERSION, 4);
  b.writeBigUInt64LE(digest, 8);
  return b;
}

/** Running xxhash64 of the bytes of a stream (the writer's and the reader's side). */
export class StreamDigest {
  private constructor(private readonly h: Awaited<ReturnType<typeof createXXHash64>>) {}
  static async create(): Promise<StreamDigest> {
    const h = await createXXHash64();
    h.init();
    return new StreamDigest(h);
  }
  /** Back to the state of a new digest (a fresh WASM instance costs ~0.4 ms). */
  reset(): this {
    this.h.init();
    return this;
  }
  update(b: Uint8Array): void {
    if (b.length) this.h.update(b);
  }
  digest(): bigint {
    return Buffer.from(this.h.digest("binary")).readBigUInt64BE(0);
  }
}

export interface BackupLimits {
  /** Data objects of the snapshot restored onto: records must have idx below it. */
  nrObjs: number;
  objectSize: number;
}

export type BackupEvent =
  | { type: "record"; idx: number; offset: number; data: Buffer }
  | { type: "end"; checked: boolean };

type State = "header" | "record" | "data" | "trailer" | "done";

/**
 * Incremental parser. `push` returns complete events; `finish` is called at end of input and
 * throws when the stream stopped early. Record data is returned as it completes, whole.
 */
export class BackupStreamParser {
  private readonly q = new ByteQueue();
  private state: State = "header";
  private lastIdx = -1;
  private nrRecords = 0;
  private cur: { idx: number; offset: number; length: number } | null = null;
  private ended = false;
  private checked = false;

  constructor(private readonly limits: BackupLimits, private readonly digest: StreamDigest) {}

  private fail(msg: string): never {
    throw new BackupFormatError(msg);
  }

  /** Consumes `n` bytes from the buffer, feeding the digest unless they are the trailer. */
  private take(n: number, hashed = true): Buffer | null {
    if (this.q.length < n) return null;
    const b = this.q.take(n);
    if (hashed) this.digest.update(b);
    return b;
  }

  push(chunk: Buffer): BackupEvent[] {
    if (this.state === "done" && chunk.length) {
      this.fail("unexpected data after the checksum trailer");
    }
    this.q.push(chunk);
    const evs: BackupEvent[] = [];
    for (;;) {
      if (this.state === "header") {
        const h = this.take(BACKUP_HEADER_SIZE);
        if (!h) break;
        if (
          h.readUInt32LE(0) !== VDI_BACKUP_FORMAT_VERSION || h.readUInt32LE(4) !== VDI_BACKUP_MAGIC
        ) this.fail("bad stream header (not a dog vdi backup stream)");
        this.state = "record";
      } else if (this.state === "record") {
        const r = this.take(BACKUP_RECORD_SIZE);
        if (!r) break;
        const idx = r.readUInt32LE(0), offset = r.readUInt32LE(4), length = r.readUInt32LE(8);
        const reserved = r.readUInt32LE(12);
        const at = `record ${this.nrRecords + 1}`;
        if (reserved !== 0) this.fail(`${at}: reserved field is ${reserved}, not 0`);
        if (idx === BACKUP_END_IDX) {
          if (offset !== 0 || length !== 0) this.fail("malformed end marker");
          this.ended = true;
          this.state = "trailer";
          continue;
        }
        if (idx <= this.lastIdx) this.fail(`${at}: object ${idx} is not after ${this.lastIdx}`);
        if (idx >= this.limits.nrObjs) {
          this.fail(`${at}: object ${idx} is past the snapshot's ${this.limits.nrObjs} objects`);
        }
        if (length === 0 || offset + length > this.limits.objectSize) {
          this.fail(
            `${at}: offset ${offset} + length ${length} does not fit an object of ${this.limits.objectSize} bytes`,
          );
        }
        this.lastIdx = idx;
        this.nrRecords++;
        this.cur = { idx, offset, length };
        this.state = "data";
      } else if (this.state === "data") {
        const cur = this.cur!;
        const d = this.take(cur.length);
        if (!d) break;
        evs.push({ type: "record", idx: cur.idx, offset: cur.offset, data: Buffer.from(d) });
        this.cur = null;
        this.state = "record";
      } else if (this.state === "trailer") {
        if (this.q.length < BACKUP_TRAILER_SIZE) break;
        const expected = this.digest.digest();
        const t = this.take(BACKUP_TRAILER_SIZE, false)!;
        if (
          t.readUInt32LE(0) !== BACKUP_TRAILER_MAGIC ||
          t.readUInt32LE(4) !== BACKUP_TRAILER_VERSION
        ) this.fail("unexpected data after the end marker");
        if (t.readBigUInt64LE(8) !== expected) {
          this.fail("checksum mismatch: the stream was changed after it was written");
        }
        this.checked = true;
        this.state = "done";
        if (this.q.length) this.fail("unexpected data after the checksum trailer");
      } else break;
    }
    return evs;
  }

  /** End of input: the stream must be complete (an upstream stream ends at the end marker). */
  finish(): BackupEvent {
    if (this.state === "header") this.fail("the stream is shorter than its header");
    if (!this.ended) this.fail(`the stream ends inside record ${this.nrRecords + 1}`);
    if (this.state === "trailer" && this.q.length) {
      this.fail("unexpected data after the end marker");
    }
    return { type: "end", checked: this.checked };
  }
}
