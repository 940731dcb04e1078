// dog vdi tree, graph, object, track, setattr and getattr: looking at VDIs and their objects.
import { toJson, vdiTreeJson } from "./json.ts";
import { decodeEpochLogs, EPOCH_LOG_SIZE } from "../core/payloads.ts";
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import { NetworkError } from "../io/client.ts";
import { SdError } from "../core/errors.ts";
import { decodeInodeHeader } from "../core/inode.ts";
import { nodeHostPort } from "../core/node.ts";
import {
  MAX_DATA_OBJS,
  SD_ATTR_OBJ_SIZE,
  SD_INODE_HEADER_SIZE,
  SD_INODE_SIZE,
  vidToAttrOid,
  vidToDataOid,
  vidToVdiOid,
} from "../core/oid.ts";
import { fixedString, Flag, Header, Op, Res, strerror } from "../core/proto.ts";
import { Ring } from "../core/ring.ts";
import { readObject } from "../core/object-io.ts";
import { ctimeSeconds, padLeft, strftime, strnumber } from "./format.ts";
import {
  Ctx,
  err,
  Exit,
  EXIT_EXISTS,
  EXIT_FAILURE,
  EXIT_MISSING,
  EXIT_SUCCESS,
  EXIT_SYSFAIL,
  EXIT_USAGE,
  genericSubcommand,
  isStdoutTty,
  out,
  outAsync,
  ring,
  SD_MAX_VDI_ATTR_VALUE_LEN,
  SD_NODE_SIZE,
  TEXT_BOLD,
  TEXT_NORMAL,
} from "./common.ts";
import {
  checkVdiName,
  findVdiName,
  hex,
  isSnap,
  parseVdi,
  readVdiObj,
  type VdiObj,
} from "./vdi-common.ts";

// vdi tree (treeview.c)

interface TreeNode {
  name: string;
  label: string;
  vid: number;
  pvid: number;
  highlight: boolean;
  children: TreeNode[];
}

export function renderVdiTree(
  items: { name: string; label: string; vid: number; pvid: number; highlight: boolean }[],
): string {
  const root: TreeNode = { name: "", label: "", vid: 0, pvid: 0, highlight: false, children: [] };
  const find = (parent: TreeNode, vid: number, name: string | null): TreeNode | null => {
    for (const v of parent.children) {
      if (v.vid === vid && (name === null || v.name === name)) return v;
      const r = find(v, vid, name);
      if (r) return r;
    }
    return null;
  };
  // A clone has another name than the snapshot it was cloned from: upstream matches on the name
  // too and shows every clone as a tree of its own; ours hangs it under that snapshot, labelled
  // with its name.
  const findParent = (v: { pvid: number; name: string }): TreeNode | null =>
    find(root, v.pvid, v.name) ?? (v.pvid ? find(root, v.pvid, null) : null);
  const byVid = new Map(items.map((it) => [it.vid, it]));
  for (const it of items) {
    const p = byVid.get(it.pvid);
    const label = p && p.name !== it.name ? `${it.name}: ${it.label}` : it.label;
    const n: TreeNode = { ...it, label, children: [] };
    const parent = findParent(it) ?? root;
    parent.children.push(n);
  }
  const compaction = (parent: TreeNode) => {
    for (let i = 0; i < parent.children.length; i++) {
      const v = parent.children[i];
      const np = findParent(v);
      if (np && np !== parent) {
        parent.children.splice(i, 1);
        np.children.push(v);
        i--;
        continue;
      }
      compaction(v);
    }
  };
  compaction(root);
  const width: number[] = [];
  const more: boolean[] = [];
  let s = "";
  const indent = (level: number, first: boolean, last: boolean) => {
    if (first) s += last ? "---" : "-+-";
    else {
      for (let lvl = 0; lvl < level - 1; lvl++) {
        s += " ".repeat(width[lvl] + 1);
        s += more[lvl + 1] ? "| " : "  ";
      }
      s += " ".repeat(width[level - 1] + 1);
      s += last ? "`-" : "|-";
    }
  };
  const dump = (cur: TreeNode, level: number, first: boolean, last: boolean) => {
    indent(level, first, last);
    s += cur.highlight ? TEXT_BOLD + cur.label + TEXT_NORMAL : cur.label;
    if (!cur.children.length) {
      s += "\n";
      return;
    }
    more[level] = !last;
    width[level] = Buffer.byteLength(cur.label);
    cur.children.forEach((v, i) => dump(v, level + 1, i === 0, i === cur.children.length - 1));
  };
  for (const v of root.children) {
    s += v.name;
    more[0] = false;
    width[0] = Buffer.byteLength(v.name);
    dump(v, 1, true, true);
  }
  return s;
}

