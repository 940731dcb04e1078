// NBD server (fixed newstyle handshake, structured replies, base:allocation) over node:net.
// VMs attach to Sheepdog VDIs through it; the exports come from an ExportProvider.
import { Buffer } from "node:buffer";
import * as net from "node:net";
import { clearTimeout, setTimeout } from "node:timers";
import {
  Cmd,
  CmdFlag,
  encodeBlockStatus,
  encodeGreeting,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeSimpleReply,
  encodeStructuredError,
  encodeStructuredNone,
  Err,
  HandshakeFlag,
  HandshakeParser,
  type NbdRequest,
  ReplyFlag,
  RequestParser,
  StateFlag,
} from "../core/nbd.ts";
import { type BlockExport, type ExportProvider, nbdErrnoOf } from "../core/blockdev.ts";
import { BASE_ALLOCATION_ID, Negotiation } from "./nbd-handshake.ts";

export interface NbdServerOptions {
  host: string;
  port: number;
  provider: ExportProvider;
  log?: (msg: string) => void;
  /** Serve every export read-only (passed to the provider as readOnlyRequested). */
  readOnly?: boolean;
  /** Per-connection bound on bytes held for requests in progress (default 64 MiB). */
  maxInflightBytes?: number;
  /** Connections still negotiating after this long are dropped (default 60 s). */
  handshakeTimeoutMs?: number;
  /** Called as each command is answered (sheep --http metrics): milliseconds taken, bytes moved. */
  onCommand?: (cmd: number, ms: number, bytes: number, ok: boolean) => void;
}

export interface NbdServer {
  port: number;
  close(): Promise<void>;
}

/** Context id of base:allocation on a connection (the only context we offer). */
/** proto.md: write payloads under 32 MiB must not be treated as a denial of service. */
const MIN_WRITE_PAYLOAD_LIMIT = 32 * 1024 * 1024;
/** Replies below this size wait for the end of the turn and go out merged (one copy, one syscall). */
const COALESCE_LIMIT = 64 * 1024;
/** Beyond this many extents a structured read is sent as plain data. */
const MAX_READ_SEGMENTS = 64;
/** Bound on descriptors in one block status reply; clients ask again for the rest. */
const MAX_STATUS_DESCRIPTORS = 4096;
/** Bound on requests running at once per connection (requests without payload cost no bytes). */
const MAX_ACTIVE_REQUESTS = 1024;
/** Bound on bytes a client may send during the handshake before we stop reading. */
const HANDSHAKE_BUFFER_LIMIT = 256 * 1024;

const ALLOWED_FLAGS: Record<number, number> = {
  [Cmd.READ]: CmdFlag.FUA | CmdFlag.DF,
  [Cmd.WRITE]: CmdFlag.FUA,
  [Cmd.FLUSH]: CmdFlag.FUA,
  [Cmd.TRIM]: CmdFlag.FUA,
  [Cmd.WRITE_ZEROES]: CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO,
  [Cmd.BLOCK_STATUS]: CmdFlag.FUA | CmdFlag.REQ_ONE,
};

/**
 * Recycles buffers for write payloads that arrive split across socket reads. A steady stream
 * of large writes otherwise allocates a fresh buffer per request, and the garbage collector and
 * page faults on new memory cost more than the copy itself.
 */
class PayloadPool {
  private free = new Map<number, ArrayBuffer[]>();
  private owned = new WeakSet<ArrayBuffer>();
  private pooled = new WeakSet<ArrayBuffer>();
  private pooledBytes = 0;

  constructor(private readonly maxPooledBytes: number) {}

  alloc = (n: number): Buffer => {
    if (n < 64 * 1024) return Buffer.allocUnsafe(n);
    const cls = 2 ** Math.ceil(Math.log2(n));
    let ab = this.free.get(cls)?.pop();
    if (ab) {
      this.pooled.delete(ab);
      this.pooledBytes -= cls;
    } else {
      ab = new ArrayBuffer(cls);
      this.owned.add(ab);
    }
    return Buffer.from(ab, 0, n);
  };

