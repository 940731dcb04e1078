// NBD protocol codec (NetworkBlockDevice doc/proto.md): constants, incremental parsers that accept
// bytes split anywhere, and reply encoders. Unlike Sheepdog's own protocol, NBD is big-endian.
import { ByteQueue } from "./byte-queue.ts";
import { Buffer } from "node:buffer";

export const NBD_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const EXTENDED_REQUEST_MAGIC = 0x21e41c71;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const CHUNK_HEADER_SIZE = 20;
/** proto.md: strings (names, messages) MUST be no longer than 4096 bytes. */
export const MAX_STRING = 4096;

/** Handshake flags (server, 16 bits). */
export const HandshakeFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;
/** Client flags (32 bits). */
export const ClientFlag = { FIXED_NEWSTYLE: 1 << 0, NO_ZEROES: 1 << 1 } as const;

/** Transmission flags (16 bits). */
export const TxFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERR = 0x80000000;
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

export const CmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5,
} as const;

export const ReplyFlag = { DONE: 1 << 0 } as const;

export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  BLOCK_STATUS_EXT: 6,
  ERROR: (1 << 15) + 1,
  ERROR_OFFSET: (1 << 15) + 2,
} as const;

/** base:allocation status flags. */
export const StateFlag = { HOLE: 1 << 0, ZERO: 1 << 1 } as const;

export const Err = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

export const BASE_ALLOCATION = "base:allocation";

/** The peer broke the protocol in a way the byte stream cannot recover from. */
export class NbdProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NbdProtocolError";
  }
}

const TWO32 = 4294967296;

/** Reads a u64 as a number; values past 2^53 lose precision but stay past any export size. */
function readU64(b: Buffer, at: number): number {
  return b.readUInt32BE(at) * TWO32 + b.readUInt32BE(at + 4);
}

function writeU64(b: Buffer, v: number, at: number): void {
  const hi = Math.floor(v / TWO32);
  b.writeUInt32BE(hi >>> 0, at);
  b.writeUInt32BE(v - hi * TWO32, at + 4);
}

// ---------------------------------------------------------------------------------------------
// Handshake phase

export type HandshakeEvent =
  | { kind: "clientFlags"; flags: number }
  | { kind: "option"; option: number; data: Buffer }
  /** An option whose data exceeded maxOptionLength; its data was discarded. */
  | { kind: "oversizedOption"; option: number; length: number };

/**
 * Parses what the client sends during the handshake: its 32-bit flags, then options. Pull-style
 * (push bytes, then call next()) so that the server can stop right after NBD_OPT_GO and hand the
 * remaining bytes (takeRest()) to the transmission-phase parser.
 */
export class HandshakeParser {
  private q = new ByteQueue();
  private state: "flags" | "header" | "data" | "skip" = "flags";
  private option = 0;
  private need = 0;
  private skipTotal = 0;
  readonly maxOptionLength: number;

  constructor(opts: { maxOptionLength?: number } = {}) {
    this.maxOptionLength = opts.maxOptionLength ?? 64 * 1024;
  }

  /** Bytes received but not yet consumed. */
  get buffered(): number {
    return this.q.length;
  }

  push(chunk: Buffer): void {
    this.q.push(chunk);
  }

  /** The next complete event, or null when more bytes are needed. Throws NbdProtocolError. */
  next(): HandshakeEvent | null {
    for (;;) {
      switch (this.state) {
        case "flags": {
          if (this.q.length < 4) return null;
          const flags = this.q.take(4).readUInt32BE(0);
          this.state = "header";
          return { kind: "clientFlags", flags };
        }
        case "header": {
          if (this.q.length < 16) return null;
          const h = this.q.take(16);
          if (h.readBigUInt64BE(0) !== IHAVEOPT) throw new NbdProtocolError("bad option magic");
          this.option = h.readUInt32BE(8);
          const len = h.readUInt32BE(12);
          if (len > this.maxOptionLength) {
            this.state = "skip";
            this.need = len;
            this.skipTotal = len;
          } else {
            this.state = "data";
            this.need = len;
          }
          continue;
        }
        case "data": {
          if (this.q.length < this.need) return null;
          const data = this.q.take(this.need);
          this.state = "header";
          return { kind: "option", option: this.option, data };
        }
        case "skip": {
          const k = Math.min(this.need, this.q.length);
          this.q.skip(k);
          this.need -= k;
          if (this.need > 0) return null;
          this.state = "header";
          return { kind: "oversizedOption", option: this.option, length: this.skipTotal };
        }
      }
    }
  }

