// Sheepdog 1.0 wire protocol: 48-byte little-endian headers, opcodes, flags, result codes.
// Layout facts come from shared/spec/protocol.md; every integer is little-endian on the wire.
import { ByteQueue } from "./byte-queue.ts";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";

export const SD_REQ_SIZE = 48;
export const SD_RSP_SIZE = 48;
export const SD_PROTO_VER = 0x02;
export const SD_SHEEP_PROTO_VER = 0x0a;
export const SD_LISTEN_PORT = 7000;
/** Largest payload we accept on one request; a full object at shift 22 plus inode (12.6 MB) fits. */
export const MAX_PAYLOAD = 64 * 1024 * 1024;

export const Op = {
  CREATE_AND_WRITE_OBJ: 0x01,
  READ_OBJ: 0x02,
  WRITE_OBJ: 0x03,
  REMOVE_OBJ: 0x04,
  DISCARD_OBJ: 0x05,
  NEW_VDI: 0x11,
  LOCK_VDI: 0x12,
  RELEASE_VDI: 0x13,
  GET_VDI_INFO: 0x14,
  READ_VDIS: 0x15,
  FLUSH_VDI: 0x16,
  DEL_VDI: 0x17,
  GET_CLUSTER_DEFAULT: 0x18,
  GET_NODE_LIST: 0x82,
  MAKE_FS: 0x84,
  SHUTDOWN: 0x85,
  STAT_SHEEP: 0x86,
  STAT_CLUSTER: 0x87,
  GET_VDI_ATTR: 0x89,
  FORCE_RECOVER: 0x8a,
  GET_STORE_LIST: 0x90,
  CLEANUP: 0x94,
  STAT_RECOVERY: 0x97,
  FLUSH_DEL_CACHE: 0x98,
  NOTIFY_VDI_DEL: 0x99,
  KILL_NODE: 0x9a,
  GET_OBJ_LIST: 0xa1,
  GET_EPOCH: 0xa2,
  CREATE_AND_WRITE_PEER: 0xa3,
  READ_PEER: 0xa4,
  WRITE_PEER: 0xa5,
  REMOVE_PEER: 0xa6,
  ENABLE_RECOVER: 0xa8,
  DISABLE_RECOVER: 0xa9,
  GET_VDI_COPIES: 0xab,
  COMPLETE_RECOVERY: 0xac,
  NOTIFY_VDI_ADD: 0xaf,
  DELETE_CACHE: 0xb0,
  /** 0.9's object cache (sheep -w): dog vdi cache info / purge. */
  GET_CACHE_INFO: 0xb6,
  CACHE_PURGE: 0xb7,
  MD_INFO: 0xb1,
  MD_PLUG: 0xb2,
  MD_UNPLUG: 0xb3,
  GET_HASH: 0xb4,
  REWEIGHT: 0xb5,
  STAT: 0xb8,
  GET_LOGLEVEL: 0xb9,
  SET_LOGLEVEL: 0xba,
  EXIST: 0xbd,
  CLUSTER_INFO: 0xbe,
  ALTER_CLUSTER_COPY: 0xbf,
  ALTER_VDI_COPY: 0xc0,
  DECREF_OBJ: 0xc1,
  DECREF_PEER: 0xc2,
  REPAIR_REPLICA: 0xc5,
  OIDS_EXIST: 0xc6,
  READ_DEL_VDIS: 0xc9,
  GET_RECOVERY: 0xca,
  SET_RECOVERY: 0xcb,
  SET_VNODES: 0xcc,
  GET_VNODES: 0xcd,
  // Our extensions (no upstream counterpart): background scrub (sheep/scrub.ts).
  SCRUB_START: 0xe0,
  SCRUB_STATUS: 0xe1,
  /** Several runs of one object, one fdatasync (core/write-runs.ts; the object cache's push). */
  WRITE_RUNS_PEER: 0xe2,
} as const;

