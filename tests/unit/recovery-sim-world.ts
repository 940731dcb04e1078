// The simulated world of tests/unit/recovery-sim.test.ts: sheep processes running the real
// RecoveryManager on a virtual clock, their disks, the network between them, and the invariants.
import { Buffer } from "node:buffer";
import process from "node:process";
import { setImmediate } from "node:timers";
import { makeNode, nodeEqual, type SdNode } from "../../core/node.ts";
import { Ring } from "../../core/ring.ts";
import { type EpochRing, recoverySources } from "../../core/recovery.ts";
import { Flag, Header, objectDigest, Op, Res } from "../../core/proto.ts";
import { SdError } from "../../core/errors.ts";
import { type Clock, SimClock, type TimerHandle } from "../../core/clock.ts";
import {
  type RecoveryHost,
  type RecoveryLog,
  RecoveryManager,
  type RecoveryStore,
} from "../../sheep/recovery.ts";

// ------------------------------------------------------------------------------------------ PRNG

/** mulberry32: small, fast, and the same sequence on every runtime. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = (Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) ^ 0x2545f491) >>> 0;
  }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

// ------------------------------------------------------------------------------------------ world

/** Placement is pure; memoizing it keeps thousands of invariant checks cheap. */
export class MemoRing extends Ring {
  private memo = new Map<number, Map<bigint, SdNode[]>>();
  override placeObject(oid: bigint, copies: number): SdNode[] {
    let m = this.memo.get(copies);
    if (!m) this.memo.set(copies, m = new Map());
    let p = m.get(oid);
    if (!p) m.set(oid, p = super.placeObject(oid, copies));
    return p;
  }
}

/**
 * Transient failures of requests to live sources that succeed when retried. The executor retries
 * object lists and completion reports, and an object read from a source that may hold a newer
 * copy than the next ones (never moving on to an older epoch's copy). SIM_READ_FAULTS=0 turns
 * read faults off, to tell a fault-handling bug from a source-order one.
 */
const LIST_FAULT = 0.05;
const REPORT_FAULT = 0.1;
export const READ_FAULT = process.env.SIM_READ_FAULTS === "0" ? 0 : 0.05;

/** Objects hold only their version: 8 bytes, u64 LE. */
const OBJ_SIZE = 8;
function verBuf(v: number): Buffer {
  const b = Buffer.alloc(OBJ_SIZE);
  b.writeBigUInt64LE(BigInt(v));
  return b;
}

interface StaleCopy {
  oid: bigint;
  epoch: number;
  v: number;
}

/** One pending event of the simulated world; `owner` is the process whose request it serves. */
interface SimEvent {
  owner: Incarnation;
  run: () => void;
}

/** One run of a sheep process: its RecoveryManager, and what dies with it. */
class Incarnation {
  alive = true;
  rm!: RecoveryManager;
  constructor(readonly node: SimNode) {}
}

export class SimNode {
  alive = true;
  /** Last epoch this daemon took part in (its cluster state, on disk). */
  epoch = 0;
  /** The disk: current objects and stale copies, kept across restarts. */
  store = new Map<bigint, number>();
  stale = new Map<string, StaleCopy>();
  inc: Incarnation;
  constructor(readonly node: SdNode) {
    this.inc = new Incarnation(this);
  }
  get rm(): RecoveryManager {
    return this.inc.rm;
  }
  get name(): string {
    return String(this.node.port);
  }
  staleOf(oid: bigint, epoch: number): number | undefined {
    return this.stale.get(`${oid}@${epoch}`)?.v;
  }
  moveToStale(oid: bigint, epoch: number): boolean {
    const v = this.store.get(oid);
    if (v === undefined) return false;
    this.store.delete(oid);
    this.stale.set(`${oid}@${epoch}`, { oid, epoch, v }); // rename(2) replaces an older file
    return true;
  }
}