  /** Removes and returns every unconsumed byte (e.g. requests pipelined after NBD_OPT_GO). */
  takeRest(): Buffer {
    return this.q.take(this.q.length);
  }
}

/** Data of NBD_OPT_INFO / NBD_OPT_GO; null when malformed. */
export function parseInfoRequest(data: Buffer): { name: string; infos: number[] } | null {
  if (data.length < 6) return null;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6 || nameLen > MAX_STRING) return null;
  const name = data.toString("utf8", 4, 4 + nameLen);
  const n = data.readUInt16BE(4 + nameLen);
  if (data.length !== 4 + nameLen + 2 + 2 * n) return null;
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { name, infos };
}

/** Data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT; null when malformed. */
export function parseMetaContextRequest(
  data: Buffer,
): { exportName: string; queries: string[] } | null {
  if (data.length < 8) return null;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8 || nameLen > MAX_STRING) return null;
  const exportName = data.toString("utf8", 4, 4 + nameLen);
  let pos = 4 + nameLen;
  const count = data.readUInt32BE(pos);
  pos += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - pos < 4) return null;
    const qlen = data.readUInt32BE(pos);
    pos += 4;
    if (qlen > data.length - pos || qlen > MAX_STRING) return null;
    queries.push(data.toString("utf8", pos, pos + qlen));
    pos += qlen;
  }
  return pos === data.length ? { exportName, queries } : null;
}

