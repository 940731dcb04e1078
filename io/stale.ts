// Helpers of the store (io/store.ts) over its disks' `.stale` directories and usage figures:
// stale copies are recovery sources (sheep-daemon.md §6), usage is what MD_INFO reports.
import fs from "node:fs";
import type { Buffer } from "node:buffer";
import { parseObjectFileName as parseName } from "../core/oid.ts";
import { blockSizeOf, CSUM_SUFFIX } from "./checksum.ts";
import {
  allocatedBytes,
  bufferedIo,
  closeQuiet,
  isEnoent,
  moveQuiet,
  preadFull,
  pwriteFull,
  unlinkQuiet,
} from "./fd-cache.ts";
import { verifiedRead } from "./verified-io.ts";
import type { Disk } from "./md.ts";

/** Free bytes of a disk (a dead one has none). */
export function diskFree(d: Disk): bigint {
  try {
    const st = fs.statfsSync(d.path);
    return BigInt(st.bavail) * BigInt(st.bsize);
  } catch {
    return 0n;
  }
}

/** MD_INFO figures of one disk: free bytes, and bytes held by its files (st_blocks). */
export function diskUsage(d: Disk): { path: string; free: bigint; used: bigint } {
  const free = diskFree(d);
  let used = 0n;
  const walk = (dir: string) => {
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of ents) {
      if (e.isDirectory()) walk(`${dir}/${e.name}`);
      else {
        try {
          used += BigInt(fs.statSync(`${dir}/${e.name}`).blocks) * 512n;
        } catch { /* removed meanwhile */ }
      }
    }
  };
  walk(d.path);
  return { path: d.path, free, used };
}

export function listStaleIn(
  disks: Disk[],
): Array<{ oid: bigint; epoch: number; ecIndex?: number }> {
  const out: Array<{ oid: bigint; epoch: number; ecIndex?: number }> = [];
  for (const d of disks) {
    let names: string[];
    try {
      names = fs.readdirSync(`${d.path}/.stale`);
    } catch {
      continue;
    }
    for (const n of names) {
      const dot = n.lastIndexOf(".");
      if (dot < 0) continue;
      const parsed = parseName(n.slice(0, dot));
      const epoch = Number(n.slice(dot + 1));
      if (!parsed || !Number.isInteger(epoch)) continue;
      out.push({ oid: parsed.oid, epoch, ecIndex: parsed.ecIndex });
    }
  }
  return out;
}

/** Stale copies of a leaving disk move with its objects, to the disk the ring picks. */
export function moveStaleOff(
  d: Disk,
  pick: (oid: bigint) => Disk | undefined,
  warn: (msg: string) => void,
): void {
  let names: string[];
  try {
    names = fs.readdirSync(`${d.path}/.stale`);
  } catch {
    return;
  }
  for (const n of names) {
    const p = parseName(n.split(".")[0]);
    if (!p) continue;
    const to = pick(p.oid);
    if (!to) return;
    try {
      moveQuiet(`${d.path}/.stale/${n}`, `${to.path}/.stale/${n}`);
    } catch (err) {
      warn(`moving stale ${n} off ${d.path}: ${(err as Error).message}`);
    }
  }
}

/**
 * Reads a stale copy, verified against its side file when checksums are on (a recovery source:
 * a corrupt one must not be installed elsewhere); null when this disk has none.
 */
export function readStaleFile(
  sp: string,
  offset: number,
  length: number,
  checksums: boolean,
): Buffer | null {
  let fd: number;
  try {
    fd = fs.openSync(sp, "r");
  } catch (err) {
    if (isEnoent(err)) return null;
    throw err;
  }
  let cfd = -1;
  try {
    if (checksums) {
      try {
        cfd = fs.openSync(sp + CSUM_SUFFIX, "r");
      } catch (err) {
        if (!isEnoent(err)) throw err;
      }
    }
    if (cfd < 0) return preadFull(fd, length, offset);
    const size = fs.fstatSync(fd).size;
    const bs = blockSizeOf(fs.fstatSync(cfd).size, size);
    return verifiedRead(bufferedIo, fd, { fd: cfd }, size, offset, length, sp, bs);
  } finally {
    closeQuiet(fd);
    if (cfd >= 0) closeQuiet(cfd);
  }
}

