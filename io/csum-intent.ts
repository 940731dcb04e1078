// Write-intent log of the checksum side files (io/checksum.ts), one per disk: `<disk>/.csum-intent`.
// Why: a durable write used to fdatasync both the object file and its side file, and the second
// flush cost ~40% of 4 KiB random-write IOPS. Now only the object file is flushed per write; the
// side file is written to the page cache and flushed lazily, and the log makes that crash-safe,
// as MD RAID's write-intent bitmap does for its mirrors:
//
//   Invariant: an object's side file on disk matches its data on disk (every block's CRC equals
//   its entry's cur or prev), unless the object's name is durably logged as dirty.
//
// - Before the first write to a clean object (and before a create's renames) a `D name` record is
//   appended and fdatasynced (one flush for every name marked meanwhile: group commit). Later
//   writes to the dirty object flush the object file only.
// - The cleaner flushes data and side file of objects idle for IDLE_MS (or the least recently
//   written ones past CAP), then appends `C name` without a flush: it only states what is durable.
// - At start every name still dirty is resealed: its entries are recomputed from the data on disk
//   (a block that mismatches there is "unknown": the crash may have torn it), the side files are
//   flushed and the log is emptied. This reads at most ~CAP objects after an unclean stop.
//
// `IntentLogs` holds the store's logs (one per disk) and the cleaner's timer; the store (io/store.ts)
// reaches it through `IntentHost` (paths, the object locks, the descriptor cache, its error guard).
//
// Records are 32 bytes: kind ('D'/'C'), name length, name (up to 26 bytes), CRC-32 of the first
// 28. Reading stops at the first bad record: only the unflushed tail can be torn.
import fs from "node:fs";
import { Buffer } from "node:buffer";
import { crcOf, CSUM_SUFFIX } from "./checksum.ts";
import {
  type CachedFd,
  closeQuiet,
  fdatasync,
  type FdCache,
  fsyncDir,
  isEnoent,
  pwriteFull,
  syncQuiet,
} from "./fd-cache.ts";
import type { Disk } from "./md.ts";
import { resealFile } from "./verified-io.ts";
import { GroupSync } from "../core/store.ts";

export const INTENT_FILE = ".csum-intent";
const REC = 32;
const NAME_MAX = 26;
/** An object not written for this long is flushed and marked clean. */
export const IDLE_MS = 2000;
/** Dirty objects per disk beyond which the least recently written are cleaned (reseal bound). */
export const CAP = 256;

interface Dirty {
  writes: number;
  last: number;
  durable: boolean;
  pending?: Promise<void>;
  cleaning?: boolean;
}

/**
 * The store's flush of one object for the cleaner, under the object's shared lock: `snapshot`
 * is read as the files are opened, `commit` called with it once both are flushed.
 */
export type SyncObject = (
  name: string,
  snapshot: () => number,
  commit: (g: number) => void,
) => Promise<void>;

function record(kind: "D" | "C", name: string): Buffer {
  const b = Buffer.alloc(REC);
  b[0] = kind.charCodeAt(0);
  b[1] = name.length;
  b.write(name, 2, NAME_MAX, "latin1");
  b.writeUInt32LE(crcOf(b.subarray(0, REC - 4)), REC - 4);
  return b;
}

/** Names a log's records leave dirty (D without a later C). */
export function dirtyNames(buf: Buffer): Set<string> {
  const dirty = new Set<string>();
  for (let at = 0; at + REC <= buf.length; at += REC) {
    const r = buf.subarray(at, at + REC);
    if (r.readUInt32LE(REC - 4) !== crcOf(r.subarray(0, REC - 4))) break;
    const kind = String.fromCharCode(r[0]);
    const name = r.subarray(2, 2 + Math.min(r[1], NAME_MAX)).toString("latin1");
    if (kind === "D") dirty.add(name);
    else if (kind === "C") dirty.delete(name);
    else break;
  }
  return dirty;
}

export class IntentLog {
  private fd = -1;
  private tail = 0;
  private map = new Map<string, Dirty>();
  private group: GroupSync;
  private cleaning = false;

  constructor(readonly file: string, private syncObject: SyncObject) {
    this.group = new GroupSync(() => fdatasync(this.fd));
  }

