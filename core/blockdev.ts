// The block-device view that the NBD server serves. Sheepdog VDIs implement it in the daemon;
// MemoryExport is a sparse in-memory device for tests and the benchmark reference.
import { Buffer } from "node:buffer";
import { Err } from "./nbd.ts";

/** NBD error values (proto.md "Error values"); exports throw errors carrying one as `nbdErrno`. */
export const NbdErrno = Err;

export interface BlockExport {
  readonly name: string;
  readonly size: number; // bytes
  readonly readOnly: boolean;
  readonly minBlock: number; // 1 or 512
  readonly prefBlock: number; // 4096
  readonly maxBlock: number; // <= 32 MiB
  /**
   * Whether connections to this export are interchangeable (NBD CAN_MULTI_CONN): flushes cover
   * every connection's writes and every connection may write. Default true; an exclusive
   * writable export (one writer connection, later ones read-only) says false.
   */
  readonly multiConn?: boolean;
  /** Optional human-readable text for NBD_INFO_DESCRIPTION. */
  readonly description?: string;
  /** Exactly `length` bytes; the server never modifies the buffer, so it may be a view. */
  read(offset: number, length: number): Promise<Buffer>;
  /** `data` may be reused by the server once the promise settles: copy it to keep it longer. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /**
   * Every write completed before the call is durable when it resolves, whichever connection
   * (or other opener of the same device) issued it: the server advertises CAN_MULTI_CONN.
   */
  flush(): Promise<void>;
  trim(offset: number, length: number): Promise<void>;
  /** May throw an error with `.nbdErrno = ENOTSUP` for fastZero when zeroing cannot be fast. */
  writeZeroes(
    offset: number,
    length: number,
    opts: { noHole: boolean; fastZero: boolean; fua: boolean },
  ): Promise<void>;
  /**
   * base:allocation extents covering at least one byte from offset. Also consulted before each
   * structured read (to send zero ranges as holes), so it should only touch metadata.
   */
  blockStatus(
    offset: number,
    length: number,
  ): Promise<Array<{ length: number; hole: boolean; zero: boolean }>>;
  close(): Promise<void>;
}

export interface ExportProvider {
  list(): Promise<Array<{ name: string; description?: string }>>;
  /** Throws NbdOpenError when the export cannot be opened. */
  open(name: string, opts: { readOnlyRequested: boolean; probe?: boolean }): Promise<BlockExport>;
}

export class NbdOpenError extends Error {
  constructor(readonly kind: "unknown" | "locked" | "other", message: string) {
    super(message);
    this.name = "NbdOpenError";
  }
}

/** An I/O error with an NBD error value, for BlockExport implementations. */
export class BlockError extends Error {
  constructor(readonly nbdErrno: number, message?: string) {
    super(message ?? `NBD error ${nbdErrno}`);
    this.name = "BlockError";
  }
}

const KNOWN_ERRNOS: ReadonlySet<number> = new Set(Object.values(NbdErrno));

/** Maps anything thrown by an export to an NBD error value (EIO unless it says otherwise). */
export function nbdErrnoOf(e: unknown): number {
  const n = (e as { nbdErrno?: unknown })?.nbdErrno;
  if (typeof n === "number" && KNOWN_ERRNOS.has(n)) return n;
  switch ((e as { code?: unknown })?.code) {
    case "ENOSPC":
    case "EDQUOT":
    case "EFBIG":
      return NbdErrno.ENOSPC;
    case "EPERM":
    case "EACCES":
    case "EROFS":
      return NbdErrno.EPERM;
    case "EINVAL":
      return NbdErrno.EINVAL;
    case "ENOMEM":
      return NbdErrno.ENOMEM;
    default:
      return NbdErrno.EIO;
  }
}

export interface MemoryExportOptions {
  /** Allocation granularity in bytes (default 4 MiB, Sheepdog's default object size). */
  objectSize?: number;
  readOnly?: boolean;
  minBlock?: number;
  prefBlock?: number;
  maxBlock?: number;
  description?: string;
  /** When false, writeZeroes with fastZero fails with ENOTSUP (to exercise clients' fallback). */
  fastZero?: boolean;
}

/**
 * Sparse in-memory block device. Storage is allocated per object (objectSize bytes); an object
 * that was never written, or was entirely trimmed/zeroed, is a hole that reads as zeroes.
 */
export class MemoryExport implements BlockExport {
  readonly objectSize: number;
  readonly readOnly: boolean;
  readonly minBlock: number;
  readonly prefBlock: number;
  readonly maxBlock: number;
  readonly description?: string;
  readonly fastZero: boolean;
  /** Object index -> object contents (the last object may be shorter than objectSize). */
  readonly objects = new Map<number, Buffer>();
  closeCount = 0;
  flushCount = 0;

