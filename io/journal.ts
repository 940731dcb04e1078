// The write journal (sheep -j, issue 12): file I/O and the store wrapper. The record codec is
// core/journal-record.ts.
//
// Write path: a mutation of the store (write, create, remove, move to .stale, purge, format) is
// encoded as a record, written at the journal's head and made durable by one fdatasync of the
// journal shared by every record written meanwhile (group commit); then it is applied to the
// object files without their own fdatasync / directory sync (FileStore.deferSync), and only then
// acknowledged, so reads always see every acknowledged write. A background checkpoint fsyncs the
// object files and directories the applied records touched and then moves the journal's tail in
// its header, which frees the space. Replay at start (before the sheep serves or joins) applies
// every record after the checkpoint, in sequence order, through the same store methods (so
// tree/EC/multi-disk names are right, unlike upstream's replay that wrote plain-store paths).
//
// Why upstream's journal damaged VDIs: it journalled writes only, replayed them by path onto the
// plain layout and knew nothing of objects that had moved to .stale or been removed by recovery
// since, so a replay after a node loss resurrected or overwrote objects it no longer owned. Here
// every mutation is a record (removes and moves to .stale included) and replay runs them in order,
// so the store after replay is the store as acknowledged.
//
// File layout: two 4 KiB header slots (core/journal-record.ts), then a ring of records. Records
// carry the journal generation (bumped at every start, after a full checkpoint) and consecutive
// sequence numbers, so the reader stops at the first record that is not the expected next one:
// stale records of an earlier lap or life are never applied.
import fs from "node:fs";
import path from "node:path";
import { Buffer } from "node:buffer";
import process from "node:process";
import { SdError } from "../core/errors.ts";
import { Res } from "../core/proto.ts";
import { objectFileName } from "../core/oid.ts";
import {
  DATA_START,
  encodeHeader,
  encodeRecord,
  HEADER_SLOT,
  type JournalOptions,
  type JournalRecord,
  pickHeader,
  recordLength,
  RecordReader,
  RecType,
  type StopReason,
} from "../core/journal-record.ts";
import { GroupSync, type ObjectStore } from "../core/store.ts";
import { blockLen, blockSizeOf, crcOf, CSUM_SUFFIX, entryOffset } from "./checksum.ts";
import { fsyncDir } from "./fd-cache.ts";
import type { WriteRun } from "../core/write-runs.ts";

export const JOURNAL_FILE = "journal_file";

/** A store whose writes and creates can skip their own syncs (io/store.ts FileStore). */
export interface DeferrableStore extends ObjectStore {
  deferSync: boolean;
}

export interface JournalLog {
  info(m: string): void;
  warn(m: string): void;
  err(m: string): void;
}

export interface ReplayReport {
  records: number;
  skipped: boolean;
  /** The record replay stopped at when it was torn or corrupt (logged, never applied). */
  torn: { offset: number; reason: string } | null;
}

export interface JournalStats {
  size: number;
  used: number;
  records: bigint;
  bytes: bigint;
  checkpoints: number;
  fullWaits: number;
  failed: boolean;
}

/** Checkpoint period; SHEEPDOG_JOURNAL_CHECKPOINT_MS=0 checkpoints only when the journal is full (tests). */
function checkpointMs(): number {
  const v = Number(process.env.SHEEPDOG_JOURNAL_CHECKPOINT_MS ?? "1000");
  return Number.isFinite(v) && v >= 0 ? v : 1000;
}

function fsyncP(fd: number, data = false): Promise<void> {
  return new Promise((res, rej) =>
    (data ? fs.fdatasync : fs.fsync)(fd, (e) => (e ? rej(e) : res()))
  );
}

/** fsync of a file or directory by path; a missing one is fine (removed meanwhile). */
async function fsyncPath(p: string): Promise<void> {
  let fd: number;
  try {
    fd = fs.openSync(p, "r");
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") return;
    throw e;
  }
  try {
    await fsyncP(fd);
  } finally {
    fs.closeSync(fd);
  }
}

async function inBatches<T>(items: T[], n: number, f: (t: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += n) await Promise.all(items.slice(i, i + n).map(f));
}