export const Flag = {
  CMD_WRITE: 0x0001,
  CMD_COW: 0x0002,
  CMD_CACHE: 0x0004,
  CMD_DIRECT: 0x0008,
  CMD_PIGGYBACK: 0x0010,
  CMD_TGT: 0x0020,
  CMD_FWD: 0x0040,
  CMD_RECOVERY: 0x0080,
  CMD_WILDCARD: 0x0100,
  CMD_CREAT: 0x0100,
  CMD_EXCL: 0x0200,
  CMD_DEL: 0x0400,
  /**
   * Ours, not upstream's (its flags end at 0x0400): a WRITE_PEER to apply without its
   * fdatasync, because the same object's next synced write from this gateway covers it (the
   * object cache's push of several runs). Only peer writes honour it; the gateway clears it from
   * every client request, so a client cannot turn durability off.
   */
  CMD_NOSYNC: 0x8000,
} as const;

export const ClusterFlag = {
  STRICT: 0x0001,
  DISKMODE: 0x0002,
  AUTO_VNODES: 0x0004,
  USE_LOCK: 0x0008,
  RECYCLE_VID: 0x0010,
  AVOID_DISKFULL: 0x0020,
} as const;

export const Res = {
  SUCCESS: 0x00,
  UNKNOWN: 0x01,
  NO_OBJ: 0x02,
  EIO: 0x03,
  VDI_EXIST: 0x04,
  INVALID_PARMS: 0x05,
  SYSTEM_ERROR: 0x06,
  VDI_LOCKED: 0x07,
  NO_VDI: 0x08,
  NO_BASE_VDI: 0x09,
  VDI_READ: 0x0a,
  VDI_WRITE: 0x0b,
  BASE_VDI_READ: 0x0c,
  BASE_VDI_WRITE: 0x0d,
  NO_TAG: 0x0e,
  STARTUP: 0x0f,
  VDI_NOT_LOCKED: 0x10,
  SHUTDOWN: 0x11,
  NO_MEM: 0x12,
  FULL_VDI: 0x13,
  VER_MISMATCH: 0x14,
  NO_SPACE: 0x15,
  WAIT_FOR_FORMAT: 0x16,
  WAIT_FOR_JOIN: 0x17,
  JOIN_FAILED: 0x18,
  HALT: 0x19,
  READONLY: 0x1a,
  INODE_INVALIDATED: 0x1d,
  OLD_NODE_VER: 0x81,
  NEW_NODE_VER: 0x82,
  NOT_FORMATTED: 0x83,
  INVALID_CTIME: 0x84,
  INVALID_EPOCH: 0x85,
  NETWORK_ERROR: 0x86,
  NO_CACHE: 0x87,
  BUFFER_SMALL: 0x88,
  FORCE_RECOVER: 0x89,
  NO_STORE: 0x8a,
  NO_SUPPORT: 0x8b,
  NODE_IN_RECOVERY: 0x8c,
  KILLED: 0x8d,
  OID_EXIST: 0x8e,
  AGAIN: 0x8f,
  STALE_OBJ: 0x90,
  CLUSTER_ERROR: 0x91,
  VDI_NOT_EMPTY: 0x92,
  NOT_FOUND: 0x93,
  INCOMPLETE: 0x94,
  COLLECTING_CINFO: 0x95,
  GATEWAY_MODE: 0x97,
  INVALID_VNODES_STRATEGY: 0x98,
  NO_CHECKPOINT_ENTRY: 0x99,
} as const;

