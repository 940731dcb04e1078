// Client side VDI I/O (protocol.md §10), shared by dog and the NBD gateway. Works over any
// request function, so it can talk to a remote sheep or to the local gateway directly.
import { Buffer } from "node:buffer";
import { SdError } from "./errors.ts";
import { decodeInodeHeader, Inode, type InodeHeader } from "./inode.ts";
import { MAX_DATA_OBJS, SD_INODE_HEADER_SIZE, vidToDataOid, vidToVdiOid } from "./oid.ts";
import { fixedString, Flag, Header, Op, Res } from "./proto.ts";

export type Requester = (hdr: Header, data?: Buffer) => Promise<{ hdr: Header; data: Buffer }>;

/** Parallel object requests per read/write call. */
export const IO_PARALLEL = 16;
/** Largest single READ_OBJ we issue; bigger objects are read in pieces. */
const MAX_READ_CHUNK = 4 * 1024 * 1024;

const INDEX_MAGIC = 0x6274;

/** Runs at most `n` tasks at once. */
export class Limiter {
  private active = 0;
  private readonly waiters: (() => void)[] = [];
  constructor(private readonly n: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.n) await new Promise<void>((r) => this.waiters.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      const w = this.waiters.shift();
      if (w) w();
    }
  }
}

function checkResult(rsp: { hdr: Header }): void {
  if (rsp.hdr.result !== Res.SUCCESS) throw new SdError(rsp.hdr.result);
}

// ---------------------------------------------------------------------------------------------
// single requests

export interface VdiInfo {
  vid: number;
  copies: number;
  blockSizeShift: number;
}

/** GET_VDI_INFO (payload name[256], or name+tag[512] when a tag is given). Throws SdError. */
export async function getVdiInfo(req: Requester, name: string, snapid = 0, tag = ""): Promise<VdiInfo> {
  const payload = tag ? Buffer.concat([fixedString(name, 256), fixedString(tag, 256)]) : fixedString(name, 256);
  const h = Header.req(Op.GET_VDI_INFO, { flags: Flag.CMD_WRITE, dataLength: payload.length });
  h.snapid = snapid;
  const rsp = await req(h, payload);
  checkResult(rsp);
  return { vid: rsp.hdr.rspVdiId, copies: rsp.hdr.rspVdiCopies, blockSizeShift: rsp.hdr.rspVdiBlockSizeShift };
}

/** READ_OBJ of `len` bytes at `offset`; short or trimmed replies are zero-filled. */
export async function readObject(req: Requester, oid: bigint, len: number, offset = 0, direct = false): Promise<Buffer> {
  const h = Header.req(Op.READ_OBJ, { dataLength: len, flags: direct ? Flag.CMD_DIRECT : 0 });
  h.oid = oid;
  h.offset = offset;
  const rsp = await req(h);
  checkResult(rsp);
  const d = rsp.data;
  const at = Number(rsp.hdr.rspObjOffset);
  if (at === 0 && d.length === len) return d;
  const out = Buffer.alloc(len);
  d.copy(out, Math.min(at, len), 0, Math.max(0, Math.min(d.length, len - at)));
  return out;
}

export interface WriteOpts {
  create?: boolean;
  cowOid?: bigint;
  copies?: number;
  copyPolicy?: number;
  flags?: number;
  direct?: boolean;
}

/** WRITE_OBJ or CREATE_AND_WRITE_OBJ (with COW when cowOid is set). Throws SdError. */
export async function writeObject(req: Requester, oid: bigint, data: Buffer, offset = 0, o: WriteOpts = {}): Promise<void> {
  let flags = (o.flags ?? 0) | Flag.CMD_WRITE;
  if (o.cowOid) flags |= Flag.CMD_COW;
  if (o.direct) flags |= Flag.CMD_DIRECT;
  const h = Header.req(o.create ? Op.CREATE_AND_WRITE_OBJ : Op.WRITE_OBJ, { flags, dataLength: data.length });
  h.oid = oid;
  h.cowOid = o.cowOid ?? 0n;
  h.objCopies = o.copies ?? 0;
  h.objCopyPolicy = o.copyPolicy ?? 0;
  h.offset = offset;
  checkResult(await req(h, data));
}

export async function readInodeHeader(req: Requester, vid: number): Promise<InodeHeader> {
  return decodeInodeHeader(await readObject(req, vidToVdiOid(vid), SD_INODE_HEADER_SIZE, 0, true));
}

export function objectSizeOf(h: InodeHeader): number {
  return 2 ** h.blockSizeShift;
}

/** count_data_objs(): number of data slots covering vdi_size. */
export function countDataObjs(h: InodeHeader): number {
  const os = BigInt(objectSizeOf(h));
  return Number((h.vdiSize + os - 1n) / os);
}

/** Data object map of a VDI: dense for flat volumes, sparse for hyper volumes (B-tree). */
export interface SlotMap {
  get(idx: number): number;
  /** Dense array for flat volumes (length = covered slots), null for hyper volumes. */
  flat: Uint32Array | null;
  /** Allocated (idx, vid) pairs in index order. */
  entries(): Iterable<[number, number]>;
}

function flatMap(slots: Uint32Array): SlotMap {
  return {
    flat: slots,
    get: (idx) => (idx < slots.length ? slots[idx] : 0),
    *entries() {
      for (let i = 0; i < slots.length; i++) if (slots[i] !== 0) yield [i, slots[i]];
    },
  };
}

function sparseMap(m: Map<number, number>): SlotMap {
  return {
    flat: null,
    get: (idx) => m.get(idx) ?? 0,
    *entries() {
      for (const k of [...m.keys()].sort((a, b) => a - b)) {
        const v = m.get(k)!;
        if (v !== 0) yield [k, v];
      }
    },
  };
}

