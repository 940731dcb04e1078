// Pipelined Sheepdog protocol client (protocol.md §2): many outstanding requests per TCP
// connection, replies matched by id. Used by dog, the NBD gateway and sheep-to-sheep traffic.
// Idle times and connect timeouts run on an injected Clock (core/clock.ts).
import { Buffer } from "node:buffer";
import * as net from "node:net";
import type { Clock, TimerHandle } from "../core/clock.ts";
import { type ClientPoolOptions, errnoText, NetworkError, type Reply } from "../core/client.ts";
import { EMPTY, Flag, Header, ProtocolError, SD_REQ_SIZE } from "../core/proto.ts";
import { realClock } from "./clock.ts";

export { type ClientPoolOptions, errnoText, NetworkError, type Reply } from "../core/client.ts";

interface Pending {
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
  /** Where the reply's payload goes when it fits. */
  into?: Buffer;
}

// Responses can carry a whole object (up to 2 GiB with shift 31) or an inode.
const MAX_RSP_PAYLOAD = 0x7fffffff;

/** Bytes one socket read may deliver into a connection's reused receive buffer. */
const RECV_BUFFER = 256 * 1024;

/**
 * Bun emulates `onread` over `data` events: each read arrives in a fresh buffer that is then
 * copied into the reused one (three copies of every byte with ours). There, replies are cut
 * straight out of the `data` buffers, which are never reused, so payloads may stay views of them.
 */
const FRESH_CHUNKS = "Bun" in globalThis;

/** Payloads smaller than this are copied out of a chunk rather than kept as views (a view
 * pins its whole chunk, up to 512 KiB, while the reply lives). */
const MIN_VIEW = 64 * 1024;

/**
 * A reply whose payload is kept as it arrived, in views of the socket's chunks: a caller that
 * streams them (`dog vdi read`) never copies; `data` joins them on first use.
 */
class PartsReply implements Reply {
  private joined: Buffer | null = null;
  constructor(
    readonly hdr: Header,
    private pieces: readonly Buffer[],
    private readonly len: number,
  ) {}
  get parts(): readonly Buffer[] {
    return this.pieces;
  }
  get data(): Buffer {
    return this.joined ??= this.pieces.length === 1
      ? this.pieces[0]
      : Buffer.concat(this.pieces as Buffer[], this.len);
  }
  set data(d: Buffer) {
    this.joined = d;
    this.pieces = [d];
  }
}

/**
 * Cuts replies out of the bytes the socket reads into its one reused buffer (`onread`): each
 * payload is copied once, into a buffer of its own size. A `data` event instead hands over a
 * fresh buffer per read, which the frame parser copied again into the payload: two new
 * allocations (and page faults) per byte received, most of dog's CPU time on `vdi read`.
 * Chunks that are never reused (`push` with `emitParts`) are kept as views instead.
 */
export class ReplyReader {
  private hdrBuf = Buffer.allocUnsafe(SD_REQ_SIZE);
  private hdrFill = 0;
  private hdr: Header | null = null;
  private data: Buffer = EMPTY;
  private fill = 0;
  /** Views of the current payload when it is kept in the chunks (data is EMPTY then). */
  private parts: Buffer[] | null = null;
  constructor(
    /** The buffer a reply's payload goes to (its first len bytes), or null for a new one. */
    private readonly target: (hdr: Header, len: number) => Buffer | null = () => null,
    private readonly maxPayload = MAX_RSP_PAYLOAD,
  ) {}

  /**
   * Consumes src[0, n) now (src is overwritten later); emits every reply completed. With
   * `emitParts`, src is never reused: payloads without a target stay views of it.
   */
  push(
    src: Uint8Array,
    n: number,
    emit: (hdr: Header, data: Buffer) => void,
    emitParts?: (hdr: Header, parts: Buffer[], len: number) => void,
  ): void {
    let p = 0;
    while (p < n) {
      if (this.hdr === null) {
        const k = Math.min(SD_REQ_SIZE - this.hdrFill, n - p);
        this.hdrBuf.set(src.subarray(p, p + k), this.hdrFill);
        this.hdrFill += k;
        p += k;
        if (this.hdrFill < SD_REQ_SIZE) return;
        const hdr = new Header(this.hdrBuf);
        this.hdrBuf = Buffer.allocUnsafe(SD_REQ_SIZE);
        this.hdrFill = 0;
        const len = hdr.dataLength;
        if (len > this.maxPayload) throw new ProtocolError(`payload length ${len} exceeds limit`);
        if (len === 0) {
          emit(hdr, EMPTY);
          continue;
        }
        this.hdr = hdr;
        this.fill = 0;
        const t = this.target(hdr, len);
        if (t && t.length >= len) this.data = t.subarray(0, len);
        else if (emitParts && len >= MIN_VIEW) {
          this.parts = [];
          this.data = EMPTY;
        } else this.data = Buffer.allocUnsafe(len);
      } else if (this.parts !== null) {
        const len = this.hdr.dataLength;
        const k = Math.min(len - this.fill, n - p);
        this.parts.push(Buffer.from(src.buffer, src.byteOffset + p, k));
        this.fill += k;
        p += k;
        if (this.fill < len) return;
        const hdr = this.hdr, parts = this.parts;
        this.hdr = null;
        this.parts = null;
        emitParts!(hdr, parts, len);
      } else {
        const k = Math.min(this.data.length - this.fill, n - p);
        this.data.set(src.subarray(p, p + k), this.fill);
        this.fill += k;
        p += k;
        if (this.fill < this.data.length) return;
        const hdr = this.hdr, data = this.data;
        this.hdr = null;
        this.data = EMPTY;
        emit(hdr, data);
      }
    }
  }