const RES_TEXT: Record<number, string> = {
  0x00: "Success",
  0x01: "Unknown error",
  0x02: "No object found",
  0x03: "I/O error",
  0x04: "VDI exists already",
  0x05: "Invalid parameters",
  0x06: "System error",
  0x07: "VDI is already locked",
  0x08: "No VDI found",
  0x09: "No base VDI found",
  0x0a: "Failed to read from requested VDI",
  0x0b: "Failed to write to requested VDI",
  0x0c: "Failed to read from base VDI",
  0x0d: "Failed to write to base VDI",
  0x0e: "Failed to find requested tag",
  0x0f: "System is still booting",
  0x10: "VDI is not locked",
  0x11: "System is shutting down",
  0x12: "Out of memory on server",
  0x13: "Maximum number of VDIs reached",
  0x14: "Protocol version mismatch",
  0x15: "Server has no space for new objects",
  0x16: "Waiting for cluster to be formatted",
  0x17: "Waiting for other nodes to join cluster",
  0x18: "Node has failed to join cluster",
  0x19: "IO has halted as there are not enough living nodes",
  0x1a: "Object is read-only",
  0x1d: "Inode object is invalidated",
  0x81: "Request has an old epoch",
  0x82: "Request has a new epoch",
  0x83: "Cluster has not been formatted",
  0x84: "Creation times differ",
  0x85: "Invalid epoch",
  0x86: "Network error between sheep",
  0x87: "No cache object found",
  0x88: "The buffer is too small",
  0x89: "Cluster is running/halted and cannot be force recovered",
  0x8a: "Targeted backend store is not found",
  0x8b: "Operation is not supported",
  0x8c: "Targeted node is in recovery",
  0x8d: "Node is killed",
  0x8e: "Object ID exists already",
  0x8f: "Ask to try again",
  0x90: "Object may be stale",
  0x91: "Cluster driver error",
  0x97: "Targeted node is gateway mode",
  0x98: "Invalid cluster vnodes strategy",
};

/** dog's sd_strerror(): codes without text print as `Invalid error code <hex>`. */
export function strerror(code: number): string {
  return RES_TEXT[code] ?? `Invalid error code ${code.toString(16)}`;
}

/** Cluster status values of cluster_info.status. */
export const Status = { OK: 1, WAIT: 2, SHUTDOWN: 3, KILLED: 4 } as const;

/**
 * One 48-byte header (request or response). All union views of upstream's sd_req/sd_rsp are
 * exposed as accessors over the same bytes, so a codec never copies fields around.
 */
