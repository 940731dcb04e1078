// What every dog command shares: exit codes, stdout/stderr helpers and progress bars, the stdin
// reader, the command context (addressed sheep, parsed options, connection pool, prompts) and the
// node list that CMD_NEED_NODELIST commands load first.
import { ByteQueue } from "../core/byte-queue.ts";
import { EPOCH_LOG_SIZE, SD_MAX_NODES } from "../core/payloads.ts";
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import { ClientPool, NetworkError } from "../io/client.ts";
import { decodeNodes, nodeIp, type SdNode, sortNodes } from "../core/node.ts";
import { SD_NR_VDIS } from "../core/oid.ts";
import { ClusterFlag, Header, Op, Res, strerror } from "../core/proto.ts";
import { Ring } from "../core/ring.ts";
import { type Requester } from "../core/object-io.ts";
import { progressLine } from "./format.ts";
import { type CmdDef, subcommandUsage, type SubDef } from "./options.ts";

export const EXIT_SUCCESS = 0;
export const EXIT_FAILURE = 1;
export const EXIT_SYSFAIL = 2;
export const EXIT_EXISTS = 3;
export const EXIT_FULL = 4;
export const EXIT_MISSING = 5;
export const EXIT_USAGE = 64;

const SD_LISTEN_PORT = 7000;
export const SD_NODE_SIZE = 80;
export const VDI_BITMAP_SIZE = SD_NR_VDIS / 8;
export const NR_BATCHED_DISCARD = 128;
export const STORE_LEN = 16;
export const SD_MAX_VDI_ATTR_VALUE_LEN = 65536;
export const OLD_MAX_DATA_OBJS = 1 << 20;
export const TEXT_BOLD = "\x1b[1m";
export const TEXT_NORMAL = "\x1b[0m";

/** Leaves dogMain with an exit code (upstream's exit() calls). */
export class Exit extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

// ---------------------------------------------------------------------------------------------
// output

export function out(s: string | Buffer): void {
  process.stdout.write(s);
}

export function err(line: string): void {
  process.stderr.write(line.endsWith("\n") ? line : line + "\n");
}

let stdoutBroken: Error | null = null;

/** A broken stdout (EPIPE ...) makes the next write throw instead of an unhandled error event. */
export function onStdoutError(e: Error): void {
  stdoutBroken = e;
}

/**
 * Writes binary data to stdout honouring backpressure. `written` runs once the stream is done
 * with `b` (written or failed), so its memory may be reused: a write accepted is not yet out.
 */
export async function outAsync(b: Buffer, written?: () => void): Promise<void> {
  if (stdoutBroken) {
    written?.();
    throw stdoutBroken;
  }
  if (!process.stdout.write(b, written && (() => written()))) await drained();
  if (stdoutBroken) throw stdoutBroken;
}

/** Writes the pieces of one read to stdout in order, honouring backpressure (no joining copy). */
export async function outPartsAsync(parts: readonly Buffer[]): Promise<void> {
  for (let i = 0; i < parts.length; i++) {
    if (stdoutBroken) throw stdoutBroken;
    if (!process.stdout.write(parts[i])) await drained();
  }
  if (stdoutBroken) throw stdoutBroken;
}

function drained(): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      process.stdout.removeListener("drain", done);
      process.stdout.removeListener("error", done);
      resolve();
    };
    process.stdout.once("drain", done);
    process.stdout.once("error", done);
  });
}

export function flushStream(s: NodeJS.WriteStream): Promise<void> {
  return new Promise((resolve) => {
    try {
      if (!s.write("", () => resolve())) s.once("drain", () => resolve());
    } catch {
      resolve();
    }
    setTimeout(resolve, 2000).unref?.();
  });
}

export function isStdoutTty(): boolean {
  return !!process.stdout.isTTY;
}

function screenWidth(): number {
  return process.stdout.columns || 80;
}

export function showProgress(done: bigint, total: bigint, raw: boolean): void {
  if (!isStdoutTty()) return;
  out("\r" + progressLine(done, total, raw, screenWidth()));
  if (done === total) out("\n");
}

/** Transfers at least this long get a progress bar (when stderr is a terminal). */
const PROGRESS_MIN_BYTES = 8n * 1024n * 1024n;

/**
 * Progress of `vdi read|write|backup|restore|check` and the farm on stderr (stdout may carry
 * the data), only when stderr is a terminal, so scripts and CI logs stay quiet. Upstream's bar
 * text; redrawn at most ten times a second; drawn once more at completion, then quiet.
 * Hand-written: it is one line of upstream's format (format.ts progressLine).
 */
export class StderrProgress {
  private last = 0;
  private shown = false;
  private complete = false;
  private readonly on: boolean;
  constructor(private total: bigint, private readonly raw: boolean, minBytes = PROGRESS_MIN_BYTES) {
    this.on = !!process.stderr.isTTY && total >= minBytes;
  }
  update(done: bigint): void {
    if (!this.on || this.complete) return;
    const now = performance.now();
    if (done < this.total && now - this.last < 100) return;
    this.last = now;
    this.shown = true;
    const w = process.stderr.columns || 80;
    process.stderr.write(
      "\r" + progressLine(done > this.total ? this.total : done, this.total, this.raw, w),
    );
    if (done >= this.total) {
      this.complete = true;
      this.end();
    }
  }
  /** Ends the line (also after a failure, so the error message starts on its own line). */
  end(): void {
    if (this.shown) process.stderr.write("\n");
    this.shown = false;
  }
}

// ---------------------------------------------------------------------------------------------
// stdin

class StdinReader {
  private it: AsyncIterator<Buffer> | null = null;
  private readonly q = new ByteQueue();
  private eof = false;
  /** read() into a caller's buffer reads fd 0 itself until the stream is needed otherwise. */
  private direct = true;

