// Seeded simulation of recovery (sheep-daemon.md §4, §6) in the style of FoundationDB/TigerBeetle
// simulation testing: an in-memory cluster whose nodes run a step-by-step model of the executor in
// sheep/recovery.ts, with every decision taken by the real planner (core/recovery.ts) on real
// rings (core/ring.ts). Steps (writes, reads, kills, restarts, joins, full-cluster restarts,
// partial recovery work, source replies arriving in any order) interleave, so membership changes
// land in the middle of recovery. After every step:
//   - every acknowledged write is still readable: each owner holds it current at >= the
//     acknowledged version, or the first source its fetch would reach has such a version;
//   - no owner holds an older current copy, and no fetch or write lands on an outdated copy;
//   - once recovery is quiescent, each object sits on exactly the ring's min(copies, zones)
//     nodes and no stale copy is left.
// Kills stay within what the data can survive: fewer than min(copies, zones) since the last
// cluster-wide completed recovery.
//
//   node_modules/.bin/bun test tests/unit/recovery-sim.test.ts
//   SEED=17 node_modules/.bin/bun test tests/unit/recovery-sim.test.ts       one seed, with its log
//   SIM_SEEDS=2000 SIM_STEPS=100 node_modules/.bin/bun test tests/unit/recovery-sim.test.ts
//   SIM_EXECUTOR=gen-check+wait ...                                          another executor model
import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import process from "node:process";
import { makeNode, nodeEqual, type SdNode } from "../../core/node.ts";
import { Ring } from "../../core/ring.ts";
import {
  type EpochRing,
  objectsNoLongerOwned,
  objectsToRecover,
  recoverySources,
} from "../../core/recovery.ts";
import { Header, Op, Res } from "../../core/proto.ts";
import { SdError } from "../../core/errors.ts";
import type { ObjectStore } from "../../core/store.ts";
import { RecoveryManager } from "../../sheep/recovery.ts";
import type { Logger } from "../../sheep/log.ts";

// ------------------------------------------------------------------------------------------ PRNG

/** mulberry32: small, fast, and the same sequence on every runtime. */
class Rng {
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

// ------------------------------------------------------------------------------------------ model

/** Placement is pure; memoizing it keeps thousands of invariant checks cheap. */
class MemoRing extends Ring {
  private memo = new Map<number, Map<bigint, SdNode[]>>();
  override placeObject(oid: bigint, copies: number): SdNode[] {
    let m = this.memo.get(copies);
    if (!m) this.memo.set(copies, m = new Map());
    let p = m.get(oid);
    if (!p) m.set(oid, p = super.placeObject(oid, copies));
    return p;
  }
}

const MAX_ATTEMPTS = 50; // sheep/recovery.ts gives up on an object after this many failed fetches

/**
 * What the executor does with a fetch still in flight when a new epoch supersedes its run. A fetch
 * has two waits: the source's reply, then createAndWrite (fdatasync, rename, fsync of the
 * directory) before store.list()/exists() see the object.
 *   no-check        d02b956: the reply is installed whenever it arrives.
 *   gen-check       c1bc850: a reply that arrives after the supersede is dropped, but a write that
 *                   already started lands later, after the new run moved what it no longer owns.
 *   gen-check+wait  as upstream ("the new one starts once in-flight objects finish"): the new run
 *                   moves objects to stale only after the old run's in-flight fetches finished.
 * Keep the default in step with sheep/recovery.ts; SIM_EXECUTOR tries a change before making it.
 */
type Executor = "no-check" | "gen-check" | "gen-check+wait";
const EXECUTOR = (process.env.SIM_EXECUTOR ?? "gen-check+wait") as Executor;

/** One fetch of one object (RecoveryManager.fetch): read from a source now, install later. */
interface Fetch {
  oid: bigint;
  gen: number;
  v: number | null; // version read, null when no source had it
  from: string;
  stale: boolean;
  /** read: waiting for the source; land: createAndWrite in progress; done. */
  stage: "read" | "land" | "done";
  ok: boolean;
}

/** One RecoveryManager.run() of one generation. */
interface Run {
  gen: number;
  epoch: number;
  phase: "gather" | "recover" | "report" | "done";
  members: SimNode[];
  gathered: number;
  known: bigint[];
  queue: bigint[];
  batch: Fetch[] | null;
  attempts: Map<bigint, number>;
}

/** RecoveryManager's in-memory state: lost when the daemon stops. */
class Rm {
  generation = 0;
  run: Run | null = null;
  pending = new Set<bigint>();
  inflight = new Map<bigint, Fetch>();
  lastComplete = 0;
  reported = new Map<number, Set<number>>();
}

interface StaleCopy {
  oid: bigint;
  epoch: number;
  v: number;
}

class SimNode {
  alive = true;
  /** Last epoch this daemon took part in (its cluster state, on disk). */
  epoch = 0;
  store = new Map<bigint, number>();
  stale = new Map<string, StaleCopy>();
  rm = new Rm();
  constructor(readonly node: SdNode) {}
  get name(): string {
    return String(this.node.port);
  }
  staleOf(oid: bigint, epoch: number): number | undefined {
    return this.stale.get(`${oid}@${epoch}`)?.v;
  }
  moveToStale(oid: bigint, epoch: number): void {
    const v = this.store.get(oid);
    if (v === undefined) return;
    this.store.delete(oid);
    this.stale.set(`${oid}@${epoch}`, { oid, epoch, v }); // rename(2) replaces an older file
  }
}

interface SimOptions {
  /** copies per VDI; objects of VDI i use copies[i]. */
  copies: number[];
  /** Objects per VDI. */
  objects: number;
  /** Recovery batch size (sheep/recovery.ts: 8, or the throttle's max). */
  batch: number;
  zones: number[];
  maxNodes: number;
  zoneCount: number;
}

const VIDS = [0x7c2b25n, 0x3a1f00n, 0x51d0c3n];

class Violation extends Error {}

class Sim {
  nodes: SimNode[] = [];
  private byPort = new Map<number, SimNode>();
  rings: MemoRing[] = [];
  members: SimNode[][] = [];
  epoch = 1;
  truth = new Map<bigint, number>();
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
    fetched: 0,
    fromStale: 0,
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

