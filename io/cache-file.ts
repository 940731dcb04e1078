// The object cache's files: `<dir>/<vid %06x>/<oid %016x>`, a 4 KiB header (core/cache-index.ts)
// then the object's bytes. With directio the files are opened O_DIRECT: every transfer is whole
// aligned blocks from buffers whose address is aligned (io/fd-cache.ts's DirectIo.alloc: neither
// runtime promises an aligned Buffer.alloc, and Deno's seldom are). The start-up probe refuses
// directio with a clear message where the filesystem does not take it.
// Without directio reads and writes are synchronous: they only copy to or from the page cache
// (a few microseconds), less than the hop to the runtime's I/O thread pool and back, which
// dominated a cached 4 KiB write. O_DIRECT transfers wait for the device: those stay async.
import { Buffer } from "node:buffer";
import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import {
  CACHE_FORMAT_1,
  CACHE_HEADER_SIZE,
  type CacheHeader,
  decodeCacheHeader,
  encodeCacheHeader,
  fileBytes,
} from "../core/cache-index.ts";
import { oidToVid } from "../core/oid.ts";
import { DirectIo } from "./fd-cache.ts";
import { crcOf } from "./checksum.ts";

// Callback forms wrapped by hand: promisify(fs.read) resolves to an object on Node, a number elsewhere.
function pread(fd: number, b: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((res, rej) => fs.read(fd, b, off, len, pos, (e, n) => e ? rej(e) : res(n)));
}
function pwrite(fd: number, b: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((res, rej) => fs.write(fd, b, off, len, pos, (e, n) => e ? rej(e) : res(n)));
}
const close = promisify(fs.close);
const ftruncate = promisify(fs.ftruncate);
const openP = promisify(fs.open);

export const crc = (b: Uint8Array): number => crcOf(b);

export interface ScannedFile {
  header: CacheHeader;
}

export class CacheFiles {
  private readonly fds = new Map<bigint, Promise<number>>();
  /** Descriptors already open, for the synchronous path. */
  private readonly open = new Map<bigint, number>();
  private readonly flags: number;
  /** Zeroed buffers for transfers: address-aligned ones once probe() has set up directio. */
  private alloc = (len: number): Buffer => Buffer.alloc(len);

  constructor(readonly root: string, readonly directio: boolean) {
    const O_DIRECT = (fs.constants as Record<string, number>).O_DIRECT ?? 0;
    this.flags = fs.constants.O_RDWR | (directio ? O_DIRECT : 0);
  }