/**
 * Moves an object's files from `from` on disk `src` to `to` on disk `dest`. On the same
 * filesystem they are renamed, the side file first: a crash in between leaves the object where it
 * was, with no side file (unverified) rather than with a side file of another object. Else they
 * are copied under temp names, synced and published (side file first, as creates do), then the
 * source unlinked. `guard` turns an error into the one to throw, given the disk it is of.
 */
export function moveObjectFiles(
  from: string,
  to: string,
  src: Disk,
  dest: Disk,
  nosync: boolean,
  guard: (disk: Disk, err: unknown) => Error,
): void {
  let sameFs = false;
  try {
    sameFs = fs.statSync(from).dev === fs.statSync(dest.path).dev;
  } catch (err) {
    throw guard(src, err);
  }
  if (sameFs) {
    try {
      moveQuiet(from + CSUM_SUFFIX, to + CSUM_SUFFIX);
      fs.renameSync(from, to);
    } catch (err) {
      throw guard(src, err);
    }
    return;
  }
  let files: Array<[string, Buffer]>;
  try {
    files = readObjectFiles(from);
  } catch (err) {
    throw guard(src, err);
  }
  try {
    publishCopy(to, files, nosync);
  } catch (err) {
    throw guard(dest, err);
  }
  unlinkQuiet(from);
  unlinkQuiet(from + CSUM_SUFFIX);
}

function readObjectFiles(from: string): Array<[string, Buffer]> {
  const out: Array<[string, Buffer]> = [];
  try {
    out.push([CSUM_SUFFIX, fs.readFileSync(from + CSUM_SUFFIX)]);
  } catch (err) {
    if (!isEnoent(err)) throw err;
  }
  out.push(["", fs.readFileSync(from)]);
  return out;
}

/** Writes the copy under temp names, syncs, publishes (side file first, as creates do). */
function publishCopy(to: string, files: Array<[string, Buffer]>, nosync: boolean): void {
  try {
    for (const [suffix, b] of files) {
      const p = to + suffix;
      const fd = fs.openSync(p + ".tmp", "w");
      try {
        pwriteFull(fd, b, 0);
        if (!nosync) fs.fdatasyncSync(fd);
      } finally {
        closeQuiet(fd);
      }
      fs.renameSync(p + ".tmp", p);
    }
  } catch (err) {
    for (const [suffix] of files) unlinkQuiet(to + suffix + ".tmp");
    throw err;
  }
}

/** Removes every object file of `dir` (temp and side files included): `cluster format`. */
export function removeObjectFiles(dir: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    if (isEnoent(e)) return;
    throw e;
  }
  for (const name of names) {
    const base = name.replace(/\.tmp$/, "").replace(/\.csum$/, "");
    if (!parseName(base)) continue;
    try {
      fs.unlinkSync(`${dir}/${name}`);
    } catch (e) {
      if (!isEnoent(e)) throw e;
    }
  }
}

/**
 * Calls `found` for every object file of `dir` (at start): leftovers of interrupted creates are
 * removed, and side files whose object is gone too (a crash between the two unlinks), so they are
 * never taken for the table of an object placed there later.
 */
export function scanObjectDir(
  dir: string,
  found: (name: string, oid: bigint, ecIndex: number | undefined, bytes: bigint) => void,
): void {
  for (const name of fs.readdirSync(dir)) {
    const full = `${dir}/${name}`;
    if (name.endsWith(".tmp")) {
      unlinkQuiet(full);
      continue;
    }
    if (name.endsWith(CSUM_SUFFIX)) {
      const base = full.slice(0, -CSUM_SUFFIX.length);
      if (parseName(name.slice(0, -CSUM_SUFFIX.length)) && !fs.existsSync(base)) unlinkQuiet(full);
      continue;
    }
    const p = parseName(name);
    if (!p) continue;
    let st: fs.Stats;
    try {
      st = fs.statSync(full);
    } catch {
      continue;
    }
    if (st.isFile()) found(name, p.oid, p.ecIndex, allocatedBytes(st));
  }
}
