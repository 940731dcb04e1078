// The farm repository on disk (farm-backup.md §1.1-1.3): content-addressed files named by their
// SHA-1 under objects/xx/, the user_snap log, trunks and slice indexes. Pure file I/O, no cluster.
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as path from "node:path";
import { createHash } from "node:crypto";
import { Limiter } from "../core/object-io.ts";

export const SLICE_SIZE = 128 * 1024;
export const SHA1_SIZE = 20;
export const TRUNK_ENTRY_SIZE = 32;
export const SNAP_HDR_SIZE = 32;
export const SNAP_REC_SIZE = 296;
export const SNAP_MAGIC = 0xfee1c001;
const TAG_LEN = 256;
/** Bytes written to tmp/ before they are synced and renamed into objects/ as one batch. */
const FLUSH_BYTES = 64 * 1024 * 1024;

/** A failure with the message to print; the command ends with its exit code. */
export class FarmError extends Error {}

export interface SnapHeader {
  copies: number;
  copyPolicy: number;
  blockSizeShift: number;
}

export interface SnapRecord {
  idx: number;
  tag: string;
  time: bigint;
  trunk: Buffer;
}

export interface TrunkEntry {
  oid: bigint;
  copies: number;
  copyPolicy: number;
  blockSizeShift: number;
  /** SHA-1 of the object's slice index. */
  sha: Buffer;
}

export function shaHex(sha: Uint8Array): string {
  return Buffer.from(sha).toString("hex");
}

/**
 * SHA-1 from node:crypto (OpenSSL; Bun and Deno provide it): about 5x hash-wasm's speed here,
 * and a load is bound by hashing every byte before anything is written.
 */
export function sha1(b: Uint8Array): Promise<Buffer> {
  return Promise.resolve(createHash("sha1").update(b).digest());
}

function errText(e: unknown): string {
  const x = e as NodeJS.ErrnoException;
  if (x?.code === "ENOSPC") return "No space left on device";
  if (x?.code === "EDQUOT") return "Disk quota exceeded";
  return x?.message ?? String(e);
}

export function encodeTrunk(entries: TrunkEntry[]): Buffer {
  const b = Buffer.alloc(entries.length * TRUNK_ENTRY_SIZE);
  entries.forEach((e, i) => {
    const o = i * TRUNK_ENTRY_SIZE;
    b.writeBigUInt64LE(e.oid, o);
    b[o + 8] = e.copies;
    b[o + 9] = e.copyPolicy;
    b[o + 10] = e.blockSizeShift;
    e.sha.copy(b, o + 12);
  });
  return b;
}

export function decodeTrunk(b: Buffer): TrunkEntry[] {
  if (b.length % TRUNK_ENTRY_SIZE) throw new FarmError("trunk has a bad length");
  const out: TrunkEntry[] = [];
  for (let o = 0; o < b.length; o += TRUNK_ENTRY_SIZE) {
    out.push({
      oid: b.readBigUInt64LE(o),
      copies: b[o + 8],
      copyPolicy: b[o + 9],
      blockSizeShift: b[o + 10],
      sha: Buffer.from(b.subarray(o + 12, o + 12 + SHA1_SIZE)),
    });
  }
  return out;
}

/** Counters of what a save added to the repository. */
export interface PutStats {
  files: number;
  bytes: number;
}

export class Farm {
  readonly objects: string;
  readonly log: string;
  readonly stats: PutStats = { files: 0, bytes: 0 };
  /** Digests known to be stored (this run), and writes in flight. */
  private known = new Set<string>();
  private inflight = new Map<string, Promise<void>>();
  private pending: { tmp: string; file: string; bytes: number }[] = [];
  private pendingBytes = 0;
  private flushing: Promise<void> | null = null;
  private tmpSeq = 0;
  private locked: string | null = null;
  private readonly tmpDir: string;
  /** fsync each file before it is renamed into place (off only in benches of the page cache). */
  sync = true;

  private constructor(readonly dir: string) {
    this.objects = path.join(dir, "objects");
    this.log = path.join(dir, "user_snap");
    this.tmpDir = path.join(dir, "tmp");
  }