  // ---------------------------------------------------------------- executor (sheep/recovery.ts)

  /** The history a fetch walks: epochs current-1 down to lastComplete-1, then the current ring. */
  history(n: SimNode): EpochRing[] {
    const h: EpochRing[] = [];
    for (let e = n.epoch - 1; e >= Math.max(1, n.rm.lastComplete - 1); e--) {
      h.push({ epoch: e, ring: this.rings[e] });
    }
    h.push({ epoch: n.epoch, ring: this.rings[n.epoch] });
    return h;
  }

  /** First source that answers, as fetch() walks them: a peer answers from its current copy, else
   *  from its stale copy of the asked epoch; this node reads only its own stale copies. */
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

  /** recoverOne(): join the in-flight fetch of oid or start one (reading from the source now). */
  private recoverOne(n: SimNode, oid: bigint, gen: number): Fetch {
    const f0 = n.rm.inflight.get(oid);
    if (f0) return f0;
    const f: Fetch = { oid, gen, v: null, from: "", stale: false, stage: "read", ok: false };
    if (n.store.has(oid)) {
      n.rm.pending.delete(oid);
      f.stage = "done";
      f.ok = true;
      return f;
    }
    const src = this.lookup(n, oid);
    if (src) {
      f.v = src.v;
      f.from = src.from;
      f.stale = src.stale;
    }
    n.rm.inflight.set(oid, f);
    return f;
  }

  /** The next event of a fetch: the source's reply arrives, or its createAndWrite completes. */
  private advance(n: SimNode, f: Fetch): void {
    if (f.stage === "done") return;
    const finish = (ok: boolean) => {
      f.stage = "done";
      f.ok = ok;
      if (n.rm.inflight.get(f.oid) === f) n.rm.inflight.delete(f.oid);
      if (ok) n.rm.pending.delete(f.oid);
    };
    if (f.stage === "read") {
      if (f.v === null) {
        this.note(`${n.name} fetch ${hex(f.oid)} failed`);
        return finish(false);
      }
      if (EXECUTOR !== "no-check" && f.gen !== n.rm.generation) {
        this.note(`${n.name} drops superseded fetch of ${hex(f.oid)}`);
        return finish(false);
      }
      if (n.store.has(f.oid)) return finish(true);
      this.note(`${n.name} writing ${hex(f.oid)} v${f.v} from ${f.from} (gen ${f.gen})`);
      f.stage = "land";
      return;
    }
    // createAndWrite renames over whatever is there
    const v = f.v!;
    const t = this.truth.get(f.oid) ?? 0;
    if (v < t) {
      this.fail(
        `${n.name} installed v${f.v} of ${
          hex(f.oid)
        } (from ${f.from}, gen ${f.gen}) but v${t} is acknowledged`,
      );
    }
    n.store.set(f.oid, v);
    const superseded = f.gen !== n.rm.generation;
    if (superseded) this.stats.landedLate++;
    if (f.stale) this.stats.fromStale++;
    this.stats.fetched++;
    this.note(
      `${n.name} got ${hex(f.oid)} v${f.v} from ${f.from}${
        superseded ? ` (superseded gen ${f.gen})` : ""
      }`,
    );
    finish(true);
  }

