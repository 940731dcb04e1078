// `dog vdi read` over a blocking socket (io/sync-socket.ts): READ_OBJ requests pipelined DEPTH
// deep, each reply received into its request's own buffer and written to stdout from it, in
// order. Same output, messages and exit codes as the event-driven loop in vdi.ts, which runs
// when this is not available.
import { Buffer } from "node:buffer";
import { errnoText, NetworkError } from "../io/client.ts";
import { SyncSocket } from "../io/sync-socket.ts";
import { Header, Op, Res, SD_REQ_SIZE, strerror } from "../core/proto.ts";
import type { VdiHandle } from "../core/vdi-io.ts";
import {
  type Ctx,
  err,
  EXIT_FAILURE,
  EXIT_SUCCESS,
  EXIT_SYSFAIL,
  StderrProgress,
} from "./common.ts";

const DEPTH = 8;

interface Slot {
  id: number;
  len: number;
  buf: Buffer;
  done: boolean;
  result: number;
}

/** Reads [start, end) of the VDI to stdout; null when no blocking socket could be had. */
export async function vdiReadFast(
  c: Ctx,
  handle: VdiHandle,
  start: number,
  end: number,
  progress: StderrProgress,
): Promise<number | null> {
  // SHEEPDOG_SYNC_READ=0: the event-driven loop (comparisons, or a runtime where FFI misbehaves)
  if (end <= start || process.env.SHEEPDOG_SYNC_READ === "0") return null;
  const sock = await SyncSocket.connect(c.host, c.port);
  if (!sock) return null;
  try {
    return readLoop(c, sock, handle, start, end, progress);
  } finally {
    sock.close();
  }
}

function readLoop(
  c: Ctx,
  sock: SyncSocket,
  handle: VdiHandle,
  start: number,
  end: number,
  progress: StderrProgress,
): number {
  const os = handle.objectSize;
  const CHUNK = Math.min(os, 4 * 1024 * 1024);
  const free: Buffer[] = [];
  let zeros: Buffer | null = null;
  const queue: Slot[] = [];
  const byId = new Map<number, Slot>();
  const hb = Buffer.allocUnsafe(SD_REQ_SIZE);
  let pos = start, nextId = 1, sent = 0n;
  const lost = (): never => {
    const key = `${c.host}:${c.port}`;
    const e = new NetworkError(c.host, c.port, undefined, `connection to ${key} closed`);
    err(`failed to communicate with ${key}: ${e.message}`);
    progress.end();
    throw e;
  };
  const issue = () => {
    const objEnd = (Math.floor(pos / os) + 1) * os;
    const len = Math.min(CHUNK, objEnd - pos, end - pos);
    const oid = handle.dataOid(Math.floor(pos / os));
    if (oid === null) {
      // unallocated: zeros, no request
      zeros ??= Buffer.alloc(CHUNK);
      queue.push({ id: 0, len, buf: zeros, done: true, result: Res.SUCCESS });
    } else {
      const h = Header.req(Op.READ_OBJ, { dataLength: len });
      h.oid = oid;
      h.offset = pos % os;
      h.id = nextId++;
      const s: Slot = {
        id: h.id,
        len,
        buf: free.pop() ?? Buffer.allocUnsafe(CHUNK),
        done: false,
        result: 0,
      };
      queue.push(s);
      byId.set(s.id, s);
      if (!sock.send(h.b)) lost();
    }
    pos += len;
  };
  const receive = () => {
    if (!sock.recv(hb, 0, SD_REQ_SIZE)) lost();
    const h = new Header(hb);
    const s = byId.get(h.id);
    const len = h.dataLength;
    const at = Number(h.rspObjOffset);
    if (s) byId.delete(h.id);
    if (s && h.result === Res.SUCCESS && at === 0 && len === s.len) {
      if (!sock.recv(s.buf, 0, len)) lost();
    } else {
      // a reply we did not ask for, a failure, or a short/offset one (as readObject places it)
      const d = Buffer.allocUnsafe(len);
      if (len && !sock.recv(d, 0, len)) lost();
      if (s && h.result === Res.SUCCESS) {
        s.buf.fill(0, 0, s.len);
        d.copy(s.buf, Math.min(at, s.len), 0, Math.max(0, Math.min(len, s.len - at)));
      }
    }
    if (s) {
      s.result = h.result;
      s.done = true;
    }
  };
  while (queue.length < DEPTH && pos < end) issue();
  while (queue.length) {
    const s = queue[0];
    if (!s.done) {
      receive();
      continue;
    }
    queue.shift();
    if (s.result !== Res.SUCCESS) {
      progress.end();
      err(`Failed to read VDI: ${strerror(s.result)}`);
      return EXIT_FAILURE;
    }
    try {
      sock.writeFd(1, s.buf, s.len);
    } catch (e) {
      progress.end();
      err(`Failed to write to stdout: ${errnoText(e)}`);
      return EXIT_SYSFAIL;
    }
    if (s.id) free.push(s.buf);
    sent += BigInt(s.len);
    progress.update(sent);
    while (queue.length < DEPTH && pos < end) issue();
  }
  progress.end();
  return EXIT_SUCCESS;
}