  /** Opens the log (created durably if missing) and returns the names it leaves dirty. */
  open(): Set<string> {
    let created = false;
    try {
      this.fd = fs.openSync(this.file, fs.constants.O_RDWR);
    } catch (e) {
      if ((e as { code?: string }).code !== "ENOENT") throw e;
      this.fd = fs.openSync(this.file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
      created = true;
    }
    if (created) {
      // The log's name must be durable before any record in it counts.
      fs.fsyncSync(this.fd);
      const dfd = fs.openSync(this.file.slice(0, this.file.lastIndexOf("/")) || "/", "r");
      try {
        fs.fsyncSync(dfd);
      } finally {
        closeQuiet(dfd);
      }
      return new Set();
    }
    const size = fs.fstatSync(this.fd).size;
    const buf = Buffer.alloc(size);
    let done = 0;
    while (done < size) {
      const n = fs.readSync(this.fd, buf, done, size - done, done);
      if (n <= 0) break;
      done += n;
    }
    return dirtyNames(buf.subarray(0, done));
  }

  /** Empties the log once every dirty name was resealed and its side file flushed. */
  reset(): void {
    fs.ftruncateSync(this.fd, 0);
    fs.fdatasyncSync(this.fd);
    this.tail = 0;
    this.map.clear();
  }

  close(): void {
    if (this.fd >= 0) closeQuiet(this.fd);
    this.fd = -1;
    this.map.clear();
  }

  get size(): number {
    return this.map.size;
  }

  /** Names held dirty (their side files may lag their data). */
  names(): string[] {
    return [...this.map.keys()];
  }

  private append(kind: "D" | "C", name: string): void {
    pwriteFull(this.fd, record(kind, name), this.tail);
    this.tail += REC;
  }

  /** Resolves once `name` is durably dirty; the caller then writes in the same tick. */
  async mark(name: string): Promise<void> {
    for (;;) {
      let d = this.map.get(name);
      if (d?.durable) return;
      if (!d) {
        this.map.set(name, d = { writes: 0, last: Date.now(), durable: false });
        this.append("D", name);
      }
      if (!d.pending) {
        const dd = d;
        dd.pending = this.group.sync().then(
          () => {
            dd.durable = true;
            dd.pending = undefined;
          },
          (e) => {
            dd.pending = undefined;
            throw e;
          },
        );
      }
      await d.pending;
    }
  }

  has(name: string): boolean {
    return this.map.has(name);
  }

  /** The object's files were flushed by the caller (holding its exclusive lock). */
  forget(name: string): void {
    if (!this.map.delete(name) || this.fd < 0) return;
    this.append("C", name);
  }

  isDurable(name: string): boolean {
    return this.map.get(name)?.durable === true;
  }

  /**
   * If `name` is durably dirty, counts a write starting now (the cleaner must flush it again) and
   * returns true: the caller then writes in the same tick. False: `mark` it first. Used as
   * `while (!log.touch(name)) await log.mark(name);`.
   */
  touch(name: string): boolean {
    const d = this.map.get(name);
    if (!d?.durable) return false;
    d.writes++;
    d.last = Date.now();
    return true;
  }

  /**
   * Flushes and marks clean the objects idle for IDLE_MS, and the least recently written ones
   * while more than CAP are dirty. The store's syncObject flushes both files under the object's
   * shared lock and returns the write count it saw when it opened them (null: not flushed).
   */
  async clean(now = Date.now(), all = false): Promise<void> {
    if (this.cleaning || this.fd < 0) return;
    this.cleaning = true;
    try {
      const ds = [...this.map].filter(([, d]) => d.durable && !d.cleaning);
      ds.sort((a, b) => a[1].last - b[1].last);
      let over = this.map.size - CAP;
      const pick = ds.filter(([, d]) => all || now - d.last >= IDLE_MS || over-- > 0);
      await Promise.all(pick.map(async ([name, d]) => {
        d.cleaning = true;
        try {
          await this.syncObject(name, () => d.writes, (g) => {
            // Inside the object's lock: no create or move is half done. A write since the
            // snapshot keeps it dirty.
            if (g === d.writes && this.map.get(name) === d && this.fd >= 0) {
              this.map.delete(name);
              this.append("C", name);
            }
          });
        } finally {
          d.cleaning = false;
        }
      }));
      // All clean: start the log over (nothing dirty, so a torn rewrite is harmless).
      if (this.map.size === 0 && this.tail > 64 * 1024 && this.fd >= 0) {
        fs.ftruncateSync(this.fd, 0);
        this.tail = 0;
      }
    } finally {
      this.cleaning = false;
    }
  }
}

/** What the per-disk logs need of the store (io/store.ts). */
export interface IntentHost {
  /** The object file named `name` on `disk`; null: not an object's name. */
  pathOn(disk: Disk, name: string): string | null;
  /** Runs `fn` under the object's shared lock. */
  shared(name: string, fn: () => Promise<void>): Promise<void>;
  fds: FdCache;
  /** The store's reaction to an I/O error on `disk` (may fail the disk). */
  guard(disk: Disk, err: unknown): Error;
  log(level: "info" | "warn" | "err", msg: string): void;
}

/** The store's write-intent logs, one per disk, and their cleaner; none under nosync. */
export class IntentLogs {
  private logs = new Map<Disk, IntentLog>();
  private cleaner: ReturnType<typeof setInterval> | null = null;