  /** Waits for a fetch to finish. */
  private complete(n: SimNode, f: Fetch): void {
    while (f.stage !== "done") this.advance(n, f);
  }

  /** A request needs oid now (ensure()): recover it first if it is pending. */
  ensure(n: SimNode, oid: bigint): void {
    if (!n.rm.pending.has(oid) || n.store.has(oid)) return;
    this.note(`${n.name} recovers ${hex(oid)} first`);
    this.stats.ensures++;
    this.complete(n, this.recoverOne(n, oid, n.rm.generation));
  }

  /** RecoveryManager.start(movedFrom). */
  private start(n: SimNode, movedFrom: number | null): void {
    const rm = n.rm;
    const gen = ++rm.generation;
    if (EXECUTOR === "gen-check+wait") {
      for (const f of [...rm.inflight.values()]) this.complete(n, f);
    }
    if (movedFrom !== null) {
      const gone = objectsNoLongerOwned({
        me: n.node,
        ring: this.ring,
        copiesOf: (o) => this.copiesOf(o),
        local: [...n.store.keys()],
      });
      for (const oid of gone) n.moveToStale(oid, movedFrom);
      if (gone.length) this.note(`${n.name} stale@e${movedFrom}: ${gone.map(hex).join(",")}`);
    }
    rm.run = {
      gen,
      epoch: n.epoch,
      phase: "gather",
      members: [...this.members[this.epoch]],
      gathered: 0,
      known: [],
      queue: [],
      batch: null,
      attempts: new Map(),
    };
  }

  hasWork(n: SimNode): boolean {
    return n.rm.inflight.size > 0 || (n.rm.run !== null && n.rm.run.phase !== "done");
  }

  /** One unit of recovery work on n: a peer reply arriving, or the run loop advancing. */
  work(n: SimNode): void {
    const rm = n.rm;
    const r = rm.run;
    const stuck = !r || r.phase === "done";
    if (rm.inflight.size && (stuck || this.rng.chance(0.3))) {
      this.advance(n, this.rng.pick([...rm.inflight.values()]));
      return;
    }
    if (!r || r.phase === "done") return;
    switch (r.phase) {
      case "gather": {
        // GET_OBJ_LIST: current and stale oids of one member
        const m = r.members[r.gathered++];
        r.known.push(...m.store.keys(), ...[...m.stale.values()].map((s) => s.oid));
        if (r.gathered < r.members.length) return;
        const todo = objectsToRecover({
          me: n.node,
          ring: this.ring,
          copiesOf: (o) => this.copiesOf(o),
          known: r.known,
          present: (o) => n.store.has(o),
        });
        rm.pending = new Set(todo);
        r.queue = [...todo];
        r.phase = "recover";
        this.note(`${n.name} e${r.epoch} to fetch: [${todo.map(hex).join(",")}]`);
        return;
      }
      case "recover": {
        if (r.batch) {
          const open = r.batch.filter((f) => f.stage !== "done");
          if (open.length) {
            this.advance(n, this.rng.pick(open));
            return;
          }
          for (const f of r.batch) {
            if (f.ok) continue;
            const a = (r.attempts.get(f.oid) ?? 0) + 1;
            r.attempts.set(f.oid, a);
            if (a < MAX_ATTEMPTS) r.queue.push(f.oid);
            else this.note(`${n.name} GIVES UP on ${hex(f.oid)}`);
          }
          r.batch = null;
          return;
        }
        if (r.queue.length) {
          r.batch = r.queue.splice(0, this.opt.batch).map((oid) => this.recoverOne(n, oid, r.gen));
          return;
        }
        r.phase = "report";
        rm.pending.clear();
        return;
      }
      case "report":
        r.phase = "done";
        this.reportComplete(n, r.epoch);
        return;
    }
  }

