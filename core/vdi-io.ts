// Client side VDI I/O (protocol.md §10), shared by dog and the NBD gateway: VdiHandle reads and
// writes byte ranges of a VDI as object requests (COW creates, slot updates, hyper volumes).
// Works over any request function, so it can talk to a remote sheep or to the local gateway.
import { Buffer } from "node:buffer";
import { SdError } from "./errors.ts";
import { Inode, type InodeHeader } from "./inode.ts";
import { MAX_DATA_OBJS, SD_INODE_HEADER_SIZE, vidToDataOid, vidToVdiOid } from "./oid.ts";
import { Header, Op, Res } from "./proto.ts";
import {
  countDataObjs,
  decodeSlots,
  flatMap,
  getVdiInfo,
  IO_PARALLEL,
  Limiter,
  MAX_READ_CHUNK,
  objectSizeOf,
  readInodeHeader,
  readObject,
  readObjectParts,
  type Requester,
  type SlotMap,
  writeObject,
} from "./object-io.ts";
import { BtreeIndex, readBtree } from "./btree.ts";

/** Header plus data map of the inode of `vid` (flat: the covered prefix of data_vdi_id). */
export async function readInodeWithSlots(
  req: Requester,
  vid: number,
): Promise<{ header: InodeHeader; slots: SlotMap }> {
  const header = await readInodeHeader(req, vid);
  if (header.storePolicy === 1) return { header, slots: await readBtree(req, vid, header) };
  const n = Math.min(countDataObjs(header), MAX_DATA_OBJS);
  if (n === 0) return { header, slots: flatMap(new Uint32Array(0)) };
  const buf = await readObject(req, vidToVdiOid(vid), n * 4, SD_INODE_HEADER_SIZE, true);
  return { header, slots: flatMap(decodeSlots(buf, n)) };
}

// ---------------------------------------------------------------------------------------------
// VdiHandle

export interface OpenOpts {
  snapid?: number;
  tag?: string;
}

export class VdiHandle {
  vid = 0;
  size = 0;
  objectSize = 0;
  readOnly = false;
  inode!: Inode;
  private slots!: SlotMap;
  private readonly limiter = new Limiter(IO_PARALLEL);
  private readonly creating = new Map<number, Promise<void>>();
  private generation = 0;
  private reloading: Promise<void> | null = null;
  private btreeFlush: Promise<void> = Promise.resolve();

  private constructor(
    private readonly req: Requester,
    readonly name: string,
    private readonly opts: OpenOpts,
  ) {}

  /** GET_VDI_INFO then READ_OBJ of the inode header and data_vdi_id prefix. */
  static async open(req: Requester, name: string, opts: OpenOpts = {}): Promise<VdiHandle> {
    const info = await getVdiInfo(req, name, opts.snapid ?? 0, opts.tag ?? "");
    return VdiHandle.openVid(req, name, info.vid, opts);
  }

  /** Opens a VDI whose vid was already looked up (name/opts are used by reload()). */
  static async openVid(
    req: Requester,
    name: string,
    vid: number,
    opts: OpenOpts = {},
  ): Promise<VdiHandle> {
    const h = new VdiHandle(req, name, opts);
    await h.load(vid);
    return h;
  }

  get header(): InodeHeader {
    return this.inode.header;
  }

  /** Number of data slots covering the VDI. */
  get objectCount(): number {
    return Math.ceil(this.size / this.objectSize);
  }

  private get pinned(): boolean {
    return !!(this.opts.snapid || this.opts.tag);
  }

  private async load(vid: number): Promise<void> {
    const { header, slots } = await readInodeWithSlots(this.req, vid);
    this.slots = slots;
    this.inode = new Inode(header, slots.flat ?? new Uint32Array(0), new Int32Array(0));
    this.vid = vid;
    this.size = Number(header.vdiSize);
    this.objectSize = objectSizeOf(header);
    this.readOnly = this.pinned || header.snapCtime !== 0n;
    this.generation++;
  }

  /** Re-resolves the name (the VDI may have been snapshotted) and re-reads the inode. */
  reload(): Promise<void> {
    if (!this.reloading) {
      this.reloading = (async () => {
        try {
          const info = await getVdiInfo(
            this.req,
            this.name,
            this.opts.snapid ?? 0,
            this.opts.tag ?? "",
          );
          await this.load(info.vid);
        } finally {
          this.reloading = null;
        }
      })();
    }
    return this.reloading;
  }

  /** VID owning data object idx (0 = unallocated). */
  slotOf(idx: number): number {
    return this.slots.get(idx);
  }

  isAllocated(idx: number): boolean {
    return this.slots.get(idx) !== 0;
  }

