// TEST-ONLY power-loss shim (issue 19). With SHEEPDOG_TEST_POWERLOSS=1 in a sheep's environment,
// the daemon wraps its object store with powerLossStore(): from then on every change the process
// makes to files under the store's directories (object data, checksum tables, renames, creates,
// unlinks, the config and epoch logs) is logged with what it replaced, and a change leaves the log
// only when the sync that makes it durable completes (fdatasync/fsync of the file for data and
// size, fsync of the directory for a name). SIGUSR2 is the "power cut": every change still in
// the log is undone, newest first, and the process SIGKILLs itself, so the disk holds exactly
// what a machine losing power at that instant would keep (pessimistically: a kernel may have
// written back more). Leftover `*.powerloss-*.tmp` links are removed by the store at start-up. Without the variable nothing is wrapped and nothing is patched.
//
// It interposes on the `node:fs` default object that io/store.ts and io/config-file.ts call
// through, so the real store runs unchanged: what is tested is its own sync discipline.
import fs from "node:fs";
import { Buffer } from "node:buffer";
import * as path from "node:path";
import process from "node:process";
import type { ObjectStore } from "../core/store.ts";

export const POWERLOSS_ENV = "SHEEPDOG_TEST_POWERLOSS";

/** A file as the log knows it: renames and unlinks move it, undo restores its path. */
interface Ident {
  path: string;
}

type Change =
  | { k: "data"; id: Ident; pos: number; old: Buffer; oldSize: number; seq: number }
  | { k: "create"; id: Ident; dirs: Set<string>; seq: number }
  | {
    k: "rename";
    id: Ident | null;
    from: string;
    to: string;
    over: Ident | null;
    saved: string | null;
    dirs: Set<string>;
    seq: number;
  }
  | { k: "unlink"; id: Ident; at: string; dirs: Set<string>; seq: number };

const orig = {
  openSync: fs.openSync,
  closeSync: fs.closeSync,
  writeSync: fs.writeSync,
  readSync: fs.readSync,
  fstatSync: fs.fstatSync,
  ftruncateSync: fs.ftruncateSync,
  fdatasync: fs.fdatasync,
  fdatasyncSync: fs.fdatasyncSync,
  fsync: fs.fsync,
  fsyncSync: fs.fsyncSync,
  renameSync: fs.renameSync,
  unlinkSync: fs.unlinkSync,
  linkSync: fs.linkSync,
  writeFileSync: fs.writeFileSync,
  copyFileSync: fs.copyFileSync,
  existsSync: fs.existsSync,
  statSync: fs.statSync,
  truncateSync: fs.truncateSync,
};

/** The change log and the fs interposition; one per process. */
export class PowerLossLog {
  private log: Change[] = [];
  private seq = 0;
  private byPath = new Map<string, Ident>();
  private fds = new Map<number, { id: Ident; dir: boolean }>();
  private savedN = 0;

  constructor(private readonly roots: string[]) {}

  /** Changes not yet durable (for tests and the log line at the cut). */
  get pending(): number {
    return this.log.length;
  }

  /** What is still pending, one line each (failure messages). */
  describe(): string[] {
    return this.log.map((c) =>
      c.k === "data"
        ? `data ${c.id.path} @${c.pos}+${c.old.length}`
        : c.k === "rename"
        ? `rename ${c.from} -> ${c.to} (dirs ${[...c.dirs]})`
        : `${c.k} ${c.id.path} (dirs ${[...c.dirs]})`
    );
  }

  private tracked(p: string): boolean {
    const a = path.resolve(p);
    return this.roots.some((r) => a === r || a.startsWith(r + "/"));
  }

  private ident(p: string): Ident {
    const a = path.resolve(p);
    let id = this.byPath.get(a);
    if (!id) this.byPath.set(a, id = { path: a });
    return id;
  }

  /** Keeps a file that is about to lose its name under a temp name beside it (same disk). */
  private stash(p: string): string {
    const s = `${p}.powerloss-${process.pid}-${this.savedN++}.tmp`;
    orig.linkSync(p, s);
    return s;
  }

  private fileSize(id: Ident): number {
    try {
      return orig.statSync(id.path).size;
    } catch {
      return 0;
    }
  }

  /** Logs the bytes [pos, pos+len) of fd's file are about to change. */
  private beforeWrite(fd: number, pos: number, len: number): void {
    const f = this.fds.get(fd);
    if (!f || f.dir) return;
    const size = orig.fstatSync(fd).size;
    const keep = Math.max(0, Math.min(len, size - pos));
    const old = Buffer.alloc(keep);
    if (keep > 0) {
      // The store's fd may be write-only ("w"): read the old bytes through one of our own.
      const rfd = orig.openSync(`/proc/self/fd/${fd}`, "r");
      try {
        let done = 0;
        while (done < keep) {
          const n = orig.readSync(rfd, old, done, keep - done, pos + done);
          if (n <= 0) break;
          done += n;
        }
      } finally {
        orig.closeSync(rfd);
      }
    }
    this.log.push({ k: "data", id: f.id, pos, old, oldSize: size, seq: this.seq++ });
  }