  /** Bytes of an incomplete reply held. */
  get pending(): number {
    return this.hdr === null ? this.hdrFill : SD_REQ_SIZE + this.fill;
  }
}

export class SheepClient {
  private readonly sock: net.Socket;
  private readonly reader = new ReplyReader((hdr) => this.pending.get(hdr.id)?.into ?? null);
  private readonly keepParts: boolean;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private blocked = false;
  private readonly queue: Buffer[] = [];
  private closedErr: Error | null = null;
  /** Time of the last request or reply (ms, on `clock`), for idle reaping. */
  lastUsed: number;

  private constructor(
    sock: net.Socket,
    readonly host: string,
    readonly port: number,
    private readonly clock: Clock,
    fresh: boolean,
  ) {
    this.sock = sock;
    this.keepParts = fresh;
    if (fresh) sock.on("data", (b: Buffer) => this.onRead(b, b.length));
    this.lastUsed = clock.now();
    sock.setNoDelay(true);
    sock.on("drain", () => this.onDrain());
    sock.on("error", (e: Error) => this.fail(e));
    sock.on("close", () => this.fail(null));
  }

  static connect(
    host: string,
    port: number,
    opts: { timeoutMs?: number; clock?: Clock } = {},
  ): Promise<SheepClient> {
    const clock = opts.clock ?? realClock;
    return new Promise((resolve, reject) => {
      let done = false;
      let client: SheepClient | null = null;
      const sock = net.createConnection(
        FRESH_CHUNKS ? { host, port } : {
          host,
          port,
          onread: {
            buffer: Buffer.allocUnsafeSlow(RECV_BUFFER),
            callback: (n: number, buf: Uint8Array) => {
              client?.onRead(buf, n);
              return true;
            },
          },
        } as net.NetConnectOpts,
      );
      let timer: TimerHandle | undefined;
      const finish = (err: Error | null) => {
        if (done) return;
        done = true;
        if (timer !== undefined) clock.clearTimeout(timer);
        sock.removeListener("error", onErr);
        sock.removeListener("connect", onConn);
        if (err) {
          sock.destroy();
          const code = (err as { code?: string }).code;
          reject(
            new NetworkError(
              host,
              port,
              code,
              `failed to connect to ${host}:${port}: ${errnoText(err)}`,
              true,
            ),
          );
        } else {
          client = new SheepClient(sock, host, port, clock, FRESH_CHUNKS);
          resolve(client);
        }
      };
      const onErr = (e: Error) => finish(e);
      const onConn = () => finish(null);
      sock.once("error", onErr);
      sock.once("connect", onConn);
      if (opts.timeoutMs && opts.timeoutMs > 0) {
        timer = clock.setTimeout(() => {
          const e = new Error("connect timeout") as Error & { code: string };
          e.code = "ETIMEDOUT";
          finish(e);
        }, opts.timeoutMs);
      }
    });
  }

  get closed(): boolean {
    return this.closedErr !== null;
  }

  /** Number of requests awaiting a reply. */
  get inflight(): number {
    return this.pending.size;
  }

