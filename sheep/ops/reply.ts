// What every op family shares: the reply shape and the small payload helpers of the dispatch.
import { Buffer } from "node:buffer";
import { EMPTY, Header, readFixedString } from "../../core/proto.ts";
import { errnoToRes, SdError } from "../../core/errors.ts";
import { decodeInodeHeader, type InodeHeader } from "../../core/inode.ts";
import { isVdiObj, SD_INODE_HEADER_SIZE } from "../../core/oid.ts";
import type { VdiState } from "../../core/vdi.ts";
import type { Reply } from "../../core/client.ts";

/** One reply shape for the client and the server: a relayed peer reply keeps its pieces. */
export type { Reply } from "../../core/client.ts";

/** What a work phase tells every node to apply in its main phase. */
export type Apply =
  | { type: "vdi-added"; state: VdiState & { oldVid?: number } }
  | { type: "vdi-deleted"; vid: number; recycled?: number[] }
  | { type: "lock"; vid: number; owner: string }
  | { type: "unlock"; vid: number };
export type WorkResult = Reply & { apply?: Apply };

/** The inode header carried by a write that starts an inode object, else null. */
export function inodeHeaderOf(oid: bigint, offset: number, data: Buffer): InodeHeader | null {
  return isVdiObj(oid) && offset === 0 && data.length >= SD_INODE_HEADER_SIZE
    ? decodeInodeHeader(data)
    : null;
}

/** name[256] or name[256] + tag[256] payload plus the header's snapid (VDI lookups). */
export function vdiNameArgs(
  req: Header,
  data: Buffer,
): { name: string; opts: { tag?: string; snapid?: number } } {
  const tag = data.length >= 512 ? readFixedString(data, 256, 256) : "";
  return {
    name: readFixedString(data, 0, 256),
    opts: { tag: tag || undefined, snapid: req.snapid || undefined },
  };
}

/** Reply fields of a VDI lookup (GET_VDI_INFO, LOCK_VDI). */
export function vdiFound(
  h: Header,
  r: { vid: number; nrCopies: number; blockSizeShift: number },
): Header {
  h.rspVdiId = r.vid;
  h.rspVdiCopies = r.nrCopies;
  h.rspVdiBlockSizeShift = r.blockSizeShift;
  return h;
}

/** u64 LE oid array (GET_OBJ_LIST, OIDS_EXIST replies). */
export function encodeOids(oids: Iterable<bigint>): Buffer {
  const list = [...oids];
  const b = Buffer.alloc(list.length * 8);
  list.forEach((o, i) => b.writeBigUInt64LE(o, i * 8));
  return b;
}

export function withResult(h: Header, code: number): Header {
  h.result = code;
  return h;
}

export function errorReply(_req: Header, e: unknown): Reply {
  const h = new Header();
  h.result = e instanceof SdError ? e.code : errnoToRes(e);
  return { hdr: h, data: EMPTY };
}
