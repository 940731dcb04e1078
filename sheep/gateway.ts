// Gateway: turns object requests into peer requests on the replica holders of the current epoch's
// ring. Reads go to one replica (the local one first); writes go to every replica in parallel and
// are acknowledged only when all of them have persisted. Failures caused by a membership change
// (peer gone, epoch moved) are retried on the next epoch's ring, as upstream's gateway does.
import { Buffer } from "node:buffer";
import type { SdNode } from "../core/node.ts";
import { nodeEqual, nodeHostPort, nodeIp } from "../core/node.ts";
import type { Ring } from "../core/ring.ts";
import { Flag, Header, Op, Res, SD_SHEEP_PROTO_VER, strerror } from "../core/proto.ts";
import { SdError } from "../core/errors.ts";
import type { ClientPool } from "../io/client.ts";
import { EcGateway } from "./ec-io.ts";
import { encodeWriteRuns, MAX_WRITE_RUNS, type WriteRun } from "../core/write-runs.ts";

export interface PeerHandler {
  /** Executes a peer opcode on this node's store. */
  handlePeer(hdr: Header, data: Buffer): Promise<{ hdr: Header; data: Buffer }>;
}

export interface GatewayContext {
  readonly me: SdNode;
  epoch(): number;
  ring(): Ring;
  /** Resolves when the epoch is > `epoch` or after `ms`. */
  waitEpoch(epoch: number, ms: number): Promise<void>;
  copiesFor(oid: bigint, hint: number): number;
  /** Cluster flag STRICT (`dog cluster format -t`). */
  strict(): boolean;
  pool: ClientPool;
  local: PeerHandler;
  /** EC policy byte when `oid` is striped (0: replicated); `hint` is the request's copy_policy. */
  ecPolicy?(oid: bigint, hint: number): number;
  /** Size of the file holding `oid` (a whole replica), for repairing a corrupt copy. */
  storedSize?(oid: bigint, hint: number): number;
  /** Where repairs of corrupt replicas are reported. */
  log?(msg: string): void;
}

const RETRYABLE = new Set<number>([
  Res.OLD_NODE_VER,
  Res.NEW_NODE_VER,
  Res.NETWORK_ERROR,
  Res.WAIT_FOR_JOIN,
  Res.WAIT_FOR_FORMAT,
  Res.KILLED,
  Res.SHUTDOWN,
]);
const RETRY_LIMIT_MS = 30_000;

export const PEER_OP: Record<number, number> = {
  [Op.CREATE_AND_WRITE_OBJ]: Op.CREATE_AND_WRITE_PEER,
  [Op.READ_OBJ]: Op.READ_PEER,
  [Op.WRITE_OBJ]: Op.WRITE_PEER,
  [Op.REMOVE_OBJ]: Op.REMOVE_PEER,
  [Op.DECREF_OBJ]: Op.DECREF_PEER,
};

export class Gateway {
  /** The epoch in which a replica refused WRITE_RUNS_PEER (-1: none). */
  private runsRefusedIn = -1;
  private readonly ec: EcGateway;
  constructor(private readonly ctx: GatewayContext) {
    this.ec = new EcGateway({
      targets: (oid, hint) => this.targets(oid, hint),
      send: (n, h, d) => this.sendPeer(n, h, d),
      peerHeader: (r, op, e) => this.peerHeader(r, op, e),
      withRetry: (f) => this.withRetry(f),
      retryable: (code) => RETRYABLE.has(code),
    });
  }

  private ecPolicy(req: Header): number {
    return this.ctx.ecPolicy?.(req.oid, req.objCopyPolicy) ?? 0;
  }

  targets(oid: bigint, copiesHint = 0): SdNode[] {
    return this.ctx.ring().placeObject(oid, this.ctx.copiesFor(oid, copiesHint));
  }

  private async sendPeer(
    node: SdNode,
    hdr: Header,
    data: Buffer,
  ): Promise<{ hdr: Header; data: Buffer }> {
    if (nodeEqual(node, this.ctx.me)) return await this.ctx.local.handlePeer(hdr, data);
    try {
      const c = await this.ctx.pool.get(nodeIp(node), node.port);
      const key = nodeHostPort(node);
      let set = this.inflight.get(key);
      if (!set) this.inflight.set(key, set = new Set());
      const waiting = set;
      this.watchEpoch();
      return await new Promise<{ hdr: Header; data: Buffer }>((resolve, reject) => {
        waiting.add(reject);
        c.request(hdr, hdr.flags & Flag.CMD_WRITE ? data : undefined).then(resolve, reject)
          .finally(() => waiting.delete(reject));
      });
    } catch (e) {
      if (e instanceof SdError) throw e;
      throw new SdError(Res.NETWORK_ERROR, `${nodeHostPort(node)}: ${(e as Error).message}`);
    }
  }

