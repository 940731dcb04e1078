// The Sheepdog protocol listeners (TCP and the base directory's unix socket) and the framing
// loop of one connection: requests are parsed incrementally, served concurrently and answered
// in completion order, with reading paused while too many are in progress.
import type { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { EMPTY, FrameParser, type Header, type ProtocolError } from "../core/proto.ts";
import { errorReply, type Reply } from "./ops/reply.ts";
import type { Logger } from "./log.ts";

/**
 * Requests of one connection served at once, and their payload bytes, before reading pauses
 * (it resumes at half): a client pipelining 4 MiB writes cannot make the sheep hold more than
 * this much of its data.
 */
const MAX_INFLIGHT = 64;
const MAX_INFLIGHT_BYTES = 32 * 1024 * 1024;

export interface ProtocolPort {
  handle(req: Header, data: Buffer): Promise<Reply>;
  /** The epoch every reply carries. */
  epoch(): number;
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
    sock.isPaused() && inflight <= MAX_INFLIGHT / 2 && inflightBytes <= MAX_INFLIGHT_BYTES / 2 &&
    backlog() <= MAX_INFLIGHT_BYTES / 2;
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
    const parts = (r as { parts?: readonly Buffer[] }).parts;
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
    for (const f of frames) {
      inflight++;
      inflightBytes += f.data.length;
      // Bounded memory: stop reading while many requests (or many bytes) are being served.
      if (
        inflight > MAX_INFLIGHT || inflightBytes > MAX_INFLIGHT_BYTES ||
        backlog() > MAX_INFLIGHT_BYTES
      ) sock.pause();
      p.handle(f.hdr, f.data)
        .catch((e) => errorReply(f.hdr, e))
        .then((r) => {
          r.hdr.opcode = f.hdr.opcode;
          r.hdr.id = f.hdr.id;
          r.hdr.epoch = p.epoch();
          send(r);
          inflight--;
          inflightBytes -= f.data.length;
          if (backlog() > MAX_INFLIGHT_BYTES) sock.pause();
          else if (mayResume()) sock.resume();
        });
    }
  });
  // A reset by the peer is normal; "close" follows and cleans up.
  sock.on("error", () => {});
  sock.on("close", () => {
    p.sockets.delete(sock);
    queue.length = head = 0;
    queuedBytes = 0;
  });
}