function pwriteFull(fd: number, data: Buffer, offset: number): void {
  let done = 0;
  while (done < data.length) {
    done += fs.writeSync(fd, data, done, data.length - done, offset + done);
  }
}

/** Checks the journal directory at start: clear errors for a bad dir= (exit 1). */
function prepareDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.accessSync(dir, fs.constants.W_OK);
    const probe = path.join(dir, `.probe.${process.pid}`);
    fs.writeFileSync(probe, "");
    fs.unlinkSync(probe);
  } catch (e) {
    throw new Error(`journal: cannot use directory ${dir}: ${(e as Error).message}`);
  }
}

export class Journal {
  private fd = -1;
  private gen = 0;
  private counter = 0n;
  private cpSeq = 0n;
  private nextSeq = 1n;
  private tail = DATA_START;
  private head = DATA_START;
  /** Records after the checkpoint, in sequence (= position) order. */
  private live: Array<{ seq: bigint; pos: number }> = [];
  /** Records written but not yet applied: the checkpoint may not pass them. */
  private inflight = new Set<bigint>();
  private dirty = new Map<string, { oid: bigint; ec?: number }>();
  /** Stale copies made since the last sync (`<name>.<epoch>`); "" for a purge (directories only). */
  private dirtyStale = new Set<string>();
  private failed = false;
  private waiters = 0;
  private spaceTurn: Promise<unknown> = Promise.resolve();
  private cpRunning: Promise<void> | null = null;
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly gsync = new GroupSync(() => fsyncP(this.fd, true));
  private store!: DeferrableStore;
  private readonly st = { records: 0n, bytes: 0n, checkpoints: 0, fullWaits: 0 };
  readonly file: string;
  lastReplay: ReplayReport | null = null;

  constructor(
    readonly opts: JournalOptions,
    readonly dir: string,
    private readonly disks: string[],
    private readonly log: JournalLog,
    /** Recorded in the header (the sheep's base directory): a journal is never shared. */
    private readonly owner: string,
  ) {
    this.file = path.join(dir, JOURNAL_FILE);
  }

  /**
   * Opens (or creates) the journal, replays it onto `store` unless `skip`, makes everything
   * durable and starts a new generation. Call before the sheep serves anything.
   */
  async open(store: DeferrableStore): Promise<ReplayReport> {
    prepareDir(this.dir);
    this.store = store;
    store.deferSync = true;
    const exists = fs.existsSync(this.file);
    this.fd = fs.openSync(this.file, exists ? "r+" : "w+");
    // A new journal's name must be durable before any record in it counts as such.
    if (!exists) await fsyncDir(this.dir);
    const slots = Buffer.alloc(2 * HEADER_SLOT);
    const n = fs.readSync(this.fd, slots, 0, slots.length, 0);
    const hdr = n === slots.length
      ? pickHeader(slots.subarray(0, HEADER_SLOT), slots.subarray(HEADER_SLOT))
      : null;
    if (hdr && hdr.owner !== this.owner) {
      fs.closeSync(this.fd);
      throw new Error(
        `journal: ${this.file} belongs to the sheep of ${hdr.owner}, not ${this.owner}: give each sheep its own dir=`,
      );
    }
    const report: ReplayReport = { records: 0, skipped: false, torn: null };
    let last = hdr?.checkpointSeq ?? 0n;
    if (hdr && this.opts.skip) {
      report.skipped = true;
      this.log.warn(
        `journal: skip: records after checkpoint ${hdr.checkpointSeq} in ${this.file} are NOT replayed`,
      );
    } else if (hdr) {
      const r = await this.replay(hdr.gen, hdr.checkpointSeq, hdr.tail);
      report.records = r.records;
      report.torn = r.torn;
      last = hdr.checkpointSeq + BigInt(r.records);
      const tail = r.torn
        ? `; torn record at offset ${r.torn.offset} (${r.torn.reason}) ignored, not applied`
        : "";
      const msg = `journal: replayed ${r.records} records (seq ${
        hdr.checkpointSeq + 1n
      }..${last})${tail}`;
      if (r.torn) this.log.warn(msg);
      else this.log.info(msg);
    } else if (exists && n > 0) {
      this.log.warn(`journal: ${this.file} has no valid header: nothing to replay`);
    }
    // Everything replayed is made durable before the new generation forgets the old records.
    await this.syncObjects();
    this.counter = hdr?.counter ?? 0n;
    this.gen = ((hdr?.gen ?? 0) + 1) >>> 0;
    this.cpSeq = last;
    this.nextSeq = last + 1n;
    this.preallocate();
    this.tail = this.head = DATA_START;
    await this.writeHeader();
    const ms = checkpointMs();
    if (ms > 0) {
      this.timer = setInterval(() => void this.checkpoint().catch(() => {}), ms);
      (this.timer as { unref?: () => void }).unref?.();
    }
    this.log.info(
      `journal: ${this.file}, ${this.opts.size} bytes, generation ${this.gen}, next seq ${this.nextSeq}`,
    );
    this.lastReplay = report;
    return report;
  }