  /** Requests waiting on each remote node ("host:port"): their rejecters. */
  private readonly inflight = new Map<string, Set<(e: Error) => void>>();
  private watching = false;

  /**
   * While requests are out, watches for epoch changes: a request to a node the new epoch no
   * longer has fails at once (and is retried on the new ring) instead of waiting for a TCP
   * timeout. A partitioned node never answers nor resets: without this a majority's writes
   * stalled for a minute after the partition (found by tests/e2e/chaos-partition.test.ts).
   */
  private watchEpoch(): void {
    if (this.watching) return;
    this.watching = true;
    const epoch = this.ctx.epoch();
    void this.ctx.waitEpoch(epoch, 60_000).then(() => {
      this.watching = false;
      if (this.ctx.epoch() > epoch) {
        const members = new Set(this.ctx.ring().nodes.map((n) => nodeHostPort(n)));
        for (const [key, set] of this.inflight) {
          if (members.has(key)) continue;
          const err = new SdError(Res.NETWORK_ERROR, `${key} left the cluster`);
          for (const reject of [...set]) reject(err);
          set.clear();
        }
      }
      for (const [key, set] of this.inflight) if (set.size === 0) this.inflight.delete(key);
      if (this.inflight.size > 0) this.watchEpoch();
    });
  }

  private peerHeader(req: Header, peerOp: number, epoch: number): Header {
    const h = req.clone();
    h.opcode = peerOp;
    h.protoVer = SD_SHEEP_PROTO_VER;
    h.epoch = epoch;
    // Set only by writeRuns below: a client's request never skips the replicas' syncs.
    h.flags &= ~Flag.CMD_NOSYNC;
    return h;
  }

  /** Runs `attempt` with the current epoch, retrying on the next epoch when the failure allows it. */
  private async withRetry<T>(attempt: (epoch: number) => Promise<T>): Promise<T> {
    const start = Date.now();
    for (;;) {
      const epoch = this.ctx.epoch();
      try {
        return await attempt(epoch);
      } catch (e) {
        const code = e instanceof SdError ? e.code : Res.EIO;
        if (!RETRYABLE.has(code) || Date.now() - start > RETRY_LIMIT_MS) throw e;
        await this.ctx.waitEpoch(epoch, 1000);
      }
    }
  }

  /** Gateway read: the local replica first, then the others in turn. */
  read(req: Header): Promise<{ hdr: Header; data: Buffer }> {
    const policy = this.ecPolicy(req);
    if (policy) return this.ec.read(req, policy);
    return this.withRetry(async (epoch) => {
      const targets = this.targets(req.oid, req.objCopies);
      if (targets.length === 0) throw new SdError(Res.NO_OBJ);
      const localIdx = targets.findIndex((n) => nodeEqual(n, this.ctx.me));
      const order = localIdx >= 0
        ? [targets[localIdx], ...targets.filter((_, i) => i !== localIdx)]
        : rotate(targets);
      // Built only on failure: an Error's stack capture was ~1.5 us of every read.
      let last: unknown = null;
      let netErrors = 0;
      const corrupt: SdNode[] = [];
      for (const node of order) {
        try {
          const r = await this.sendPeer(
            node,
            this.peerHeader(req, Op.READ_PEER, epoch),
            Buffer.alloc(0),
          );
          if (r.hdr.result === Res.SUCCESS) {
            if (corrupt.length > 0) await this.repair(req, node, corrupt, epoch);
            return r;
          }
          // EIO is a replica that failed its stored checksums (io/checksum.ts) or its disk.
          if (r.hdr.result === Res.EIO) corrupt.push(node);
          last = new SdError(r.hdr.result);
          if (RETRYABLE.has(r.hdr.result)) netErrors++;
        } catch (e) {
          last = e;
          netErrors++;
        }
      }
      // Only a definite answer from every holder is final: a holder that could not answer may be
      // the one with the object, so try again (on a newer epoch if membership is changing).
      if (netErrors > 0) {
        throw new SdError(
          Res.NETWORK_ERROR,
          `no holder of ${req.oid.toString(16)} answered: ${(last as Error).message}`,
        );
      }
      throw last ?? new SdError(Res.NO_OBJ);
    });
  }