  /** Allocated (idx, vid) pairs. */
  allocated(): Iterable<[number, number]> {
    return this.slots.entries();
  }

  private segments(
    offset: number,
    length: number,
  ): { idx: number; off: number; len: number; pos: number }[] {
    const out = [];
    const os = this.objectSize;
    let pos = 0;
    while (pos < length) {
      const abs = offset + pos;
      const idx = Math.floor(abs / os);
      const off = abs - idx * os;
      const len = Math.min(os - off, length - pos);
      out.push({ idx, off, len, pos });
      pos += len;
    }
    return out;
  }

  private checkRange(offset: number, length: number): void {
    if (
      !(Number.isInteger(offset) && Number.isInteger(length)) || offset < 0 || length < 0 ||
      offset + length > this.size
    ) {
      throw new SdError(
        Res.INVALID_PARMS,
        `range ${offset}+${length} is beyond the end of the VDI (${this.size})`,
      );
    }
  }

  /**
   * Reads [offset, offset+length); unallocated objects read as zeros. A read served by one
   * request may land in `into` (its first `length` bytes; the result is then a view of it).
   */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.checkRange(offset, length);
    const segs = this.segments(offset, length);
    if (segs.length === 1 && length <= MAX_READ_CHUNK) {
      // one request covers it: its reply is the result (no second buffer, no copy)
      const s = segs[0], vid = this.slots.get(s.idx);
      if (!vid) return into ? into.fill(0, 0, length).subarray(0, length) : Buffer.alloc(length);
      const oid = vidToDataOid(vid, s.idx);
      return this.limiter.run(() => readObject(this.req, oid, length, s.off, false, into));
    }
    const out = Buffer.alloc(length);
    const tasks: Promise<void>[] = [];
    for (const s of segs) {
      const vid = this.slots.get(s.idx);
      if (!vid) continue;
      const oid = vidToDataOid(vid, s.idx);
      for (let done = 0; done < s.len; done += MAX_READ_CHUNK) {
        const n = Math.min(MAX_READ_CHUNK, s.len - done);
        const at = s.pos + done, objOff = s.off + done;
        tasks.push(this.limiter.run(async () => {
          const d = await readObject(this.req, oid, n, objOff);
          d.copy(out, at, 0, n);
        }));
      }
    }
    await settleAll(tasks);
    return out;
  }

  /** The object holding data index idx (this VDI's or an ancestor's), or null: unallocated. */
  dataOid(idx: number): bigint | null {
    const vid = this.slots.get(idx);
    return vid ? vidToDataOid(vid, idx) : null;
  }

  /**
   * As read, the result in pieces that may be views of the client's socket chunks or a shared
   * zero buffer (so they must not be modified): `dog vdi read` writes them out without a copy.
   */
  async readParts(offset: number, length: number): Promise<readonly Buffer[]> {
    this.checkRange(offset, length);
    const segs = this.segments(offset, length);
    if (segs.length !== 1 || length > MAX_READ_CHUNK) return [await this.read(offset, length)];
    const s = segs[0], vid = this.slots.get(s.idx);
    if (!vid) {
      if (this.zeros.length < length) this.zeros = Buffer.alloc(length);
      return [this.zeros.subarray(0, length)];
    }
    const oid = vidToDataOid(vid, s.idx);
    return await this.limiter.run(() => readObjectParts(this.req, oid, length, s.off));
  }
  private zeros: Buffer = Buffer.alloc(0);

  /**
   * Writes data at offset: CREATE_AND_WRITE for empty slots, COW create for slots owned by
   * another VID, WRITE_OBJ for own objects; then one inode update per run of new slots.
   */
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.readOnly) throw new SdError(Res.READONLY);
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    for (let attempt = 0;; attempt++) {
      const gen = this.generation;
      try {
        await this.writeOnce(offset, data);
        return;
      } catch (e) {
        // The VDI was snapshotted under us: our VID is read-only now; follow the working VDI.
        if (e instanceof SdError && e.code === Res.READONLY && !this.pinned && attempt < 4) {
          if (gen === this.generation) await this.reload();
          if (this.readOnly) throw e;
          continue;
        }
        throw e;
      }
    }
  }

  private async writeOnce(offset: number, data: Buffer): Promise<void> {
    const created: number[] = [];
    const tasks = this.segments(offset, data.length).map((s) =>
      this.limiter.run(() =>
        this.writeSegment(s.idx, s.off, data.subarray(s.pos, s.pos + s.len), created)
      )
    );
    const results = await Promise.allSettled(tasks);
    if (created.length) await this.updateSlots(created);
    for (const r of results) if (r.status === "rejected") throw r.reason;
  }

  private async writeSegment(
    idx: number,
    off: number,
    buf: Buffer,
    created: number[],
  ): Promise<void> {
    for (;;) {
      const busy = this.creating.get(idx);
      if (busy) {
        await busy.catch(() => {});
        continue;
      }
      const h = this.header;
      const vid = this.vid;
      const cur = this.slots.get(idx);
      const oid = vidToDataOid(vid, idx);
      if (cur === vid) {
        await writeObject(this.req, oid, buf, off, {
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
        });
        return;
      }
      const p = (async () => {
        await writeObject(this.req, oid, buf, off, {
          create: true,
          cowOid: cur ? vidToDataOid(cur, idx) : 0n,
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
        });
        if (this.vid === vid) this.setSlot(idx, vid);
      })();
      this.creating.set(idx, p);
      try {
        await p;
        created.push(idx);
      } finally {
        this.creating.delete(idx);
      }
      return;
    }
  }

  private setSlot(idx: number, vid: number): void {
    const f = this.slots.flat;
    if (f && idx < f.length) f[idx] = vid;
    else if (this.slots instanceof BtreeIndex) this.slots.set(idx, vid);
  }

  /**
   * Persists the B-tree changes made so far. Serialized, so a later flush never lands before
   * an earlier one; the writes are taken synchronously, so every flush writes the newest state.
   */
  private flushBtree(): Promise<void> {
    const run = async () => {
      const t = this.slots;
      if (!(t instanceof BtreeIndex)) return;
      const h = this.header;
      for (const w of t.takeWrites()) {
        await writeObject(this.req, w.oid, w.data, w.offset, {
          create: w.create,
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
          direct: true,
        });
      }
    };
    const p = this.btreeFlush.catch(() => {}).then(run);
    this.btreeFlush = p;
    return p;
  }

  /** Writes data_vdi_id for the given indexes, one WRITE_OBJ per run of consecutive indexes. */
  private async updateSlots(idxs: number[]): Promise<void> {
    if (this.slots instanceof BtreeIndex) return this.flushBtree();
    const f = this.slots.flat;
    if (!f) return;
    const sorted = [...new Set(idxs)].sort((a, b) => a - b);
    const runs: [number, number][] = [];
    for (const i of sorted) {
      const last = runs[runs.length - 1];
      if (last && last[1] === i - 1) last[1] = i;
      else runs.push([i, i]);
    }
    const h = this.header;
    const ino = vidToVdiOid(this.vid);
    await settleAll(runs.map(([a, b]) => {
      const payload = Buffer.allocUnsafe((b - a + 1) * 4);
      for (let i = a; i <= b; i++) payload.writeUInt32LE(f[i], (i - a) * 4);
      return writeObject(this.req, ino, payload, SD_INODE_HEADER_SIZE + 4 * a, {
        copies: h.nrCopies,
        copyPolicy: h.copyPolicy,
        direct: true,
      });
    }));
  }

  /**
   * Unmaps object idx by zeroing its slot; the cluster reclaims the object. Hyper volumes have
   * no reference counting: an object of our own VID is removed here (only this VDI can refer to
   * it), one inherited from a snapshot just loses its slot.
   */
  async discardObject(idx: number): Promise<void> {
    if (this.readOnly) throw new SdError(Res.READONLY);
    const busy = this.creating.get(idx);
    if (busy) await busy.catch(() => {});
    const owner = this.slots.get(idx);
    if (!owner) return;
    const h = this.header;
    const t = this.slots;
    if (t instanceof BtreeIndex) {
      t.set(idx, 0);
      await this.flushBtree();
      if (owner === this.vid) {
        const rh = Header.req(Op.REMOVE_OBJ);
        rh.oid = vidToDataOid(owner, idx);
        const r = await this.req(rh);
        if (r.hdr.result !== Res.SUCCESS && r.hdr.result !== Res.NO_OBJ) {
          throw new SdError(r.hdr.result);
        }
      }
      return;
    }
    const f = t.flat!;
    f[idx] = 0;
    await writeObject(
      this.req,
      vidToVdiOid(this.vid),
      Buffer.alloc(4),
      SD_INODE_HEADER_SIZE + 4 * idx,
      {
        copies: h.nrCopies,
        copyPolicy: h.copyPolicy,
        direct: true,
      },
    );
  }
}

/** Waits for every task, then rethrows the first failure. */
async function settleAll(tasks: Promise<unknown>[]): Promise<void> {
  const rs = await Promise.allSettled(tasks);
  for (const r of rs) if (r.status === "rejected") throw r.reason;
}
