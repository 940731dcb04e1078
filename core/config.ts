// Metadata of the base directory, as bytes: `config` (sheep-daemon.md §3.1) and `epoch/%08u`
// (§3.2). Reading and writing the files is io/config-file.ts.
import { Buffer } from "node:buffer";
import { SdError } from "./errors.ts";
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

// ---- epoch log names ----

const EPOCH_RE = /^[0-9]{8,10}$/;

/** File name of an epoch in `<base>/epoch/`. */
export function epochFileName(epoch: number): string {
  return String(epoch >>> 0).padStart(8, "0");
}

export function isEpochFileName(name: string): boolean {
  return EPOCH_RE.test(name);
}

/** The epochs named in a directory listing, ascending. */
export function epochsIn(names: readonly string[]): number[] {
  return names.filter(isEpochFileName).map(Number).filter((n) => n > 0 && n <= 0xffffffff)
    .sort((a, b) => a - b);
}
