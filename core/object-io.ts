// Object requests over any request function (a remote sheep, or this sheep's own gateway):
// read/write one object, VDI lookups, inode headers and the flat data map, a concurrency limiter.
import { Buffer } from "node:buffer";
import { ObjectError, SdError } from "./errors.ts";
import { decodeInodeHeader, type InodeHeader } from "./inode.ts";
import { SD_INODE_HEADER_SIZE, vidToVdiOid } from "./oid.ts";
import { fixedString, Flag, Header, Op, Res } from "./proto.ts";

/**
 * Sends one request. `into`, when given, may receive the reply's payload (the reply's data is
 * then a view of it): a caller reading many objects reuses its buffers instead of new ones.
 */
export type Requester = (
  hdr: Header,
  data?: Buffer,
  into?: Buffer,
) => Promise<{ hdr: Header; data: Buffer; readonly parts?: readonly Buffer[] }>;

/** Parallel object requests per read/write call. */
export const IO_PARALLEL = 16;
/** Largest single READ_OBJ we issue; bigger objects are read in pieces. */
export const MAX_READ_CHUNK = 4 * 1024 * 1024;

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

/** Runs `fn` over `items`, `n` at a time; every item is tried, the first failure is thrown. */
export async function runLimited<T>(
  items: T[],
  n: number,
  fn: (t: T) => Promise<void>,
): Promise<void> {
  let i = 0;
  let first: unknown = null;
  const worker = async () => {
    while (i < items.length) {
      const t = items[i++];
      try {
        await fn(t);
      } catch (e) {
        first ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  if (first) throw first;
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
export async function getVdiInfo(
  req: Requester,
  name: string,
  snapid = 0,
  tag = "",
): Promise<VdiInfo> {
  const payload = tag
    ? Buffer.concat([fixedString(name, 256), fixedString(tag, 256)])
    : fixedString(name, 256);
  const h = Header.req(Op.GET_VDI_INFO, { flags: Flag.CMD_WRITE, dataLength: payload.length });
  h.snapid = snapid;
  const rsp = await req(h, payload);
  checkResult(rsp);
  return {
    vid: rsp.hdr.rspVdiId,
    copies: rsp.hdr.rspVdiCopies,
    blockSizeShift: rsp.hdr.rspVdiBlockSizeShift,
  };
}

/** READ_OBJ of `len` bytes at `offset`; short or trimmed replies are zero-filled. */
export async function readObject(
  req: Requester,
  oid: bigint,
  len: number,
  offset = 0,
  direct = false,
  into?: Buffer,
): Promise<Buffer> {
  const h = Header.req(Op.READ_OBJ, { dataLength: len, flags: direct ? Flag.CMD_DIRECT : 0 });
  h.oid = oid;
  h.offset = offset;
  const rsp = await req(h, undefined, into);
  checkResult(rsp);
  const d = rsp.data;
  const at = Number(rsp.hdr.rspObjOffset);
  if (at === 0 && d.length === len) return d;
  const out = Buffer.alloc(len);
  d.copy(out, Math.min(at, len), 0, Math.max(0, Math.min(d.length, len - at)));
  return out;
}

/**
 * READ_OBJ whose payload comes back in the pieces it arrived in when the client kept them
 * (views into its socket chunks; callers must not modify them): a stream to stdout copies
 * nothing. Otherwise one buffer, as readObject.
 */
export async function readObjectParts(
  req: Requester,
  oid: bigint,
  len: number,
  offset = 0,
): Promise<readonly Buffer[]> {
  const h = Header.req(Op.READ_OBJ, { dataLength: len });
  h.oid = oid;
  h.offset = offset;
  const rsp = await req(h);
  checkResult(rsp);
  const at = Number(rsp.hdr.rspObjOffset);
  if (rsp.parts && at === 0 && Number(rsp.hdr.dataLength) === len) return rsp.parts;
  const d = rsp.data;
  if (at === 0 && d.length === len) return [d];
  const out = Buffer.alloc(len);
  d.copy(out, Math.min(at, len), 0, Math.max(0, Math.min(d.length, len - at)));
  return [out];
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
export async function writeObject(
  req: Requester,
  oid: bigint,
  data: Buffer,
  offset = 0,
  o: WriteOpts = {},
): Promise<void> {
  let flags = (o.flags ?? 0) | Flag.CMD_WRITE;
  if (o.cowOid) flags |= Flag.CMD_COW;
  if (o.direct) flags |= Flag.CMD_DIRECT;
  const h = Header.req(o.create ? Op.CREATE_AND_WRITE_OBJ : Op.WRITE_OBJ, {
    flags,
    dataLength: data.length,
  });
  h.oid = oid;
  h.cowOid = o.cowOid ?? 0n;
  h.objCopies = o.copies ?? 0;
  h.objCopyPolicy = o.copyPolicy ?? 0;
  h.offset = offset;
  const rsp = await req(h, data);
  if (rsp.hdr.result !== Res.SUCCESS) throw new ObjectError(rsp.hdr.result, oid);
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
  /** Hyper volumes: the B-tree leaf objects (not data). */
  leafOids?(): bigint[];
}

export function flatMap(slots: Uint32Array): SlotMap {
  return {
    flat: slots,
    get: (idx) => (idx < slots.length ? slots[idx] : 0),
    *entries() {
      for (let i = 0; i < slots.length; i++) if (slots[i] !== 0) yield [i, slots[i]];
    },
  };
}

export function decodeSlots(buf: Buffer, n: number): Uint32Array {
  const out = new Uint32Array(n);
  const lim = Math.min(n, buf.length >> 2);
  for (let i = 0; i < lim; i++) out[i] = buf.readUInt32LE(i * 4);
  return out;
}