/** Server greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.allocUnsafe(18);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

export function encodeOptionReply(
  option: number,
  replyType: number,
  data?: Buffer | string,
): Buffer {
  const payload = typeof data === "string" ? Buffer.from(data, "utf8") : data ?? Buffer.alloc(0);
  const b = Buffer.allocUnsafe(20 + payload.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(replyType >>> 0, 12);
  b.writeUInt32BE(payload.length, 16);
  payload.copy(b, 20);
  return b;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, txFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  writeU64(b, size, 0);
  b.writeUInt16BE(txFlags, 8);
  return b;
}

/** NBD_REP_SERVER payload. */
export function encodeRepServer(name: string, description?: string): Buffer {
  const n = Buffer.from(name, "utf8");
  const d = Buffer.from(description ?? "", "utf8");
  const b = Buffer.allocUnsafe(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

/** NBD_REP_INFO payloads. */
export function encodeInfoExport(size: number, txFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  writeU64(b, size, 2);
  b.writeUInt16BE(txFlags, 10);
  return b;
}

export function encodeInfoString(
  type: typeof Info.NAME | typeof Info.DESCRIPTION,
  s: string,
): Buffer {
  const t = Buffer.from(s, "utf8");
  const b = Buffer.allocUnsafe(2 + t.length);
  b.writeUInt16BE(type, 0);
  t.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(min: number, pref: number, max: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(min >>> 0, 2);
  b.writeUInt32BE(pref >>> 0, 6);
  b.writeUInt32BE(max >>> 0, 10);
  return b;
}

/** NBD_REP_META_CONTEXT payload. */
export function encodeRepMetaContext(id: number, name: string): Buffer {
  const n = Buffer.from(name, "utf8");
  const b = Buffer.allocUnsafe(4 + n.length);
  b.writeUInt32BE(id >>> 0, 0);
  n.copy(b, 4);
  return b;
}

// Client-side handshake encoders (tests, tools).

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(16 + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, 16);
  return b;
}

export function encodeInfoRequest(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name, "utf8");
  const b = Buffer.allocUnsafe(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

export function encodeMetaContextRequest(exportName: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(exportName, "utf8");
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(n.length, 0);
  parts.push(head, n);
  const cnt = Buffer.allocUnsafe(4);
  cnt.writeUInt32BE(queries.length, 0);
  parts.push(cnt);
  for (const q of queries) {
    const qb = Buffer.from(q, "utf8");
    const l = Buffer.allocUnsafe(4);
    l.writeUInt32BE(qb.length, 0);
    parts.push(l, qb);
  }
  return Buffer.concat(parts);
}

/** Client-side: one option reply from the start of buf, or null if incomplete. */
export function decodeOptionReply(
  buf: Buffer,
): { option: number; type: number; data: Buffer; size: number } | null {
  if (buf.length < 20) return null;
  if (buf.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) {
    throw new NbdProtocolError("bad option reply magic");
  }
  const len = buf.readUInt32BE(16);
  if (buf.length < 20 + len) return null;
  return {
    option: buf.readUInt32BE(8),
    type: buf.readUInt32BE(12),
    data: buf.subarray(20, 20 + len),
    size: 20 + len,
  };
}

// ---------------------------------------------------------------------------------------------
// Transmission phase: requests

export interface NbdRequest {
  flags: number;
  type: number;
  handle: bigint;
  /** Offsets past 2^53 are imprecise but still beyond any export's end. */
  offset: number;
  length: number;
  /** The payload of NBD_CMD_WRITE (may be a view into a received chunk). */
  data?: Buffer;
  /** True when data came from the parser's allocator (see RequestParser's `alloc`). */
  allocated?: boolean;
}

/**
 * Incremental parser of transmission-phase requests. Throws NbdProtocolError on a bad magic or a
 * write payload larger than maxWritePayload; the stream cannot be resynchronised after that, and
 * every later push() throws too.
 */
export class RequestParser {
  readonly maxWritePayload: number;
  private hdr = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  private hdrFill = 0;
  private pending: NbdRequest | null = null;
  private payload: Buffer | null = null;
  private payloadFill = 0;
  private held: Buffer[] = [];
  private heldBytes = 0;
  private failed: NbdProtocolError | null = null;
  private readonly alloc: (n: number) => Buffer;

  /**
   * alloc provides buffers for write payloads that span chunks (default Buffer.allocUnsafe);
   * requests whose data came from it are marked `allocated` so the caller can recycle them.
   */
  constructor(opts: { maxWritePayload: number; alloc?: (n: number) => Buffer }) {
    this.maxWritePayload = opts.maxWritePayload;
    this.alloc = opts.alloc ?? Buffer.allocUnsafe;
  }

  /** Bytes held for an incomplete request (header or write payload). */
  get buffered(): number {
    return this.hdrFill + (this.payload ? this.payload.length : this.heldBytes);
  }

  push(chunk: Buffer): NbdRequest[] {
    if (this.failed) throw this.failed;
    const out: NbdRequest[] = [];
    const len = chunk.length;
    let pos = 0;
    while (pos < len) {
      if (this.pending && !this.payload) {
        // A declared length is only a claim: hold the chunks (no copy) until half of it is here.
        const n = Math.min(this.pending.length - this.heldBytes, len - pos);
        this.held.push(chunk.subarray(pos, pos + n));
        this.heldBytes += n;
        pos += n;
        if (2 * this.heldBytes < this.pending.length) continue;
        this.payload = this.alloc(this.pending.length);
        this.pending.allocated = true;
        for (const b of this.held) {
          b.copy(this.payload, this.payloadFill), this.payloadFill += b.length;
        }
        this.held = [];
        this.heldBytes = 0;
      }
      if (this.payload) {
        const n = Math.min(this.payload.length - this.payloadFill, len - pos);
        chunk.copy(this.payload, this.payloadFill, pos, pos + n);
        this.payloadFill += n;
        pos += n;
        if (this.payloadFill === this.payload.length) {
          this.pending!.data = this.payload;
          out.push(this.pending!);
          this.pending = null;
          this.payload = null;
          this.payloadFill = 0;
        }
        continue;
      }
      let h: Buffer;
      let at: number;
      if (this.hdrFill === 0 && len - pos >= REQUEST_HEADER_SIZE) {
        h = chunk;
        at = pos;
        pos += REQUEST_HEADER_SIZE;
      } else {
        const n = Math.min(REQUEST_HEADER_SIZE - this.hdrFill, len - pos);
        chunk.copy(this.hdr, this.hdrFill, pos, pos + n);
        this.hdrFill += n;
        pos += n;
        if (this.hdrFill < REQUEST_HEADER_SIZE) break;
        this.hdrFill = 0;
        h = this.hdr;
        at = 0;
      }
      const magic = h.readUInt32BE(at);
      if (magic !== REQUEST_MAGIC) {
        throw this.fail(
          magic === EXTENDED_REQUEST_MAGIC
            ? "extended request header without negotiation"
            : `bad request magic 0x${magic.toString(16)}`,
        );
      }
      const req: NbdRequest = {
        flags: h.readUInt16BE(at + 4),
        type: h.readUInt16BE(at + 6),
        handle: h.readBigUInt64BE(at + 8),
        offset: readU64(h, at + 16),
        length: h.readUInt32BE(at + 24),
      };
      if (req.type !== Cmd.WRITE) {
        out.push(req);
        continue;
      }
      if (req.length > this.maxWritePayload) {
        throw this.fail(`write payload of ${req.length} bytes exceeds ${this.maxWritePayload}`);
      }
      if (len - pos >= req.length) {
        req.data = chunk.subarray(pos, pos + req.length);
        pos += req.length;
        out.push(req);
      } else {
        this.pending = req;
        this.payloadFill = 0;
      }
    }
    return out;
  }

  private fail(msg: string): NbdProtocolError {
    this.failed = new NbdProtocolError(msg);
    this.pending = null;
    this.payload = null;
    this.held = [];
    this.heldBytes = 0;
    return this.failed;
  }
}

/** Client-side request encoder (tests, tools). */
export function encodeRequest(
  req: { flags?: number; type: number; handle: bigint; offset: number; length: number },
  data?: Buffer,
): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_HEADER_SIZE + (data ? data.length : 0));
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(req.flags ?? 0, 4);
  b.writeUInt16BE(req.type, 6);
  b.writeBigUInt64BE(req.handle, 8);
  writeU64(b, req.offset, 16);
  b.writeUInt32BE(req.length >>> 0, 24);
  if (data) data.copy(b, REQUEST_HEADER_SIZE);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Transmission phase: replies

/** Simple reply header; a successful NBD_CMD_READ's data follows it. */
export function encodeSimpleReply(handle: bigint, error: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error >>> 0, 4);
  b.writeBigUInt64BE(handle, 8);
  return b;
}

function chunkHeader(b: Buffer, flags: number, type: number, handle: bigint, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeUInt32BE(length >>> 0, 16);
}

export function encodeChunkHeader(
  flags: number,
  type: number,
  handle: bigint,
  length: number,
): Buffer {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE);
  chunkHeader(b, flags, type, handle, length);
  return b;
}