  /**
   * farm_init(): `create` makes the directory and its layout (save); otherwise the directory
   * must already be a farm (list/load/show). A non-empty directory that has no user_snap is not
   * taken over.
   */
  static open(dir: string, create: boolean): Farm {
    const f = new Farm(dir);
    let st: fs.Stats | null = null;
    try {
      st = fs.statSync(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new FarmError(errText(e));
    }
    if (st && !st.isDirectory()) throw new FarmError("Path is not a directory");
    const isFarm = st !== null && fs.existsSync(f.log);
    if (!isFarm) {
      if (!create) {
        throw new FarmError(
          st ? `${dir} is not a farm (no user_snap in it)` : `${dir}: No such file or directory`,
        );
      }
      if (st && fs.readdirSync(dir).length > 0) {
        throw new FarmError(
          `${dir} is not a farm (no user_snap) and not empty; refusing to use it`,
        );
      }
    }
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
      if (create) {
        fs.mkdirSync(f.objects, { recursive: true, mode: 0o755 });
        fs.mkdirSync(f.tmpDir, { recursive: true, mode: 0o755 });
        const have = new Set(fs.readdirSync(f.objects));
        for (let i = 0; i < 256; i++) {
          if (have.has(i.toString(16).padStart(2, "0"))) continue;
          fs.mkdirSync(path.join(f.objects, i.toString(16).padStart(2, "0")), {
            recursive: true,
            mode: 0o755,
          });
        }
        if (!isFarm) {
          f.writeFileAtomic(f.log, Buffer.alloc(0));
          f.fsyncDir(dir);
        }
      }
    } catch (e) {
      if (e instanceof FarmError) throw e;
      throw new FarmError(`cannot initialise ${dir}: ${errText(e)}`);
    }
    return f;
  }

  pathOf(sha: Uint8Array): string {
    const h = shaHex(sha);
    return path.join(this.objects, h.slice(0, 2), h.slice(2));
  }

  /** Path relative to the farm, as printed in messages. */
  nameOf(sha: Uint8Array): string {
    const h = shaHex(sha);
    return `objects/${h.slice(0, 2)}/${h.slice(2)}`;
  }

  // ------------------------------------------------------------------ content-addressed files

  /** Stores `bytes` under their SHA-1 unless a file of that name and size is already there. */
  async put(bytes: Buffer): Promise<Buffer> {
    const sha = await sha1(bytes);
    const key = shaHex(sha);
    if (this.known.has(key)) return sha;
    let p = this.inflight.get(key);
    if (!p) {
      p = this.store(sha, bytes).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    await p;
    this.known.add(key);
    return sha;
  }

  private async store(sha: Buffer, bytes: Buffer): Promise<void> {
    const file = this.pathOf(sha);
    try {
      const st = await fs.promises.stat(file);
      if (st.size === bytes.length) return; // deduplicated
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
        throw new FarmError(`cannot stat ${this.nameOf(sha)}: ${errText(e)}`);
      }
    }
    while (this.flushing) await this.flushing;
    const tmp = path.join(this.tmpDir, `${shaHex(sha)}.${process.pid}.${this.tmpSeq++}`);
    try {
      const fh = await fs.promises.open(tmp, "wx", 0o644);
      try {
        await fh.writeFile(bytes);
      } finally {
        await fh.close();
      }
    } catch (e) {
      await fs.promises.rm(tmp, { force: true }).catch(() => {});
      throw new FarmError(`Failed to write ${this.nameOf(sha)}: ${errText(e)}`);
    }
    this.pending.push({ tmp, file, bytes: bytes.length });
    this.pendingBytes += bytes.length;
    if (this.pendingBytes >= FLUSH_BYTES) await this.flush();
  }

