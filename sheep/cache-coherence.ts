// Coherence of the object cache across gateways (upstream's cache served stale data through other
// gateways). Every sheep runs this, with or without a cache of its own.
//
// The rule: only the holder of a VDI's cluster-wide lock (the writer's attach) caches its objects
// write-back; everybody else reads the cluster. So the only stale data possible is dirty data in
// the lock owner's cache, and the owner flushes on demand: before another gateway reads an object
// of a VDI locked elsewhere it asks the owner for FLUSH_VDI, so it sees every write the owner had
// acknowledged when the read arrived. Forwarding reads to the owner would serve the same data
// but put every read on the owner's path; a flush costs one round trip when nothing is dirty.
// Concurrent reads share one flush, provided it started after they arrived.
//
// Snapshot (NEW_VDI with a base) and delete (DEL_VDI, also rollback's first step) first ask the
// owner to flush and write the VDI through from then on (FLUSH_VDI with CMD_WRITE), so nothing
// dirty is left in the old VID when it becomes read-only; a write from another gateway, and a
// delete, make it drop its copies too (DELETE_CACHE).
import { Buffer } from "node:buffer";
import { decodeInodeHeader } from "../core/inode.ts";
import { isDataObj, isVdiObj, oidToVid, vidToVdiOid } from "../core/oid.ts";
import { Flag, Header, Op, Res } from "../core/proto.ts";
import type { MetaIO, VdiTable } from "../core/vdi.ts";
import type { ClientPool } from "../io/client.ts";
import type { Logger } from "./log.ts";
import type { ObjectCache } from "./object-cache.ts";

export interface CoherenceContext {
  readonly vdis: VdiTable;
  readonly log: Logger;
  readonly pool: ClientPool;
  readonly metaIO: MetaIO;
  readonly cache: ObjectCache | null;
  /** This sheep's host:port, as VDI lock owners are named. */
  selfName(): string;
}

type Kind = "flush" | "quiesce" | "drop";

export class CacheCoherence {
  private readonly flights = new Map<
    string,
    { running: Promise<void>; next: Promise<void> | null }
  >();

  constructor(private readonly s: CoherenceContext) {}

  /** The lock owner of `vid` when it is another sheep. */
  private otherOwner(vid: number): string | null {
    const owner = this.s.vdis.locks.get(vid)?.owner;
    return owner && owner !== this.s.selfName() ? owner : null;
  }

  /** Whether this sheep may cache `vid`: it holds the lock, or the VID is a snapshot. */
  mayCache(vid: number): boolean {
    const st = this.s.vdis.states.get(vid);
    if (!st || st.deleted) return false;
    if (st.snapshot) return true;
    return this.s.vdis.locks.get(vid)?.owner === this.s.selfName();
  }

  /** Before a gateway read of an object of a VDI another sheep holds. */
  beforeRead(oid: bigint): Promise<void> | null {
    if (!isDataObj(oid) && !isVdiObj(oid)) return null;
    const vid = oidToVid(oid);
    const owner = this.otherOwner(vid);
    return owner ? this.ask(owner, vid, "flush") : null;
  }

  /** Before a gateway write of an object of a VDI another sheep holds: it drops its copies. */
  beforeWrite(oid: bigint): Promise<void> | null {
    if (!isDataObj(oid)) return null;
    const vid = oidToVid(oid);
    const owner = this.otherOwner(vid);
    return owner ? this.ask(owner, vid, "drop") : null;
  }

  /** Before NEW_VDI (snapshot) and DEL_VDI reach the cluster. */
  async beforeVdiOp(req: Header, data: Buffer): Promise<void> {
    if (req.opcode === Op.NEW_VDI && req.baseVdiId) {
      await this.toOwner(req.baseVdiId, "quiesce");
    } else if (req.opcode === Op.DEL_VDI) {
      const name = data.subarray(0, Math.max(0, data.indexOf(0))).toString() ||
        data.toString().replace(/\0+$/, "");
      for (const vid of [...this.s.vdis.locks.keys()]) {
        const h = await this.s.metaIO.read(vidToVdiOid(vid), 0, 4664).then(
          decodeInodeHeader,
          () => null,
        );
        if (h?.name === name) await this.toOwner(vid, "drop");
      }
    }
  }

  private async toOwner(vid: number, kind: Kind): Promise<void> {
    const owner = this.s.vdis.locks.get(vid)?.owner;
    if (!owner) return;
    if (owner === this.s.selfName()) {
      await applyLocal(this.s.cache, vid, kind);
      return;
    }
    await this.ask(owner, vid, kind);
  }

  /** One request to the owner; callers arriving while one is in flight share the next one. */
  private ask(owner: string, vid: number, kind: Kind): Promise<void> {
    const key = `${owner}/${vid}/${kind}`;
    const f = this.flights.get(key);
    const send = () => this.send(owner, vid, kind);
    if (!f) {
      const running = send().finally(() => this.advance(key));
      this.flights.set(key, { running, next: null });
      return running;
    }
    if (!f.next) f.next = f.running.catch(() => {}).then(send);
    return f.next;
  }

  private advance(key: string): void {
    const f = this.flights.get(key);
    if (!f) return;
    if (!f.next) {
      this.flights.delete(key);
      return;
    }
    const running = f.next.finally(() => this.advance(key));
    this.flights.set(key, { running, next: null });
  }

  private async send(owner: string, vid: number, kind: Kind): Promise<void> {
    const colon = owner.lastIndexOf(":");
    const host = owner.slice(0, colon).replace(/^\[|\]$/g, ""),
      port = Number(owner.slice(colon + 1));
    const h = Header.req(kind === "drop" ? Op.DELETE_CACHE : Op.FLUSH_VDI, {
      flags: kind === "quiesce" ? Flag.CMD_WRITE : 0,
    });
    h.oid = vidToVdiOid(vid);
    try {
      const r = await this.s.pool.request(host, port, h);
      // INVALID_PARMS: an owner without a cache (or a 1.0 sheep) has nothing to flush.
      if (r.hdr.result !== Res.SUCCESS && r.hdr.result !== Res.INVALID_PARMS) {
        this.s.log.warn(
          `cache ${kind} of VDI ${vid.toString(16)} at ${owner}: result ${r.hdr.result}`,
        );
      }
    } catch (e) {
      // The owner is gone: what it never flushed is lost with it (write-back semantics).
      this.s.log.warn(
        `cache ${kind} of VDI ${vid.toString(16)} at ${owner}: ${(e as Error).message}`,
      );
    }
  }
}

/** What the owner does for FLUSH_VDI / DELETE_CACHE (local or asked by another gateway). */
export async function applyLocal(
  cache: ObjectCache | null,
  vid: number,
  kind: Kind,
): Promise<void> {
  if (!cache) return;
  if (kind !== "flush") cache.quiesce(vid);
  await cache.flushVdi(vid);
  if (kind === "drop") await cache.dropVdi(vid);
}
