// A minimal NBD client for the chaos workload (fixed newstyle, NBD_OPT_EXPORT_NAME, simple
// replies): one request at a time, so every acknowledgement is attributed exactly, and a per-request
// deadline, so a SIGSTOPped gateway shows up as a timeout instead of a hang.
import { Buffer } from "node:buffer";
import * as net from "node:net";

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REQ_MAGIC = 0x25609513;
const REPLY_MAGIC = 0x67446698;
export const NbdCmd = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3 } as const;
const TX_READ_ONLY = 1 << 1;

export class NbdTimeout extends Error {}

export class NbdConn {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private closed: Error | null = null;
  private handle = 1n;
  size = 0;
  readOnly = false;

  private constructor(private readonly sock: net.Socket) {
    sock.on("data", (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.waiter?.();
    });
    const end = (e?: Error) => {
      if (!this.closed) this.closed = e ?? new Error("connection closed");
      this.waiter?.();
    };
    sock.on("error", end);
    sock.on("close", () => end());
  }

  static async connect(port: number, exportName: string, timeoutMs: number): Promise<NbdConn> {
    const sock = net.connect({ host: "127.0.0.1", port });
    sock.setNoDelay(true);
    const c = new NbdConn(sock);
    try {
      const deadline = Date.now() + timeoutMs;
      const hello = await c.take(18, deadline);
      if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) {
        throw new Error("not an NBD newstyle server");
      }
      const name = Buffer.from(exportName);
      const opt = Buffer.alloc(4 + 16);
      opt.writeUInt32BE(3, 0); // FIXED_NEWSTYLE | NO_ZEROES
      opt.writeBigUInt64BE(IHAVEOPT, 4);
      opt.writeUInt32BE(1, 12); // NBD_OPT_EXPORT_NAME
      opt.writeUInt32BE(name.length, 16);
      sock.write(Buffer.concat([opt, name]));
      const rep = await c.take(10, deadline);
      c.size = Number(rep.readBigUInt64BE(0));
      c.readOnly = (rep.readUInt16BE(8) & TX_READ_ONLY) !== 0;
      return c;
    } catch (e) {
      c.close();
      throw e;
    }
  }

  private async take(n: number, deadline: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closed) throw this.closed;
      const left = deadline - Date.now();
      if (left <= 0) throw new NbdTimeout(`no reply within the deadline`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiter = () => {
          clearTimeout(t);
          r();
        };
      });
      this.waiter = null;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** One request; resolves with the read data (empty otherwise), throws on an NBD error. */
  async request(
    cmd: number,
    offset: number,
    length: number,
    data: Buffer | null,
    timeoutMs: number,
  ): Promise<Buffer> {
    if (this.closed) throw this.closed;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQ_MAGIC, 0);
    h.writeUInt16BE(0, 4);
    h.writeUInt16BE(cmd, 6);
    const handle = this.handle++;
    h.writeBigUInt64BE(handle, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.sock.write(data ? Buffer.concat([h, data]) : h);
    const deadline = Date.now() + timeoutMs;
    const rep = await this.take(16, deadline);
    if (rep.readUInt32BE(0) !== REPLY_MAGIC || rep.readBigUInt64BE(8) !== handle) {
      throw new Error("bad NBD reply");
    }
    const err = rep.readUInt32BE(4);
    if (err !== 0) throw new Error(`NBD error ${err}`);
    return cmd === NbdCmd.READ ? Buffer.from(await this.take(length, deadline)) : Buffer.alloc(0);
  }

  close(): void {
    this.closed ??= new Error("closed");
    this.sock.destroy();
  }
}
