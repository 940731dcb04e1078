// Metadata files in the base directory: `config` (sheep-daemon.md §3.1) and `epoch/%08u` (§3.2).
import fs from "node:fs";
import { Buffer } from "node:buffer";
import { errnoToRes, SdError } from "./errors.ts";
import { fixedString, readFixedString, Res } from "./proto.ts";
import { decodeNodes, encodeNodes, SD_NODE_SIZE, type SdNode, sortNodes } from "./node.ts";

export const SD_FORMAT_VERSION = 0x0006;
export const CONFIG_SIZE = 40;

export interface SheepConfig {
  ctime: bigint;
  flags: number;
  copies: number;
  defaultStore: string;
  shutdown: boolean;
  copyPolicy: number;
  blockSizeShift: number;
  version: number;
  space: bigint;
}

export function encodeConfig(c: SheepConfig): Buffer {
  const b = Buffer.alloc(CONFIG_SIZE);
  b.writeBigUInt64LE(BigInt.asUintN(64, c.ctime), 0);
  b.writeUInt16LE(c.flags & 0xffff, 8);
  b.writeUInt8(c.copies & 0xff, 10);
  fixedString(c.defaultStore, 16).copy(b, 11);
  b.writeUInt8(c.shutdown ? 1 : 0, 27);
  b.writeUInt8(c.copyPolicy & 0xff, 28);
  b.writeUInt8(c.blockSizeShift & 0xff, 29);
  b.writeUInt16LE(c.version & 0xffff, 30);
  b.writeBigUInt64LE(BigInt.asUintN(64, c.space), 32);
  return b;
}

export function decodeConfig(b: Buffer): SheepConfig {
  if (b.length < CONFIG_SIZE) throw new SdError(Res.EIO, `short config (${b.length} bytes)`);
  return {
    ctime: b.readBigUInt64LE(0),
    flags: b.readUInt16LE(8),
    copies: b.readUInt8(10),
    defaultStore: readFixedString(b, 11, 16),
    shutdown: b.readUInt8(27) !== 0,
    copyPolicy: b.readUInt8(28),
    blockSizeShift: b.readUInt8(29),
    version: b.readUInt16LE(30),
    space: b.readBigUInt64LE(32),
  };
}

function isEnoent(e: unknown): boolean {
  return (e as { code?: string })?.code === "ENOENT";
}

function wrap(e: unknown): SdError {
  return e instanceof SdError ? e : new SdError(errnoToRes(e), String((e as Error)?.message ?? e));
}

/** tmp + fsync + rename + fsync(dir): a crash leaves either the old or the new file, never a torn one. */
export function atomicWriteFile(path: string, data: Buffer): void {
  const tmp = path + ".tmp";
  try {
    const fd = fs.openSync(tmp, "w");
    try {
      let done = 0;
      while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, done);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, path);
    const dir = path.slice(0, path.lastIndexOf("/")) || ".";
    const dfd = fs.openSync(dir, "r");
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch (e) {
    try {
      fs.unlinkSync(tmp);
    } catch { /* nothing to clean */ }
    throw wrap(e);
  }
}

export function readConfig(dir: string): SheepConfig | null {
  let b: Buffer;
  try {
    b = fs.readFileSync(`${dir}/config`);
  } catch (e) {
    if (isEnoent(e)) return null;
    throw wrap(e);
  }
  return decodeConfig(b);
}

export function writeConfig(dir: string, c: SheepConfig): void {
  atomicWriteFile(`${dir}/config`, encodeConfig(c));
}

// ---- epoch log ----

function epochPath(dir: string, epoch: number): string {
  return `${dir}/epoch/${String(epoch >>> 0).padStart(8, "0")}`;
}

/** Epoch file body: sd_node records in node order (rb zeroed) + u64 LE time_t. */
export function epochFileBytes(nodes: readonly SdNode[], time: bigint): Buffer {
  const nb = encodeNodes(sortNodes(nodes));
  const b = Buffer.alloc(nb.length + 8);
  nb.copy(b, 0);
  b.writeBigUInt64LE(BigInt.asUintN(64, time), nb.length);
  return b;
}

export function decodeEpochFile(b: Buffer): { nodes: SdNode[]; time: bigint } {
  if (b.length < 8 || (b.length - 8) % SD_NODE_SIZE !== 0) {
    throw new SdError(Res.EIO, `malformed epoch log (${b.length} bytes)`);
  }
  const n = (b.length - 8) / SD_NODE_SIZE;
  return { nodes: decodeNodes(b, n), time: b.readBigUInt64LE(b.length - 8) };
}

export function writeEpoch(
  dir: string,
  epoch: number,
  nodes: readonly SdNode[],
  time: bigint,
): void {
  try {
    fs.mkdirSync(`${dir}/epoch`, { recursive: true });
  } catch (e) {
    throw wrap(e);
  }
  atomicWriteFile(epochPath(dir, epoch), epochFileBytes(nodes, time));
}

export function readEpoch(dir: string, epoch: number): { nodes: SdNode[]; time: bigint } | null {
  let b: Buffer;
  try {
    b = fs.readFileSync(epochPath(dir, epoch));
  } catch (e) {
    if (isEnoent(e)) return null;
    throw wrap(e);
  }
  return decodeEpochFile(b);
}

const EPOCH_RE = /^[0-9]{8,10}$/;

export function listEpochs(dir: string): number[] {
  let names: string[];
  try {
    names = fs.readdirSync(`${dir}/epoch`);
  } catch (e) {
    if (isEnoent(e)) return [];
    throw wrap(e);
  }
  return names.filter((n) => EPOCH_RE.test(n)).map(Number).filter((n) => n > 0 && n <= 0xffffffff)
    .sort((a, b) => a - b);
}

export function latestEpoch(dir: string): number {
  const l = listEpochs(dir);
  return l.length ? l[l.length - 1] : 0;
}

export function removeEpochs(dir: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(`${dir}/epoch`);
  } catch (e) {
    if (isEnoent(e)) return;
    throw wrap(e);
  }
  try {
    for (const n of names) {
      if (EPOCH_RE.test(n) || n.endsWith(".tmp")) fs.rmSync(`${dir}/epoch/${n}`, { force: true });
    }
  } catch (e) {
    throw wrap(e);
  }
}