  constructor(readonly name: string, readonly size: number, opts: MemoryExportOptions = {}) {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad export size ${size}`);
    this.objectSize = opts.objectSize ?? 4 * 1024 * 1024;
    if (!Number.isSafeInteger(this.objectSize) || this.objectSize <= 0) {
      throw new RangeError(`bad object size ${this.objectSize}`);
    }
    this.readOnly = opts.readOnly ?? false;
    this.minBlock = opts.minBlock ?? 1;
    this.prefBlock = opts.prefBlock ?? 4096;
    this.maxBlock = opts.maxBlock ?? 32 * 1024 * 1024;
    this.description = opts.description;
    this.fastZero = opts.fastZero ?? true;
  }

  /** A deep copy, e.g. a read-only snapshot of this device. */
  clone(name: string, opts: MemoryExportOptions = {}): MemoryExport {
    const c = new MemoryExport(name, this.size, {
      objectSize: this.objectSize,
      minBlock: this.minBlock,
      prefBlock: this.prefBlock,
      maxBlock: this.maxBlock,
      fastZero: this.fastZero,
      ...opts,
    });
    for (const [i, obj] of this.objects) c.objects.set(i, Buffer.from(obj));
    return c;
  }

  /** Bytes of storage currently allocated. */
  get allocatedBytes(): number {
    let n = 0;
    for (const obj of this.objects.values()) n += obj.length;
    return n;
  }

  private check(offset: number, length: number, write: boolean): void {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0
    ) {
      throw new BlockError(NbdErrno.EINVAL, "bad offset or length");
    }
    if (write && this.readOnly) {
      throw new BlockError(NbdErrno.EPERM, `export ${this.name} is read-only`);
    }
    if (offset + length > this.size) {
      throw new BlockError(
        write ? NbdErrno.ENOSPC : NbdErrno.EINVAL,
        "request beyond the end of the export",
      );
    }
  }

  private objLen(idx: number): number {
    return Math.min(this.objectSize, this.size - idx * this.objectSize);
  }

  /** Calls fn(objectIndex, offsetInObject, offsetInRequest, length) for each object touched. */
  private each(
    offset: number,
    length: number,
    fn: (idx: number, inObj: number, inReq: number, n: number) => void,
  ) {
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const idx = Math.floor(pos / this.objectSize);
      const inObj = pos - idx * this.objectSize;
      const n = Math.min(end - pos, this.objectSize - inObj);
      fn(idx, inObj, pos - offset, n);
      pos += n;
    }
  }

  read(offset: number, length: number): Promise<Buffer> {
    try {
      this.check(offset, length, false);
    } catch (e) {
      return Promise.reject(e);
    }
    // Within one object, hand out a view (no copy). A write landing while the reply is still
    // queued in the socket overlaps a read whose reply the client has not seen yet, so either
    // content is a valid answer (proto.md leaves overlapping in-flight requests unordered).
    const idx = Math.floor(offset / this.objectSize);
    const inObj = offset - idx * this.objectSize;
    if (length > 0 && inObj + length <= this.objectSize) {
      const obj = this.objects.get(idx);
      return Promise.resolve(obj ? obj.subarray(inObj, inObj + length) : Buffer.alloc(length));
    }
    const out = Buffer.allocUnsafe(length);
    this.each(offset, length, (idx, inObj, inReq, n) => {
      const obj = this.objects.get(idx);
      if (obj) obj.copy(out, inReq, inObj, inObj + n);
      else out.fill(0, inReq, inReq + n);
    });
    return Promise.resolve(out);
  }

  write(offset: number, data: Buffer, _fua: boolean): Promise<void> {
    try {
      this.check(offset, data.length, true);
    } catch (e) {
      return Promise.reject(e);
    }
    this.each(offset, data.length, (idx, inObj, inReq, n) => {
      let obj = this.objects.get(idx);
      if (!obj) {
        obj = Buffer.alloc(this.objLen(idx));
        this.objects.set(idx, obj);
      }
      data.copy(obj, inObj, inReq, inReq + n);
    });
    return Promise.resolve();
  }

  flush(): Promise<void> {
    this.flushCount++;
    return Promise.resolve();
  }

  private zeroRange(offset: number, length: number, keepAllocated: boolean): void {
    this.each(offset, length, (idx, inObj, _inReq, n) => {
      const obj = this.objects.get(idx);
      if (n === this.objLen(idx) && !keepAllocated) {
        this.objects.delete(idx);
      } else if (obj) {
        obj.fill(0, inObj, inObj + n);
      } else if (keepAllocated) {
        this.objects.set(idx, Buffer.alloc(this.objLen(idx)));
      }
    });
  }

  trim(offset: number, length: number): Promise<void> {
    try {
      this.check(offset, length, true);
    } catch (e) {
      return Promise.reject(e);
    }
    this.zeroRange(offset, length, false);
    return Promise.resolve();
  }

  writeZeroes(
    offset: number,
    length: number,
    opts: { noHole: boolean; fastZero: boolean; fua: boolean },
  ): Promise<void> {
    try {
      this.check(offset, length, true);
      if (opts.fastZero && !this.fastZero) {
        throw new BlockError(NbdErrno.ENOTSUP, "fast zero not supported");
      }
    } catch (e) {
      return Promise.reject(e);
    }
    this.zeroRange(offset, length, opts.noHole);
    return Promise.resolve();
  }

  blockStatus(
    offset: number,
    length: number,
  ): Promise<Array<{ length: number; hole: boolean; zero: boolean }>> {
    try {
      this.check(offset, length, false);
    } catch (e) {
      return Promise.reject(e);
    }
    const out: Array<{ length: number; hole: boolean; zero: boolean }> = [];
    this.each(offset, length, (idx, _inObj, _inReq, n) => {
      const hole = !this.objects.has(idx);
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += n;
      else out.push({ length: n, hole, zero: hole });
    });
    return Promise.resolve(out);
  }

  close(): Promise<void> {
    this.closeCount++;
    return Promise.resolve();
  }
}
