// The store's (io/store.ts) `.stale` copies and its disks' usage figures: stale copies are
// recovery sources (sheep-daemon.md §6), usage is what MD_INFO reports.
import fs from "node:fs";
import type { Buffer } from "node:buffer";
import { objectFileName as fileName, parseObjectFileName as parseName } from "../core/oid.ts";
import { SdError } from "../core/errors.ts";
import { Res } from "../core/proto.ts";
import type { KeyedRwLock } from "../core/store.ts";
import type { IntentLogs } from "./csum-intent.ts";
import { blockSizeOf, CSUM_SUFFIX } from "./checksum.ts";
import {
  allocatedBytes,
  bufferedIo,
  closeQuiet,
  type FdCache,
  fsyncDir,
  isEnoent,
  moveQuiet,
  preadFull,
  pwriteFull,
  unlinkQuiet,
} from "./fd-cache.ts";
import { verifiedRead } from "./verified-io.ts";
import type { Disk } from "./md.ts";

/** What the stale copies see of their store (io/store.ts FileStore). */
export interface StaleContext {
  readonly locks: KeyedRwLock;
  readonly fds: FdCache;
  readonly intents: IntentLogs;
  readonly checksums: boolean;
  /** Renames are made durable (no `nosync`, no journal deferring the syncs). */
  synced(): boolean;
  /** The disk holding the current copy, or null. */
  current(oid: bigint, ecIndex?: number): Disk | null;
  /** The current copy left (index bookkeeping). */
  forget(name: string): void;
  /** A current copy appeared on `disk`. */
  adopt(name: string, oid: bigint, ecIndex: number | undefined, disk: Disk, bytes: bigint): void;
  pathOn(disk: Disk, oid: bigint, ecIndex?: number): string;
  searchOrder(oid: bigint): Disk[];
  allDisks(): Disk[];
  guard(disk: Disk | undefined, err: unknown): SdError;
}

/** Stale copies: `.stale/<object file name>.<epoch>` (and its side file) on the object's disk. */
export class StaleCopies {
  constructor(private readonly s: StaleContext) {}

  private pathOf(disk: Disk, name: string, epoch: number): string {
    return `${disk.path}/.stale/${name}.${epoch >>> 0}`;
  }

  moveToStale(oid: bigint, epoch: number, ecIndex?: number): Promise<void> {
    const s = this.s;
    const name = fileName(oid, ecIndex);
    return s.locks.run(name, true, async () => {
      const disk = s.current(oid, ecIndex);
      if (!disk) throw new SdError(Res.NO_OBJ);
      const path = s.pathOn(disk, oid, ecIndex);
      // A stale copy is a recovery source verified against its side file: flushed first.
      await s.intents.settle(disk, name, path);
      s.fds.invalidate(path);
      s.fds.invalidate(path + CSUM_SUFFIX);
      try {
        moveQuiet(path + CSUM_SUFFIX, this.pathOf(disk, name, epoch) + CSUM_SUFFIX);
        fs.renameSync(path, this.pathOf(disk, name, epoch));
      } catch (err) {
        if (isEnoent(err)) s.forget(name);
        throw s.guard(disk, err);
      }
      s.forget(name);
    });
  }

  read(
    oid: bigint,
    epoch: number,
    offset: number,
    length: number,
    ecIndex?: number,
  ): Promise<Buffer> {
    const name = fileName(oid, ecIndex);
    for (const d of this.s.searchOrder(oid)) {
      const sp = this.pathOf(d, name, epoch);
      try {
        const b = readStaleFile(sp, offset, length, this.s.checksums);
        if (b) return Promise.resolve(b);
      } catch (err) {
        return Promise.reject(this.s.guard(d, err));
      }
    }
    return Promise.reject(new SdError(Res.NO_OBJ));
  }

  /** ObjectStore.reviveStale: renamed back into place, never over a current copy. */
  revive(oid: bigint, epoch: number, ecIndex?: number): Promise<void> {
    const s = this.s;
    const name = fileName(oid, ecIndex);
    return s.locks.run(name, true, async () => {
      if (s.current(oid, ecIndex)) return;
      for (const d of s.searchOrder(oid)) {
        const sp = this.pathOf(d, name, epoch);
        if (!fs.existsSync(sp)) continue;
        // Back on the disk that holds it; the store's ensurePlaced moves it if the ring picks
        // another.
        const final = s.pathOn(d, oid, ecIndex);
        try {
          s.fds.invalidate(final);
          s.fds.invalidate(final + CSUM_SUFFIX);
          // The side file was flushed when the copy became stale (moveToStale settles it), so
          // data and table on disk agree. Side file first, as a create renames them.
          if (fs.existsSync(sp + CSUM_SUFFIX)) fs.renameSync(sp + CSUM_SUFFIX, final + CSUM_SUFFIX);
          else unlinkQuiet(final + CSUM_SUFFIX);
          fs.renameSync(sp, final);
          // One journalled rename: syncing the new name's directory makes the move durable
          // (a crash before it leaves the stale copy, and recovery runs again).
          if (s.synced()) await fsyncDir(final.slice(0, final.lastIndexOf("/")));
          s.adopt(name, oid, ecIndex, d, allocatedBytes(fs.statSync(final)));
        } catch (err) {
          throw s.guard(d, err);
        }
        return;
      }
      throw new SdError(Res.NO_OBJ);
    });
  }

  purge(): Promise<void> {
    try {
      for (const d of this.s.allDisks()) {
        const dir = `${d.path}/.stale`;
        fs.rmSync(dir, { recursive: true, force: true });
        fs.mkdirSync(dir, { recursive: true });
      }
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(this.s.guard(undefined, e));
    }
  }

  list(): Array<{ oid: bigint; epoch: number; ecIndex?: number }> {
    return listStaleIn(this.s.allDisks());
  }
}

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