  /** A durable unlink: the stashed link is not needed any more. */
  private drop(id: Ident): void {
    if (!/\.powerloss-\d+-\d+\.tmp$/.test(id.path)) return;
    this.byPath.delete(id.path);
    try {
      orig.unlinkSync(id.path);
    } catch { /* gone */ }
  }

  /** A sync of fd that started at `upTo` completed: its earlier changes are durable. */
  private synced(fd: number, upTo: number): void {
    const f = this.fds.get(fd);
    if (!f) return;
    if (f.dir) {
      const d = f.id.path;
      for (const c of this.log) {
        if (c.seq < upTo && c.k !== "data") c.dirs.delete(d);
      }
      const keep: Change[] = [];
      for (const c of this.log) {
        if (c.k === "data" || c.dirs.size > 0) keep.push(c);
        else if (c.k === "unlink") this.drop(c.id);
        else if (c.k === "rename" && c.saved) this.drop(c.over ?? { path: c.saved });
      }
      this.log = keep;
    } else {
      this.log = this.log.filter((c) => !(c.k === "data" && c.id === f.id && c.seq < upTo));
    }
  }

  install(): void {
    // deno-lint-ignore no-this-alias
    const me = this;
    const F = fs as unknown as Record<string, unknown>;
    F.openSync = (p: fs.PathLike, flags: fs.OpenMode = "r", mode?: fs.Mode): number => {
      const s = String(p);
      if (!me.tracked(s)) return orig.openSync(p, flags, mode);
      let existed = orig.existsSync(s);
      const fl = String(flags);
      if (existed && fl.startsWith("w") && !s.endsWith(".tmp") && orig.statSync(s).isFile()) {
        // "w" truncates: log it as an unlink and a create so the old content can come back.
        me.loggedUnlink(path.resolve(s));
        existed = false;
      }
      const fd = orig.openSync(p, flags, mode);
      const st = orig.fstatSync(fd);
      const id = me.ident(s);
      me.fds.set(fd, { id, dir: st.isDirectory() });
      if (!existed) {
        me.log.push({ k: "create", id, dirs: new Set([path.dirname(id.path)]), seq: me.seq++ });
      }
      return fd;
    };
    F.closeSync = (fd: number): void => {
      me.fds.delete(fd);
      orig.closeSync(fd);
    };
    F.writeSync = (fd: number, buf: Buffer, off?: number, len?: number, pos?: number) => {
      if (me.fds.has(fd)) {
        if (typeof pos !== "number") throw new Error("powerloss shim: writeSync without position");
        me.beforeWrite(fd, pos, len ?? buf.length - (off ?? 0));
      }
      return (orig.writeSync as (...a: unknown[]) => number)(fd, buf, off, len, pos);
    };
    F.ftruncateSync = (fd: number, len?: number): void => {
      const f = me.fds.get(fd);
      if (f && !f.dir) {
        const size = orig.fstatSync(fd).size;
        const to = len ?? 0;
        if (to < size) me.beforeWrite(fd, to, size - to);
        else {me.log.push({
            k: "data",
            id: f.id,
            pos: size,
            old: Buffer.alloc(0),
            oldSize: size,
            seq: me.seq++,
          });}
      }
      orig.ftruncateSync(fd, len);
    };
    const asyncSync = (real: typeof fs.fsync) => (fd: number, cb: (e: unknown) => void): void => {
      const upTo = me.seq;
      real(fd, (e) => {
        if (!e) me.synced(fd, upTo);
        cb(e);
      });
    };
    F.fdatasync = asyncSync(orig.fdatasync);
    F.fsync = asyncSync(orig.fsync);
    F.fdatasyncSync = (fd: number): void => {
      orig.fdatasyncSync(fd);
      me.synced(fd, me.seq);
    };
    F.fsyncSync = (fd: number): void => {
      orig.fsyncSync(fd);
      me.synced(fd, me.seq);
    };
    F.renameSync = (from: fs.PathLike, to: fs.PathLike): void => {
      const f = path.resolve(String(from));
      const t = path.resolve(String(to));
      if (!me.tracked(f) && !me.tracked(t)) return orig.renameSync(from, to);
      const saved = orig.existsSync(t) ? me.stash(t) : null;
      orig.renameSync(from, to);
      const id = me.byPath.get(f) ?? null;
      const over = saved ? (me.byPath.get(t) ?? null) : null;
      if (over) over.path = saved!;
      me.byPath.delete(f);
      if (id) {
        id.path = t;
        me.byPath.set(t, id);
      } else me.byPath.delete(t);
      if (over) me.byPath.set(saved!, over);
      const dirs = new Set([path.dirname(f), path.dirname(t)]);
      me.log.push({ k: "rename", id, from: f, to: t, over, saved, dirs, seq: me.seq++ });
    };
    F.unlinkSync = (p: fs.PathLike): void => {
      const a = path.resolve(String(p));
      // A temp file coming back after a cut is harmless: the store removes them at start-up.
      if (!me.tracked(a) || a.endsWith(".tmp") || !orig.existsSync(a)) return orig.unlinkSync(p);
      me.loggedUnlink(a);
    };
    const writeWhole = (p: string, b: Buffer): void => {
      const fd = (F.openSync as typeof orig.openSync)(p, "w");
      try {
        let done = 0;
        while (done < b.length) {
          done += (F.writeSync as typeof orig.writeSync)(fd, b, done, b.length - done, done);
        }
      } finally {
        (F.closeSync as typeof orig.closeSync)(fd);
      }
    };
    F.writeFileSync = (p: fs.PathOrFileDescriptor, data: string | Buffer, o?: unknown): void => {
      if (typeof p === "number" || !me.tracked(String(p)) || o !== undefined) {
        return (orig.writeFileSync as (...a: unknown[]) => void)(p, data, o);
      }
      writeWhole(String(p), typeof data === "string" ? Buffer.from(data) : data);
    };
    F.copyFileSync = (from: fs.PathLike, to: fs.PathLike, mode?: number): void => {
      if (!me.tracked(String(to))) return orig.copyFileSync(from, to, mode);
      writeWhole(String(to), fs.readFileSync(from));
    };
  }

