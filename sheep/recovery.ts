// Recovery executor: after every epoch change each storage node fetches the objects the new ring
// places on it from holders of earlier epochs, serves requests for not-yet-recovered objects by
// recovering them first, reports completion, and drops stale copies only once every member has
// finished (so a copy is never deleted before its new owners have it).
import { Buffer } from "node:buffer";
import type { SdNode } from "../core/node.ts";
import { nodeEqual, nodeHostPort } from "../core/node.ts";
import { Ring } from "../core/ring.ts";
import type { EpochRing } from "../core/recovery.ts";
import {
  nextRecoverySource,
  objectsNoLongerOwned,
  objectsToRecover,
  recoverySources,
  type SourceAnswer,
} from "../core/recovery.ts";
import { Flag, Header, objectDigest, Op, Res } from "../core/proto.ts";
import { SdError } from "../core/errors.ts";
import { assert, AssertionError } from "../core/assert.ts";
import type { Clock, TimerHandle } from "../core/clock.ts";
import type { ObjectStore } from "../io/store.ts";
import { realClock } from "../io/clock.ts";
import type { Logger } from "./log.ts";
import type { EcRecovery } from "./ec-recovery.ts";

type Reply = { hdr: Header; data: Buffer };

/** The part of the object store recovery uses (the simulation plugs an in-memory one in). */
export type RecoveryStore = Pick<
  ObjectStore,
  | "exists"
  | "list"
  | "createAndWrite"
  | "moveToStale"
  | "readStale"
  | "reviveStale"
  | "listStale"
  | "purgeStale"
>;

export type RecoveryLog = Pick<Logger, "emerg" | "err" | "warn" | "info" | "debug">;

export interface RecoveryHost {
  readonly me: SdNode;
  readonly log: RecoveryLog;
  store(): RecoveryStore;
  epoch(): number;
  ring(): Ring;
  /** Storage members of the current epoch. */
  nodes(): SdNode[];
  /** Ring of an earlier epoch (from the epoch log), or null when unknown. */
  ringOf(epoch: number): Promise<Ring | null>;
  copiesFor(oid: bigint): number;
  storedSize(oid: bigint): number;
  peer(node: SdNode, hdr: Header): Promise<Reply>;
  /** Broadcast COMPLETE_RECOVERY for `epoch`. */
  reportComplete(epoch: number): Promise<void>;
  disabled(): boolean;
  throttle(): { max: number; interval: number };
  /** Free bytes on the local store (recovery pauses instead of filling the disk). */
  freeBytes(): bigint;
  /** Client (non-recovery) requests being served right now. */
  clientLoad(): number;
  /** An object was recovered here (an inode tells the node about its VDI). */
  installed?(oid: bigint, data: Buffer): void;
  /** Erasure-coded objects: one strip per node, recovered by sheep/ec-recovery.ts. */
  ec?: EcRecovery;
}

const MAX_ATTEMPTS = 50;
/** Tries of one source per fetch before it counts as failed, and the first wait between them. */
const SOURCE_TRIES = 3;
const SOURCE_BACKOFF_MS = 50;

/**
 * A fetch that could not reach a source that may hold a newer copy than the reachable ones. It is
 * retried for as long as the run lasts: giving up would let this node report the epoch complete,
 * and the purge of stale copies that follows could delete the only newest copy.
 */
class RetryLater extends SdError {
  constructor(message: string) {
    super(Res.NETWORK_ERROR, message);
  }
}

export class RecoveryManager {
  private generation = 0;
  private running = false;
  private pending = new Set<bigint>();
  private inflight = new Map<bigint, Promise<void>>();
  private total = 0;
  private finished = 0;
  /** Of `finished`: stale copies here put back in place (equal to their source's copy). */
  private revived = 0;
  private phase = 0; // 0 preparing object list, 1 recovering objects, 2 notifying completion
  private lastComplete = 0;
  private reported = new Map<number, Set<string>>();
  /** Epochs of the stale copies here, per replicated object, listed once per run. */
  private staleHere = new Map<bigint, number[]>();
  private wake: (() => void) | null = null;
  /** Resolves once the running recovery knows its object list (or was superseded). */
  private planned: Promise<void> = Promise.resolve();
  private planDone: () => void = () => {};
  pausedReason = "";

  /** `clock` drives every wait and throttle interval; the simulation passes a virtual one. */
  constructor(private readonly host: RecoveryHost, private readonly clock: Clock = realClock) {}