/** Header (28 bytes) of an OFFSET_DATA chunk; the caller sends dataLength bytes after it. */
export function encodeOffsetDataHeader(
  flags: number,
  handle: bigint,
  offset: number,
  dataLength: number,
): Buffer {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 8);
  chunkHeader(b, flags, ReplyType.OFFSET_DATA, handle, 8 + dataLength);
  writeU64(b, offset, 20);
  return b;
}

/** A whole OFFSET_DATA chunk in one buffer (copies data; for small payloads). */
export function encodeOffsetData(
  flags: number,
  handle: bigint,
  offset: number,
  data: Buffer,
): Buffer {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 8 + data.length);
  chunkHeader(b, flags, ReplyType.OFFSET_DATA, handle, 8 + data.length);
  writeU64(b, offset, 20);
  data.copy(b, 28);
  return b;
}

export function encodeOffsetHole(
  flags: number,
  handle: bigint,
  offset: number,
  size: number,
): Buffer {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 12);
  chunkHeader(b, flags, ReplyType.OFFSET_HOLE, handle, 12);
  writeU64(b, offset, 20);
  b.writeUInt32BE(size >>> 0, 28);
  return b;
}

export function encodeBlockStatus(
  flags: number,
  handle: bigint,
  contextId: number,
  extents: Array<{ length: number; flags: number }>,
): Buffer {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 4 + 8 * extents.length);
  chunkHeader(b, flags, ReplyType.BLOCK_STATUS, handle, 4 + 8 * extents.length);
  b.writeUInt32BE(contextId >>> 0, 20);
  let at = 24;
  for (const e of extents) {
    b.writeUInt32BE(e.length >>> 0, at);
    b.writeUInt32BE(e.flags >>> 0, at + 4);
    at += 8;
  }
  return b;
}

/** NBD_REPLY_TYPE_ERROR chunk; the message is cut to the 4096-byte string limit. */
export function encodeStructuredError(
  flags: number,
  handle: bigint,
  error: number,
  message = "",
): Buffer {
  let m = Buffer.from(message, "utf8");
  if (m.length > MAX_STRING) m = m.subarray(0, MAX_STRING);
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 6 + m.length);
  chunkHeader(b, flags, ReplyType.ERROR, handle, 6 + m.length);
  b.writeUInt32BE(error >>> 0, 20);
  b.writeUInt16BE(m.length, 24);
  m.copy(b, 26);
  return b;
}