  /** COMPLETE_RECOVERY, delivered in total order to every member (onComplete). */
  private reportComplete(from: SimNode, epoch: number): void {
    this.note(`${from.name} reports e${epoch}`);
    let purged = false;
    for (const m of this.live) {
      if (epoch !== m.epoch) continue;
      const set = m.rm.reported.get(epoch) ?? new Set<number>();
      set.add(from.node.port);
      m.rm.reported.set(epoch, set);
      const all = this.members[this.epoch].every((x) => set.has(x.node.port));
      if (!all || m.rm.lastComplete >= epoch) continue;
      m.rm.lastComplete = epoch;
      for (const e of [...m.rm.reported.keys()]) if (e <= epoch) m.rm.reported.delete(e);
      m.stale.clear();
      purged = true;
    }
    if (purged) {
      this.stats.completions++;
      this.note(`e${epoch} complete: stale purged`);
      this.killsSinceComplete = 0;
      this.redundancy = Math.min(this.minCopies, this.ring.nrZones);
    }
  }

  // ---------------------------------------------------------------- membership (sheep/daemon.ts)

  private newEpoch(members: SimNode[], joiner: SimNode | null): void {
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
      this.start(n, prev > 0 ? prev : null);
    }
  }

  canKill(): boolean {
    return this.live.length > 1 && this.killsSinceComplete + 1 <= this.redundancy - 1;
  }

  kill(n: SimNode): void {
    if (!n.alive) throw new Error("already dead");
    n.alive = false;
    n.rm = new Rm(); // in-flight fetches die with the process
    this.killsSinceComplete++;
    this.stats.kills++;
    this.note(`kill ${n.name}`);
    this.newEpoch(this.live, null);
  }

  restart(n: SimNode): void {
    n.alive = true;
    n.rm = new Rm();
    this.stats.restarts++;
    this.note(`restart ${n.name} (last epoch ${n.epoch})`);
    this.newEpoch(this.live, n);
  }

  add(zone: number): SimNode {
    const n = this.newNode(zone);
    this.note(`add ${n.name}/z${zone}`);
    this.stats.adds++;
    this.newEpoch(this.live, n);
    return n;
  }

  /** Every daemon stops and starts again; the cluster comes back in the same epoch. */
  fullRestart(): void {
    this.note(`full restart`);
    this.stats.fullRestarts++;
    for (const n of this.live) n.rm = new Rm();
    for (const n of this.live) this.start(n, null);
  }

