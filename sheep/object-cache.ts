// The object cache (`sheep -w`, issue 12): data objects of the VDIs this sheep serves, kept in
// files under the cache dir (io/cache-file.ts) with their dirty blocks (core/cache-index.ts).
//
// Write-back: a write with SD_FLAG_CMD_CACHE is acknowledged once it is in the cache file; the
// push (flush, FUA, detach, `dog vdi cache flush`, the background writer) sends an object's dirty
// runs through the gateway (Gateway.writeRuns: one fdatasync per replica for all of them), so
// every replica has them on disk when the push returns. A new object
// is created in the cache only: its push is a CREATE_AND_WRITE of the whole object (a clone's
// object was seeded from its base when it was created here, exactly as the gateway's own
// copy-on-write does) followed by the inode slot that points to it. The client's own slot update
// for such an object is absorbed here, so a slot never reaches the cluster before its data.
// Inode objects are never held dirty: the cluster itself rewrites parts of them (reference
// counts on every slot change, the header on snapshot), so a cached copy would go stale.
//
// Without the CACHE flag a write is write-through: into the cache file if the object is cached,
// then pushed before the answer. Reads are served from the cache, or pull the whole object; a
// write that misses fetches only the partial 4 KiB sectors it touches (dirty and valid bits are
// per sector, CRCs per 64 KiB block).
// Dirty objects are never dropped before they are pushed: when dirty data fills the cache a new
// object waits for the writer; LRU reclaim drops only clean, idle objects.
import { Buffer } from "node:buffer";
import {
  allSectors,
  blockCountOf,
  blockSizeOf,
  type CacheEntry,
  CacheIndex,
  coveredSectors,
  fileBytes,
  maskRuns,
  mergeRuns,
  popcount,
  sectorCountOf,
  sectorMask,
  sectorSizeOf,
} from "../core/cache-index.ts";
import { SdError } from "../core/errors.ts";
import {
  dataOidToIdx,
  isDataObj,
  oidToVid,
  SD_INODE_DATA_INDEX_OFFSET,
  SD_INODE_GREF_OFFSET,
  vidToDataOid,
  vidToVdiOid,
} from "../core/oid.ts";
import { Limiter, runLimited } from "../core/object-io.ts";
import { EMPTY, Flag, Header, Op, Res } from "../core/proto.ts";
import type { VdiTable } from "../core/vdi.ts";
import { allocWriteRuns, MAX_WRITE_RUNS, type WriteRun } from "../core/write-runs.ts";
import { CacheFiles, crc } from "../io/cache-file.ts";
import { zeroCrc } from "../io/checksum.ts";
import type { CacheOptions } from "./options.ts";
import type { Logger } from "./log.ts";
import type { Reply } from "./ops/reply.ts";

/** What the cache sees of the daemon: the uncached gateway path and the VDI table. */
export interface CacheContext {
  readonly log: Logger;
  readonly vdis: VdiTable;
  /** READ_OBJ / WRITE_OBJ / CREATE_AND_WRITE_OBJ through the gateway, bypassing the cache. */
  cacheForward(hdr: Header, data: Buffer): Promise<Reply>;
  /** WRITE_OBJ of several runs of one object, on disk everywhere at one sync per replica. */
  cachePush(
    hdr: Header,
    runs: ReadonlyArray<WriteRun>,
    limit: <T>(f: () => Promise<T>) => Promise<T>,
  ): Promise<Reply[]>;
  objectSize(oid: bigint): number;
  /** This sheep's host:port, as VDI lock owners are named. */
  selfName(): string;
  /** Resolves when this sheep's recovery is not running. */
  recoveryIdle(): Promise<void>;
}

/** Background writer: dirty data above a quarter of the cache, or older than this, is pushed. */
const MAX_DIRTY_AGE_MS = 2000;
const WRITER_TICK_MS = 250;
/** Objects pushed at once by a flush or the writer. */
const PUSH_PARALLEL = 16;
/**
 * Push requests in flight at once, over all objects: enough to overlap the replicas' fdatasyncs;
 * more only queues work in front of the clients' own requests (the sheep is CPU bound by then).
 */