  /** Only once the export is done with the buffer (its write promise settled). */
  release(b: Buffer): void {
    const ab = b.buffer as ArrayBuffer;
    if (!this.owned.has(ab) || this.pooled.has(ab)) return;
    if (this.pooledBytes + ab.byteLength > this.maxPooledBytes) return;
    let list = this.free.get(ab.byteLength);
    if (!list) this.free.set(ab.byteLength, list = []);
    list.push(ab);
    this.pooled.add(ab);
    this.pooledBytes += ab.byteLength;
  }
}

class ReplyError extends Error {
  constructor(readonly errno: number, message: string) {
    super(message);
  }
}

export function startNbdServer(opts: NbdServerOptions): Promise<NbdServer> {
  const log = opts.log ?? (() => {});
  const conns = new Set<Connection>();
  const pool = new PayloadPool(64 * 1024 * 1024);
  let closing: Promise<void> | null = null;
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    if (closing) {
      socket.destroy();
      return;
    }
    const c = new Connection(socket, opts, log, pool);
    conns.add(c);
    c.finished.then(() => conns.delete(c));
  });
  server.on("error", (e) => log(`nbd: server error: ${(e as Error).message}`));
  return new Promise((resolve, reject) => {
    const onErr = (e: Error) => reject(e);
    server.once("error", onErr);
    server.listen(opts.port, opts.host, () => {
      server.off("error", onErr);
      const addr = server.address() as net.AddressInfo;
      log(`nbd: listening on ${opts.host}:${addr.port}`);
      resolve({
        port: addr.port,
        close() {
          closing ??= (async () => {
            const stopped = new Promise<void>((r) => server.close(() => r()));
            for (const c of conns) c.shutdown();
            await Promise.all([...conns].map((c) => c.finished));
            await stopped;
          })();
          return closing;
        },
      });
    });
  });
}

class Connection {
  readonly finished: Promise<void>;
  private resolveFinished!: () => void;
  private readonly peer: string;
  private readonly cap: number;

  private phase: "handshake" | "transmission" | "done" = "handshake";
  private hs: HandshakeParser | null = new HandshakeParser();
  private rq: RequestParser | null = null;
  private busy = false; // a handshake option is being handled
  private readonly nego: Negotiation;

  private exp: BlockExport | null = null;
  private readOnly = false;
  private metaActive = false;

  private queue: NbdRequest[] = [];
  private qHead = 0;
  private queuedBytes = 0;
  private active = 0;
  private activeBytes = 0;
  /** Write-class requests in progress, which a later FLUSH waits for. */
  private writes = new Set<Promise<unknown>>();

  private inputEnded = false; // NBD_CMD_DISC, client half-close or server shutdown
  private closed = false; // socket is gone
  private paused = false;
  private flushScheduled = false;
  private timer: ReturnType<typeof setTimeout>; // handshake deadline, then the close deadline
  private needDrain = false; // socket.write() returned false; queue in outQ until 'drain'
  private outQ: Buffer[] = [];
  private outBytes = 0;
  private exportClosed = false;

  constructor(
    private readonly socket: net.Socket,
    private readonly opts: NbdServerOptions,
    private readonly log: (m: string) => void,
    private readonly pool: PayloadPool,
  ) {
    this.finished = new Promise((r) => (this.resolveFinished = r));
    this.peer = `${socket.remoteAddress}:${socket.remotePort}`;
    this.nego = new Negotiation(opts, {
      send: (b) => this.send(b),
      hardClose: (why) => this.hardClose(why),
      endInput: () => (this.inputEnded = true),
      isClosed: () => this.closed,
      enterTransmission: (exp, name) => this.enterTransmission(exp, name),
      log: (m) => this.log(`nbd: ${this.peer}: ${m}`),
    });
    this.cap = opts.maxInflightBytes ?? 64 * 1024 * 1024;
    this.timer = setTimeout(() => {
      if (this.phase === "handshake") this.hardClose("handshake timed out");
    }, opts.handshakeTimeoutMs ?? 60_000);
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("end", () => {
      this.inputEnded = true;
      this.maybeFinish();
    });
    socket.on("error", (e) => this.log(`nbd: ${this.peer}: ${e.message}`));
    socket.on("close", () => {
      clearTimeout(this.timer);
      this.closed = true;
      this.inputEnded = true;
      this.dropQueue();
      this.maybeFinish();
    });
    socket.on("drain", () => {
      this.needDrain = false;
      this.flushOut();
      this.pump();
    });
    this.send(encodeGreeting(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES));
  }

