// `dog cluster snapshot save|list|load|show` (farm-backup.md §1): whole-cluster backups into a
// content-addressed directory. Upstream's layout; unlike upstream 1.0 a save also keeps working
// VDIs, deleted inodes and VDI attributes, and a load puts them back under their own VIDs.
import { Buffer } from "node:buffer";
import { NetworkError } from "../io/client.ts";
import { SdError } from "../core/errors.ts";
import { decodeInodeHeader, type InodeHeader } from "../core/inode.ts";
import {
  isAttrObj,
  isDataObj,
  isVdiObj,
  oidHex,
  oidToVid,
  SD_ATTR_OBJ_SIZE,
  SD_INODE_HEADER_SIZE,
  SD_INODE_SIZE,
  SD_NR_VDIS,
  vidToDataOid,
  vidToVdiOid,
  vidToVmstateOid,
} from "../core/oid.ts";
import { fixedString, Flag, Header, Op, readFixedString, Res, strerror } from "../core/proto.ts";
import { BTREE_NODE_SIZE } from "../core/btree.ts";
import { Limiter, readObject, writeObject } from "../core/object-io.ts";
import { readInodeWithSlots } from "../core/vdi-io.ts";
import { type Ctx, err, StderrProgress } from "./common.ts";
import { ctimeString } from "./format.ts";
import { CLUSTER_INFO_SIZE, decodeClusterInfo, EPOCH_LOG_SIZE } from "../core/payloads.ts";
import {
  decodeTrunk,
  encodeTrunk,
  Farm,
  FarmError,
  type SnapHeader,
  type SnapRecord,
  type TrunkEntry,
} from "./farm-store.ts";

const EXIT_SUCCESS = 0, EXIT_FAILURE = 1, EXIT_SYSFAIL = 2, EXIT_USAGE = 64;
const VDI_BITMAP_SIZE = SD_NR_VDIS / 8;
const READ_CHUNK = 4 * 1024 * 1024;

/** What cli/dog.ts lends the farm (its own command plumbing). */
export interface FarmHost {
  updateNodeList(c: Ctx): Promise<void>;
  /** `dog cluster format` with c.cluster as set up by the caller. */
  format(c: Ctx): Promise<number>;
}

function fail(e: unknown): never {
  throw e;
}

async function clusterDefaults(c: Ctx): Promise<SnapHeader> {
  const rsp = await c.exec(Header.req(Op.CLUSTER_INFO, { dataLength: CLUSTER_INFO_SIZE }));
  if (rsp.hdr.result !== Res.SUCCESS) throw new FarmError(strerror(rsp.hdr.result));
  const ci = decodeClusterInfo(rsp.data);
  if (ci.ctime === 0n) throw new FarmError(strerror(Res.WAIT_FOR_FORMAT));
  return { copies: ci.copies, copyPolicy: ci.copyPolicy, blockSizeShift: ci.blockSizeShift };
}

async function bitmap(c: Ctx, op: number): Promise<Buffer> {
  const r = await c.exec(Header.req(op, { dataLength: VDI_BITMAP_SIZE }));
  if (r.hdr.result !== Res.SUCCESS) throw new FarmError(strerror(r.hdr.result));
  return r.data;
}

function bits(b: Buffer): number[] {
  const out: number[] = [];
  for (let i = 0; i < b.length; i++) {
    if (!b[i]) continue;
    for (let k = 0; k < 8; k++) if (b[i] & (1 << k)) out.push(i * 8 + k);
  }
  return out;
}

function objectLength(oid: bigint, shift: number): number {
  if (isVdiObj(oid)) return SD_INODE_SIZE;
  if (isAttrObj(oid)) return SD_ATTR_OBJ_SIZE;
  if ((oid & (1n << 60n)) !== 0n) return BTREE_NODE_SIZE;
  return 2 ** shift;
}

