// Inode object codec (`struct sd_inode`, protocol.md §9.3). Little-endian, natural alignment.
import { Buffer } from "node:buffer";
import { fixedString, readFixedString } from "./proto.ts";
import {
  MAX_DATA_OBJS,
  SD_INODE_DATA_INDEX_OFFSET,
  SD_INODE_GREF_OFFSET,
  SD_INODE_HEADER_SIZE,
  SD_INODE_SIZE,
} from "./oid.ts";

export interface InodeHeader {
  name: string;
  tag: string;
  createTime: bigint;
  snapCtime: bigint;
  vmClockNsec: bigint;
  vdiSize: bigint;
  vmStateSize: bigint;
  copyPolicy: number;
  storePolicy: number;
  nrCopies: number;
  blockSizeShift: number;
  snapId: number;
  vdiId: number;
  parentVdiId: number;
  btreeCounter: number;
}

/** Byte offsets of header fields inside the inode object. */
export const InodeOff = {
  name: 0,
  tag: 256,
  createTime: 512,
  snapCtime: 520,
  vmClockNsec: 528,
  vdiSize: 536,
  vmStateSize: 544,
  copyPolicy: 552,
  storePolicy: 553,
  nrCopies: 554,
  blockSizeShift: 555,
  snapId: 556,
  vdiId: 560,
  parentVdiId: 564,
  btreeCounter: 568,
} as const;

/** Size of the prefix QEMU reads (header + data_vdi_id, no gref). */
export const SD_INODE_DATA_END = SD_INODE_GREF_OFFSET;
const GREF_BYTES = SD_INODE_SIZE - SD_INODE_GREF_OFFSET;
const DATA_BYTES = SD_INODE_GREF_OFFSET - SD_INODE_DATA_INDEX_OFFSET;

export function emptyInodeHeader(): InodeHeader {
  return {
    name: "",
    tag: "",
    createTime: 0n,
    snapCtime: 0n,
    vmClockNsec: 0n,
    vdiSize: 0n,
    vmStateSize: 0n,
    copyPolicy: 0,
    storePolicy: 0,
    nrCopies: 0,
    blockSizeShift: 0,
    snapId: 0,
    vdiId: 0,
    parentVdiId: 0,
    btreeCounter: 0,
  };
}

export function decodeInodeHeader(buf: Buffer): InodeHeader {
  if (buf.length < InodeOff.btreeCounter + 4) {
    throw new RangeError(`inode header too short: ${buf.length}`);
  }
  return {
    name: readFixedString(buf, InodeOff.name, 256),
    tag: readFixedString(buf, InodeOff.tag, 256),
    createTime: buf.readBigUInt64LE(InodeOff.createTime),
    snapCtime: buf.readBigUInt64LE(InodeOff.snapCtime),
    vmClockNsec: buf.readBigUInt64LE(InodeOff.vmClockNsec),
    vdiSize: buf.readBigUInt64LE(InodeOff.vdiSize),
    vmStateSize: buf.readBigUInt64LE(InodeOff.vmStateSize),
    copyPolicy: buf[InodeOff.copyPolicy],
    storePolicy: buf[InodeOff.storePolicy],
    nrCopies: buf[InodeOff.nrCopies],
    blockSizeShift: buf[InodeOff.blockSizeShift],
    snapId: buf.readUInt32LE(InodeOff.snapId),
    vdiId: buf.readUInt32LE(InodeOff.vdiId),
    parentVdiId: buf.readUInt32LE(InodeOff.parentVdiId),
    btreeCounter: buf.readUInt32LE(InodeOff.btreeCounter),
  };
}

export function encodeInodeHeader(h: InodeHeader): Buffer {
  const b = Buffer.alloc(SD_INODE_HEADER_SIZE);
  fixedString(h.name, 256).copy(b, InodeOff.name);
  fixedString(h.tag, 256).copy(b, InodeOff.tag);
  b.writeBigUInt64LE(BigInt.asUintN(64, h.createTime), InodeOff.createTime);
  b.writeBigUInt64LE(BigInt.asUintN(64, h.snapCtime), InodeOff.snapCtime);
  b.writeBigUInt64LE(BigInt.asUintN(64, h.vmClockNsec), InodeOff.vmClockNsec);
  b.writeBigUInt64LE(BigInt.asUintN(64, h.vdiSize), InodeOff.vdiSize);
  b.writeBigUInt64LE(BigInt.asUintN(64, h.vmStateSize), InodeOff.vmStateSize);
  b[InodeOff.copyPolicy] = h.copyPolicy & 0xff;
  b[InodeOff.storePolicy] = h.storePolicy & 0xff;
  b[InodeOff.nrCopies] = h.nrCopies & 0xff;
  b[InodeOff.blockSizeShift] = h.blockSizeShift & 0xff;
  b.writeUInt32LE(h.snapId >>> 0, InodeOff.snapId);
  b.writeUInt32LE(h.vdiId >>> 0, InodeOff.vdiId);
  b.writeUInt32LE(h.parentVdiId >>> 0, InodeOff.parentVdiId);
  b.writeUInt32LE(h.btreeCounter >>> 0, InodeOff.btreeCounter);
  return b;
}

