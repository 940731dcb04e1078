// Recovery of erasure-coded objects (upstream recovery.c, recover_erasure_object): a node owns
// one strip of an EC object, the one whose index is its position in the object's placement. It
// first looks for that very strip where earlier epochs placed it (every strip is unique, so only
// the node that was at the same position can have it); failing that it gathers any d other strips
// the same way and rebuilds its own with Reed-Solomon. Strip files a node no longer owns (it left
// the placement, or moved to another position) become stale copies of the epoch they belonged to.
import type { Buffer } from "node:buffer";
import type { SdNode } from "../core/node.ts";
import { nodeEqual, nodeHostPort } from "../core/node.ts";
import type { Ring } from "../core/ring.ts";
import type { EpochRing } from "../core/recovery.ts";
import { ErasureCode } from "../core/ec.ts";
import { Flag, Header, Op, Res, strerror } from "../core/proto.ts";
import { SdError } from "../core/errors.ts";
import type { ObjectStore } from "../io/store.ts";

type Reply = { hdr: Header; data: Buffer };

export interface EcRecoveryHost {
  readonly me: SdNode;
  store(): Pick<ObjectStore, "exists" | "read" | "createAndWrite" | "moveToStale" | "readStale">;
  ring(): Ring;
  copiesFor(oid: bigint): number;
  /** EC policy of a striped object, 0 for replicated ones. */
  policyOf(oid: bigint): number;
  /** Bytes of one strip file of `oid`. */
  stripSize(oid: bigint): number;
  peer(node: SdNode, hdr: Header): Promise<Reply>;
  epoch(): number;
}

/** Position of `me` in the placement of `oid` (= the strip it holds), or undefined. */
export function localEcIndex(ring: Ring, me: SdNode, oid: bigint, copies: number) {
  const i = ring.placeObject(oid, copies).findIndex((n) => nodeEqual(n, me));
  return i >= 0 ? i : undefined;
}

export class EcRecovery {
  constructor(private readonly h: EcRecoveryHost) {}

  isEc(oid: bigint): boolean {
    return this.h.policyOf(oid) !== 0;
  }

  /** The strip of `oid` this node owns in the current ring (undefined: none, or replicated). */
  localIndex(oid: bigint): number | undefined {
    if (!this.isEc(oid)) return undefined;
    return localEcIndex(this.h.ring(), this.h.me, oid, this.h.copiesFor(oid));
  }

  /** Strip files of `oids` held here that the current ring does not put here. */
  async moveUnowned(
    oids: Iterable<bigint>,
    movedFrom: number,
    onError: (oid: bigint, idx: number, e: Error) => void,
  ): Promise<void> {
    const store = this.h.store();
    for (const oid of oids) {
      const code = ErasureCode.forPolicy(this.h.policyOf(oid));
      const mine = this.localIndex(oid);
      for (let i = 0; i < code.n; i++) {
        if (i === mine || !store.exists(oid, i)) continue;
        await store.moveToStale(oid, movedFrom, i).catch((e) => onError(oid, i, e as Error));
      }
    }
  }

  /**
   * Recovers this node's strip of `oid`. `history`: earlier epochs' rings, newest first, then the
   * current one; `alive`: members now; `superseded`: a newer recovery took over.
   */
  async fetch(
    oid: bigint,
    history: EpochRing[],
    alive: (n: SdNode) => boolean,
    superseded: () => boolean,
  ): Promise<void> {
    const idx = this.localIndex(oid);
    const store = this.h.store();
    if (idx === undefined || store.exists(oid, idx)) return;
    const code = ErasureCode.forPolicy(this.h.policyOf(oid));
    const size = this.h.stripSize(oid);
    const why: string[] = [];
    let data = await this.findStrip(oid, idx, size, history, alive, superseded, why);
    if (!data) {
      const strips: (Uint8Array | null)[] = new Array(code.n).fill(null);
      let have = 0;
      // As many strips at once as are still needed; the next ones only if some are not found.
      const others = [...Array(code.n).keys()].filter((j) => j !== idx);
      while (have < code.d && others.length) {
        const batch = others.splice(0, code.d - have);
        const got = await Promise.all(
          batch.map((j) => this.findStrip(oid, j, size, history, alive, superseded, why)),
        );
        batch.forEach((j, k) => {
          if (got[k]) {
            strips[j] = got[k];
            have++;
          }
        });
      }
      if (have < code.d) {
        throw new SdError(
          Res.NO_OBJ,
          `strip ${idx} of ${oid.toString(16)}: only ${have} of ${code.d} strips to rebuild ` +
            `from (${why.slice(-12).join("; ")})`,
        );
      }
      code.reconstruct(strips, size, [idx]);
      data = strips[idx]! as Buffer;
    }
    if (superseded()) throw new SdError(Res.NETWORK_ERROR, "superseded");
    if (!store.exists(oid, idx)) await store.createAndWrite(oid, 0, data, size, idx);
  }

  /**
   * Strip `idx` from whoever held position `idx` in some epoch, newest epoch first. Each such node
   * is asked for its copy under every epoch tag, newest first: a node moves a strip to the stale
   * copies of the epoch it handled when it learnt it no longer owns it, which after two quick
   * membership changes can be a later epoch than the last one it really held the strip in.
   */
  private async findStrip(
    oid: bigint,
    idx: number,
    size: number,
    history: EpochRing[],
    alive: (n: SdNode) => boolean,
    superseded: () => boolean,
    why: string[],
  ): Promise<Buffer | null> {
    const copies = this.h.copiesFor(oid);
    const tags = [...new Set(history.map((h) => h.epoch))].sort((a, b) => b - a);
    const holders: SdNode[] = [];
    for (const { ring } of history) {
      const node = ring.placeObject(oid, copies)[idx];
      if (node && alive(node) && !holders.some((n) => nodeEqual(n, node))) holders.push(node);
    }
    for (const node of holders) {
      for (const tag of tags) {
        if (superseded()) throw new SdError(Res.NETWORK_ERROR, "superseded");
        const key = `${idx}@${nodeHostPort(node)}@${tag}`;
        try {
          if (nodeEqual(node, this.h.me)) {
            const st = this.h.store();
            const b = st.exists(oid, idx)
              ? await st.read(oid, 0, size, idx)
              : await st.readStale(oid, tag, 0, size, idx);
            if (b.length === size) return b;
            why.push(`${key}: ${b.length} bytes`);
            continue;
          }
          const rq = Header.req(Op.READ_PEER, { flags: Flag.CMD_RECOVERY, dataLength: size });
          rq.oid = oid;
          rq.tgtEpoch = tag;
          rq.epoch = this.h.epoch();
          rq.ecIndex = idx;
          rq.objCopyPolicy = this.h.policyOf(oid);
          const r = await this.h.peer(node, rq);
          if (r.hdr.result === Res.SUCCESS && r.data.length === size) return r.data;
          why.push(`${key}: ${strerror(r.hdr.result)}`);
        } catch (e) {
          why.push(`${key}: ${(e as Error).message}`);
        }
      }
    }
    return null;
  }
}