export async function vdiTree(c: Ctx): Promise<number> {
  const list = await parseVdi(c, false);
  if (c.json) {
    out(toJson(vdiTreeJson((list ?? []).map((v) => v.header))));
    return EXIT_SUCCESS;
  }
  if (!list) return EXIT_SUCCESS;
  const hl = isStdoutTty() && !c.raw;
  out(renderVdiTree(list.map((v) => ({
    name: v.name,
    label: isSnap(v.header)
      ? strftime("[%Y-%m-%d %H:%M]", ctimeSeconds(v.header.createTime))
      : "(you are here)",
    vid: v.vid,
    pvid: v.header.parentVdiId,
    highlight: hl && !isSnap(v.header),
  }))));
  return EXIT_SUCCESS;
}

export async function vdiGraph(c: Ctx): Promise<number> {
  out(
    'digraph G {\n  node [shape = "box", fontname = "Courier"];\n\n  "0" [shape = "ellipse", label = "root"];\n\n',
  );
  const list = await parseVdi(c, false);
  if (!list) return EXIT_SUCCESS;
  for (const v of list) {
    const ti = ctimeSeconds(v.header.createTime);
    out(`  "${hex(v.header.parentVdiId)}" -> "${hex(v.vid)}";\n`);
    out(`  "${hex(v.vid)}" [\n    group = "${v.name}",\n    label = "`);
    out(
      `Name: ${padLeft(v.name, 10)}\\nTag:  ${padLeft(hex(v.snapid), 10)}\\nSize: ${
        padLeft(strnumber(v.header.vdiSize, c.raw), 10)
      }\\n` +
        `Date: ${padLeft(strftime("%Y-%m-%d", ti), 10)}\\nTime: ${
          padLeft(strftime("%H:%M:%S", ti), 10)
        }`,
    );
    out(isSnap(v.header) ? '"\n  ];\n\n' : '",\n    color="red"\n  ];\n\n');
  }
  out("}\n");
  return EXIT_SUCCESS;
}

// vdi object {location|map|dump-inode}

async function forEachNodePrint(c: Ctx, oid: bigint): Promise<void> {
  for (const n of c.nodes) {
    const h = Header.req(Op.EXIST);
    h.epoch = c.epoch;
    h.oid = oid;
    let rsp;
    try {
      rsp = await c.exec(h, undefined, n);
    } catch (e) {
      if (e instanceof NetworkError) continue;
      throw e;
    }
    const sheep = nodeHostPort(n);
    switch (rsp.hdr.result) {
      case Res.SUCCESS:
        out(`${sheep} has the object\n`);
        break;
      case Res.NO_OBJ:
        out(`${sheep} doesn't have the object\n`);
        break;
      case Res.OLD_NODE_VER:
      case Res.NEW_NODE_VER:
        err("The node list has changed: please try again");
        break;
      default:
        err(`${sheep}: hit an unexpected error (${strerror(rsp.hdr.result)})`);
    }
  }
}

function printExpectedLocation(c: Ctx, oid: bigint, copies: number): void {
  if (c.nodes.length < copies) {
    out(
      `\nBecause number of nodes (${c.nodes.length}) is less than number of copies (${copies}), the object should be located at every nodes.\n`,
    );
    return;
  }
  out("\nAccording to sheepdog algorithm, the object should be located at:\n");
  out(ring(c).placeObject(oid, copies).map(nodeHostPort).join(" ") + "\n");
}