/** Copies LE bytes into a typed array (byte-wise; the source may be unaligned). */
function fillTyped(dst: Uint32Array | Int32Array, src: Buffer): void {
  const n = Math.min(src.length, dst.byteLength) & ~3;
  new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength).set(src.subarray(0, n));
  if (!LE_HOST) swap32InPlace(dst, n >> 2);
}

function typedBytes(a: Uint32Array | Int32Array, start: number, end: number): Buffer {
  const out = Buffer.from(a.buffer, a.byteOffset + start * 4, (end - start) * 4);
  if (LE_HOST) return out;
  const copy = Buffer.from(out);
  copy.swap32();
  return copy;
}

const LE_HOST = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function swap32InPlace(a: Uint32Array | Int32Array, n: number): void {
  Buffer.from(a.buffer, a.byteOffset, n * 4).swap32();
}

export class Inode {
  header: InodeHeader;
  /** Flat map idx -> VID owning the data object (B-tree root for hyper volumes). */
  dataVdiId: Uint32Array;
  /** gref[2*i] = generation, gref[2*i+1] = count. */
  gref: Int32Array;

  constructor(header: InodeHeader, dataVdiId?: Uint32Array, gref?: Int32Array) {
    this.header = header;
    this.dataVdiId = dataVdiId ?? new Uint32Array(MAX_DATA_OBJS);
    this.gref = gref ?? new Int32Array(2 * MAX_DATA_OBJS);
  }

  static create(h: InodeHeader): Inode {
    return new Inode({ ...h });
  }

  /** Accepts any prefix of the object (>= the header fields); missing parts read as zero. */
  static decode(buf: Buffer): Inode {
    const ino = new Inode(decodeInodeHeader(buf));
    if (buf.length > SD_INODE_DATA_INDEX_OFFSET) {
      fillTyped(ino.dataVdiId, buf.subarray(SD_INODE_DATA_INDEX_OFFSET, SD_INODE_GREF_OFFSET));
    }
    if (buf.length > SD_INODE_GREF_OFFSET) {
      fillTyped(ino.gref, buf.subarray(SD_INODE_GREF_OFFSET, SD_INODE_SIZE));
    }
    return ino;
  }

  /** Full object image (12,587,576 bytes). */
  encode(): Buffer {
    const b = Buffer.alloc(SD_INODE_SIZE);
    encodeInodeHeader(this.header).copy(b, 0);
    typedBytes(this.dataVdiId, 0, this.dataVdiId.length).copy(b, SD_INODE_DATA_INDEX_OFFSET);
    typedBytes(this.gref, 0, this.gref.length).copy(b, SD_INODE_GREF_OFFSET);
    return b;
  }

  /** Header + data_vdi_id up to the last non-zero slot: enough for a client to read back. */
  encodePrefix(): Buffer {
    const n = this.lastUsedIndex() + 1;
    const b = Buffer.alloc(SD_INODE_DATA_INDEX_OFFSET + 4 * n);
    encodeInodeHeader(this.header).copy(b, 0);
    if (n > 0) typedBytes(this.dataVdiId, 0, n).copy(b, SD_INODE_DATA_INDEX_OFFSET);
    return b;
  }

  /** Bytes of data_vdi_id[start..end), i.e. the payload of a WRITE_OBJ at 4664 + 4*start. */
  dataRange(startIdx: number, endIdx: number): Buffer {
    checkRange(startIdx, endIdx, MAX_DATA_OBJS);
    return Buffer.from(typedBytes(this.dataVdiId, startIdx, endIdx));
  }

  /** Bytes of gref[start..end) (8 bytes per index) for a write at 4,198,968 + 8*start. */
  grefRange(startIdx: number, endIdx: number): Buffer {
    checkRange(startIdx, endIdx, MAX_DATA_OBJS);
    return Buffer.from(typedBytes(this.gref, 2 * startIdx, 2 * endIdx));
  }

  /** Highest index with a non-zero data_vdi_id, or -1. */
  lastUsedIndex(): number {
    const d = this.dataVdiId;
    for (let i = d.length - 1; i >= 0; i--) if (d[i] !== 0) return i;
    return -1;
  }

  isSnapshot(): boolean {
    return this.header.snapCtime !== 0n;
  }
}

function checkRange(start: number, end: number, max: number): void {
  if (
    !(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start <= end && end <= max)
  ) {
    throw new RangeError(`bad index range [${start}, ${end})`);
  }
}

/** Offset of data_vdi_id[idx] inside the inode object. */
export function dataVdiIdOffset(idx: number): number {
  return SD_INODE_DATA_INDEX_OFFSET + 4 * idx;
}

/** Offset of gref[idx] inside the inode object. */
export function grefOffset(idx: number): number {
  return SD_INODE_GREF_OFFSET + 8 * idx;
}

export { DATA_BYTES as SD_INODE_DATA_BYTES, GREF_BYTES as SD_INODE_GREF_BYTES };