const PUSH_REQUESTS = 16;
/**
 * Dirty runs of an object separated by at most this many valid sectors are pushed as one. All of
 * an object's runs go in one WRITE_RUNS_PEER request, so a join saves only a read here and a
 * write per replica, and costs the gap's bytes read, sent and written three times: random 4 KiB
 * writes leave gaps of ~50 sectors per object between FLUSHes, and a gap of 16 tripled what the
 * push sent (its long synchronous reads and copies stalled the NBD writes behind them).
 */
const MERGE_GAP = 1;

function ok(data: Buffer = EMPTY): Reply {
  return { hdr: new Header(), data };
}

function check(r: Reply, what: string): Reply {
  if (r.hdr.result !== Res.SUCCESS) throw new SdError(r.hdr.result, what);
  return r;
}

export class ObjectCache {
  readonly index: CacheIndex;
  readonly files: CacheFiles;
  private readonly locks = new Map<bigint, Promise<void>>();
  private readonly pulling = new Map<bigint, Promise<CacheEntry>>();
  /** Files being written for entries already in the index: readers wait for them. */
  private readonly loading = new Map<bigint, Promise<void>>();
  private readonly pushing = new Map<CacheEntry, Promise<void>>();
  private readonly requests = new Limiter(PUSH_REQUESTS);
  /** Per VDI: the flush running and the one that callers arriving meanwhile share. */
  private readonly flushes = new Map<
    number,
    { running: Promise<void>; next: Promise<void> | null }
  >();
  private roomWaiters: Array<() => void> = [];
  private timer: ReturnType<typeof setInterval> | null = null;
  private writerBusy = false;
  /** VDIs whose dirty objects from before a restart are still being pushed. */
  private readonly recovering = new Map<number, Promise<void>>();
  /** VDIs another gateway is about to snapshot or delete: written through until then. */
  private readonly quiesced = new Map<number, number>();
  /** Counters for metrics: hits, misses, pushes, reclaimed objects. */
  readonly counters = { hits: 0, misses: 0, pushed: 0, reclaimed: 0, dropped: 0 };

  constructor(private readonly s: CacheContext, readonly opts: CacheOptions, root: string) {
    this.index = new CacheIndex(opts.size);
    this.files = new CacheFiles(root, opts.directio);
  }

  get directio(): boolean {
    return this.opts.directio;
  }

  /**
   * Checks the directory and every file left by an earlier run. Clean objects are dropped (while
   * this sheep was down another gateway may have written the VDI), dirty ones kept for push().
   */
  async open(): Promise<void> {
    await this.files.probe();
    let clean = 0;
    const kept = this.files.scan((file, why) => {
      this.counters.dropped++;
      this.s.log.err(`object cache: dropped ${file}: ${why}`);
    });
    for (const { header: h } of kept) {
      if (h.dirty === 0n && !h.create) {
        this.files.remove(h.oid).catch(() => {});
        clean++;
        continue;
      }
      this.index.add({
        oid: h.oid,
        vid: oidToVid(h.oid),
        objSize: h.objSize,
        dirty: h.dirty,
        valid: h.valid,
        create: h.create,
        dirtySince: 0,
        pins: 0,
        crcs: h.crcs,
      });
    }
    const dirty = this.index.size;
    this.s.log.info(
      `object cache: ${this.files.root}, ${Math.floor(this.opts.size / 2 ** 20)} MiB${
        this.opts.directio ? ", directio" : ""
      }; from the last run ${dirty} dirty objects to push, ${clean} clean dropped`,
    );
  }