  /** Creates the directory and proves it takes writes (and O_DIRECT ones when asked). */
  async probe(): Promise<void> {
    if (this.directio) {
      const io = await DirectIo.create();
      this.alloc = (len) => io.alloc(len);
    }
    try {
      fs.mkdirSync(this.root, { recursive: true });
    } catch (e) {
      throw new Error(`object cache: cannot create ${this.root}: ${(e as Error).message}`);
    }
    const p = path.join(this.root, ".probe");
    let fd = -1;
    try {
      fd = fs.openSync(p, this.flags | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (this.directio && code === "EINVAL") {
        throw new Error(
          `object cache: ${this.root} does not support O_DIRECT (tmpfs?): drop 'directio' or use another dir`,
        );
      }
      throw new Error(`object cache: ${this.root} is not writable: ${(e as Error).message}`);
    }
    try {
      fs.writeSync(fd, this.alloc(CACHE_HEADER_SIZE), 0, CACHE_HEADER_SIZE, 0);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new Error(
        code === "EINVAL" && this.directio
          ? `object cache: O_DIRECT writes fail in ${this.root} (a filesystem without direct I/O): drop 'directio' or use another dir`
          : `object cache: ${this.root} is not writable: ${(e as Error).message}`,
      );
    } finally {
      fs.closeSync(fd);
      fs.rmSync(p, { force: true });
    }
  }

  pathOf(oid: bigint): string {
    const vid = oidToVid(oid).toString(16).padStart(6, "0");
    return path.join(this.root, vid, oid.toString(16).padStart(16, "0"));
  }

  private fd(oid: bigint): Promise<number> {
    let p = this.fds.get(oid);
    if (!p) {
      p = openP(this.pathOf(oid), this.flags);
      this.fds.set(oid, p);
      p.then((fd) => this.fds.get(oid) === p && this.open.set(oid, fd), () => {
        if (this.fds.get(oid) === p) this.fds.delete(oid);
      });
    }
    return p;
  }

  /** An open descriptor for the synchronous path (opened here when it is not yet). */
  private fdSync(oid: bigint): number {
    let fd = this.open.get(oid);
    if (fd !== undefined) return fd;
    fd = fs.openSync(this.pathOf(oid), this.flags);
    this.open.set(oid, fd);
    this.fds.set(oid, Promise.resolve(fd));
    return fd;
  }

  /** Writes a whole new cache file (header + object) under a temp name, then renames it in. */
  async create(h: CacheHeader, data: Buffer | null): Promise<void> {
    const final = this.pathOf(h.oid);
    fs.mkdirSync(path.dirname(final), { recursive: true });
    const tmp = `${final}.tmp`;
    await this.closeFd(h.oid);
    const fd = await openP(tmp, this.flags | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
    try {
      if (data) {
        const buf = this.alloc(fileBytes(h.objSize));
        encodeCacheHeader(h, crc, buf.subarray(0, CACHE_HEADER_SIZE));
        data.copy(buf, CACHE_HEADER_SIZE, 0, Math.min(data.length, h.objSize));
        await writeAll(fd, buf, 0);
      } else {
        // Nothing of the object yet: a sparse file of the full size, its blocks read as zeros.
        await writeAll(fd, this.header(h), 0);
        await ftruncate(fd, fileBytes(h.objSize));
      }
    } finally {
      await close(fd);
    }
    fs.renameSync(tmp, final);
  }

  /** Object bytes [off, off+len) (both aligned to 4 KiB when directio). */
  async read(oid: bigint, off: number, len: number): Promise<Buffer> {
    if (!this.directio) return this.readSync(oid, off, len);
    const fd = await this.fd(oid);
    const buf = this.alloc(len);
    let done = 0;
    while (done < len) {
      const n = await pread(fd, buf, done, len - done, CACHE_HEADER_SIZE + off + done);
      if (n === 0) throw new Error(`cache file of ${oid.toString(16)} is short`);
      done += n;
    }
    return buf;
  }

  private readSync(oid: bigint, off: number, len: number): Buffer {
    const buf = Buffer.allocUnsafe(len);
    this.readInto(oid, off, buf);
    return buf;
  }

  /** Object bytes at `off` into `buf` (whole), synchronously: only without directio. */
  readInto(oid: bigint, off: number, buf: Buffer): void {
    if (this.directio) throw new Error("readInto: directio reads need aligned buffers");
    const fd = this.fdSync(oid);
    for (let done = 0; done < buf.length;) {
      const n = fs.readSync(fd, buf, done, buf.length - done, CACHE_HEADER_SIZE + off + done);
      if (n === 0) throw new Error(`cache file of ${oid.toString(16)} is short`);
      done += n;
    }
  }

  /** Object bytes at `off` (aligned when directio), then the header. */
  async write(h: CacheHeader, off: number, data: Buffer): Promise<void> {
    if (!this.directio) {
      const fd = this.fdSync(h.oid);
      writeAllSync(fd, data, CACHE_HEADER_SIZE + off);
      writeAllSync(fd, encodeCacheHeader(h, crc, this.hdr), 0);
      return;
    }
    const fd = await this.fd(h.oid);
    await writeAll(fd, data, CACHE_HEADER_SIZE + off);
    await writeAll(fd, this.header(h), 0);
  }

  async writeHeader(h: CacheHeader): Promise<void> {
    if (!this.directio) {
      writeAllSync(this.fdSync(h.oid), encodeCacheHeader(h, crc, this.hdr), 0);
      return;
    }
    const fd = await this.fd(h.oid);
    await writeAll(fd, this.header(h), 0);
  }

  /** A fresh encoded header (the async path's writes may overlap: no shared buffer). */
  private header(h: CacheHeader): Buffer {
    return encodeCacheHeader(h, crc, this.alloc(CACHE_HEADER_SIZE));
  }

  /** The synchronous path's header buffer, reused (written before the next encode). */
  private readonly hdr = Buffer.alloc(CACHE_HEADER_SIZE);

  private async closeFd(oid: bigint): Promise<void> {
    const p = this.fds.get(oid);
    if (!p) return;
    this.fds.delete(oid);
    this.open.delete(oid);
    await p.then((fd) => close(fd), () => {});
  }

  async remove(oid: bigint): Promise<void> {
    await this.closeFd(oid);
    fs.rmSync(this.pathOf(oid), { force: true });
  }

  /**
   * Every cache file left by an earlier run, checked: a 0-byte, short or torn file (header or a
   * block failing its CRC) is removed and reported through `bad`, never returned.
   */
  scan(bad: (file: string, why: string) => void): ScannedFile[] {
    const out: ScannedFile[] = [];
    if (!fs.existsSync(this.root)) return out;
    for (const d of fs.readdirSync(this.root)) {
      const dir = path.join(this.root, d);
      if (!/^[0-9a-f]{6}$/.test(d) || !fs.statSync(dir).isDirectory()) continue;
      for (const f of fs.readdirSync(dir)) {
        const file = path.join(dir, f);
        const why = this.check(file, f, out);
        if (why) {
          bad(file, why);
          fs.rmSync(file, { force: true });
        }
      }
    }
    return out;
  }

  private check(file: string, name: string, out: ScannedFile[]): string | null {
    if (!/^[0-9a-f]{16}$/.test(name)) return "not a cache file (left over from a crash)";
    const size = fs.statSync(file).size;
    if (size === 0) return "0 bytes";
    const b = fs.readFileSync(file);
    const h = decodeCacheHeader(b, crc);
    if (h === CACHE_FORMAT_1) {
      // It may hold acknowledged writes never pushed: refuse to start rather than drop them.
      throw new Error(
        `object cache: ${file} is in ${CACHE_FORMAT_1}: start that build and flush its VDIs ` +
          `(dog vdi cache flush VDI), or remove ${this.root} to drop the cache and any unflushed writes in it`,
      );
    }
    if (typeof h === "string") return h;
    if (h.oid.toString(16).padStart(16, "0") !== name) return "header names another object";
    if (size !== fileBytes(h.objSize)) {
      return `short: ${size} bytes, expected ${fileBytes(h.objSize)}`;
    }
    const bs = h.objSize / h.crcs.length;
    for (let i = 0; i < h.crcs.length; i++) {
      const at = CACHE_HEADER_SIZE + i * bs;
      if (crcOf(b.subarray(at, at + bs)) !== h.crcs[i]) return `block ${i} fails its checksum`;
    }
    out.push({ header: h });
    return null;
  }

  async closeAll(): Promise<void> {
    for (const oid of [...this.fds.keys()]) await this.closeFd(oid);
  }
}

function writeAllSync(fd: number, buf: Buffer, pos: number): void {
  for (let done = 0; done < buf.length;) {
    done += fs.writeSync(fd, buf, done, buf.length - done, pos + done);
  }
}

async function writeAll(fd: number, buf: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    done += await pwrite(fd, buf, done, buf.length - done, pos + done);
  }
}
