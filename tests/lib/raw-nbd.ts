// A minimal NBD client for tests that need to control exactly when FLUSH is sent and keep the
// connection open across it (the real clients flush on their own when they exit).
import { Buffer } from "node:buffer";
import * as net from "node:net";
import {
  ClientFlag,
  Cmd,
  decodeOptionReply,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOption,
  encodeRequest,
  Opt,
  Rep,
} from "../../core/nbd.ts";

export class RawNbd {
  private buf = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private closed = false;
  size = 0;
  txFlags = 0;
  private handle = 1n;

  private constructor(private readonly sock: net.Socket) {
    sock.on("data", (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    sock.on("error", () => {});
    sock.on("close", () => {
      this.closed = true;
      this.waiter?.();
    });
  }

  private async take(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw new Error("connection closed");
      await new Promise<void>((r) => (this.waiter = r));
      this.waiter = null;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  static async open(port: number, name: string): Promise<RawNbd> {
    const sock = net.connect(port, "127.0.0.1");
    await new Promise<void>((r, j) => sock.once("connect", r).once("error", j));
    const c = new RawNbd(sock);
    const greeting = await c.take(18);
    if (greeting.toString("latin1", 0, 16) !== "NBDMAGICIHAVEOPT") throw new Error("bad greeting");
    sock.write(encodeClientFlags(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES));
    sock.write(encodeOption(Opt.GO, encodeInfoRequest(name)));
    for (;;) {
      const h = await c.take(20);
      const data = await c.take(h.readUInt32BE(16));
      const rep = decodeOptionReply(Buffer.concat([h, data]))!;
      if (rep.type === Rep.ACK) break;
      if (rep.type & 0x80000000) throw new Error(`NBD_OPT_GO refused: ${rep.data.toString()}`);
      if (rep.type === Rep.INFO && rep.data.readUInt16BE(0) === 0) {
        c.size = Number(rep.data.readBigUInt64BE(2));
        c.txFlags = rep.data.readUInt16BE(10);
      }
    }
    return c;
  }

  /** One request at a time; returns its error value (and the data of a successful READ). */
  async request(
    type: number,
    offset: number,
    length: number,
    data?: Buffer,
    flags = 0,
  ): Promise<{ error: number; data?: Buffer }> {
    const handle = this.handle++;
    this.sock.write(encodeRequest({ type, handle, offset, length, flags }, data));
    const r = await this.take(16);
    if (r.readUInt32BE(0) !== 0x67446698 || r.readBigUInt64BE(8) !== handle) {
      throw new Error("bad simple reply");
    }
    const error = r.readUInt32BE(4);
    if (type === Cmd.READ && error === 0) return { error, data: await this.take(length) };
    return { error };
  }

  async write(offset: number, data: Buffer, flags = 0): Promise<void> {
    const r = await this.request(Cmd.WRITE, offset, data.length, data, flags);
    if (r.error) throw new Error(`NBD write at ${offset}: error ${r.error}`);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const r = await this.request(Cmd.READ, offset, length);
    if (r.error) throw new Error(`NBD read at ${offset}: error ${r.error}`);
    return r.data!;
  }

  async flush(): Promise<void> {
    const r = await this.request(Cmd.FLUSH, 0, 0);
    if (r.error) throw new Error(`NBD flush: error ${r.error}`);
  }

  async disconnect(): Promise<void> {
    this.sock.write(encodeRequest({ type: Cmd.DISC, handle: 0n, offset: 0, length: 0 }));
    this.sock.end();
    while (!this.closed) await new Promise<void>((r) => (this.waiter = r));
  }

  /** Drops the connection without NBD_CMD_DISC. */
  destroy(): void {
    this.sock.destroy();
  }
}
