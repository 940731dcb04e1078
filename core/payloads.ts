// Fixed-layout payloads of the Sheepdog 1.0 protocol (protocol.md §13): one encoder and one
// decoder per payload, shared by sheep (which builds them) and dog (which reads them), so no byte
// offset appears anywhere else. Node stats have their own module (node-stat.ts).
import { Buffer } from "node:buffer";
import { decodeNode, decodeNodes, encodeNode, type SdNode } from "./node.ts";
import { SD_MAX_NODES } from "./oid.ts";
import { readFixedString } from "./proto.ts";

const SD_NODE_SIZE = 80;
/** struct node_id inside sd_node: addr[16], port, io_addr[16], io_port, pad. */
const NODE_ID_OFFSET = 24;
const NODE_ID_SIZE = 40;

function nodeFromId(b: Buffer, off: number): SdNode {
  const full = Buffer.alloc(SD_NODE_SIZE);
  b.copy(full, NODE_ID_OFFSET, off, off + NODE_ID_SIZE);
  return decodeNode(full);
}

function writeNodeId(n: SdNode, b: Buffer, off: number): void {
  encodeNode(n).copy(b, off, NODE_ID_OFFSET, NODE_ID_OFFSET + NODE_ID_SIZE);
}

// ---------------------------------------------------------------------------------------------
// GET_VDI_COPIES: struct vdi_state records

export const VDI_STATE_SIZE = 1428;
const MAX_PARTICIPANTS = 31;

export const LockState = { UNLOCKED: 1, LOCKED: 2, SHARED: 3 } as const;

export interface VdiStateRecord {
  vid: number;
  nrCopies: number;
  snapshot: boolean;
  deleted: boolean;
  copyPolicy: number;
  blockSizeShift: number;
  parentVid: number;
  lockState: number;
  /** The lock owner (only its address and port travel). */
  lockOwner: SdNode | null;
  participants: { state: number; node: SdNode }[];
}

export function encodeVdiStates(records: VdiStateRecord[]): Buffer {
  const b = Buffer.alloc(records.length * VDI_STATE_SIZE);
  records.forEach((s, i) => {
    const o = i * VDI_STATE_SIZE;
    b.writeUInt32LE(s.vid >>> 0, o);
    b[o + 4] = s.nrCopies;
    b[o + 5] = s.snapshot ? 1 : 0;
    b[o + 6] = s.deleted ? 1 : 0;
    b[o + 7] = s.copyPolicy;
    b[o + 8] = s.blockSizeShift;
    b.writeUInt32LE(s.parentVid >>> 0, o + 12);
    b.writeUInt32LE(s.lockState, o + 16);
    if (s.lockOwner) writeNodeId(s.lockOwner, b, o + 20);
    const ps = s.participants.slice(0, MAX_PARTICIPANTS);
    b.writeUInt32LE(ps.length, o + 60);
    ps.forEach((p, j) => {
      b.writeUInt32LE(p.state, o + 64 + 4 * j);
      writeNodeId(p.node, b, o + 188 + NODE_ID_SIZE * j);
    });
  });
  return b;
}

