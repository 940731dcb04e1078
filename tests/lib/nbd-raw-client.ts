// A minimal NBD client over a raw socket for the tests: the requests and sequences real clients
// never send (misaligned, out of range, hostile), with every reply part visible.
import { Buffer } from "node:buffer";
import * as net from "node:net";
import {
  ClientFlag,
  Cmd,
  decodeChunkPayload,
  decodeOptionReply,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
  Info,
  type NbdReply,
  Opt,
  Rep,
  ReplyFlag,
  ReplyParser,
} from "../../core/nbd.ts";

/** Minimal NBD client over a raw socket, for the cases real clients never produce. */
export class RawClient {
  private chunks: Buffer[] = [];
  private waiters: Array<() => void> = [];
  private parser: ReplyParser | null = null;
  private readLens = new Map<bigint, number>();
  private replies = new Map<bigint, NbdReply[]>();
  private nextHandle = 1n;
  size = 0;
  txFlags = 0;
  closed: Promise<void>;
  isClosed = false;

  private constructor(readonly sock: net.Socket) {
    sock.on("data", (b: Buffer) => {
      if (this.parser) {
        for (const r of this.parser.push(b)) {
          const list = this.replies.get(r.handle) ?? [];
          list.push(r);
          this.replies.set(r.handle, list);
        }
      } else this.chunks.push(b);
      this.wake();
    });
    sock.on("error", () => {});
    this.closed = new Promise((r) =>
      sock.on("close", () => {
        this.isClosed = true;
        this.wake();
        r();
      })
    );
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private waitData(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  static async connect(port: number): Promise<RawClient> {
    const sock = net.connect(port, "127.0.0.1");
    await new Promise<void>((r, j) => sock.once("connect", r).once("error", j));
    return new RawClient(sock);
  }

  /** Connects, negotiates structured replies + base:allocation (optional) and enters transmission. */
  static async open(
    port: number,
    name: string,
    opts: { structured?: boolean; meta?: boolean } = {},
  ): Promise<RawClient> {
    const c = await RawClient.connect(port);
    await c.greeting();
    if (opts.structured && (await c.option(Opt.STRUCTURED_REPLY)).type !== Rep.ACK) {
      throw new Error("NBD_OPT_STRUCTURED_REPLY refused");
    }
    if (opts.meta) {
      const reps = await c.optionAll(
        Opt.SET_META_CONTEXT,
        encodeMetaContextRequest(name, ["base:allocation"]),
      );
      if (reps.map((r) => r.type).join() !== `${Rep.META_CONTEXT},${Rep.ACK}`) {
        throw new Error("NBD_OPT_SET_META_CONTEXT did not select base:allocation");
      }
    }
    const reps = await c.optionAll(Opt.GO, encodeInfoRequest(name, [Info.BLOCK_SIZE]));
    const last = reps[reps.length - 1];
    if (last.type !== Rep.ACK) throw new Error(`GO failed: ${last.type.toString(16)} ${last.data}`);
    const exp = reps.find((r) => r.type === Rep.INFO && r.data.readUInt16BE(0) === Info.EXPORT)!;
    c.size = Number(exp.data.readBigUInt64BE(2));
    c.txFlags = exp.data.readUInt16BE(10);
    c.startTransmission();
    return c;
  }

  async readExact(n: number): Promise<Buffer> {
    for (;;) {
      const have = this.chunks.reduce((a, b) => a + b.length, 0);
      if (have >= n) {
        const all = Buffer.concat(this.chunks);
        this.chunks = [all.subarray(n)];
        return all.subarray(0, n);
      }
      if (this.isClosed) throw new Error("connection closed");
      await this.waitData();
    }
  }

  async greeting(flags = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES): Promise<void> {
    const g = await this.readExact(18);
    if (g.toString("latin1", 0, 16) !== "NBDMAGICIHAVEOPT") throw new Error("bad greeting");
    this.sock.write(encodeClientFlags(flags));
  }

  async optReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.readExact(20);
    const len = h.readUInt32BE(16);
    const data = await this.readExact(len);
    return decodeOptionReply(Buffer.concat([h, data]))!;
  }

  async option(
    opt: number,
    data?: Buffer,
  ): Promise<{ option: number; type: number; data: Buffer }> {
    this.sock.write(encodeOption(opt, data));
    return await this.optReply();
  }

  /** Sends an option and collects replies up to the final ACK or error. */
  async optionAll(
    opt: number,
    data?: Buffer,
  ): Promise<Array<{ option: number; type: number; data: Buffer }>> {
    this.sock.write(encodeOption(opt, data));
    const out = [];
    for (;;) {
      const r = await this.optReply();
      out.push(r);
      if (r.type === Rep.ACK || r.type & 0x80000000) return out;
    }
  }

  startTransmission(): void {
    this.parser = new ReplyParser((h) => this.readLens.get(h));
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    if (rest.length) this.sock.emit("data", rest);
  }

  send(type: number, offset: number, length: number, flags = 0, data?: Buffer): bigint {
    const handle = this.nextHandle++;
    if (type === Cmd.READ) this.readLens.set(handle, length);
    this.sock.write(encodeRequest({ type, flags, handle, offset, length }, data));
    return handle;
  }

  /** All reply messages for a handle, once complete (simple reply, or a chunk with DONE). */
  async reply(handle: bigint): Promise<NbdReply[]> {
    for (;;) {
      const list = this.replies.get(handle);
      const last = list?.[list.length - 1];
      if (last && (last.kind === "simple" || last.flags & ReplyFlag.DONE)) {
        this.replies.delete(handle);
        return list!;
      }
      if (this.isClosed) throw new Error("connection closed");
      await this.waitData();
    }
  }

  /** Sends a request and returns its error value (simple or structured) and parts. */
  async request(
    type: number,
    offset: number,
    length: number,
    flags = 0,
    data?: Buffer,
  ): Promise<{ error: number; parts: NbdReply[]; data?: Buffer }> {
    const parts = await this.reply(this.send(type, offset, length, flags, data));
    let error = 0;
    let payload: Buffer | undefined;
    for (const p of parts) {
      if (p.kind === "simple") {
        error = p.error;
        payload = p.data;
      } else if (p.type & 0x8000) {
        error = (decodeChunkPayload(p.type, p.payload) as { error: number }).error;
      }
    }
    return { error, parts, data: payload };
  }

  async disconnect(): Promise<void> {
    this.sock.write(encodeRequest({ type: Cmd.DISC, handle: 0n, offset: 0, length: 0 }));
    await this.closed;
  }
}
