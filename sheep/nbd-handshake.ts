// The NBD option haggling of the fixed newstyle handshake: export names, LIST, INFO/GO,
// structured replies and meta contexts. The connection hands it every option and takes the
// export it ends in (sheep/nbd.ts runs the transmission phase).
import { Buffer } from "node:buffer";
import {
  BASE_ALLOCATION,
  ClientFlag,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeRepMetaContext,
  encodeRepServer,
  type HandshakeEvent,
  Info,
  MAX_STRING,
  Opt,
  parseInfoRequest,
  parseMetaContextRequest,
  Rep,
  TxFlag,
} from "../core/nbd.ts";
import { type BlockExport, NbdOpenError } from "../core/blockdev.ts";
import type { NbdServerOptions } from "./nbd.ts";

/** The meta context id of base:allocation in this server's replies. */
export const BASE_ALLOCATION_ID = 1;

/** What the negotiation needs of its connection. */
export interface NegotiationPort {
  send(b: Buffer): void;
  hardClose(why: string): void;
  /** NBD_OPT_ABORT: no more options; the connection ends. */
  endInput(): void;
  isClosed(): boolean;
  enterTransmission(exp: BlockExport, requestedName: string): void;
  log(m: string): void;
}

export class Negotiation {
  noZeroes = false;
  structured = false;
  private metaExport: string | null = null;
  private metaBase = false;

  constructor(
    private readonly opts: NbdServerOptions,
    private readonly port: NegotiationPort,
  ) {}

  /** Whether base:allocation was selected for the export the client went to. */
  metaContextFor(exportName: string): boolean {
    return this.structured && this.metaBase && this.metaExport === exportName;
  }

  private opt(option: number, type: number, data?: Buffer | string): void {
    if (typeof data === "string") {
      // Error texts are strings in proto.md's sense: at most 4096 bytes.
      let b = Buffer.from(data, "utf8");
      if (b.length > MAX_STRING) b = b.subarray(0, MAX_STRING);
      data = b;
    }
    this.port.send(encodeOptionReply(option, type, data));
  }

  txFlags(exp: BlockExport): number {
    const ro = exp.readOnly || !!this.opts.readOnly;
    // CAN_MULTI_CONN promises that connections to the export are interchangeable: flush() of an
    // export covers the writes of every connection, and the export says whether every connection
    // may write (an exclusive VDI admits one writer; nbdcopy then uses a single connection).
    let f = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA;
    if (ro || exp.multiConn !== false) f |= TxFlag.CAN_MULTI_CONN;
    if (ro) f |= TxFlag.READ_ONLY;
    else f |= TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO;
    if (this.structured) f |= TxFlag.SEND_DF;
    return f;
  }

  /** `probe`: NBD_OPT_INFO only describes the export; it must not take it (no VDI lock). */
  private async openExport(name: string, probe = false): Promise<BlockExport> {
    return await this.opts.provider.open(name, { readOnlyRequested: !!this.opts.readOnly, probe });
  }

