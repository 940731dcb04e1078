// Gateway ops: object requests from clients (dog, QEMU, this sheep's NBD server), turned into
// peer requests on every replica by sheep/gateway.ts. Writes to snapshots are refused; a
// copy-on-write create seeds the object from its base; inode slot writes drop the references
// of the objects they replace (generational reference counting, protocol.md §9.4).
import { Buffer } from "node:buffer";
import { EMPTY, Flag, Header, Op, Res } from "../../core/proto.ts";
import type { WriteRun } from "../../core/write-runs.ts";
import { SdError } from "../../core/errors.ts";
import {
  dataOidToIdx,
  isDataObj,
  isVdiObj,
  ledgerOid,
  oidToVid,
  SD_INODE_DATA_INDEX_OFFSET,
  SD_INODE_GREF_OFFSET,
  vidToVdiOid,
} from "../../core/oid.ts";
import { decrefPlan, type MetaIO, type VdiTable } from "../../core/vdi.ts";
import type { Gateway } from "../gateway.ts";
import { ObjectCache } from "../object-cache.ts";
import { applyLocal, type CacheCoherence } from "../cache-coherence.ts";
import type { Logger } from "../log.ts";
import { errorReply, type Reply } from "./reply.ts";

/** What gateway ops see of the daemon. */
export interface GatewayContext {
  readonly vdis: VdiTable;
  readonly gateway: Gateway;
  readonly metaIO: MetaIO;
  readonly log: Logger;
  objectSize(oid: bigint): number;
  /** Size of the file holding `oid` on a node (an inode, an EC strip, a data object). */
  storedSize(oid: bigint, policyHint?: number): number;
  ecPolicyOf(oid: bigint, hint?: number): number;
  /** `sheep -w`; null without it. */
  readonly cache: ObjectCache | null;
  readonly coherence: CacheCoherence;
}

export class GatewayOps {
  constructor(private readonly s: GatewayContext) {}

  // Object cache hooks (sheep/object-cache.ts, sheep/cache-coherence.ts): a VDI locked by
  // another sheep is flushed there before we read it; this sheep's cache serves only VDIs it
  // holds the lock of (and snapshots); everything else takes the plain gateway path.

  async read(req: Header): Promise<Reply> {
    // A read past the object's end is refused before anything is allocated for it (a bogus
    // length would otherwise cost a buffer of up to 4 GiB on every node it reaches).
    if (this.pastEnd(req, req.dataLength)) return errorReply(req, new SdError(Res.INVALID_PARMS));
    const c = this.s.coherence.beforeRead(req.oid);
    if (c) await c;
    const cache = this.s.cache;
    if (cache && ObjectCache.cacheable(req.oid) && this.s.coherence.mayCache(oidToVid(req.oid))) {
      const r = await cache.read(req);
      if (r) return r;
    }
    return await this.s.gateway.read(req);
  }

  /** The gateway path without the cache (the cache's own pulls and pushes). */
  uncached(req: Header, data: Buffer): Promise<Reply> {
    if (req.opcode === Op.READ_OBJ) return this.s.gateway.read(req);
    if (req.opcode === Op.CREATE_AND_WRITE_OBJ) return this.createDirect(req, data);
    return this.writeDirect(req, data);
  }

  /** The cache's push of an existing data object's dirty runs (Gateway.writeRuns). */
  pushRuns(
    req: Header,
    runs: ReadonlyArray<WriteRun>,
    limit: <T>(f: () => Promise<T>) => Promise<T>,
  ): Promise<Reply[]> {
    return this.s.gateway.writeRuns(req, runs, limit);
  }

  async remove(req: Header): Promise<Reply> {
    await this.s.cache?.forget(req.oid);
    return await this.s.gateway.writeAll(req, EMPTY);
  }

  /** FLUSH_VDI: push the VDI's dirty objects (CMD_WRITE: and write it through from now on). */
  async flushVdi(req: Header): Promise<Reply> {
    if (!this.s.cache) throw new SdError(Res.INVALID_PARMS); // as 1.0: nothing cached here
    const vid = oidToVid(req.oid);
    await applyLocal(this.s.cache, vid, req.flags & Flag.CMD_WRITE ? "quiesce" : "flush");
    return { hdr: new Header(), data: EMPTY };
  }

  /** DELETE_CACHE: push, then drop the VDI's cached objects. */
  async deleteCache(req: Header): Promise<Reply> {
    await applyLocal(this.s.cache, oidToVid(req.oid), "drop");
    return { hdr: new Header(), data: EMPTY };
  }