export class Header {
  readonly b: Buffer;
  constructor(b?: Buffer) {
    this.b = b ?? Buffer.alloc(SD_REQ_SIZE);
  }
  static req(
    opcode: number,
    init: Partial<{ flags: number; dataLength: number; id: number; epoch: number }> = {},
  ): Header {
    const h = new Header();
    h.protoVer = opcode >= 0x80 ? SD_SHEEP_PROTO_VER : SD_PROTO_VER;
    h.opcode = opcode;
    h.flags = init.flags ?? 0;
    h.dataLength = init.dataLength ?? 0;
    h.id = init.id ?? 0;
    h.epoch = init.epoch ?? 0;
    return h;
  }
  clone(): Header {
    return new Header(Buffer.from(this.b));
  }
  // common part
  get protoVer() {
    return this.b[0];
  }
  set protoVer(v: number) {
    this.b[0] = v;
  }
  get opcode() {
    return this.b[1];
  }
  set opcode(v: number) {
    this.b[1] = v;
  }
  get flags() {
    return this.b.readUInt16LE(2);
  }
  set flags(v: number) {
    this.b.writeUInt16LE(v, 2);
  }
  get epoch() {
    return this.b.readUInt32LE(4);
  }
  set epoch(v: number) {
    this.b.writeUInt32LE(v >>> 0, 4);
  }
  get id() {
    return this.b.readUInt32LE(8);
  }
  set id(v: number) {
    this.b.writeUInt32LE(v >>> 0, 8);
  }
  get dataLength() {
    return this.b.readUInt32LE(12);
  }
  set dataLength(v: number) {
    this.b.writeUInt32LE(v >>> 0, 12);
  }
  // obj view (requests)
  get oid(): bigint {
    return this.b.readBigUInt64LE(16);
  }
  set oid(v: bigint) {
    this.b.writeBigUInt64LE(v, 16);
  }
  get cowOid(): bigint {
    return this.b.readBigUInt64LE(24);
  }
  set cowOid(v: bigint) {
    this.b.writeBigUInt64LE(v, 24);
  }
  get objCopies() {
    return this.b[32];
  }
  set objCopies(v: number) {
    this.b[32] = v;
  }
  get objCopyPolicy() {
    return this.b[33];
  }
  set objCopyPolicy(v: number) {
    this.b[33] = v;
  }
  get ecIndex() {
    return this.b[34];
  }
  set ecIndex(v: number) {
    this.b[34] = v;
  }
  get tgtEpoch() {
    return this.b.readUInt32LE(36);
  }
  set tgtEpoch(v: number) {
    this.b.writeUInt32LE(v >>> 0, 36);
  }
  get offset() {
    return this.b.readUInt32LE(40);
  }
  set offset(v: number) {
    this.b.writeUInt32LE(v >>> 0, 40);
  }
  // vdi view (requests)
  get vdiSize(): bigint {
    return this.b.readBigUInt64LE(16);
  }
  set vdiSize(v: bigint) {
    this.b.writeBigUInt64LE(v, 16);
  }
  get baseVdiId() {
    return this.b.readUInt32LE(24);
  }
  set baseVdiId(v: number) {
    this.b.writeUInt32LE(v >>> 0, 24);
  }
  get vdiCopies() {
    return this.b[28];
  }
  set vdiCopies(v: number) {
    this.b[28] = v;
  }
  get vdiCopyPolicy() {
    return this.b[29];
  }
  set vdiCopyPolicy(v: number) {
    this.b[29] = v;
  }
  get storePolicy() {
    return this.b[30];
  }
  set storePolicy(v: number) {
    this.b[30] = v;
  }
  get vdiBlockSizeShift() {
    return this.b[31];
  }
  set vdiBlockSizeShift(v: number) {
    this.b[31] = v;
  }
  get snapid() {
    return this.b.readUInt32LE(32);
  }
  set snapid(v: number) {
    this.b.writeUInt32LE(v >>> 0, 32);
  }
  get lockType() {
    return this.b.readUInt32LE(36);
  }
  set lockType(v: number) {
    this.b.writeUInt32LE(v >>> 0, 36);
  }
  // cluster view (requests)
  get clusterCtime(): bigint {
    return this.b.readBigUInt64LE(24);
  }
  set clusterCtime(v: bigint) {
    this.b.writeBigUInt64LE(v, 24);
  }
  get clusterCopies() {
    return this.b[32];
  }
  set clusterCopies(v: number) {
    this.b[32] = v;
  }
  get clusterCopyPolicy() {
    return this.b[33];
  }
  set clusterCopyPolicy(v: number) {
    this.b[33] = v;
  }
  get clusterFlags() {
    return this.b.readUInt16LE(34);
  }
  set clusterFlags(v: number) {
    this.b.writeUInt16LE(v, 34);
  }
  get nodesNr() {
    return this.b.readUInt32LE(40);
  }
  set nodesNr(v: number) {
    this.b.writeUInt32LE(v >>> 0, 40);
  }
  get clusterBlockSizeShift() {
    return this.b[44];
  }
  set clusterBlockSizeShift(v: number) {
    this.b[44] = v;
  }
  // response views
  get result() {
    return this.b.readUInt32LE(16);
  }
  set result(v: number) {
    this.b.writeUInt32LE(v >>> 0, 16);
  }
  get rspObjOffset(): bigint {
    return this.b.readBigUInt64LE(24);
  }
  set rspObjOffset(v: bigint) {
    this.b.writeBigUInt64LE(v, 24);
  }
  get rspVdiId() {
    return this.b.readUInt32LE(24);
  }
  set rspVdiId(v: number) {
    this.b.writeUInt32LE(v >>> 0, 24);
  }
  get rspAttrId() {
    return this.b.readUInt32LE(28);
  }
  set rspAttrId(v: number) {
    this.b.writeUInt32LE(v >>> 0, 28);
  }
  get rspVdiCopies() {
    return this.b[32];
  }
  set rspVdiCopies(v: number) {
    this.b[32] = v;
  }
  get rspVdiBlockSizeShift() {
    return this.b[33];
  }
  set rspVdiBlockSizeShift(v: number) {
    this.b[33] = v;
  }
  get rspNrNodes() {
    return this.b.readUInt32LE(20);
  }
  set rspNrNodes(v: number) {
    this.b.writeUInt32LE(v >>> 0, 20);
  }
  get storeSize(): bigint {
    return this.b.readBigUInt64LE(32);
  }
  set storeSize(v: bigint) {
    this.b.writeBigUInt64LE(v, 32);
  }
  get storeFree(): bigint {
    return this.b.readBigUInt64LE(40);
  }
  set storeFree(v: bigint) {
    this.b.writeBigUInt64LE(v, 40);
  }
  get digest(): Buffer {
    return this.b.subarray(24, 44);
  }
  get defNrCopies() {
    return this.b[20];
  }
  set defNrCopies(v: number) {
    this.b[20] = v;
  }
  get defCopyPolicy() {
    return this.b[21];
  }
  set defCopyPolicy(v: number) {
    this.b[21] = v;
  }
  get defBlockSizeShift() {
    return this.b[22];
  }
  set defBlockSizeShift(v: number) {
    this.b[22] = v;
  }
}

