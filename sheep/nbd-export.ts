// Sheepdog VDIs as NBD exports. Every sheep is a gateway, so requests go through this daemon's own
// gateway path in-process (no socket hop). Without the object cache, writes are durable on every
// replica when the gateway acknowledges them (fdatasync before each peer replies), so FLUSH and
// FUA need no extra work beyond the NBD server waiting for earlier writes.
//
// With `sheep -w` a writable export (it holds the VDI's cluster-wide lock) sends its object
// requests with SD_FLAG_CMD_CACHE (`--nbd-cache=writeback`, the default) and the writes are
// acknowledged from the cache file; FLUSH pushes the VDI's dirty objects to every replica, a FUA
// write pushes the objects it touched, and a disconnect pushes everything before the lock goes.
// With `--nbd-cache=writethrough` reads are cached but every write is pushed before its answer.
// CAN_MULTI_CONN is advertised only for read-only exports: their FLUSH also asks the writer's
// sheep to flush (sheep/cache-coherence.ts), so it covers every connection's writes.
import { Buffer } from "node:buffer";
import type { BlockExport, ExportProvider } from "../core/blockdev.ts";
import { BlockError, NbdErrno, NbdOpenError } from "../core/blockdev.ts";
import { VdiHandle } from "../core/vdi-io.ts";
import type { Requester } from "../core/object-io.ts";
import { decodeInodeHeader } from "../core/inode.ts";
import { isDataObj, vidToDataOid, vidToVdiOid } from "../core/oid.ts";
import { EMPTY, Flag, Op, Res } from "../core/proto.ts";
import { SdError } from "../core/errors.ts";
import type { Header } from "../core/proto.ts";
import type { MetaIO, VdiTable } from "../core/vdi.ts";
import type { Logger } from "./log.ts";
import type { Reply } from "./ops/reply.ts";

/** The port the NBD exports use: VDI lookups, the cluster-wide VDI lock and object I/O. */
export interface VdiService {
  handle(hdr: Header, data: Buffer): Promise<Reply>;
  readonly vdis: VdiTable;
  readonly metaIO: MetaIO;
  readonly log: Logger;
  lockVdi(name: string, opts: { tag?: string; snapid?: number }): Promise<Reply>;
  releaseVdi(vid: number): Promise<Reply>;
  /** The object cache as NBD exports may use it (null: `sheep -w` is off). */
  readonly cacheMode: "writeback" | "writethrough" | null;
  /** Pushes this sheep's dirty objects of the VDI (and has its lock owner flush, if another). */
  flushVdi(vid: number): Promise<void>;
  flushOids(oids: bigint[]): Promise<void>;
  /** Pushes and forgets the VDI's cached objects (detach). */
  releaseCache(vid: number): Promise<void>;
}

const MAX_BLOCK = 32 * 1024 * 1024;

function toBlockError(e: unknown): Error {
  if (e instanceof SdError) {
    switch (e.code) {
      case Res.NO_SPACE:
        return new BlockError(NbdErrno.ENOSPC, e.message);
      case Res.READONLY:
        return new BlockError(NbdErrno.EPERM, e.message);
      case Res.INVALID_PARMS:
        return new BlockError(NbdErrno.EINVAL, e.message);
      default:
        return new BlockError(NbdErrno.EIO, e.message);
    }
  }
  return e as Error;
}

export class SheepExportProvider implements ExportProvider {
  private readonly req: Requester;
  /** The requester of a writable export: data object I/O marked for the cache. */
  private readonly cachedReq: Requester;
  /** Detaches in progress, by VDI name. */
  private readonly releasing = new Map<string, Promise<void>>();
  /** VDIs with a writable export on this sheep (it holds their lock). */
  private readonly writers = new Set<string>();
  constructor(private readonly sheep: VdiService) {
    this.req = (hdr, data) => sheep.handle(hdr, data ?? EMPTY);
    this.cachedReq = (hdr, data) => {
      const mode = sheep.cacheMode;
      if (mode && isDataObj(hdr.oid) && !(hdr.flags & Flag.CMD_COW && mode !== "writeback")) {
        if (hdr.opcode === Op.READ_OBJ || mode === "writeback") hdr.flags |= Flag.CMD_CACHE;
      }
      return sheep.handle(hdr, data ?? EMPTY);
    };
  }

