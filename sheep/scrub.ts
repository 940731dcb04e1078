// Background scrub (issue 15; upstream has none, Ceph and Vitastor do): each sheep walks its own
// objects at a bounded rate, verifies each file against its stored checksums (io/checksum.ts)
// and, for the objects it is the first holder of, compares the replicas' SHA-1 (GET_HASH) across
// the holders. A corrupt local copy is read through the gateway, which serves another replica
// and repairs this one (the same path a client read takes); a replica whose hash differs from
// the majority is refetched from a majority holder (REPAIR_REPLICA, as `dog vdi check` does).
import { Header, Op, Res } from "../core/proto.ts";
import { nodeEqual, nodeHostPort, type SdNode } from "../core/node.ts";
import { oidHex } from "../core/oid.ts";
import type { ScrubStatus } from "../core/payloads.ts";
import type { Ring } from "../core/ring.ts";
import type { ObjectStore } from "../io/store.ts";
import type { Logger } from "./log.ts";
import type { Reply } from "./ops/reply.ts";

export interface ScrubHost {
  readonly log: Pick<Logger, "info" | "warn" | "err">;
  store(): ObjectStore;
  me(): SdNode;
  epoch(): number;
  ring(): Ring;
  /** The cluster is formatted and running, and no recovery is in progress. */
  quiet(): boolean;
  copiesFor(oid: bigint): number;
  storedSize(oid: bigint): number;
  isEc(oid: bigint): boolean;
  /** A gateway read of the whole object (repairs a replica that fails its checksums). */
  gatewayRead(oid: bigint, size: number): Promise<Reply>;
  sendTo(node: SdNode, hdr: Header): Promise<Reply>;
}

const CORRUPT = "corrupt";
const nowS = () => BigInt(Math.floor(Date.now() / 1000));

export class Scrubber {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;
  private st: ScrubStatus;
  private cur = { objects: 0, bytes: 0n, corrupt: 0, mismatched: 0, repaired: 0, failed: 0 };

  constructor(
    private readonly h: ScrubHost,
    private readonly cfg: { intervalS: number; rateMBs: number } | null,
  ) {
    this.st = {
      enabled: cfg !== null,
      running: false,
      passes: 0,
      startedAt: 0n,
      finishedAt: 0n,
      nextAt: 0n,
      bytes: 0n,
      objects: 0,
      corrupt: 0,
      mismatched: 0,
      repaired: 0,
      failed: 0,
      intervalS: cfg?.intervalS ?? 0,
      rateMBs: cfg?.rateMBs ?? 0,
      progress: 0,
    };
  }

  /** Plans the first pass one interval from now (a restart does not scrub at once). */
  schedule(): void {
    if (!this.cfg || this.stopped) return;
    this.plan(this.cfg.intervalS * 1000);
  }