  /**
   * Sends one request. The header is copied (the caller's Header is not modified) and gets a
   * fresh id. A payload is sent only when the WRITE flag is set; data_length then follows it.
   */
  request(hdr: Header, data?: Buffer, into?: Buffer): Promise<Reply> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    const b = Buffer.allocUnsafe(SD_REQ_SIZE);
    hdr.b.copy(b, 0, 0, SD_REQ_SIZE);
    const h = new Header(b);
    const id = this.nextId;
    this.nextId = (this.nextId + 1) >>> 0 || 1;
    h.id = id;
    const withPayload = (h.flags & Flag.CMD_WRITE) !== 0;
    if (withPayload) h.dataLength = data ? data.length : 0;
    this.lastUsed = this.clock.now();
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, into });
      this.send(b);
      if (withPayload && data && data.length) this.send(data);
    });
  }

  close(): void {
    if (!this.closedErr) {
      this.fail(new NetworkError(this.host, this.port, undefined, "connection closed"));
    }
    this.sock.destroy();
  }

  private send(buf: Buffer): void {
    if (this.blocked) {
      this.queue.push(buf);
      return;
    }
    if (!this.sock.write(buf)) this.blocked = true;
  }

  private onDrain(): void {
    this.blocked = false;
    while (this.queue.length && !this.blocked) {
      if (!this.sock.write(this.queue.shift()!)) this.blocked = true;
    }
  }

  private readonly onReply = (hdr: Header, data: Buffer): void => {
    this.lastUsed = this.clock.now();
    const p = this.pending.get(hdr.id);
    if (!p) return; // reply to a request we no longer track
    this.pending.delete(hdr.id);
    p.resolve({ hdr, data });
  };

  private readonly onParts = (hdr: Header, parts: Buffer[], len: number): void => {
    this.lastUsed = this.clock.now();
    const p = this.pending.get(hdr.id);
    if (!p) return;
    this.pending.delete(hdr.id);
    p.resolve(new PartsReply(hdr, parts, len));
  };

  /** n bytes at the start of buf: the reused receive buffer (onread) or a fresh chunk. */
  onRead(buf: Uint8Array, n: number): void {
    if (this.closedErr) return;
    try {
      this.reader.push(buf, n, this.onReply, this.keepParts ? this.onParts : undefined);
    } catch (e) {
      this.fail(e as Error);
      this.sock.destroy();
    }
  }

  private fail(e: Error | null): void {
    if (!this.closedErr) {
      const code = (e as { code?: string } | null)?.code;
      this.closedErr = e instanceof NetworkError ? e : new NetworkError(
        this.host,
        this.port,
        code,
        e
          ? `connection to ${this.host}:${this.port} failed: ${errnoText(e)}`
          : `connection to ${this.host}:${this.port} closed`,
      );
    }
    this.queue.length = 0;
    if (this.pending.size) {
      const ps = [...this.pending.values()];
      this.pending.clear();
      for (const p of ps) p.reject(this.closedErr);
    }
  }
}

/**
 * Connections keyed by "host:port". A connection that failed is dropped so the next request
 * reconnects; concurrent first requests share one connect attempt.
 */
export class ClientPool {
  private readonly clients = new Map<string, SheepClient>();
  private readonly connecting = new Map<string, Promise<SheepClient>>();
  private reaper: TimerHandle | null = null;
  private readonly connectTimeoutMs: number;
  private readonly idleMs: number;

  /** `clock` runs connect timeouts and idle reaping (tests pass a SimClock). */
  constructor(opts: ClientPoolOptions = {}, private readonly clock: Clock = realClock) {
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    this.idleMs = opts.idleMs ?? 60_000;
  }

  static key(host: string, port: number): string {
    return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
  }

  async get(host: string, port: number): Promise<SheepClient> {
    const key = ClientPool.key(host, port);
    const c = this.clients.get(key);
    if (c && !c.closed) return c;
    if (c) this.clients.delete(key);
    let p = this.connecting.get(key);
    if (!p) {
      p = SheepClient.connect(host, port, { timeoutMs: this.connectTimeoutMs, clock: this.clock })
        .then(
          (cl) => {
            this.connecting.delete(key);
            this.clients.set(key, cl);
            this.startReaper();
            return cl;
          },
          (e) => {
            this.connecting.delete(key);
            throw e;
          },
        );
      this.connecting.set(key, p);
    }
    return p;
  }

  async request(
    host: string,
    port: number,
    hdr: Header,
    data?: Buffer,
    into?: Buffer,
  ): Promise<Reply> {
    const c = await this.get(host, port);
    try {
      return await c.request(hdr, data, into);
    } catch (e) {
      // a dead connection is replaced on the next request
      if (c.closed && this.clients.get(ClientPool.key(host, port)) === c) {
        this.clients.delete(ClientPool.key(host, port));
      }
      throw e;
    }
  }

  /** Drops (and closes) the connection to one peer, e.g. after it left the cluster. */
  drop(host: string, port: number): void {
    const key = ClientPool.key(host, port);
    const c = this.clients.get(key);
    if (c) {
      this.clients.delete(key);
      c.close();
    }
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
    if (this.reaper !== null) this.clock.clearTimeout(this.reaper);
    this.reaper = null;
  }

  get size(): number {
    return this.clients.size;
  }

  /** Checks idle connections every max(1 s, idleMs/2) while there are any. */
  private startReaper(): void {
    if (this.reaper !== null || !this.idleMs) return;
    this.reaper = this.clock.setTimeout(() => {
      this.reaper = null;
      this.reap();
    }, Math.max(1000, this.idleMs / 2));
  }

  private reap(): void {
    const now = this.clock.now();
    for (const [key, c] of this.clients) {
      if (c.closed || (c.inflight === 0 && now - c.lastUsed >= this.idleMs)) {
        this.clients.delete(key);
        c.close();
      }
    }
    if (this.clients.size) this.startReaper();
  }
}