  /** Writes zeros over the whole file once: overwriting allocated blocks needs no metadata sync. */
  private preallocate(): void {
    const want = this.opts.size;
    const have = fs.fstatSync(this.fd).size;
    if (have > want) fs.ftruncateSync(this.fd, want);
    if (have >= want) return;
    const zero = Buffer.alloc(1 << 20);
    for (let at = have; at < want; at += zero.length) {
      pwriteFull(this.fd, zero.subarray(0, Math.min(zero.length, want - at)), at);
    }
    fs.fsyncSync(this.fd);
  }

  private async writeHeader(checkpointSeq = this.cpSeq, tail = this.tail): Promise<void> {
    this.counter++;
    const h = encodeHeader({
      counter: this.counter,
      gen: this.gen,
      checkpointSeq,
      tail,
      size: this.opts.size,
      owner: this.owner,
    });
    // Alternate slots: a torn header write leaves the previous one valid.
    pwriteFull(this.fd, h, Number(this.counter % 2n) * HEADER_SLOT);
    await this.gsync.sync();
  }

  // ---- replay ----

  private async replay(
    gen: number,
    cpSeq: bigint,
    tail: number,
  ): Promise<{ records: number; torn: { offset: number; reason: string } | null }> {
    const size = fs.fstatSync(this.fd).size;
    let expect = cpSeq + 1n;
    let records = 0;
    const run = async (start: number): Promise<StopReason & { applied: number }> => {
      const reader = new RecordReader();
      const chunk = Buffer.alloc(1 << 20);
      let at = start;
      let applied = 0;
      for (;;) {
        const got = reader.next();
        if (got) {
          const { rec, offset } = got;
          if (rec.gen !== gen || rec.seq !== expect) {
            return { offset: start + offset, torn: false, reason: "end of records", applied };
          }
          await this.applyReplayed(rec);
          expect++;
          applied++;
          continue;
        }
        const stop = reader.stopped();
        if (stop) return { ...stop, offset: start + stop.offset, applied };
        if (at >= size) {
          const f = reader.finish();
          return { ...f, offset: start + f.offset, applied };
        }
        const n = fs.readSync(this.fd, chunk, 0, Math.min(chunk.length, size - at), at);
        if (n <= 0) {
          const f = reader.finish();
          return { ...f, offset: start + f.offset, applied };
        }
        reader.push(chunk.subarray(0, n));
        at += n;
      }
    };
    let stop = await run(tail);
    records += stop.applied;
    if (tail !== DATA_START) {
      // The writer wraps to the start when a record does not fit before the end of the file.
      const wrapped = await run(DATA_START);
      if (wrapped.applied > 0) {
        records += wrapped.applied;
        stop = wrapped;
      }
    }
    return { records, torn: stop.torn ? { offset: stop.offset, reason: stop.reason } : null };
  }

  /** Applies one replayed record; what no longer applies (object gone) is skipped. */
  private async applyReplayed(rec: JournalRecord): Promise<void> {
    try {
      if (rec.type === RecType.WRITE && !this.store.exists(rec.oid, rec.ecIndex)) return;
      await applyRecord(this.store, rec);
    } catch (e) {
      const code = e instanceof SdError ? e.code : -1;
      if (code === Res.NO_OBJ) return;
      if (rec.type === RecType.WRITE && code === Res.EIO) {
        // The object's data and side file went out of step in the crash (one reached the disk,
        // the other not): the record holds the acknowledged bytes, so write them and reseal.
        rawWriteResealed(this.store.path(rec.oid, rec.ecIndex), rec.offset, rec.data);
      } else {
        this.log.warn(
          `journal: replaying seq ${rec.seq} (${RecType[rec.type]} ${rec.oid.toString(16)}): ${
            (e as Error).message
          }`,
        );
      }
    } finally {
      this.markDirty(rec);
    }
  }