  header(req: Header, peerOp: number, epoch: number): Header {
    return this.peerHeader(req, peerOp, epoch);
  }
  peer(node: SdNode, hdr: Header, data: Buffer): Promise<{ hdr: Header; data: Buffer }> {
    return this.sendPeer(node, hdr, data);
  }
  private repair(req: Header, good: SdNode, bad: SdNode[], epoch: number): Promise<void> {
    return repairCopies(this, this.ctx, req, good, bad, epoch);
  }

  /**
   * Several runs of one object written by this sheep (the object cache's push), on disk on every
   * replica when this resolves, at one fdatasync per replica instead of one per run: every run
   * but the last goes without its sync (CMD_NOSYNC) and is answered, so it is in each replica's
   * page cache, before the last is sent; the last one's fdatasync flushes all of the file's
   * dirty pages (a journal's sync all of its earlier records). If the epoch moved meanwhile, a
   * node that took an unsynced run may have got no synced one (or a new replica may have missed
   * a run): those runs are written again, synced. EC objects and creates: one synced write each.
   * `limit` runs each request (a bound on requests in flight).
   */
  async writeRuns(
    req: Header,
    runs: ReadonlyArray<WriteRun>,
    limit: <T>(f: () => Promise<T>) => Promise<T> = (f) => f(),
  ): Promise<Array<{ hdr: Header; data: Buffer }>> {
    const one = (r: WriteRun, nosync = false) =>
      limit(() => this.writeAll(runHeader(req, r), r.data, nosync));
    if (runs.length < 2 || req.opcode !== Op.WRITE_OBJ || this.ecPolicy(req)) {
      return await Promise.all(runs.map((r) => one(r)));
    }
    // All runs in one request per replica (core/write-runs.ts). A replica that does not know the
    // opcode (an older sheep during a rolling upgrade) answers INVALID_PARMS: then run by run,
    // which is idempotent, as before.
    // Refused once in an epoch, it is not tried again until the epoch moves (an upgraded sheep
    // rejoining is a new epoch), so a mixed cluster does not pay a refused request per push.
    const epoch = this.ctx.epoch();
    if (runs.length <= MAX_WRITE_RUNS && this.runsRefusedIn !== epoch) {
      try {
        const h = runHeader(req, runs[0]);
        const payload = encodeWriteRuns(runs);
        h.dataLength = payload.length;
        return [await limit(() => this.writeAll(h, payload, false, Op.WRITE_RUNS_PEER))];
      } catch (e) {
        if (!(e instanceof SdError && e.code === Res.INVALID_PARMS)) throw e;
        this.runsRefusedIn = epoch;
      }
    }
    const early = runs.slice(0, -1);
    const replies = await Promise.all(early.map((r) => one(r, true)));
    replies.push(await one(runs[runs.length - 1]));
    if (this.ctx.epoch() !== epoch) await Promise.all(early.map((r) => one(r)));
    return replies;
  }

