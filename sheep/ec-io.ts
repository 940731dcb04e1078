// Gateway I/O of erasure-coded objects (protocol.md §12.5, upstream gateway.c): a write is cut
// into whole 512-byte stripes (reading the head/tail stripe first when it is not aligned),
// encoded, and strip i goes to the i-th node of the object's placement as `ec_index = i`. A read
// fetches the d data strips; when some cannot be had, parity strips stand in and the missing data
// is reconstructed (upstream 1.0 fails such reads until recovery has rebuilt the strip).
import { Buffer } from "node:buffer";
import type { SdNode } from "../core/node.ts";
import { nodeHostPort } from "../core/node.ts";
import { ecPolicyToDp, ErasureCode, SD_EC_DATA_STRIPE_SIZE } from "../core/ec.ts";
import { Flag, Header, Op, Res, strerror } from "../core/proto.ts";
import { SdError } from "../core/errors.ts";

type Reply = { hdr: Header; data: Buffer };

export interface EcGatewayHost {
  /** Placement of `oid` in the current ring (already capped at the number of zones). */
  targets(oid: bigint, copiesHint: number): SdNode[];
  send(node: SdNode, hdr: Header, data: Buffer): Promise<Reply>;
  peerHeader(req: Header, peerOp: number, epoch: number): Header;
  withRetry<T>(attempt: (epoch: number) => Promise<T>): Promise<T>;
  retryable(code: number): boolean;
}

const STRIPE = SD_EC_DATA_STRIPE_SIZE;

/** The strip-file range that holds object bytes [off, off+len): whole stripes. */
export function stripeRange(off: number, len: number, d: number) {
  const start = Math.floor(off / STRIPE);
  const end = Math.ceil((off + len) / STRIPE);
  const ss = STRIPE / d;
  return { start, end, stripes: end - start, stripOff: start * ss, stripLen: (end - start) * ss };
}

/**
 * Writes to overlapping stripes of one object, one at a time: a read-modify-write must not
 * interleave with another write of the same stripe (its other bytes would be lost). Writes to
 * other stripes go on in parallel.
 */
class StripeLocks {
  private held = new Map<bigint, { start: number; end: number; done: Promise<void> }[]>();

  async run<T>(oid: bigint, start: number, end: number, fn: () => Promise<T>): Promise<T> {
    for (;;) {
      const busy = (this.held.get(oid) ?? []).find((r) => r.start < end && start < r.end);
      if (!busy) break;
      await busy.done;
    }
    let release!: () => void;
    const me = { start, end, done: new Promise<void>((r) => (release = r)) };
    const list = this.held.get(oid) ?? [];
    list.push(me);
    this.held.set(oid, list);
    try {
      return await fn();
    } finally {
      const l = this.held.get(oid)!;
      l.splice(l.indexOf(me), 1);
      if (!l.length) this.held.delete(oid);
      release();
    }
  }
}

export class EcGateway {
  private readonly locks = new StripeLocks();
  constructor(private readonly h: EcGatewayHost) {}

  read(req: Header, policy: number): Promise<Reply> {
    return this.h.withRetry(async (epoch) => {
      const data = await this.readRange(req, policy, epoch, req.offset, req.dataLength);
      const rsp = new Header();
      rsp.dataLength = data.length;
      return { hdr: rsp, data };
    });
  }

  /** CREATE_AND_WRITE_OBJ / WRITE_OBJ of an EC object. */
  write(req: Header, data: Buffer, policy: number): Promise<Reply> {
    const { start, end } = stripeRange(req.offset, data.length, ecPolicyToDp(policy).d);
    return this.locks.run(req.oid, start, end, () => this.writeLocked(req, data, policy));
  }

  private writeLocked(req: Header, data: Buffer, policy: number): Promise<Reply> {
    const peerOp = req.opcode === Op.WRITE_OBJ ? Op.WRITE_PEER : Op.CREATE_AND_WRITE_PEER;
    return this.h.withRetry(async (epoch) => {
      const code = ErasureCode.forPolicy(policy);
      const targets = this.placement(req, code);
      const off = req.offset;
      const len = data.length;
      const r = stripeRange(off, len, code.d);
      const whole = off % STRIPE === 0 && len % STRIPE === 0;
      const buf = whole ? data : Buffer.alloc(r.stripes * STRIPE);
      // A partial stripe keeps its other bytes: read it first (a create starts from zeros).
      if (!whole && req.opcode === Op.WRITE_OBJ) {
        const headCut = off % STRIPE !== 0;
        const tailCut = (off + len) % STRIPE !== 0;
        if (headCut) {
          (await this.readRange(req, policy, epoch, r.start * STRIPE, STRIPE)).copy(buf, 0);
        }
        if (tailCut && (!headCut || r.stripes > 1)) {
          const at = (r.end - 1) * STRIPE;
          (await this.readRange(req, policy, epoch, at, STRIPE)).copy(buf, at - r.start * STRIPE);
        }
      }
      if (!whole) data.copy(buf, off % STRIPE);
      const strips = code.encodeObject(buf);
      // Fewer zones than d+p: only the data strips are written (upstream); parity comes back
      // through recovery once there are enough zones.
      const n = targets.length >= code.n ? code.n : code.d;
      const results = await Promise.allSettled(
        targets.slice(0, n).map((node, i) => {
          const h = this.stripHeader(req, peerOp, epoch, policy, i, r.stripOff, r.stripLen);
          h.flags |= Flag.CMD_WRITE;
          return this.h.send(node, h, strips[i]);
        }),
      );
      this.settle(req, targets, results);
      const rsp = new Header();
      return { hdr: rsp, data: Buffer.alloc(0) };
    });
  }