/** NBD_REPLY_TYPE_NONE, always with DONE. */
export function encodeStructuredNone(handle: bigint): Buffer {
  return encodeChunkHeader(ReplyFlag.DONE, ReplyType.NONE, handle, 0);
}

// Client-side reply parsing (tests, tools).

export type NbdReply =
  | { kind: "simple"; handle: bigint; error: number; data?: Buffer }
  | { kind: "chunk"; handle: bigint; flags: number; type: number; payload: Buffer };

/**
 * Incremental parser of server replies. Simple replies carry no length, so readLength(handle)
 * must say how many data bytes follow a successful simple reply (0 or undefined: none).
 */
export class ReplyParser {
  private q = new ByteQueue();
  private failed: NbdProtocolError | null = null;

  constructor(
    private readonly readLength: (handle: bigint) => number | undefined,
    private readonly maxPayload = 64 * 1024 * 1024,
  ) {}

  push(chunk: Buffer): NbdReply[] {
    if (this.failed) throw this.failed;
    this.q.push(chunk);
    const out: NbdReply[] = [];
    while (this.q.length >= 4) {
      const magic = this.q.peek(4).readUInt32BE(0);
      if (magic === SIMPLE_REPLY_MAGIC) {
        if (this.q.length < SIMPLE_REPLY_SIZE) break;
        const h = this.q.peek(SIMPLE_REPLY_SIZE);
        const handle = h.readBigUInt64BE(8);
        const error = h.readUInt32BE(4);
        const dlen = error === 0 ? this.readLength(handle) ?? 0 : 0;
        if (this.q.length < SIMPLE_REPLY_SIZE + dlen) break;
        this.q.skip(SIMPLE_REPLY_SIZE);
        out.push(
          dlen > 0
            ? { kind: "simple", handle, error, data: Buffer.from(this.q.take(dlen)) }
            : { kind: "simple", handle, error },
        );
      } else if (magic === STRUCTURED_REPLY_MAGIC) {
        if (this.q.length < CHUNK_HEADER_SIZE) break;
        const h = this.q.peek(CHUNK_HEADER_SIZE);
        const len = h.readUInt32BE(16);
        if (len > this.maxPayload) {
          this.failed = new NbdProtocolError(`reply chunk of ${len} bytes`);
          throw this.failed;
        }
        if (this.q.length < CHUNK_HEADER_SIZE + len) break;
        const handle = h.readBigUInt64BE(8);
        const flags = h.readUInt16BE(4);
        const type = h.readUInt16BE(6);
        this.q.skip(CHUNK_HEADER_SIZE);
        out.push({ kind: "chunk", handle, flags, type, payload: Buffer.from(this.q.take(len)) });
      } else {
        this.failed = new NbdProtocolError(`bad reply magic 0x${magic.toString(16)}`);
        throw this.failed;
      }
    }
    return out;
  }
}

/** Decodes a structured chunk's payload by type. */
export function decodeChunkPayload(type: number, p: Buffer):
  | { type: "data"; offset: number; data: Buffer }
  | { type: "hole"; offset: number; size: number }
  | { type: "status"; contextId: number; extents: Array<{ length: number; flags: number }> }
  | { type: "error"; error: number; message: string; offset?: number }
  | { type: "none" } {
  switch (type) {
    case ReplyType.NONE:
      return { type: "none" };
    case ReplyType.OFFSET_DATA:
      return { type: "data", offset: readU64(p, 0), data: p.subarray(8) };
    case ReplyType.OFFSET_HOLE:
      return { type: "hole", offset: readU64(p, 0), size: p.readUInt32BE(8) };
    case ReplyType.BLOCK_STATUS: {
      const extents: Array<{ length: number; flags: number }> = [];
      for (let at = 4; at + 8 <= p.length; at += 8) {
        extents.push({ length: p.readUInt32BE(at), flags: p.readUInt32BE(at + 4) });
      }
      return { type: "status", contextId: p.readUInt32BE(0), extents };
    }
    default: {
      if (!(type & 0x8000)) throw new NbdProtocolError(`unknown reply chunk type ${type}`);
      const error = p.readUInt32BE(0);
      const mlen = p.readUInt16BE(4);
      const message = p.toString("utf8", 6, 6 + mlen);
      return type === ReplyType.ERROR_OFFSET
        ? { type: "error", error, message, offset: readU64(p, 6 + mlen) }
        : { type: "error", error, message };
    }
  }
}