  // ---- the write path ----

  /** Journals `rec` (durable), applies it with `apply`, then resolves: the caller acknowledges. */
  /**
   * Journals `rec`, then applies it. `nosync`: the record is not waited for to be synced: the
   * caller's next synced record (a later write of the same object) is written after it in the
   * same file, so its sync covers this one, and replay applies both in order.
   */
  async run<T>(
    rec: Omit<JournalRecord, "gen" | "seq">,
    apply: () => Promise<T>,
    nosync = false,
  ): Promise<T> {
    if (this.failed) return await apply();
    const len = recordLength(rec.data.length);
    if (len > (this.opts.size - DATA_START) / 4) {
      // Larger than the ring can hold comfortably (a huge object size): durable the old way.
      const r = await apply();
      this.markDirty(rec);
      await this.syncObjects();
      return r;
    }
    let seq = -1n;
    try {
      const placed = this.waiters === 0 ? this.place(len) : null;
      const p = placed ?? await this.waitForSpace(len);
      seq = p.seq;
      pwriteFull(this.fd, encodeRecord({ ...rec, gen: this.gen, seq }), p.pos);
      if (!nosync) await this.gsync.sync();
    } catch (e) {
      await this.fail(e);
      try {
        const r = await apply();
        await this.syncObjects();
        return r;
      } finally {
        this.inflight.delete(seq);
      }
    }
    this.st.records++;
    this.st.bytes += BigInt(len);
    try {
      const r = await apply();
      // The journal failed while this record was applied without a sync: sync it now.
      if (this.failed) {
        this.markDirty(rec);
        await this.syncObjects();
      }
      return r;
    } finally {
      this.markDirty(rec);
      this.inflight.delete(seq);
      if (this.used() > (this.opts.size - DATA_START) / 2 && checkpointMs() > 0) {
        void this.checkpoint().catch(() => {});
      }
    }
  }

  /** Reserves space for a record of `len` bytes at the head, or null when the ring is full. */
  private place(len: number): { pos: number; seq: bigint } | null {
    const end = this.opts.size;
    let pos: number;
    if (this.head >= this.tail) {
      if (this.head + len <= end) pos = this.head;
      else if (DATA_START + len < this.tail) pos = DATA_START;
      else return null;
    } else if (this.head + len < this.tail) pos = this.head;
    else return null;
    this.head = pos + len;
    // Registered at once: a checkpoint must neither pass an unapplied record nor move the tail
    // over one, however late its writer resumes.
    const seq = this.nextSeq++;
    this.inflight.add(seq);
    this.live.push({ seq, pos });
    return { pos, seq };
  }

  /** Journal full: wait (in arrival order) for checkpoints to free space; never fail. */
  private waitForSpace(len: number): Promise<{ pos: number; seq: bigint }> {
    this.waiters++;
    this.st.fullWaits++;
    const turn = this.spaceTurn.then(async () => {
      for (;;) {
        const p = this.place(len);
        if (p) return p;
        await this.checkpoint();
        if (this.failed) throw new Error("journal turned off while waiting for space");
        const again = this.place(len);
        if (again) return again;
        await new Promise((r) => setTimeout(r, 5));
      }
    }).finally(() => this.waiters--);
    this.spaceTurn = turn.catch(() => {});
    return turn;
  }

  private used(): number {
    if (this.live.length === 0) return 0;
    return this.head >= this.tail
      ? this.head - this.tail
      : this.opts.size - this.tail + this.head - DATA_START;
  }