  /**
   * Pushes what survived a restart, per VDI, before the VDI is served (ready() waits). A VDI whose
   * lock another sheep now holds was attached elsewhere meanwhile: our unflushed data is older
   * than what it may have written, so it is dropped, loudly.
   */
  recover(): void {
    // After this sheep's own recovery: a copy it fetches must not land on top of a push.
    const idle = this.index.size ? this.s.recoveryIdle() : Promise.resolve();
    for (const vid of this.index.vids()) {
      const p = (async () => {
        await idle;
        const owner = this.s.vdis.locks.get(vid)?.owner;
        const st = this.s.vdis.states.get(vid);
        if ((owner && owner !== this.s.selfName()) || !st || st.deleted || st.snapshot) {
          const n = this.index.entriesOf(vid).length;
          this.s.log.err(
            `object cache: VDI ${
              vid.toString(16)
            }: ${n} unflushed objects from before the restart dropped (${
              owner ? `now locked by ${owner}` : "VDI gone or snapshotted"
            })`,
          );
          await this.dropVdi(vid);
          return;
        }
        try {
          await this.flushVdi(vid, true);
          this.s.log.info(`object cache: VDI ${vid.toString(16)}: unflushed objects pushed`);
        } catch (e) {
          this.s.log.err(`object cache: VDI ${vid.toString(16)}: push after restart failed: ${e}`);
        }
      })().finally(() => this.recovering.delete(vid));
      this.recovering.set(vid, p);
    }
  }

  /** Resolves once objects of `vid` from before a restart are pushed. */
  async ready(vid: number): Promise<void> {
    const p = this.recovering.get(vid);
    if (p) await p;
  }

  start(): void {
    this.timer = setInterval(() => this.writerTick(), WRITER_TICK_MS);
    (this.timer as { unref?: () => void }).unref?.();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.flushAll().catch((e) => this.s.log.err(`object cache: flush at exit: ${e}`));
    await this.files.closeAll();
  }

  /** Whether requests for `oid` go through the cache at all: data objects only. */
  static cacheable(oid: bigint): boolean {
    return isDataObj(oid);
  }

  /** Another gateway will snapshot or delete `vid`: write it through until that happened. */
  quiesce(vid: number, ms = 60_000): void {
    this.quiesced.set(vid, Date.now() + ms);
  }

  private writeBack(req: Header, vid: number): boolean {
    if (!(req.flags & Flag.CMD_CACHE)) return false;
    const until = this.quiesced.get(vid);
    if (until === undefined) return true;
    if (until > Date.now()) return false;
    this.quiesced.delete(vid);
    return true;
  }

  // ------------------------------------------------------------------ per-object serialization