  /**
   * Gateway write/create/remove: every replica, in parallel; all must succeed. `nosync` (plain
   * writes only, from writeRuns): the replicas skip this write's fdatasync.
   */
  writeAll(
    req: Header,
    data: Buffer,
    nosync = false,
    peerOp: number = PEER_OP[req.opcode],
  ): Promise<{ hdr: Header; data: Buffer }> {
    const policy = this.ecPolicy(req);
    if (policy && req.opcode === Op.REMOVE_OBJ) return this.ec.remove(req, policy);
    if (policy && peerOp !== Op.DECREF_PEER) return this.ec.write(req, data, policy);
    return this.withRetry(async (epoch) => {
      const copies = this.ctx.copiesFor(req.oid, req.objCopies);
      const targets = this.ctx.ring().placeObject(req.oid, copies);
      if (targets.length === 0) throw new SdError(Res.HALT);
      // Strict mode: no write or create with fewer live zones than copies (upstream's HALT),
      // rather than a silently under-replicated object.
      if (req.opcode !== Op.REMOVE_OBJ && targets.length < copies && this.ctx.strict()) {
        throw new SdError(Res.HALT);
      }
      const unsynced = nosync && peerOp === Op.WRITE_PEER;
      const results = await Promise.allSettled(
        targets.map((n) => {
          const h = this.peerHeader(req, peerOp, epoch);
          if (unsynced) h.flags |= Flag.CMD_NOSYNC;
          return this.sendPeer(n, h, data);
        }),
      );
      let firstErr: SdError | null = null;
      let ok: { hdr: Header; data: Buffer } | null = null;
      let missing = 0;
      for (const r of results) {
        if (r.status === "fulfilled" && r.value.hdr.result === Res.NO_OBJ) missing++;
        if (r.status === "rejected") {
          const e = r.reason instanceof SdError
            ? r.reason
            : new SdError(Res.NETWORK_ERROR, String(r.reason));
          if (!firstErr || RETRYABLE.has(e.code)) firstErr = e;
        } else if (r.value.hdr.result !== Res.SUCCESS) {
          const n = targets[results.indexOf(r)];
          const e = new SdError(
            r.value.hdr.result,
            `${strerror(r.value.hdr.result)} (${nodeHostPort(n)}, op 0x${
              req.opcode.toString(16)
            }, oid ${req.oid.toString(16).padStart(16, "0")})`,
          );
          if (!firstErr || RETRYABLE.has(e.code)) firstErr = e;
        } else ok = r.value;
      }
      // Some replicas have the object and one does not: that one is still recovering it (its
      // recovery could not fetch it yet). The write is idempotent, so it goes to every replica
      // again rather than failing a client write the object exists for (found by make chaos).
      const failed = results.filter((r) =>
        r.status === "rejected" || r.value.hdr.result !== Res.SUCCESS
      ).length;
      const write = peerOp === Op.WRITE_PEER || peerOp === Op.WRITE_RUNS_PEER;
      if (ok && missing > 0 && missing === failed && write) {
        throw new SdError(
          Res.NETWORK_ERROR,
          `${missing} replica(s) of ${req.oid.toString(16)} still recovering it`,
        );
      }
      if (firstErr) throw firstErr;
      return ok!;
    });
  }
}

/**
 * Writes the good copy on `good` over the corrupt copies on `bad` (the peer create path replaces
 * the file atomically, side file included). A failed repair is logged, never the client's error:
 * the next read or scrub tries again.
 */
async function repairCopies(
  g: Gateway,
  ctx: GatewayContext,
  req: Header,
  good: SdNode,
  bad: SdNode[],
  epoch: number,
): Promise<void> {
  const oid = req.oid.toString(16).padStart(16, "0");
  try {
    const size = ctx.storedSize?.(req.oid, req.objCopyPolicy) ?? 0;
    if (size <= 0) return;
    const rh = g.header(req, Op.READ_PEER, epoch);
    rh.offset = 0;
    rh.dataLength = size;
    const r = await g.peer(good, rh, Buffer.alloc(0));
    if (r.hdr.result !== Res.SUCCESS) throw new SdError(r.hdr.result);
    for (const n of bad) {
      const wh = g.header(req, Op.CREATE_AND_WRITE_PEER, epoch);
      wh.flags |= Flag.CMD_WRITE;
      wh.offset = 0;
      wh.dataLength = r.data.length;
      const w = await g.peer(n, wh, r.data);
      if (w.hdr.result !== Res.SUCCESS) throw new SdError(w.hdr.result);
      ctx.log?.(
        `repaired corrupt replica of ${oid} on ${nodeHostPort(n)} from ${nodeHostPort(good)}`,
      );
    }
  } catch (e) {
    ctx.log?.(`repair of ${oid} failed: ${(e as Error).message}`);
  }
}

/** The request of one run of writeRuns: `req` at the run's offset, with its payload. */
function runHeader(req: Header, r: WriteRun): Header {
  const h = req.clone();
  h.flags |= Flag.CMD_WRITE;
  h.offset = r.off;
  h.dataLength = r.data.length;
  return h;
}

function rotate<T>(a: T[]): T[] {
  if (a.length < 2) return a;
  const k = Math.floor(Math.random() * a.length);
  return [...a.slice(k), ...a.slice(0, k)];
}
