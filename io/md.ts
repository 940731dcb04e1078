// Multi-disk (sheep-daemon.md §9): the set of object directories of one sheep, each weighted by
// its capacity on upstream's per-node vdisk ring, with their layout, capacity and health checks.
// The store (io/store.ts) decides which objects live where; this file knows only the disks.
import fs from "node:fs";
import { DiskRing } from "../core/ring.ts";
import type { DataIo } from "./fd-cache.ts";

/** A disk left the set (failed, or unplugged and emptied) or joined it: the daemon reacts. */
export interface DiskEvent {
  kind: "failed" | "plugged" | "unplugged" | "emptied";
  path: string;
  /** Active disks left. */
  left: number;
  /** Objects this store no longer has (a failed disk's): recovery must fetch them. */
  lost: number;
  reason?: string;
}

export interface StoreOptions {
  nosync?: boolean;
  checksums?: boolean;
  /** Object data I/O (DirectIo under `sheep -D`). */
  io?: DataIo;
  onDisk?: (ev: DiskEvent) => void;
  log?: (level: "info" | "warn" | "err", msg: string) => void;
  /** Disk health check period (ms); 0 disables. */
  healthMs?: number;
}

export interface Disk {
  path: string;
  capacity: bigint;
  /** Identity of the directory when the disk was set up: another or none = the disk is gone. */
  dev: number;
  ino: number;
  /** Unplugged or failed: no longer picked; its objects are moved or recovered away. */
  gone: boolean;
}

export function trimSlash(p: string): string {
  return p.length > 1 ? p.replace(/\/+$/, "") : p;
}

/** Errors that mean the disk itself is broken, not the object (upstream's md_handle_eio). */
const DISK_ERRNOS = new Set(["EIO", "EROFS", "ENODEV", "ENXIO", "ESTALE", "EUCLEAN", "ENOTCONN"]);

export function isDiskErrno(e: unknown): boolean {
  return DISK_ERRNOS.has((e as { code?: string })?.code ?? "");
}

export function subdirNames(kind: "plain" | "tree"): string[] {
  if (kind === "plain") return [""];
  const dirs = ["meta"];
  for (let i = 0; i < 256; i++) dirs.push(i.toString(16).padStart(2, "0"));
  return dirs;
}

/** Creates the layout of a disk and returns it; `purge` wipes what the directory held (plug). */
export function setupDisk(path: string, kind: "plain" | "tree", purge: boolean): Disk {
  fs.mkdirSync(path, { recursive: true });
  if (!fs.statSync(path).isDirectory()) {
    throw Object.assign(new Error(`${path} is not a directory`), { code: "ENOTDIR" });
  }
  if (purge) {
    for (const n of fs.readdirSync(path)) {
      fs.rmSync(`${path}/${n}`, { recursive: true, force: true });
    }
  }
  fs.mkdirSync(`${path}/.stale`, { recursive: true });
  for (const s of subdirNames(kind)) if (s) fs.mkdirSync(`${path}/${s}`, { recursive: true });
  const st = fs.statSync(path);
  return { path, capacity: diskCapacity(path), dev: st.dev, ino: st.ino, gone: false };
}

/**
 * Disk capacity = its free space at first use. Upstream keeps it in the xattr `user.md.size`;
 * node:fs has no xattr API, so we persist it in `<disk>/.md.size` (decimal bytes) instead.
 */
function diskCapacity(dir: string): bigint {
  const f = `${dir}/.md.size`;
  try {
    const v = BigInt(fs.readFileSync(f, "utf8").trim());
    if (v > 0n) return v;
  } catch { /* first use */ }
  const s = fs.statfsSync(dir);
  const cap = BigInt(s.bavail) * BigInt(s.bsize);
  fs.writeFileSync(f + ".tmp", cap.toString() + "\n");
  fs.renameSync(f + ".tmp", f);
  return cap;
}

/** The disk is still the one set up: its directory is there, same filesystem and inode. */
export function diskHealthy(d: Disk): boolean {
  try {
    const st = fs.statSync(d.path);
    return st.dev === d.dev && st.ino === d.ino;
  } catch {
    return false;
  }
}

/** Active disks in path order (upstream's rb-tree order) and the ring placing objects on them. */
export class DiskSet {
  private list: Disk[] = [];
  private ring: DiskRing | null = null;

  constructor(disks: Disk[]) {
    this.set(disks);
  }

  set(disks: Disk[]) {
    this.list = [...disks].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    this.ring = this.list.length > 1
      ? new DiskRing(
        this.list.map((d) => ({ path: d.path, capacity: d.capacity > 0n ? d.capacity : 1n })),
      )
      : null;
  }

  get disks(): readonly Disk[] {
    return this.list;
  }

  get size(): number {
    return this.list.length;
  }

  find(path: string): Disk | undefined {
    const p = trimSlash(path);
    return this.list.find((d) => d.path === p);
  }

  /** The disk the ring gives `oid` (the only one when there is one), undefined when none. */
  pick(oid: bigint): Disk | undefined {
    return this.ring ? this.list[this.ring.pickDisk(oid)] : this.list[0];
  }

  add(d: Disk) {
    this.set([...this.list, d]);
  }

  remove(d: Disk) {
    this.set(this.list.filter((x) => x !== d));
  }
}