async function readWhole(c: Ctx, oid: bigint, len: number): Promise<Buffer> {
  if (len <= READ_CHUNK) return await readObject(c.req, oid, len, 0, true);
  const parts: Buffer[] = [];
  for (let off = 0; off < len; off += READ_CHUNK) {
    parts.push(await readObject(c.req, oid, Math.min(READ_CHUNK, len - off), off, true));
  }
  return Buffer.concat(parts);
}

function sdMessage(e: unknown): string {
  return e instanceof SdError ? strerror(e.code) : (e as Error).message;
}

// ---------------------------------------------------------------------------------------------
// save

interface Want {
  copies: number;
  copyPolicy: number;
  blockSizeShift: number;
}

/** Attribute objects live under a hash of the VDI name: the nodes' object lists find them. */
async function attrOids(c: Ctx): Promise<Set<bigint>> {
  const out = new Set<bigint>();
  for (const n of c.nodes) {
    let size = 1024 * 1024;
    for (;;) {
      const h = Header.req(Op.GET_OBJ_LIST, { dataLength: size });
      h.epoch = c.epoch;
      const r = await c.exec(h, undefined, n);
      if (r.hdr.result === Res.BUFFER_SMALL) {
        size *= 2;
        continue;
      }
      if (r.hdr.result !== Res.SUCCESS) {
        throw new FarmError(`Failed to list the objects of a node: ${strerror(r.hdr.result)}`);
      }
      for (let i = 0; i + 8 <= r.data.length; i += 8) {
        const oid = r.data.readBigUInt64LE(i);
        if (isAttrObj(oid)) out.add(oid);
      }
      break;
    }
  }
  return out;
}

