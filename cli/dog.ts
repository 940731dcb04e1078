// `dog`: the Sheepdog administrator CLI (dog-cli.md). Same commands, output and exit codes as
// upstream 1.0; talks the wire protocol through core/client.ts.
import { checkErasureObject } from "./ec-check.ts";
import { isErasureOid } from "../core/ec.ts";
import { Buffer } from "node:buffer";
import * as dns from "node:dns";
import * as fs from "node:fs";
import { isIP } from "node:net";
import { ClientPool, errnoText, NetworkError } from "../io/client.ts";
import { SdError } from "../core/errors.ts";
import { decodeInodeHeader, type InodeHeader } from "../core/inode.ts";
import {
  decodeNodes,
  nodeHostPort,
  nodeIp,
  nodeString,
  type SdNode,
  sortNodes,
} from "../core/node.ts";
import {
  dataOidToIdx,
  isDataObj,
  MAX_DATA_OBJS,
  oidHex,
  oidToVid,
  SD_ATTR_OBJ_SIZE,
  SD_INODE_HEADER_SIZE,
  SD_INODE_SIZE,
  SD_MAX_VDI_SIZE,
  SD_NR_VDIS,
  vidToAttrOid,
  vidToDataOid,
  vidToVdiOid,
} from "../core/oid.ts";
import { VERSION } from "../core/version.ts";
import {
  ClusterFlag,
  fixedString,
  Flag,
  Header,
  Op,
  readFixedString,
  Res,
  strerror,
} from "../core/proto.ts";
import { Ring } from "../core/ring.ts";
import {
  countDataObjs,
  getVdiInfo,
  Limiter,
  readInodeWithSlots,
  readObject,
  type Requester,
  type SlotMap,
  VdiHandle,
  writeObject,
} from "../core/vdi-io.ts";
import {
  banner,
  cFixed,
  clusterInfoText,
  countSlots,
  ctimeSeconds,
  decodeEpochLogs,
  EPOCH_LOG_SIZE,
  invalidCopiesMessage,
  invalidSizeMessage,
  isNumeric,
  LOG_LEVELS,
  NODE_INFO_HEADER,
  NODE_LIST_HEADER,
  nodeInfoRow,
  nodeInfoTotal,
  nodeListRow,
  padLeft,
  parseCopies,
  parseSize,
  progressLine,
  RECOVERY_HEADER,
  recoveryRow,
  strftime,
  strnumber,
  VDI_LIST_HEADER,
  vdiListRow,
} from "./format.ts";
import {
  type CmdDef,
  findCommand,
  findSub,
  invalidSubcommand,
  mainUsage,
  parseSubArgs,
  subcommandUsage,
  type SubDef,
} from "./options.ts";

export const EXIT_SUCCESS = 0;
export const EXIT_FAILURE = 1;
export const EXIT_SYSFAIL = 2;
export const EXIT_EXISTS = 3;
export const EXIT_FULL = 4;
export const EXIT_MISSING = 5;
export const EXIT_USAGE = 64;

const SD_LISTEN_PORT = 7000;
const SD_NODE_SIZE = 80;
const SD_MAX_NODES = 6144;
const CLUSTER_INFO_SIZE = 491568;
const VDI_BITMAP_SIZE = SD_NR_VDIS / 8;
const VDI_STATE_SIZE = 1428;
const NR_BATCHED_DISCARD = 128;
const STORE_LEN = 16;
const SD_MAX_VDI_ATTR_VALUE_LEN = 65536;
const OLD_MAX_DATA_OBJS = 1 << 20;
const TEXT_BOLD = "\x1b[1m";
const TEXT_NORMAL = "\x1b[0m";

/** Leaves dogMain with an exit code (upstream's exit() calls). */
class Exit extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

// ---------------------------------------------------------------------------------------------
// output

function out(s: string | Buffer): void {
  process.stdout.write(s);
}

function err(line: string): void {
  process.stderr.write(line.endsWith("\n") ? line : line + "\n");
}

let stdoutBroken: Error | null = null;

/** Writes binary data to stdout honouring backpressure. */
async function outAsync(b: Buffer): Promise<void> {
  if (stdoutBroken) throw stdoutBroken;
  if (!process.stdout.write(b)) {
    await new Promise<void>((resolve) => {
      const done = () => {
        process.stdout.removeListener("drain", done);
        process.stdout.removeListener("error", done);
        resolve();
      };
      process.stdout.once("drain", done);
      process.stdout.once("error", done);
    });
  }
  if (stdoutBroken) throw stdoutBroken;
}

function flushStream(s: NodeJS.WriteStream): Promise<void> {
  return new Promise((resolve) => {
    try {
      if (!s.write("", () => resolve())) s.once("drain", () => resolve());
    } catch {
      resolve();
    }
    setTimeout(resolve, 2000).unref?.();
  });
}

function isStdoutTty(): boolean {
  return !!process.stdout.isTTY;
}

function screenWidth(): number {
  return process.stdout.columns || 80;
}

function showProgress(done: bigint, total: bigint, raw: boolean): void {
  if (!isStdoutTty()) return;
  out("\r" + progressLine(done, total, raw, screenWidth()));
  if (done === total) out("\n");
}

// ---------------------------------------------------------------------------------------------
// stdin

class StdinReader {
  private it: AsyncIterator<Buffer> | null = null;
  private chunks: Buffer[] = [];
  private have = 0;
  private eof = false;

  private async more(): Promise<boolean> {
    if (this.eof) return false;
    if (!this.it) this.it = (process.stdin as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    const r = await this.it.next();
    if (r.done) {
      this.eof = true;
      return false;
    }
    const chunk = typeof r.value === "string" ? Buffer.from(r.value) : r.value;
    if (chunk.length) {
      this.chunks.push(chunk);
      this.have += chunk.length;
    }
    return true;
  }

  private take(n: number): Buffer {
    const k = Math.min(n, this.have);
    const first = this.chunks[0];
    let outb: Buffer;
    if (first && first.length >= k) {
      outb = first.subarray(0, k);
      if (first.length === k) this.chunks.shift();
      else this.chunks[0] = first.subarray(k);
    } else {
      outb = Buffer.allocUnsafe(k);
      let off = 0;
      while (off < k) {
        const c = this.chunks[0];
        const m = Math.min(c.length, k - off);
        c.copy(outb, off, 0, m);
        off += m;
        if (m === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(m);
      }
    }
    this.have -= k;
    return outb;
  }

  /** Reads up to n bytes (fewer only at EOF), like xread(). */
  async read(n: number): Promise<Buffer> {
    while (this.have < n && await this.more());
    return this.take(n);
  }

  /** fgets(buf, size): up to size-1 bytes or through the newline; null at EOF. */
  async gets(size: number): Promise<string | null> {
    for (;;) {
      const joined = this.chunks.length > 1
        ? Buffer.concat(this.chunks)
        : this.chunks[0] ?? Buffer.alloc(0);
      this.chunks = joined.length ? [joined] : [];
      const nl = joined.indexOf(10);
      if (nl >= 0 && nl < size - 1) return this.take(nl + 1).toString("latin1");
      if (this.have >= size - 1) return this.take(size - 1).toString("latin1");
      if (!await this.more()) return this.have ? this.take(this.have).toString("latin1") : null;
    }
  }

  close(): void {
    if (!this.it) return;
    try {
      process.stdin.pause();
      (process.stdin as unknown as { unref?: () => void }).unref?.();
    } catch { /* ignore */ }
  }
}

// ---------------------------------------------------------------------------------------------
// context

type Handler = (c: Ctx) => Promise<number>;

interface VdiCmdData {
  index: number; // -1 = not given
  snapshotId: number;
  snapshotTag: string;
  exclusive: boolean;
  delete: boolean;
  prealloc: boolean;
  nrCopies: number;
  copyPolicy: number;
  blockSizeShift: number;
  writeback: boolean;
  fromSnapshotId: number;
  fromSnapshotTag: string;
  force: boolean;
  storePolicy: number;
  oid: bigint;
  noShare: boolean;
  exist: boolean;
  reduceIdentical: boolean;
}

interface ClusterCmdData {
  copies: number;
  copyPolicy: number;
  multithread: boolean;
  blockSizeShift: number;
  force: boolean;
  strict: boolean;
  diff: boolean;
  name: string;
  fixedVnodes: boolean;
  useLock: boolean;
  recycleVid: boolean;
  avoidDiskfull: boolean;
}

interface NodeCmdData {
  allNodes: boolean;
  recoveryProgress: boolean;
  watch: boolean;
  local: boolean;
  force: boolean;
}

class Ctx {
  host = "127.0.0.1";
  port = SD_LISTEN_PORT;
  raw = false;
  verbose = false;
  elapsed = false;
  args: string[] = [];
  optind = 0;
  nodes: SdNode[] = [];
  ring: Ring | null = null;
  zones = 0;
  epoch = 0;
  diskMode = false;
  readonly pool = new ClientPool({ connectTimeoutMs: 30_000, idleMs: 0 });
  readonly stdin = new StdinReader();
  vdi: VdiCmdData = {
    index: -1,
    snapshotId: 0,
    snapshotTag: "",
    exclusive: false,
    delete: false,
    prealloc: false,
    nrCopies: 0,
    copyPolicy: 0,
    blockSizeShift: 0,
    writeback: false,
    fromSnapshotId: 0,
    fromSnapshotTag: "",
    force: false,
    storePolicy: 0,
    oid: 0n,
    noShare: false,
    exist: false,
    reduceIdentical: false,
  };
  cluster: ClusterCmdData = {
    copies: 0,
    copyPolicy: 0,
    multithread: false,
    blockSizeShift: 0,
    force: false,
    strict: false,
    diff: false,
    name: "",
    fixedVnodes: false,
    useLock: false,
    recycleVid: false,
    avoidDiskfull: false,
  };
  node: NodeCmdData = {
    allNodes: false,
    recoveryProgress: false,
    watch: false,
    local: false,
    force: false,
  };
  private reported = new Set<string>();
  /** Set when the command is over: late failures of abandoned requests are not reported. */
  closing = false;

  constructor(readonly cmd: CmdDef, readonly sub: SubDef) {}

  /** Sends a request to the addressed sheep (or `to`). Connection failures print and throw. */
  async exec(hdr: Header, data?: Buffer, to?: SdNode): Promise<{ hdr: Header; data: Buffer }> {
    const host = to ? nodeIp(to) : this.host;
    const port = to ? to.port : this.port;
    try {
      return await this.pool.request(host, port, hdr, data);
    } catch (e) {
      if (e instanceof NetworkError && !this.closing) {
        const key = `${host}:${port}`;
        if (!this.reported.has(key)) {
          this.reported.add(key);
          err(e.connectFailed ? e.message : `failed to communicate with ${key}: ${e.message}`);
        }
      }
      throw e;
    }
  }

  /** Header-only request; prints `Response's result: ...` on failure (send_light_req). */
  async light(hdr: Header, to?: SdNode): Promise<boolean> {
    const rsp = await this.exec(hdr, undefined, to);
    if (rsp.hdr.result !== Res.SUCCESS) {
      err(`Response's result: ${strerror(rsp.hdr.result)}`);
      return false;
    }
    return true;
  }

  get req(): Requester {
    return (h, d) => this.exec(h, d);
  }

  arg(i = 0): string | undefined {
    return this.args[this.optind + i];
  }

  usage(code: number): never {
    out(subcommandUsage(this.cmd, this.sub));
    throw new Exit(code);
  }

  /** confirm(): anything but an answer starting with "yes" exits 0. */
  async confirm(message: string): Promise<void> {
    out(message);
    await flushStream(process.stdout);
    const input = await this.stdin.gets(8);
    if (input === null || input.slice(0, 3).toLowerCase() !== "yes") throw new Exit(EXIT_SUCCESS);
  }
}

// ---------------------------------------------------------------------------------------------
// node list (CMD_NEED_NODELIST)

async function updateNodeList(c: Ctx): Promise<void> {
  let rsp;
  try {
    rsp = await c.exec(Header.req(Op.GET_NODE_LIST, { dataLength: SD_NODE_SIZE * SD_MAX_NODES }));
  } catch (e) {
    if (e instanceof NetworkError) {
      err("Failed to get node list");
      throw new Exit(EXIT_SYSFAIL);
    }
    throw e;
  }
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`Failed to update node list: ${strerror(rsp.hdr.result)}`);
    err("Failed to get node list");
    throw new Exit(EXIT_SYSFAIL);
  }
  const nodes = sortNodes(decodeNodes(rsp.data));
  if (nodes.length === 0) {
    err("There are no active sheep daemons");
    throw new Exit(EXIT_FAILURE);
  }
  c.nodes = nodes;
  c.zones = new Set(nodes.map((n) => n.zone >>> 0)).size;
  const st = Header.req(Op.STAT_CLUSTER, { dataLength: EPOCH_LOG_SIZE });
  let srsp;
  try {
    srsp = await c.exec(st);
  } catch (e) {
    if (e instanceof NetworkError) {
      err("Failed to get node list");
      throw new Exit(EXIT_SYSFAIL);
    }
    throw e;
  }
  const flags = srsp.data.length >= 32 ? srsp.data.readUInt16LE(30) : 0;
  c.diskMode = (flags & ClusterFlag.DISKMODE) !== 0;
  c.epoch = srsp.hdr.epoch;
  c.ring = new Ring(nodes);
}