  /** REMOVE_OBJ: every strip. */
  remove(req: Header, policy: number): Promise<Reply> {
    return this.h.withRetry(async (epoch) => {
      const code = ErasureCode.forPolicy(policy);
      const targets = this.placement(req, code);
      const results = await Promise.allSettled(
        targets.map((node, i) =>
          this.h.send(node, this.stripHeader(req, Op.REMOVE_PEER, epoch, policy, i, 0, 0), EMPTY)
        ),
      );
      this.settle(req, targets, results);
      return { hdr: new Header(), data: EMPTY };
    });
  }

  private placement(req: Header, code: ErasureCode): SdNode[] {
    const targets = this.h.targets(req.oid, req.objCopies);
    if (targets.length < code.d) {
      throw new SdError(
        Res.SYSTEM_ERROR,
        `${targets.length} zones cannot hold the ${code.d} data strips of ${code.d}:${code.p}`,
      );
    }
    return targets;
  }

  private stripHeader(
    req: Header,
    peerOp: number,
    epoch: number,
    policy: number,
    idx: number,
    off: number,
    len: number,
  ): Header {
    const h = this.h.peerHeader(req, peerOp, epoch);
    h.ecIndex = idx;
    h.objCopyPolicy = policy;
    h.offset = off;
    h.dataLength = len;
    return h;
  }

  /**
   * Object bytes [off, off+len) at `epoch`: the data strips of the covering stripes, with parity
   * strips standing in for the ones that cannot be read.
   */
  private async readRange(
    req: Header,
    policy: number,
    epoch: number,
    off: number,
    len: number,
  ): Promise<Buffer> {
    const code = ErasureCode.forPolicy(policy);
    const targets = this.placement(req, code);
    const r = stripeRange(off, len, code.d);
    const strips: (Buffer | null)[] = new Array(code.n).fill(null);
    let retry: SdError | null = null;
    let other: SdError | null = null;
    const fetch = async (i: number) => {
      const h = this.stripHeader(req, Op.READ_PEER, epoch, policy, i, r.stripOff, r.stripLen);
      h.flags &= ~Flag.CMD_WRITE;
      try {
        const rep = await this.h.send(targets[i], h, EMPTY);
        if (rep.hdr.result === Res.SUCCESS && rep.data.length === r.stripLen) {
          strips[i] = rep.data;
          return;
        }
        const code = rep.hdr.result === Res.SUCCESS ? Res.EIO : rep.hdr.result;
        const e = new SdError(code, `${strerror(code)} (${nodeHostPort(targets[i])}, strip ${i})`);
        if (this.h.retryable(code)) retry = e;
        else other ??= e;
      } catch (e) {
        const err = e instanceof SdError ? e : new SdError(Res.NETWORK_ERROR, String(e));
        if (this.h.retryable(err.code)) retry = err;
        else other ??= err;
      }
    };
    await Promise.all([...Array(code.d).keys()].map(fetch));
    let have = strips.filter((s) => s).length;
    // Parity strips, as many as are missing, then one more at a time if those fail too.
    let next = code.d;
    while (have < code.d && next < Math.min(code.n, targets.length)) {
      const batch: number[] = [];
      while (batch.length < code.d - have && next < Math.min(code.n, targets.length)) {
        batch.push(next++);
      }
      await Promise.all(batch.map(fetch));
      have = strips.filter((s) => s).length;
    }
    if (have < code.d) {
      // A holder that could not answer may come back (or the epoch moves): let the caller retry.
      if (retry) {
        throw new SdError(
          Res.NETWORK_ERROR,
          `${req.oid.toString(16)}: ${have} of ${code.d} strips: ${(retry as Error).message}`,
        );
      }
      throw other ?? new SdError(Res.NO_OBJ);
    }
    const dataIdx = [...Array(code.d).keys()];
    if (dataIdx.some((i) => !strips[i])) code.reconstruct(strips, r.stripLen, dataIdx);
    const joined = code.join(strips.slice(0, code.d) as Uint8Array[]);
    const from = off - r.start * STRIPE;
    return joined.subarray(from, from + len);
  }

  private settle(req: Header, targets: SdNode[], results: PromiseSettledResult<Reply>[]): void {
    let firstErr: SdError | null = null;
    results.forEach((r, i) => {
      let e: SdError | null = null;
      if (r.status === "rejected") {
        e = r.reason instanceof SdError
          ? r.reason
          : new SdError(Res.NETWORK_ERROR, String(r.reason));
      } else if (r.value.hdr.result !== Res.SUCCESS) {
        e = new SdError(
          r.value.hdr.result,
          `${strerror(r.value.hdr.result)} (${nodeHostPort(targets[i])}, op 0x${
            req.opcode.toString(16)
          }, oid ${req.oid.toString(16).padStart(16, "0")} strip ${i})`,
        );
      }
      if (e && (!firstErr || this.h.retryable(e.code))) firstErr = e;
    });
    if (firstErr) throw firstErr;
  }
}

const EMPTY = Buffer.alloc(0);
