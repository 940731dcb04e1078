// Sheepdog VDIs as NBD exports. Every sheep is a gateway, so requests go through this daemon's own
// gateway path in-process (no socket hop). Writes are durable on every replica when the gateway
// acknowledges them (fdatasync before each peer replies), so FLUSH and FUA need no extra work
// beyond the NBD server waiting for earlier writes; that holds across connections and sheep,
// which is why CAN_MULTI_CONN is safe.
import { Buffer } from "node:buffer";
import type { BlockExport, ExportProvider } from "../core/blockdev.ts";
import { BlockError, NbdErrno, NbdOpenError } from "../core/blockdev.ts";
import { VdiHandle } from "../core/vdi-io.ts";
import type { Requester } from "../core/object-io.ts";
import { decodeInodeHeader } from "../core/inode.ts";
import { vidToVdiOid } from "../core/oid.ts";
import { EMPTY, Res } from "../core/proto.ts";
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
  constructor(private readonly sheep: VdiService) {
    this.req = (hdr, data) => sheep.handle(hdr, data ?? EMPTY);
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
    let h: VdiHandle;
    try {
      h = await VdiHandle.open(this.req, vdi, o);
    } catch (e) {
      if (e instanceof SdError && (e.code === Res.NO_VDI || e.code === Res.NO_TAG)) {
        throw new NbdOpenError("unknown", `no such VDI: ${name}`);
      }
      throw new NbdOpenError("other", `cannot open ${name}: ${(e as Error).message}`);
    }
    if (opts.readOnlyRequested || h.readOnly) return new VdiExport(name, h, true, null);
    // NBD_OPT_INFO: describe what a GO would get now, without taking the lock.
    if (opts.probe) {
      const owner = this.sheep.vdis.locks.get(h.vid)?.owner;
      return new VdiExport(
        name,
        h,
        owner !== undefined,
        null,
        owner ? `VDI ${vdi} is locked by ${owner}: read-only` : undefined,
      );
    }
    // Exclusive attach: the cluster-wide VDI lock. A VDI another client holds is served
    // read-only, so inspection always works and a second writer is refused.
    const r = await this.sheep.lockVdi(vdi, o);
    if (r.hdr.result === Res.VDI_LOCKED) {
      const owner = this.sheep.vdis.locks.get(h.vid)?.owner ?? "another client";
      return new VdiExport(name, h, true, null, `VDI ${vdi} is locked by ${owner}: read-only`);
    }
    if (r.hdr.result !== Res.SUCCESS) {
      throw new NbdOpenError("other", `cannot lock ${name}: ${new SdError(r.hdr.result).message}`);
    }
    return new VdiExport(name, h, false, () =>
      this.sheep.releaseVdi(h.vid).then(
        () => {},
        (e) => this.sheep.log.warn(`releasing the lock of ${name}: ${(e as Error).message}`),
      ));
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

  async write(offset: number, data: Buffer): Promise<void> {
    if (this.readOnly) throw new BlockError(NbdErrno.EPERM, "read-only export");
    try {
      await this.h.write(offset, data);
    } catch (e) {
      throw toBlockError(e);
    }
  }

  flush(): Promise<void> {
    // Every acknowledged write is already on stable storage of all replicas.
    return Promise.resolve();
  }

  trim(offset: number, length: number): Promise<void> {
    return this.zero(offset, length, false, false);
  }

  writeZeroes(
    offset: number,
    length: number,
    o: { noHole: boolean; fastZero: boolean; fua: boolean },
  ): Promise<void> {
    return this.zero(offset, length, o.noHole, o.fastZero);
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