  /** Puts the real functions back (unit tests). */
  uninstall(): void {
    Object.assign(fs as unknown as Record<string, unknown>, orig);
  }

  private loggedUnlink(a: string): void {
    const saved = this.stash(a);
    orig.unlinkSync(a);
    const id = this.byPath.get(a) ?? { path: a };
    this.byPath.delete(a);
    id.path = saved;
    this.byPath.set(saved, id);
    this.log.push({ k: "unlink", id, at: a, dirs: new Set([path.dirname(a)]), seq: this.seq++ });
  }

  /** Undoes every change not yet durable, newest first. */
  undoAll(): number {
    const n = this.log.length;
    for (const c of this.log.reverse()) {
      try {
        this.undo(c);
      } catch (e) {
        process.stderr.write(`powerloss: undo ${c.k} failed: ${(e as Error).message}\n`);
      }
    }
    this.log = [];
    return n;
  }

  private undo(c: Change): void {
    switch (c.k) {
      case "data": {
        const fd = orig.openSync(c.id.path, "r+");
        try {
          let done = 0;
          while (done < c.old.length) {
            done += orig.writeSync(fd, c.old, done, c.old.length - done, c.pos + done);
          }
          orig.ftruncateSync(fd, c.oldSize);
        } finally {
          orig.closeSync(fd);
        }
        return;
      }
      case "create":
        orig.unlinkSync(c.id.path);
        return;
      case "rename":
        orig.renameSync(c.to, c.from);
        if (c.id) c.id.path = c.from;
        if (c.saved) {
          orig.renameSync(c.saved, c.to);
          if (c.over) c.over.path = c.to;
        }
        return;
      case "unlink":
        orig.renameSync(c.id.path, c.at);
        c.id.path = c.at;
        return;
    }
  }

  /** The power cut: undo, then die without running anything else. */
  cut(): never {
    const what = this.describe().slice(0, 8).join("; ");
    const n = this.undoAll();
    process.stderr.write(
      `powerloss: power cut, ${n} changes not yet durable were dropped: ${what}\n`,
    );
    process.kill(process.pid, "SIGKILL");
    throw new Error("unreachable");
  }
}

let active: PowerLossLog | null = null;

/**
 * The store itself when SHEEPDOG_TEST_POWERLOSS is not "1"; otherwise the same store behind the
 * power-loss log (installed once per process) covering `roots` (the base dir and every disk).
 */
export function powerLossStore(store: ObjectStore, roots: string[]): ObjectStore {
  installPowerLossShim(roots);
  return store;
}

/** Installs the shim over `roots` when SHEEPDOG_TEST_POWERLOSS=1 (once per process). */
export function installPowerLossShim(roots: string[]): void {
  if (process.env[POWERLOSS_ENV] !== "1") return;
  if (!active) {
    active = new PowerLossLog(roots.map((r) => path.resolve(r)));
    active.install();
    const log = active;
    process.on("SIGUSR2", () => log.cut());
    process.stderr.write(`sheep: ${POWERLOSS_ENV}=1: test-only power-loss shim active\n`);
  }
}