function ring(c: Ctx): Ring {
  if (!c.ring) c.ring = new Ring(c.nodes);
  return c.ring;
}

// ---------------------------------------------------------------------------------------------
// generic nested subcommands (do_generic_subcommand)

async function genericSubcommand(
  c: Ctx,
  subs: SubDef[],
  handlers: Record<string, Handler>,
): Promise<number> {
  const name = c.arg();
  const s = subs.find((x) => x.name === name);
  if (!s || !handlers[s.name]) c.usage(EXIT_FAILURE);
  if (s.needNodeList) await updateNodeList(c);
  c.optind++;
  if (s.needArg && (c.args.length === c.optind || c.args[c.optind] === "")) c.usage(EXIT_USAGE);
  const ret = await handlers[s.name](c);
  if (ret === EXIT_USAGE) c.usage(EXIT_USAGE);
  return ret;
}

// ---------------------------------------------------------------------------------------------
// VDI helpers

const MAX_NAME = 255;

/** pstrcpy() would silently truncate; refuse instead of acting on another name. */
function checkVdiName(name: string, what = "VDI name"): void {
  if (Buffer.byteLength(name, "utf8") > MAX_NAME) {
    err(
      `${what} is too long (${
        Buffer.byteLength(name, "utf8")
      } bytes, the limit is ${MAX_NAME}): ${name}`,
    );
    throw new Exit(EXIT_USAGE);
  }
}

async function findVdiName(
  c: Ctx,
  name: string,
  snapid: number,
  tag: string,
): Promise<{ result: number; vid: number }> {
  try {
    const info = await getVdiInfo(c.req, name, snapid, tag);
    return { result: Res.SUCCESS, vid: info.vid };
  } catch (e) {
    if (e instanceof SdError && !(e instanceof NetworkError)) return { result: e.code, vid: 0 };
    throw e;
  }
}

function openErrorMessage(name: string, snapid: number, tag: string, result: number): string {
  return `Failed to open VDI ${name} (snapshot id: ${snapid} snapshot tag: ${tag}): ${
    strerror(result)
  }`;
}

interface VdiObj {
  vid: number;
  header: InodeHeader;
  raw: Buffer;
  slots: SlotMap;
}

/** read_vdi_obj(): GET_VDI_INFO + inode read; prints upstream's messages and throws Exit(1). */
async function readVdiObj(
  c: Ctx,
  name: string,
  snapid: number,
  tag: string,
  full: boolean,
): Promise<VdiObj> {
  checkVdiName(name);
  const r = await findVdiName(c, name, snapid, tag);
  if (r.result !== Res.SUCCESS) {
    err(openErrorMessage(name, snapid, tag, r.result));
    throw new Exit(EXIT_FAILURE);
  }
  try {
    const raw = await readObject(c.req, vidToVdiOid(r.vid), SD_INODE_HEADER_SIZE, 0, true);
    const header = decodeInodeHeader(raw);
    const slots = full ? (await readInodeWithSlots(c.req, r.vid)).slots : emptySlots();
    return { vid: r.vid, header, raw, slots };
  } catch (e) {
    if (e instanceof SdError && !(e instanceof NetworkError)) {
      err(
        `Failed to read object ${oidHex(vidToVdiOid(r.vid)).replace(/^0+/, "")} ${
          strerror(e.code)
        }`,
      );
      if (snapid) err(`Failed to read a snapshot ${name}:${snapid}`);
      else if (tag) err(`Failed to read a snapshot ${name}:${tag}`);
      else err(`Failed to read a vdi ${name}`);
      throw new Exit(EXIT_FAILURE);
    }
    throw e;
  }
}

function emptySlots(): SlotMap {
  return { flat: new Uint32Array(0), get: () => 0, *entries() {} };
}

function isSnap(h: InodeHeader): boolean {
  return h.snapCtime !== 0n;
}

function hex(n: number | bigint): string {
  return (typeof n === "bigint" ? BigInt.asUintN(64, n) : BigInt(n >>> 0)).toString(16);
}

/** do_vdi_create(): NEW_VDI. Returns the new vid or prints the error and returns null. */
async function doVdiCreate(
  c: Ctx,
  name: string,
  size: bigint,
  baseVid: number,
  snapshot: boolean,
  copies: number,
  policy: number,
  storePolicy: number,
  shift: number,
): Promise<number | null> {
  const h = Header.req(Op.NEW_VDI, { flags: Flag.CMD_WRITE, dataLength: 256 });
  h.baseVdiId = baseVid;
  h.snapid = snapshot ? 1 : 0;
  h.vdiSize = size;
  h.vdiCopies = copies;
  h.vdiCopyPolicy = policy;
  h.storePolicy = storePolicy;
  h.vdiBlockSizeShift = shift;
  const rsp = await c.exec(h, fixedString(name, 256));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`Failed to create VDI ${name}: ${strerror(rsp.hdr.result)}`);
    return null;
  }
  return rsp.hdr.rspVdiId;
}

/** Writes data_vdi_id for the given (sorted) indexes, one WRITE_OBJ per run. */
async function writeSlots(
  c: Ctx,
  vid: number,
  h: InodeHeader,
  slots: Map<number, number>,
): Promise<void> {
  const idxs = [...slots.keys()].sort((a, b) => a - b);
  let i = 0;
  const lim = new Limiter(8);
  const tasks: Promise<void>[] = [];
  while (i < idxs.length) {
    let j = i;
    while (j + 1 < idxs.length && idxs[j + 1] === idxs[j] + 1) j++;
    const start = idxs[i];
    const payload = Buffer.alloc((j - i + 1) * 4);
    for (let k = i; k <= j; k++) payload.writeUInt32LE(slots.get(idxs[k])! >>> 0, (k - i) * 4);
    tasks.push(
      lim.run(() =>
        writeObject(c.req, vidToVdiOid(vid), payload, SD_INODE_HEADER_SIZE + 4 * start, {
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
          direct: true,
        })
      ),
    );
    i = j + 1;
  }
  const rs = await Promise.allSettled(tasks);
  for (const r of rs) if (r.status === "rejected") throw r.reason;
}

interface ParsedVdi {
  vid: number;
  name: string;
  tag: string;
  snapid: number;
  header: InodeHeader;
  slots: SlotMap | null;
}

/**
 * parse_vdi(): every VDI in use and not deleted, with a non-empty name, in VID order.
 * Returns null (after printing the error) when the bitmaps cannot be read.
 */
async function parseVdi(c: Ctx, withSlots: boolean): Promise<ParsedVdi[] | null> {
  const inuse = await c.exec(Header.req(Op.READ_VDIS, { dataLength: VDI_BITMAP_SIZE }));
  if (inuse.hdr.result !== Res.SUCCESS) {
    err(strerror(inuse.hdr.result));
    return null;
  }
  const del = await c.exec(Header.req(Op.READ_DEL_VDIS, { dataLength: VDI_BITMAP_SIZE }));
  if (del.hdr.result !== Res.SUCCESS) {
    err(strerror(del.hdr.result));
    return null;
  }
  const vids: number[] = [];
  const bm = inuse.data, dm = del.data;
  for (let byte = 0; byte < bm.length; byte++) {
    const b = bm[byte];
    if (!b) continue;
    for (let bit = 0; bit < 8; bit++) {
      if (!(b & (1 << bit))) continue;
      const nr = byte * 8 + bit;
      if (nr >> 3 < dm.length && dm[nr >> 3] & (1 << (nr & 7))) continue;
      vids.push(nr);
    }
  }
  const lim = new Limiter(16);
  const results = await Promise.all(
    vids.map((vid) =>
      lim.run(async (): Promise<ParsedVdi | null> => {
        let header: InodeHeader;
        try {
          header = decodeInodeHeader(
            await readObject(c.req, vidToVdiOid(vid), SD_INODE_HEADER_SIZE + 8, 0, true),
          );
        } catch (e) {
          if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
          err(`Failed to read object ${hex(vidToVdiOid(vid))} ${strerror(e.code)}`);
          err("Failed to read inode header");
          return null;
        }
        if (header.name === "") return null;
        let slots: SlotMap | null = null;
        if (withSlots) {
          try {
            slots = (await readInodeWithSlots(c.req, vid)).slots;
          } catch (e) {
            if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
            err("Failed to read inode");
            return null;
          }
        }
        return {
          vid: header.vdiId,
          name: header.name,
          tag: header.tag,
          snapid: isSnap(header) ? header.snapId : 0,
          header,
          slots,
        };
      })
    ),
  );
  return results.filter((x): x is ParsedVdi => x !== null);
}

/** sd_inode_stat(): slots owned by the VDI itself / by other VDIs. */
function inodeStat(h: InodeHeader, slots: SlotMap): { my: number; cow: number } {
  if (slots.flat) return countSlots(slots.flat, h.vdiId, countDataObjs(h));
  let my = 0, cow = 0;
  for (const [, v] of slots.entries()) {
    if (v === h.vdiId) my++;
    else cow++;
  }
  return { my, cow };
}

function parseSizeArg(s: string): bigint | null {
  const v = parseSize(s);
  if (v === null) err(invalidSizeMessage(s));
  return v;
}

// ---------------------------------------------------------------------------------------------
// vdi commands

async function vdiCreate(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const sizeStr = c.arg(1);
  const d = c.vdi;
  if (sizeStr === undefined) {
    err("Please specify the VDI size");
    return EXIT_USAGE;
  }
  const size = parseSizeArg(sizeStr);
  if (size === null) return EXIT_USAGE;
  checkVdiName(name);
  if (d.storePolicy === 1 && d.blockSizeShift) {
    err("Don't specify both -y and -z options, please");
    return EXIT_FAILURE;
  }
  let objectSize: number;
  if (d.blockSizeShift) {
    objectSize = 2 ** d.blockSizeShift;
  } else if (d.storePolicy === 1) {
    d.blockSizeShift = 22;
    objectSize = 2 ** 22;
  } else {
    const rsp = await c.exec(Header.req(Op.CLUSTER_INFO, { dataLength: CLUSTER_INFO_SIZE }));
    const ctime = rsp.data.length >= 16 ? rsp.data.readBigUInt64LE(8) : 0n;
    if (!ctime) {
      err(`Failed to create VDI ${name}: ${strerror(Res.WAIT_FOR_FORMAT)}`);
      return EXIT_FAILURE;
    }
    if (rsp.hdr.result !== Res.SUCCESS) {
      err(strerror(rsp.hdr.result));
      return EXIT_FAILURE;
    }
    objectSize = 2 ** rsp.data[21];
  }
  const oldMax = BigInt(objectSize) * BigInt(OLD_MAX_DATA_OBJS);
  if (size > oldMax && d.storePolicy === 0) {
    err(
      `VDI size is larger than ${
        strnumber(oldMax, c.raw)
      } bytes, please use '-y' to create a hyper volume with size up to ` +
        `${
          strnumber(SD_MAX_VDI_SIZE, c.raw)
        } bytes or use '-z' to create larger object size volume`,
    );
    return EXIT_USAGE;
  }
  if (size > SD_MAX_VDI_SIZE) {
    err("VDI size is too large");
    return EXIT_USAGE;
  }
  const vid = await doVdiCreate(
    c,
    name,
    size,
    0,
    false,
    d.nrCopies,
    d.copyPolicy,
    d.storePolicy,
    d.blockSizeShift,
  );
  if (vid === null) return EXIT_FAILURE;
  if (d.prealloc) {
    let h: InodeHeader;
    try {
      h = decodeInodeHeader(
        await readObject(c.req, vidToVdiOid(vid), SD_INODE_HEADER_SIZE, 0, true),
      );
    } catch (e) {
      if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
      err("Failed to read a newly created VDI object");
      return EXIT_FAILURE;
    }
    if (h.storePolicy === 1) {
      err("Preallocation of hyper volumes is not supported");
      return EXIT_FAILURE;
    }
    const os = 2 ** h.blockSizeShift;
    const maxIdx = countDataObjs(h);
    const total = h.vdiSize;
    const lim = new Limiter(16);
    let done = 0;
    const BATCH = 256;
    for (let start = 0; start < maxIdx; start += BATCH) {
      const end = Math.min(maxIdx, start + BATCH);
      const slots = new Map<number, number>();
      const tasks: Promise<void>[] = [];
      for (let idx = start; idx < end; idx++) {
        tasks.push(lim.run(async () => {
          await writeObject(c.req, vidToDataOid(vid, idx), Buffer.alloc(0), 0, {
            create: true,
            copies: h.nrCopies,
            copyPolicy: h.copyPolicy,
            direct: true,
          });
          slots.set(idx, vid);
          done++;
          showProgress(
            BigInt(done) * BigInt(os) > total ? total : BigInt(done) * BigInt(os),
            total,
            false,
          );
        }));
      }
      const rs = await Promise.allSettled(tasks);
      try {
        if (slots.size) await writeSlots(c, vid, h, slots);
      } catch (e) {
        if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
        err(`Failed to write object ${hex(vidToVdiOid(vid))}: ${strerror(e.code)}`);
        return EXIT_FAILURE;
      }
      for (const r of rs) {
        if (r.status === "rejected") {
          const e = r.reason;
          if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
          err(`Failed to write object: ${strerror(e.code)}`);
          return EXIT_FAILURE;
        }
      }
    }
  }
  if (c.verbose) out(c.raw ? `${hex(vid)}\n` : `VDI ID of newly created VDI: ${hex(vid)}\n`);
  return EXIT_SUCCESS;
}

