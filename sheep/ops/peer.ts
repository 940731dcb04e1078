// Peer ops: what a replica does to its own store when a gateway asks (READ/WRITE/
// CREATE_AND_WRITE/REMOVE/DECREF_PEER, GET_HASH). Requests of an older epoch are refused, of a
// newer one wait for it; an object this node should hold but does not yet is recovered first.
import { Buffer } from "node:buffer";
import { EMPTY, Flag, Header, objectDigest, Op, Res } from "../../core/proto.ts";
import { errnoToRes, SdError } from "../../core/errors.ts";
import { nodeEqual, type SdNode } from "../../core/node.ts";
import { LEDGER_BIT } from "../../core/oid.ts";
import type { Ring } from "../../core/ring.ts";
import {
  applyLedgerDecref,
  ledgerFromBuffer,
  ledgerToBuffer,
  registerInode,
  type VdiTable,
} from "../../core/vdi.ts";
import type { ObjectStore } from "../../io/store.ts";
import type { Gateway } from "../gateway.ts";
import type { Logger } from "../log.ts";
import { decodeWriteRuns } from "../../core/write-runs.ts";
import { inodeHeaderOf, type Reply, withResult } from "./reply.ts";

/** What peer ops see of the daemon. */
export interface PeerContext {
  readonly opts: { readonly gateway: boolean };
  readonly state: { readonly epoch: number };
  readonly store: ObjectStore;
  readonly recovery: { ensure(oid: bigint, ec?: number): Promise<void> };
  readonly vdis: VdiTable;
  readonly ring: Ring;
  readonly me: SdNode;
  readonly gateway: Gateway;
  readonly log: Logger;
  waitEpoch(epoch: number, ms: number): Promise<void>;
  ecPolicyOf(oid: bigint, hint?: number): number;
  storedSize(oid: bigint, policyHint?: number): number;
  copiesFor(oid: bigint, hint: number): number;
}

export class PeerOps {
  constructor(private readonly s: PeerContext) {}

  async handle(req: Header, data: Buffer): Promise<Reply> {
    const rsp = new Header();
    // Strip files are named by ec_index, strip 0 included; replicas have no suffix.
    const ec = this.s.ecPolicyOf(req.oid, req.objCopyPolicy) ? req.ecIndex : undefined;
    if (req.opcode !== Op.GET_HASH && !(req.flags & Flag.CMD_RECOVERY)) {
      if (req.epoch < this.s.state.epoch) {
        return { hdr: withResult(rsp, Res.OLD_NODE_VER), data: EMPTY };
      }
      if (req.epoch > this.s.state.epoch) {
        await this.s.waitEpoch(req.epoch - 1, 5000);
        if (req.epoch > this.s.state.epoch) {
          return { hdr: withResult(rsp, Res.NEW_NODE_VER), data: EMPTY };
        }
      }
    }
    if (this.s.opts.gateway) return { hdr: withResult(rsp, Res.NO_OBJ), data: EMPTY };
    // Never past the object's end: nothing is allocated, nor a sparse file grown, for a bogus
    // length or offset.
    const length = req.opcode === Op.READ_PEER ? req.dataLength : data.length;
    if (
      (req.opcode === Op.READ_PEER || req.opcode === Op.WRITE_PEER ||
        req.opcode === Op.CREATE_AND_WRITE_PEER) &&
      req.offset + length > this.s.storedSize(req.oid, req.objCopyPolicy)
    ) return { hdr: withResult(rsp, Res.INVALID_PARMS), data: EMPTY };
    try {
      switch (req.opcode) {
        case Op.READ_PEER: {
          if (req.flags & Flag.CMD_RECOVERY) {
            if (this.s.store.exists(req.oid, ec)) {
              return {
                hdr: rsp,
                data: await this.s.store.read(req.oid, req.offset, req.dataLength, ec),
              };
            }
            return {
              hdr: rsp,
              data: await this.s.store.readStale(
                req.oid,
                req.tgtEpoch,
                req.offset,
                req.dataLength,
                ec,
              ),
            };
          }
          await this.present(req.oid, ec);
          const d = await this.s.store.read(req.oid, req.offset, req.dataLength, ec);
          return { hdr: rsp, data: d };
        }
        case Op.CREATE_AND_WRITE_PEER: {
          await this.s.store.createAndWrite(
            req.oid,
            req.offset,
            data,
            this.s.storedSize(req.oid, req.objCopyPolicy),
            ec,
          );
          const ih = inodeHeaderOf(req.oid, req.offset, data);
          if (ih) registerInode(this.s.vdis, ih);
          return { hdr: rsp, data: EMPTY };
        }
        case Op.WRITE_PEER:
          await this.present(req.oid, ec);
          // CMD_NOSYNC: the gateway's next synced write of this object covers it (sheep/gateway.ts
          // writeRuns).
          await this.s.store.write(req.oid, req.offset, data, ec, !!(req.flags & Flag.CMD_NOSYNC));
          return { hdr: rsp, data: EMPTY };
        case Op.WRITE_RUNS_PEER: {
          // Replicated objects only: the gateway sends EC strips' runs one by one.
          if (ec !== undefined) return { hdr: withResult(rsp, Res.INVALID_PARMS), data: EMPTY };
          const runs = decodeWriteRuns(data, this.s.storedSize(req.oid, req.objCopyPolicy));
          await this.present(req.oid);
          await this.s.store.writeRuns(req.oid, runs, !!(req.flags & Flag.CMD_NOSYNC));
          return { hdr: rsp, data: EMPTY };
        }
        case Op.REMOVE_PEER:
          await this.s.store.remove(req.oid, ec);
          return { hdr: rsp, data: EMPTY };
        case Op.GET_HASH: {
          const size = this.s.storedSize(req.oid, req.objCopyPolicy);
          let d: Buffer;
          if (this.s.store.verify(req.oid, ec)) d = await this.s.store.read(req.oid, 0, size, ec);
          else if (req.flags & Flag.CMD_RECOVERY) {
            // Recovery compares a copy it holds stale with what it would fetch (READ_PEER's
            // choice: the current copy, else the stale one of tgt_epoch).
            d = await this.s.store.readStale(req.oid, req.tgtEpoch, 0, size, ec);
          } else return { hdr: withResult(rsp, Res.NO_OBJ), data: EMPTY };
          objectDigest(d).copy(rsp.b, 24);
          return { hdr: rsp, data: EMPTY };
        }
        case Op.DECREF_PEER:
          await this.decrefPeer(req.oid, req.b.readUInt32LE(24), req.b.readUInt32LE(28));
          return { hdr: rsp, data: EMPTY };
        default:
          return { hdr: withResult(rsp, Res.INVALID_PARMS), data: EMPTY };
      }
    } catch (e) {
      return { hdr: withResult(rsp, e instanceof SdError ? e.code : errnoToRes(e)), data: EMPTY };
    }
  }