async function vdiObjectLocation(c: Ctx): Promise<number> {
  const name = c.arg()!;
  let v: VdiObj;
  try {
    v = await readVdiObj(c, name, c.vdi.snapshotId, c.vdi.snapshotTag, true);
  } catch (e) {
    if (e instanceof Exit) err("FATAL: no inode objects");
    throw e;
  }
  const vid = v.header.vdiId;
  const idx = c.vdi.index;
  if (idx === -1) {
    out(`Looking for the inode object 0x${hex(vid)} with ${c.nodes.length} nodes\n\n`);
    await forEachNodePrint(c, vidToVdiOid(vid));
    printExpectedLocation(c, vidToVdiOid(vid), v.header.nrCopies);
    return EXIT_SUCCESS;
  }
  if (idx >= 2 ** 32) {
    out("The offset is too large!\n");
    return EXIT_FAILURE;
  }
  const vdiId = v.slots.get(idx);
  if (vdiId) {
    const oid = vidToDataOid(vdiId, idx);
    out(
      `Looking for the object ${hex(oid).padStart(16, "0")} (vid 0x${
        hex(vid)
      } idx ${idx}, ${v.header.nrCopies} copies) with ${c.nodes.length} nodes\n\n`,
    );
    await forEachNodePrint(c, oid);
    printExpectedLocation(c, oid, v.header.nrCopies);
  } else {
    out(`The inode object 0x${hex(vid)} idx ${idx} is not allocated\n`);
  }
  return EXIT_SUCCESS;
}

async function vdiObjectMap(c: Ctx): Promise<number> {
  const name = c.arg()!;
  let v: VdiObj;
  try {
    v = await readVdiObj(c, name, c.vdi.snapshotId, c.vdi.snapshotTag, true);
  } catch (e) {
    if (e instanceof Exit) err(`FATAL: ${name} not found`);
    throw e;
  }
  out("Index       VID\n");
  const row = (idx: number, vid: number) =>
    `${String(idx).padStart(8, "0")} ${padLeft(hex(vid), 8)}\n`;
  if (c.vdi.index !== -1) {
    out(row(c.vdi.index, v.slots.get(c.vdi.index)));
  } else {
    for (const [idx, vid] of v.slots.entries()) out(row(idx, vid));
  }
  return EXIT_SUCCESS;
}

async function vdiObjectDumpInode(c: Ctx): Promise<number> {
  const path = c.arg()!;
  let buf: Buffer;
  try {
    buf = fs.readFileSync(path);
  } catch (e) {
    err(`failed to open inode object file: ${(e as Error).message}`);
    return EXIT_FAILURE;
  }
  if (buf.length < SD_INODE_SIZE) {
    err("failed to read inode object file: Success");
    return EXIT_FAILURE;
  }
  const h = decodeInodeHeader(buf);
  let s = `name: ${h.name}\ntag: ${h.tag}\ncreate_time: ${hex(h.createTime)}\nsnap_ctime: ${
    hex(h.snapCtime)
  }\n`;
  s += `vm_clock_nsec: ${
    hex(h.vmClockNsec)
  }\nvdi_size: ${h.vdiSize}\nvm_state_size: ${h.vmStateSize}\n`;
  s += `copy_policy: ${h.copyPolicy}\nstore_policy: ${h.storePolicy}\nnr_copies: ${h.nrCopies}\n`;
  s += `block_size_shift: ${h.blockSizeShift}\nsnap_id: ${h.snapId}\nvdi_id: ${hex(h.vdiId)}\n`;
  s += `parent_vdi_id: ${hex(h.parentVdiId)}\nbtree_counter: ${h.btreeCounter}\n`;
  out(s);
  const DATA = SD_INODE_HEADER_SIZE, GREF = DATA + 4 * MAX_DATA_OBJS;
  let d = "data_vdi_id:\n";
  for (let i = 0; i < MAX_DATA_OBJS; i++) {
    const vid = buf.readUInt32LE(DATA + 4 * i);
    if (vid) d += `${i}: ${hex(vid)}\n`;
  }
  d += "gref:\n";
  for (let i = 0; i < MAX_DATA_OBJS; i++) {
    const vid = buf.readUInt32LE(DATA + 4 * i);
    const gen = buf.readInt32LE(GREF + 8 * i), cnt = buf.readInt32LE(GREF + 8 * i + 4);
    if (!vid) {
      if (gen || cnt) {
        d +=
          `WARNING: index ${i} doesn't have data vdi ID but its generation and count is not zero(${gen}, ${cnt})`;
      }
      continue;
    }
    d += `${i}: ${hex(vid)}, ${gen}, ${cnt}\n`;
  }
  out(d);
  return EXIT_SUCCESS;
}