  private async more(): Promise<boolean> {
    if (this.eof) return false;
    if (!this.it) this.it = (process.stdin as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    const r = await this.it.next();
    if (r.done) {
      this.eof = true;
      return false;
    }
    this.q.push(typeof r.value === "string" ? Buffer.from(r.value) : r.value);
    return true;
  }

  /** What is buffered, else the next chunk of input; null at EOF. */
  async chunk(): Promise<Buffer | null> {
    while (!this.q.length) if (!await this.more()) return null;
    return this.q.take(this.q.length);
  }

  /**
   * Reads up to n bytes (fewer only at EOF), like xread(). With `into` (at least n bytes) the
   * result is a view of it: fd 0 is read straight into it, without the stream's buffer per
   * 64-512 KiB read and the copy that joins them (the bulk of dog's CPU on `vdi write`).
   */
  async read(n: number, into?: Buffer): Promise<Buffer> {
    if (into && into.length >= n && this.direct && !this.it) return await this.readInto(n, into);
    while (this.q.length < n && await this.more());
    const b = this.q.take(Math.min(n, this.q.length));
    return into && into.length >= b.length ? into.subarray(0, b.copy(into, 0)) : b;
  }

  private async readInto(n: number, into: Buffer): Promise<Buffer> {
    let got = 0;
    while (got < n && !this.eof) {
      let k: number;
      try {
        k = await new Promise<number>((resolve, reject) =>
          fs.read(0, into, got, n - got, null, (e, r) => e ? reject(e) : resolve(r))
        );
      } catch (e) {
        // a non-blocking stdin (EAGAIN): the stream waits for it to be readable
        if ((e as { code?: string }).code !== "EAGAIN") throw e;
        this.direct = false;
        const rest = await this.read(n - got);
        rest.copy(into, got);
        return into.subarray(0, got + rest.length);
      }
      if (k === 0) this.eof = true;
      got += k;
    }
    return into.subarray(0, got);
  }

  /** fgets(buf, size): up to size-1 bytes or through the newline; null at EOF. */
  async gets(size: number): Promise<string | null> {
    for (;;) {
      const nl = this.q.peek(Math.min(this.q.length, size - 1)).indexOf(10);
      if (nl >= 0) return this.q.take(nl + 1).toString("latin1");
      if (this.q.length >= size - 1) return this.q.take(size - 1).toString("latin1");
      if (!await this.more()) {
        return this.q.length ? this.q.take(this.q.length).toString("latin1") : null;
      }
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

export type Handler = (c: Ctx) => Promise<number>;

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

interface BenchmarkCmdData {
  workqueue: string;
  force: boolean;
  total: number;
  threads: number;
}

export class Ctx {
  host = "127.0.0.1";
  port = SD_LISTEN_PORT;
  raw = false;
  verbose = false;
  elapsed = false;
  /** -j/--json: machine-readable output (json.ts) instead of upstream's text. */
  json = false;
  /** Results gathered for one JSON document by commands that query several sheep. */
  readonly jsonRows: unknown[] = [];
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
  benchmark: BenchmarkCmdData = { workqueue: "", force: false, total: 0, threads: 0 };
  private reported = new Set<string>();
  /** Set when the command is over: late failures of abandoned requests are not reported. */
  closing = false;

  constructor(readonly cmd: CmdDef, readonly sub: SubDef) {}

  /** Sends a request to the addressed sheep (or `to`). Connection failures print and throw. */
  async exec(
    hdr: Header,
    data?: Buffer,
    to?: SdNode,
    into?: Buffer,
  ): Promise<{ hdr: Header; data: Buffer }> {
    const host = to ? nodeIp(to) : this.host;
    const port = to ? to.port : this.port;
    try {
      return await this.pool.request(host, port, hdr, data, into);
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
    return (h, d, into) => this.exec(h, d, undefined, into);
  }

  arg(i = 0): string | undefined {
    return this.args[this.optind + i];
  }

  /** The nested subcommand being run (`node recovery set-throttle`): its usage is shown. */
  subsub?: string;

  usage(code: number): never {
    out(subcommandUsage(this.cmd, this.sub, this.subsub));
    throw new Exit(code);
  }

  /**
   * Anything but an answer starting with "yes" (end of input included) aborts with "aborted" and
   * EXIT_FAILURE. Upstream exits 0 there, so a script could not tell that nothing was done.
   */
  async confirm(message: string): Promise<void> {
    out(message);
    await flushStream(process.stdout);
    const input = await this.stdin.gets(8);
    if (input === null || input.slice(0, 3).toLowerCase() !== "yes") {
      if (input === null) out("\n");
      err("aborted");
      throw new Exit(EXIT_FAILURE);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// node list (CMD_NEED_NODELIST)

export async function updateNodeList(c: Ctx): Promise<void> {
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

export function ring(c: Ctx): Ring {
  if (!c.ring) c.ring = new Ring(c.nodes);
  return c.ring;
}

// ---------------------------------------------------------------------------------------------
// generic nested subcommands (do_generic_subcommand)

export async function genericSubcommand(
  c: Ctx,
  subs: SubDef[],
  handlers: Record<string, Handler>,
): Promise<number> {
  const name = c.arg();
  const s = subs.find((x) => x.name === name);
  if (!s || !handlers[s.name]) c.usage(EXIT_FAILURE);
  c.subsub = s.name;
  if (s.needNodeList) await updateNodeList(c);
  c.optind++;
  if (s.needArg && (c.args.length === c.optind || c.args[c.optind] === "")) c.usage(EXIT_USAGE);
  const ret = await handlers[s.name](c);
  if (ret === EXIT_USAGE) c.usage(EXIT_USAGE);
  return ret;
}