  /** CACHE_PURGE: drop without pushing, one VDI (CMD_WRITE) or all. */
  async purgeCache(req: Header): Promise<Reply> {
    const cache = this.s.cache;
    if (!cache) throw new SdError(Res.NO_CACHE);
    if (req.flags & Flag.CMD_WRITE) await cache.dropVdi(oidToVid(req.oid));
    else await cache.purgeAll();
    return { hdr: new Header(), data: EMPTY };
  }

  /** GET_CACHE_INFO: upstream's struct object_cache_info. */
  cacheInfo(_req: Header): Promise<Reply> {
    const cache = this.s.cache;
    if (!cache) throw new SdError(Res.NO_CACHE);
    return Promise.resolve({ hdr: new Header(), data: encodeCacheInfo(cache) });
  }

  /** Dropping a data object = writing 0 into its inode slot; the inode write path reclaims it. */
  async discard(req: Header): Promise<Reply> {
    const h = Header.req(Op.WRITE_OBJ, { flags: Flag.CMD_WRITE, dataLength: 4 });
    h.oid = vidToVdiOid(oidToVid(req.oid));
    h.offset = SD_INODE_DATA_INDEX_OFFSET + 4 * dataOidToIdx(req.oid);
    await this.write(h, Buffer.alloc(4)).catch((e) =>
      this.s.log.warn(`discard ${req.oid.toString(16)}: ${(e as Error).message}`)
    );
    return { hdr: new Header(), data: EMPTY };
  }

  /** Data objects of snapshots are read-only. */
  private checkWritable(oid: bigint): void {
    if (!isDataObj(oid)) return;
    const st = this.s.vdis.states.get(oidToVid(oid));
    if (st?.snapshot) throw new SdError(Res.READONLY);
  }

  /**
   * Whether [offset, offset+length) leaves the object: refused before anything is allocated or
   * written for it (a bogus length or offset would cost buffers, or sparse files, of up to 4 GiB
   * on every node it reaches).
   */
  private pastEnd(req: Header, length: number): boolean {
    const limit = this.s.ecPolicyOf(req.oid, req.objCopyPolicy)
      ? this.s.objectSize(req.oid)
      : this.s.storedSize(req.oid, req.objCopyPolicy);
    return req.offset + length > limit;
  }

  async create(req: Header, data: Buffer): Promise<Reply> {
    if (this.pastEnd(req, data.length)) return errorReply(req, new SdError(Res.INVALID_PARMS));
    this.checkWritable(req.oid);
    const r = await this.cacheWrite(req, data);
    return r ?? await this.createDirect(req, data);
  }

  /** The cache's answer to a write or create, or null when the gateway must do it. */
  private async cacheWrite(req: Header, data: Buffer): Promise<Reply | null> {
    const c = this.s.coherence.beforeWrite(req.oid);
    if (c) await c;
    const cache = this.s.cache;
    if (!cache) return null;
    const vid = oidToVid(req.oid);
    if (ObjectCache.cacheable(req.oid)) {
      if (!this.s.coherence.mayCache(vid)) return null;
      return req.opcode === Op.CREATE_AND_WRITE_OBJ
        ? await cache.create(req, data)
        : await cache.write(req, data);
    }
    // Inode (and B-tree) writes: a slot never reaches the cluster before the object it names.
    if (req.opcode === Op.WRITE_OBJ && isVdiObj(req.oid)) return await cache.inodeWrite(req, data);
    await cache.pushCreated(vid);
    return null;
  }

  private async createDirect(req: Header, data: Buffer): Promise<Reply> {
    if (req.flags & Flag.CMD_COW) {
      // Copy-on-write: seed the new object from cow_oid, overlay the payload, create it whole.
      const objSize = this.s.objectSize(req.oid);
      let full: Buffer;
      if (req.offset === 0 && data.length === objSize) full = data;
      else {
        const rh = Header.req(Op.READ_OBJ, { dataLength: objSize });
        rh.oid = req.cowOid;
        const base = await this.s.gateway.read(rh);
        full = Buffer.alloc(objSize);
        base.data.copy(full, 0, 0, Math.min(objSize, base.data.length));
        data.copy(full, req.offset);
      }
      const h = req.clone();
      h.flags = (h.flags & ~Flag.CMD_COW) | Flag.CMD_WRITE;
      h.offset = 0;
      h.dataLength = full.length;
      h.cowOid = 0n;
      return await this.s.gateway.writeAll(h, full);
    }
    return await this.s.gateway.writeAll(req, data);
  }

  /**
   * Writes to an inode's data_vdi_id range drop references to the objects they replace
   * (protocol.md §9.4): an object referenced by nobody else (gref {0,0}) is removed at once.
   */
  async write(req: Header, data: Buffer): Promise<Reply> {
    if (this.pastEnd(req, data.length)) return errorReply(req, new SdError(Res.INVALID_PARMS));
    this.checkWritable(req.oid);
    const r = await this.cacheWrite(req, data);
    return r ?? await this.writeDirect(req, data);
  }