export interface SimOptions {
  /** copies per VDI; objects of VDI i use copies[i]. */
  copies: number[];
  /** Objects per VDI. */
  objects: number;
  /** Recovery batch size: 8 idle, 2 under client load, else the throttle's max. */
  batch: number;
  zones: number[];
  maxNodes: number;
  zoneCount: number;
  /** Chance that an object read from a live source fails (default READ_FAULT). */
  readFault?: number;
}

const VIDS = [0x7c2b25n, 0x3a1f00n, 0x51d0c3n];

export class Violation extends Error {}

/** Where a reply's data came from, for the log and the stats. */
interface Origin {
  from: string;
  stale: boolean;
  epoch: number;
}

export class Sim {
  nodes: SimNode[] = [];
  private byPort = new Map<number, SimNode>();
  rings: MemoRing[] = [];
  members: SimNode[][] = [];
  epoch = 1;
  truth = new Map<bigint, number>();
  readonly clock = new SimClock(1_000_000);
  private events: SimEvent[] = [];
  private violation: string | null = null;
  private origins = new WeakMap<Buffer, Origin>();
  private nextVer = 1;
  private nextPort = 7000;
  readonly oids: bigint[] = [];
  log: string[] = [];
  private cur: string[] = [];
  /** Kills since the last cluster-wide completed recovery, and the least redundancy since then. */
  killsSinceComplete = 0;
  redundancy = 0;
  readonly minCopies: number;
  stats = {
    epochs: 0,
    kills: 0,
    restarts: 0,
    adds: 0,
    fullRestarts: 0,
    writes: 0,
    failedWrites: 0,
    ensures: 0,
    events: 0,
    timers: 0,
    faults: 0,
    fetched: 0,
    fromStale: 0,
    revived: 0,
    landedLate: 0,
    quiescentChecks: 0,
    completions: 0,
  };

  constructor(readonly rng: Rng, readonly opt: SimOptions) {
    for (let v = 0; v < opt.copies.length; v++) {
      for (let i = 0; i < opt.objects; i++) this.oids.push((VIDS[v] << 32n) | BigInt(i * 7 + v));
    }
    this.minCopies = Math.min(...opt.copies);
    for (const z of opt.zones) this.newNode(z).epoch = 1;
    this.rings[1] = new MemoRing(this.nodes.map((n) => n.node));
    this.members[1] = [...this.nodes];
    this.redundancy = Math.min(this.minCopies, this.rings[1].nrZones);
  }

  copiesOf(oid: bigint): number {
    return this.opt.copies[VIDS.indexOf(oid >> 32n)];
  }
  get ring(): MemoRing {
    return this.rings[this.epoch];
  }
  get live(): SimNode[] {
    return this.nodes.filter((n) => n.alive);
  }
  sim(n: SdNode): SimNode {
    return this.byPort.get(n.port)!;
  }
  isMember(n: SdNode): boolean {
    return this.members[this.epoch].some((m) => nodeEqual(m.node, n));
  }
  owners(oid: bigint, epoch = this.epoch): SimNode[] {
    return this.rings[epoch].placeObject(oid, this.copiesOf(oid)).map((n) => this.sim(n));
  }
  private newNode(zone: number): SimNode {
    const n = new SimNode(makeNode("127.0.0.1", this.nextPort++, { zone }));
    this.boot(n);
    this.nodes.push(n);
    this.byPort.set(n.node.port, n);
    return n;
  }

  note(s: string): void {
    this.cur.push(s);
  }
  fail(msg: string): never {
    this.note(`VIOLATION: ${msg}`);
    throw new Violation(msg);
  }
  /** A violation seen inside a callback of the executor (which would catch a throw). */
  private flag(msg: string): void {
    this.note(`VIOLATION: ${msg}`);
    this.violation ??= msg;
  }
  beginStep(s: string): void {
    this.cur = [s];
  }
  endStep(): void {
    this.log.push(this.cur.join("; "));
    this.cur = [];
  }
  flushStep(): void {
    if (this.cur.length) this.endStep();
  }

  // ---------------------------------------------------------------- the executor's world

