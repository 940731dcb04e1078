// File helpers of the object store (io/store.ts): the descriptor cache, positional I/O (buffered,
// or O_DIRECT with aligned buffers for `sheep -D`), syncs, quiet unlink/move.
import fs from "node:fs";
import { Buffer } from "node:buffer";
import { GroupSync } from "../core/store.ts";

export interface CachedFd {
  fd: number;
  refs: number;
  closed: boolean;
  /** Of a side file: its checksum block size (io/checksum.ts blockSizeOf), once known. */
  bs?: number;
  /** Of a side file: all its entries, kept with the descriptor (no syscall to verify a read). */
  table?: Buffer;
  /** Of an object file: its size, once known (only this store changes it, by writes). */
  size?: number;
  /**
   * Of an object file: its side file's entry, found through the cache once (io/store.ts
   * sideOf); used while not closed, so a checksummed read skips a path build and an LRU move.
   */
  side?: CachedFd;
  /** Of an object file, checksums off: its outdated side file (if any) was removed. */
  sideGone?: boolean;
}

/**
 * How many descriptors the store keeps open: an object with stored checksums holds two (object
 * and side file), so 256 covered only 128 objects (512 MiB) and a 1 GiB random read reopened
 * both files and reloaded the table on most requests (half the IOPS). 2048 covers 4 GiB of
 * objects (8 MiB of side-file tables); a quarter of the process's soft RLIMIT_NOFILE at most,
 * leaving the rest to sockets.
 */
export function fdCacheSize(): number {
  const WANT = 2048;
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(
      fs.readFileSync("/proc/self/limits", "utf8"),
    );
    if (!m || m[1] === "unlimited") return WANT;
    return Math.max(64, Math.min(WANT, Math.floor(Number(m[1]) / 4)));
  } catch {
    return 256; // no procfs: the old, safe size
  }
}

/** LRU of open O_RDWR descriptors; closing is deferred while an operation still uses the fd. */
export class FdCache {
  private map = new Map<string, CachedFd>();
  constructor(private max = 256, private extraFlags = 0) {}

  /** `direct`: the extra open flags (O_DIRECT under -D) apply; side files are opened without. */
  acquire(path: string, direct = false): CachedFd {
    let e = this.map.get(path);
    if (e) {
      this.map.delete(path);
      this.map.set(path, e);
    } else {
      const flags = fs.constants.O_RDWR | (direct ? this.extraFlags : 0);
      e = { fd: fs.openSync(path, flags), refs: 0, closed: false };
      this.map.set(path, e);
      if (this.map.size > this.max) {
        const [oldPath] = this.map.keys();
        this.invalidate(oldPath);
      }
    }
    e.refs++;
    return e;
  }

  release(e: CachedFd) {
    e.refs--;
    if (e.closed && e.refs === 0) closeQuiet(e.fd);
  }

  invalidate(path: string) {
    const e = this.map.get(path);
    if (!e) return;
    this.map.delete(path);
    e.closed = true;
    if (e.refs === 0) closeQuiet(e.fd);
  }

  /** Forgets every descriptor under `dir` (a disk leaving the set). */
  invalidateUnder(dir: string) {
    for (const p of [...this.map.keys()]) if (p.startsWith(dir + "/")) this.invalidate(p);
  }

  clear() {
    for (const p of [...this.map.keys()]) this.invalidate(p);
  }
}

export function closeQuiet(fd: number) {
  try {
    fs.closeSync(fd);
  } catch { /* already gone */ }
}

export function fdatasync(fd: number): Promise<void> {
  return new Promise((res, rej) => fs.fdatasync(fd, (e) => (e ? rej(e) : res())));
}
function fsyncP(fd: number): Promise<void> {
  return new Promise((res, rej) => fs.fsync(fd, (e) => (e ? rej(e) : res())));
}

const dirSyncs = new Map<string, GroupSync>();