  /** A peer read or write of an object this sheep lacks (recovery not there yet): fetched first. */
  private async present(oid: bigint, ec?: number): Promise<void> {
    if (!this.s.store.exists(oid, ec)) await this.s.recovery.ensure(oid, ec);
  }

  private readonly ledgerLocks = new Map<bigint, Promise<void>>();

  /**
   * One replica's share of a DECREF (protocol.md §9.4): update the ledger; when no generation
   * references the data object any more, drop the ledger, and the first holder of the ledger
   * removes the data object from the cluster.
   */
  private decrefPeer(ledger: bigint, gen: number, count: number): Promise<void> {
    const prev = this.ledgerLocks.get(ledger) ?? Promise.resolve();
    const next = prev.catch(() => {}).then(async () => {
      const size = 4 * 1024 * 1024;
      const cur = this.s.store.exists(ledger)
        ? ledgerFromBuffer(await this.s.store.read(ledger, 0, size))
        : null;
      const r = applyLedgerDecref(cur, gen, count);
      if (!r.empty) {
        await this.s.store.createAndWrite(ledger, 0, ledgerToBuffer(r.ledger), size);
        return;
      }
      if (cur) {
        await this.s.store.remove(ledger).catch((e) =>
          this.s.log.warn(`dropping ledger ${ledger.toString(16)}: ${(e as Error).message}`)
        );
      }
      const first = this.s.ring.placeObject(ledger, this.s.copiesFor(ledger, 0))[0];
      if (first && nodeEqual(first, this.s.me)) {
        const h = Header.req(Op.REMOVE_OBJ);
        h.oid = ledger & ~LEDGER_BIT;
        void this.s.gateway.writeAll(h, EMPTY).catch((e) =>
          this.s.log.warn(`reclaim ${h.oid.toString(16)}: ${(e as Error).message}`)
        );
      }
    });
    this.ledgerLocks.set(ledger, next);
    void next.finally(() => {
      if (this.ledgerLocks.get(ledger) === next) this.ledgerLocks.delete(ledger);
    });
    return next;
  }
}
