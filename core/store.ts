// The object store's pure part (sheep-daemon.md §2.2, §9): the ObjectStore interface, per-object
// locks, group commit and the in-memory object index. The files live in io/store.ts.
import type { Buffer } from "node:buffer";
import { assert } from "./assert.ts";
import type { WriteRun } from "./write-runs.ts";

export interface ObjectStore {
  readonly kind: "plain" | "tree";
  init(): Promise<void>;
  format(): Promise<void>;
  exists(oid: bigint, ecIndex?: number): boolean;
  read(oid: bigint, offset: number, length: number, ecIndex?: number): Promise<Buffer>;
  createAndWrite(
    oid: bigint,
    offset: number,
    data: Buffer,
    objSize: number,
    ecIndex?: number,
  ): Promise<void>;
  /**
   * `nosync`: no fdatasync; the caller's next synced write of the same file covers it (the data
   * is in the page cache when this resolves).
   */
  write(
    oid: bigint,
    offset: number,
    data: Buffer,
    ecIndex?: number,
    nosync?: boolean,
  ): Promise<void>;
  /**
   * Several runs of one replicated object (WRITE_RUNS_PEER, the object cache's push), on disk
   * when this resolves (one sync for all, none with `nosync`).
   */
  writeRuns(
    oid: bigint,
    runs: ReadonlyArray<WriteRun>,
    nosync?: boolean,
  ): Promise<void>;
  remove(oid: bigint, ecIndex?: number): Promise<void>;
  list(): bigint[];
  objectBytes(): bigint;
  statfs(): { size: bigint; free: bigint };
  moveToStale(oid: bigint, epoch: number, ecIndex?: number): Promise<void>;
  readStale(
    oid: bigint,
    epoch: number,
    offset: number,
    length: number,
    ecIndex?: number,
  ): Promise<Buffer>;
  /**
   * The stale copy of `epoch` becomes the current object again, renamed back with its side file
   * (recovery found it equal to its source's copy: nothing is transferred or rewritten). NO_OBJ
   * when there is no such copy; nothing happens when a current copy exists.
   */
  reviveStale(oid: bigint, epoch: number, ecIndex?: number): Promise<void>;
  purgeStale(): Promise<void>;
  /** Stale copies present (recovery sources): oid, the epoch they belonged to, EC index. */
  listStale(): Array<{ oid: bigint; epoch: number; ecIndex?: number }>;
  /**
   * Checks the file really is on disk (a replica deleted behind our back, e.g. by a failing disk
   * or an operator): forgets it when it is not. Consistency checks use this, not the cache.
   */
  verify(oid: bigint, ecIndex?: number): boolean;
  /** Per-disk usage for MD_INFO, in path order: free bytes and bytes held by objects. */
  diskInfo(): Array<{ path: string; free: bigint; used: bigint }>;
  path(oid: bigint, ecIndex?: number): string;
  /**
   * Reads the whole file and checks it against its stored checksums (io/checksum.ts): `ok` false
   * on a mismatch; an object without stored checksums (written before them) counts as ok.
   */
  scrubObject(oid: bigint, ecIndex?: number): Promise<{ ok: boolean; bytes: number }>;
  /** Every object file: oid and EC strip index. */
  listFiles(): Array<{ oid: bigint; ecIndex?: number }>;
  /** Active disks (md), in path order. */
  diskPaths(): string[];
  /** `dog node md plug`: disks added (purged first); objects move to them in the background. */
  plug(paths: string[]): number;
  /** `dog node md unplug`: disks removed (never the last); their objects move off first. */
  unplug(paths: string[]): number;
  /** Resolves when no object waits to be moved between disks. */
  rebalanced(): Promise<void>;
  /** Stops the disk health checks and closes descriptors (the store is being replaced). */
  close(): void;
}

/** Shared/exclusive lock per object name, FIFO-fair. Writes share, create/remove/move are exclusive. */
export class KeyedRwLock {
  private locks = new Map<
    string,
    { readers: number; writer: boolean; queue: { excl: boolean; go: () => void }[] }
  >();