  private markDirty(rec: { type: RecType; oid: bigint; ecIndex?: number; arg: number }): void {
    if (rec.type === RecType.STALE) {
      this.dirtyStale.add(`${objectFileName(rec.oid, rec.ecIndex)}.${rec.arg >>> 0}`);
    }
    if (rec.type === RecType.PURGE_STALE) this.dirtyStale.add("");
    if (rec.type === RecType.FORMAT || rec.type === RecType.PURGE_STALE) {
      this.dirty.set("*", { oid: 0n });
      return;
    }
    this.dirty.set(objectFileName(rec.oid, rec.ecIndex), { oid: rec.oid, ec: rec.ecIndex });
  }

  /** fsyncs what the applied records touched: object files, side files, their directories. */
  private async syncObjects(): Promise<void> {
    const dirty = this.dirty;
    const stale = this.dirtyStale;
    this.dirty = new Map();
    this.dirtyStale = new Set();
    try {
      const dirs = new Set<string>();
      const files: string[] = [];
      for (const [k, { oid, ec }] of dirty) {
        if (k === "*") {
          for (const d of this.disks) for (const sub of subdirs(d)) dirs.add(sub);
          continue;
        }
        const p = this.store.path(oid, ec);
        files.push(p, p + CSUM_SUFFIX);
        dirs.add(path.dirname(p));
      }
      if (stale.size > 0) {
        // The stale copy holds data an earlier record wrote: sync it where the move put it.
        for (const d of this.disks) {
          dirs.add(path.join(d, ".stale"));
          dirs.add(d);
          for (const n of stale) {
            if (n) files.push(path.join(d, ".stale", n), path.join(d, ".stale", n + CSUM_SUFFIX));
          }
        }
      }
      await inBatches(files, 32, fsyncPath);
      await inBatches([...dirs], 32, fsyncPath);
    } catch (e) {
      for (const [k, v] of dirty) this.dirty.set(k, v);
      for (const n of stale) this.dirtyStale.add(n);
      throw e;
    }
  }

  /** Makes the applied records durable in the object files and frees their journal space. */
  checkpoint(): Promise<void> {
    if (this.cpRunning) return this.cpRunning;
    this.cpRunning = (async () => {
      let wm = this.nextSeq - 1n;
      for (const s of this.inflight) if (s - 1n < wm) wm = s - 1n;
      if (wm <= this.cpSeq || this.failed) return;
      await this.syncObjects();
      // Sequence numbers are consecutive in `live`: one splice, not a shift per record.
      if (this.live.length > 0 && this.live[0].seq <= wm) {
        this.live.splice(0, Math.min(this.live.length, Number(wm - this.live[0].seq) + 1));
      }
      const tail = this.live.length > 0 ? this.live[0].pos : this.head;
      try {
        await this.writeHeader(wm, tail);
      } catch (e) {
        await this.fail(e);
        return;
      }
      // Only now, with the header naming the new tail durable, may place() reuse the space.
      this.cpSeq = wm;
      this.tail = tail;
      this.st.checkpoints++;
    })().finally(() => (this.cpRunning = null));
    return this.cpRunning;
  }

  /** A journal I/O error: the journal is off for good, writes are synced to their files again. */
  private async fail(e: unknown): Promise<void> {
    if (this.failed) return;
    this.failed = true;
    this.store.deferSync = false;
    this.log.err(
      `journal: I/O error on ${this.file} (${
        (e as Error).message
      }): journal turned OFF for good; every write is now synced to its object file before it is acknowledged`,
    );
    if (this.timer) clearInterval(this.timer);
    await this.syncObjects().catch((err) =>
      this.log.err(`journal: syncing object files after the failure: ${(err as Error).message}`)
    );
    // The records are all applied and synced now: drop them so a restart does not replay them
    // over newer synchronous writes.
    try {
      fs.closeSync(this.fd);
    } catch { /* the descriptor may be what failed */ }
    try {
      fs.unlinkSync(this.file);
    } catch (err) {
      this.log.err(
        `journal: could not remove ${this.file} (${
          (err as Error).message
        }): start the next time with -j ...,skip`,
      );
    }
  }

  stats(): JournalStats {
    return {
      size: this.opts.size,
      used: this.used(),
      ...this.st,
      failed: this.failed,
    };
  }

