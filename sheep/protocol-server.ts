// The Sheepdog protocol listeners (TCP and the base directory's unix socket) and the framing
// loop of one connection: requests are parsed incrementally, served concurrently and answered
// in completion order. Memory is bounded per connection and per process: requests wait, parsed,
// until they fit, and reading pauses while any wait.
import type { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import {
  EMPTY,
  Flag,
  type Frame,
  FrameParser,
  type Header,
  type ProtocolError,
} from "../core/proto.ts";
import { errorReply, type Reply } from "./ops/reply.ts";
import type { Logger } from "./log.ts";

/**
 * Requests of one connection served at once, and their payload bytes, before reading pauses
 * (it resumes at half): a client pipelining 4 MiB writes cannot make the sheep hold more than
 * this much of its data.
 */
const MAX_INFLIGHT = 64;
const MAX_INFLIGHT_BYTES = 32 * 1024 * 1024;
/**
 * Bytes in service across every connection (Ceph's osd_client_message_size_cap), one budget per
 * class of request so that none waits on a class that waits on it: client requests wait on peer
 * requests at other sheep, peer requests (for an object in recovery) on recovery reads there, and
 * recovery reads on nothing but the disk.
 */
const PROCESS_BUDGET_BYTES = 64 * 1024 * 1024;

/** A byte budget shared by connections; those that do not fit wait to be woken. */
export class ByteBudget {
  used = 0;
  private readonly waiting = new Set<() => void>();
  constructor(readonly max: number) {}
  /** One request always fits an idle budget, whatever its size: nothing starves. */
  fits(cost: number): boolean {
    return this.used === 0 || this.used + cost <= this.max;
  }
  take(cost: number): void {
    this.used += cost;
  }
  give(cost: number): void {
    this.used -= cost;
    if (this.used > this.max / 2 || this.waiting.size === 0) return;
    const woken = [...this.waiting];
    this.waiting.clear();
    for (const w of woken) w();
  }
  wait(w: () => void): void {
    this.waiting.add(w);
  }
  forget(w: () => void): void {
    this.waiting.delete(w);
  }
}

export type RequestClass = "client" | "peer" | "recovery";
const budgets: Record<RequestClass, ByteBudget> = {
  client: new ByteBudget(PROCESS_BUDGET_BYTES),
  peer: new ByteBudget(PROCESS_BUDGET_BYTES),
  recovery: new ByteBudget(PROCESS_BUDGET_BYTES),
};

/** Bytes a request holds while served: its payload, or the reply it asks for. */
function costOf(f: Frame): number {
  return f.hdr.flags & Flag.CMD_WRITE
    ? f.data.length
    : Math.min(f.hdr.dataLength, MAX_INFLIGHT_BYTES);
}

export interface ProtocolPort {
  handle(req: Header, data: Buffer): Promise<Reply>;
  /** The epoch every reply carries. */
  epoch(): number;
  /** Which budget a request takes (see budgets). */
  classOf(req: Header): RequestClass;
  log: Logger;
  /** Open connections, destroyed at shutdown. */
  sockets: Set<net.Socket>;
}

export function listenProtocol(
  host: string,
  port: number,
  baseDir: string,
  p: ProtocolPort,
): Promise<{ tcp: net.Server; unix: net.Server }> {
  const onConn = (sock: net.Socket) => serveConnection(sock, p);
  const tcp = net.createServer({ noDelay: true } as net.ServerOpts, onConn);
  const unixPath = path.join(baseDir, "sock");
  fs.rmSync(unixPath, { force: true });
  const unix = net.createServer(onConn);
  return new Promise((resolve, reject) => {
    tcp.once(
      "error",
      (e) => reject(new Error(`cannot listen on ${host}:${port}: ${(e as Error).message}`)),
    );
    tcp.listen(port, host, () => {
      unix.on("error", (e) => p.log.warn(`unix socket: ${e.message}`));
      unix.listen(unixPath, () => resolve({ tcp, unix }));
    });
  });
}

function serveConnection(sock: net.Socket, p: ProtocolPort): void {
  p.sockets.add(sock);
  sock.setNoDelay(true);
  const parser = new FrameParser("request");
  let inflight = 0;
  let inflightBytes = 0;
  // Parsed requests not yet admitted (headers, or payloads already read): bounded by what one
  // read brings, since reading pauses while any wait.
  const waiting: (Frame | undefined)[] = [];
  let next = 0;
  // Replies wait here, not in the socket's buffer, while it drains: the socket then gets one
  // buffer at a time and never joins queued buffers into one (a copy of every payload, in a new
  // allocation: most of a gateway's CPU on reads, and its memory peak).
  const queue: Buffer[] = [];
  let head = 0;
  let queuedBytes = 0;
  let blocked = false;
  const put = (b: Buffer) => {
    if (blocked) {
      queue.push(b);
      queuedBytes += b.length;
    } else if (!sock.write(b)) blocked = true;
  };
  // A client that sends but does not read its replies: replies not yet taken by the kernel
  // count against the same bound, so reading its requests stops until it reads.
  const backlog = () => queuedBytes + sock.writableLength;
  const mayResume = () =>
    sock.isPaused() && next === waiting.length && inflight <= MAX_INFLIGHT / 2 &&
    inflightBytes <= MAX_INFLIGHT_BYTES / 2 && backlog() <= MAX_INFLIGHT_BYTES / 2;
  sock.on("drain", () => {
    blocked = false;
    while (head < queue.length && !blocked) {
      const b = queue[head];
      queue[head++] = EMPTY;
      queuedBytes -= b.length;
      if (!sock.write(b)) blocked = true;
    }
    if (head === queue.length) queue.length = head = 0;
    if (mayResume()) sock.resume();
  });
  const send = (r: Reply) => {
    if (sock.destroyed) return;
    // A reply relayed from a peer may still be in the pieces it arrived in: sent as they are.
    const parts = r.parts;
    if (parts) {
      let n = 0;
      for (const b of parts) n += b.length;
      r.hdr.dataLength = n;
      put(r.hdr.b);
      for (const b of parts) if (b.length) put(b);
      return;
    }
    r.hdr.dataLength = r.data.length;
    put(r.hdr.b);
    if (r.data.length) put(r.data);
  };
  const admit = () => {
    while (next < waiting.length && !sock.destroyed) {
      const f = waiting[next]!;
      const cost = costOf(f);
      if (inflight >= MAX_INFLIGHT || (inflight > 0 && inflightBytes + cost > MAX_INFLIGHT_BYTES)) {
        break; // a completion of this connection admits it
      }
      const budget = budgets[p.classOf(f.hdr)];
      if (!budget.fits(cost)) {
        budget.wait(admit);
        break;
      }
      waiting[next++] = undefined;
      serve(f, cost, budget);
    }
    if (next === waiting.length) waiting.length = next = 0;
    if (next < waiting.length || backlog() > MAX_INFLIGHT_BYTES) sock.pause();
    else if (mayResume()) sock.resume();
  };
  const serve = (f: Frame, cost: number, budget: ByteBudget) => {
    inflight++;
    inflightBytes += cost;
    budget.take(cost);
    p.handle(f.hdr, f.data)
      .catch((e) => errorReply(f.hdr, e))
      .then((r) => {
        r.hdr.opcode = f.hdr.opcode;
        r.hdr.id = f.hdr.id;
        r.hdr.epoch = p.epoch();
        send(r);
        inflight--;
        inflightBytes -= cost;
        budget.give(cost);
        admit();
      });
  };
  sock.on("data", (chunk: Buffer) => {
    let frames;
    try {
      frames = parser.push(chunk);
    } catch (e) {
      p.log.warn(
        `bad request stream from ${sock.remoteAddress ?? "unix"}: ${(e as ProtocolError).message}`,
      );
      sock.destroy();
      return;
    }
    for (const f of frames) waiting.push(f);
    admit();
  });
  // A reset by the peer is normal; "close" follows and cleans up.
  sock.on("error", () => {});
  sock.on("close", () => {
    p.sockets.delete(sock);
    for (const b of Object.values(budgets)) b.forget(admit);
    waiting.length = next = 0;
    queue.length = head = 0;
    queuedBytes = 0;
  });
}