  constructor(private host: IntentHost, private enabled: boolean) {}

  /** The log of `disk` (null: none, so nothing is promised for its side files). */
  get(disk: Disk): IntentLog | null {
    return this.logs.get(disk) ?? null;
  }

  /** Opens `disk`'s log, reseals what a crash left dirty, starts the cleaner. */
  open(disk: Disk): void {
    if (!this.enabled) return;
    const log = new IntentLog(
      `${disk.path}/${INTENT_FILE}`,
      (name, snap, commit) => this.syncForClean(disk, name, snap, commit),
    );
    let n = 0, bad = 0;
    for (const name of log.open()) {
      const path = this.host.pathOn(disk, name);
      if (!path) continue;
      const r = resealFile(path);
      if (r >= 0) n++;
      if (r > 0) bad += r;
    }
    log.reset();
    if (n) {
      this.host.log(
        bad ? "warn" : "info",
        `${disk.path}: resealed the checksums of ${n} objects written before an unclean stop (${bad} blocks had changed without their checksum)`,
      );
    }
    this.logs.set(disk, log);
    if (!this.cleaner) {
      this.cleaner = setInterval(() => {
        for (const l of this.logs.values()) {
          l.clean().catch((e) =>
            this.host.log("warn", `checksum cleaner: ${(e as Error).message}`)
          );
        }
      }, 1000);
      (this.cleaner as { unref?: () => void }).unref?.();
    }
  }

  /** Flushes every dirty object of `disk` (synchronously), empties its log and closes it. */
  close(disk: Disk): void {
    const log = this.logs.get(disk);
    if (!log) return;
    this.logs.delete(disk);
    try {
      for (const name of log.names()) {
        const path = this.host.pathOn(disk, name);
        if (path) syncQuiet(path);
      }
      log.reset();
    } catch { /* left dirty: resealed at the next start */ }
    log.close();
  }

  /** A failed disk: its log is closed as it is. */
  drop(disk: Disk): void {
    this.logs.get(disk)?.close();
    this.logs.delete(disk);
  }

  /** Store close: the cleaner stopped, every disk's dirty objects flushed and its log emptied. */
  closeAll(): void {
    if (this.cleaner) clearInterval(this.cleaner);
    this.cleaner = null;
    for (const d of [...this.logs.keys()]) this.close(d);
  }

  /** Store format: nothing is left to reseal. */
  resetAll(): void {
    for (const log of this.logs.values()) log.reset();
  }

  /**
   * The cleaner's flush of one object (under its shared lock, so no create, move or removal is
   * half done): data and side file flushed, `commit` told the write count seen when they were
   * opened. A missing file: its unlink is made durable first.
   */
  private syncForClean(
    disk: Disk,
    name: string,
    snap: () => number,
    commit: (g: number) => void,
  ): Promise<void> {
    const path = this.host.pathOn(disk, name);
    if (!path) return Promise.resolve();
    const fds = this.host.fds;
    return this.host.shared(name, async () => {
      let c: CachedFd | null = null;
      let cc: CachedFd | null = null;
      try {
        const g = snap();
        try {
          c = fds.acquire(path, true);
          cc = fds.acquire(path + CSUM_SUFFIX);
        } catch (err) {
          if (!isEnoent(err)) throw err;
        }
        if (c) await Promise.all([fdatasync(c.fd), cc ? fdatasync(cc.fd) : undefined]);
        else await fsyncDir(path.slice(0, path.lastIndexOf("/")));
        commit(g);
      } catch (err) {
        throw this.host.guard(disk, err);
      } finally {
        if (c) fds.release(c);
        if (cc) fds.release(cc);
      }
    });
  }

  /**
   * Before an object's files move off `disk` (exclusive lock held): flushed, so they need no log
   * entry. Errors are the store's guard's (they may fail the disk).
   */
  async settle(disk: Disk, name: string, path: string): Promise<void> {
    const log = this.logs.get(disk);
    if (!log?.has(name)) return;
    const fds = this.host.fds;
    const held = [path, path + CSUM_SUFFIX].flatMap((f, i) => {
      try {
        return [fds.acquire(f, i === 0)];
      } catch {
        return [];
      }
    });
    try {
      await Promise.all(held.map((c) => fdatasync(c.fd)));
    } catch (err) {
      throw this.host.guard(disk, err);
    } finally {
      for (const c of held) fds.release(c);
    }
    log.forget(name);
  }
}