export function fsyncDir(dir: string): Promise<void> {
  let g = dirSyncs.get(dir);
  if (!g) {
    g = new GroupSync(async () => {
      const fd = fs.openSync(dir, "r");
      try {
        await fsyncP(fd);
      } finally {
        closeQuiet(fd);
      }
    });
    dirSyncs.set(dir, g);
  }
  return g.sync();
}

export function preadFull(fd: number, length: number, offset: number): Buffer {
  // Not zero-filled up front (that costs as much as the read): only what lies past EOF is
  // zeroed, so a short file still reads back as zeros there.
  const buf = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buf, done, length - done, offset + done);
    if (n <= 0) break;
    done += n;
  }
  if (done < length) buf.fill(0, done);
  return buf;
}

export function pwriteFull(fd: number, data: Buffer, offset: number) {
  let done = 0;
  while (done < data.length) {
    done += fs.writeSync(fd, data, done, data.length - done, offset + done);
  }
}

/** Object-file data I/O: plain positional calls, or O_DIRECT through aligned bounce buffers. */
export interface DataIo {
  /** Extra open flags for object files (O_DIRECT or 0). */
  readonly openFlags: number;
  pread(fd: number, length: number, offset: number): Buffer;
  pwrite(fd: number, data: Buffer, offset: number): void;
}

export const bufferedIo: DataIo = { openFlags: 0, pread: preadFull, pwrite: pwriteFull };

export const DIO_ALIGN = 4096;

type AddrOf = (b: Uint8Array) => bigint;

/** The address of a buffer's first byte: bun:ffi on Bun, Deno.UnsafePointer on Deno. */
async function loadAddrOf(): Promise<AddrOf> {
  const g = globalThis as unknown as {
    Bun?: unknown;
    Deno?: {
      UnsafePointer: { of(b: Uint8Array): unknown; value(p: unknown): bigint | number };
    };
  };
  if (g.Bun) {
    const spec = "bun:ffi";
    const ffi = await import(spec) as { ptr(b: Uint8Array): number };
    return (b) => BigInt(ffi.ptr(b));
  }
  if (g.Deno) {
    const up = g.Deno.UnsafePointer;
    return (b) => BigInt(up.value(up.of(b)));
  }
  throw new Error("direct I/O needs Bun or Deno (buffer addresses for alignment)");
}

/**
 * O_DIRECT needs offset, length and buffer address aligned to the logical block size; 4096 covers
 * every disk in use. Unaligned requests read-modify-write the edge blocks (the caller holds the
 * object's lock and nothing here yields, so two writes cannot interleave), and a write that the
 * alignment would grow past the file's end is truncated back to its real size.
 */
export class DirectIo implements DataIo {
  readonly openFlags = fs.constants.O_DIRECT ?? 0;
  private constructor(private addrOf: AddrOf) {}

  static async create(): Promise<DirectIo> {
    if (!fs.constants.O_DIRECT) throw new Error("O_DIRECT is not available on this platform");
    return new DirectIo(await loadAddrOf());
  }

  /** A zeroed buffer of `len` bytes (a multiple of DIO_ALIGN) whose address is aligned. */
  alloc(len: number): Buffer {
    const raw = Buffer.allocUnsafeSlow(len + DIO_ALIGN);
    const mis = Number(this.addrOf(raw) % BigInt(DIO_ALIGN));
    const b = raw.subarray(
      mis === 0 ? 0 : DIO_ALIGN - mis,
      (mis === 0 ? 0 : DIO_ALIGN - mis) + len,
    );
    b.fill(0);
    return b;
  }

  private readAligned(fd: number, buf: Buffer, offset: number): void {
    let done = 0;
    while (done < buf.length) {
      const n = fs.readSync(fd, buf, done, buf.length - done, offset + done);
      if (n <= 0) break;
      done += n;
      // A short read is the end of the file (it need not end aligned): the rest stays zero.
      if (n % DIO_ALIGN !== 0) break;
    }
  }