  private async withLock<T>(oid: bigint, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(oid) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => release = r);
    const chained = prev.then(() => mine);
    this.locks.set(oid, chained);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.locks.get(oid) === chained) this.locks.delete(oid);
    }
  }

  // ------------------------------------------------------------------ requests

  /** READ_OBJ of a data object: from the cache, or (CACHE flag) pulled whole; null: not ours. */
  async read(req: Header): Promise<Reply | null> {
    const oid = req.oid;
    await this.ready(oidToVid(oid));
    let e = this.index.get(oid);
    if (!e) {
      if (!(req.flags & Flag.CMD_CACHE)) return null;
      this.counters.misses++;
      e = await this.pull(oid); // pinned for us
    } else {
      this.counters.hits++;
      e.pins++;
      await this.loading.get(oid); // an entry is indexed before its file is in place
    }
    try {
      const off = req.offset, len = Math.max(0, Math.min(req.dataLength, e.objSize - off));
      const data = await this.readRange(e, off, len);
      this.index.touch(e);
      return ok(data);
    } catch (err) {
      // Dropped under us (detach, delete): it was pushed first, so the cluster has it.
      if (this.index.get(oid) !== e) return null;
      throw err;
    } finally {
      this.unpin(e);
    }
  }

  /** WRITE_OBJ of a data object; null: not cached and not write-back, the gateway does it. */
  async write(req: Header, data: Buffer): Promise<Reply | null> {
    const oid = req.oid;
    const vid = oidToVid(oid);
    await this.ready(vid);
    const wb = this.writeBack(req, vid);
    for (;;) {
      let e = this.index.get(oid);
      if (!e) {
        if (!wb) return null;
        e = await this.pull(oid, true); // pinned for us; only what the write needs is read
      } else e.pins++;
      try {
        // False: the entry was dropped meanwhile; look again.
        if (!(await this.writeRange(e, req.offset, data))) continue;
      } finally {
        this.unpin(e);
      }
      if (!wb) await this.push(e);
      return ok();
    }
  }

  /**
   * CREATE_AND_WRITE_OBJ of a data object with the CACHE flag: the whole new object (seeded
   * from cow_oid for a clone) is made here, dirty and marked for creation. Without the flag a
   * stale copy is dropped and the gateway creates it (null).
   */
  async create(req: Header, data: Buffer): Promise<Reply | null> {
    const oid = req.oid;
    const vid = oidToVid(oid);
    await this.ready(vid);
    const old = this.index.get(oid);
    if (!this.writeBack(req, vid)) {
      if (old) await this.drop(old);
      return null;
    }
    // Created here and not pushed: its slot is not in the cluster's inode yet, so a client that
    // read the inode meanwhile (a reconnect) creates it again. It is the same object: a write.
    if (old?.create) {
      old.pins++;
      try {
        if (await this.writeRange(old, req.offset, data)) return ok();
      } finally {
        this.unpin(old);
      }
    }
    const objSize = this.s.objectSize(oid);
    const all = allSectors(objSize);
    if (!(req.flags & Flag.CMD_COW && req.cowOid)) {
      // A new object is zeros: a sparse file, every sector valid, then the payload written as
      // any write (no 4 MiB of zeros copied, summed and written first).
      if (old) await this.drop(old);
      const e = await this.insert(oid, null, all, true, true);
      e.pins++;
      try {
        // Dropped before the payload landed (a foreign write, a delete): the gateway creates it.
        return (await this.writeRange(e, req.offset, data)) ? ok() : null;
      } finally {
        this.unpin(e);
      }
    }
    // A clone's object: seeded from its base, as the gateway's copy-on-write does.
    const full = Buffer.alloc(objSize);
    const base = this.index.get(req.cowOid);
    if (base) {
      base.pins++;
      try {
        (await this.readRange(base, 0, base.objSize)).copy(full);
      } finally {
        this.unpin(base);
      }
    } else {
      const rh = Header.req(Op.READ_OBJ, { dataLength: objSize });
      rh.oid = req.cowOid;
      const r = check(await this.s.cacheForward(rh, EMPTY), `reading ${req.cowOid.toString(16)}`);
      r.data.copy(full, Number(r.hdr.rspObjOffset));
    }
    data.copy(full, req.offset);
    if (old) await this.drop(old);
    await this.insert(oid, full, all, true);
    return ok();
  }

  /**
   * A write to an inode outside the cache. Slot updates that only point at objects created here
   * and not pushed yet are absorbed (their push writes the slot after the data); anything else
   * first pushes those objects, so the cluster never sees a slot before its object.
   */
  async inodeWrite(req: Header, data: Buffer): Promise<Reply | null> {
    const vid = oidToVid(req.oid);
    const pending = this.index.entriesOf(vid).filter((e) => e.create);
    if (pending.length === 0) return null;
    const start = req.offset, end = start + data.length;
    const aligned = start >= SD_INODE_DATA_INDEX_OFFSET && end <= SD_INODE_GREF_OFFSET &&
      (start - SD_INODE_DATA_INDEX_OFFSET) % 4 === 0 && data.length % 4 === 0;
    if (aligned && this.s.vdis.states.get(vid)?.snapshot === false) {
      const first = (start - SD_INODE_DATA_INDEX_OFFSET) / 4;
      let absorbed = true;
      for (let i = 0; i < data.length / 4 && absorbed; i++) {
        const e = this.index.get(vidToDataOid(vid, first + i));
        absorbed = data.readUInt32LE(4 * i) === vid && !!e?.create;
      }
      if (absorbed) return ok();
    }
    await runLimited(pending, PUSH_PARALLEL, (e) => this.push(e));
    return null;
  }

  /** Pushes the objects of `vid` created here, before a metadata write of it goes out. */
  async pushCreated(vid: number): Promise<void> {
    const pending = this.index.entriesOf(vid).filter((e) => e.create);
    await runLimited(pending, PUSH_PARALLEL, (e) => this.push(e));
  }

  /** REMOVE_OBJ of a cached object: the copy goes too. */
  async forget(oid: bigint): Promise<void> {
    const e = this.index.get(oid);
    if (e) await this.drop(e);
  }

  // ------------------------------------------------------------------ file I/O of one entry

  private async readRange(e: CacheEntry, off: number, len: number): Promise<Buffer> {
    if (len === 0) return EMPTY;
    const need = sectorMask(off, len, e.objSize);
    if ((e.valid & need) !== need) await this.fill(e, off, len);
    if (!this.opts.directio) return await this.files.read(e.oid, off, len);
    const a = Math.floor(off / 4096) * 4096;
    const b = Math.min(e.objSize, Math.ceil((off + len) / 4096) * 4096);
    const buf = await this.files.read(e.oid, a, b - a);
    return buf.subarray(off - a, off - a + len);
  }

  /** Blocks of `mask` not in the file yet, read from the cluster (runs of them). */
  private async fetchBlocks(e: CacheEntry, mask: bigint): Promise<Array<[number, Buffer]>> {
    const ss = sectorSizeOf(e.objSize);
    return await Promise.all(
      maskRuns(mask & ~e.valid).map(async ([a, b]) => {
        const off = a * ss, len = Math.min(e.objSize, b * ss) - off;
        const h = Header.req(Op.READ_OBJ, { dataLength: len });
        h.oid = e.oid;
        h.offset = off;
        const r = check(await this.s.cacheForward(h, EMPTY), `reading ${e.oid.toString(16)}`);
        const buf = Buffer.alloc(len);
        r.data.copy(buf, Math.min(Number(r.hdr.rspObjOffset), len));
        return [off, buf] as [number, Buffer];
      }),
    );
  }

  /** Makes [off, off+len) valid: what the file lacks of its blocks, fetched from the cluster. */
  private fill(e: CacheEntry, off: number, len: number): Promise<void> {
    return this.withLock(e.oid, async () => {
      if (this.index.get(e.oid) !== e) return;
      const bs = blockSizeOf(e.objSize);
      const b0 = Math.floor(off / bs), b1 = Math.ceil((off + len) / bs);
      const start = b0 * bs, end = Math.min(e.objSize, b1 * bs);
      const span = sectorMask(start, end - start, e.objSize);
      if ((e.valid & span) === span) return;
      const buf = await this.files.read(e.oid, start, end - start);
      for (const [o, b] of await this.fetchBlocks(e, span)) b.copy(buf, o - start);
      e.valid |= span;
      sealBlocks(e, b0, b1, buf, bs);
      await this.files.write(this.headerOf(e), start, buf);
    });
  }

  /**
   * Writes the range into the file with its sectors' CRCs. Sectors the write covers whole need
   * nothing else (no read: the 4 KiB ack path is two page-cache writes, data and header); only
   * the partial sectors at its ends are read, from the file or, not there yet, the cluster.
   */
  private writeRange(e: CacheEntry, off: number, data: Buffer): Promise<boolean> {
    if (off < 0 || off + data.length > e.objSize) {
      return Promise.reject(new SdError(Res.INVALID_PARMS, "write beyond the object"));
    }
    return this.withLock(e.oid, async () => {
      if (this.index.get(e.oid) !== e) return false;
      const bs = blockSizeOf(e.objSize);
      const b0 = Math.floor(off / bs), b1 = Math.ceil((off + data.length) / bs);
      const start = b0 * bs, end = Math.min(e.objSize, b1 * bs);
      const touched = sectorMask(off, data.length, e.objSize);
      let buf: Buffer;
      // O_DIRECT needs the cache's own aligned buffers.
      if (start === off && end === off + data.length && !this.opts.directio) buf = data;
      else {
        buf = await this.files.read(e.oid, start, end - start);
        // Touched sectors the write does not cover whole and the file lacks: from the cluster.
        const partial = touched & ~coveredSectors(off, data.length, e.objSize) & ~e.valid;
        if (partial) {
          for (const [o, b] of await this.fetchBlocks(e, partial)) b.copy(buf, o - start);
        }
        data.copy(buf, off - start);
      }
      e.valid |= touched;
      sealBlocks(e, b0, b1, buf, bs);
      this.index.markDirty(e, touched, Date.now());
      await this.files.write(this.headerOf(e), start, buf);
      this.index.touch(e);
      return true;
    });
  }

  private headerOf(e: CacheEntry) {
    const { oid, objSize, create, dirty, valid, crcs } = e;
    return { oid, objSize, create, dirty, valid, crcs };
  }

  /**
   * A new entry from whole object bytes (a pull, clean, or a create, dirty); without bytes a
   * sparse file, its sectors valid only when `zeros` (a new object is all zeros).
   */
  private async insert(
    oid: bigint,
    full: Buffer | null,
    dirty: bigint,
    create: boolean,
    zeros = false,
  ): Promise<CacheEntry> {
    const objSize = full ? full.length : this.s.objectSize(oid);
    await this.makeRoom(fileBytes(objSize));
    const bs = blockSizeOf(objSize);
    const n = blockCountOf(objSize);
    const crcs = new Uint32Array(n);
    for (let b = 0; b < n; b++) {
      const len = Math.min(objSize, (b + 1) * bs) - b * bs;
      crcs[b] = full ? crc(full.subarray(b * bs, b * bs + len)) : zeroCrc(len);
    }
    const e: CacheEntry = {
      oid,
      vid: oidToVid(oid),
      objSize,
      dirty: 0n,
      valid: full || zeros ? allSectors(objSize) : 0n,
      create,
      dirtySince: 0,
      pins: 1,
      crcs,
    };
    this.index.add(e); // counted before the file exists: the cache never exceeds its size
    try {
      // Under the object's lock: a push or write of it waits until the file is there.
      const loading = this.withLock(oid, async () => {
        if (dirty) this.index.markDirty(e, dirty, Date.now());
        await this.files.create(this.headerOf(e), full);
      });
      this.loading.set(oid, loading.catch(() => {}));
      try {
        await loading;
      } finally {
        this.loading.delete(oid);
      }
    } catch (err) {
      this.index.remove(e);
      await this.files.remove(oid).catch(() => {});
      throw err;
    } finally {
      this.unpin(e);
    }
    return e;
  }

  /** Pulls the whole object from the cluster into the cache (clean). */
  private pull(oid: bigint, empty = false): Promise<CacheEntry> {
    let p = this.pulling.get(oid);
    if (!p) {
      p = (async () => {
        let full: Buffer | null = null;
        if (!empty) {
          const objSize = this.s.objectSize(oid);
          const h = Header.req(Op.READ_OBJ, { dataLength: objSize });
          h.oid = oid;
          const r = check(await this.s.cacheForward(h, EMPTY), `reading ${oid.toString(16)}`);
          full = Buffer.alloc(objSize);
          r.data.copy(full, Number(r.hdr.rspObjOffset));
        }
        const e = await this.insert(oid, full, 0n, false);
        e.pins++; // the caller's pin: not reclaimed before it is served
        return e;
      })().finally(() => this.pulling.delete(oid));
      this.pulling.set(oid, p);
      return p;
    }
    return p.then((e) => {
      e.pins++;
      return e;
    });
  }

  private unpin(e: CacheEntry): void {
    e.pins--;
    if (e.pins <= 0) this.wakeRoom();
  }

  // ------------------------------------------------------------------ space

  /** Drops clean LRU objects until `bytes` fit; waits for the writer while dirty data fills it. */
  private async makeRoom(bytes: number): Promise<void> {
    if (bytes > this.index.capacity) {
      throw new SdError(Res.NO_SPACE, "object larger than the whole cache");
    }
    for (;;) {
      const v = this.index.victims(bytes);
      if (v) {
        for (const e of v) {
          this.index.remove(e);
          this.counters.reclaimed++;
          await this.files.remove(e.oid);
        }
        if (this.index.fits(bytes)) return;
        continue;
      }
      // Full of dirty (or busy) objects: push the oldest, then look again.
      void this.writerTick(true);
      await new Promise<void>((r) => {
        this.roomWaiters.push(r);
        setTimeout(r, 200);
      });
    }
  }

  private wakeRoom(): void {
    const w = this.roomWaiters;
    this.roomWaiters = [];
    for (const r of w) r();
  }

  // ------------------------------------------------------------------ push

  /** Pushes one object's dirty blocks (and creates it, then writes its slot) to every replica. */
  push(e: CacheEntry): Promise<void> {
    const busy = this.pushing.get(e);
    if (busy) return busy.catch(() => {}).then(() => this.push(e));
    if (e.dirty === 0n && !e.create) return Promise.resolve();
    const p = this.pushOnce(e).finally(() => {
      this.pushing.delete(e);
      this.wakeRoom();
    });
    this.pushing.set(e, p);
    return p;
  }

  private async pushOnce(e: CacheEntry): Promise<void> {
    const since = e.dirtySince;
    const st = this.s.vdis.states.get(e.vid);
    const copies = st?.nrCopies ?? 0, copyPolicy = st?.copyPolicy ?? 0;
    let mask = 0n;
    let parts: Array<WriteRun> = [];
    e.pins++;
    try {
      await this.withLock(e.oid, async () => {
        mask = this.index.takeDirty(e);
        const ss = sectorSizeOf(e.objSize);
        // A new object goes whole; an existing one gets only its dirty runs of sectors (close
        // ones joined).
        const spans = (e.create
          ? [[0, sectorCountOf(e.objSize)]]
          : mergeRuns(maskRuns(mask), e.valid, MERGE_GAP))
          .map(([a, b]) => ({ off: a * ss, length: Math.min(e.objSize, b * ss) - a * ss }));
        if (spans.length > 1 && spans.length <= MAX_WRITE_RUNS && !this.opts.directio) {
          // Read straight into the WRITE_RUNS_PEER payload: no copy of the runs to encode it.
          parts = allocWriteRuns(spans);
          for (const p of parts) {
            this.files.readInto(e.oid, p.off, p.data);
          }
        } else {
          for (const { off, length } of spans) {
            parts.push({ off, data: await this.files.read(e.oid, off, length) });
          }
        }
      });
      if (!parts.length) return;
      const h = Header.req(e.create ? Op.CREATE_AND_WRITE_OBJ : Op.WRITE_OBJ, {
        flags: Flag.CMD_WRITE,
        dataLength: parts[0].data.length,
      });
      h.oid = e.oid;
      h.offset = parts[0].off;
      h.objCopies = copies;
      h.objCopyPolicy = copyPolicy;
      const results = e.create
        ? [await this.requests.run(() => this.s.cacheForward(h, parts[0].data))]
        : await this.s.cachePush(h, parts, (f) => this.requests.run(f));
      if (!e.create && results.some((r) => r.hdr.result === Res.NO_OBJ)) {
        // The object was removed under us (its slot cleared): nothing left to push it into.
        this.s.log.warn(`object cache: ${e.oid.toString(16)} is gone from the cluster; dropped`);
        await this.drop(e);
        return;
      }
      for (const r of results) check(r, `pushing ${e.oid.toString(16)}`);
      if (e.create) {
        // The slot only after its object is on every replica.
        const idx = dataOidToIdx(e.oid);
        const sh = Header.req(Op.WRITE_OBJ, { flags: Flag.CMD_WRITE | Flag.CMD_DIRECT });
        const slot = Buffer.alloc(4);
        slot.writeUInt32LE(e.vid, 0);
        sh.oid = vidToVdiOid(e.vid);
        sh.offset = SD_INODE_DATA_INDEX_OFFSET + 4 * idx;
        sh.dataLength = 4;
        sh.objCopies = copies;
        sh.objCopyPolicy = copyPolicy;
        check(await this.s.cacheForward(sh, slot), `writing the slot of ${e.oid.toString(16)}`);
        e.create = false;
      }
      this.counters.pushed++;
      if (this.index.get(e.oid) === e) {
        await this.withLock(e.oid, () => this.files.writeHeader(this.headerOf(e)));
      }
    } catch (err) {
      this.index.restoreDirty(e, mask, since || Date.now());
      throw err;
    } finally {
      this.unpin(e);
    }
  }

  /**
   * Pushes every dirty object of `vid` (`recovering`: also those from before a restart, which
   * ready() waits for). FLUSHes that arrive while one runs share the next one: it starts when
   * the running one ends and covers everything dirty by then.
   */
  flushVdi(vid: number, recovering = false): Promise<void> {
    if (recovering) return this.flushOnce(vid, true);
    const f = this.flushes.get(vid);
    if (!f) return this.launchFlush(vid);
    return f.next ??= f.running.catch(() => {}).then(() => this.launchFlush(vid));
  }

  private launchFlush(vid: number): Promise<void> {
    const slot = { running: Promise.resolve(), next: null as Promise<void> | null };
    slot.running = this.flushOnce(vid, false).finally(() => {
      if (this.flushes.get(vid) === slot) this.flushes.delete(vid);
    });
    this.flushes.set(vid, slot);
    return slot.running;
  }

  private async flushOnce(vid: number, recovering: boolean): Promise<void> {
    if (!recovering) await this.ready(vid);
    const list = this.index.entriesOf(vid).filter((e) =>
      e.dirty !== 0n || e.create || this.pushing.has(e)
    );
    await runLimited(list, PUSH_PARALLEL, (e) => this.push(e));
  }

  /** Pushes the given objects (an NBD write with FUA). */
  async flushOids(oids: bigint[]): Promise<void> {
    const list = oids.map((o) => this.index.get(o)).filter((e): e is CacheEntry => !!e);
    await runLimited(list, PUSH_PARALLEL, (e) => this.push(e));
  }

  async flushAll(): Promise<void> {
    for (const vid of this.index.vids()) await this.flushVdi(vid);
  }

  /** Drops a VDI's objects, dirty ones included (DEL_VDI, `dog vdi cache purge`). */
  async dropVdi(vid: number): Promise<void> {
    for (const e of this.index.entriesOf(vid)) await this.drop(e);
  }

  private async drop(e: CacheEntry): Promise<void> {
    await this.withLock(e.oid, async () => {
      this.index.remove(e);
      await this.files.remove(e.oid);
    });
    this.wakeRoom();
  }

  async purgeAll(): Promise<void> {
    for (const vid of this.index.vids()) await this.dropVdi(vid);
  }

  /**
   * The background writer: keeps dirty data under a quarter of the cache and no older than
   * MAX_DIRTY_AGE_MS, oldest first. `urgent`: a writer waits for room.
   */
  private async writerTick(urgent = false): Promise<void> {
    if (this.writerBusy) return;
    this.writerBusy = true;
    try {
      const now = Date.now();
      const limit = this.index.capacity / 4;
      const list = this.index.dirtyEntries().filter((e) => !this.recovering.has(e.vid));
      const todo: CacheEntry[] = [];
      let dirty = this.index.dirtyBytes;
      for (const e of list) {
        const old = now - e.dirtySince >= MAX_DIRTY_AGE_MS;
        if (!old && dirty <= limit / 2 && !(urgent && todo.length < PUSH_PARALLEL)) break;
        todo.push(e);
        dirty -= popcount(e.dirty) * sectorSizeOf(e.objSize);
      }
      await runLimited(
        todo,
        PUSH_PARALLEL,
        (e) =>
          this.push(e).catch((err) =>
            this.s.log.warn(`object cache: pushing ${e.oid.toString(16)}: ${err}`)
          ),
      );
    } finally {
      this.writerBusy = false;
    }
  }

  // ------------------------------------------------------------------ info

  /** Per VDI: cached objects and dirty ones (GET_CACHE_INFO). */
  info(): Array<{ vid: number; total: number; dirty: number }> {
    return this.index.vids().map((vid) => {
      const es = this.index.entriesOf(vid);
      return { vid, total: es.length, dirty: es.filter((e) => e.dirty || e.create).length };
    });
  }
}

/** The CRCs of blocks [b0, b1), whose bytes `buf` holds from block b0 on. */
function sealBlocks(e: CacheEntry, b0: number, b1: number, buf: Buffer, bs: number): void {
  for (let b = b0; b < b1; b++) {
    e.crcs[b] = crc(buf.subarray((b - b0) * bs, Math.min(buf.length, (b - b0 + 1) * bs)));
  }
}