  /** Server shutdown: stop taking requests, let those in progress finish, then disconnect. */
  shutdown(): void {
    if (this.phase !== "transmission") {
      this.socket.destroy();
      return;
    }
    this.inputEnded = true;
    this.updateFlow();
    this.maybeFinish();
  }

  /**
   * Writes straight to the socket until it pushes back, then queues here until 'drain'. Keeping
   * our own queue avoids the runtime's writev path, which concatenates (copies) everything
   * buffered; here only runs of small replies are merged.
   */
  private send(b: Buffer): void {
    if (this.closed || this.socket.destroyed) return;
    if (b.length < COALESCE_LIMIT && !this.needDrain) {
      // Replies finishing in the same turn (write acks, errors, 4 KiB reads at a queue depth)
      // go out in one write: one syscall for many replies instead of one each.
      this.outQ.push(b);
      this.outBytes += b.length;
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        queueMicrotask(() => {
          this.flushScheduled = false;
          this.flushOut();
        });
      }
      return;
    }
    if (this.outQ.length > 0) this.flushOut(); // keep order within a reply
    if (!this.needDrain && this.outQ.length === 0) {
      if (!this.socket.write(b)) this.needDrain = true;
      return;
    }
    this.outQ.push(b);
    this.outBytes += b.length;
  }

  private flushOut(): void {
    const q = this.outQ;
    let i = 0;
    while (i < q.length && !this.needDrain && !this.closed && !this.socket.destroyed) {
      let b = q[i];
      let n = 1;
      if (b.length < COALESCE_LIMIT) {
        let total = b.length;
        while (i + n < q.length && total + q[i + n].length <= COALESCE_LIMIT) {
          total += q[i + n++].length;
        }
        if (n > 1) b = Buffer.concat(q.slice(i, i + n), total);
      }
      i += n;
      this.outBytes -= b.length;
      if (!this.socket.write(b)) this.needDrain = true;
    }
    this.outQ = i === q.length ? [] : q.slice(i);
  }

  /** Reply bytes not yet handed to the kernel. */
  private get pendingOut(): number {
    return this.socket.writableLength + this.outBytes;
  }

  private hardClose(why: string): void {
    this.log(`nbd: ${this.peer}: closing: ${why}`);
    this.inputEnded = true;
    this.socket.destroy();
  }

  // ----------------------------------------------------------------------------- input & flow

  private onData(chunk: Buffer): void {
    if (this.phase === "handshake") {
      this.hs!.push(chunk);
      if (!this.busy) void this.runHandshake();
      this.updateFlow();
    } else if (this.phase === "transmission") {
      this.onRequestBytes(chunk);
    }
  }

  private onRequestBytes(chunk: Buffer): void {
    if (this.inputEnded || chunk.length === 0) return;
    let reqs: NbdRequest[];
    try {
      reqs = this.rq!.push(chunk);
    } catch (e) {
      this.hardClose((e as Error).message);
      return;
    }
    for (const r of reqs) {
      if (r.type === Cmd.DISC) {
        // No reply; finish what is in flight, then close (anything after DISC is ignored).
        this.inputEnded = true;
        break;
      }
      this.queue.push(r);
      this.queuedBytes += this.cost(r);
    }
    this.pump();
    this.maybeFinish();
  }

  /** Bytes a request holds in memory while queued or running. */
  private cost(r: NbdRequest): number {
    if (r.type === Cmd.WRITE) return r.data ? r.data.length : 0;
    if (r.type === Cmd.READ) return Math.min(r.length, this.exp ? this.exp.maxBlock : 0);
    return 0;
  }

  /** Starts queued requests while the in-flight byte budget and the socket buffer allow. */
  private pump(): void {
    while (this.qHead < this.queue.length) {
      const r = this.queue[this.qHead];
      const c = this.cost(r);
      if (this.active > 0 && this.activeBytes + c > this.cap) break;
      if (this.active >= MAX_ACTIVE_REQUESTS) break;
      if (this.pendingOut > this.cap) break;
      this.queue[this.qHead++] = undefined as unknown as NbdRequest;
      this.queuedBytes -= c;
      this.active++;
      this.activeBytes += c;
      this.run(r)
        .catch((e) => this.log(`nbd: ${this.peer}: request failed: ${(e as Error).message}`))
        .finally(() => {
          this.active--;
          this.activeBytes -= c;
          this.pump();
          this.maybeFinish();
        });
    }
    if (this.qHead === this.queue.length) {
      this.queue = [];
      this.qHead = 0;
    } else if (this.qHead > 1024) {
      this.queue = this.queue.slice(this.qHead);
      this.qHead = 0;
    }
    this.updateFlow();
  }

  private dropQueue(): void {
    this.queue = [];
    this.qHead = 0;
    this.queuedBytes = 0;
  }

  /** Pauses reading from the socket while too much is pending, resumes when it drains. */
  private updateFlow(): void {
    if (this.closed) return;
    let pause: boolean;
    if (this.phase === "handshake") pause = this.hs!.buffered > HANDSHAKE_BUFFER_LIMIT;
    else if (this.phase === "transmission") {
      pause = this.inputEnded ||
        this.qHead < this.queue.length ||
        this.queuedBytes + this.activeBytes >= this.cap ||
        this.pendingOut > this.cap;
    } else pause = true;
    if (pause && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!pause && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  private maybeFinish(): void {
    if (this.phase === "done") return;
    if (!this.inputEnded || this.busy || this.active > 0) return;
    if (!this.closed && this.qHead < this.queue.length) return;
    this.phase = "done";
    if (!this.closed) {
      // Hand over anything still queued (bounded by the in-flight cap); end() flushes it.
      for (const b of this.outQ) this.socket.write(b);
      this.outQ = [];
      this.outBytes = 0;
      this.socket.end();
    }
    const exp = this.exp;
    if (exp && !this.exportClosed) {
      this.exportClosed = true;
      exp.close().catch((e) =>
        this.log(`nbd: ${this.peer}: closing export ${exp.name}: ${(e as Error).message}`)
      )
        .finally(() => this.resolveFinished());
    } else {
      this.resolveFinished();
    }
    // Make sure the socket goes away even if the peer never reads the rest of our replies.
    clearTimeout(this.timer);
    if (!this.closed) this.timer = setTimeout(() => this.socket.destroy(), 30_000);
  }

  // ----------------------------------------------------------------------------- handshake

  private async runHandshake(): Promise<void> {
    this.busy = true;
    try {
      while (this.phase === "handshake" && !this.inputEnded) {
        const ev = this.hs!.next();
        if (!ev) break;
        await this.nego.handle(ev);
      }
    } catch (e) {
      this.hardClose(`handshake: ${(e as Error).message}`);
    }
    this.busy = false;
    if (this.phase === "transmission") {
      const rest = this.hs!.takeRest();
      this.hs = null;
      this.onRequestBytes(rest);
    }
    this.updateFlow();
    this.maybeFinish();
  }

  private enterTransmission(exp: BlockExport, requestedName: string): void {
    this.exp = exp;
    this.readOnly = exp.readOnly || !!this.opts.readOnly;
    this.metaActive = this.nego.metaContextFor(requestedName);
    this.rq = new RequestParser({
      maxWritePayload: Math.max(exp.maxBlock, MIN_WRITE_PAYLOAD_LIMIT),
      alloc: this.pool.alloc,
    });
    this.phase = "transmission";
    clearTimeout(this.timer);
    if (this.closed) this.maybeFinish();
  }

  // ----------------------------------------------------------------------------- transmission

  private async run(r: NbdRequest): Promise<void> {
    const hook = this.opts.onCommand;
    const t0 = hook ? performance.now() : 0;
    let ok = true;
    try {
      switch (r.type) {
        case Cmd.READ:
          return await this.doRead(r);
        case Cmd.WRITE:
          return await this.doWrite(r);
        case Cmd.FLUSH:
          return await this.doFlush(r);
        case Cmd.TRIM:
          return await this.doTrim(r);
        case Cmd.WRITE_ZEROES:
          return await this.doWriteZeroes(r);
        case Cmd.BLOCK_STATUS:
          return await this.doBlockStatus(r);
        default:
          return this.replyError(r, Err.EINVAL, `unsupported command ${r.type}`);
      }
    } catch (e) {
      ok = false;
      if (e instanceof ReplyError) this.replyError(r, e.errno, e.message);
      else this.replyError(r, nbdErrnoOf(e), (e as Error)?.message ?? String(e));
    } finally {
      // BlockExport.write must not keep `data` past its promise, so the buffer can be reused.
      if (r.allocated && r.data) this.pool.release(r.data);
      hook?.(r.type, performance.now() - t0, r.length, ok);
    }
  }

  private replyOk(r: NbdRequest): void {
    this.send(encodeSimpleReply(r.handle, 0));
  }

  private replyError(r: NbdRequest, errno: number, message: string): void {
    if (this.nego.structured) {
      this.send(encodeStructuredError(ReplyFlag.DONE, r.handle, errno, message));
    } else this.send(encodeSimpleReply(r.handle, errno));
  }

  /** Validates flags, bounds and alignment; throws ReplyError. */
  private check(r: NbdRequest, kind: "read" | "write" | "trim" | "status"): BlockExport {
    const exp = this.exp!;
    const bad = r.flags & ~ALLOWED_FLAGS[r.type];
    if (bad) {
      throw new ReplyError(
        Err.EINVAL,
        `flags 0x${bad.toString(16)} not valid for command ${r.type}`,
      );
    }
    if (kind !== "read" && kind !== "status" && this.readOnly) {
      throw new ReplyError(Err.EPERM, `export ${exp.name} is read-only`);
    }
    if (r.offset + r.length > exp.size) {
      throw new ReplyError(
        kind === "write" ? Err.ENOSPC : Err.EINVAL,
        "request beyond the end of the export",
      );
    }
    if ((r.type === Cmd.READ || r.type === Cmd.WRITE) && r.length > exp.maxBlock) {
      throw new ReplyError(
        Err.EINVAL,
        `length ${r.length} exceeds the maximum block size ${exp.maxBlock}`,
      );
    }
    const m = exp.minBlock;
    if (
      m > 1 && kind !== "status" &&
      (r.offset % m !== 0 || (r.length % m !== 0 && r.offset + r.length !== exp.size))
    ) {
      throw new ReplyError(Err.EINVAL, `request not aligned to ${m} bytes`);
    }
    return exp;
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.writes.add(p);
    const done = () => this.writes.delete(p);
    p.then(done, done);
    return p;
  }

  private async doWrite(r: NbdRequest): Promise<void> {
    const exp = this.check(r, "write");
    if (r.length > 0) await this.track(exp.write(r.offset, r.data!, (r.flags & CmdFlag.FUA) !== 0));
    this.replyOk(r);
  }

  private async doFlush(r: NbdRequest): Promise<void> {
    const bad = r.flags & ~ALLOWED_FLAGS[Cmd.FLUSH];
    if (bad) throw new ReplyError(Err.EINVAL, `flags 0x${bad.toString(16)} not valid for flush`);
    // Every write that was issued on this connection before the flush must be durable too.
    if (this.writes.size) await Promise.allSettled([...this.writes]);
    await this.exp!.flush();
    this.replyOk(r);
  }

  private async doTrim(r: NbdRequest): Promise<void> {
    const exp = this.check(r, "trim");
    if (r.length > 0) {
      await this.track(exp.trim(r.offset, r.length));
      if (r.flags & CmdFlag.FUA) await exp.flush();
    }
    this.replyOk(r);
  }

  private async doWriteZeroes(r: NbdRequest): Promise<void> {
    const exp = this.check(r, "write");
    if (r.length > 0) {
      await this.track(exp.writeZeroes(r.offset, r.length, {
        noHole: (r.flags & CmdFlag.NO_HOLE) !== 0,
        fastZero: (r.flags & CmdFlag.FAST_ZERO) !== 0,
        fua: (r.flags & CmdFlag.FUA) !== 0,
      }));
    }
    this.replyOk(r);
  }

  private async doRead(r: NbdRequest): Promise<void> {
    if ((r.flags & CmdFlag.DF) && !this.nego.structured) {
      throw new ReplyError(Err.EINVAL, "DF without structured replies");
    }
    const exp = this.check(r, "read");
    const { handle, offset, length } = r;
    if (!this.nego.structured) {
      const data = length > 0 ? await exp.read(offset, length) : Buffer.alloc(0);
      if (data.length !== length) throw new ReplyError(Err.EIO, "short read from export");
      this.sendWithHeader(encodeSimpleReply(handle, 0), data);
      return;
    }
    if (length === 0) {
      this.send(encodeStructuredNone(handle));
      return;
    }
    const segs = (r.flags & CmdFlag.DF) ? null : await this.readSegments(exp, offset, length);
    if (!segs) {
      const data = await exp.read(offset, length);
      if (data.length !== length) throw new ReplyError(Err.EIO, "short read from export");
      this.sendWithHeader(encodeOffsetDataHeader(ReplyFlag.DONE, handle, offset, length), data);
      return;
    }
    // Read every data segment before sending anything, so an error can still be reported alone.
    const datas = await Promise.all(segs.map((s) => s.hole ? null : exp.read(s.offset, s.length)));
    for (let i = 0; i < segs.length; i++) {
      const d = datas[i];
      if (d && d.length !== segs[i].length) throw new ReplyError(Err.EIO, "short read from export");
    }
    if (this.closed) return;
    for (let i = 0; i < segs.length; i++) {
      const s = segs[i];
      const flags = i === segs.length - 1 ? ReplyFlag.DONE : 0;
      const d = datas[i];
      if (d) this.sendWithHeader(encodeOffsetDataHeader(flags, handle, s.offset, s.length), d);
      else this.send(encodeOffsetHole(flags, handle, s.offset, s.length));
    }
  }

  /**
   * Splits a read into data and zero segments from the export's allocation map; null means
   * "send it all as one data chunk" (no holes, too fragmented, or the map is unavailable).
   */
  private async readSegments(
    exp: BlockExport,
    offset: number,
    length: number,
  ): Promise<Array<{ offset: number; length: number; hole: boolean }> | null> {
    let extents: Array<{ length: number; hole: boolean; zero: boolean }>;
    try {
      extents = await exp.blockStatus(offset, length);
    } catch {
      return null;
    }
    const segs: Array<{ offset: number; length: number; hole: boolean }> = [];
    const end = offset + length;
    let pos = offset;
    for (const e of extents) {
      if (pos >= end) break;
      if (!(e.length > 0)) break;
      const n = Math.min(e.length, end - pos);
      const hole = e.zero; // reads as zeroes: no need to send the bytes
      const last = segs[segs.length - 1];
      if (last && last.hole === hole) last.length += n;
      else segs.push({ offset: pos, length: n, hole });
      pos += n;
    }
    if (pos < end) {
      const last = segs[segs.length - 1];
      if (last && !last.hole) last.length += end - pos;
      else segs.push({ offset: pos, length: end - pos, hole: false });
    }
    if (segs.length > MAX_READ_SEGMENTS || !segs.some((s) => s.hole)) return null;
    return segs;
  }

  /** Sends a header and payload; small ones are merged with the turn's other replies. */
  private sendWithHeader(header: Buffer, data: Buffer): void {
    this.send(header);
    if (data.length) this.send(data);
  }

  private async doBlockStatus(r: NbdRequest): Promise<void> {
    if (!this.metaActive) throw new ReplyError(Err.EINVAL, "no metadata context was negotiated");
    const exp = this.check(r, "status");
    if (r.length === 0) throw new ReplyError(Err.EINVAL, "zero-length block status");
    const extents = await exp.blockStatus(r.offset, r.length);
    const out: Array<{ length: number; flags: number }> = [];
    let covered = 0;
    for (const e of extents) {
      if (covered >= r.length || !(e.length > 0)) break;
      const n = Math.min(e.length, r.length - covered);
      const flags = (e.hole ? StateFlag.HOLE : 0) | (e.zero ? StateFlag.ZERO : 0);
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += n;
      else {
        if (out.length === MAX_STATUS_DESCRIPTORS) break;
        out.push({ length: n, flags });
      }
      covered += n;
    }
    if (out.length === 0) out.push({ length: r.length, flags: 0 });
    const reply = (r.flags & CmdFlag.REQ_ONE) ? out.slice(0, 1) : out;
    this.send(encodeBlockStatus(ReplyFlag.DONE, r.handle, BASE_ALLOCATION_ID, reply));
  }
}