  async list(): Promise<Array<{ name: string; description?: string }>> {
    const out: Array<{ name: string; description?: string }> = [];
    for (const [vid, st] of this.sheep.vdis.states) {
      if (st.deleted) continue;
      try {
        const h = decodeInodeHeader(await this.sheep.metaIO.read(vidToVdiOid(vid), 0, 4664));
        if (!h.name) continue;
        if (h.snapCtime !== 0n) {
          out.push({
            name: `${h.name}@${h.tag || h.snapId}`,
            description: `snapshot ${h.snapId} of ${h.name} (read-only)`,
          });
        } else out.push({ name: h.name, description: `VDI ${h.name}` });
      } catch {
        // an unreadable inode is simply not listed
      }
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async open(
    name: string,
    opts: { readOnlyRequested: boolean; probe?: boolean },
  ): Promise<BlockExport> {
    const at = name.lastIndexOf("@");
    let vdi = name;
    const o: { snapid?: number; tag?: string } = {};
    if (at > 0) {
      vdi = name.slice(0, at);
      const s = name.slice(at + 1);
      if (/^\d+$/.test(s)) o.snapid = Number(s);
      else o.tag = s;
    }
    // A detach of this VDI still pushing its cache (and its slots): a quick reconnect waits for
    // it, or it would read an inode without them, or find the VDI still locked by us.
    await this.releasing.get(vdi);
    let h: VdiHandle;
    try {
      // With a cache, reads are marked for it; the gateway caches only VDIs this sheep holds the
      // lock of (and snapshots), so a read-only export of one locked elsewhere reads the cluster.
      h = await VdiHandle.open(this.sheep.cacheMode ? this.cachedReq : this.req, vdi, o);
    } catch (e) {
      if (e instanceof SdError && (e.code === Res.NO_VDI || e.code === Res.NO_TAG)) {
        throw new NbdOpenError("unknown", `no such VDI: ${name}`);
      }
      throw new NbdOpenError("other", `cannot open ${name}: ${(e as Error).message}`);
    }
    if (opts.readOnlyRequested || h.readOnly) {
      return new VdiExport(name, h, true, null, this.sheep);
    }
    // NBD_OPT_INFO: describe what a GO would get now, without taking the lock.
    if (opts.probe) {
      const owner = this.sheep.vdis.locks.get(h.vid)?.owner;
      return new VdiExport(
        name,
        h,
        owner !== undefined,
        null,
        this.sheep,
        owner ? `VDI ${vdi} is locked by ${owner}: read-only` : undefined,
      );
    }
    // Exclusive attach: the cluster-wide VDI lock. A VDI another client holds is served
    // read-only, so inspection always works and a second writer is refused.
    let r = await this.sheep.lockVdi(vdi, o);
    // Locked by an export here whose client has just gone (the server closes an export after its
    // last reply, and with a cache the close pushes first): a reconnect waits a little for it.
    const wait = this.sheep.cacheMode ? 30 : 0;
    for (let t = 0; t < wait && r.hdr.result === Res.VDI_LOCKED && this.writers.has(vdi); t++) {
      await (this.releasing.get(vdi) ?? new Promise((res) => setTimeout(res, 100)));
      r = await this.sheep.lockVdi(vdi, o);
    }
    if (r.hdr.result === Res.VDI_LOCKED) {
      const owner = this.sheep.vdis.locks.get(h.vid)?.owner ?? "another client";
      return new VdiExport(
        name,
        h,
        true,
        null,
        this.sheep,
        `VDI ${vdi} is locked by ${owner}: read-only`,
      );
    }
    if (r.hdr.result !== Res.SUCCESS) {
      throw new NbdOpenError("other", `cannot lock ${name}: ${new SdError(r.hdr.result).message}`);
    }
    const sheep = this.sheep;
    const release = async () => {
      // Detach: everything written goes to the cluster before another sheep may attach.
      try {
        await sheep.releaseCache(h.vid);
      } catch (e) {
        sheep.log.err(
          `pushing the cache of ${name} at detach failed, the lock stays: ${(e as Error).message}`,
        );
        return;
      }
      await sheep.releaseVdi(h.vid).then(
        () => {},
        (e) => sheep.log.warn(`releasing the lock of ${name}: ${(e as Error).message}`),
      );
    };
    this.writers.add(vdi);
    return new VdiExport(name, h, false, () => {
      const p = release().finally(() => {
        this.writers.delete(vdi);
        if (this.releasing.get(vdi) === p) this.releasing.delete(vdi);
      });
      this.releasing.set(vdi, p);
      return p;
    }, sheep);
  }
}

class VdiExport implements BlockExport {
  readonly minBlock = 1;
  readonly prefBlock = 4096;
  readonly maxBlock = MAX_BLOCK;
  readonly size: number;
  /** One writer connection per VDI (exclusive attach): connections are not interchangeable. */
  readonly multiConn: boolean;
  constructor(
    readonly name: string,
    private readonly h: VdiHandle,
    readonly readOnly: boolean,
    private readonly release: (() => Promise<void>) | null,
    private readonly sheep: VdiService,
    readonly description?: string,
  ) {
    this.size = h.size;
    this.multiConn = readOnly;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    try {
      return await this.h.read(offset, length);
    } catch (e) {
      throw toBlockError(e);
    }
  }

  async write(offset: number, data: Buffer, fua = false): Promise<void> {
    if (this.readOnly) throw new BlockError(NbdErrno.EPERM, "read-only export");
    try {
      await this.h.write(offset, data);
      if (fua) await this.pushRange(offset, data.length);
    } catch (e) {
      throw toBlockError(e);
    }
  }

  /** FUA with the cache: the objects the write touched, pushed to every replica. */
  private async pushRange(offset: number, length: number): Promise<void> {
    if (!this.sheep.cacheMode || length === 0) return;
    const os = this.h.objectSize;
    const oids: bigint[] = [];
    for (let i = Math.floor(offset / os); i <= Math.floor((offset + length - 1) / os); i++) {
      oids.push(vidToDataOid(this.h.vid, i));
    }
    await this.sheep.flushOids(oids);
  }

  async flush(): Promise<void> {
    // Without a cache every acknowledged write is already on all replicas; with one, push.
    try {
      await this.sheep.flushVdi(this.h.vid);
    } catch (e) {
      throw toBlockError(e);
    }
  }

  trim(offset: number, length: number): Promise<void> {
    return this.zero(offset, length, false, false);
  }

  async writeZeroes(
    offset: number,
    length: number,
    o: { noHole: boolean; fastZero: boolean; fua: boolean },
  ): Promise<void> {
    await this.zero(offset, length, o.noHole, o.fastZero);
    if (o.fua) await this.pushRange(offset, length).catch((e) => Promise.reject(toBlockError(e)));
  }

  /** Whole objects are freed (slot cleared, server reclaims); partial ranges are written as zeros. */
  private async zero(
    offset: number,
    length: number,
    noHole: boolean,
    fastZero: boolean,
  ): Promise<void> {
    if (this.readOnly) throw new BlockError(NbdErrno.EPERM, "read-only export");
    const os = this.h.objectSize;
    const end = offset + length;
    const jobs: Array<() => Promise<void>> = [];
    let pos = offset;
    while (pos < end) {
      const idx = Math.floor(pos / os);
      const objStart = idx * os;
      const objEnd = Math.min(objStart + os, this.size);
      const segEnd = Math.min(end, objEnd);
      const whole = pos === objStart && segEnd === objEnd;
      const allocated = this.h.isAllocated(idx);
      if (allocated || noHole) {
        if (whole && !noHole) jobs.push(() => this.h.discardObject(idx));
        else {
          if (fastZero) throw new BlockError(NbdErrno.ENOTSUP, "zeroing would be slow");
          const p = pos, n = segEnd - pos;
          jobs.push(() => this.h.write(p, Buffer.alloc(n)));
        }
      }
      pos = segEnd;
    }
    try {
      await Promise.all(jobs.map((j) => j()));
    } catch (e) {
      throw toBlockError(e);
    }
  }

  blockStatus(
    offset: number,
    length: number,
  ): Promise<Array<{ length: number; hole: boolean; zero: boolean }>> {
    const os = this.h.objectSize;
    const out: Array<{ length: number; hole: boolean; zero: boolean }> = [];
    const end = Math.min(offset + length, this.size);
    let pos = offset;
    while (pos < end) {
      const idx = Math.floor(pos / os);
      const segEnd = Math.min(end, (idx + 1) * os);
      const hole = !this.h.isAllocated(idx);
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += segEnd - pos;
      else out.push({ length: segEnd - pos, hole, zero: hole });
      pos = segEnd;
    }
    return Promise.resolve(out);
  }

  async close(): Promise<void> {
    const rel = this.release;
    if (rel) await rel(); // logs its own failure
  }
}