function decodeSlots(buf: Buffer, n: number): Uint32Array {
  const out = new Uint32Array(n);
  const lim = Math.min(n, buf.length >> 2);
  for (let i = 0; i < lim; i++) out[i] = buf.readUInt32LE(i * 4);
  return out;
}

/** Reads a hyper volume's B-tree index (protocol.md §9.6) into a sparse map. */
async function readBtree(req: Requester, vid: number): Promise<Map<number, number>> {
  const oid = vidToVdiOid(vid);
  const m = new Map<number, number>();
  const rh = await readObject(req, oid, 8, SD_INODE_HEADER_SIZE, true);
  const magic = rh.readUInt16LE(0), depth = rh.readUInt16LE(2), entries = rh.readUInt32LE(4);
  if (magic !== INDEX_MAGIC || entries === 0) return m;
  if (depth === 1) {
    const b = await readObject(req, oid, entries * 8, SD_INODE_HEADER_SIZE + 8, true);
    for (let i = 0; i < entries; i++) m.set(b.readUInt32LE(i * 8), b.readUInt32LE(i * 8 + 4));
    return m;
  }
  const ind = await readObject(req, oid, entries * 16, SD_INODE_HEADER_SIZE + 8, true);
  for (let i = 0; i < entries; i++) {
    const leafOid = ind.readBigUInt64LE(i * 16 + 8);
    const lh = await readObject(req, leafOid, 8, 0, true);
    const n = lh.readUInt32LE(4);
    if (lh.readUInt16LE(0) !== INDEX_MAGIC || n === 0) continue;
    const lb = await readObject(req, leafOid, n * 8, 8, true);
    for (let j = 0; j < n; j++) m.set(lb.readUInt32LE(j * 8), lb.readUInt32LE(j * 8 + 4));
  }
  return m;
}

/** Header plus data map of the inode of `vid` (flat: the covered prefix of data_vdi_id). */
export async function readInodeWithSlots(req: Requester, vid: number): Promise<{ header: InodeHeader; slots: SlotMap }> {
  const header = await readInodeHeader(req, vid);
  if (header.storePolicy === 1) return { header, slots: sparseMap(await readBtree(req, vid)) };
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

  private constructor(private readonly req: Requester, readonly name: string, private readonly opts: OpenOpts) {}

  /** GET_VDI_INFO then READ_OBJ of the inode header and data_vdi_id prefix. */
  static async open(req: Requester, name: string, opts: OpenOpts = {}): Promise<VdiHandle> {
    const info = await getVdiInfo(req, name, opts.snapid ?? 0, opts.tag ?? "");
    return VdiHandle.openVid(req, name, info.vid, opts);
  }

  /** Opens a VDI whose vid was already looked up (name/opts are used by reload()). */
  static async openVid(req: Requester, name: string, vid: number, opts: OpenOpts = {}): Promise<VdiHandle> {
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
          const info = await getVdiInfo(this.req, this.name, this.opts.snapid ?? 0, this.opts.tag ?? "");
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

  private segments(offset: number, length: number): { idx: number; off: number; len: number; pos: number }[] {
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
    if (!(Number.isInteger(offset) && Number.isInteger(length)) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new SdError(Res.INVALID_PARMS, `range ${offset}+${length} is beyond the end of the VDI (${this.size})`);
    }
  }

  /** Reads [offset, offset+length); unallocated objects read as zeros. */
  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    const out = Buffer.alloc(length);
    const tasks: Promise<void>[] = [];
    for (const s of this.segments(offset, length)) {
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

  /**
   * Writes data at offset: CREATE_AND_WRITE for empty slots, COW create for slots owned by
   * another VID, WRITE_OBJ for own objects; then one inode update per run of new slots.
   */
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.readOnly) throw new SdError(Res.READONLY);
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    if (this.header.storePolicy === 1) {
      throw new SdError(Res.NO_SUPPORT, "writing to hyper volumes is not supported by this client");
    }
    for (let attempt = 0; ; attempt++) {
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
      this.limiter.run(() => this.writeSegment(s.idx, s.off, data.subarray(s.pos, s.pos + s.len), created))
    );
    const results = await Promise.allSettled(tasks);
    if (created.length) await this.updateSlots(created);
    for (const r of results) if (r.status === "rejected") throw r.reason;
  }

  private async writeSegment(idx: number, off: number, buf: Buffer, created: number[]): Promise<void> {
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
        await writeObject(this.req, oid, buf, off, { copies: h.nrCopies, copyPolicy: h.copyPolicy });
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
  }

  /** Writes data_vdi_id for the given indexes, one WRITE_OBJ per run of consecutive indexes. */
  private async updateSlots(idxs: number[]): Promise<void> {
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

  /** Unmaps object idx by zeroing its slot; the cluster reclaims the object. */
  async discardObject(idx: number): Promise<void> {
    if (this.readOnly) throw new SdError(Res.READONLY);
    const busy = this.creating.get(idx);
    if (busy) await busy.catch(() => {});
    if (!this.slots.get(idx)) return;
    const f = this.slots.flat;
    if (!f) throw new SdError(Res.NO_SUPPORT, "discard on hyper volumes is not supported by this client");
    f[idx] = 0;
    const h = this.header;
    await writeObject(this.req, vidToVdiOid(this.vid), Buffer.alloc(4), SD_INODE_HEADER_SIZE + 4 * idx, {
      copies: h.nrCopies,
      copyPolicy: h.copyPolicy,
      direct: true,
    });
  }
}

/** Waits for every task, then rethrows the first failure. */
async function settleAll(tasks: Promise<unknown>[]): Promise<void> {
  const rs = await Promise.allSettled(tasks);
  for (const r of rs) if (r.status === "rejected") throw r.reason;
}
