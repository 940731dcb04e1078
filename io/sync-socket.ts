// A blocking TCP connection through libc (bun:ffi), for `dog vdi read`'s bulk stream: replies
// are received straight into the caller's buffers and written to stdout from them, as C dog
// does. Bun's sockets hand every read over in a fresh buffer (a copy, page faults and GC for
// every byte): that was ~3x C dog's CPU per GiB read; this is below it. Only on Bun, IPv4
// literals; anything else (Deno, no libc, a failed connect) gets null and the caller keeps the
// event-driven client.
import { Buffer } from "node:buffer";
import * as net from "node:net";

const AF_INET = 2, SOCK_STREAM = 1, IPPROTO_TCP = 6, TCP_NODELAY = 1;
const MSG_WAITALL = 0x100, MSG_NOSIGNAL = 0x4000;
const POLLOUT = 4, EINTR = 4, EAGAIN = 11;

// The part of bun:ffi used here (it is imported by name at run time, so Deno never resolves it).
type Fn = (...a: unknown[]) => number | bigint;
interface Libc {
  socket: Fn;
  connect: Fn;
  setsockopt: Fn;
  send: Fn;
  recv: Fn;
  write: Fn;
  poll: Fn;
  close: Fn;
  __errno_location: Fn;
}
interface Ffi {
  lib: Libc;
  ptr: (b: Uint8Array, off?: number) => unknown;
  read: { i32: (p: unknown, off?: number) => number };
}

let ffi: Ffi | null | undefined;

async function loadFfi(): Promise<Ffi | null> {
  if (ffi !== undefined) return ffi;
  ffi = null;
  if (!("Bun" in globalThis) || process.platform !== "linux") return null;
  try {
    const spec = "bun:ffi";
    const m = await import(spec);
    const T = m.FFIType;
    const i32 = T.i32, p = T.ptr, u64 = T.u64, i64 = T.i64;
    const { symbols } = m.dlopen("libc.so.6", {
      socket: { args: [i32, i32, i32], returns: i32 },
      connect: { args: [i32, p, T.u32], returns: i32 },
      setsockopt: { args: [i32, i32, i32, p, T.u32], returns: i32 },
      send: { args: [i32, p, u64, i32], returns: i64 },
      recv: { args: [i32, p, u64, i32], returns: i64 },
      write: { args: [i32, p, u64], returns: i64 },
      poll: { args: [p, u64, i32], returns: i32 },
      close: { args: [i32], returns: i32 },
      __errno_location: { args: [], returns: p },
    });
    ffi = { lib: symbols as Libc, ptr: m.ptr, read: m.read };
  } catch {
    ffi = null;
  }
  return ffi;
}

/** An errno as the Error node:fs would throw (code set, for errnoText). */
function sysError(syscall: string, errno: number): Error & { code: string } {
  const names: Record<number, string> = {
    32: "EPIPE",
    104: "ECONNRESET",
    111: "ECONNREFUSED",
    5: "EIO",
    28: "ENOSPC",
    9: "EBADF",
  };
  const code = names[errno] ?? `E${errno}`;
  return Object.assign(new Error(`${code}: ${syscall} failed`), { code, errno, syscall });
}

export class SyncSocket {
  private constructor(private readonly f: Ffi, private fd: number) {}

  /** Connects (blocking) to an IPv4 literal; null when that is not possible here. */
  static async connect(host: string, port: number): Promise<SyncSocket | null> {
    if (!net.isIPv4(host)) return null;
    const f = await loadFfi();
    if (!f) return null;
    const fd = Number(f.lib.socket(AF_INET, SOCK_STREAM, 0));
    if (fd < 0) return null;
    const sa = Buffer.alloc(16);
    sa.writeUInt16LE(AF_INET, 0);
    sa.writeUInt16BE(port, 2);
    host.split(".").forEach((o, i) => (sa[4 + i] = Number(o)));
    if (Number(f.lib.connect(fd, f.ptr(sa), 16)) !== 0) {
      f.lib.close(fd);
      return null;
    }
    const one = Buffer.alloc(4);
    one.writeInt32LE(1);
    f.lib.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, f.ptr(one), 4);
    return new SyncSocket(f, fd);
  }

  private errno(): number {
    return this.f.read.i32(this.f.lib.__errno_location());
  }

  /** Sends all of b; false when the connection failed. */
  send(b: Buffer): boolean {
    for (let off = 0; off < b.length;) {
      const n = Number(this.f.lib.send(this.fd, this.f.ptr(b, off), b.length - off, MSG_NOSIGNAL));
      if (n < 0 && this.errno() === EINTR) continue;
      if (n <= 0) return false;
      off += n;
    }
    return true;
  }

  /** Receives exactly len bytes into b at off; false on end of stream or an error. */
  recv(b: Buffer, off: number, len: number): boolean {
    const end = off + len;
    while (off < end) {
      const n = Number(this.f.lib.recv(this.fd, this.f.ptr(b, off), end - off, MSG_WAITALL));
      if (n < 0 && this.errno() === EINTR) continue;
      if (n <= 0) return false;
      off += n;
    }
    return true;
  }

  /** Writes all of b[0, len) to fd (waiting while a non-blocking fd is full); throws errno. */
  writeFd(fd: number, b: Buffer, len: number): void {
    const pfd = Buffer.alloc(8);
    for (let off = 0; off < len;) {
      const n = Number(this.f.lib.write(fd, this.f.ptr(b, off), len - off));
      if (n >= 0) {
        off += n;
        continue;
      }
      const e = this.errno();
      if (e === EINTR) continue;
      if (e !== EAGAIN) throw sysError("write", e);
      pfd.writeInt32LE(fd, 0);
      pfd.writeInt16LE(POLLOUT, 4);
      this.f.lib.poll(this.f.ptr(pfd), 1, -1);
    }
  }

  close(): void {
    if (this.fd >= 0) this.f.lib.close(this.fd);
    this.fd = -1;
  }
}
