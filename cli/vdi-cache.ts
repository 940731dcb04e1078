// dog vdi cache flush|delete|info|purge: the object cache of `sheep -w` (0.9's commands and
// output, dog-cli.md §9). flush and info talk to the addressed sheep; delete drops the VDI's
// cache on every node (each pushes its dirty objects first); purge drops without pushing.
import { decodeInodeHeader } from "../core/inode.ts";
import type { SdNode } from "../core/node.ts";
import { readObject } from "../core/object-io.ts";
import { SD_INODE_HEADER_SIZE, vidToVdiOid } from "../core/oid.ts";
import { Flag, Header, Op, Res, strerror } from "../core/proto.ts";
import {
  type Ctx,
  err,
  EXIT_FAILURE,
  EXIT_SUCCESS,
  EXIT_SYSFAIL,
  genericSubcommand,
  out,
  updateNodeList,
} from "./common.ts";
import { strnumber } from "./format.ts";
import { findVdiName } from "./vdi-common.ts";

/** Upstream counts cached objects in 4 MiB units (SD_DATA_OBJ_SIZE). */
const SD_DATA_OBJ_SIZE = 4 * 1024 * 1024;
/** struct object_cache_info: size, used, caches[1024] {vid, dirty, total}, count, directio. */
const MAX_CACHE_INFO = 1024;
const CACHE_INFO_SIZE = 8 + 8 + 12 * MAX_CACHE_INFO + 8;

export function vdiCache(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, {
    flush: cacheFlush,
    delete: cacheDelete,
    info: cacheInfo,
    purge: cachePurge,
  });
}

async function lookup(c: Ctx, name: string | undefined): Promise<number | null> {
  if (!name) {
    err("please specify VDI name");
    return null;
  }
  const r = await findVdiName(c, name, c.vdi.snapshotId, c.vdi.snapshotTag);
  if (r.result !== Res.SUCCESS) {
    err(`Failed to open VDI ${name}`);
    return null;
  }
  return r.vid;
}

async function cacheFlush(c: Ctx): Promise<number> {
  const vid = await lookup(c, c.arg());
  if (vid === null) return EXIT_FAILURE;
  const h = Header.req(Op.FLUSH_VDI);
  h.oid = vidToVdiOid(vid);
  if (!(await c.light(h))) {
    err("failed to execute request");
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

async function cacheDelete(c: Ctx): Promise<number> {
  const vid = await lookup(c, c.arg());
  if (vid === null) return EXIT_FAILURE;
  await updateNodeList(c);
  for (const n of c.nodes) {
    const h = Header.req(Op.DELETE_CACHE);
    h.oid = vidToVdiOid(vid);
    if (!(await c.light(h, n))) {
      err("failed to execute request");
      return EXIT_FAILURE;
    }
  }
  return EXIT_SUCCESS;
}

async function cacheInfo(c: Ctx): Promise<number> {
  const h = Header.req(Op.GET_CACHE_INFO, { dataLength: CACHE_INFO_SIZE });
  const rsp = await c.exec(h);
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`failed to get cache infomation: ${strerror(rsp.hdr.result)}`);
    return EXIT_FAILURE;
  }
  const b = rsp.data;
  if (b.length < CACHE_INFO_SIZE) {
    err("failed to get cache infomation: short reply");
    return EXIT_SYSFAIL;
  }
  const count = Math.min(b.readInt32LE(16 + 12 * MAX_CACHE_INFO), MAX_CACHE_INFO);
  let text = "Name\tTag\tTotal\tDirty\tClean\n";
  for (let i = 0; i < count; i++) {
    const vid = b.readUInt32LE(16 + 12 * i);
    const dirty = b.readUInt32LE(20 + 12 * i) * SD_DATA_OBJ_SIZE;
    const total = b.readUInt32LE(24 + 12 * i) * SD_DATA_OBJ_SIZE;
    let ih;
    try {
      ih = decodeInodeHeader(
        await readObject(c.req, vidToVdiOid(vid), SD_INODE_HEADER_SIZE, 0, true),
      );
    } catch {
      return EXIT_FAILURE;
    }
    text += `${ih.name}\t${ih.tag}\t${strnumber(total)}\t${strnumber(dirty)}\t${
      strnumber(total - dirty)
    }\n`;
  }
  const size = b.readBigUInt64LE(0), used = b.readBigUInt64LE(8);
  const mode = b[20 + 12 * MAX_CACHE_INFO] ? "directio" : "non-directio";
  text += `\nCache size ${strnumber(size)}, used ${strnumber(used)}, ${mode}\n`;
  out(text);
  return EXIT_SUCCESS;
}

async function cachePurge(c: Ctx): Promise<number> {
  const h = Header.req(Op.CACHE_PURGE);
  const name = c.arg();
  if (name !== undefined) {
    const vid = await lookup(c, name);
    if (vid === null) return EXIT_FAILURE;
    h.oid = vidToVdiOid(vid);
    h.flags = Flag.CMD_WRITE;
  } else {
    await c.confirm("This operation purges the cache of all the vdi. Continue? [yes/no]: ");
  }
  if (!(await c.light(h))) {
    err("failed to execute request");
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

/**
 * `dog node info`'s addition for sheep running `-w` (0.9 showed the cache only in `vdi cache
 * info`): one line per such node, nothing at all when no node has a cache.
 */
export async function nodeCacheLines(c: Ctx, nodes: SdNode[]): Promise<string> {
  let text = "";
  for (let i = 0; i < nodes.length; i++) {
    let rsp;
    try {
      rsp = await c.exec(
        Header.req(Op.GET_CACHE_INFO, { dataLength: CACHE_INFO_SIZE }),
        undefined,
        nodes[i],
      );
    } catch {
      continue;
    }
    const b = rsp.data;
    if (rsp.hdr.result !== Res.SUCCESS || b.length < CACHE_INFO_SIZE) continue;
    const count = Math.min(b.readInt32LE(16 + 12 * MAX_CACHE_INFO), MAX_CACHE_INFO);
    let dirty = 0;
    for (let k = 0; k < count; k++) dirty += b.readUInt32LE(20 + 12 * k);
    const mode = b[20 + 12 * MAX_CACHE_INFO] ? "directio" : "non-directio";
    text += `${String(i).padStart(2)}\t${strnumber(b.readBigUInt64LE(0), c.raw)}\t${
      strnumber(b.readBigUInt64LE(8), c.raw)
    }\t${strnumber(dirty * SD_DATA_OBJ_SIZE, c.raw)}\t${mode}\n`;
  }
  return text ? `\nObject cache:\nId\tSize\tUsed\tDirty\tMode\n${text}` : "";
}