  /** Final checkpoint at shutdown: the next start has nothing to replay. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.failed || this.fd < 0) return;
    await this.checkpoint().catch(() => {});
    await this.checkpoint().catch(() => {});
  }

  /** The journalled view of `inner` (format may reopen the store: wrap the new one too). */
  wrap(inner: DeferrableStore): ObjectStore {
    this.store = inner;
    inner.deferSync = !this.failed;
    return new JournaledStore(inner, this);
  }
}

function safeReaddir(d: string): string[] {
  try {
    return fs.readdirSync(d);
  } catch {
    return [];
  }
}

/** An object directory and its subdirectories (tree layout), .stale excluded. */
function subdirs(d: string): string[] {
  const out = [d];
  for (const e of safeReaddir(d)) {
    if (e === ".stale") continue;
    try {
      if (fs.statSync(path.join(d, e)).isDirectory()) out.push(path.join(d, e));
    } catch { /* removed meanwhile */ }
  }
  return out;
}

/** Runs one record against the store: the same code for the live path and for replay. */
function applyRecord(s: ObjectStore, r: Omit<JournalRecord, "gen" | "seq">): Promise<void> {
  switch (r.type) {
    case RecType.WRITE:
      return s.write(r.oid, r.offset, r.data, r.ecIndex);
    case RecType.CREATE:
      return s.createAndWrite(r.oid, r.offset, r.data, r.arg, r.ecIndex);
    case RecType.REMOVE:
      return s.remove(r.oid, r.ecIndex);
    case RecType.STALE:
      return s.moveToStale(r.oid, r.arg, r.ecIndex);
    case RecType.REVIVE:
      return s.reviveStale(r.oid, r.arg, r.ecIndex);
    case RecType.PURGE_STALE:
      return s.purgeStale();
    case RecType.FORMAT:
      return s.format();
  }
}