export interface Frame {
  hdr: Header;
  /** Payload bytes (empty when none). */
  data: Buffer;
}

export class ProtocolError extends Error {}

/**
 * Incremental frame parser. Accepts bytes split at any point. For requests a payload follows only
 * when the WRITE flag is set; for responses `dataLength` bytes always follow.
 */
export class FrameParser {
  private readonly q = new ByteQueue();
  private hdr: Header | null = null;
  private need = SD_REQ_SIZE;
  constructor(
    private readonly kind: "request" | "response",
    private readonly maxPayload = MAX_PAYLOAD,
  ) {}

  /** Feed bytes; returns every frame completed by them. Throws ProtocolError on garbage. */
  push(chunk: Buffer): Frame[] {
    const out: Frame[] = [];
    this.q.push(chunk);
    while (this.q.length >= this.need) {
      const bytes = this.q.take(this.need);
      if (!this.hdr) {
        const hdr = new Header(bytes);
        const plen = this.payloadLength(hdr);
        if (plen > this.maxPayload) throw new ProtocolError(`payload length ${plen} exceeds limit`);
        if (plen === 0) {
          out.push({ hdr, data: EMPTY });
          this.need = SD_REQ_SIZE;
        } else {
          this.hdr = hdr;
          this.need = plen;
        }
      } else {
        out.push({ hdr: this.hdr, data: bytes });
        this.hdr = null;
        this.need = SD_REQ_SIZE;
      }
    }
    return out;
  }

  /** Bytes buffered but not yet part of a complete frame. */
  get pending(): number {
    return this.q.length;
  }

  private payloadLength(h: Header): number {
    if (this.kind === "response") return h.dataLength;
    return h.flags & Flag.CMD_WRITE ? h.dataLength : 0;
  }
}

export const EMPTY = Buffer.alloc(0);

/** Fixed-size NUL-padded string field (name/tag: 256 bytes). */
export function fixedString(s: string, size = 256): Buffer {
  const b = Buffer.alloc(size);
  b.write(s, 0, size, "utf8");
  return b;
}

/** Reads a NUL-padded string field (strncmp semantics over the full field). */
export function readFixedString(b: Buffer, off = 0, size = 256): string {
  const f = b.subarray(off, off + size);
  const z = f.indexOf(0);
  return f.subarray(0, z < 0 ? f.length : z).toString("utf8");
}

/** ctime-style timestamp of `ms` since the epoch: high 32 bits seconds, low 32 bits nanoseconds. */
export function ctimeOf(ms: number): bigint {
  const sec = BigInt(Math.floor(ms / 1000));
  const nsec = BigInt((ms % 1000) * 1_000_000);
  return (sec << 32n) | nsec;
}

/** The digest GET_HASH answers for an object's bytes (`Header.digest`): upstream's SHA-1. */
export function objectDigest(data: Uint8Array): Buffer {
  return createHash("sha1").update(data).digest();
}