  async run<T>(key: string, excl: boolean, fn: () => Promise<T> | T): Promise<T> {
    let l = this.locks.get(key);
    if (!l) this.locks.set(key, l = { readers: 0, writer: false, queue: [] });
    const st = l;
    if (st.writer || st.queue.length > 0 || (excl && st.readers > 0)) {
      await new Promise<void>((go) => st.queue.push({ excl, go }));
    } else if (excl) st.writer = true;
    else st.readers++;
    try {
      return await fn();
    } finally {
      if (excl) st.writer = false;
      else st.readers--;
      this.grant(key, st);
    }
  }

  private grant(
    key: string,
    st: { readers: number; writer: boolean; queue: { excl: boolean; go: () => void }[] },
  ) {
    while (st.queue.length > 0 && !st.writer) {
      const head = st.queue[0];
      if (head.excl) {
        if (st.readers > 0) break;
        st.writer = true;
      } else st.readers++;
      st.queue.shift();
      head.go();
    }
    if (!st.writer && st.readers === 0 && st.queue.length === 0) this.locks.delete(key);
  }
}

/**
 * Group commit for directory syncs: a rename is durable once a sync of its directory that
 * started after it completes. Callers arriving while a sync runs share the next one, so N
 * concurrent creates in a directory cost about two syncs instead of N.
 */
export class GroupSync {
  private running: Promise<void> | null = null;
  private queued: Promise<void> | null = null;
  constructor(private readonly run: () => Promise<void>) {}
  sync(): Promise<void> {
    if (!this.running) return this.start();
    if (!this.queued) {
      // The running sync's failure belongs to its own callers; the queued one starts regardless.
      this.queued = this.running.catch(() => {}).then(() => {
        this.queued = null;
        return this.start();
      });
    }
    return this.queued;
  }
  private start(): Promise<void> {
    const p = (async () => {
      try {
        await this.run();
      } finally {
        this.running = null;
      }
    })();
    this.running = p;
    return p;
  }
}

/** Name of a store's object file -> what the store knows about it (disk, bytes, ...). */
export interface IndexedObject {
  oid: bigint;
  bytes: bigint;
}

/**
 * The in-memory object list of a store: files by name, how many files each oid has (EC strips
 * share an oid), the sorted oid list (cached) and the bytes they take.
 */
export class ObjectIndex<E extends IndexedObject> {
  private entries = new Map<string, E>();
  private oidCount = new Map<bigint, number>();
  private sortedCache: bigint[] | null = null;
  private used = 0n;

  get usedBytes(): bigint {
    return this.used;
  }

  get(name: string): E | undefined {
    return this.entries.get(name);
  }

  add(name: string, e: E): void {
    const old = this.entries.get(name);
    if (old) {
      assert(old.oid === e.oid, `object index: ${name} changes oid`);
      this.used -= old.bytes;
    } else {
      this.oidCount.set(e.oid, (this.oidCount.get(e.oid) ?? 0) + 1);
      if (this.oidCount.get(e.oid) === 1) this.sortedCache = null;
    }
    this.entries.set(name, e);
    this.used += e.bytes;
    assert(this.used >= 0n, `object index: ${this.used} bytes used after adding ${name}`);
  }

  drop(name: string): void {
    const e = this.entries.get(name);
    if (!e) return;
    this.entries.delete(name);
    this.used -= e.bytes;
    const n = this.oidCount.get(e.oid) ?? 0;
    assert(n > 0, `object index: ${name} listed but its oid is not counted`);
    if (n === 1) {
      this.oidCount.delete(e.oid);
      this.sortedCache = null;
    } else this.oidCount.set(e.oid, n - 1);
    assert(this.used >= 0n, `object index: ${this.used} bytes used after dropping ${name}`);
  }

  /** The file of `name` now takes `bytes`. */
  resize(name: string, bytes: bigint): void {
    const e = this.entries.get(name);
    assert(e !== undefined, `object index: resizing unlisted ${name}`);
    this.used += bytes - e.bytes;
    e.bytes = bytes;
    assert(this.used >= 0n, `object index: ${this.used} bytes used after resizing ${name}`);
  }

  clear(): void {
    this.entries.clear();
    this.oidCount.clear();
    this.sortedCache = null;
    this.used = 0n;
  }

  values(): E[] {
    return [...this.entries.values()];
  }

  /** Oids with at least one file, ascending. */
  list(): bigint[] {
    if (!this.sortedCache) {
      this.sortedCache = [...this.oidCount.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    }
    return this.sortedCache.slice();
  }
}