export function vdiObject(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, {
    location: vdiObjectLocation,
    map: vdiObjectMap,
    "dump-inode": vdiObjectDumpInode,
  });
}

// vdi track

export async function statCluster(
  c: Ctx,
  nodesNr: number,
): Promise<
  { result: number; logs: ReturnType<typeof decodeEpochLogs>; hasData: boolean; nodesNr: number }
> {
  let n = nodesNr;
  for (;;) {
    const h = Header.req(Op.STAT_CLUSTER, {
      dataLength: Math.max(1, c.epoch) * (EPOCH_LOG_SIZE + n * SD_NODE_SIZE),
    });
    h.nodesNr = n;
    const rsp = await c.exec(h);
    if (rsp.hdr.result === Res.BUFFER_SMALL) {
      const want = rsp.hdr.b.readUInt32LE(20);
      n = want > n ? want : Math.max(1, n * 2);
      continue;
    }
    return {
      result: rsp.hdr.result,
      logs: decodeEpochLogs(rsp.data, n),
      hasData: rsp.data.length > 0,
      nodesNr: n,
    };
  }
}

async function doTrackObject(c: Ctx, oid: bigint, nrCopies: number): Promise<number> {
  const st = await statCluster(c, c.nodes.length);
  if (st.result !== Res.SUCCESS) {
    out(strerror(st.result) + "\n");
    return EXIT_SYSFAIL;
  }
  for (let i = st.logs.length - 1; i >= 0; i--) {
    const log = st.logs[i];
    out(`\nobj ${hex(oid)} locations at epoch ${log.epoch}, copies = ${nrCopies}\n`);
    out("---------------------------------------------------\n");
    if (log.nrNodes < nrCopies) {
      for (const n of log.nodes) out(nodeHostPort(n) + "\n");
      continue;
    }
    for (const n of new Ring(log.nodes).placeObject(oid, nrCopies)) out(nodeHostPort(n) + "\n");
  }
  return EXIT_SUCCESS;
}

export async function vdiTrack(c: Ctx): Promise<number> {
  const name = c.arg()!;
  let v: VdiObj;
  try {
    v = await readVdiObj(c, name, c.vdi.snapshotId, c.vdi.snapshotTag, true);
  } catch (e) {
    if (e instanceof Exit) err("FATAL: no inode objects");
    throw e;
  }
  const vid = v.header.vdiId;
  let oid = c.vdi.oid;
  if (!oid) {
    const idx = c.vdi.index;
    if (idx === -1) {
      out(`Tracking the inode object 0x${hex(vid)} with ${c.nodes.length} nodes\n`);
      return doTrackObject(c, vidToVdiOid(vid), v.header.nrCopies);
    }
    if (idx >= 2 ** 32) {
      out("The offset is too large!\n");
      return EXIT_FAILURE;
    }
    oid = vidToDataOid(v.slots.get(idx), idx);
    out(
      `Tracking the object 0x${hex(oid)} (the inode vid 0x${
        hex(vid)
      } idx ${idx}) with ${c.nodes.length} nodes\n`,
    );
  } else {
    out(
      `Tracking the object 0x${hex(oid)} (the inode vid 0x${
        hex(vid)
      }) with ${c.nodes.length} nodes\n`,
    );
  }
  return doTrackObject(c, oid, v.header.nrCopies);
}

// vdi setattr / getattr