  /** Newest epoch whose recovery every member completed (0: none since this daemon started). */
  get completedEpoch(): number {
    return this.lastComplete;
  }

  status(): { inRecovery: boolean; state: number; finished: number; total: number } {
    return {
      inRecovery: this.running,
      state: this.phase,
      finished: this.finished,
      total: this.total,
    };
  }

  /** Called when recovery might be needed: an epoch change, or the cluster became ready. */
  start(movedFrom: number | null): void {
    const gen = ++this.generation;
    this.running = true;
    this.phase = 0;
    this.planDone();
    this.planned = new Promise((resolve) => (this.planDone = resolve));
    this.poke();
    void this.run(gen, movedFrom).catch((e) =>
      this.host.log.err(`recovery: ${(e as Error).stack ?? e}`)
    );
  }

  /** Recovery was re-enabled, or throttle changed: resume a paused loop. */
  poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = this.clock.setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      this.wake = () => {
        this.clock.clearTimeout(t);
        resolve();
      };
    });
  }

  private async run(gen: number, movedFrom: number | null): Promise<void> {
    const h = this.host;
    const epoch = h.epoch();
    // Copies this node no longer owns become stale copies of the epoch they belonged to. Right
    // away: waiting first would leave them current for good if the cluster restarts meanwhile.
    // A fetch of the superseded run may still be installing its object; a later stale pass must
    // see it, or a copy nobody updates would stay current here (upstream also lets in-flight
    // objects finish before a new recovery starts). One pass per landing, not one after the last:
    // a restart before the last one lands would leave the others current for good (a restart in
    // the same epoch moves nothing). A pass lists the store when it starts, so a fetch that was
    // in flight then and lands during the pass needs one more pass even if none is left after it.
    for (;;) {
      const busy = this.inflight.size > 0;
      if (movedFrom !== null) await this.moveUnowned(epoch, movedFrom);
      if (gen !== this.generation) return;
      if (!busy) break;
      if (this.inflight.size) {
        await Promise.race([...this.inflight.values()].map((p) => p.then(() => {}, () => {})));
        if (gen !== this.generation) return;
      }
    }
    // After the moves above, so a copy this run made stale is seen (EC strips are not revived).
    this.staleHere = new Map();
    for (const c of h.store().listStale()) {
      if (c.ecIndex !== undefined) continue;
      const epochs = this.staleHere.get(c.oid);
      if (epochs) epochs.push(c.epoch);
      else this.staleHere.set(c.oid, [c.epoch]);
    }
    const known = await this.gatherLists(gen);
    if (known === null) return;
    const todo = objectsToRecover({
      me: h.me,
      ring: h.ring(),
      copiesOf: (o) => h.copiesFor(o),
      known,
      present: (o) => this.present(o),
    });
    if (gen !== this.generation) return;
    assert(this.phase === 0, `recovery: planning in phase ${this.phase}`);
    this.pending = new Set(todo);
    this.total = todo.length;
    this.finished = 0;
    this.revived = 0;
    this.phase = 1;
    this.planDone();
    if (todo.length) h.log.info(`recovery for epoch ${epoch}: ${todo.length} objects to fetch`);
    const attempts = new Map<bigint, number>();
    const queue = [...todo];
    while (queue.length && gen === this.generation) {
      if (h.disabled()) {
        await this.sleep(500);
        continue;
      }
      if (h.freeBytes() < BigInt(h.storedSize(queue[0])) * 2n) {
        if (!this.pausedReason) h.log.emerg(`recovery paused: store is full`);
        this.pausedReason = "store is full";
        await this.sleep(1000);
        continue;
      }
      this.pausedReason = "";
      const { max, interval } = h.throttle();
      // Unthrottled: full speed while idle, upstream's 2 in parallel while clients are served,
      // so recovery does not starve VMs.
      const batchSize = max > 0 && interval > 0 ? max : h.clientLoad() > 0 ? 2 : 8;
      const batch = queue.splice(0, batchSize);
      const started = this.clock.now();
      const results = await Promise.allSettled(batch.map((oid) => this.recoverOne(oid, gen)));
      let slow = false;
      results.forEach((r, i) => {
        const oid = batch[i];
        if (r.status === "fulfilled") return;
        if (r.reason instanceof AssertionError) throw r.reason;
        const n = (attempts.get(oid) ?? 0) + 1;
        attempts.set(oid, n);
        // Never given up: completing the epoch with an object missing here would let the
        // holders purge the stale copies that may be its only ones. It is retried (more slowly
        // past MAX_ATTEMPTS) and the epoch stays unreported until it lands.
        if (r.reason instanceof RetryLater) {
          if (n % 10 === 1) h.log.warn(`recovery: ${oid.toString(16)}: ${r.reason.message}`);
        } else if (n === MAX_ATTEMPTS || (n > MAX_ATTEMPTS && n % 100 === 0)) {
          h.log.err(
            `recovery: ${oid.toString(16)} still failing after ${n} attempts: ${
              (r.reason as Error).message
            }; epoch ${epoch} stays incomplete until it is recovered`,
          );
        }
        queue.push(oid);
        if (n >= MAX_ATTEMPTS) slow = true;
      });
      if (results.some((r) => r.status === "rejected")) await this.sleep(slow ? 1000 : 100);
      if (max > 0 && interval > 0) {
        const left = interval - (this.clock.now() - started);
        if (left > 0) await this.sleep(left);
      }
    }
    if (gen !== this.generation) return;
    assert(this.finished <= this.total, `recovery: ${this.finished} of ${this.total} finished`);
    this.phase = 2;
    this.pending.clear();
    if (this.total) {
      h.log.info(
        `recovery for epoch ${epoch} finished (${this.finished}/${this.total}, ${this.revived} ` +
          `from stale copies here)`,
      );
    }
    // Reporting is retried: completion must reach every member or stale copies stay forever.
    for (let attempt = 0;; attempt++) {
      if (gen !== this.generation) return;
      try {
        await h.reportComplete(epoch);
        break;
      } catch (e) {
        if (attempt % 10 === 0) {
          h.log.warn(`recovery: reporting epoch ${epoch} complete: ${(e as Error).message}`);
        }
        await this.sleep(500);
      }
    }
    if (gen === this.generation) this.running = false;
  }

  /** The copy (or, for EC, the strip) the current ring gives this node is here. */
  private present(oid: bigint): boolean {
    return this.host.store().exists(oid, this.host.ec?.localIndex(oid));
  }

  private async moveUnowned(epoch: number, movedFrom: number): Promise<void> {
    const h = this.host;
    const store = h.store();
    const local = store.list();
    const ec = h.ec;
    if (ec) {
      await ec.moveUnowned(local.filter((o) => ec.isEc(o)), movedFrom, (oid, i, e) => {
        if (movedMeanwhile(e)) return;
        h.log.err(
          `recovery for epoch ${epoch}: cannot move strip ${i} of ${oid.toString(16)} to stale ` +
            `copies of epoch ${movedFrom}: ${e.message}`,
        );
      });
    }
    const gone = objectsNoLongerOwned({
      me: h.me,
      ring: h.ring(),
      copiesOf: (o) => h.copiesFor(o),
      local: ec ? local.filter((o) => !ec.isEc(o)) : local,
    });
    for (const oid of gone) {
      // A copy that cannot be moved stays current here: fetches and writes still see it, it
      // just is not purged. Worth an operator's look, not worth stopping recovery for.
      await store.moveToStale(oid, movedFrom).catch((e) => {
        if (movedMeanwhile(e)) return;
        h.log.err(
          `recovery for epoch ${epoch}: cannot move ${oid.toString(16)} to stale copies of ` +
            `epoch ${movedFrom}: ${(e as Error).message}`,
        );
      });
    }
  }

  /** Object lists of every member; a member that cannot answer is asked again (never skipped). */
  private async gatherLists(gen: number): Promise<bigint[] | null> {
    const out: bigint[] = [];
    for (const n of this.host.nodes()) {
      for (let attempt = 0;; attempt++) {
        if (gen !== this.generation) return null;
        try {
          out.push(...(await this.objectList(n)));
          break;
        } catch (e) {
          if (attempt % 10 === 0) {
            this.host.log.warn(
              `recovery: object list from ${nodeHostPort(n)}: ${(e as Error).message}`,
            );
          }
          await this.sleep(200);
        }
      }
    }
    return out;
  }

  private async objectList(n: SdNode): Promise<bigint[]> {
    let size = 4 * 1024 * 1024;
    for (;;) {
      const h = Header.req(Op.GET_OBJ_LIST, { dataLength: size });
      h.epoch = this.host.epoch();
      const r = await this.host.peer(n, h);
      if (r.hdr.result === Res.BUFFER_SMALL) {
        size *= 2;
        continue;
      }
      if (r.hdr.result !== Res.SUCCESS) throw new SdError(r.hdr.result);
      const list: bigint[] = [];
      for (let i = 0; i + 8 <= r.data.length; i += 8) list.push(r.data.readBigUInt64LE(i));
      return list;
    }
  }

  /** A request needs `oid` now: recover it first, out of order (upstream parks such requests). */
  async ensure(oid: bigint, ecIndex?: number): Promise<void> {
    if (this.host.store().exists(oid, ecIndex)) return;
    // While the object list is being gathered any missing object may be one to recover: wait
    // for the plan instead of answering "no object" to a request the gateway would not retry.
    if (this.running && this.phase === 0) {
      let t: TimerHandle | undefined;
      await Promise.race([
        this.planned,
        new Promise<void>((r) => (t = this.clock.setTimeout(r, 10_000))),
      ]);
      this.clock.clearTimeout(t);
    }
    if (!this.pending.has(oid) || this.present(oid)) return;
    // The request then fails with "no object" and its gateway retries; the run loop keeps trying.
    await this.recoverOne(oid, this.generation).catch((e) =>
      this.host.log.warn(
        `recovery: ${oid.toString(16)} needed by a request: ${(e as Error).message}`,
      )
    );
  }

  private recoverOne(oid: bigint, gen: number): Promise<void> {
    let p = this.inflight.get(oid);
    if (!p) {
      p = this.fetch(oid, gen).finally(() => this.inflight.delete(oid));
      this.inflight.set(oid, p);
    }
    return p;
  }

  private async fetch(oid: bigint, gen: number): Promise<void> {
    const h = this.host;
    const store = h.store();
    if (this.present(oid)) {
      this.done(oid);
      return;
    }
    const copies = h.copiesFor(oid);
    const history: EpochRing[] = [];
    for (let e = h.epoch() - 1; e >= Math.max(1, this.lastComplete - 1); e--) {
      const ring = await h.ringOf(e);
      if (ring) history.push({ epoch: e, ring });
    }
    // The current ring last: a peer that already recovered the object is a good source too.
    history.push({ epoch: h.epoch(), ring: h.ring() });
    const alive = (n: SdNode) => h.nodes().some((m) => nodeEqual(m, n));
    if (h.ec?.isEc(oid)) {
      await h.ec.fetch(oid, history, alive, () => gen !== this.generation);
      this.done(oid);
      return;
    }
    const size = h.storedSize(oid);
    const sources = recoverySources({ oid, copies, me: h.me, history, alive });
    // A copy this node keeps stale (it left and came back, or the ring moved the object away
    // and back) is put back in place, not fetched, when it equals what the source would send.
    const mine = await this.localStale(oid, history, size);
    const answers: Array<SourceAnswer | undefined> = [];
    let lastErr: unknown = new SdError(Res.NO_OBJ);
    for (;;) {
      const i = nextRecoverySource(sources, answers);
      if (i === "absent") throw new SdError(Res.NO_OBJ);
      if (i === "retry") {
        throw new RetryLater(`${(lastErr as Error).message}; newer copies unreachable`);
      }
      const src = sources[i];
      if (mine && !nodeEqual(src.node, h.me) && await this.sameAtSource(oid, src, mine.digest)) {
        if (gen !== this.generation) throw new SdError(Res.NETWORK_ERROR, "superseded");
        if (await this.revive(oid, mine.epoch)) {
          h.installed?.(oid, mine.data);
          if (this.pending.has(oid)) this.revived++;
          this.done(oid);
          return;
        }
      }
      let data: Buffer | null = null;
      // A blip of the newest holder is retried here: moving on could reach an older epoch's copy.
      for (let attempt = 0; data === null; attempt++) {
        if (gen !== this.generation) throw new SdError(Res.NETWORK_ERROR, "superseded");
        try {
          data = await this.readSource(oid, src, size);
        } catch (e) {
          if (e instanceof AssertionError) throw e;
          lastErr = e;
          if (e instanceof SdError && e.code === Res.NO_OBJ) {
            answers[i] = "absent";
            break;
          }
          if (attempt + 1 >= SOURCE_TRIES) {
            answers[i] = "failed";
            break;
          }
          await this.delay(SOURCE_BACKOFF_MS << attempt);
        }
      }
      if (data === null) continue;
      // A superseded run must not install objects: the new epoch may not place them here.
      if (gen !== this.generation) throw new SdError(Res.NETWORK_ERROR, "superseded");
      if (!store.exists(oid)) {
        await store.createAndWrite(oid, 0, data, size);
        h.installed?.(oid, data);
      }
      this.done(oid);
      return;
    }
  }

  /** The newest stale copy of `oid` here among the epochs recovery looks at, with its digest. */
  private async localStale(
    oid: bigint,
    history: EpochRing[],
    size: number,
  ): Promise<{ epoch: number; data: Buffer; digest: Buffer } | null> {
    const here = this.staleHere.get(oid);
    if (!here) return null;
    for (const { epoch } of history) {
      if (epoch >= this.host.epoch() || !here.includes(epoch)) continue;
      try {
        const data = await this.host.store().readStale(oid, epoch, 0, size);
        return { epoch, data, digest: objectDigest(data) };
      } catch (e) {
        // None of that epoch, or one that fails its checksums: fetched as if absent.
        if (e instanceof AssertionError) throw e;
      }
    }
    return null;
  }

  /** The source's copy (READ_PEER's choice: current, else stale of `src.epoch`) has `digest`. */
  private async sameAtSource(
    oid: bigint,
    src: { node: SdNode; epoch: number },
    digest: Buffer,
  ): Promise<boolean> {
    try {
      const r = await this.host.peer(src.node, this.sourceRequest(Op.GET_HASH, oid, src.epoch, 0));
      return r.hdr.result === Res.SUCCESS && r.hdr.digest.equals(digest);
    } catch {
      return false; // the fetch that follows meets the same trouble and deals with it
    }
  }

  /** False when the stale copy went meanwhile (a purge): the object is fetched instead. */
  private async revive(oid: bigint, epoch: number): Promise<boolean> {
    try {
      await this.host.store().reviveStale(oid, epoch);
      return true;
    } catch (e) {
      if (e instanceof SdError && e.code === Res.NO_OBJ) return false;
      throw e;
    }
  }

  /** One source's copy: its current copy or its stale copy of `src.epoch`. */
  private async readSource(
    oid: bigint,
    src: { node: SdNode; epoch: number },
    size: number,
  ): Promise<Buffer> {
    const h = this.host;
    if (nodeEqual(src.node, h.me)) return await h.store().readStale(oid, src.epoch, 0, size);
    const r = await h.peer(src.node, this.sourceRequest(Op.READ_PEER, oid, src.epoch, size));
    if (r.hdr.result !== Res.SUCCESS) throw new SdError(r.hdr.result);
    return r.data;
  }

  /** A recovery request about a source's copy of `tgtEpoch` (current, else stale). */
  private sourceRequest(op: number, oid: bigint, tgtEpoch: number, dataLength: number): Header {
    const rq = Header.req(op, { flags: Flag.CMD_RECOVERY, dataLength });
    rq.oid = oid;
    rq.tgtEpoch = tgtEpoch;
    rq.epoch = this.host.epoch();
    return rq;
  }

  /** A wait of one fetch (several run at once, so it does not take the loop's wake-up slot). */
  private delay(ms: number): Promise<void> {
    return new Promise((resolve) => this.clock.setTimeout(resolve, ms));
  }

  private done(oid: bigint): void {
    if (this.pending.delete(oid)) this.finished++;
    assert(this.finished <= this.total, `recovery: ${this.finished} of ${this.total} finished`);
  }

  /**
   * COMPLETE_RECOVERY from `node` for `epoch`, delivered in total order on every member. When all
   * storage members of the current epoch have reported, stale copies are no longer needed.
   */
  async onComplete(node: SdNode, epoch: number): Promise<void> {
    if (epoch !== this.host.epoch()) return;
    const set = this.reported.get(epoch) ?? new Set<string>();
    set.add(nodeHostPort(node));
    this.reported.set(epoch, set);
    const all = this.host.nodes().every((n) => set.has(nodeHostPort(n)));
    if (!all || this.lastComplete >= epoch) return;
    this.lastComplete = epoch;
    for (const e of [...this.reported.keys()]) if (e <= epoch) this.reported.delete(e);
    await this.host.store().purgeStale();
  }
}

/**
 * A move that found no object: the pass of a run that overlaps this one (two quick membership
 * changes) moved it first. Nothing is left current here, so there is nothing to report.
 */
function movedMeanwhile(e: unknown): boolean {
  return e instanceof SdError && e.code === Res.NO_OBJ;
}