async function saveSnapshot(c: Ctx): Promise<number> {
  const tag = c.arg() ?? "";
  if (/^[ \t\n\v\f\r]*[+-]?\d/.test(tag)) {
    err("Tag should not start with number.");
    return EXIT_USAGE;
  }
  const dir = c.arg(1);
  if (!dir) {
    err("Please specify the path to save snapshot.");
    return EXIT_USAGE;
  }
  const names = c.args.slice(c.optind + 2);
  let farm: Farm | null = null;
  try {
    farm = Farm.open(dir, true);
    farm.lock();
    farm.cleanTmp();
    const { records } = farm.readLog();
    if (records.some((r) => r.tag === tag)) {
      throw new FarmError(
        "Snapshot tag has already been used for another snapshot, please, use another one.",
      );
    }
    const defaults = await clusterDefaults(c);
    const inuse = bits(await bitmap(c, Op.READ_VDIS));
    const want = new Map<bigint, Want>();
    const selected = new Set<string>();
    const snaps = new Map<number, InodeHeader>();
    const lim = new Limiter(16);
    await Promise.all(inuse.map((vid) =>
      lim.run(async () => {
        let h: InodeHeader, slots;
        try {
          ({ header: h, slots } = await readInodeWithSlots(c.req, vid));
        } catch (e) {
          if (e instanceof NetworkError) throw e;
          throw new FarmError(
            `Failed to read object ${oidHex(vidToVdiOid(vid))}: ${sdMessage(e)}`,
          );
        }
        if (h.snapCtime !== 0n) snaps.set(vid, h);
        if (names.length && !names.includes(h.name)) return;
        if (h.name) selected.add(h.name);
        const w = {
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
          blockSizeShift: h.blockSizeShift,
        };
        want.set(vidToVdiOid(vid), w);
        for (const [idx, owner] of slots.entries()) want.set(vidToDataOid(owner, idx), w);
        for (const leaf of slots.leafOids?.() ?? []) want.set(leaf, w);
        const os = BigInt(2 ** h.blockSizeShift);
        const nrVm = Number((h.vmStateSize + os - 1n) / os);
        for (let i = 0; i < nrVm; i++) want.set(vidToVmstateOid(vid, i), w);
      })
    ));
    if (want.size === 0) {
      err("Cannot execute. It may be caused by:");
      if (names.length) err("1. The specified VDIs are not found.");
      else err("1. The cluster is empty.");
      throw new FarmError("");
    }
    for (const oid of await attrOids(c)) {
      // An attribute names its VDI in its first 256 bytes.
      if (names.length) {
        const head = await readObject(c.req, oid, 256, 0, true);
        if (!selected.has(readFixedString(head, 0, 256))) continue;
      }
      want.set(oid, defaults);
    }
    const oids = [...want.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const reuse = await unchangedSnapshotObjects(farm, records, snaps);
    const total = oids.reduce((s, o) => s + objectLength(o, want.get(o)!.blockSizeShift), 0);
    const bar = new StderrProgress(BigInt(total), c.raw, 0n);
    let done = 0;
    bar.update(0n);
    const entries = new Map<bigint, TrunkEntry>();
    const fetch = new Limiter(c.cluster.multithread ? 32 : 12);
    const rs = await Promise.allSettled(oids.map((oid) =>
      fetch.run(async () => {
        const w = want.get(oid)!;
        const len = objectLength(oid, w.blockSizeShift);
        const known = reuse.get(oid);
        if (known && farm!.has(known)) {
          entries.set(oid, { oid, ...w, sha: known });
          done += len;
          bar.update(BigInt(done));
          return;
        }
        let data: Buffer;
        try {
          data = await readWhole(c, oid, len);
        } catch (e) {
          if (e instanceof NetworkError) throw e;
          throw new FarmError(`Failed to read object ${oidHex(oid)}: ${sdMessage(e)}`);
        }
        const sha = await farm!.putObject(data);
        entries.set(oid, { oid, ...w, sha });
        done += len;
        bar.update(BigInt(done));
      })
    ));
    for (const r of rs) if (r.status === "rejected") fail(r.reason);
    // Entries in oid order: an unchanged cluster gives the same trunk (stored once).
    const trunk = await farm.put(encodeTrunk(oids.map((o) => entries.get(o)!)));
    await farm.commit();
    const now = BigInt(Math.floor(Date.now() / 1000));
    farm.appendRecord(defaults, tag, now, trunk);
    return EXIT_SUCCESS;
  } catch (e) {
    if (e instanceof FarmError) {
      if (e.message) err(e.message);
      err(`Fail to save snapshot to path: ${dir}.`);
      farm?.dropTmp();
      return EXIT_SYSFAIL;
    }
    throw e;
  } finally {
    farm?.unlock();
  }
}

/**
 * Data objects of a snapshot never change (sheep refuses writes to them): those the
 * previous save stored for the same snapshot (same VID, creation and snapshot time) are not read
 * again. A damaged previous trunk only costs the shortcut.
 */
async function unchangedSnapshotObjects(
  farm: Farm,
  records: SnapRecord[],
  snaps: Map<number, InodeHeader>,
): Promise<Map<bigint, Buffer>> {
  const out = new Map<bigint, Buffer>();
  const last = records[records.length - 1];
  if (!last || snaps.size === 0) return out;
  let entries: TrunkEntry[];
  try {
    entries = decodeTrunk(await farm.get(last.trunk));
  } catch {
    return out;
  }
  const same = new Set<number>();
  const lim = new Limiter(8);
  await Promise.all(
    entries.filter((e) => isVdiObj(e.oid) && snaps.has(oidToVid(e.oid))).map((e) =>
      lim.run(async () => {
        const vid = oidToVid(e.oid), now = snaps.get(vid)!;
        try {
          const h = decodeInodeHeader(await farm.get((await farm.getIndex(e.sha))[0]));
          if (
            h.vdiId === vid && h.snapCtime === now.snapCtime && h.createTime === now.createTime
          ) same.add(vid);
        } catch { /* read from the cluster again */ }
      })
    ),
  );
  for (const e of entries) {
    if (isDataObj(e.oid) && same.has(oidToVid(e.oid))) {
      out.set(e.oid, e.sha);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// list / show

function listSnapshot(c: Ctx): number {
  const dir = c.arg();
  if (!dir) {
    err("Please specify the path to list snapshot.");
    return EXIT_USAGE;
  }
  try {
    const { records } = Farm.open(dir, false).readLog();
    let s = "Index\t\tTag\t\tSnapshot Time\n";
    for (const r of records) s += `${r.idx}\t\t${r.tag}\t\t${ctimeString(Number(r.time))}\n`;
    process.stdout.write(s);
    return EXIT_SUCCESS;
  } catch (e) {
    if (e instanceof FarmError) {
      err(e.message);
      err("Fail to list snapshot.");
      return EXIT_SYSFAIL;
    }
    throw e;
  }
}

interface Opened {
  farm: Farm;
  header: SnapHeader;
  record: SnapRecord;
  entries: TrunkEntry[];
  /** Inode headers of the trunk's inode entries, by oid. */
  inodes: Map<bigint, InodeHeader>;
}

async function openSnapshot(dir: string, arg: string): Promise<Opened> {
  const farm = Farm.open(dir, false);
  const { header, records } = farm.readLog();
  const record = Farm.find(records, arg);
  if (!record || !header) throw new FarmError("Snapshot index or tag does not exist.");
  const entries = decodeTrunk(await farm.get(record.trunk));
  const inodes = new Map<bigint, InodeHeader>();
  const lim = new Limiter(8);
  await Promise.all(
    entries.filter((e) => isVdiObj(e.oid)).map((e) =>
      lim.run(async () => {
        // The header is the start of the first slice: no need to read the whole inode here.
        const first = (await farm.getIndex(e.sha))[0];
        inodes.set(e.oid, decodeInodeHeader(await farm.get(first)));
      })
    ),
  );
  return { farm, header, record, entries, inodes };
}

async function showSnapshot(c: Ctx): Promise<number> {
  const arg = c.arg() ?? "";
  const dir = c.arg(1);
  if (!dir) {
    err("Please specify the path to show snapshot.");
    return EXIT_USAGE;
  }
  const names = c.args.slice(c.optind + 2);
  try {
    const s = await openSnapshot(dir, arg);
    let seq = 0;
    for (const e of s.entries) {
      const h = s.inodes.get(e.oid);
      if (!h) continue;
      if (names.length && !names.includes(h.name)) continue;
      err(`${++seq}. VDI id: ${h.vdiId.toString(16)}, name: ${h.name}, tag: ${h.tag}`);
    }
    return EXIT_SUCCESS;
  } catch (e) {
    if (e instanceof FarmError) {
      err(e.message);
      err("Fail to show snapshot");
      return EXIT_SYSFAIL;
    }
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// load

/** Waits until every node answers as a formatted, running member. */
async function waitRunning(c: Ctx): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (const n of c.nodes) {
    let size = EPOCH_LOG_SIZE * 16;
    for (;;) {
      const r = await c.exec(Header.req(Op.STAT_CLUSTER, { dataLength: size }), undefined, n);
      if (r.hdr.result === Res.SUCCESS) break;
      if (r.hdr.result === Res.BUFFER_SMALL) {
        size *= 2;
        continue;
      }
      if (Date.now() > deadline) {
        throw new FarmError(`Cluster is not running: ${strerror(r.hdr.result)}`);
      }
      await new Promise((res) => setTimeout(res, 100));
    }
  }
}

async function loadSnapshot(c: Ctx, host: FarmHost): Promise<number> {
  const arg = c.arg() ?? "";
  const dir = c.arg(1);
  if (!dir) {
    err("Please specify the path to save snapshot.");
    return EXIT_USAGE;
  }
  const names = c.args.slice(c.optind + 2);
  try {
    const s = await openSnapshot(dir, arg);
    let entries = s.entries;
    if (names.length) {
      // The named VDIs' inodes, deleted inodes, every object the named VDIs own or reference
      // and their attributes.
      if (![...s.inodes.values()].some((h) => names.includes(h.name))) {
        throw new FarmError(
          "Objects of specified VDIs are not found in local cluster snapshot storage.",
        );
      }
      const keep = new Set<bigint>();
      for (const [oid, h] of s.inodes) if (h.name === "" || names.includes(h.name)) keep.add(oid);
      const vids = new Set([...keep].map(oidToVid));
      const byOid = new Map(entries.map((e) => [e.oid, e]));
      for (const oid of [...keep]) {
        const h = s.inodes.get(oid)!;
        if (h.storePolicy !== 0) continue; // hyper volumes: their own VID's objects below
        const inode = await s.farm.getObject(byOid.get(oid)!.sha);
        const os = BigInt(2 ** h.blockSizeShift);
        const n = Math.min(Number((h.vdiSize + os - 1n) / os), 1 << 20);
        for (let i = 0; i < n; i++) {
          const owner = inode.readUInt32LE(SD_INODE_HEADER_SIZE + 4 * i);
          if (owner) keep.add(vidToDataOid(owner, i));
        }
      }
      const picked: TrunkEntry[] = [];
      for (const e of entries) {
        if (isAttrObj(e.oid)) {
          const a = await s.farm.getObject(e.sha);
          if (names.includes(readFixedString(a, 0, 256))) picked.push(e);
        } else if (keep.has(e.oid) || vids.has(oidToVid(e.oid))) picked.push(e);
      }
      entries = picked;
    }
    // Every file is verified before the cluster is touched.
    const unique = new Map<string, Buffer>();
    for (const e of entries) unique.set(e.sha.toString("hex"), e.sha);
    const vlim = new Limiter(8);
    const seen = new Set<string>();
    let verified = 0n;
    const total = BigInt(entries.reduce((a, e) => a + objectLength(e.oid, e.blockSizeShift), 0));
    const bar = new StderrProgress(total * 2n, c.raw, 0n);
    const checks = await Promise.allSettled([...unique.values()].map((sha) =>
      vlim.run(async () => {
        for (const sl of await s.farm.getIndex(sha)) {
          const k = sl.toString("hex");
          if (seen.has(k)) continue;
          seen.add(k);
          verified += BigInt((await s.farm.get(sl)).length);
          bar.update(verified > total ? total : verified);
        }
      })
    ));
    for (const r of checks) if (r.status === "rejected") fail(r.reason);

    if (!c.cluster.force) {
      process.stdout.write(
        "Loading a cluster snapshot formats the cluster: every VDI in it now is destroyed.\n" +
          "Are you sure you want to continue? [yes/no]: ",
      );
      const input = await c.stdin.gets(8);
      if (input === null || input.slice(0, 3).toLowerCase() !== "yes") {
        err("Load aborted: the cluster was not changed.");
        return EXIT_FAILURE;
      }
    }
    c.cluster.copies = s.header.copies;
    c.cluster.copyPolicy = s.header.copyPolicy;
    c.cluster.blockSizeShift = s.header.blockSizeShift;
    c.cluster.force = true;
    // -m also sets strict (upstream's option parser): a load formats with default flags.
    c.cluster.strict = false;
    const fr = await host.format(c);
    if (fr !== EXIT_SUCCESS) throw new FarmError("");
    await waitRunning(c);

    // Data before inodes: a node that knows a VID as a snapshot refuses writes to its data.
    let written = 0n;
    const wlim = new Limiter(c.cluster.multithread ? 32 : 12);
    const put = (e: TrunkEntry) =>
      wlim.run(async () => {
        // Read again, not hashed again: every slice was checked above moments ago.
        const data = await s.farm.getObject(e.sha, seen);
        try {
          await writeObject(c.req, e.oid, data, 0, {
            create: true,
            copies: e.copies,
            copyPolicy: e.copyPolicy,
            direct: true,
          });
        } catch (x) {
          if (x instanceof NetworkError) throw x;
          throw new FarmError(`Fail to load object, oid ${oidHex(e.oid)}: ${sdMessage(x)}`);
        }
        written += BigInt(data.length);
        bar.update(total + (written > total ? total : written));
      });
    const settle = async (list: TrunkEntry[]) => {
      const rs = await Promise.allSettled(list.map(put));
      for (const r of rs) if (r.status === "rejected") fail(r.reason);
    };
    await settle(entries.filter((e) => !isVdiObj(e.oid)));
    const inodeEntries = entries.filter((e) => isVdiObj(e.oid));
    await settle(inodeEntries);
    // Every node learns the VDIs (bitmaps, snapshot flags, copies) from their inodes.
    for (const e of inodeEntries) {
      const h = Header.req(Op.NOTIFY_VDI_ADD, { flags: Flag.CMD_WRITE });
      h.b.writeUInt32LE(0, 16);
      h.b.writeUInt32LE(oidToVid(e.oid), 20);
      h.b[24] = e.copies;
      h.b[25] = 1;
      h.b[26] = e.copyPolicy;
      h.b[27] = e.blockSizeShift;
      const r = await c.exec(h);
      if (r.hdr.result !== Res.SUCCESS) {
        throw new FarmError(
          `Failed to notify VDI ${oidToVid(e.oid).toString(16)}: ${strerror(r.hdr.result)}`,
        );
      }
    }
    bar.update(total * 2n);
    await createActiveVdis(c, s, inodeEntries);
    return EXIT_SUCCESS;
  } catch (e) {
    if (e instanceof FarmError) {
      if (e.message) err(e.message);
      err("Fail to load snapshot");
      return EXIT_SYSFAIL;
    }
    throw e;
  }
}

/**
 * Farms written by upstream hold only snapshots: a VDI name without a working VDI gets one on
 * top of its newest snapshot, as upstream's load does.
 */
async function createActiveVdis(c: Ctx, s: Opened, inodeEntries: TrunkEntry[]): Promise<void> {
  const working = new Set<string>();
  const newest = new Map<string, InodeHeader>();
  for (const e of inodeEntries) {
    const h = s.inodes.get(e.oid)!;
    if (!h.name) continue;
    if (h.snapCtime === 0n) working.add(h.name);
    else if (!newest.has(h.name) || newest.get(h.name)!.snapId < h.snapId) newest.set(h.name, h);
  }
  for (const [name, h] of newest) {
    if (working.has(name)) continue;
    const q = Header.req(Op.NEW_VDI, { flags: Flag.CMD_WRITE, dataLength: 256 });
    q.baseVdiId = h.vdiId;
    q.vdiSize = h.vdiSize;
    q.vdiCopies = h.nrCopies;
    q.vdiCopyPolicy = h.copyPolicy;
    q.storePolicy = h.storePolicy;
    q.vdiBlockSizeShift = h.blockSizeShift;
    const r = await c.exec(q, fixedString(name, 256));
    if (r.hdr.result !== Res.SUCCESS) {
      throw new FarmError(`Failed to create VDI ${name}: ${strerror(r.hdr.result)}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dispatch

/** `dog cluster snapshot <sub> ...` (do_generic_subcommand over save/list/load/show). */
export async function clusterSnapshot(c: Ctx, host: FarmHost): Promise<number> {
  const sub = c.arg();
  const known = ["save", "list", "load", "show"];
  if (!sub || !known.includes(sub)) c.usage(EXIT_FAILURE);
  if (sub !== "list") await host.updateNodeList(c);
  c.optind++;
  if (c.args.length === c.optind || c.args[c.optind] === "") c.usage(EXIT_USAGE);
  switch (sub) {
    case "save":
      return await saveSnapshot(c);
    case "list":
      return listSnapshot(c);
    case "load":
      return await loadSnapshot(c, host);
    default:
      return await showSnapshot(c);
  }
}
