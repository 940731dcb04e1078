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
// Records are 32 bytes: kind ('D'/'C'), name length, name (up to 26 bytes), CRC-32 of the first
// 28. Reading stops at the first bad record: only the unflushed tail can be torn.
import fs from "node:fs";
import { Buffer } from "node:buffer";
import { crcOf } from "./checksum.ts";
import { closeQuiet, fdatasync, pwriteFull } from "./fd-cache.ts";
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

  /** A write to `name` (already durably dirty) starts now: the cleaner must flush it again. */
  touch(name: string): void {
    const d = this.map.get(name);
    if (!d) return;
    d.writes++;
    d.last = Date.now();
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