  /** Starts a sheep process on n: a fresh RecoveryManager over n's disk. */
  private boot(n: SimNode): void {
    const inc = new Incarnation(n);
    n.inc = inc;
    inc.rm = new RecoveryManager(this.host(inc), this.clockOf(inc));
  }

  /** Stops n's process: its requests, replies and timers die with it; its disk stays. */
  private halt(n: SimNode): void {
    n.inc.alive = false;
    this.events = this.events.filter((e) => e.owner !== n.inc);
  }

  private schedule(owner: Incarnation, run: () => void): void {
    if (owner.alive) this.events.push({ owner, run });
  }

  /** The shared virtual clock, as one process sees it: its timers do not outlive it. */
  private clockOf(inc: Incarnation): Clock {
    const c = this.clock;
    return {
      now: () => c.now(),
      setTimeout: (fn: () => void, ms: number): TimerHandle =>
        c.setTimeout(() => {
          if (inc.alive) fn();
        }, ms),
      clearTimeout: (h: TimerHandle) => c.clearTimeout(h),
    };
  }

  private logOf(n: SimNode): RecoveryLog {
    const say = (lvl: string) => (m: string) => {
      this.note(`${n.name} ${lvl}: ${m}`);
      if (m.includes("AssertionError")) this.flag(`${n.name} executor assertion: ${m}`);
    };
    return {
      emerg: say("EMERG"),
      err: say("ERR"),
      warn: say("warn"),
      info: say("info"),
      debug() {},
    };
  }