/** Replay only: writes `data` and recomputes the side-file entries of the blocks it touches. */
function rawWriteResealed(p: string, offset: number, data: Buffer): void {
  const fd = fs.openSync(p, "r+");
  try {
    pwriteFull(fd, data, offset);
    let cfd: number;
    try {
      cfd = fs.openSync(p + CSUM_SUFFIX, "r+");
    } catch {
      return; // no side file: nothing to reseal
    }
    try {
      const size = fs.fstatSync(fd).size;
      // 4 KiB blocks, or 64 KiB in a side file written before (io/checksum.ts blockSizeOf).
      const bs = blockSizeOf(fs.fstatSync(cfd).size, size);
      const first = Math.floor(offset / bs);
      const last = Math.floor((offset + Math.max(1, data.length) - 1) / bs);
      for (let i = first; i <= last; i++) {
        const len = blockLen(i, size, bs);
        const b = Buffer.alloc(len);
        fs.readSync(fd, b, 0, len, i * bs);
        const e = Buffer.alloc(8);
        const c = crcOf(b);
        e.writeUInt32LE(c, 0);
        e.writeUInt32LE(c, 4);
        pwriteFull(cfd, e, entryOffset(i));
      }
    } finally {
      fs.closeSync(cfd);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** The store seen by the daemon with -j: every mutation goes through the journal first. */
export class JournaledStore implements ObjectStore {
  constructor(readonly inner: DeferrableStore, readonly journal: Journal) {}
  get kind(): "plain" | "tree" {
    return this.inner.kind;
  }
  init(): Promise<void> {
    return this.inner.init();
  }
  format(): Promise<void> {
    const r = { type: RecType.FORMAT, oid: 0n, offset: 0, arg: 0, data: Buffer.alloc(0) };
    return this.journal.run(r, () => this.inner.format());
  }
  exists(oid: bigint, ecIndex?: number): boolean {
    return this.inner.exists(oid, ecIndex);
  }
  read(oid: bigint, offset: number, length: number, ecIndex?: number): Promise<Buffer> {
    return this.inner.read(oid, offset, length, ecIndex);
  }
  createAndWrite(
    oid: bigint,
    offset: number,
    data: Buffer,
    objSize: number,
    ecIndex?: number,
  ): Promise<void> {
    const r = { type: RecType.CREATE, oid, ecIndex, offset, arg: objSize, data };
    return this.journal.run(
      r,
      () => this.inner.createAndWrite(oid, offset, data, objSize, ecIndex),
    );
  }
  write(
    oid: bigint,
    offset: number,
    data: Buffer,
    ecIndex?: number,
    nosync = false,
  ): Promise<void> {
    // A write that cannot apply is not journalled (its replay would be skipped anyway).
    if (!this.inner.exists(oid, ecIndex)) return Promise.reject(new SdError(Res.NO_OBJ));
    const r = { type: RecType.WRITE, oid, ecIndex, offset, arg: 0, data };
    return this.journal.run(r, () => this.inner.write(oid, offset, data, ecIndex, nosync), nosync);
  }
  /** A journal record per run; the last one's sync covers the others (as for the file store). */
  async writeRuns(
    oid: bigint,
    runs: ReadonlyArray<WriteRun>,
    nosync = false,
  ): Promise<void> {
    for (let i = 0; i < runs.length; i++) {
      await this.write(oid, runs[i].off, runs[i].data, undefined, nosync || i < runs.length - 1);
    }
  }
  remove(oid: bigint, ecIndex?: number): Promise<void> {
    if (!this.inner.exists(oid, ecIndex)) return Promise.reject(new SdError(Res.NO_OBJ));
    const r = { type: RecType.REMOVE, oid, ecIndex, offset: 0, arg: 0, data: Buffer.alloc(0) };
    return this.journal.run(r, () => this.inner.remove(oid, ecIndex));
  }
  list(): bigint[] {
    return this.inner.list();
  }
  objectBytes(): bigint {
    return this.inner.objectBytes();
  }
  statfs(): { size: bigint; free: bigint } {
    return this.inner.statfs();
  }
  moveToStale(oid: bigint, epoch: number, ecIndex?: number): Promise<void> {
    if (!this.inner.exists(oid, ecIndex)) return Promise.reject(new SdError(Res.NO_OBJ));
    const r = { type: RecType.STALE, oid, ecIndex, offset: 0, arg: epoch, data: Buffer.alloc(0) };
    return this.journal.run(r, () => this.inner.moveToStale(oid, epoch, ecIndex));
  }
  readStale(
    oid: bigint,
    epoch: number,
    offset: number,
    length: number,
    ecIndex?: number,
  ): Promise<Buffer> {
    return this.inner.readStale(oid, epoch, offset, length, ecIndex);
  }
  reviveStale(oid: bigint, epoch: number, ecIndex?: number): Promise<void> {
    // Journalled like the move to stale it undoes: a replay applies both, in order.
    const r = { type: RecType.REVIVE, oid, ecIndex, offset: 0, arg: epoch, data: Buffer.alloc(0) };
    return this.journal.run(r, () => this.inner.reviveStale(oid, epoch, ecIndex));
  }
  purgeStale(): Promise<void> {
    const r = { type: RecType.PURGE_STALE, oid: 0n, offset: 0, arg: 0, data: Buffer.alloc(0) };
    return this.journal.run(r, () => this.inner.purgeStale());
  }
  listStale(): Array<{ oid: bigint; epoch: number; ecIndex?: number }> {
    return this.inner.listStale();
  }
  verify(oid: bigint, ecIndex?: number): boolean {
    return this.inner.verify(oid, ecIndex);
  }
  diskInfo(): Array<{ path: string; free: bigint; used: bigint }> {
    return this.inner.diskInfo();
  }
  path(oid: bigint, ecIndex?: number): string {
    return this.inner.path(oid, ecIndex);
  }
  scrubObject(oid: bigint, ecIndex?: number): Promise<{ ok: boolean; bytes: number }> {
    return this.inner.scrubObject(oid, ecIndex);
  }
  listFiles(): Array<{ oid: bigint; ecIndex?: number }> {
    return this.inner.listFiles();
  }
  // Disks (io/md.ts): moves between disks are the store's own, synced by it, not journalled.
  diskPaths(): string[] {
    return this.inner.diskPaths();
  }
  plug(paths: string[]): number {
    return this.inner.plug(paths);
  }
  unplug(paths: string[]): number {
    return this.inner.unplug(paths);
  }
  rebalanced(): Promise<void> {
    return this.inner.rebalanced();
  }
  close(): void {
    this.inner.close();
  }
}