async function vdiList(c: Ctx): Promise<number> {
  const name = c.arg();
  if (!c.raw) out(VDI_LIST_HEADER);
  if (name === undefined && c.vdi.oid && !isDataObj(c.vdi.oid)) return EXIT_FAILURE;
  const list = await parseVdi(c, true);
  if (!list) return EXIT_SUCCESS;
  for (const v of list) {
    if (name !== undefined) {
      if (v.name !== name) continue;
    } else if (c.vdi.oid) {
      const idx = dataOidToIdx(c.vdi.oid);
      const slot = v.slots!.get(idx);
      if (slot === 0 || slot !== oidToVid(c.vdi.oid)) continue;
    }
    const st = inodeStat(v.header, v.slots!);
    out(vdiListRow(v.header, st.my, st.cow, c.raw));
  }
  return EXIT_SUCCESS;
}

/** do_vdi_delete(): always EXIT_SUCCESS, as upstream (errors only on stderr). */
async function doVdiDelete(c: Ctx, name: string, snapid: number, tag: string): Promise<number> {
  const r = await findVdiName(c, name, snapid, tag);
  if (r.result !== Res.SUCCESS) {
    err(openErrorMessage(name, snapid, tag, r.result));
    return EXIT_SUCCESS;
  }
  const vid = r.vid;
  // Clearing the data map of a VDI a client has attached would destroy its disk under it;
  // upstream 1.0 does not look, we refuse (and change nothing).
  const states = await getVdiState(c);
  const lock = states?.find((s) => s.vid === vid && s.lockState !== LOCK_STATE_UNLOCKED);
  if (lock) {
    err(
      `Failed to delete ${name}: ${strerror(Res.VDI_LOCKED)} (owner ${
        nodeString(lock.lockOwner)
      }); ` +
        `detach it first or run 'dog vdi lock unlock ${name}'`,
    );
    return EXIT_FAILURE;
  }
  let header: InodeHeader, slots: SlotMap;
  try {
    ({ header, slots } = await readInodeWithSlots(c.req, vid));
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`failed to read inode object: ${hex(vidToVdiOid(vid))}`);
    return EXIT_SUCCESS;
  }
  const flat = slots.flat;
  if (flat && header.storePolicy === 0) {
    const nr = Math.min(flat.length, countDataObjs(header));
    let i = 0;
    while (i < nr) {
      while (i < nr && !flat[i]) i++;
      const start = i;
      let filled = 0;
      while (i < nr && filled < NR_BATCHED_DISCARD) {
        if (flat[i]) {
          flat[i] = 0;
          filled++;
        }
        i++;
      }
      if (i === start) break;
      try {
        await writeObject(
          c.req,
          vidToVdiOid(vid),
          Buffer.alloc((i - start) * 4),
          SD_INODE_HEADER_SIZE + 4 * start,
          {
            copies: header.nrCopies,
            copyPolicy: header.copyPolicy,
            direct: true,
          },
        );
      } catch (e) {
        if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
        err(`Failed to write object ${hex(vidToVdiOid(vid))}: ${strerror(e.code)}`);
        err(`failed to update inode for discarding objects: ${hex(vidToVdiOid(vid))}`);
        return EXIT_SUCCESS;
      }
    }
  }
  const payload = Buffer.concat([fixedString(name, 256), fixedString(tag, 256)]);
  const h = Header.req(Op.DEL_VDI, { flags: Flag.CMD_WRITE, dataLength: payload.length });
  h.snapid = snapid;
  const rsp = await c.exec(h, payload);
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`Failed to delete ${name}: ${strerror(rsp.hdr.result)}`);
    return EXIT_SUCCESS;
  }
  if (header.storePolicy === 1) await reclaimHyperObjects(c, vid, slots);
  return EXIT_SUCCESS;
}

/**
 * A deleted hyper volume's own data objects and its B-tree leaves: nothing reference-counts
 * them, so they are removed directly (objects of other VIDs belong to snapshots). Done after
 * DEL_VDI so a refused delete changes nothing; objects the server already removed are skipped.
 */
async function reclaimHyperObjects(c: Ctx, vid: number, slots: SlotMap): Promise<void> {
  const oids: bigint[] = [];
  for (const [idx, owner] of slots.entries()) if (owner === vid) oids.push(vidToDataOid(vid, idx));
  oids.push(...(slots.leafOids?.() ?? []));
  const lim = new Limiter(16);
  await Promise.all(oids.map((oid) =>
    lim.run(async () => {
      const h = Header.req(Op.REMOVE_OBJ);
      h.oid = oid;
      const r = await c.exec(h);
      if (r.hdr.result !== Res.SUCCESS && r.hdr.result !== Res.NO_OBJ) {
        err(`failed to remove object ${hex(oid)}: ${strerror(r.hdr.result)}`);
      }
    })
  ));
}

async function vdiDelete(c: Ctx): Promise<number> {
  const name = c.arg()!;
  checkVdiName(name);
  return doVdiDelete(c, name, c.vdi.snapshotId, c.vdi.snapshotTag);
}