  async handle(ev: HandshakeEvent): Promise<void> {
    if (ev.kind === "clientFlags") {
      if (ev.flags & ~(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)) {
        this.port.hardClose(`unknown client flags 0x${ev.flags.toString(16)}`);
        return;
      }
      this.noZeroes = (ev.flags & ClientFlag.NO_ZEROES) !== 0;
      return;
    }
    if (ev.kind === "oversizedOption") {
      if (ev.option === Opt.EXPORT_NAME) this.port.hardClose("oversized NBD_OPT_EXPORT_NAME");
      else this.opt(ev.option, Rep.ERR_TOO_BIG, `option data of ${ev.length} bytes is too large`);
      return;
    }
    const { option, data } = ev;
    switch (option) {
      case Opt.EXPORT_NAME: {
        const name = data.toString("utf8");
        let exp: BlockExport;
        try {
          exp = await this.openExport(name);
        } catch (e) {
          // This option cannot return an error: the spec says to drop the connection.
          this.port.hardClose(`export ${JSON.stringify(name)}: ${(e as Error).message}`);
          return;
        }
        this.port.send(encodeExportNameReply(exp.size, this.txFlags(exp), this.noZeroes));
        this.port.enterTransmission(exp, name);
        return;
      }
      case Opt.ABORT:
        this.opt(option, Rep.ACK);
        this.port.endInput(); // the handshake loop stops and the connection ends
        return;
      case Opt.LIST: {
        if (data.length) return this.opt(option, Rep.ERR_INVALID, "NBD_OPT_LIST takes no data");
        let list: Array<{ name: string; description?: string }>;
        try {
          list = await this.opts.provider.list();
        } catch (e) {
          return this.opt(option, Rep.ERR_POLICY, `cannot list exports: ${(e as Error).message}`);
        }
        for (const x of list) this.opt(option, Rep.SERVER, encodeRepServer(x.name, x.description));
        return this.opt(option, Rep.ACK);
      }
      case Opt.STARTTLS:
        return this.opt(option, Rep.ERR_UNSUP, "TLS is not supported by this server");
      case Opt.INFO:
      case Opt.GO:
        return await this.infoOrGo(option, data);
      case Opt.STRUCTURED_REPLY:
        if (data.length) {
          return this.opt(option, Rep.ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
        }
        this.structured = true;
        return this.opt(option, Rep.ACK);
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        return this.metaContext(option, data);
      default:
        return this.opt(option, Rep.ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private async infoOrGo(option: number, data: Buffer): Promise<void> {
    const req = parseInfoRequest(data);
    if (!req) return this.opt(option, Rep.ERR_INVALID, "malformed NBD_OPT_INFO/NBD_OPT_GO");
    let exp: BlockExport;
    try {
      exp = await this.openExport(req.name, option === Opt.INFO);
    } catch (e) {
      const msg = (e as Error).message || String(e);
      if (e instanceof NbdOpenError && e.kind === "unknown") {
        return this.opt(
          option,
          Rep.ERR_UNKNOWN,
          `unknown export ${JSON.stringify(req.name)}: ${msg}`,
        );
      }
      if (e instanceof NbdOpenError && e.kind === "locked") {
        return this.opt(
          option,
          Rep.ERR_POLICY,
          `export ${JSON.stringify(req.name)} is locked: ${msg}`,
        );
      }
      return this.opt(
        option,
        Rep.ERR_POLICY,
        `cannot open export ${JSON.stringify(req.name)}: ${msg}`,
      );
    }
    try {
      if (this.port.isClosed()) throw new Error("client went away");
      this.opt(option, Rep.INFO, encodeInfoExport(exp.size, this.txFlags(exp)));
      // Always advertised (allowed unrequested); clients that asked must honour it.
      this.opt(option, Rep.INFO, encodeInfoBlockSize(exp.minBlock, exp.prefBlock, exp.maxBlock));
      if (req.infos.includes(Info.NAME)) {
        this.opt(option, Rep.INFO, encodeInfoString(Info.NAME, exp.name));
      }
      if (req.infos.includes(Info.DESCRIPTION)) {
        let desc = exp.description;
        if (desc === undefined) {
          try {
            desc = (await this.opts.provider.list()).find((x) => x.name === exp.name)?.description;
          } catch { /* a description is optional */ }
        }
        if (desc) this.opt(option, Rep.INFO, encodeInfoString(Info.DESCRIPTION, desc));
      }
      this.opt(option, Rep.ACK);
    } catch (e) {
      await exp.close().catch(() => {});
      if (!this.port.isClosed()) this.port.hardClose(`NBD_OPT_INFO/GO: ${(e as Error).message}`);
      return;
    }
    if (option === Opt.GO) this.port.enterTransmission(exp, req.name);
    else await exp.close().catch((e) => this.port.log(`close after INFO: ${(e as Error).message}`));
  }

  private metaContext(option: number, data: Buffer): void {
    const set = option === Opt.SET_META_CONTEXT;
    // SET replaces earlier selections even when it fails.
    if (set) {
      this.metaBase = false;
      this.metaExport = null;
    }
    if (!this.structured) {
      return this.opt(option, Rep.ERR_INVALID, "negotiate structured replies first");
    }
    const req = parseMetaContextRequest(data);
    if (!req) return this.opt(option, Rep.ERR_INVALID, "malformed meta context request");
    if (set) {
      this.metaExport = req.exportName;
      for (const q of req.queries) {
        if (q === BASE_ALLOCATION && !this.metaBase) {
          this.metaBase = true;
          this.opt(
            option,
            Rep.META_CONTEXT,
            encodeRepMetaContext(BASE_ALLOCATION_ID, BASE_ALLOCATION),
          );
        }
      }
    } else {
      const match = req.queries.length === 0 ||
        req.queries.some((q) => q === "base:" || q === BASE_ALLOCATION);
      if (match) this.opt(option, Rep.META_CONTEXT, encodeRepMetaContext(0, BASE_ALLOCATION));
    }
    this.opt(option, Rep.ACK);
  }
}