  private async writeDirect(req: Header, data: Buffer): Promise<Reply> {
    const oid = req.oid;
    const start = req.offset;
    const end = start + data.length;
    if (!isVdiObj(oid) || end <= SD_INODE_DATA_INDEX_OFFSET || start >= SD_INODE_GREF_OFFSET) {
      return await this.s.gateway.writeAll(req, data);
    }
    // Hyper volumes keep a B-tree root there, not flat slots: no reference counting (upstream).
    const storePolicy = (await this.s.metaIO.read(oid, 553, 1))[0];
    if (storePolicy !== 0) return await this.s.gateway.writeAll(req, data);
    const s = Math.max(start, SD_INODE_DATA_INDEX_OFFSET);
    const e = Math.min(end, SD_INODE_GREF_OFFSET);
    const firstIdx = Math.floor((s - SD_INODE_DATA_INDEX_OFFSET) / 4);
    const lastIdx = Math.ceil((e - SD_INODE_DATA_INDEX_OFFSET) / 4);
    const n = lastIdx - firstIdx;
    const old = await this.s.metaIO.read(oid, SD_INODE_DATA_INDEX_OFFSET + firstIdx * 4, n * 4);
    // Filling empty slots (every new object) replaces nothing: no counts to read or drop.
    if (old.every((b) => b === 0)) return await this.s.gateway.writeAll(req, data);
    const gref = await this.s.metaIO.read(oid, SD_INODE_GREF_OFFSET + firstIdx * 8, n * 8);
    const r = await this.s.gateway.writeAll(req, data);
    // Slot-aligned writes carry the new slots; anything else is read back.
    const aligned = start >= SD_INODE_DATA_INDEX_OFFSET && end <= SD_INODE_GREF_OFFSET &&
      (start - SD_INODE_DATA_INDEX_OFFSET) % 4 === 0 && data.length % 4 === 0;
    const now = aligned
      ? data
      : await this.s.metaIO.read(oid, SD_INODE_DATA_INDEX_OFFSET + firstIdx * 4, n * 4);
    const plan = decrefPlan(firstIdx, old, gref, now);
    if (plan.decrefs.length && !plan.gref.equals(gref)) {
      await this.s.metaIO.write(oid, SD_INODE_GREF_OFFSET + firstIdx * 8, plan.gref);
    }
    const drops = plan.decrefs.map((d) =>
      this.decref(d.oid, d.generation, d.count).catch((err) =>
        this.s.log.warn(`decref ${d.oid.toString(16)}: ${err.message}`)
      )
    );
    await Promise.all(drops);
    return r;
  }

  /** Drops one reference to a data object (generational reference counting, §9.4). */
  private async decref(dataOid: bigint, gen: number, count: number): Promise<void> {
    if (gen === 0 && count === 0) {
      const h = Header.req(Op.REMOVE_OBJ);
      h.oid = dataOid;
      await this.s.gateway.writeAll(h, EMPTY).catch((e) => {
        if (!(e instanceof SdError && e.code === Res.NO_OBJ)) throw e;
      });
      return;
    }
    const h = Header.req(Op.DECREF_OBJ);
    h.oid = ledgerOid(dataOid);
    h.b.writeUInt32LE(gen, 24);
    h.b.writeUInt32LE(count, 28);
    await this.s.gateway.writeAll(h, EMPTY);
  }
}

const MAX_CACHE_INFO = 1024;
/** size u64, used u64, caches[1024] {vid, dirty, total: u32}, count i32, directio u8 (padded). */
export const CACHE_INFO_SIZE = 8 + 8 + 12 * MAX_CACHE_INFO + 8;

function encodeCacheInfo(cache: ObjectCache): Buffer {
  const b = Buffer.alloc(CACHE_INFO_SIZE);
  b.writeBigUInt64LE(BigInt(cache.index.capacity), 0);
  b.writeBigUInt64LE(BigInt(cache.index.usedBytes), 8);
  const rows = cache.info().slice(0, MAX_CACHE_INFO);
  rows.forEach((r, i) => {
    b.writeUInt32LE(r.vid, 16 + 12 * i);
    b.writeUInt32LE(r.dirty, 20 + 12 * i);
    b.writeUInt32LE(r.total, 24 + 12 * i);
  });
  b.writeInt32LE(rows.length, 16 + 12 * MAX_CACHE_INFO);
  b[20 + 12 * MAX_CACHE_INFO] = cache.directio ? 1 : 0;
  return b;
}