async function vdiResize(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const sizeStr = c.arg(1);
  if (sizeStr === undefined) {
    err("Please specify the new size for the VDI");
    return EXIT_USAGE;
  }
  const newSize = parseSizeArg(sizeStr);
  if (newSize === null) return EXIT_USAGE;
  const v = await readVdiObj(c, name, 0, "", false);
  const h = v.header;
  const os = 2n ** BigInt(h.blockSizeShift);
  if (h.storePolicy === 0 && newSize > os * BigInt(OLD_MAX_DATA_OBJS)) {
    err(`New VDI size is too large. This volume's max size is ${os * BigInt(OLD_MAX_DATA_OBJS)}`);
    return EXIT_USAGE;
  }
  if (newSize > SD_MAX_VDI_SIZE) {
    err(`New VDI size is too large This volume's max size is ${SD_MAX_VDI_SIZE}`);
    return EXIT_USAGE;
  }
  if (newSize < h.vdiSize) {
    err("Shrinking VDIs is not implemented");
    return EXIT_USAGE;
  }
  const raw = Buffer.from(v.raw);
  raw.writeBigUInt64LE(newSize, 536);
  try {
    await writeObject(c.req, vidToVdiOid(v.vid), raw, 0, {
      copies: h.nrCopies,
      copyPolicy: h.copyPolicy,
      direct: true,
    });
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Failed to write object ${hex(vidToVdiOid(v.vid))}: ${strerror(e.code)}`);
    err("Failed to update an inode header");
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

function parseOffsetLen(c: Ctx): { offset: bigint; total: bigint | null } | number {
  let offset = 0n;
  let total: bigint | null = null;
  const o = c.arg(1);
  if (o !== undefined) {
    const v = parseSizeArg(o);
    if (v === null) return EXIT_USAGE;
    offset = v;
    const l = c.arg(2);
    if (l !== undefined) {
      const t = parseSizeArg(l);
      if (t === null) return EXIT_USAGE;
      total = t;
    }
  }
  return { offset, total };
}

async function vdiRead(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const ol = parseOffsetLen(c);
  if (typeof ol === "number") return ol;
  const v = await readVdiObj(c, name, c.vdi.snapshotId, c.vdi.snapshotTag, false);
  const size = v.header.vdiSize;
  if (size < ol.offset) {
    err("Read offset is beyond the end of the VDI");
    return EXIT_FAILURE;
  }
  let handle: VdiHandle;
  try {
    handle = await VdiHandle.openVid(c.req, name, v.vid, {
      snapid: c.vdi.snapshotId,
      tag: c.vdi.snapshotTag,
    });
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Failed to read a vdi ${name}`);
    return EXIT_FAILURE;
  }
  const remain = size - ol.offset;
  const total = ol.total === null || ol.total > remain ? remain : ol.total;
  const os = handle.objectSize;
  const CHUNK = Math.min(os, 4 * 1024 * 1024);
  const WINDOW = 8;
  const queue: Promise<Buffer>[] = [];
  let pos = Number(ol.offset);
  const end = Number(ol.offset + total);
  let failed: unknown = null;
  const next = () => {
    if (pos >= end) return false;
    const objEnd = (Math.floor(pos / os) + 1) * os;
    const len = Math.min(CHUNK, objEnd - pos, end - pos);
    const p = handle.read(pos, len);
    p.catch(() => {}); // observed when dequeued
    queue.push(p);
    pos += len;
    return true;
  };
  while (queue.length < WINDOW && next());
  while (queue.length) {
    let buf: Buffer;
    try {
      buf = await queue.shift()!;
    } catch (e) {
      failed = e;
      break;
    }
    next();
    try {
      await outAsync(buf);
    } catch (e) {
      err(`Failed to write to stdout: ${errnoText(e)}`);
      return EXIT_SYSFAIL;
    }
  }
  if (failed) {
    if (failed instanceof NetworkError || !(failed instanceof SdError)) throw failed;
    err(`Failed to read VDI: ${strerror(failed.code)}`);
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

async function vdiWrite(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const ol = parseOffsetLen(c);
  if (typeof ol === "number") return ol;
  const v = await readVdiObj(c, name, 0, "", false);
  const size = v.header.vdiSize;
  if (size < ol.offset) {
    err("Write offset is beyond the end of the VDI");
    return EXIT_FAILURE;
  }
  // upstream silently clips an explicit length; refusing up front writes nothing partial
  if (ol.total !== null && ol.offset + ol.total > size) {
    err("Write length is beyond the end of the VDI");
    return EXIT_FAILURE;
  }
  let handle: VdiHandle;
  try {
    handle = await VdiHandle.openVid(c.req, name, v.vid);
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Failed to read a vdi ${name}`);
    return EXIT_FAILURE;
  }
  const remain = size - ol.offset;
  const lenGiven = ol.total !== null;
  const total = Number(ol.total === null || ol.total > remain ? remain : ol.total);
  const base = Number(ol.offset);
  const os = handle.objectSize;
  const CHUNK = Math.max(os, 32 * 1024 * 1024);
  let done = 0;
  let stdinDone = false;
  // Chunks end on object boundaries, so chunks in flight never share an object: several may
  // be written at once (one at a time left the cluster idle between chunks).
  const DEPTH = 4;
  const pending: Promise<void>[] = [];
  const flush = async (keep = 0) => {
    while (pending.length > keep) await pending.shift();
  };
  try {
    while (done < total) {
      // chunks end on object boundaries so short reads are handled per object as upstream
      const abs = base + done;
      let want = Math.min(total - done, CHUNK);
      const chunkEnd = abs + want;
      if (chunkEnd % os !== 0 && done + want < total) want = Math.floor(chunkEnd / os) * os - abs;
      const data = stdinDone ? Buffer.alloc(0) : await c.stdin.read(want);
      let buf = data;
      let last = false;
      if (data.length < want) {
        if (!stdinDone) stdinDone = true;
        if (!lenGiven) {
          last = true;
          const eofAbs = abs + data.length;
          if (data.length !== 0 && eofAbs % os !== 0) {
            // zero-fill the rest of the last object (upstream); stdin ending on an object
            // boundary writes nothing more (upstream wrote an extra all-zero object)
            const objEnd = (Math.floor(eofAbs / os) + 1) * os;
            buf = Buffer.alloc(Math.min(base + total, objEnd) - abs);
            data.copy(buf, 0);
          }
        } else {
          // a length was given: the rest of it is zero-filled
          buf = Buffer.alloc(want);
          data.copy(buf, 0);
        }
      }
      await flush(DEPTH - 1);
      if (buf.length) {
        const w = handle.write(abs, buf);
        w.catch(() => {});
        pending.push(w);
      }
      done += buf.length;
      if (last) break;
    }
    await flush();
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Failed to write VDI: ${strerror(e.code)}`);
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

async function vdiSnapshot(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const d = c.vdi;
  if (d.snapshotId !== 0) {
    err("Please specify a non-integer value for a snapshot tag name");
    return EXIT_USAGE;
  }
  checkVdiName(name);
  const r = await findVdiName(c, name, 0, d.snapshotTag);
  let v: VdiObj;
  if (r.result === Res.SUCCESS) {
    const raw = await readObject(c.req, vidToVdiOid(r.vid), SD_INODE_HEADER_SIZE, 0, true).catch(
      (e) => {
        if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
        err(`Failed to read object ${hex(vidToVdiOid(r.vid))} ${strerror(e.code)}`);
        throw new Exit(EXIT_FAILURE);
      },
    );
    const header = decodeInodeHeader(raw);
    if (isSnap(header)) {
      err(
        `Failed to create snapshot for ${name}, maybe snapshot id (${d.snapshotId}) or tag (${d.snapshotTag}) is existed`,
      );
      return EXIT_FAILURE;
    }
    v = { vid: r.vid, header, raw, slots: emptySlots() };
  } else if (r.result === Res.NO_TAG) {
    v = await readVdiObj(c, name, 0, "", false);
  } else {
    err(`Failed to create snapshot for ${name}: ${strerror(r.result)}`);
    return EXIT_FAILURE;
  }
  const h = v.header;
  if (h.storePolicy) {
    err("creating a snapshot of hypervolume is not supported");
    return EXIT_FAILURE;
  }
  if (d.reduceIdentical) {
    const { slots } = await readInodeWithSlots(c.req, v.vid);
    let own = false;
    for (const [, vid] of slots.entries()) {
      if (vid === v.vid) {
        own = true;
        break;
      }
    }
    if (!own) return EXIT_SUCCESS;
  }
  try {
    await writeObject(c.req, vidToVdiOid(v.vid), fixedString(d.snapshotTag, 256), 256, {
      copies: h.nrCopies,
      copyPolicy: h.copyPolicy,
    });
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Failed to write object ${hex(vidToVdiOid(v.vid))}: ${strerror(e.code)}`);
    return EXIT_FAILURE;
  }
  const newVid = await doVdiCreate(
    c,
    name,
    h.vdiSize,
    v.vid,
    true,
    h.nrCopies,
    h.copyPolicy,
    h.storePolicy,
    h.blockSizeShift,
  );
  if (newVid === null) return EXIT_FAILURE;
  if (c.verbose) {
    out(
      c.raw
        ? `${hex(newVid)} ${hex(v.vid)}\n`
        : `new VID of original VDI: ${hex(newVid)}, VDI ID of newly created snapshot: ${
          hex(v.vid)
        }\n`,
    );
  }
  return EXIT_SUCCESS;
}

/** Copies (or zero-allocates) objects of `src` into the new VDI `newVid` and records the slots. */
async function copyObjects(
  c: Ctx,
  src: SlotMap,
  srcHeader: InodeHeader,
  newVid: number,
  allocateHoles: boolean,
): Promise<boolean> {
  const h = srcHeader;
  const os = 2 ** h.blockSizeShift;
  const maxIdx = countDataObjs(h);
  const lim = new Limiter(8);
  const BATCH = 64;
  let done = 0;
  for (let start = 0; start < maxIdx; start += BATCH) {
    const end = Math.min(maxIdx, start + BATCH);
    const slots = new Map<number, number>();
    const tasks: Promise<void>[] = [];
    for (let idx = start; idx < end; idx++) {
      const vid = src.get(idx);
      if (!vid && !allocateHoles) {
        done++;
        continue;
      }
      tasks.push(lim.run(async () => {
        const data = vid
          ? await readObject(c.req, vidToDataOid(vid, idx), os, 0, true)
          : Buffer.alloc(0);
        await writeObject(c.req, vidToDataOid(newVid, idx), data, 0, {
          create: true,
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
          direct: true,
        });
        slots.set(idx, newVid);
        done++;
        showProgress(BigInt(Math.min(done * os, Number(h.vdiSize))), h.vdiSize, false);
      }));
    }
    const rs = await Promise.allSettled(tasks);
    if (slots.size) await writeSlots(c, newVid, h, slots);
    for (const r of rs) {
      if (r.status === "rejected") {
        const e = r.reason;
        if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
        err(`Failed to copy object: ${strerror(e.code)}`);
        return false;
      }
    }
  }
  showProgress(h.vdiSize, h.vdiSize, false);
  return true;
}

async function vdiClone(c: Ctx): Promise<number> {
  const src = c.arg()!;
  const dst = c.arg(1);
  const d = c.vdi;
  if (dst === undefined) {
    err("Destination VDI name must be specified");
    return EXIT_USAGE;
  }
  if (!d.snapshotId && !d.snapshotTag) {
    err("Only snapshot VDIs can be cloned");
    err("Please specify the '-s' option");
    return EXIT_USAGE;
  }
  checkVdiName(dst);
  const v = await readVdiObj(c, src, d.snapshotId, d.snapshotTag, true);
  const h = v.header;
  const baseVid = d.noShare ? 0 : v.vid;
  const newVid = await doVdiCreate(
    c,
    dst,
    h.vdiSize,
    baseVid,
    false,
    h.nrCopies,
    h.copyPolicy,
    h.storePolicy,
    h.blockSizeShift,
  );
  if (newVid === null) return EXIT_FAILURE;
  if (d.prealloc || d.noShare) {
    if (h.storePolicy === 1) {
      err("Copying objects of hyper volumes is not supported");
      return EXIT_FAILURE;
    }
    if (!await copyObjects(c, v.slots, h, newVid, d.prealloc)) return EXIT_FAILURE;
  }
  if (c.verbose) {
    out(c.raw ? `${hex(newVid)}\n` : `VDI ID of newly created clone: ${hex(newVid)}\n`);
  }
  return EXIT_SUCCESS;
}

async function vdiRollback(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const d = c.vdi;
  if (!d.snapshotId && !d.snapshotTag) {
    err("Please specify the '-s' option");
    return EXIT_USAGE;
  }
  const v = await readVdiObj(c, name, d.snapshotId, d.snapshotTag, false);
  if (!d.force) {
    await c.confirm(
      "This operation discards any changes made since the previous\nsnapshot was taken.  Continue? [yes/no]: ",
    );
  }
  const ret = await doVdiDelete(c, name, 0, "");
  if (ret !== EXIT_SUCCESS) {
    err("Failed to delete the current state");
    return EXIT_FAILURE;
  }
  const h = v.header;
  const newVid = await doVdiCreate(
    c,
    name,
    h.vdiSize,
    v.vid,
    false,
    d.nrCopies,
    h.copyPolicy,
    h.storePolicy,
    h.blockSizeShift,
  );
  if (newVid === null) return EXIT_FAILURE;
  if (c.verbose) out(c.raw ? `${hex(newVid)}\n` : `New VDI ID of rollbacked VDI: ${hex(newVid)}\n`);
  return EXIT_SUCCESS;
}

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
  const find = (parent: TreeNode, vid: number, name: string): TreeNode | null => {
    for (const v of parent.children) {
      if (v.vid === vid && v.name === name) return v;
      const r = find(v, vid, name);
      if (r) return r;
    }
    return null;
  };
  for (const it of items) {
    const n: TreeNode = { ...it, children: [] };
    const parent = find(root, it.pvid, it.name) ?? root;
    parent.children.push(n);
  }
  const compaction = (parent: TreeNode) => {
    for (let i = 0; i < parent.children.length; i++) {
      const v = parent.children[i];
      const np = find(root, v.pvid, v.name);
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

async function vdiTree(c: Ctx): Promise<number> {
  const list = await parseVdi(c, false);
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

async function vdiGraph(c: Ctx): Promise<number> {
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
      `Looking for the object 0x${hex(oid)} (vid 0x${
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

function vdiObject(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, {
    location: vdiObjectLocation,
    map: vdiObjectMap,
    "dump-inode": vdiObjectDumpInode,
  });
}

// vdi track

async function statCluster(
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

async function vdiTrack(c: Ctx): Promise<number> {
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

async function vdiSetattr(c: Ctx): Promise<number> {
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

async function vdiGetattr(c: Ctx): Promise<number> {
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

// vdi alter-copy

async function vdiAlterCopy(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const d = c.vdi;
  if (d.copyPolicy !== 0) {
    err("Changing redundancy level of erasure coded vdi is not supported yet.");
    return EXIT_USAGE;
  }
  if (!d.nrCopies) {
    d.nrCopies = 3;
    out("The vdi's redundancy level is not specified, use 3 as default.\n");
  }
  if (d.nrCopies > c.nodes.length && !d.force) {
    await c.confirm(
      `Number of copies (${d.nrCopies}) is larger than number of nodes (${c.nodes.length}).\n` +
        "Are you sure you want to continue? [yes/no]: ",
    );
  }
  let v: VdiObj;
  try {
    v = await readVdiObj(c, name, 0, "", false);
  } catch (e) {
    if (e instanceof Exit) {
      err(`Reading ${name}'s vdi object failure.`);
      return EXIT_FAILURE;
    }
    throw e;
  }
  const h = v.header;
  if (h.copyPolicy) {
    err(`${name}'s copy policy is erasure code, changing it is not supported yet.`);
    return EXIT_FAILURE;
  }
  const old = h.nrCopies;
  if (old === d.nrCopies) {
    err(`${name}'s redundancy level is already set to ${old}, nothing changed.`);
    return EXIT_FAILURE;
  }
  const list = await parseVdi(c, false);
  if (!list) return EXIT_SYSFAIL;
  const standalone = h.parentVdiId === 0 &&
    !list.some((x) => x.header.parentVdiId === v.vid && x.name === h.name);
  if (!standalone) {
    err("Only standalone vdi supports changing redundancy level.");
    err(`Please clone ${name} with -n (--no-share) option first.`);
    return EXIT_FAILURE;
  }
  if (!d.force) {
    await c.confirm(
      banner(
        "Caution! Changing VDI's redundancy level will affect",
        "the VDI itself only and trigger recovery.",
      ),
    );
  }
  const raw = Buffer.from(v.raw);
  raw[554] = d.nrCopies;
  try {
    await writeObject(c.req, vidToVdiOid(v.vid), raw, 0, {
      copies: old,
      copyPolicy: h.copyPolicy,
      direct: true,
    });
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    err(`Overwrite the vdi object's header of ${name} failure while setting its redundancy level.`);
    return EXIT_FAILURE;
  }
  const ah = Header.req(Op.ALTER_VDI_COPY);
  ah.b.writeUInt32LE(v.vid >>> 0, 20);
  ah.b[24] = d.nrCopies;
  ah.b[26] = d.copyPolicy;
  ah.b[27] = h.blockSizeShift;
  const rsp = await c.exec(ah);
  if (rsp.hdr.result === Res.SUCCESS) {
    err(`${name}'s redundancy level is set to ${d.nrCopies}, the old one was ${old}.`);
    return EXIT_SUCCESS;
  }
  if (rsp.hdr.result === Res.INVALID_PARMS || rsp.hdr.result === Res.NO_SUPPORT) {
    // A sheep without ALTER_VDI_COPY: put the old header back so nothing has changed.
    try {
      await writeObject(c.req, vidToVdiOid(v.vid), v.raw, 0, {
        copies: old,
        copyPolicy: h.copyPolicy,
        direct: true,
      });
    } catch (e) {
      if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
      err(`Failed to restore the vdi object's header of ${name}: ${strerror(e.code)}`);
    }
    err(
      `Changing ${name}'s redundancy level is not supported: the sheep daemons do not implement ALTER_VDI_COPY ` +
        `(${strerror(rsp.hdr.result)}). Nothing was changed.`,
    );
    return EXIT_FAILURE;
  }
  err(`Response's result: ${strerror(rsp.hdr.result)}`);
  err(`Changing ${name}'s redundancy level failure.`);
  return EXIT_FAILURE;
}

// vdi lock

interface VdiState {
  vid: number;
  lockState: number;
  lockOwner: SdNode;
  nrParticipants: number;
  participantsState: number[];
  participants: SdNode[];
}

function nodeIdToNode(b: Buffer, off: number): SdNode {
  return {
    addr: Buffer.from(b.subarray(off, off + 16)),
    port: b.readUInt16LE(off + 16),
    ioAddr: Buffer.alloc(16),
    ioPort: 0,
    nrVnodes: 0,
    zone: 0,
    space: 0n,
  };
}

async function getVdiState(c: Ctx): Promise<VdiState[] | null> {
  let count = 512;
  for (;;) {
    const rsp = await c.exec(Header.req(Op.GET_VDI_COPIES, { dataLength: count * VDI_STATE_SIZE }));
    if (rsp.hdr.result === Res.BUFFER_SMALL) {
      count *= 2;
      continue;
    }
    if (rsp.hdr.result !== Res.SUCCESS) {
      err(`failed to execute SD_OP_GET_VDI_COPIES: ${strerror(rsp.hdr.result)}`);
      return null;
    }
    const out: VdiState[] = [];
    for (let off = 0; off + VDI_STATE_SIZE <= rsp.data.length; off += VDI_STATE_SIZE) {
      const b = rsp.data;
      const nr = Math.min(b.readUInt32LE(off + 60), 31);
      const ps: number[] = [], pn: SdNode[] = [];
      for (let j = 0; j < nr; j++) {
        ps.push(b.readUInt32LE(off + 64 + 4 * j));
        pn.push(nodeIdToNode(b, off + 188 + 40 * j));
      }
      out.push({
        vid: b.readUInt32LE(off),
        lockState: b.readUInt32LE(off + 16),
        lockOwner: nodeIdToNode(b, off + 20),
        nrParticipants: nr,
        participantsState: ps,
        participants: pn,
      });
    }
    return out;
  }
}

const LOCK_STATE_UNLOCKED = 1, LOCK_STATE_LOCKED = 2, LOCK_STATE_SHARED = 3;

async function lockList(c: Ctx): Promise<number> {
  const vs = await getVdiState(c);
  const list = await parseVdi(c, false);
  if (!list) return EXIT_SUCCESS;
  out("VDI | owner node\n");
  for (const s of vs ?? []) {
    if (s.lockState === LOCK_STATE_UNLOCKED) continue;
    const v = list.find((x) => x.vid === s.vid);
    const vname = v ? v.name : "";
    if (s.lockState === LOCK_STATE_LOCKED) {
      out(`${vname} | ${nodeString(s.lockOwner)}\n`);
    } else {
      let line = `${vname} |`;
      for (let j = 0; j < s.nrParticipants; j++) {
        line += ` ${nodeString(s.participants[j])}`;
        const st = s.participantsState[j];
        line += st === 1
          ? "(modified)"
          : st === 2
          ? "(shared)"
          : st === 3
          ? "(invalidated)"
          : `(UNKNOWN ${st}, BUG!)`;
      }
      out(line + "\n");
    }
  }
  return EXIT_SUCCESS;
}

async function lockUnlock(c: Ctx): Promise<number> {
  const name = c.arg()!;
  checkVdiName(name);
  // the working VDI of that name (snapshots share the name and come first in VID order)
  const r = await findVdiName(c, name, 0, "");
  if (r.result !== Res.SUCCESS) {
    err(`VDI: ${name} not found`);
    return EXIT_SYSFAIL;
  }
  const v = { vid: r.vid };
  const vs = await getVdiState(c);
  if (!vs) return EXIT_SYSFAIL;
  for (const s of vs) {
    if (s.vid !== v.vid) continue;
    let type: number;
    switch (s.lockState) {
      case LOCK_STATE_UNLOCKED:
        err(`VDI: ${name} is not locked`);
        return EXIT_SYSFAIL;
      case LOCK_STATE_LOCKED:
        type = 0;
        break;
      case LOCK_STATE_SHARED:
        type = 1;
        break;
      default:
        err(`VDI: ${name} unknown lock state`);
        return EXIT_SYSFAIL;
    }
    const h = Header.req(Op.RELEASE_VDI);
    h.baseVdiId = v.vid;
    h.lockType = type;
    await c.exec(h);
    return EXIT_SUCCESS;
  }
  return EXIT_SYSFAIL;
}

function vdiLock(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, { list: lockList, unlock: lockUnlock });
}

// vdi check (replicated VDIs: SHA-1 majority vote via GET_HASH, repair with REPAIR_REPLICA)

async function checkObject(c: Ctx, oid: bigint, nrCopies: number): Promise<void> {
  const copies = Math.min(nrCopies, c.zones);
  const targets = ring(c).placeObject(oid, copies);
  const found: { node: SdNode; hash: string | null }[] = [];
  for (const n of targets) {
    const h = Header.req(Op.GET_HASH);
    h.oid = oid;
    h.tgtEpoch = c.epoch;
    h.epoch = c.epoch;
    const rsp = await c.exec(h, undefined, n);
    if (rsp.hdr.result === Res.SUCCESS) {
      found.push({ node: n, hash: rsp.hdr.digest.toString("hex") });
    } else if (rsp.hdr.result === Res.NO_OBJ) found.push({ node: n, hash: null });
    else {
      err(`failed to read ${hex(oid)}, ${strerror(rsp.hdr.result)}`);
      throw new Exit(EXIT_FAILURE);
    }
  }
  const votes = new Map<string, number>();
  for (const f of found) if (f.hash) votes.set(f.hash, (votes.get(f.hash) ?? 0) + 1);
  if (votes.size === 0) {
    err(`no node has ${hex(oid)}`);
    return;
  }
  let best = "", bestN = 0;
  for (const [h, n] of votes) {
    if (n > bestN) {
      best = h;
      bestN = n;
    }
  }
  const present = found.filter((f) => f.hash).length;
  if (bestN * 2 <= present && votes.size > 1) {
    err(`no majority of ${hex(oid)}`);
    return;
  }
  const src = found.find((f) => f.hash === best)!.node;
  for (const f of found) {
    if (f.hash === best) continue;
    const h = Header.req(Op.REPAIR_REPLICA);
    h.epoch = c.epoch;
    h.oid = oid;
    src.addr.copy(h.b, 24, 0, 16);
    h.b.writeUInt16LE(src.port, 40);
    if (await c.light(h, f.node)) {
      out(f.hash ? `fixed replica ${hex(oid)}\n` : `fixed missing ${hex(oid)}\n`);
    } else {err(
        `failed to repair object ${oidHex(oid)} from ${nodeHostPort(src)} to ${
          nodeHostPort(f.node)
        }`,
      );}
  }
}

async function doVdiCheck(c: Ctx, h: InodeHeader, slots: SlotMap): Promise<number> {
  if (h.copyPolicy) {
    const d = (h.copyPolicy >> 4) * 2, p = h.copyPolicy & 0xf;
    if (c.zones < d + p) {
      err("ABORT: Not enough active zones for consistency-checking erasure coded VDI");
      return EXIT_FAILURE;
    }
  }
  const oids: bigint[] = [vidToVdiOid(h.vdiId), ...(slots.leafOids?.() ?? [])];
  for (const [idx, vid] of slots.entries()) oids.push(vidToDataOid(vid, idx));
  const os = BigInt(2 ** h.blockSizeShift);
  const total = h.vdiSize;
  let done = 0n;
  const lim = new Limiter(8);
  await Promise.all(oids.map((oid) =>
    lim.run(async () => {
      if (isErasureOid(oid, h.copyPolicy)) {
        const io = { exec: c.exec.bind(c), epoch: c.epoch, out, err };
        const place = ring(c).placeObject(oid, Math.min(h.nrCopies, c.zones));
        const os = 2 ** h.blockSizeShift;
        if (!await checkErasureObject(io, oid, h.copyPolicy, os, place)) {
          throw new Exit(EXIT_FAILURE);
        }
      } else await checkObject(c, oid, h.nrCopies);
      done += os;
      showProgress(done > total ? total : done, total, false);
    })
  ));
  showProgress(total, total, false);
  out(`finish check&repair ${h.name}\n`);
  return EXIT_SUCCESS;
}

async function doVdiCheckExist(c: Ctx, h: InodeHeader, slots: SlotMap): Promise<number> {
  const copies = Math.min(h.nrCopies, c.zones);
  const per = new Map<SdNode, bigint[]>();
  for (const n of c.nodes) per.set(n, []);
  const add = (oid: bigint) => {
    for (const n of ring(c).placeObject(oid, copies)) per.get(n)!.push(oid);
  };
  add(vidToVdiOid(h.vdiId));
  for (const oid of slots.leafOids?.() ?? []) add(oid);
  for (const [idx, vid] of slots.entries()) add(vidToDataOid(vid, idx));
  let total = 0;
  for (const [n, oids] of per) {
    const payload = Buffer.alloc(oids.length * 8);
    oids.forEach((o, i) => payload.writeBigUInt64LE(o, i * 8));
    const rsp = await c.exec(
      Header.req(Op.OIDS_EXIST, { flags: Flag.CMD_WRITE | Flag.CMD_PIGGYBACK }),
      payload,
      n,
    );
    const k = Math.floor(rsp.data.length / 8);
    total += k;
    for (let i = 0; i < k; i++) {
      out(`[${nodeHostPort(n)}] oid ${oidHex(rsp.data.readBigUInt64LE(i * 8))} is missing.\n`);
    }
  }
  if (total === 0) {
    out(`${h.name} is fine, no object is missing.\n`);
    return EXIT_SUCCESS;
  }
  out(`${h.name} lost ${total} object(s).\n`);
  return EXIT_FAILURE;
}

async function vdiCheck(c: Ctx): Promise<number> {
  const name = c.arg()!;
  let v: VdiObj;
  try {
    v = await readVdiObj(c, name, c.vdi.snapshotId, c.vdi.snapshotTag, true);
  } catch (e) {
    if (e instanceof Exit) err(`FATAL: no inode objects`);
    throw e;
  }
  return c.vdi.exist ? doVdiCheckExist(c, v.header, v.slots) : doVdiCheck(c, v.header, v.slots);
}

// vdi backup / restore (farm-backup.md §2)

const VDI_BACKUP_FORMAT_VERSION = 1;
const VDI_BACKUP_MAGIC = 0x11921192;
const SECTOR_SIZE = 512;

async function vdiBackup(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const d = c.vdi;
  if ((!d.snapshotId && !d.snapshotTag) || (!d.fromSnapshotId && !d.fromSnapshotTag)) {
    err("Please specify snapshots with '-F' and '-s' options");
    return EXIT_USAGE;
  }
  const from = await readVdiObj(c, name, d.fromSnapshotId, d.fromSnapshotTag, true);
  const to = await readVdiObj(c, name, d.snapshotId, d.snapshotTag, true);
  const os = 2 ** from.header.blockSizeShift;
  const nrObjs = countDataObjs(to.header);
  const hdr = Buffer.alloc(8);
  hdr.writeUInt32LE(VDI_BACKUP_FORMAT_VERSION, 0);
  hdr.writeUInt32LE(VDI_BACKUP_MAGIC, 4);
  const put = async (b: Buffer) => {
    try {
      await outAsync(b);
    } catch (e) {
      err(`failed to write backup data, ${errnoText(e)}`);
      throw new Exit(EXIT_SYSFAIL);
    }
  };
  await put(hdr);
  const readOrZero = async (vid: number, idx: number): Promise<Buffer> => {
    if (!vid) return Buffer.alloc(os);
    try {
      return await readObject(c.req, vidToDataOid(vid, idx), os, 0, true);
    } catch (e) {
      if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
      err(`Failed to read object ${hex(vidToDataOid(vid, idx))} ${strerror(e.code)}`);
      err(`Failed to read object ${hex(vid)}, ${idx}`);
      throw new Exit(EXIT_FAILURE);
    }
  };
  // prefetch a few objects ahead, emit in index order
  const WINDOW = 4;
  const pending: { idx: number; p: Promise<[Buffer, Buffer]> }[] = [];
  let idx = 0;
  const fill = () => {
    while (pending.length < WINDOW && idx < nrObjs) {
      const i = idx++;
      const f = from.slots.get(i), t = to.slots.get(i);
      if (!f && !t) continue;
      const p = Promise.all([readOrZero(t, i), readOrZero(f, i)]);
      p.catch(() => {});
      pending.push({ idx: i, p });
    }
  };
  fill();
  while (pending.length) {
    const { idx: i, p } = pending.shift()!;
    const [toData, fromData] = await p;
    fill();
    let offset = 0, length = os;
    while (
      length > 0 &&
      toData.compare(fromData, offset, offset + SECTOR_SIZE, offset, offset + SECTOR_SIZE) === 0
    ) {
      offset += SECTOR_SIZE;
      length -= SECTOR_SIZE;
    }
    let tail = os - SECTOR_SIZE;
    while (
      length > 0 &&
      toData.compare(fromData, tail, tail + SECTOR_SIZE, tail, tail + SECTOR_SIZE) === 0
    ) {
      tail -= SECTOR_SIZE;
      length -= SECTOR_SIZE;
    }
    if (length === 0) continue;
    const rec = Buffer.alloc(16);
    rec.writeUInt32LE(i, 0);
    rec.writeUInt32LE(offset, 4);
    rec.writeUInt32LE(length, 8);
    await put(rec);
    await put(toData.subarray(offset, offset + length));
  }
  const end = Buffer.alloc(16);
  end.writeUInt32LE(0xffffffff, 0);
  await put(end);
  return EXIT_SUCCESS;
}

async function doRestore(c: Ctx, name: string, snapid: number, tag: string): Promise<number> {
  const hdr = await c.stdin.read(8);
  if (hdr.length !== 8) err("failed to read backup header, Success");
  if (
    hdr.length !== 8 || hdr.readUInt32LE(0) !== VDI_BACKUP_FORMAT_VERSION ||
    hdr.readUInt32LE(4) !== VDI_BACKUP_MAGIC
  ) {
    err("The backup file is corrupted");
    return EXIT_SYSFAIL;
  }
  let snap: VdiObj;
  try {
    snap = await readVdiObj(c, name, snapid, tag, true);
  } catch (e) {
    if (e instanceof Exit) return e.code;
    throw e;
  }
  const h = snap.header;
  const vid = await doVdiCreate(
    c,
    name,
    h.vdiSize,
    snap.vid,
    false,
    h.nrCopies,
    h.copyPolicy,
    h.storePolicy,
    h.blockSizeShift,
  );
  if (vid === null) {
    err("Failed to read VDI");
    return EXIT_FAILURE;
  }
  for (;;) {
    const rec = await c.stdin.read(16);
    if (rec.length !== 16) {
      err("failed to read backup data");
      return EXIT_SYSFAIL;
    }
    const idx = rec.readUInt32LE(0), offset = rec.readUInt32LE(4), length = rec.readUInt32LE(8);
    if (idx === 0xffffffff) return EXIT_SUCCESS;
    const data = await c.stdin.read(length);
    if (data.length !== length) {
      err("failed to read backup data");
      return EXIT_SYSFAIL;
    }
    const parentVid = snap.slots.get(idx);
    try {
      await writeObject(c.req, vidToDataOid(vid, idx), data, offset, {
        create: true,
        cowOid: parentVid ? vidToDataOid(parentVid, idx) : 0n,
        copies: h.nrCopies,
        copyPolicy: h.copyPolicy,
        direct: true,
      });
      const slot = Buffer.alloc(4);
      slot.writeUInt32LE(vid, 0);
      await writeObject(c.req, vidToVdiOid(vid), slot, SD_INODE_HEADER_SIZE + 4 * idx, {
        copies: h.nrCopies,
        copyPolicy: h.copyPolicy,
        direct: true,
      });
    } catch (e) {
      if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
      err(`Failed to write object: ${strerror(e.code)}`);
      err("failed to restore backup");
      await doVdiDelete(c, name, 0, "");
      return EXIT_FAILURE;
    }
  }
}

async function vdiRestore(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const d = c.vdi;
  if (!d.snapshotId && !d.snapshotTag) {
    err("We can restore a backup file only to snapshots");
    err("Please specify the '-s' option");
    return EXIT_USAGE;
  }
  try {
    await readVdiObj(c, name, d.snapshotId, d.snapshotTag, false);
  } catch (e) {
    if (e instanceof Exit) {
      err(`Snapshot ID ${d.snapshotId} or tag ${d.snapshotTag} doesn't exist`);
      return e.code;
    }
    throw e;
  }
  const current = await readVdiObj(c, name, 0, "", false);
  try {
    await readObject(c.req, vidToVdiOid(current.header.parentVdiId), SD_INODE_HEADER_SIZE, 0, true);
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    out("error\n");
    return EXIT_FAILURE;
  }
  if (process.stdin.isTTY) {
    err("stdin must be pipe");
    return EXIT_USAGE;
  }
  await doVdiDelete(c, name, 0, "");
  let ret = await doRestore(c, name, d.snapshotId, d.snapshotTag);
  // recreate the working VDI on top of its old parent (the restored VDI becomes a snapshot)
  const ch = current.header;
  const r = await doVdiCreate(
    c,
    name,
    ch.vdiSize,
    ch.parentVdiId,
    true,
    ch.nrCopies,
    ch.copyPolicy,
    ch.storePolicy,
    ch.blockSizeShift,
  );
  if (r === null) {
    err("failed to resume the current vdi");
    ret = EXIT_FAILURE;
  }
  return ret;
}

// ---------------------------------------------------------------------------------------------
// node commands

async function nodeList(c: Ctx): Promise<number> {
  if (!c.raw) out(NODE_LIST_HEADER);
  c.nodes.forEach((n, i) => out(nodeListRow(i, n, c.raw)));
  return EXIT_SUCCESS;
}

async function nodeInfo(c: Ctx): Promise<number> {
  if (!c.raw) out(NODE_INFO_HEADER);
  let success = 0, totalSize = 0n, totalAvail = 0n;
  for (let i = 0; i < c.nodes.length; i++) {
    let ok = false, size = 0n, free = 0n;
    try {
      const rsp = await c.exec(Header.req(Op.STAT_SHEEP), undefined, c.nodes[i]);
      size = rsp.hdr.storeSize;
      free = rsp.hdr.storeFree;
      if (rsp.hdr.result === Res.SUCCESS) ok = true;
      else err(`Response's result: ${strerror(rsp.hdr.result)}`);
    } catch (e) {
      if (!(e instanceof NetworkError)) throw e;
    }
    if (ok) {
      out(nodeInfoRow(i, size, free, c.raw));
      success++;
      totalSize += size;
      totalAvail += free;
    }
  }
  if (success === 0) {
    err("Cannot get information from any nodes");
    return EXIT_SYSFAIL;
  }
  const list = await parseVdi(c, false);
  if (!list) return EXIT_SYSFAIL;
  let vdiTotal = 0n;
  for (const v of list) if (!isSnap(v.header)) vdiTotal += v.header.vdiSize;
  out(nodeInfoTotal(totalSize, totalAvail, vdiTotal, c.raw));
  return EXIT_SUCCESS;
}

async function nodeKill(c: Ctx): Promise<number> {
  let target: SdNode | null = null;
  let local = false;
  if (c.node.local) local = true;
  const p = c.arg();
  if (p !== undefined) {
    if (local) {
      err("don't use -l option and specify node id at the same time");
      throw new Exit(EXIT_USAGE);
    }
    if (!isNumeric(p)) {
      err(`Invalid node id '${p}', please specify a numeric value`);
      throw new Exit(EXIT_USAGE);
    }
    const id = Number.parseInt(p, 10);
    if (id < 0 || id >= c.nodes.length) {
      err(`Invalid node id '${id}'`);
      throw new Exit(EXIT_USAGE);
    }
    target = c.nodes[id];
  }
  if (!target && !local) {
    err("please specify -l option or node id");
    throw new Exit(EXIT_USAGE);
  }
  const ok = await c.light(Header.req(Op.KILL_NODE), target ?? undefined);
  if (!ok) {
    err("Failed to execute request");
    throw new Exit(EXIT_FAILURE);
  }
  return EXIT_SUCCESS;
}

interface RecoveryState {
  inRecovery: number;
  state: number;
  nrFinished: bigint;
  nrTotal: bigint;
}

function decodeRecoveryState(b: Buffer): RecoveryState {
  const z = Buffer.alloc(24);
  b.copy(z, 0, 0, Math.min(24, b.length));
  return {
    inRecovery: z[0],
    state: z.readUInt32LE(4),
    nrFinished: z.readBigUInt64LE(8),
    nrTotal: z.readBigUInt64LE(16),
  };
}

async function getRecoveryState(c: Ctx): Promise<RecoveryState | null> {
  const rsp = await c.exec(Header.req(Op.STAT_RECOVERY, { dataLength: 24 }));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(strerror(rsp.hdr.result));
    return null;
  }
  return decodeRecoveryState(rsp.data);
}

async function nodeRecoveryProgress(c: Ctx): Promise<number> {
  let st = await getRecoveryState(c);
  if (!st) return EXIT_SYSFAIL;
  if (!st.inRecovery) return EXIT_SUCCESS;
  for (;;) {
    const prevTotal = st.nrTotal;
    const next = await getRecoveryState(c);
    if (!next) return EXIT_SYSFAIL;
    st = next;
    if (!st.inRecovery) {
      showProgress(prevTotal, prevTotal, true);
      break;
    }
    switch (st.state) {
      case 0:
        out("\rpreparing a checked object list...");
        break;
      case 2:
        out("\rnotifying a completion of recovery...");
        break;
      default:
        showProgress(st.nrFinished, st.nrTotal, true);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  return EXIT_SUCCESS;
}

async function nodeRecoveryInfo(c: Ctx): Promise<number> {
  if (c.node.recoveryProgress) return nodeRecoveryProgress(c);
  if (!c.raw) out(RECOVERY_HEADER);
  for (let i = 0; i < c.nodes.length; i++) {
    const n = c.nodes[i];
    const rsp = await c.exec(Header.req(Op.STAT_RECOVERY, { dataLength: 24 }), undefined, n);
    if (rsp.hdr.result !== Res.SUCCESS) {
      err(strerror(rsp.hdr.result));
      return EXIT_FAILURE;
    }
    const st = decodeRecoveryState(rsp.data);
    if (st.inRecovery) out(recoveryRow(i, n, st.nrFinished, st.nrTotal, c.raw));
  }
  return EXIT_SUCCESS;
}

async function nodeRecoverySet(c: Ctx): Promise<number> {
  const a = c.arg(), b = c.arg(1);
  if (a === undefined || b === undefined) {
    err(`Invalid interval max (${a ?? "(null)"}), interval (${b ?? "(null)"})`);
    throw new Exit(EXIT_USAGE);
  }
  if (!/^[0-9]+$/.test(a) || BigInt(a) >= 0xffffffffn) {
    err(`Invalid max (${a})`);
    throw new Exit(EXIT_USAGE);
  }
  if (!/^[0-9]+$/.test(b) || BigInt(b) >= 0xffffffffffffffffn) {
    err(`Invalid interval (${b})`);
    throw new Exit(EXIT_USAGE);
  }
  const max = Number(a), interval = BigInt(b);
  if ((max === 0) !== (interval === 0n)) {
    err(`Invalid interval max (${max}), interval (${interval})`);
    throw new Exit(EXIT_USAGE);
  }
  const payload = Buffer.alloc(24);
  payload.writeUInt32LE(max, 0);
  payload.writeBigUInt64LE(interval, 8);
  const rsp = await c.exec(
    Header.req(Op.SET_RECOVERY, { flags: Flag.CMD_WRITE, dataLength: 24 }),
    payload,
  );
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request");
    return 255;
  }
  return EXIT_SUCCESS;
}

async function nodeRecoveryGet(c: Ctx): Promise<number> {
  const rsp = await c.exec(Header.req(Op.GET_RECOVERY, { dataLength: 24 }));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request");
    return 255;
  }
  const b = Buffer.alloc(24);
  rsp.data.copy(b, 0, 0, Math.min(24, rsp.data.length));
  err(`max (${b.readUInt32LE(0)}), interval (${b.readBigUInt64LE(8)})`);
  return EXIT_SUCCESS;
}

async function nodeRecovery(c: Ctx): Promise<number> {
  if (c.args.length === c.optind) {
    await updateNodeList(c);
    return nodeRecoveryInfo(c);
  }
  return genericSubcommand(c, c.sub.sub!, {
    info: nodeRecoveryInfo,
    "set-throttle": nodeRecoverySet,
    "get-throttle": nodeRecoveryGet,
  });
}

async function nodeMdInfoOne(c: Ctx, n?: SdNode): Promise<number> {
  const MD_INFO_SIZE = 263688;
  const rsp = await c.exec(Header.req(Op.MD_INFO, { dataLength: MD_INFO_SIZE }), undefined, n);
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`failed to get multi-disk information: ${strerror(rsp.hdr.result)}`);
    return EXIT_FAILURE;
  }
  const b = Buffer.alloc(MD_INFO_SIZE);
  rsp.data.copy(b, 0, 0, Math.min(MD_INFO_SIZE, rsp.data.length));
  const nr = Math.min(b.readInt32LE(263680), 64);
  const host = n ? nodeHostPort(n) : `${c.host}:${c.port}`;
  for (let i = 0; i < nr; i++) {
    const off = i * 4120;
    const idx = b.readInt32LE(off),
      free = b.readBigUInt64LE(off + 8),
      used = b.readBigUInt64LE(off + 16);
    const path = readFixedString(b, off + 24, 4096);
    const size = free + used;
    const ratio = Math.trunc((Number(used) / Number(size)) * 100) | 0;
    if (c.raw) {
      out(
        `${host} ${idx} ${strnumber(size, true)} ${strnumber(used, true)} ${
          strnumber(free, true)
        } ${ratio}% ${path}\n`,
      );
    } else {out(
        `${padLeft(String(idx), 2)}\t${strnumber(size)}\t${strnumber(used)}\t${strnumber(free)}\t${
          padLeft(String(ratio), 3)
        }%\t${path}\n`,
      );}
  }
  return EXIT_SUCCESS;
}

async function mdInfo(c: Ctx): Promise<number> {
  if (!c.raw) out("Id\tSize\tUsed\tAvail\tUse%\tPath\n");
  if (!c.node.allNodes) return nodeMdInfoOne(c);
  for (let i = 0; i < c.nodes.length; i++) {
    if (!c.raw) out(`Node ${i}:\n`);
    if (await nodeMdInfoOne(c, c.nodes[i]) !== EXIT_SUCCESS) return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

async function mdPlugUnplug(c: Ctx, plug: boolean): Promise<number> {
  if (!c.node.force) {
    await c.confirm(
      banner(
        plug
          ? "Caution! The directories to be plugged will be purged."
          : "Caution! Recovery will be triggered after unplugging.",
      ),
    );
  }
  const disks = c.arg()!;
  const payload = Buffer.concat([Buffer.from(disks, "utf8"), Buffer.alloc(1)]);
  const rsp = await c.exec(
    Header.req(plug ? Op.MD_PLUG : Op.MD_UNPLUG, { flags: Flag.CMD_WRITE }),
    payload,
  );
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request, look for sheep.log for more information");
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

function nodeMd(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, {
    info: mdInfo,
    plug: (cc) => mdPlugUnplug(cc, true),
    unplug: (cc) => mdPlugUnplug(cc, false),
  });
}

async function nodeStat(c: Ctx): Promise<number> {
  let last: bigint[] | null = null;
  for (;;) {
    const rsp = await c.exec(Header.req(Op.STAT, { dataLength: 120 }));
    if (rsp.hdr.result !== Res.SUCCESS) {
      err(`failed to get stat information: ${strerror(rsp.hdr.result)}`);
      return EXIT_FAILURE;
    }
    const b = Buffer.alloc(120);
    rsp.data.copy(b, 0, 0, Math.min(120, rsp.data.length));
    const s: bigint[] = [];
    for (let i = 0; i < 15; i++) s.push(b.readBigUInt64LE(i * 8));
    const [gAct, pAct, gTot, pTot, gRx, gTx, pRx, pTx, gRm, gRd, gWr, gFl, pRm, pRd, pWr] = s;
    const sn = (v: bigint) => strnumber(v, c.raw);
    if (c.node.watch) {
      if (!last) last = s;
      const l = last;
      out(
        (c.raw
          ? ""
          : "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD\tWRBW\tRDBW\tRPS\nClient\t") +
          `${gAct}\t${gTot}\t${gWr}\t${gRd}\t${gRm}\t${gFl}\t${sn(gRx)}\t${sn(gTx)}\t${
            sn(gRx - l[4])
          }\t${sn(gTx - l[5])}\t${gTot - l[2]}\n`,
      );
      out(
        (c.raw ? "" : "Peer\t") +
          `${pAct}\t${pTot}\t${pWr}\t${pRd}\t${pRm}\t0\t${sn(pRx)}\t${sn(pTx)}\t${
            sn(pRx - l[6])
          }\t${sn(pTx - l[7])}\t${pTot - l[3]}\n`,
      );
      last = s;
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    // upstream quirk: the Write column shows the read counter and vice versa
    out(
      (c.raw
        ? ""
        : "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD\nClient\t") +
        `${gAct}\t${gTot}\t${gRd}\t${gWr}\t${gRm}\t${gFl}\t${sn(gRx)}\t${sn(gTx)}\n`,
    );
    out(
      (c.raw ? "" : "Peer\t") +
        `${pAct}\t${pTot}\t${pRd}\t${pWr}\t${pRm}\t0\t${sn(pRx)}\t${sn(pTx)}\n`,
    );
    return EXIT_SUCCESS;
  }
}

async function logLevelSet(c: Ctx): Promise<number> {
  const s = c.arg()!;
  const level = LOG_LEVELS.indexOf(s);
  if (level < 0) {
    err(`invalid loglevel: ${s}`);
    err("available loglevels:");
    LOG_LEVELS.forEach((n, i) => err(`${n}\t(${i})`));
    return 255;
  }
  const payload = Buffer.alloc(4);
  payload.writeInt32LE(level);
  const rsp = await c.exec(Header.req(Op.SET_LOGLEVEL, { flags: Flag.CMD_WRITE }), payload);
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request");
    return 255;
  }
  return EXIT_SUCCESS;
}

async function logLevelGet(c: Ctx): Promise<number> {
  const rsp = await c.exec(Header.req(Op.GET_LOGLEVEL, { dataLength: 4 }));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request");
    return 255;
  }
  const level = rsp.data.length >= 4 ? rsp.data.readInt32LE(0) : -1;
  err(`${LOG_LEVELS[level] ?? "unknown loglevel"} (${level})`);
  return EXIT_SUCCESS;
}

async function logLevelList(_c: Ctx): Promise<number> {
  LOG_LEVELS.forEach((n, i) => err(`${n}\t(${i})`));
  return EXIT_SUCCESS;
}

function nodeLog(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, {
    level: (cc) =>
      genericSubcommand(cc, cc.sub.sub![0].sub!, {
        set: logLevelSet,
        get: logLevelGet,
        list: logLevelList,
      }),
  });
}

async function vnodesSet(c: Ctx): Promise<number> {
  const s = c.arg()!;
  const n = isNumeric(s) ? Number(s) : NaN;
  if (!(n >= 1 && n <= 65535)) {
    err(`Invalid number of vnodes '${s}': must be an integer between 1 and 65535`);
    throw new Exit(EXIT_USAGE);
  }
  const payload = Buffer.alloc(8);
  payload.writeInt32LE(n, 0);
  const rsp = await c.exec(Header.req(Op.SET_VNODES, { flags: Flag.CMD_WRITE }), payload);
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request");
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

function nodeVnodes(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, { set: vnodesSet });
}

// ---------------------------------------------------------------------------------------------
// cluster commands

async function clusterInfo(c: Ctx): Promise<number> {
  const st = await statCluster(c, c.nodes.length);
  out(clusterInfoText({
    result: st.result,
    logs: st.logs,
    hasData: st.hasData,
    verbose: c.verbose,
    raw: c.raw,
    diff: c.cluster.diff,
  }));
  return EXIT_SUCCESS;
}

async function listStore(c: Ctx): Promise<number> {
  const rsp = await c.exec(Header.req(Op.GET_STORE_LIST, { dataLength: 512 }));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`Restore failed: ${strerror(rsp.hdr.result)}`);
    return EXIT_FAILURE;
  }
  out("Available stores:\n---------------------------------------\n");
  out(readFixedString(rsp.data, 0, rsp.data.length) + "\n");
  return EXIT_SYSFAIL;
}

async function clusterFormat(c: Ctx): Promise<number> {
  const d = c.cluster;
  for (const n of c.nodes) {
    const rsp = await c.exec(
      Header.req(Op.CLUSTER_INFO, { dataLength: CLUSTER_INFO_SIZE }),
      undefined,
      n,
    );
    if (rsp.hdr.result !== Res.SUCCESS) {
      err(strerror(rsp.hdr.result));
      return EXIT_FAILURE;
    }
    const flags = rsp.data.length >= 18 ? rsp.data.readUInt16LE(16) : 0;
    if (n.nrVnodes !== 0) {
      if (flags & ClusterFlag.AUTO_VNODES && d.fixedVnodes) {
        err(
          "Can not apply the option of '-V', because there are vnode strategy of sheep is auto in the cluster",
        );
        return EXIT_FAILURE;
      } else if (!(flags & ClusterFlag.AUTO_VNODES) && !d.fixedVnodes) {
        err(
          "Need to specify the option of '-V', because there are vnode strategy of sheep is fixed in the cluster",
        );
        return EXIT_FAILURE;
      }
    }
  }
  if (d.copies > c.zones) {
    await c.confirm(
      `Number of copies (${d.copies}) is larger than number of zones (${c.zones}).\n` +
        "Are you sure you want to continue? [yes/no]: ",
    );
  }
  const rv = await c.exec(Header.req(Op.READ_VDIS, { dataLength: VDI_BITMAP_SIZE }));
  if (rv.hdr.result !== Res.SUCCESS) {
    err(strerror(rv.hdr.result));
    return EXIT_FAILURE;
  }
  const empty = !rv.data.some((b) => b !== 0);
  if (!empty && !d.force) await c.confirm(banner("Caution! The cluster is not empty."));
  const storeName = d.name || "plain";
  const payload = Buffer.concat([Buffer.from(storeName, "utf8"), Buffer.alloc(1)]);
  const h = Header.req(Op.MAKE_FS, { flags: Flag.CMD_WRITE });
  h.clusterCopies = d.copies;
  h.clusterCopyPolicy = d.copyPolicy;
  h.clusterBlockSizeShift = d.blockSizeShift;
  const now = Date.now();
  h.clusterCtime = (BigInt(Math.floor(now / 1000)) << 32n) | BigInt((now % 1000) * 1_000_000);
  let flags = 0;
  if (d.strict) flags |= ClusterFlag.STRICT;
  if (d.useLock) flags |= ClusterFlag.USE_LOCK;
  if (d.recycleVid) flags |= ClusterFlag.RECYCLE_VID;
  if (!d.fixedVnodes) flags |= ClusterFlag.AUTO_VNODES;
  if (d.avoidDiskfull) flags |= ClusterFlag.AVOID_DISKFULL;
  h.clusterFlags = flags;
  out(`using backend ${storeName} store\n`);
  const rsp = await c.exec(h, payload);
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`Format failed: ${strerror(rsp.hdr.result)}`);
    if (rsp.hdr.result === Res.NO_STORE) return listStore(c);
    return EXIT_SYSFAIL;
  }
  return EXIT_SUCCESS;
}

async function clusterShutdown(c: Ctx): Promise<number> {
  if (!await c.light(Header.req(Op.SHUTDOWN))) {
    err("failed to execute request");
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

const RECOVER_PRINT = "Caution! Please try starting all the cluster nodes normally before\n" +
  "running this command.\n\n" +
  "The cluster may need to be force recovered if:\n" +
  "  - the master node fails to start because of epoch mismatch; or\n" +
  "  - some nodes fail to start after a cluster shutdown.\n\n" +
  "Are you sure you want to continue? [yes/no]: ";

async function clusterForceRecover(c: Ctx): Promise<number> {
  if (!c.cluster.force) await c.confirm(RECOVER_PRINT);
  const rsp = await c.exec(
    Header.req(Op.FORCE_RECOVER, { dataLength: SD_NODE_SIZE * SD_MAX_NODES }),
  );
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`failed to execute request, ${strerror(rsp.hdr.result)}`);
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

async function clusterRecoverToggle(c: Ctx, enable: boolean): Promise<number> {
  if (!await c.light(Header.req(enable ? Op.ENABLE_RECOVER : Op.DISABLE_RECOVER))) {
    return EXIT_FAILURE;
  }
  out(`Cluster recovery: ${enable ? "enable" : "disable"}\n`);
  return EXIT_SUCCESS;
}

function clusterRecover(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, {
    force: clusterForceRecover,
    enable: (cc) => clusterRecoverToggle(cc, true),
    disable: (cc) => clusterRecoverToggle(cc, false),
  });
}

async function clusterReweight(c: Ctx): Promise<number> {
  return await c.light(Header.req(Op.REWEIGHT)) ? EXIT_SUCCESS : EXIT_FAILURE;
}

async function clusterCheck(c: Ctx): Promise<number> {
  const list = await parseVdi(c, true);
  if (!list) return EXIT_SYSFAIL;
  for (const v of list) {
    if (isSnap(v.header)) out(`fix snapshot ${v.name} (id: ${v.snapid}, tag: "${v.tag}")\n`);
    else out(`fix vdi ${v.name}\n`);
    const r = await doVdiCheck(c, v.header, v.slots!);
    if (r !== EXIT_SUCCESS) return r;
  }
  return EXIT_SUCCESS;
}

async function clusterAlterCopy(c: Ctx): Promise<number> {
  const d = c.cluster;
  if (d.copyPolicy !== 0) {
    err("Changing redundancy level of erasure coded vdi is not supported yet.");
    return EXIT_USAGE;
  }
  if (!d.copies) {
    d.copies = 3;
    out("The cluster's redundancy level is not specified, use 3 as default.\n");
  }
  if (!d.force && d.copies > c.nodes.length) {
    await c.confirm(
      `Number of copies (${d.copies}) is larger than number of nodes (${c.nodes.length}).\n` +
        "Are you sure you want to continue? [yes/no]: ",
    );
  }
  const rsp = await c.exec(Header.req(Op.CLUSTER_INFO, { dataLength: CLUSTER_INFO_SIZE }));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`Response's result: ${strerror(rsp.hdr.result)}`);
    return EXIT_FAILURE;
  }
  if (rsp.data.length >= 20 && rsp.data[19]) {
    err("The cluster's copy policy is erasure code, changing it is not supported yet.");
    return EXIT_FAILURE;
  }
  const old = rsp.data.length >= 19 ? rsp.data[18] : 0;
  if (old === d.copies) {
    err(`The cluster's redundancy level is already set to ${d.copies}, nothing changed.`);
    return EXIT_FAILURE;
  }
  if (!d.force) {
    await c.confirm(
      banner(
        "Caution! Changing cluster's redundancy level will affect",
        "all the VDIs to be created later.",
      ),
    );
  }
  const h = Header.req(Op.ALTER_CLUSTER_COPY);
  h.clusterCopies = d.copies;
  h.clusterCopyPolicy = d.copyPolicy;
  if (!await c.light(h)) {
    err("Changing the cluster's redundancy level failure.");
    return EXIT_FAILURE;
  }
  err(`The cluster's redundancy level is set to ${d.copies}, the old one was ${old}.`);
  return EXIT_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
// dispatch

const HANDLERS: Record<string, Handler> = {
  "vdi check": vdiCheck,
  "vdi create": vdiCreate,
  "vdi snapshot": vdiSnapshot,
  "vdi clone": vdiClone,
  "vdi delete": vdiDelete,
  "vdi rollback": vdiRollback,
  "vdi list": vdiList,
  "vdi tree": vdiTree,
  "vdi graph": vdiGraph,
  "vdi object": vdiObject,
  "vdi track": vdiTrack,
  "vdi setattr": vdiSetattr,
  "vdi getattr": vdiGetattr,
  "vdi resize": vdiResize,
  "vdi read": vdiRead,
  "vdi write": vdiWrite,
  "vdi backup": vdiBackup,
  "vdi restore": vdiRestore,
  "vdi alter-copy": vdiAlterCopy,
  "vdi lock": vdiLock,
  "node kill": nodeKill,
  "node list": nodeList,
  "node info": nodeInfo,
  "node recovery": nodeRecovery,
  "node md": nodeMd,
  "node stat": nodeStat,
  "node log": nodeLog,
  "node vnodes": nodeVnodes,
  "cluster info": clusterInfo,
  "cluster format": clusterFormat,
  "cluster shutdown": clusterShutdown,
  "cluster recover": clusterRecover,
  "cluster reweight": clusterReweight,
  "cluster check": clusterCheck,
  "cluster alter-copy": clusterAlterCopy,
};

/** str_to_addr(): IPv4/IPv6 literal or a resolvable host name. */
async function resolveAddr(s: string): Promise<string | null> {
  if (isIP(s)) return s;
  if (!s) return null;
  try {
    // sheep usually listens on IPv4; prefer it when a name has both kinds of address
    const rs = await dns.promises.lookup(s, { all: true });
    return (rs.find((r) => r.family === 4) ?? rs[0])?.address ?? null;
  } catch {
    return null;
  }
}

function parsePort(s: string): number | null {
  if (!isNumeric(s)) return null;
  const n = Number(s);
  return n >= 1 && n <= 65535 ? n : null;
}

/** strtol(s, &p, 10) with "whole string consumed" and value. */
function strtolFull(s: string): { ok: boolean; value: number } {
  const m = /^[ \t\n\v\f\r]*([+-]?\d+)$/.exec(s);
  if (!m) return { ok: false, value: 0 };
  return { ok: true, value: Number(m[1]) };
}

function blockSizeShiftOpt(opt: string): number {
  const m = /^[ \t\n\v\f\r]*([+-]?\d+)/.exec(opt);
  const shift = m ? Number(BigInt.asUintN(32, BigInt(m[1]))) & 0xff : 0;
  if (shift > 31) {
    err("Object Size is limited to 2^31. Please set shift bit lower than 31");
    throw new Exit(EXIT_FAILURE);
  } else if (shift < 20) {
    err("Object Size is larger than 2^20. Please set shift bit larger than 20");
    throw new Exit(EXIT_FAILURE);
  }
  return shift;
}

function vdiParser(c: Ctx, ch: string, opt: string): void {
  const d = c.vdi;
  switch (ch) {
    case "P":
      d.prealloc = true;
      break;
    case "n":
      d.noShare = true;
      break;
    case "i": {
      const m = opt.startsWith("0x")
        ? /^0x([0-9a-fA-F]+)/.exec(opt)
        : /^[ \t]*([+-]?\d+)/.exec(opt);
      if (!m) {
        err("The index must be a decimal integer or a hexadecimal integer started with 0x");
        throw new Exit(EXIT_FAILURE);
      }
      d.index = opt.startsWith("0x") ? parseInt(m[1], 16) : Number(m[1]);
      if (d.index < 0) d.index = 2 ** 64 + d.index; // uint64_t
      break;
    }
    case "s": {
      const r = strtolFull(opt);
      if (!r.ok) {
        d.snapshotId = 0;
        d.snapshotTag = Buffer.from(opt, "utf8").subarray(0, 255).toString("utf8");
      } else if (r.value === 0) {
        err("The snapshot id must be larger than zero");
        throw new Exit(EXIT_FAILURE);
      } else {
        d.snapshotId = r.value | 0;
      }
      break;
    }
    case "x":
      d.exclusive = true;
      break;
    case "d":
      d.delete = true;
      break;
    case "w":
      d.writeback = true;
      break;
    case "c": {
      const r = parseCopies(opt);
      if (!r) {
        err(invalidCopiesMessage(opt));
        throw new Exit(EXIT_FAILURE);
      }
      d.nrCopies = r.copies;
      d.copyPolicy = r.policy;
      break;
    }
    case "F": {
      const r = strtolFull(opt);
      if (!r.ok) {
        d.fromSnapshotId = 0;
        d.fromSnapshotTag = opt;
      } else d.fromSnapshotId = r.value;
      break;
    }
    case "f":
      d.force = true;
      break;
    case "y":
      d.storePolicy = 1;
      break;
    case "o": {
      const m = /^[ \t]*(?:0[xX])?([0-9a-fA-F]+)/.exec(opt);
      if (!m) {
        err("object id must be a hex integer");
        throw new Exit(EXIT_FAILURE);
      }
      d.oid = BigInt.asUintN(64, BigInt("0x" + m[1]));
      break;
    }
    case "e":
      d.exist = true;
      break;
    case "z":
      d.blockSizeShift = blockSizeShiftOpt(opt);
      break;
    case "R":
      d.reduceIdentical = true;
      break;
  }
}

function clusterParser(c: Ctx, ch: string, opt: string): void {
  const d = c.cluster;
  switch (ch) {
    case "b":
      d.name = Buffer.from(opt, "utf8").subarray(0, STORE_LEN - 1).toString("utf8");
      break;
    case "c": {
      const r = parseCopies(opt);
      if (!r) {
        err(invalidCopiesMessage(opt));
        throw new Exit(EXIT_FAILURE);
      }
      d.copies = r.copies;
      d.copyPolicy = r.policy;
      break;
    }
    case "f":
      d.force = true;
      break;
    case "l":
      d.useLock = true;
      break;
    case "m":
      d.multithread = true;
      d.strict = true;
      break; // upstream fallthrough
    case "t":
      d.strict = true;
      break;
    case "z":
      d.blockSizeShift = blockSizeShiftOpt(opt);
      break;
    case "V":
      d.fixedVnodes = true;
      break;
    case "R":
      d.recycleVid = true;
      break;
    case "d":
      d.diff = true;
      break;
    case "F":
      d.avoidDiskfull = true;
      break;
  }
}

function nodeParser(c: Ctx, ch: string): void {
  switch (ch) {
    case "A":
      c.node.allNodes = true;
      break;
    case "P":
      c.node.recoveryProgress = true;
      break;
    case "w":
      c.node.watch = true;
      break;
    case "l":
      c.node.local = true;
      break;
    case "f":
      c.node.force = true;
      break;
  }
}

async function run(argv: string[], version: string): Promise<number> {
  if (argv.length < 1) {
    out(mainUsage(version));
    return EXIT_SUCCESS;
  }
  const [cmdName, subName] = argv;
  const cmd = findCommand(cmdName);
  if (!cmd) {
    if (cmdName !== "help" && cmdName !== "--help" && cmdName !== "-h") {
      err(`Invalid command '${cmdName}'`);
      err("Try 'dog --help' for more information.");
      return EXIT_USAGE;
    }
    out(mainUsage(version));
    return EXIT_SUCCESS;
  }
  const sub = findSub(cmd, subName);
  if (!sub) {
    process.stderr.write(invalidSubcommand(cmd, subName));
    return EXIT_USAGE;
  }
  const start = performance.now();
  const c = new Ctx(cmd, sub);

  const envAddr = process.env.SHEEPDOG_DOG_ADDR;
  if (envAddr !== undefined) {
    const a = await resolveAddr(envAddr);
    if (!a) {
      err(`Invalid ip address ${envAddr}`);
      return EXIT_FAILURE;
    }
    c.host = a;
  }
  const envPort = process.env.SHEEPDOG_DOG_PORT;
  if (envPort !== undefined) {
    const p = parsePort(envPort);
    if (p === null) {
      err(`Invalid port number '${envPort}'`);
      return EXIT_USAGE;
    }
    c.port = p;
  }

  const parsed = parseSubArgs(cmd, sub, argv.slice(2));
  if (!parsed.ok) {
    err(parsed.message);
    err("Try 'dog --help' for more information.");
    return EXIT_USAGE;
  }
  for (const o of parsed.opts) {
    const v = typeof o.value === "string" ? o.value : "";
    switch (o.ch) {
      case "a": {
        const a = await resolveAddr(v);
        if (!a) {
          err(`Invalid ip address ${v}`);
          return EXIT_FAILURE;
        }
        c.host = a;
        continue;
      }
      case "p": {
        const p = parsePort(v);
        if (p === null) {
          err(`Invalid port number '${v}'`);
          return EXIT_USAGE;
        }
        c.port = p;
        continue;
      }
      case "r":
        c.raw = true;
        continue;
      case "v":
        c.verbose = true;
        continue;
      case "h":
        c.usage(EXIT_SUCCESS);
        break;
      case "T":
        c.elapsed = true;
        continue;
    }
    if (cmd.name === "vdi") vdiParser(c, o.ch, v);
    else if (cmd.name === "cluster") clusterParser(c, o.ch, v);
    else if (cmd.name === "node") nodeParser(c, o.ch);
  }
  c.args = parsed.positionals;

  try {
    if (sub.needNodeList) await updateNodeList(c);
    if (sub.needArg && c.args.length === 0) c.usage(EXIT_USAGE);
    const ret = await HANDLERS[`${cmd.name} ${sub.name}`](c);
    if (ret === EXIT_USAGE) c.usage(EXIT_USAGE);
    if (c.elapsed) {
      out(`\nElapsed time: ${cFixed((performance.now() - start) / 1000, 3)} seconds\n`);
    }
    return ret;
  } finally {
    c.closing = true;
    c.pool.close();
    c.stdin.close();
  }
}

/** Entry point of `dog`: returns the exit code; never throws for user or cluster errors. */
export async function dogMain(argv: string[]): Promise<number> {
  const onStdoutError = (e: Error) => {
    stdoutBroken = e;
  };
  process.stdout.on("error", onStdoutError);
  let code: number;
  try {
    code = await run(argv, VERSION);
  } catch (e) {
    if (e instanceof Exit) code = e.code;
    else if (e instanceof NetworkError) code = EXIT_SYSFAIL;
    else {
      err(`dog exits unexpectedly (${(e as Error)?.stack ?? String(e)}).`);
      code = EXIT_SYSFAIL;
    }
  }
  await flushStream(process.stdout);
  await flushStream(process.stderr);
  process.stdout.removeListener("error", onStdoutError);
  return code;
}