  /** n's disk as the executor sees it. A created object shows once its write reached the disk. */
  private storeOf(inc: Incarnation): RecoveryStore {
    const n = inc.node;
    const live = () => {
      if (!inc.alive) this.flag(`${n.name}: a stopped process touched the store`);
    };
    return {
      exists: (oid) => n.store.has(oid),
      list: () => [...n.store.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)),
      createAndWrite: (oid, _off, data) => {
        live();
        const v = Number(data.readBigUInt64LE(0));
        const origin = this.origins.get(data);
        return new Promise<void>((resolve) =>
          this.schedule(inc, () => {
            // rename(2) over whatever is there
            const t = this.truth.get(oid) ?? 0;
            if (v < t) {
              this.flag(
                `${n.name} installed v${v} of ${
                  hex(oid)
                } (from ${origin?.from}) but v${t} is acknowledged`,
              );
            }
            n.store.set(oid, v);
            this.stats.fetched++;
            if (origin?.stale) this.stats.fromStale++;
            const late = origin !== undefined && origin.epoch !== n.epoch;
            if (late) this.stats.landedLate++;
            this.note(
              `${n.name} got ${hex(oid)} v${v} from ${origin?.from}${late ? " (superseded)" : ""}`,
            );
            resolve();
          })
        );
      },
      moveToStale: (oid, epoch) => {
        live();
        return n.moveToStale(oid, epoch)
          ? Promise.resolve()
          : Promise.reject(new SdError(Res.NO_OBJ));
      },
      readStale: (oid, epoch) => {
        live();
        const v = n.staleOf(oid, epoch);
        if (v === undefined) return Promise.reject(new SdError(Res.NO_OBJ));
        const b = verBuf(v);
        this.origins.set(b, { from: `${n.name}@e${epoch}`, stale: true, epoch: n.epoch });
        return Promise.resolve(b);
      },
      listStale: () => [...n.stale.values()].map((c) => ({ oid: c.oid, epoch: c.epoch })),
      reviveStale: (oid, epoch) => {
        live();
        const v = n.staleOf(oid, epoch);
        if (v === undefined) return Promise.reject(new SdError(Res.NO_OBJ));
        return new Promise<void>((resolve) =>
          this.schedule(inc, () => {
            // rename(2) back, unless it is gone (purged) or a current copy landed meanwhile
            if (n.staleOf(oid, epoch) === undefined) {
              return resolve(Promise.reject(new SdError(Res.NO_OBJ)) as never);
            }
            if (!n.store.has(oid)) {
              const t = this.truth.get(oid) ?? 0;
              if (v < t) {
                this.flag(
                  `${n.name} revived v${v} of ${hex(oid)}@e${epoch} but v${t} is acknowledged`,
                );
              }
              n.stale.delete(`${oid}@${epoch}`);
              n.store.set(oid, v);
              this.stats.revived++;
              this.note(`${n.name} revived ${hex(oid)} v${v} from its stale copy @e${epoch}`);
            }
            resolve();
          })
        );
      },
      purgeStale: () => {
        live();
        n.stale.clear();
        return Promise.resolve();
      },
    };
  }

  /** What a source sheep answers to a recovery request (sheep/daemon.ts GET_OBJ_LIST, READ_PEER). */
  private answer(src: SimNode, h: Header): { hdr: Header; data: Buffer } {
    const rsp = new Header();
    rsp.opcode = h.opcode;
    if (h.opcode === Op.GET_OBJ_LIST) {
      const oids = new Set([...src.store.keys(), ...[...src.stale.values()].map((s) => s.oid)]);
      if (oids.size * 8 > h.dataLength) {
        rsp.result = Res.BUFFER_SMALL;
        return { hdr: rsp, data: Buffer.alloc(0) };
      }
      const data = Buffer.alloc(oids.size * 8);
      [...oids].forEach((o, i) => data.writeBigUInt64LE(o, i * 8));
      return { hdr: rsp, data };
    }
    if (h.opcode === Op.GET_HASH && h.flags & Flag.CMD_RECOVERY) {
      const v = src.store.get(h.oid) ?? src.staleOf(h.oid, h.tgtEpoch);
      if (v === undefined) rsp.result = Res.NO_OBJ;
      else objectDigest(verBuf(v)).copy(rsp.b, 24);
      return { hdr: rsp, data: Buffer.alloc(0) };
    }
    if (h.opcode === Op.READ_PEER && h.flags & Flag.CMD_RECOVERY) {
      const cur = src.store.get(h.oid);
      const v = cur ?? src.staleOf(h.oid, h.tgtEpoch);
      if (v === undefined) {
        rsp.result = Res.NO_OBJ;
        return { hdr: rsp, data: Buffer.alloc(0) };
      }
      const data = verBuf(v);
      this.origins.set(data, {
        from: `${src.name}@e${h.tgtEpoch}`,
        stale: cur === undefined,
        epoch: h.epoch,
      });
      return { hdr: rsp, data };
    }
    rsp.result = Res.INVALID_PARMS;
    return { hdr: rsp, data: Buffer.alloc(0) };
  }

  private host(inc: Incarnation): RecoveryHost {
    const n = inc.node;
    const batch = this.opt.batch;
    return {
      me: n.node,
      log: this.logOf(n),
      store: () => this.storeOf(inc),
      epoch: () => n.epoch,
      ring: () => this.rings[n.epoch],
      nodes: () => this.members[n.epoch].map((m) => m.node),
      ringOf: (e) => Promise.resolve(this.rings[e] ?? null),
      copiesFor: (oid) => this.copiesOf(oid),
      storedSize: () => OBJ_SIZE,
      // Two events: the request reaches the source (which answers from its state then), and the
      // reply reaches us. A source that is down fails the request, as a refused connection would.
      peer: (node, hdr) =>
        new Promise((resolve, reject) =>
          this.schedule(inc, () => {
            const src = this.sim(node);
            const p = hdr.opcode === Op.GET_OBJ_LIST
              ? LIST_FAULT
              : this.opt.readFault ?? READ_FAULT;
            if (!src.alive || (p && this.rng.chance(p))) {
              if (src.alive) this.stats.faults++;
              return reject(new SdError(Res.NETWORK_ERROR, `${src.name} unreachable`));
            }
            const r = this.answer(src, hdr);
            this.schedule(inc, () => resolve(r));
          })
        ),
      // COMPLETE_RECOVERY goes through the cluster driver: delivered to every live member in one
      // total order, or (now and then) not sent at all and retried by the executor.
      reportComplete: (epoch) =>
        new Promise((resolve, reject) =>
          this.schedule(inc, () => {
            if (this.rng.chance(REPORT_FAULT)) {
              this.stats.faults++;
              return reject(new SdError(Res.NETWORK_ERROR, "cluster driver busy"));
            }
            this.note(`${n.name} reports e${epoch}`);
            const purged = this.live.filter((m) => m.rm.completedEpoch < epoch);
            void Promise.all(this.live.map((m) => m.rm.onComplete(n.node, epoch))).then(() => {
              const done = purged.filter((m) => m.rm.completedEpoch >= epoch);
              if (done.length && epoch === this.epoch) {
                this.stats.completions++;
                this.note(`e${epoch} complete: stale purged`);
                this.killsSinceComplete = 0;
                this.redundancy = Math.min(this.minCopies, this.ring.nrZones);
              }
              resolve();
            });
          })
        ),
      disabled: () => false,
      throttle:
        () => (batch === 1 || batch === 4 ? { max: batch, interval: 10 } : { max: 0, interval: 0 }),
      freeBytes: () => 1n << 40n,
      clientLoad: () => (batch === 2 ? 1 : 0),
    };
  }

  /** Lets every promise chain run until it waits for an event or a timer. */
  async settle(): Promise<void> {
    await new Promise<void>((r) => setImmediate(r));
    if (this.violation) this.fail(this.violation);
  }

  /** Delivers one event, picked by the seed; with none pending, time moves to the next timer. */
  async tick(): Promise<boolean> {
    if (this.events.length) {
      const i = this.rng.int(this.events.length);
      const [e] = this.events.splice(i, 1);
      this.stats.events++;
      e.run();
    } else if (this.clock.fireNext()) {
      this.stats.timers++;
    } else return false;
    await this.settle();
    return true;
  }

  /** Runs the world until `p` settles (a request waiting for recovery). */
  private async until<T>(p: Promise<T>, what: string): Promise<T> {
    let done = false;
    const q = p.finally(() => (done = true));
    await this.settle();
    for (let i = 0; !done; i++) {
      if (i > 200_000 || !(await this.tick())) this.fail(`${what} never finishes`);
    }
    return q;
  }

  /** The history a fetch walks: epochs current-1 down to lastComplete-1, then the current ring. */
  history(n: SimNode): EpochRing[] {
    const h: EpochRing[] = [];
    for (let e = n.epoch - 1; e >= Math.max(1, n.rm.completedEpoch - 1); e--) {
      h.push({ epoch: e, ring: this.rings[e] });
    }
    h.push({ epoch: n.epoch, ring: this.rings[n.epoch] });
    return h;
  }

  /** First source that would answer a fetch started now (RecoveryManager.fetch's walk): a peer
   *  answers from its current copy, else its stale copy of the asked epoch; this node reads only
   *  its own stale copies. */
  lookup(n: SimNode, oid: bigint): { v: number; from: string; stale: boolean } | null {
    const srcs = recoverySources({
      oid,
      copies: this.copiesOf(oid),
      me: n.node,
      history: this.history(n),
      alive: (x) => this.isMember(x),
    });
    for (const s of srcs) {
      const src = this.sim(s.node);
      if (!src.alive) continue; // the request to a dead node fails
      const cur = src === n ? undefined : src.store.get(oid);
      const v = cur ?? src.staleOf(oid, s.epoch);
      if (v !== undefined) return { v, from: `${src.name}@e${s.epoch}`, stale: cur === undefined };
    }
    return null;
  }

  /** A request needs oid now (the daemon's READ_PEER/WRITE_PEER call ensure() when it is missing). */
  private async ensure(n: SimNode, oid: bigint): Promise<void> {
    this.stats.ensures++;
    this.note(`${n.name} needs ${hex(oid)}`);
    await this.until(n.rm.ensure(oid), `${n.name} ensure(${hex(oid)})`);
  }

  quiescent(): boolean {
    return this.events.length === 0 && this.live.every((n) => !n.rm.status().inRecovery);
  }

  /** Delivers up to `units` events or timers. */
  async work(units: number): Promise<void> {
    for (let i = 0; i < units; i++) if (!(await this.tick())) break;
  }

  /** Runs the world until nothing is left to do. */
  async drain(): Promise<void> {
    for (let i = 0; i < 1_000_000; i++) {
      if (!(await this.tick())) {
        if (!this.quiescent()) this.fail("recovery stalls: nothing pending but not finished");
        return;
      }
    }
    this.fail("recovery does not finish");
  }

  // ---------------------------------------------------------------- membership (sheep/daemon.ts)

  private async newEpoch(members: SimNode[], joiner: SimNode | null): Promise<void> {
    const e = ++this.epoch;
    this.stats.epochs++;
    this.rings[e] = new MemoRing(members.map((n) => n.node));
    this.members[e] = members;
    this.redundancy = Math.min(this.redundancy, this.minCopies, this.rings[e].nrZones);
    this.note(`epoch ${e}: [${members.map((n) => `${n.name}/z${n.node.zone}`).join(" ")}]`);
    for (const n of members) {
      // Not in the cluster's last epoch: its data is kept only as stale copies (purge_obj).
      if (n === joiner && n.epoch > 0) {
        const all = [...n.store.keys()];
        for (const oid of all) n.moveToStale(oid, n.epoch);
        if (all.length) this.note(`${n.name} rejoins: ${all.length} objects stale@e${n.epoch}`);
      }
      const prev = n.epoch;
      n.epoch = e;
      n.rm.start(prev > 0 ? prev : null);
    }
    // Membership events reach the daemons one event-loop turn apart.
    await this.settle();
  }

  canKill(): boolean {
    return this.live.length > 1 && this.killsSinceComplete + 1 <= this.redundancy - 1;
  }

  async kill(n: SimNode): Promise<void> {
    if (!n.alive) throw new Error("already dead");
    n.alive = false;
    this.halt(n);
    this.killsSinceComplete++;
    this.stats.kills++;
    this.note(`kill ${n.name}`);
    await this.newEpoch(this.live, null);
  }

  async restart(n: SimNode): Promise<void> {
    n.alive = true;
    this.boot(n);
    this.stats.restarts++;
    this.note(`restart ${n.name} (last epoch ${n.epoch})`);
    await this.newEpoch(this.live, n);
  }

  async add(zone: number): Promise<SimNode> {
    const n = this.newNode(zone);
    this.note(`add ${n.name}/z${zone}`);
    this.stats.adds++;
    await this.newEpoch(this.live, n);
    return n;
  }

  /** Every daemon stops and starts again; the cluster comes back in the same epoch. */
  async fullRestart(): Promise<void> {
    this.note(`full restart`);
    this.stats.fullRestarts++;
    for (const n of this.live) {
      this.halt(n);
      this.boot(n);
    }
    for (const n of this.live) n.rm.start(null);
    await this.settle();
  }

  /** Gateway write: a new version to every owner of the current ring, acknowledged if all took it. */
  async write(oid: bigint): Promise<boolean> {
    const v = this.nextVer++;
    const exists = this.truth.has(oid);
    const t = this.truth.get(oid) ?? 0;
    const owners = this.owners(oid);
    const failed: string[] = [];
    for (const o of owners) {
      if (!exists) {
        o.store.set(oid, v); // CREATE_AND_WRITE_PEER
        continue;
      }
      if (!o.store.has(oid)) await this.ensure(o, oid);
      const base = o.store.get(oid);
      if (base === undefined) {
        failed.push(o.name); // WRITE_PEER: NO_OBJ
        continue;
      }
      if (base < t) {
        this.fail(
          `${o.name} applies write v${v} to ${
            hex(oid)
          } over outdated v${base} (acknowledged v${t})`,
        );
      }
      o.store.set(oid, v);
    }
    const ok = failed.length === 0;
    if (ok) this.truth.set(oid, v);
    this.stats.writes++;
    if (!ok) this.stats.failedWrites++;
    this.note(
      `write ${hex(oid)} v${v} -> [${owners.map((o) => o.name).join(",")}] ${
        ok ? "ack" : `FAILED at ${failed.join(",")}`
      }`,
    );
    return ok;
  }

  /** Gateway read from one owner (recovering it first if pending). */
  async read(oid: bigint, o: SimNode): Promise<void> {
    if (!o.store.has(oid)) await this.ensure(o, oid);
    const v = o.store.get(oid);
    const t = this.truth.get(oid) ?? 0;
    this.note(`read ${hex(oid)} at ${o.name}: ${v === undefined ? "NO_OBJ" : `v${v}`}`);
    if (v !== undefined && v < t) {
      this.fail(`${o.name} served v${v} of ${hex(oid)}, acknowledged v${t}`);
    }
  }

  // ---------------------------------------------------------------- invariants

  check(): void {
    if (this.violation) this.fail(this.violation);
    const ring = this.ring;
    for (const [oid, t] of this.truth) {
      for (const o of this.owners(oid)) {
        const v = o.store.get(oid);
        if (v !== undefined) {
          if (v < t) {
            this.fail(`owner ${o.name} holds v${v} of ${hex(oid)} as current, acknowledged v${t}`);
          }
          continue;
        }
        // An owner that lacks it will fetch it: the first source it reaches must be up to date.
        const src = this.lookup(o, oid);
        if (!src) this.fail(`${hex(oid)} v${t} lost: no source reachable from owner ${o.name}`);
        if (src.v < t) {
          this.fail(
            `owner ${o.name} would recover v${src.v} of ${
              hex(oid)
            } from ${src.from}, acknowledged v${t}`,
          );
        }
      }
    }
    if (!this.quiescent()) return;
    this.stats.quiescentChecks++;
    for (const n of this.live) {
      if (n.stale.size) this.fail(`quiescent but ${n.name} keeps ${n.stale.size} stale copies`);
    }
    for (const [oid, t] of this.truth) {
      const want = this.owners(oid);
      const copies = Math.min(this.copiesOf(oid), ring.nrZones);
      if (want.length !== copies) {
        this.fail(`ring places ${want.length} copies of ${hex(oid)}, expected ${copies}`);
      }
      const have = this.live.filter((n) => n.store.has(oid));
      const extra = have.filter((n) => !want.includes(n)).map((n) =>
        `${n.name}:v${n.store.get(oid)}`
      );
      const missing = want.filter((n) => !have.includes(n)).map((n) => n.name);
      if (extra.length || missing.length) {
        this.fail(
          `quiescent: ${hex(oid)} on [${have.map((n) => n.name)}], ring wants [${
            want.map((n) => n.name)
          }] (extra ${extra}, missing ${missing})`,
        );
      }
      for (const n of have) {
        if (n.store.get(oid)! < t) {
          this.fail(`quiescent: ${n.name} has v${n.store.get(oid)} of ${hex(oid)} < v${t}`);
        }
      }
    }
  }
}

export function hex(oid: bigint): string {
  return oid.toString(16);
}

// ------------------------------------------------------------------------------------------ runner

export function configFor(rng: Rng): SimOptions {
  const base = 1 + rng.int(3);
  const copies = rng.chance(0.5) ? [base] : [base, Math.min(4, base + rng.int(2))];
  const zoneCount = 2 + rng.int(5);
  const n = 3 + rng.int(4);
  const zones = Array.from({ length: n }, (_, i) => (i < zoneCount ? i : rng.int(zoneCount)));
  return {
    copies,
    objects: 4 + rng.int(10),
    batch: rng.pick([1, 2, 4, 8]),
    zones,
    maxNodes: 10,
    zoneCount,
  };
}
