// Cluster operations through the membership driver. A work-phase op waits in this sheep's queue
// until the driver offers it the cluster-wide block, runs there, and its result is broadcast with
// the unblock; a notify op is broadcast and every sheep runs its main phase. Either way the
// request that started it is answered when the message comes back in the total order, so every
// sheep has applied it before the client hears of it.
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import { cbor } from "../core/cbor.ts";
import type { SdNode } from "../core/node.ts";
import { EMPTY, Header } from "../core/proto.ts";
import type { ClusterDriver } from "../drivers/driver.ts";
import type { Logger } from "./log.ts";
import { type Apply, errorReply, type Reply, type WorkResult } from "./ops/reply.ts";

/** The broadcast of a cluster op (notify) or of a work phase's result (unblock). */
interface ClusterOpMsg {
  kind: "op";
  opId: string;
  /** The request header for a notify op (48 bytes); empty for a work phase's result. */
  req: Buffer;
  rsp: Buffer;
  data: Buffer;
  apply?: Apply;
}

export interface ClusterQueueContext {
  driver(): ClusterDriver;
  log(): Logger;
  mainPhase(req: Header, data: Buffer, sender: SdNode): Promise<Reply>;
  applyWorkResult(a: Apply): void;
}

/** Work phases waiting for the block at once: bounded like every other queue here. */
const MAX_QUEUED_WORK = 4096;

export class ClusterOpQueue {
  private readonly pending = new Map<string, (r: Reply) => void>();
  private readonly work_: Array<{ opId: string; run: () => Promise<WorkResult> }> = [];

  constructor(private readonly c: ClusterQueueContext) {}

  /** A cluster op with a work phase: serialized cluster-wide with block/unblock. */
  work(run: () => Promise<WorkResult>): Promise<Reply> {
    if (this.work_.length >= MAX_QUEUED_WORK) {
      return Promise.resolve(errorReply(new Header(), new Error("too many cluster operations")));
    }
    const opId = randomBytes(8).toString("hex");
    return new Promise((resolve) => {
      this.pending.set(opId, resolve);
      this.work_.push({ opId, run });
      void this.c.driver().block();
    });
  }

  /** A cluster op without work phase: broadcast; every node applies it in order. */
  notify(req: Header, data: Buffer): Promise<Reply> {
    const opId = randomBytes(8).toString("hex");
    return new Promise((resolve) => {
      this.pending.set(opId, resolve);
      const rsp = new Header();
      void this.c.driver().notify(
        Buffer.from(cbor.encode({ kind: "op", opId, req: req.b, rsp: rsp.b, data })),
      );
    });
  }

  /** The block reached us: run the next work phase and broadcast its result with the unblock. */
  runNext(): boolean {
    const w = this.work_.shift();
    const driver = this.c.driver();
    if (!w) {
      void driver.unblock(Buffer.from(cbor.encode({ kind: "noop" })));
      return true;
    }
    w.run()
      .catch((e): WorkResult => {
        this.c.log().warn(`cluster operation failed: ${(e as Error).message}`);
        return errorReply(new Header(), e);
      })
      .then((r) =>
        driver.unblock(
          Buffer.from(
            cbor.encode({
              kind: "op",
              opId: w.opId,
              req: EMPTY,
              rsp: r.hdr.b,
              data: r.data,
              apply: r.apply,
            }),
          ),
        )
      );
    return true;
  }

  /** A broadcast in the total order: run the main phase or apply the result, answer the caller. */
  async onNotify(sender: SdNode, msg: Buffer): Promise<void> {
    let m: ClusterOpMsg | { kind: string };
    try {
      m = cbor.decode(msg);
    } catch (e) {
      this.c.log().warn(`undecodable cluster message from a member: ${(e as Error).message}`);
      return;
    }
    if (m.kind !== "op") return;
    const op = m as ClusterOpMsg;
    let rsp = new Header(Buffer.from(op.rsp));
    let data: Buffer = Buffer.from(op.data ?? EMPTY);
    if (op.req && op.req.length === 48) {
      // notify-type op: main phase on every node
      try {
        const r = await this.c.mainPhase(new Header(Buffer.from(op.req)), data, sender);
        rsp = r.hdr;
        data = r.data;
      } catch (e) {
        rsp = errorReply(new Header(Buffer.from(op.req)), e).hdr;
      }
    } else if (op.apply) {
      this.c.applyWorkResult(op.apply);
    }
    const done = this.pending.get(op.opId);
    if (done) {
      this.pending.delete(op.opId);
      done({ hdr: rsp, data });
    }
  }
}