  /**
   * Makes the pending files durable, then gives them their names: a name in objects/ always
   * has its whole content behind it. Batched because one fsync after another is slow.
   */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    const batch = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    this.flushing = (async () => {
      const lim = new Limiter(64);
      const dirs = new Set<string>();
      try {
        if (this.sync) {
          await Promise.all(batch.map((f) =>
            lim.run(async () => {
              const fh = await fs.promises.open(f.tmp, "r+");
              try {
                await fh.sync();
              } finally {
                await fh.close();
              }
            })
          ));
        }
        await Promise.all(batch.map((f) =>
          lim.run(async () => {
            await fs.promises.rename(f.tmp, f.file);
            dirs.add(path.dirname(f.file));
          })
        ));
        if (this.sync) await Promise.all([...dirs].map((d) => lim.run(() => fsyncDirAsync(d))));
      } catch (e) {
        throw new FarmError(`Failed to store files in ${this.objects}: ${errText(e)}`);
      }
      for (const f of batch) {
        this.stats.files++;
        this.stats.bytes += f.bytes;
      }
    })().finally(() => (this.flushing = null));
    return this.flushing;
  }

  /** Everything put so far is durable under its name. */
  async commit(): Promise<void> {
    while (this.flushing || this.pending.length) await this.flush();
  }

  /**
   * One save at a time per farm (a second one would empty the first one's tmp/). The lock of a
   * save that was killed is taken over when its pid is gone.
   */
  lock(): void {
    const file = path.join(this.dir, "lock");
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.writeFileSync(file, `${process.pid}\n`, { flag: "wx", mode: 0o644 });
        this.locked = file;
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") {
          throw new FarmError(`Cannot create ${file}: ${errText(e)}`);
        }
      }
      const pid = Number(fs.readFileSync(file, "utf8").trim());
      if (pid > 0 && pid !== process.pid && alive(pid)) {
        throw new FarmError(
          `Another save into ${this.dir} is running (pid ${pid}); if not, remove ${file}`,
        );
      }
      fs.rmSync(file, { force: true });
    }
    throw new FarmError(`Cannot lock ${this.dir}`);
  }

  unlock(): void {
    if (this.locked) fs.rmSync(this.locked, { force: true });
    this.locked = null;
  }

  /** After a failed save: what was not renamed yet is of no use (and may fill the disk). */
  dropTmp(): void {
    if (!this.locked) return; // tmp/ may be another save's
    this.pending = [];
    this.pendingBytes = 0;
    try {
      this.cleanTmp();
    } catch { /* best effort: the next save cleans up too */ }
  }

  /** Leftovers of an interrupted save (kill -9): never referenced, safe to drop. */
  cleanTmp(): void {
    fs.rmSync(this.tmpDir, { recursive: true, force: true });
    fs.mkdirSync(this.tmpDir, { mode: 0o755 });
  }

  has(sha: Uint8Array): boolean {
    return this.known.has(shaHex(sha)) || fs.existsSync(this.pathOf(sha));
  }

  /** Reads a file and checks that its content still hashes to its name. */
  async get(sha: Uint8Array, verify = true): Promise<Buffer> {
    let b: Buffer;
    try {
      b = await fs.promises.readFile(this.pathOf(sha));
    } catch (e) {
      const missing = (e as NodeJS.ErrnoException).code === "ENOENT";
      throw new FarmError(
        missing
          ? `Object file ${this.nameOf(sha)} is missing`
          : `Cannot read ${this.nameOf(sha)}: ${errText(e)}`,
      );
    }
    if (!verify) return b;
    const got = await sha1(b);
    if (!got.equals(Buffer.from(sha))) {
      throw new FarmError(
        `Object file ${this.nameOf(sha)} is corrupt: its SHA-1 is ${shaHex(got)}`,
      );
    }
    return b;
  }

  /** Slices of 128 KiB, each stored once; returns the SHA-1 of the slice index. */
  async putObject(data: Buffer): Promise<Buffer> {
    const n = Math.max(1, Math.ceil(data.length / SLICE_SIZE));
    const shas = await Promise.all(
      Array.from(
        { length: n },
        (_, i) =>
          this.put(data.subarray(i * SLICE_SIZE, Math.min(data.length, (i + 1) * SLICE_SIZE))),
      ),
    );
    return await this.put(Buffer.concat(shas));
  }

  /** Slice index of an object (verified). */
  async getIndex(sha: Uint8Array): Promise<Buffer[]> {
    const idx = await this.get(sha);
    if (idx.length % SHA1_SIZE) {
      throw new FarmError(`Object file ${this.nameOf(sha)} is not a slice index`);
    }
    const out: Buffer[] = [];
    for (let o = 0; o < idx.length; o += SHA1_SIZE) out.push(idx.subarray(o, o + SHA1_SIZE));
    return out;
  }

  /** `verified`: slices already checked in this run (load checks everything up front). */
  async getObject(sha: Uint8Array, verified?: Set<string>): Promise<Buffer> {
    const slices = await this.getIndex(sha);
    return Buffer.concat(
      await Promise.all(slices.map((s) => this.get(s, !verified?.has(shaHex(s))))),
    );
  }

  // ------------------------------------------------------------------ user_snap

  readLog(): { header: SnapHeader | null; records: SnapRecord[] } {
    let b: Buffer;
    try {
      b = fs.readFileSync(this.log);
    } catch (e) {
      throw new FarmError(`Cannot read ${this.log}: ${errText(e)}`);
    }
    if (b.length === 0) return { header: null, records: [] };
    if (b.length < SNAP_HDR_SIZE || b.readUInt32LE(0) !== SNAP_MAGIC) {
      throw new FarmError(`${this.log}: magic number mismatch`);
    }
    const header = { copies: b[8], copyPolicy: b[9], blockSizeShift: b[10] };
    const records: SnapRecord[] = [];
    // A torn tail (only possible after a crash of an older writer) is not a record.
    for (let o = SNAP_HDR_SIZE; o + SNAP_REC_SIZE <= b.length; o += SNAP_REC_SIZE) {
      const t = b.subarray(o + 4, o + 4 + TAG_LEN);
      const z = t.indexOf(0);
      records.push({
        idx: b.readUInt32LE(o),
        tag: t.subarray(0, z < 0 ? TAG_LEN : z).toString("utf8"),
        time: b.readBigInt64LE(o + 264),
        trunk: Buffer.from(b.subarray(o + 272, o + 292)),
      });
    }
    return { header, records };
  }

  /** Appends a record (header first if the log is empty) by replacing the whole file atomically. */
  appendRecord(header: SnapHeader, tag: string, time: bigint, trunk: Buffer): number {
    let old = fs.readFileSync(this.log);
    if (old.length === 0) {
      old = Buffer.alloc(SNAP_HDR_SIZE);
      old.writeUInt32LE(SNAP_MAGIC, 0);
      old.writeUInt32LE(1, 4);
      old[8] = header.copies;
      old[9] = header.copyPolicy;
      old[10] = header.blockSizeShift;
    }
    const whole = SNAP_HDR_SIZE + Math.floor((old.length - SNAP_HDR_SIZE) / SNAP_REC_SIZE) *
        SNAP_REC_SIZE;
    const idx = (whole - SNAP_HDR_SIZE) / SNAP_REC_SIZE + 1;
    const rec = Buffer.alloc(SNAP_REC_SIZE);
    rec.writeUInt32LE(idx, 0);
    Buffer.from(tag, "utf8").subarray(0, TAG_LEN - 1).copy(rec, 4);
    rec.writeBigInt64LE(time, 264);
    trunk.copy(rec, 272);
    try {
      this.writeFileAtomic(this.log, Buffer.concat([old.subarray(0, whole), rec]));
      this.fsyncDir(this.dir);
    } catch (e) {
      throw new FarmError(`Failed to write ${this.log}: ${errText(e)}`);
    }
    return idx;
  }

  /** farm_contain_snapshot() / get_trunk_sha1(): by index or by tag. */
  static find(records: SnapRecord[], arg: string): SnapRecord | undefined {
    const m = /^[ \t\n\v\f\r]*([+-]?\d+)/.exec(arg);
    const idx = m ? Number(m[1]) : 0;
    return records.find((r) => r.idx === idx || r.tag === arg);
  }

  private writeFileAtomic(file: string, b: Buffer): void {
    const tmp = `${file}.tmp.${process.pid}`;
    try {
      const fd = fs.openSync(tmp, "w", 0o644);
      try {
        fs.writeSync(fd, b);
        if (this.sync) fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, file);
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      throw e;
    }
  }

  private fsyncDir(d: string): void {
    let fd: number | null = null;
    try {
      fd = fs.openSync(d, "r");
      fs.fsyncSync(fd);
    } catch {
      /* some file systems cannot fsync a directory */
    } finally {
      if (fd !== null) fs.closeSync(fd);
    }
  }
}

async function fsyncDirAsync(d: string): Promise<void> {
  let fh: fs.promises.FileHandle | null = null;
  try {
    fh = await fs.promises.open(d, "r");
    await fh.sync();
  } catch {
    /* some file systems cannot fsync a directory */
  } finally {
    await fh?.close();
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
  // A killed save its parent has not reaped yet is a zombie: it holds nothing any more.
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return st.slice(st.lastIndexOf(")") + 2, st.lastIndexOf(")") + 3) !== "Z";
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== "ENOENT"; // no /proc: trust kill()
  }
}