  pread(fd: number, length: number, offset: number): Buffer {
    if (length === 0) return Buffer.alloc(0);
    const a0 = Math.floor(offset / DIO_ALIGN) * DIO_ALIGN;
    const a1 = Math.ceil((offset + length) / DIO_ALIGN) * DIO_ALIGN;
    const buf = this.alloc(a1 - a0);
    this.readAligned(fd, buf, a0);
    return buf.subarray(offset - a0, offset - a0 + length);
  }

  pwrite(fd: number, data: Buffer, offset: number): void {
    if (data.length === 0) return;
    const end = offset + data.length;
    const a0 = Math.floor(offset / DIO_ALIGN) * DIO_ALIGN;
    const a1 = Math.ceil(end / DIO_ALIGN) * DIO_ALIGN;
    const size = fs.fstatSync(fd).size;
    const buf = this.alloc(a1 - a0);
    if (offset > a0 && a0 < size) this.readAligned(fd, buf.subarray(0, DIO_ALIGN), a0);
    if (end < a1 && a1 - DIO_ALIGN < size && (a1 - DIO_ALIGN > a0 || offset === a0)) {
      this.readAligned(fd, buf.subarray(buf.length - DIO_ALIGN), a1 - DIO_ALIGN);
    }
    data.copy(buf, offset - a0);
    let done = 0;
    while (done < buf.length) {
      done += fs.writeSync(fd, buf, done, buf.length - done, a0 + done);
    }
    if (a1 > size && end < a1) fs.ftruncateSync(fd, Math.max(size, end));
  }
}

/** Renames a side file along with its object; a missing one is fine, another disk is copied. */
export function moveQuiet(from: string, to: string): void {
  try {
    fs.renameSync(from, to);
  } catch (e) {
    const code = (e as { code?: string })?.code;
    if (code === "ENOENT") return;
    if (code !== "EXDEV") throw e;
    fs.copyFileSync(from, to);
    fs.unlinkSync(from);
  }
}

/** Flushes an object file and its side file, if they are there (store close). */
export function syncQuiet(path: string): void {
  for (const p of [path, path + ".csum"]) {
    let fd = -1;
    try {
      fd = fs.openSync(p, "r");
      fs.fdatasyncSync(fd);
    } catch {
      /* absent */
    } finally {
      if (fd >= 0) closeQuiet(fd);
    }
  }
}

export function unlinkQuiet(path: string): void {
  try {
    fs.unlinkSync(path);
  } catch { /* absent */ }
}

export function isEnoent(e: unknown): boolean {
  return (e as { code?: string })?.code === "ENOENT";
}

export function allocatedBytes(st: fs.Stats): bigint {
  return BigInt(st.blocks ?? 0) * 512n;
}

/**
 * Checks that `dir`'s filesystem takes O_DIRECT I/O (some refuse it at open or at the first
 * aligned write with EINVAL): `sheep -D` fails to start with a clear error instead of every
 * object request failing later.
 */
export function probeDirectIo(dir: string, io: DirectIo): void {
  fs.mkdirSync(dir, { recursive: true });
  const p = `${dir}/.directio-probe`;
  let fd = -1;
  try {
    fd = fs.openSync(p, fs.constants.O_RDWR | fs.constants.O_CREAT | io.openFlags, 0o600);
    fs.writeSync(fd, io.alloc(DIO_ALIGN), 0, DIO_ALIGN, 0);
    fs.readSync(fd, io.alloc(DIO_ALIGN), 0, DIO_ALIGN, 0);
  } catch (e) {
    throw new Error(
      `-D (direct I/O): ${dir} refuses O_DIRECT (${(e as { code?: string }).code ?? e}); ` +
        `its filesystem does not support direct I/O, start without -D`,
    );
  } finally {
    if (fd >= 0) closeQuiet(fd);
    unlinkQuiet(p);
  }
}
