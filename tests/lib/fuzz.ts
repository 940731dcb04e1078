// Seeded fuzz input for the two wire protocols a sheep listens on: sheep requests (48-byte
// headers + payloads, core/proto.ts) and NBD (core/nbd.ts). Everything comes from one seed so a
// failure replays with SEED=n.
import { Buffer } from "node:buffer";
import process from "node:process";
import {
  Flag,
  MAX_PAYLOAD,
  Op,
  SD_PROTO_VER,
  SD_REQ_SIZE,
  SD_SHEEP_PROTO_VER,
} from "../../core/proto.ts";
import { Cmd, IHAVEOPT, Opt, REQUEST_MAGIC } from "../../core/nbd.ts";

/** xoshiro128** seeded by splitmix32: small, fast and the same on every runtime. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(readonly seed: number) {
    // splitmix32 spreads a small seed over the whole state.
    let s = seed >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next() | 1;
    this.b = next();
    this.c = next();
    this.d = next();
  }
  /** xoshiro128** step. */
  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r;
  }
  /** Uniform in [0, n) for n <= 2^32. */
  int(n: number): number {
    return Math.floor((this.u32() / 4294967296) * n);
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
  /** A fresh generator derived from this one (per connection, so work can interleave freely). */
  fork(): Rng {
    return new Rng(this.u32());
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** SEED from the environment (replay), else a random one; callers print it. */
export function fuzzSeed(): number {
  const s = process.env.SEED;
  if (s !== undefined && s !== "") {
    const n = Number(s);
    if (!Number.isInteger(n)) throw new Error(`SEED=${s} is not an integer`);
    return n >>> 0;
  }
  return (Math.random() * 4294967296) >>> 0;
}

/** Mutations shared by both protocols: flip bits, overwrite bytes, cut or extend. */
export function mutate(rng: Rng, b: Buffer): Buffer {
  const out = Buffer.from(b);
  const n = rng.range(1, 4);
  for (let i = 0; i < n && out.length > 0; i++) {
    const at = rng.int(out.length);
    switch (rng.int(4)) {
      case 0:
        out[at] ^= 1 << rng.int(8);
        break;
      case 1:
        out[at] = rng.u32() & 0xff;
        break;
      case 2:
        out[at] = rng.pick([0, 0xff, 0x7f, 0x80]);
        break;
      default:
        if (at + 4 <= out.length) out.writeUInt32LE(rng.pick([0, 0xffffffff, 0x80000000]), at);
    }
  }
  return out;
}

// ------------------------------------------------------------------------------- sheep frames

/**
 * Opcodes a fuzz frame may carry. The protocol has no authentication (as upstream's), so a frame
 * of SHUTDOWN, KILL_NODE, MAKE_FS, DEL_VDI, ALTER_* ... would legitimately stop the cluster or
 * delete data: those are out, as are cluster ops (each one goes through the membership driver).
 * Undefined opcodes are in.
 */
export const FUZZ_OPS: readonly number[] = [
  Op.CREATE_AND_WRITE_OBJ,
  Op.READ_OBJ,
  Op.WRITE_OBJ,
  Op.REMOVE_OBJ,
  Op.DISCARD_OBJ,
  Op.GET_VDI_INFO,
  Op.READ_VDIS,
  Op.FLUSH_VDI,
  Op.GET_CLUSTER_DEFAULT,
  Op.GET_NODE_LIST,
  Op.STAT_SHEEP,
  Op.STAT_CLUSTER,
  Op.GET_STORE_LIST,
  Op.STAT_RECOVERY,
  Op.GET_OBJ_LIST,
  Op.GET_EPOCH,
  Op.CREATE_AND_WRITE_PEER,
  Op.READ_PEER,
  Op.WRITE_PEER,
  Op.WRITE_RUNS_PEER,
  Op.REMOVE_PEER,
  Op.GET_VDI_COPIES,
  Op.MD_INFO,
  Op.GET_HASH,
  Op.STAT,
  Op.GET_LOGLEVEL,
  Op.EXIST,
  Op.CLUSTER_INFO,
  Op.OIDS_EXIST,
  Op.READ_DEL_VDIS,
  Op.GET_RECOVERY,
  Op.GET_VNODES,
  // undefined opcodes
  0x00,
  0x30,
  0x7f,
  0xd0,
  0xff,
];

const DEFINED = new Set<number>(Object.values(Op));
const ALLOWED = new Set<number>(FUZZ_OPS);

function allowed(op: number): boolean {
  return ALLOWED.has(op) || !DEFINED.has(op);
}

/** One request frame (header + payload as the generator intends it; may be garbage). */
export function sheepFrame(rng: Rng): Buffer {
  const kind = rng.int(10);
  if (kind === 0) return rng.bytes(rng.range(1, 200)); // random bytes
  const h = Buffer.alloc(SD_REQ_SIZE);
  const op = rng.pick(FUZZ_OPS);
  h[0] = op >= 0x80 ? SD_SHEEP_PROTO_VER : SD_PROTO_VER;
  h[1] = op;
  h.writeUInt32LE(rng.chance(0.5) ? rng.int(8) : rng.u32(), 4); // epoch
  h.writeUInt32LE(rng.u32(), 8); // id
  // oid: mostly plausible (data or vdi object of a random vid), sometimes anything.
  const vid = rng.int(1 << 24);
  const hi = rng.chance(0.2) ? rng.u32() : ((rng.chance(0.3) ? 0x80000000 : 0) | vid) >>> 0;
  h.writeUInt32LE(rng.chance(0.5) ? rng.int(1024) : rng.u32(), 16);
  h.writeUInt32LE(hi, 20);
  for (let i = 24; i < 48; i++) h[i] = rng.chance(0.7) ? 0 : rng.u32() & 0xff;
  h.writeUInt32LE(rng.chance(0.7) ? rng.int(1 << 22) : rng.u32(), 40); // offset
  let payload = 0;
  switch (kind) {
    case 1: // huge data_length, write flag: the server must refuse, not wait for or allocate it
      h.writeUInt16LE(Flag.CMD_WRITE | (rng.u32() & 0xfffe), 2);
      h.writeUInt32LE(rng.range(MAX_PAYLOAD + 1, 0xffffffff), 12);
      return h;
    case 2: // bad protocol version
      h[0] = rng.pick([0, 1, 3, 0x09, 0x0b, 0xff]);
      break;
    case 3: // huge data_length on a read: a reply buffer the server must not allocate blindly
      h.writeUInt32LE(rng.chance(0.5) ? 0xffffffff : rng.range(1 << 22, 0xffffffff), 12);
      return h;
    case 4: // write flag with a length but no payload: the next frames become the payload
      h.writeUInt16LE(Flag.CMD_WRITE, 2);
      h.writeUInt32LE(rng.range(1, 4096), 12);
      return h;
    case 5: // truncated header
      return h.subarray(0, rng.range(1, SD_REQ_SIZE - 1));
    default:
      break;
  }
  const write = rng.chance(0.5);
  const flags = (rng.chance(0.5) ? 0 : rng.u32() & 0xffff) & ~Flag.CMD_WRITE;
  h.writeUInt16LE(flags | (write ? Flag.CMD_WRITE : 0), 2);
  if (write) payload = rng.chance(0.9) ? rng.int(512) : rng.range(512, 70_000);
  h.writeUInt32LE(write ? payload : (rng.chance(0.5) ? rng.int(4096) : rng.int(1 << 22)), 12);
  let frame: Buffer = payload ? Buffer.concat([h, rng.bytes(payload)]) : h;
  if (kind >= 8) frame = mutate(rng, frame);
  return frame;
}

/** vid (bits 32..55) of the 64-bit oid at `at`. */
function oidVid(b: Buffer, at: number): number {
  return b.readUInt32LE(at + 4) & 0xffffff;
}

/**
 * Walks `stream` the way the daemon's FrameParser splits it and rewrites what must not reach the
 * cluster: opcodes outside FUZZ_OPS, and requests on objects of the protected VDIs. Stops where the
 * server would close the connection (a payload over MAX_PAYLOAD). Returns the number of headers.
 */
export function sanitizeSheepStream(stream: Buffer, protectedVids: ReadonlySet<number>): number {
  let pos = 0;
  let headers = 0;
  while (pos + SD_REQ_SIZE <= stream.length) {
    headers++;
    if (!allowed(stream[pos + 1])) stream[pos + 1] = Op.READ_OBJ;
    // Every request view keeps an oid (or a vdi size) at 16 and a cow oid at 24; bit 0 of the
    // vid moves any object of a protected VDI into another one.
    for (const at of [16, 24]) {
      while (protectedVids.has(oidVid(stream, pos + at))) stream[pos + at + 4] ^= 1;
    }
    const flags = stream.readUInt16LE(pos + 2);
    const len = flags & Flag.CMD_WRITE ? stream.readUInt32LE(pos + 12) : 0;
    if (len > MAX_PAYLOAD) break;
    pos += SD_REQ_SIZE + len;
  }
  return headers;
}

// ---------------------------------------------------------------------------------- NBD streams

function u32be(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

function option(opt: number, data: Buffer, declared = data.length): Buffer {
  const b = Buffer.allocUnsafe(16);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(opt >>> 0, 8);
  b.writeUInt32BE(declared >>> 0, 12);
  return Buffer.concat([b, data]);
}

function goData(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name, "utf8");
  const b = Buffer.allocUnsafe(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((x, i) => b.writeUInt16BE(x, 6 + n.length + 2 * i));
  return b;
}

function nbdRequest(flags: number, type: number, handle: number, offset: number, length: number) {
  const b = Buffer.allocUnsafe(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags & 0xffff, 4);
  b.writeUInt16BE(type & 0xffff, 6);
  b.writeBigUInt64BE(BigInt(handle >>> 0), 8);
  b.writeBigUInt64BE(BigInt(Math.floor(offset)), 16);
  b.writeUInt32BE(length >>> 0, 24);
  return b;
}

export interface NbdTarget {
  /** The export the fuzzer may write to (never the one whose content a test checks). */
  exportName: string;
  exportSize: number;
}

/**
 * One connection's worth of client bytes: client flags, handshake options (valid, unknown,
 * oversized, bad magic, malformed GO/INFO/meta-context), and when the handshake reaches GO on
 * the target export, transmission requests (reads in and past the end, huge lengths, unknown
 * commands, bad magic, truncated writes). `frames` counts the options and requests.
 */
export function nbdStream(
  rng: Rng,
  t: NbdTarget,
  maxFrames: number,
): { bytes: Buffer; frames: number } {
  const parts: Buffer[] = [];
  let frames = 0;
  parts.push(u32be(rng.chance(0.85) ? rng.pick([1, 3]) : rng.u32()));
  let inTransmission = false;
  while (frames < maxFrames && !inTransmission) {
    frames++;
    const k = rng.int(12);
    if (k === 0) parts.push(rng.bytes(rng.range(1, 64))); // bad magic (almost surely)
    else if (k === 1) {
      // oversized option: declared length past the server's limit, some of it sent
      const declared = rng.range(64 * 1024 + 1, rng.chance(0.5) ? 1 << 20 : 0xffffffff);
      parts.push(
        option(rng.pick([Opt.GO, Opt.INFO, Opt.LIST, 99]), rng.bytes(rng.int(2048)), declared),
      );
    } else if (k === 2) parts.push(option(rng.u32(), rng.bytes(rng.int(64)))); // unknown option
    else if (k === 3) {
      parts.push(option(Opt.LIST, rng.chance(0.8) ? Buffer.alloc(0) : rng.bytes(8)));
    } else if (k === 4) {
      parts.push(option(Opt.STRUCTURED_REPLY, rng.chance(0.8) ? Buffer.alloc(0) : rng.bytes(4)));
    } else if (k === 5) {
      const d = goData(rng.chance(0.5) ? t.exportName : rng.bytes(8).toString("hex"), [0, 1, 2, 3]);
      parts.push(option(Opt.INFO, rng.chance(0.3) ? mutate(rng, d) : d));
    } else if (k === 6) {
      // SET/LIST_META_CONTEXT with a maybe-lying query count or length
      const n = Buffer.from(t.exportName);
      const q = Buffer.from(rng.pick(["base:allocation", "base:", "qemu:dirty-bitmap:x", ""]));
      const d = Buffer.concat([
        u32be(n.length),
        n,
        u32be(rng.chance(0.7) ? 1 : rng.u32()),
        u32be(q.length),
        q,
      ]);
      parts.push(
        option(
          rng.pick([Opt.SET_META_CONTEXT, Opt.LIST_META_CONTEXT]),
          rng.chance(0.3) ? mutate(rng, d) : d,
        ),
      );
    } else if (k === 7) parts.push(mutate(rng, option(Opt.GO, goData(t.exportName, [])))); // mutated GO
    else if (k === 8) parts.push(option(Opt.EXTENDED_HEADERS, Buffer.alloc(0)));
    else if (k === 9 && rng.chance(0.2)) {
      parts.push(option(Opt.ABORT, Buffer.alloc(0)));
      return { bytes: Buffer.concat(parts), frames };
    } else {
      // GO (or the old EXPORT_NAME) on the target export: on to transmission
      if (rng.chance(0.8)) {
        parts.push(option(Opt.GO, goData(t.exportName, rng.chance(0.5) ? [] : [3])));
      } else parts.push(option(Opt.EXPORT_NAME, Buffer.from(t.exportName)));
      inTransmission = true;
    }
  }
  const size = t.exportSize;
  while (frames < maxFrames) {
    frames++;
    const handle = rng.u32();
    const k = rng.int(14);
    if (k === 0) parts.push(rng.bytes(28)); // bad magic
    else if (k === 1) {
      parts.push(nbdRequest(0, Cmd.READ, handle, rng.int(size), rng.range(1, 65536)));
    } else if (k === 2) {
      parts.push(nbdRequest(0, Cmd.READ, handle, size - rng.int(4096), rng.range(1, 1 << 20))); // past the end
    } else if (k === 3) parts.push(nbdRequest(0, Cmd.READ, handle, rng.u32() * 65536, rng.u32())); // huge
    else if (k === 4) {
      parts.push(nbdRequest(rng.u32(), rng.range(9, 0xffff), handle, rng.u32(), rng.u32())); // unknown command
    } else if (k === 5) {
      const len = rng.range(1, 8192);
      parts.push(nbdRequest(0, Cmd.WRITE, handle, rng.int(size), len), rng.bytes(len));
    } else if (k === 6) {
      parts.push(nbdRequest(0, Cmd.WRITE, handle, rng.int(size), rng.range(1 << 26, 0xffffffff))); // huge write
    } else if (k === 7) {
      // write with a plausible length but only part of the payload: the stream ends inside it
      const len = rng.range(4096, 1 << 22);
      parts.push(nbdRequest(0, Cmd.WRITE, handle, rng.int(size), len), rng.bytes(rng.int(1024)));
      break;
    } else if (k === 8) {
      parts.push(
        nbdRequest(
          rng.int(64),
          rng.pick([Cmd.FLUSH, Cmd.TRIM, Cmd.CACHE]),
          handle,
          rng.int(size * 2),
          rng.u32(),
        ),
      );
    } else if (k === 9) {
      parts.push(
        nbdRequest(rng.int(64), Cmd.WRITE_ZEROES, handle, rng.int(size * 2), rng.range(0, 1 << 24)),
      );
    } else if (k === 10) {
      parts.push(nbdRequest(rng.int(16), Cmd.BLOCK_STATUS, handle, rng.int(size * 2), rng.u32()));
    } else if (k === 11) {
      parts.push(mutate(rng, nbdRequest(0, Cmd.READ, handle, rng.int(size), rng.range(1, 4096))));
    } else if (k === 12) {
      parts.push(nbdRequest(rng.int(0x10000), Cmd.READ, handle, rng.int(size), rng.range(0, 4096))); // bad flags
    } else if (rng.chance(0.1)) {
      parts.push(nbdRequest(0, Cmd.DISC, handle, 0, 0));
      break;
    } else parts.push(nbdRequest(0, Cmd.READ, handle, 0, 512));
  }
  return { bytes: Buffer.concat(parts), frames };
}