async function findVdiAttrOid(
  c: Ctx,
  name: string,
  key: string,
  value: Buffer | null,
  create: boolean,
  excl: boolean,
  del: boolean,
): Promise<{ result: number; oid: bigint }> {
  const attr = Buffer.alloc(SD_ATTR_OBJ_SIZE);
  fixedString(name, 256).copy(attr, 0);
  fixedString(c.vdi.snapshotTag, 256).copy(attr, 256);
  attr.writeUInt32LE(c.vdi.snapshotId >>> 0, 520);
  fixedString(key, 256).copy(attr, 528);
  if (value && value.length) {
    attr.writeUInt32LE(value.length, 524);
    value.copy(attr, 784, 0, Math.min(value.length, SD_MAX_VDI_ATTR_VALUE_LEN));
  }
  let flags = Flag.CMD_WRITE;
  if (create) flags |= Flag.CMD_CREAT;
  if (excl) flags |= Flag.CMD_EXCL;
  if (del) flags |= Flag.CMD_DEL;
  const h = Header.req(Op.GET_VDI_ATTR, { flags, dataLength: SD_ATTR_OBJ_SIZE });
  h.snapid = c.vdi.snapshotId;
  const rsp = await c.exec(h, attr);
  if (rsp.hdr.result !== Res.SUCCESS) return { result: rsp.hdr.result, oid: 0n };
  return { result: Res.SUCCESS, oid: vidToAttrOid(rsp.hdr.rspVdiId, rsp.hdr.rspAttrId) };
}

/**
 * The server looks the VDI up before touching attributes (upstream cluster_get_vdi_attr); done
 * here as well so an attribute is never created for a VDI that does not exist.
 */
async function attrVdiExists(c: Ctx, name: string): Promise<number> {
  checkVdiName(name);
  const r = await findVdiName(c, name, c.vdi.snapshotId, c.vdi.snapshotTag);
  if (r.result === Res.SUCCESS) return EXIT_SUCCESS;
  if (r.result === Res.NO_VDI || r.result === Res.NO_TAG) {
    err("VDI not found");
    return EXIT_MISSING;
  }
  err(`Failed to find VDI ${name}: ${strerror(r.result)}`);
  return EXIT_FAILURE;
}

export async function vdiSetattr(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const key = c.arg(1);
  if (key === undefined) {
    err("Please specify the attribute key");
    return EXIT_USAGE;
  }
  const ex = await attrVdiExists(c, name);
  if (ex !== EXIT_SUCCESS) return ex;
  let value: Buffer | null = c.arg(2) !== undefined ? Buffer.from(c.arg(2)!, "utf8") : null;
  if (value === null && !c.vdi.delete) value = await c.stdin.read(SD_MAX_VDI_ATTR_VALUE_LEN);
  if (value) {
    const z = value.indexOf(0);
    if (z >= 0) value = value.subarray(0, z); // stored length is strlen(value)
  }
  const r = await findVdiAttrOid(c, name, key, value, !c.vdi.delete, c.vdi.exclusive, c.vdi.delete);
  switch (r.result) {
    case Res.SUCCESS:
      return EXIT_SUCCESS;
    case Res.VDI_EXIST:
      err(`The attribute '${key}' already exists`);
      return EXIT_EXISTS;
    case Res.NO_OBJ:
      err(`Attribute '${key}' not found`);
      return EXIT_MISSING;
    case Res.NO_VDI:
      err("VDI not found");
      return EXIT_MISSING;
    default:
      err(`Failed to set attribute: ${strerror(r.result)}`);
      return EXIT_FAILURE;
  }
}

export async function vdiGetattr(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const key = c.arg(1);
  if (key === undefined) {
    err("Please specify the attribute key");
    return EXIT_USAGE;
  }
  const ex = await attrVdiExists(c, name);
  if (ex !== EXIT_SUCCESS) return ex === EXIT_FAILURE ? EXIT_MISSING : ex;
  const r = await findVdiAttrOid(c, name, key, null, false, false, false);
  if (r.result === Res.NO_OBJ) {
    err(`Attribute '${key}' not found`);
    return EXIT_MISSING;
  } else if (r.result === Res.NO_VDI) {
    err("VDI not found");
    return EXIT_MISSING;
  } else if (r.result !== Res.SUCCESS) {
    err(`Failed to find attribute oid: ${strerror(r.result)}`);
    return EXIT_MISSING;
  }
  let attr: Buffer;
  try {
    attr = await readObject(c.req, r.oid, SD_ATTR_OBJ_SIZE, 0, true);
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Failed to read attribute oid: ${strerror(e.code)}`);
    return EXIT_SYSFAIL;
  }
  const len = Math.min(attr.readUInt32LE(524), SD_MAX_VDI_ATTR_VALUE_LEN);
  await outAsync(attr.subarray(784, 784 + len));
  return EXIT_SUCCESS;
}