export function decodeVdiStates(b: Buffer): VdiStateRecord[] {
  const out: VdiStateRecord[] = [];
  for (let o = 0; o + VDI_STATE_SIZE <= b.length; o += VDI_STATE_SIZE) {
    const lockState = b.readUInt32LE(o + 16);
    const nr = Math.min(b.readUInt32LE(o + 60), MAX_PARTICIPANTS);
    const participants = [];
    for (let j = 0; j < nr; j++) {
      participants.push({
        state: b.readUInt32LE(o + 64 + 4 * j),
        node: nodeFromId(b, o + 188 + NODE_ID_SIZE * j),
      });
    }
    out.push({
      vid: b.readUInt32LE(o),
      nrCopies: b[o + 4],
      snapshot: b[o + 5] !== 0,
      deleted: b[o + 6] !== 0,
      copyPolicy: b[o + 7],
      blockSizeShift: b[o + 8],
      parentVid: b.readUInt32LE(o + 12),
      lockState,
      lockOwner: lockState === LockState.UNLOCKED ? null : nodeFromId(b, o + 20),
      participants,
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// MD_INFO: struct sd_md_info

export const MD_INFO_SIZE = 263688;
const MD_DISK_SIZE = 4120;
const MD_MAX_DISKS = 64;
const MD_PATH_MAX = 4096;
const MD_NR_OFFSET = 263680;

export interface MdDisk {
  idx: number;
  free: bigint;
  used: bigint;
  path: string;
}

export function encodeMdInfo(disks: MdDisk[]): Buffer {
  const b = Buffer.alloc(MD_INFO_SIZE);
  const ds = disks.slice(0, MD_MAX_DISKS);
  ds.forEach((d, i) => {
    const o = i * MD_DISK_SIZE;
    b.writeInt32LE(d.idx, o);
    b.writeBigUInt64LE(d.free, o + 8);
    b.writeBigUInt64LE(d.used, o + 16);
    b.write(d.path, o + 24, MD_PATH_MAX - 1, "utf8");
  });
  b.writeInt32LE(ds.length, MD_NR_OFFSET);
  return b;
}

/** A short payload reads as zeros (no disks). */
export function decodeMdInfo(data: Buffer): MdDisk[] {
  const b = Buffer.alloc(MD_INFO_SIZE);
  data.copy(b, 0, 0, Math.min(MD_INFO_SIZE, data.length));
  const nr = Math.max(0, Math.min(b.readInt32LE(MD_NR_OFFSET), MD_MAX_DISKS));
  const out: MdDisk[] = [];
  for (let i = 0; i < nr; i++) {
    const o = i * MD_DISK_SIZE;
    out.push({
      idx: b.readInt32LE(o),
      free: b.readBigUInt64LE(o + 8),
      used: b.readBigUInt64LE(o + 16),
      path: readFixedString(b, o + 24, MD_PATH_MAX),
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// STAT_CLUSTER: struct epoch_log records, each followed by nodes_nr sd_nodes

export const EPOCH_LOG_SIZE = 48;
const STORE_NAME_LEN = 16;

export interface EpochLog {
  ctime: bigint;
  time: bigint;
  epoch: number;
  nrNodes: number;
  disableRecovery: number;
  nrCopies: number;
  copyPolicy: number;
  flags: number;
  drvName: string;
  nodes: SdNode[];
}

export function epochLogRecordSize(nodesNr: number): number {
  return EPOCH_LOG_SIZE + nodesNr * SD_NODE_SIZE;
}

export function encodeEpochLog(log: EpochLog, nodesNr: number): Buffer {
  const b = Buffer.alloc(epochLogRecordSize(nodesNr));
  b.writeBigUInt64LE(BigInt.asUintN(64, log.ctime), 0);
  b.writeBigUInt64LE(BigInt.asUintN(64, log.time), 8);
  b.writeUInt32LE(log.epoch >>> 0, 16);
  b.writeUInt32LE(log.nrNodes >>> 0, 20);
  b[24] = log.disableRecovery;
  b[25] = log.nrCopies;
  b[26] = log.copyPolicy;
  b.writeUInt16LE(log.flags, 30);
  b.write(log.drvName, 32, STORE_NAME_LEN - 1, "utf8");
  log.nodes.slice(0, nodesNr).forEach((n, k) =>
    encodeNode(n, b, EPOCH_LOG_SIZE + k * SD_NODE_SIZE)
  );
  return b;
}

export function decodeEpochLogs(buf: Buffer, nodesNr: number): EpochLog[] {
  const recSize = epochLogRecordSize(nodesNr);
  const out: EpochLog[] = [];
  for (let off = 0; off + recSize <= buf.length && recSize > 0; off += recSize) {
    const nrNodes = buf.readUInt32LE(off + 20);
    const nodesBuf = buf.subarray(off + EPOCH_LOG_SIZE, off + recSize);
    out.push({
      ctime: buf.readBigUInt64LE(off),
      time: buf.readBigUInt64LE(off + 8),
      epoch: buf.readUInt32LE(off + 16),
      nrNodes,
      disableRecovery: buf[off + 24],
      nrCopies: buf[off + 25],
      copyPolicy: buf[off + 26],
      flags: buf.readUInt16LE(off + 30),
      drvName: readFixedString(buf, off + 32, STORE_NAME_LEN),
      nodes: decodeNodes(nodesBuf, Math.min(nrNodes, nodesNr)),
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// CLUSTER_INFO: struct cluster_info

export { SD_MAX_NODES };
export const CLUSTER_INFO_SIZE = 48 + SD_MAX_NODES * SD_NODE_SIZE;

export interface ClusterInfo {
  protoVer: number;
  disableRecovery: boolean;
  epoch: number;
  ctime: bigint;
  flags: number;
  copies: number;
  copyPolicy: number;
  status: number;
  blockSizeShift: number;
  store: string;
  nodes: SdNode[];
}

export function encodeClusterInfo(ci: ClusterInfo): Buffer {
  const b = Buffer.alloc(CLUSTER_INFO_SIZE);
  b[0] = ci.protoVer;
  b[1] = ci.disableRecovery ? 1 : 0;
  b.writeInt16LE(ci.nodes.length, 2);
  b.writeUInt32LE(ci.epoch >>> 0, 4);
  b.writeBigUInt64LE(BigInt.asUintN(64, ci.ctime), 8);
  b.writeUInt16LE(ci.flags, 16);
  b[18] = ci.copies;
  b[19] = ci.copyPolicy;
  b[20] = ci.status;
  b[21] = ci.blockSizeShift;
  b.write(ci.store, 25, STORE_NAME_LEN - 1, "utf8");
  ci.nodes.slice(0, SD_MAX_NODES).forEach((n, i) => encodeNode(n, b, 48 + i * SD_NODE_SIZE));
  return b;
}

/** A reply shorter than the structure (a smaller buffer was asked for) reads as zeros. */
export function decodeClusterInfo(data: Buffer): ClusterInfo {
  const b = Buffer.alloc(48);
  data.copy(b, 0, 0, Math.min(48, data.length));
  const nr = Math.max(0, b.readInt16LE(2));
  const have = Math.max(0, Math.floor((data.length - 48) / SD_NODE_SIZE));
  return {
    protoVer: b[0],
    disableRecovery: b[1] !== 0,
    epoch: b.readUInt32LE(4),
    ctime: b.readBigUInt64LE(8),
    flags: b.readUInt16LE(16),
    copies: b[18],
    copyPolicy: b[19],
    status: b[20],
    blockSizeShift: b[21],
    store: readFixedString(b, 25, STORE_NAME_LEN),
    nodes: data.length > 48 ? decodeNodes(data.subarray(48), Math.min(nr, have)) : [],
  };
}

// ---------------------------------------------------------------------------------------------
// STAT_RECOVERY: struct recovery_state

export const RECOVERY_STATE_SIZE = 24;

export interface RecoveryState {
  inRecovery: boolean;
  state: number;
  nrFinished: bigint;
  nrTotal: bigint;
}

export function encodeRecoveryState(s: RecoveryState): Buffer {
  const b = Buffer.alloc(RECOVERY_STATE_SIZE);
  b[0] = s.inRecovery ? 1 : 0;
  b.writeUInt32LE(s.state >>> 0, 4);
  b.writeBigUInt64LE(s.nrFinished, 8);
  b.writeBigUInt64LE(s.nrTotal, 16);
  return b;
}

export function decodeRecoveryState(data: Buffer): RecoveryState {
  const b = Buffer.alloc(RECOVERY_STATE_SIZE);
  data.copy(b, 0, 0, Math.min(RECOVERY_STATE_SIZE, data.length));
  return {
    inRecovery: b[0] !== 0,
    state: b.readUInt32LE(4),
    nrFinished: b.readBigUInt64LE(8),
    nrTotal: b.readBigUInt64LE(16),
  };
}

// ---- SCRUB_STATUS (our extension: upstream has no background scrub) ----

export const SCRUB_STATUS_SIZE = 80;

/** One sheep's background scrub (sheep/scrub.ts); figures are of the last completed pass. */
export interface ScrubStatus {
  enabled: boolean;
  running: boolean;
  passes: number;
  /** Unix seconds: start of the running (or last) pass, end of the last pass, next planned. */
  startedAt: bigint;
  finishedAt: bigint;
  nextAt: bigint;
  bytes: bigint;
  objects: number;
  corrupt: number;
  mismatched: number;
  repaired: number;
  failed: number;
  intervalS: number;
  rateMBs: number;
  /** Objects done so far in the running pass. */
  progress: number;
}

export function encodeScrubStatus(s: ScrubStatus): Buffer {
  const b = Buffer.alloc(SCRUB_STATUS_SIZE);
  b.writeUInt8(s.enabled ? 1 : 0, 0);
  b.writeUInt8(s.running ? 1 : 0, 1);
  b.writeUInt32LE(s.passes, 4);
  b.writeBigUInt64LE(s.startedAt, 8);
  b.writeBigUInt64LE(s.finishedAt, 16);
  b.writeBigUInt64LE(s.nextAt, 24);
  b.writeBigUInt64LE(s.bytes, 32);
  [s.objects, s.corrupt, s.mismatched, s.repaired, s.failed, s.intervalS, s.rateMBs, s.progress]
    .forEach((v, i) => b.writeUInt32LE(v >>> 0, 40 + 4 * i));
  return b;
}

export function decodeScrubStatus(b: Buffer): ScrubStatus {
  if (b.length < SCRUB_STATUS_SIZE) throw new RangeError(`scrub status: ${b.length} bytes`);
  const u = (i: number) => b.readUInt32LE(40 + 4 * i);
  return {
    enabled: b[0] === 1,
    running: b[1] === 1,
    passes: b.readUInt32LE(4),
    startedAt: b.readBigUInt64LE(8),
    finishedAt: b.readBigUInt64LE(16),
    nextAt: b.readBigUInt64LE(24),
    bytes: b.readBigUInt64LE(32),
    objects: u(0),
    corrupt: u(1),
    mismatched: u(2),
    repaired: u(3),
    failed: u(4),
    intervalS: u(5),
    rateMBs: u(6),
    progress: u(7),
  };
}
