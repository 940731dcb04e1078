// The base directory's metadata files: `config` (sheep-daemon.md §3.1) and `epoch/%08u` (§3.2),
// written atomically. Their byte formats are core/config.ts.
import fs from "node:fs";
import type { Buffer } from "node:buffer";
import { errnoToRes, SdError } from "../core/errors.ts";
import type { SdNode } from "../core/node.ts";
import {
  decodeConfig,
  decodeEpochFile,
  encodeConfig,
  epochFileBytes,
  epochFileName,
  epochsIn,
  isEpochFileName,
  type SheepConfig,
} from "../core/config.ts";

export {
  CONFIG_SIZE,
  decodeConfig,
  decodeEpochFile,
  encodeConfig,
  epochFileBytes,
  epochFileName,
  epochsIn,
  isEpochFileName,
  SD_FORMAT_VERSION,
  type SheepConfig,
} from "../core/config.ts";

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
  return `${dir}/epoch/${epochFileName(epoch)}`;
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

export function listEpochs(dir: string): number[] {
  let names: string[];
  try {
    names = fs.readdirSync(`${dir}/epoch`);
  } catch (e) {
    if (isEnoent(e)) return [];
    throw wrap(e);
  }
  return epochsIn(names);
}

/** Epochs 1..upTo that have no log here (a sheep that was down, or joined later, missed them). */
export function missingEpochs(dir: string, upTo: number): number[] {
  const have = new Set(listEpochs(dir));
  const out: number[] = [];
  for (let e = 1; e <= upTo; e++) if (!have.has(e)) out.push(e);
  return out;
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
      if (isEpochFileName(n) || n.endsWith(".tmp")) fs.rmSync(`${dir}/epoch/${n}`, { force: true });
    }
  } catch (e) {
    throw wrap(e);
  }
}