  private plan(ms: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.st.nextAt = nowS() + BigInt(Math.ceil(ms / 1000));
    this.timer = setTimeout(() => void this.start(), ms);
    (this.timer as { unref?: () => void }).unref?.();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  status(): ScrubStatus {
    return { ...this.st, progress: this.cur.objects };
  }

  /** Starts a pass now (`dog node scrub start`); false when one is already running. */
  start(): boolean {
    if (this.running || this.stopped) return false;
    this.st.running = true;
    this.st.startedAt = nowS();
    this.st.nextAt = 0n;
    this.cur = { objects: 0, bytes: 0n, corrupt: 0, mismatched: 0, repaired: 0, failed: 0 };
    this.running = this.pass()
      .catch((e) => this.h.log.err(`scrub: ${(e as Error).stack ?? e}`))
      .finally(() => {
        Object.assign(this.st, this.cur, { running: false, finishedAt: nowS() });
        this.st.passes++;
        this.running = null;
        const c = this.cur;
        this.h.log.info(
          `scrub finished: ${c.objects} objects, ${c.bytes} bytes, ${c.corrupt} corrupt, ` +
            `${c.mismatched} mismatched, ${c.repaired} repaired, ${c.failed} failed`,
        );
        if (this.cfg) this.plan(this.cfg.intervalS * 1000);
      });
    return true;
  }

  /** Resolves when the running pass (if any) is over. */
  idle(): Promise<void> {
    return this.running ?? Promise.resolve();
  }

  private async pass(): Promise<void> {
    const rate = (this.cfg?.rateMBs ?? DEFAULT_MANUAL_RATE) * 1024 * 1024;
    const t0 = Date.now();
    this.h.log.info(`scrub started (${rate / 1048576} MB/s)`);
    for (const { oid, ecIndex } of this.h.store().listFiles()) {
      if (this.stopped) return;
      // Recovery moves and refetches objects: hashes compared meanwhile would be noise.
      while (!this.h.quiet()) {
        await sleep(1000);
        if (this.stopped) return;
      }
      const bytes = await this.scrubOne(oid, ecIndex);
      this.cur.objects++;
      this.cur.bytes += BigInt(bytes);
      // Bounded rate: never ahead of `rate` bytes per second since the pass began.
      const ahead = Number(this.cur.bytes) / rate * 1000 - (Date.now() - t0);
      await sleep(ahead > 0 ? ahead : 0);
    }
  }

  /** Checks one object file; returns the bytes read. */
  private async scrubOne(oid: bigint, ecIndex?: number): Promise<number> {
    const h = this.h;
    let r: { ok: boolean; bytes: number };
    try {
      r = await h.store().scrubObject(oid, ecIndex);
    } catch (e) {
      // Gone meanwhile (removed, moved to .stale) or its disk failed: nothing to scrub here.
      if ((e as { code?: number }).code !== Res.NO_OBJ) {
        h.log.warn(`scrub: ${oidHex(oid)}: ${(e as Error).message}`);
      }
      return 0;
    }
    if (!r.ok) {
      this.cur.corrupt++;
      if (ecIndex !== undefined || h.isEc(oid)) {
        h.log.err(
          `scrub: EC strip ${oidHex(oid)}_${ecIndex} is corrupt; dog vdi check rebuilds it`,
        );
        this.cur.failed++;
        return r.bytes;
      }
      h.log.err(`scrub: ${oidHex(oid)} fails its stored checksums here, repairing`);
      await this.repairByRead(oid);
    }
    if (ecIndex === undefined && !h.isEc(oid)) await this.compareReplicas(oid);
    return r.bytes;
  }

  private async repairByRead(oid: bigint): Promise<void> {
    const h = this.h;
    try {
      const rsp = await h.gatewayRead(oid, h.storedSize(oid));
      const again = await h.store().scrubObject(oid).catch(() => ({ ok: false, bytes: 0 }));
      if (rsp.hdr.result === Res.SUCCESS && again.ok) this.cur.repaired++;
      else this.cur.failed++;
    } catch (e) {
      this.cur.failed++;
      h.log.warn(`scrub: repairing ${oidHex(oid)}: ${(e as Error).message}`);
    }
  }

  /**
   * The first holder compares every holder's SHA-1 and has the minority refetch the majority's
   * copy. No majority (e.g. two copies that differ) is logged, never guessed.
   */
  private async compareReplicas(oid: bigint): Promise<void> {
    const h = this.h;
    const targets = h.ring().placeObject(oid, h.copiesFor(oid));
    if (targets.length < 2 || !nodeEqual(targets[0], h.me())) return;
    const epoch = h.epoch();
    const found: Array<{ node: SdNode; hash: string | null }> = [];
    for (const n of targets) {
      const q = Header.req(Op.GET_HASH);
      q.oid = oid;
      q.epoch = epoch;
      q.tgtEpoch = epoch;
      try {
        const r = await h.sendTo(n, q);
        if (r.hdr.result === Res.SUCCESS) {
          found.push({ node: n, hash: r.hdr.digest.toString("hex") });
        } else if (r.hdr.result === Res.EIO) found.push({ node: n, hash: CORRUPT });
        else if (r.hdr.result === Res.NO_OBJ) found.push({ node: n, hash: null });
        else return; // a holder that cannot answer now: next pass
      } catch {
        return;
      }
    }
    const votes = new Map<string, number>();
    for (const f of found) {
      if (f.hash && f.hash !== CORRUPT) votes.set(f.hash, (votes.get(f.hash) ?? 0) + 1);
    }
    let best = "", bestN = 0, tie = false;
    for (const [hash, n] of votes) {
      if (n > bestN) [best, bestN, tie] = [hash, n, false];
      else if (n === bestN) tie = true;
    }
    // Missing copies are recovery's business; only present copies that differ are repaired.
    const bad = found.filter((f) => f.hash !== null && f.hash !== best);
    if (bad.length === 0) return;
    this.cur.mismatched += bad.length;
    if (tie || bestN === 0) {
      h.log.err(`scrub: replicas of ${oidHex(oid)} differ and no majority decides`);
      this.cur.failed += bad.length;
      return;
    }
    const src = found.find((f) => f.hash === best)!.node;
    for (const f of bad) {
      const q = Header.req(Op.REPAIR_REPLICA);
      q.epoch = epoch;
      q.oid = oid;
      src.addr.copy(q.b, 24, 0, 16);
      q.b.writeUInt16LE(src.port, 40);
      const r = await h.sendTo(f.node, q).catch(() => null);
      if (r?.hdr.result === Res.SUCCESS) {
        this.cur.repaired++;
        h.log.warn(
          `scrub: repaired replica of ${oidHex(oid)} on ${nodeHostPort(f.node)} from ${
            nodeHostPort(src)
          }`,
        );
      } else {
        this.cur.failed++;
        h.log.err(`scrub: failed to repair ${oidHex(oid)} on ${nodeHostPort(f.node)}`);
      }
    }
  }
}

/** Rate of a pass started by hand on a sheep run with `--scrub off`. */
const DEFAULT_MANUAL_RATE = 4;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