  /** Gateway write: a new version to every owner of the current ring, acknowledged if all took it. */
  write(oid: bigint): boolean {
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
      if (!o.store.has(oid)) this.ensure(o, oid);
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
  read(oid: bigint, o: SimNode): void {
    if (!o.store.has(oid)) this.ensure(o, oid);
    const v = o.store.get(oid);
    const t = this.truth.get(oid) ?? 0;
    this.note(`read ${hex(oid)} at ${o.name}: ${v === undefined ? "NO_OBJ" : `v${v}`}`);
    if (v !== undefined && v < t) {
      this.fail(`${o.name} served v${v} of ${hex(oid)}, acknowledged v${t}`);
    }
  }

  quiescent(): boolean {
    return this.live.every((n) => !this.hasWork(n));
  }

  /** Runs recovery everywhere until nothing is left to do. */
  drain(): void {
    for (let i = 0; i < 1_000_000; i++) {
      const busy = this.live.filter((n) => this.hasWork(n));
      if (!busy.length) return;
      this.work(this.rng.pick(busy));
    }
    this.fail("recovery does not finish");
  }

  // ---------------------------------------------------------------- invariants

  check(): void {
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

function hex(oid: bigint): string {
  return oid.toString(16);
}

// ------------------------------------------------------------------------------------------ runner

function configFor(rng: Rng): SimOptions {
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

interface SimResult {
  seed: number;
  ok: boolean;
  failedAt: number;
  error: string;
  log: string[];
  stats: Sim["stats"];
}

function runSeed(seed: number, steps: number): SimResult {
  const rng = new Rng(seed);
  const opt = configFor(rng);
  const sim = new Sim(rng, opt);
  sim.log.push(
    `config: copies ${
      opt.copies.join("/")
    } per VDI, ${opt.objects} objects per VDI, batch ${opt.batch}, ` +
      `nodes ${sim.nodes.map((n) => `${n.name}/z${n.node.zone}`).join(" ")}`,
  );
  let step = 0;
  try {
    for (step = 1; step <= steps; step++) {
      sim.beginStep(`[${step}]`);
      oneStep(sim, rng);
      sim.check();
      sim.endStep();
    }
    sim.beginStep(`[end] drain`);
    sim.drain();
    sim.check();
    if (!sim.quiescent()) sim.fail("not quiescent after drain");
    sim.endStep();
    return { seed, ok: true, failedAt: 0, error: "", log: sim.log, stats: sim.stats };
  } catch (e) {
    if (!(e instanceof Violation)) sim.note(`EXCEPTION: ${(e as Error).stack}`);
    sim.flushStep();
    return {
      seed,
      ok: false,
      failedAt: step,
      error: (e as Error).message,
      log: sim.log,
      stats: sim.stats,
    };
  }
}

function oneStep(sim: Sim, rng: Rng): void {
  const roll = rng.int(100);
  const dead = sim.nodes.filter((n) => !n.alive);
  if (roll < 30) {
    // Often an object some owner still has to recover: the write then waits for it (ensure).
    const pending = sim.live.flatMap((n) => [...n.rm.pending]);
    sim.write(pending.length && rng.chance(0.4) ? rng.pick(pending) : rng.pick(sim.oids));
  } else if (roll < 37 && sim.truth.size) {
    const oid = rng.pick([...sim.truth.keys()]);
    sim.read(oid, rng.pick(sim.owners(oid)));
  } else if (roll < 78 && sim.canKill() && roll >= 72) {
    sim.kill(rng.pick(sim.live));
  } else if (roll < 84 && roll >= 78 && dead.length) {
    sim.restart(rng.pick(dead));
  } else if (roll < 88 && roll >= 78 && sim.nodes.length < sim.opt.maxNodes) {
    sim.add(rng.int(sim.opt.zoneCount + 1));
  } else if (roll < 90 && roll >= 88) {
    sim.fullRestart();
  } else if (roll < 94 && roll >= 90) {
    sim.note("drain");
    sim.drain();
  } else {
    const units = 1 + rng.int(10);
    for (let i = 0; i < units; i++) {
      const busy = sim.live.filter((n) => sim.hasWork(n));
      if (!busy.length) break;
      sim.work(rng.pick(busy));
    }
    sim.note(`work x${units}`);
  }
}

function envInt(name: string, dflt: number): number {
  const v = process.env[name];
  return v === undefined || v === "" ? dflt : Number(v);
}

test("recovery simulation: random seeds keep every acknowledged write", () => {
  const steps = envInt("SIM_STEPS", 60);
  const only = process.env.SEED;
  const seeds = only
    ? [Number(only)]
    : Array.from({ length: envInt("SIM_SEEDS", 300) }, (_, i) => i + 1);
  const t0 = performance.now();
  const failures: SimResult[] = [];
  const total: Record<string, number> = {};
  let ran = 0;
  for (const seed of seeds) {
    const r = runSeed(seed, steps);
    ran += r.ok ? steps : r.failedAt;
    for (const [k, v] of Object.entries(r.stats)) total[k] = (total[k] ?? 0) + v;
    if (!r.ok) failures.push(r);
    else if (only) console.log(r.log.join("\n"));
  }
  const ms = performance.now() - t0;
  if (failures.length) {
    // The shortest failing run is the easiest to read.
    failures.sort((a, b) => a.failedAt - b.failedAt || a.seed - b.seed);
    const f = failures[0];
    const env = process.env.SIM_EXECUTOR ? `SIM_EXECUTOR=${EXECUTOR} ` : "";
    throw new Error(
      `${failures.length}/${seeds.length} seeds violate an invariant (executor model: ${EXECUTOR}):\n` +
        failures.slice(0, 20).map((x) => `  seed ${x.seed} step ${x.failedAt}: ${x.error}\n`).join(
          "",
        ) +
        `Shortest: seed ${f.seed} at step ${f.failedAt}: ${f.error}\n` +
        `Replay: ${env}SEED=${f.seed} SIM_STEPS=${steps} node_modules/.bin/bun test tests/unit/recovery-sim.test.ts\n` +
        f.log.join("\n"),
    );
  }
  const st = Object.entries(total).map(([k, v]) => `${k} ${v}`).join(", ");
  console.log(
    `recovery sim (${EXECUTOR}): ${seeds.length} seeds, ${ran} steps in ${ms.toFixed(0)} ms; ${st}`,
  );
}, 120_000);

// ------------------------------------------------------------------------------------------ targeted

function scripted(copies: number, zones: number[], objects = 64): Sim {
  return new Sim(new Rng(zones.length * 31 + copies), {
    copies: [copies],
    objects,
    batch: 2,
    zones,
    maxNodes: 10,
    zoneCount: zones.length,
  });
}

function placed(nodes: SimNode[], oid: bigint, copies: number): SimNode[] {
  const r = new Ring(nodes.map((n) => n.node));
  return r.placeObject(oid, copies).map((x) => nodes.find((n) => nodeEqual(n.node, x))!);
}

/** Runs fn and checks the invariants, printing the step log if they fail. */
function steps(sim: Sim, label: string, fn: () => void): void {
  sim.beginStep(label);
  try {
    fn();
    sim.check();
  } catch (e) {
    sim.flushStep();
    throw new Error(`${(e as Error).message}\n${sim.log.join("\n")}`);
  }
  sim.endStep();
}

test("a rejoining node's outdated stale copy is not preferred over a newer holder's stale copy", () => {
  const sim = scripted(2, [0, 1, 2, 3, 4], 200);
  const all = [...sim.nodes];
  const [a] = all;
  // x: on a and b in epoch 1; on b and c once a is gone; a owns it again after b is gone too.
  const x = sim.oids.find((o) => {
    const own1 = placed(all, o, 2);
    if (!own1.includes(a)) return false;
    const b = own1.find((n) => n !== a)!;
    const own2 = placed(all.filter((n) => n !== a), o, 2);
    const c = own2.find((n) => n !== b);
    return own2.includes(b) && c !== undefined &&
      placed(all.filter((n) => n !== b), o, 2).includes(a);
  })!;
  expect(x).toBeDefined();
  const b = placed(all, x, 2).find((n) => n !== a)!;
  const c = placed(all.filter((n) => n !== a), x, 2).find((n) => n !== b)!;

  steps(sim, "write v1 to a,b", () => sim.write(x));
  steps(sim, "kill a, recover", () => {
    sim.kill(a);
    sim.drain();
  });
  steps(sim, "two writes while a is away", () => {
    expect(sim.write(x)).toBe(true);
    expect(sim.write(x)).toBe(true);
  });
  const latest = sim.truth.get(x)!;
  // a comes back (epoch 3) and b fails before anyone recovered anything (epoch 4).
  steps(sim, "restart a, kill b", () => {
    sim.restart(a);
    sim.kill(b);
  });
  expect(a.store.has(x)).toBe(false);
  expect(a.staleOf(x, 1)).toBe(1); // a's own copy, from before the two writes
  expect(c.staleOf(x, 2)).toBe(latest); // c's copy, moved to stale when a came back
  // The planner walks epoch 3, then epoch 2 (c), and reaches a's own stale copy of epoch 1 only after.
  const srcs = recoverySources({
    oid: x,
    copies: 2,
    me: a.node,
    history: sim.history(a),
    alive: (n) => sim.isMember(n),
  });
  const at = (n: SimNode, e: number) =>
    srcs.findIndex((s) => s.epoch === e && nodeEqual(s.node, n.node));
  expect(at(c, 2)).toBeGreaterThanOrEqual(0);
  expect(at(c, 2)).toBeLessThan(at(a, 1));
  expect(sim.lookup(a, x)).toEqual({ v: latest, from: `${c.name}@e2`, stale: true });
  steps(sim, "recover", () => sim.drain());
  expect(a.store.get(x)).toBe(latest);
  expect(sim.live.every((n) => n.stale.size === 0)).toBe(true);
});

test("copies=3: a second failure in the middle of recovery loses nothing", () => {
  const sim = scripted(3, [0, 1, 2, 3, 4, 5], 40);
  const [n0, n1] = sim.nodes;
  steps(sim, "write every object", () => {
    for (const o of sim.oids) expect(sim.write(o)).toBe(true);
  });
  steps(sim, "kill n0", () => sim.kill(n0));
  steps(sim, "partial recovery", () => {
    for (let i = 0; i < 5; i++) for (const n of sim.live) if (sim.hasWork(n)) sim.work(n);
  });
  expect(sim.quiescent()).toBe(false);
  steps(sim, "writes during recovery", () => {
    for (const o of sim.oids.slice(0, 15)) sim.write(o);
  });
  expect(sim.canKill()).toBe(true);
  steps(sim, "kill n1 mid-recovery", () => sim.kill(n1));
  // A third failure before recovery completes may lose data legitimately.
  expect(sim.canKill()).toBe(false);
  steps(sim, "partial recovery", () => {
    for (let i = 0; i < 3; i++) for (const n of sim.live) if (sim.hasWork(n)) sim.work(n);
  });
  steps(sim, "recover", () => sim.drain());
  for (const [o, v] of sim.truth) {
    const own = sim.owners(o);
    expect(own.length).toBe(3);
    for (const n of own) expect(n.store.get(o)).toBe(v);
  }
  expect(sim.canKill()).toBe(true);
});

test("a full-cluster restart in the middle of recovery resumes it", () => {
  const sim = scripted(2, [0, 1, 2, 3], 30);
  steps(sim, "write every object", () => {
    for (const o of sim.oids) sim.write(o);
  });
  steps(sim, "add a node", () => sim.add(4));
  steps(sim, "partial recovery", () => {
    for (let i = 0; i < 4; i++) for (const n of sim.live) if (sim.hasWork(n)) sim.work(n);
  });
  const staleBefore = sim.live.reduce((k, n) => k + n.stale.size, 0);
  expect(staleBefore).toBeGreaterThan(0);
  steps(sim, "full restart", () => sim.fullRestart());
  expect(sim.live.every((n) => n.rm.lastComplete === 0)).toBe(true);
  steps(sim, "kill one", () => sim.kill(sim.nodes[1]));
  steps(sim, "recover", () => sim.drain());
  for (const [o, v] of sim.truth) for (const n of sim.owners(o)) expect(n.store.get(o)).toBe(v);
});

// ------------------------------------------------------------------------------------------ executor

/** An in-memory ObjectStore with FileStore's visibility rule: a created object shows in list() and
 *  exists() only once createAndWrite has finished (after fdatasync, rename and directory fsync). */
class MemStore {
  cur = new Map<bigint, Buffer>();
  stale = new Map<string, Buffer>();
  hold: Promise<void> | null = null;
  writing = 0;
  exists(oid: bigint): boolean {
    return this.cur.has(oid);
  }
  list(): bigint[] {
    return [...this.cur.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }
  listStale(): Array<{ oid: bigint; epoch: number }> {
    return [...this.stale.keys()].map((k) => ({
      oid: BigInt(k.split("@")[0]),
      epoch: Number(k.split("@")[1]),
    }));
  }
  async createAndWrite(oid: bigint, _off: number, data: Buffer): Promise<void> {
    this.writing++;
    try {
      if (this.hold) await this.hold; // the fdatasync
      this.cur.set(oid, Buffer.from(data));
    } finally {
      this.writing--;
    }
  }
  moveToStale(oid: bigint, epoch: number): Promise<void> {
    const d = this.cur.get(oid);
    if (!d) return Promise.reject(new SdError(Res.NO_OBJ));
    this.cur.delete(oid);
    this.stale.set(`${oid}@${epoch}`, d);
    return Promise.resolve();
  }
  readStale(oid: bigint, epoch: number, off: number, len: number): Promise<Buffer> {
    const d = this.stale.get(`${oid}@${epoch}`);
    return d
      ? Promise.resolve(d.subarray(off, off + len))
      : Promise.reject(new SdError(Res.NO_OBJ));
  }
  purgeStale(): Promise<void> {
    this.stale.clear();
    return Promise.resolve();
  }
}

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 1));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test("executor: an object still being written when a new epoch starts is not left behind on a non-owner", async () => {
  const [a, b, c, p] = [0, 1, 2, 3].map((i) => makeNode("127.0.0.1", 7100 + i, { zone: i }));
  const rings: Ring[] = [];
  rings[1] = new Ring([b, c]);
  rings[2] = new Ring([a, b, c]);
  rings[3] = new Ring([a, b, c, p]);
  rings[4] = new Ring([a, b, c]);
  const has = (r: Ring, o: bigint, n: SdNode) => r.placeObject(o, 2).some((x) => nodeEqual(x, n));
  // x: a owns it in epochs 2 and 4 (p absent) but not in epoch 3, where its partner keeps it.
  let x = 0n;
  for (let o = 1n; o < 100_000n; o++) {
    const partner = rings[2].placeObject(o, 2).find((n) => !nodeEqual(n, a));
    if (has(rings[2], o, a) && !has(rings[3], o, a) && partner && has(rings[3], o, partner)) {
      x = o;
      break;
    }
  }
  expect(x).not.toBe(0n);
  const ver = (v: number) => Buffer.from(new BigUint64Array([BigInt(v)]).buffer);
  // The rest of the cluster as a's peers see it: current copies and stale copies per node.
  const peers = new Map<number, { cur: Map<bigint, number>; stale: Map<string, number> }>();
  for (const n of [b, c, p]) peers.set(n.port, { cur: new Map(), stale: new Map() });
  peers.get(b.port)!.cur.set(x, 1);
  peers.get(c.port)!.cur.set(x, 1);
  const store = new MemStore();
  let epoch = 2;
  let members = [a, b, c];
  const reported: number[] = [];
  let release!: () => void;
  store.hold = new Promise<void>((r) => (release = r));
  const host = {
    me: a,
    log: {
      info() {},
      warn() {},
      err() {},
      emerg() {},
      notice() {},
      debug() {},
    } as unknown as Logger,
    store: () => store as unknown as ObjectStore,
    epoch: () => epoch,
    ring: () => rings[epoch],
    nodes: () => members,
    ringOf: (e: number) => Promise.resolve(rings[e] ?? null),
    copiesFor: () => 2,
    storedSize: () => 8,
    peer: (node: SdNode, h: Header) => {
      const rsp = new Header();
      let data = Buffer.alloc(0);
      if (h.opcode === Op.GET_OBJ_LIST) {
        const oids = nodeEqual(node, a)
          ? [...store.list(), ...store.listStale().map((s) => s.oid)]
          : [
            ...peers.get(node.port)!.cur.keys(),
            ...[...peers.get(node.port)!.stale.keys()].map((k) => BigInt(k.split("@")[0])),
          ];
        data = Buffer.alloc(oids.length * 8);
        oids.forEach((o, i) => data.writeBigUInt64LE(o, i * 8));
      } else if (h.opcode === Op.READ_PEER) {
        const st = peers.get(node.port)!;
        const v = st.cur.get(h.oid) ?? st.stale.get(`${h.oid}@${h.tgtEpoch}`);
        if (v === undefined) rsp.result = Res.NO_OBJ;
        else data = ver(v);
      } else rsp.result = Res.INVALID_PARMS;
      return Promise.resolve({ hdr: rsp, data });
    },
    reportComplete: (e: number) => {
      reported.push(e);
      return Promise.resolve();
    },
    disabled: () => false,
    throttle: () => ({ max: 0, interval: 0 }),
    freeBytes: () => 1n << 40n,
    clientLoad: () => 0,
  };
  const rm = new RecoveryManager(host);

  // Epoch 2: a joined and owns x; it has read x (v1) from b and is writing it to disk.
  rm.start(1);
  await until("a writing x", () => store.writing === 1);
  // Epoch 3: p joins and takes x over from a; p and the partner then acknowledge v2.
  epoch = 3;
  members = [a, b, c, p];
  for (const n of rings[3].placeObject(x, 2)) peers.get(n.port)!.cur.set(x, 2);
  rm.start(2);
  release();
  await until("epoch 3 recovery", () => reported.includes(3) && store.writing === 0);
  // Epoch 4: p leaves; a owns x again and must end up with v2, not its leftover v1.
  epoch = 4;
  members = [a, b, c];
  rm.start(3);
  await until("epoch 4 recovery", () => reported.includes(4));
  const got = store.cur.get(x)?.readBigUInt64LE(0);
  expect(`a holds v${got} of x`).toBe("a holds v2 of x");
});
