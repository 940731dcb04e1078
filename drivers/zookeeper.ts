// The `zookeeper` membership driver: -c zookeeper:HOST:PORT[,HOST:PORT...][/CLUSTER_ID][,timeout=MS]
//
// Same design as the local driver, on ZooKeeper (sheep-daemon.md §10.4). Under the base znode
// (/sheepdog, or /CLUSTER_ID, so several clusters can share one ensemble):
//   queue/<id>-%010d   persistent sequential: one event each, consumed by every node in sequence
//                      order. A JOIN is rewritten in place (versioned setData, so exactly one
//                      decision wins) to ACCEPT or REJECT by the master.
//   master/<nonce>-%010d  ephemeral sequential, one per incarnation (session) of a sheep, created in
//                      the same transaction as its JOIN, so token order is JOIN order. The master is
//                      the member with the lowest live token; a joiner whose token is the lowest of
//                      all founds the cluster. A member whose token is gone is dead: every member
//                      that sees that pushes a LEAVE (duplicates are ignored when processed).
//   member/<node string>  ephemeral, created after our ACCEPT (data: nonce, session id); deleting it
//                      by hand also makes the members push a LEAVE.
//   queue_pos/<node string>  ephemeral: how far that member has processed the queue; the master
//                      deletes queue znodes every member has processed.
// A sheep owns its address, so znodes named after it that belong to an older incarnation are stale
// and removed at (re)join; upstream instead refused to start until the old session timed out.
// Session expiry (e.g. the process was stopped past the timeout): the node opens a new session and
// joins again as a new incarnation; the broadcasts it missed meanwhile are delivered first so its
// VDI state stays current, and its unfinished block requests are queued again.
import {
  errCode,
  openSession,
  parseZookeeperOption,
  Session,
  SessionLost,
  zk,
  type ZookeeperOptions,
} from "./zookeeper-session.ts";
import { Coalesced } from "../core/coalesce.ts";
import {
  applyEffect,
  type Member,
  type MembershipEffect,
  MembershipEngine,
} from "../core/membership.ts";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import * as net from "node:net";
import * as os from "node:os";
import { cbor } from "../core/cbor.ts";
import type { SdNode } from "../core/node.ts";
import { decodeNode, encodeNode, nodeString } from "../core/node.ts";
import type { ClusterDriver, DriverHandlers } from "./driver.ts";
import {
  asBuf,
  CONNECT_TIMEOUT_MS,
  decodeMeta,
  EMPTY,
  EventAppender,
  type EventType,
  keyOf,
  log,
  makeEvent,
  masterKey,
  membersOf,
  nonceOf,
  PURGE_EVERY_TICKS,
  purgeProcessed,
  seqOf,
  sleep,
  type Step,
  TICK_MS,
  type ZkEvent,
} from "./zookeeper-queue.ts";

export function createZookeeperDriver(opt: string): ClusterDriver {
  return new ZookeeperDriver(parseZookeeperOption(opt));
}

// ------------------------------------------------------------------------------ the driver
export class ZookeeperDriver implements ClusterDriver {
  readonly name = "zookeeper";
  private handlers!: DriverHandlers;
  private session: Session | null = null;
  private myself!: SdNode;
  private ns = "";
  private opaque: Buffer = EMPTY;
  /** Identifies this incarnation (one per session that joined). */
  private nonce = "";
  private incarnation = 0;
  /** Our /master token name. */
  private token = "";
  private joinSeq = -1;
  /** Last processed queue sequence number. */
  private pos = -1;
  private pending: Array<{ name: string; seq: number }> = [];
  /** Members and blocks of this incarnation (core/membership.ts); a new one per JOIN. */
  private engine: MembershipEngine | null = null;
  private everAccepted = false;
  private stopped = false;
  private closed = false;
  private failed = false;
  /** Our block() calls whose BLOCK has not reached the head yet (re-queued after a rejoin). */
  private blockOwed = 0;
  private checking = false;
  private checkAgain = false;
  private leavePushed = new Set<string>();
  /** /member child name -> nonce read from it. */
  private memberNonces = new Map<string, string>();
  /** Ids of our pushes in flight -> seen in the queue. */
  private readonly appender = new EventAppender({
    stopped: () => this.closed || this.failed,
    ready: () => this.ready.p,
    session: () => this.closed ? null : this.session,
    queueDir: () => this.dir("queue"),
    appended: () => this.pump(),
    fail: (reason) => this.fail(reason),
  });
  private ready!: { p: Promise<void>; resolve: () => void; done: boolean };
  private leaving: (() => void) | null = null;
  private restartReason: string | null = null;
  private rejoining = false;
  private timer: ReturnType<typeof setInterval> | null = null;
  private ticks = 0;
  private posWritten = -1;

  constructor(readonly opts: ZookeeperOptions) {
    this.resetReady();
  }

  private dir(sub: string): string {
    return `${this.opts.base}/${sub}`;
  }

  /** Pushes wait on this until the current incarnation's JOIN exists (or the driver closes). */
  private resetReady(): void {
    if (this.ready && !this.ready.done) return;
    const r = { p: Promise.resolve(), resolve: () => {}, done: false };
    r.p = new Promise<void>((res) => {
      r.resolve = () => {
        r.done = true;
        res();
      };
    });
    this.ready = r;
  }

  // -------------------------------------------------------------------- session management

  async init(handlers: DriverHandlers): Promise<void> {
    this.handlers = handlers;
    const s = await this.openSession(CONNECT_TIMEOUT_MS);
    try {
      await this.ensureDirs(s);
    } catch (e) {
      s.kill();
      throw new Error(
        `zookeeper driver: cannot create ${this.opts.base} on ${this.opts.connect}: ${
          (e as Error).message
        }`,
      );
    }
    this.session = s;
  }

  private openSession(timeoutMs: number): Promise<Session> {
    return openSession(this.opts, timeoutMs, {
      reconnected: (s) => {
        if (s !== this.session) return;
        this.handlers.connection?.(true);
        // Same session after a reconnect: watches were re-armed by the client; look anyway.
        this.pump();
        void this.checkLiveness(s);
      },
      expired: (s) => this.onExpired(s),
      disconnected: (s) => {
        if (s === this.session && !this.closed) {
          log(`disconnected from ${this.opts.connect}; reconnecting`);
          this.handlers.connection?.(false);
        }
      },
    });
  }

  private async ensureDirs(s: Session): Promise<void> {
    for (const d of ["queue", "member", "master", "queue_pos"]) await s.mkdirp(this.dir(d));
  }

  private onExpired(s: Session): void {
    if (s !== this.session || this.closed) return;
    log("session expired; joining again with a new session");
    this.loseSession();
  }

  /** Drops the current session (closing it) and joins again with a new one. */
  private loseSession(): void {
    const s = this.session;
    this.session = null;
    s?.kill();
    this.engine = null;
    this.joinSeq = -1;
    this.pending = [];
    this.incarnation++;
    this.resetReady();
    if (!this.rejoining) void this.rejoin();
  }

  private async rejoin(): Promise<void> {
    this.rejoining = true;
    const deadline = Date.now() + Math.max(60_000, 3 * this.opts.timeout);
    try {
      while (!this.closed && !this.failed) {
        try {
          if (!this.session) {
            const s = await this.openSession(CONNECT_TIMEOUT_MS);
            if (this.closed) {
              s.kill();
              return;
            }
            this.session = s;
          }
          const s = this.session;
          await this.ensureDirs(s);
          // Before join() there is nothing to rejoin; join() starts the incarnation.
          if (!this.myself) return;
          await this.startIncarnation(s);
          log(`joining again as ${this.ns} (session ${s.sessionHex()})`);
          return;
        } catch (e) {
          if (this.session?.dead) this.session = null;
          if (Date.now() > deadline) {
            this.fail(
              `cannot rejoin the cluster through ZooKeeper at ${this.opts.connect}: ${
                (e as Error).message
              }`,
            );
            return;
          }
          await sleep(1000);
        }
      }
    } finally {
      this.rejoining = false;
    }
  }

  private fail(reason: string): void {
    if (this.closed || this.failed) return;
    this.failed = true;
    this.ready.resolve();
    log(reason);
    this.handlers.fatal(reason);
  }

  localAddr(): string {
    // The address we reach ZooKeeper from is the one peers most likely reach us at.
    let a = this.session?.client.connectionManager?.socket?.localAddress ?? "";
    if (a.startsWith("::ffff:")) a = a.slice(7);
    if (net.isIP(a)) return a;
    for (const list of Object.values(os.networkInterfaces())) {
      for (const i of list ?? []) if (!i.internal && i.family === "IPv4") return i.address;
    }
    return "127.0.0.1";
  }

  // -------------------------------------------------------------------- joining

  async join(myself: SdNode, opaque: Buffer): Promise<void> {
    this.myself = myself;
    this.ns = nodeString(myself);
    this.opaque = opaque;
    // The session may have expired since init(): let the new one come up first.
    while (this.rejoining && !this.closed) await sleep(50);
    const s = this.session;
    if (!s) throw new Error(`zookeeper driver: no session with ZooKeeper at ${this.opts.connect}`);
    if (this.joinSeq < 0) await this.startIncarnation(s);
    this.timer ??= setInterval(() => this.tick(), TICK_MS);
  }

  /** New nonce; removes our stale znodes; creates our token and JOIN in one transaction. */
  private async startIncarnation(s: Session): Promise<void> {
    this.nonce = randomBytes(6).toString("hex");
    this.engine = new MembershipEngine(this.myKey());
    // A rejoin presents the daemon's current view (the cluster may have moved on meanwhile).
    if (this.incarnation > 0) this.opaque = this.handlers.joinMessage?.() ?? this.opaque;
    const inc = this.incarnation;
    await this.removeStale(s);
    const id = randomBytes(6).toString("hex");
    const ev: ZkEvent = {
      t: "join",
      id,
      node: encodeNode(this.myself),
      nonce: this.nonce,
      msg: this.opaque,
      time: Date.now(),
    };
    const tokData = Buffer.from(cbor.encode({ node: this.ns, nonce: this.nonce }));
    let token = "";
    let joinName = "";
    for (;;) {
      try {
        const [t, j] = await s.createAll([
          [`${this.dir("master")}/${this.nonce}-`, tokData, zk.CreateMode.EPHEMERAL_SEQUENTIAL],
          [
            `${this.dir("queue")}/${id}-`,
            Buffer.from(cbor.encode(ev)),
            zk.CreateMode.PERSISTENT_SEQUENTIAL,
          ],
        ]);
        token = t.slice(t.lastIndexOf("/") + 1);
        joinName = j.slice(j.lastIndexOf("/") + 1);
        break;
      } catch (e) {
        if (errCode(e) !== zk.Exception.CONNECTION_LOSS) throw e;
        await s.waitConnected();
        const q = (await s.getChildren(this.dir("queue"))).find((n) => n.startsWith(`${id}-`));
        if (!q) continue;
        const t = (await s.getChildren(this.dir("master"))).find((n) =>
          n.startsWith(`${this.nonce}-`)
        );
        if (!t) throw new SessionLost("token vanished");
        token = t;
        joinName = q;
        break;
      }
    }
    if (inc !== this.incarnation || s !== this.session) throw new SessionLost("session replaced");
    this.token = token;
    this.joinSeq = seqOf(joinName);
    // First join: start at our JOIN. Rejoin: deliver what we missed since our old position.
    if (!this.everAccepted || this.pos < 0) this.pos = this.joinSeq - 1;
    this.pending = [];
    this.ready.resolve();
    void this.checkLiveness(s);
    this.pump();
  }

  /** Removes znodes left by an earlier incarnation of this sheep (we own our address now). */
  private async removeStale(s: Session): Promise<void> {
    for (const d of ["member", "queue_pos"]) {
      const p = `${this.dir(d)}/${this.ns}`;
      const r = await s.getData(p);
      if (r && decodeMeta(r.data)?.nonce !== this.nonce) {
        if (await s.remove(p)) log(`removed stale ${p}`);
      }
    }
    for (const t of await s.getChildren(this.dir("master"))) {
      if (t.startsWith(`${this.nonce}-`)) continue;
      const r = await s.getData(`${this.dir("master")}/${t}`);
      const meta = r && decodeMeta(r.data);
      if (meta && meta.node === this.ns) {
        if (await s.remove(`${this.dir("master")}/${t}`)) log(`removed stale master token ${t}`);
      }
    }
  }

  // -------------------------------------------------------------------- queue processing

  private pump(): void {
    void this.runPump();
  }

  private readonly pumper = new Coalesced(async () => {
    if (this.closed || this.failed) return;
    try {
      await this.drain();
    } catch (e) {
      if (e instanceof SessionLost || this.closed) return;
      // A lost connection is retried when the client reconnects (or on the next tick).
      if (errCode(e) === zk.Exception.CONNECTION_LOSS) return;
      this.fail(`zookeeper driver: ${(e as Error).stack ?? e}`);
    }
  });

  private runPump(): Promise<void> {
    return this.pumper.run();
  }

  private async drain(): Promise<void> {
    const s = this.session;
    if (!s || s.dead || this.joinSeq < 0) return;
    const qdir = this.dir("queue");
    for (;;) {
      if (this.closed || this.stopped || this.failed || s !== this.session) return;
      if (this.restartReason) {
        log(`${this.restartReason}; joining again`);
        this.restartReason = null;
        this.loseSession();
        return;
      }
      if (!this.pending.length) {
        const kids = await s.getChildren(qdir, s.watcher("queue", () => this.pump()));
        this.pending = kids
          .map((name) => ({ name, seq: seqOf(name) }))
          .filter((e) => Number.isFinite(e.seq) && e.seq > this.pos)
          .sort((a, b) => a.seq - b.seq);
        if (!this.pending.length) return;
      }
      const head = this.pending[0];
      const path = `${qdir}/${head.name}`;
      const r = await s.getData(path);
      if (s !== this.session) return;
      if (!r) {
        if (head.seq === this.joinSeq && !this.accepted) {
          this.restartReason = "our join request vanished from the queue";
          continue;
        }
        this.pending.shift();
        this.pos = head.seq;
        continue;
      }
      let ev: ZkEvent | null = null;
      try {
        ev = cbor.decode(r.data) as ZkEvent;
      } catch { /* not ours: skip */ }
      if (!ev || typeof ev !== "object" || typeof ev.t !== "string") {
        this.pending.shift();
        this.pos = head.seq;
        continue;
      }
      if (ev.id) this.appender.seen(ev.id);
      const step = await this.process(s, head.seq, path, ev, r.version);
      if (s !== this.session) return;
      if (step === "next") {
        this.pending.shift();
        this.pos = head.seq;
      } else if (step === "wait") {
        // Wait for the JOIN to be rewritten (data watch) or for the master to change (token watch).
        const w = await s.getData(path, s.watcher("data", () => this.pump()));
        if (w && w.version === r.version) return;
      }
    }
  }

  private get accepted(): boolean {
    return this.engine?.accepted ?? false;
  }

  private get members(): readonly Member[] {
    return this.engine?.members ?? [];
  }

  /** Runs the engine's effects in order. */
  private async run(effects: MembershipEffect[]): Promise<void> {
    for (const e of effects) {
      if (e.t === "offerBlock" && e.key === this.myKey() && this.blockOwed > 0) this.blockOwed--;
      await applyEffect(this.handlers, e);
    }
  }

  private myKey(): string {
    return keyOf({ ns: this.ns, nonce: this.nonce });
  }

  private async process(
    s: Session,
    seq: number,
    path: string,
    ev: ZkEvent,
    version: number,
  ): Promise<Step> {
    const node = decodeNode(asBuf(ev.node));
    const ns = nodeString(node);
    const key = keyOf({ ns, nonce: ev.nonce });
    const msg = ev.msg ? asBuf(ev.msg) : EMPTY;

    if (!this.accepted) {
      if (seq < this.joinSeq) {
        // Catching up after a rejoin: apply what the members applied while we were out.
        if (ev.t === "notify" || ev.t === "unblock") await this.handlers.notify(node, msg);
        return "next";
      }
      if (seq > this.joinSeq) return "next";
      switch (ev.t) {
        case "join":
          return (await this.tryFound(s, path, ev, version)) ? "again" : "wait";
        case "reject":
          this.stopped = true;
          await s.remove(`${this.dir("master")}/${this.token}`).catch(() => false);
          if (this.everAccepted) {
            this.fail(
              "the cluster refused to take this sheep back after its ZooKeeper session expired",
            );
          } else this.handlers.rejected(msg);
          return "wait";
        case "accept":
          await this.ownAccept(s, node, ev, msg);
          return "next";
        default:
          return "next";
      }
    }

    switch (ev.t) {
      case "join": {
        const toks = await this.listTokens(s);
        if (!this.isMaster(toks)) return "wait";
        await this.decideJoin(s, path, ev, version, node, ns, toks);
        return "again";
      }
      case "accept": {
        const effects = this.engine!.step({
          t: "accept",
          key,
          node,
          msg,
          members: membersOf(ev),
        });
        await this.run(effects);
        if (effects.length) void this.checkLiveness(s);
        return "next";
      }
      case "reject":
        return "next";
      case "leave": {
        await this.run(this.engine!.step({ t: "leave", key }));
        if (key === this.myKey()) {
          if (this.leaving) this.leaving();
          else this.restartReason = "the cluster removed this sheep";
        }
        return "next";
      }
      case "notify":
        await this.run(this.engine!.step({ t: "notify", node, msg }));
        return "next";
      case "block":
        await this.run(this.engine!.step({ t: "block", key, node }));
        return "next";
      case "unblock":
        await this.run(this.engine!.step({ t: "unblock", key, node, msg }));
        return "next";
      case "update":
        await this.run(this.engine!.step({ t: "update", key, node }));
        return "next";
    }
    return "next";
  }

  /** Our JOIN is at the head and nobody accepted us: found the cluster if no lower token is alive. */
  private async tryFound(s: Session, path: string, ev: ZkEvent, version: number): Promise<boolean> {
    const toks = await this.listTokens(s);
    const mine = seqOf(this.token);
    if (!toks.includes(this.token)) return false;
    if (toks.some((t) => seqOf(t) < mine)) return false;
    const d = this.handlers.join(this.myself, [], ev.msg ? asBuf(ev.msg) : EMPTY);
    const out: ZkEvent = d.accept
      ? {
        ...ev,
        t: "accept",
        msg: d.opaque,
        members: [{ node: asBuf(ev.node), nonce: ev.nonce }],
        blocks: [],
      }
      : { ...ev, t: "reject", msg: d.opaque };
    await s.setData(path, Buffer.from(cbor.encode(out)), version);
    return true;
  }

  private async decideJoin(
    s: Session,
    path: string,
    ev: ZkEvent,
    version: number,
    node: SdNode,
    ns: string,
    toks: string[],
  ): Promise<void> {
    let out: ZkEvent;
    if (!toks.some((t) => t.startsWith(`${ev.nonce}-`))) {
      // The joiner's session ended before we got to its JOIN: nothing to accept.
      out = { ...ev, t: "reject", msg: EMPTY };
    } else {
      // A restarted sheep may join before the LEAVE of its previous incarnation is processed.
      const p = this.engine!.proposeJoin(keyOf({ ns, nonce: ev.nonce }), node);
      const d = this.handlers.join(
        node,
        p.others.map((m) => m.node),
        ev.msg ? asBuf(ev.msg) : EMPTY,
      );
      out = d.accept
        ? {
          ...ev,
          t: "accept",
          msg: d.opaque,
          members: p.members.map((m) => ({ node: encodeNode(m.node), nonce: nonceOf(m.key) })),
          blocks: p.blocks,
        }
        : { ...ev, t: "reject", msg: d.opaque };
    }
    // Versioned: if another node decided first, ours is dropped and we read theirs.
    await s.setData(path, Buffer.from(cbor.encode(out)), version);
  }

  private async ownAccept(s: Session, node: SdNode, ev: ZkEvent, msg: Buffer): Promise<void> {
    const effects = this.engine!.step({
      t: "accept",
      key: this.myKey(),
      node,
      msg,
      members: membersOf(ev),
      blocks: ev.blocks ?? [],
    });
    this.everAccepted = true;
    this.leavePushed.clear();
    await this.register(s);
    await this.run(effects);
    // Block requests made before we were (again) a member: those of an old incarnation died with it.
    for (let i = 0; i < this.blockOwed; i++) this.pushOwn("block");
    void this.checkLiveness(s);
  }

  /** Creates our /member and /queue_pos znodes. */
  private async register(s: Session): Promise<void> {
    const meta = (extra: object) =>
      Buffer.from(
        cbor.encode({ node: this.ns, nonce: this.nonce, session: s.sessionHex(), ...extra }),
      );
    for (
      const [d, data] of [["member", meta({})], ["queue_pos", meta({ pos: this.joinSeq })]] as const
    ) {
      const p = `${this.dir(d)}/${this.ns}`;
      for (let i = 0; i < 3; i++) {
        if (await s.createIfAbsent(p, data, zk.CreateMode.EPHEMERAL)) break;
        const r = await s.getData(p);
        if (r && decodeMeta(r.data)?.nonce === this.nonce) break;
        await s.remove(p);
      }
    }
    this.posWritten = this.joinSeq;
  }

  // -------------------------------------------------------------------- liveness and mastership

  private async listTokens(s: Session): Promise<string[]> {
    return await s.getChildren(
      this.dir("master"),
      s.watcher("master", () => void this.checkLiveness(s)),
    );
  }

  private isMaster(toks: string[]): boolean {
    return masterKey(toks, this.members) === this.myKey();
  }

  /** Pushes a LEAVE for every member whose token or /member znode is gone. */
  private async checkLiveness(s: Session): Promise<void> {
    if (this.checking) {
      this.checkAgain = true;
      return;
    }
    this.checking = true;
    try {
      do {
        this.checkAgain = false;
        if (s !== this.session || s.dead || this.closed) return;
        // Members known before the listings were requested: their tokens predate them.
        const known = this.accepted ? [...this.members] : [];
        const toks = await this.listTokens(s);
        const kids = await s.getChildren(
          this.dir("member"),
          s.watcher("member", () => void this.checkLiveness(s)),
        );
        const gone = new Map<string, string>();
        for (const [name, nonce] of this.memberNonces) {
          if (!kids.includes(name)) {
            gone.set(name, nonce);
            this.memberNonces.delete(name);
          }
        }
        for (const name of kids) {
          if (this.memberNonces.has(name)) continue;
          const r = await s.getData(`${this.dir("member")}/${name}`);
          const nonce = r && decodeMeta(r.data)?.nonce;
          if (typeof nonce === "string") this.memberNonces.set(name, nonce);
        }
        // Mastership or our founding may depend on the tokens that changed.
        this.pump();
        if (!this.accepted || s !== this.session) continue;
        for (const m of known) {
          const key = m.key;
          const nonce = nonceOf(key);
          if (key === this.myKey() || this.leavePushed.has(key)) continue;
          if (!this.engine?.isMember(key)) continue;
          const alive = toks.some((t) => t.startsWith(`${nonce}-`)) &&
            gone.get(nodeString(m.node)) !== nonce;
          if (alive) continue;
          this.leavePushed.add(key);
          const inc = this.incarnation;
          void this.push(
            () => (inc === this.incarnation ? makeEvent("leave", encodeNode(m.node), nonce) : null),
          );
        }
      } while (this.checkAgain);
    } catch (e) {
      if (
        !(e instanceof SessionLost) && errCode(e) !== zk.Exception.CONNECTION_LOSS && !this.closed
      ) {
        log(`liveness check: ${(e as Error).message}`);
      }
    } finally {
      this.checking = false;
    }
  }

  // -------------------------------------------------------------------- periodic work

  private tick(): void {
    const s = this.session;
    if (!s || s.dead || !s.connected || this.closed) return;
    this.ticks++;
    // A safety net in case a watch was lost; cheap when there is nothing new.
    this.pump();
    if (!this.accepted) return;
    void (async () => {
      try {
        if (this.pos !== this.posWritten) {
          const pos = this.pos;
          const data = Buffer.from(
            cbor.encode({ node: this.ns, nonce: this.nonce, session: s.sessionHex(), pos }),
          );
          if (await s.setData(`${this.dir("queue_pos")}/${this.ns}`, data)) this.posWritten = pos;
        }
        if (this.ticks % PURGE_EVERY_TICKS === 0) await this.purge(s);
      } catch (e) {
        if (
          !(e instanceof SessionLost) && errCode(e) !== zk.Exception.CONNECTION_LOSS && !this.closed
        ) {
          log(`queue maintenance: ${(e as Error).message}`);
        }
      }
    })();
  }

  /** Master only: deletes queue znodes every member has processed. */
  private async purge(s: Session): Promise<void> {
    const toks = await this.listTokens(s);
    if (!this.isMaster(toks)) return;
    await purgeProcessed(s, (sub) => this.dir(sub), toks, this.members, this.myKey(), this.pos);
  }

  // -------------------------------------------------------------------- broadcasting

  /** Queues an event from this sheep, with the nonce of the incarnation that pushes it. */
  private pushOwn(t: EventType, msg?: Buffer): void {
    const inc = this.incarnation;
    // BLOCKs belong to one incarnation: owed ones are queued again after a rejoin.
    void this.push(
      () => (t === "block" && inc !== this.incarnation
        ? null
        : makeEvent(t, encodeNode(this.myself), this.nonce, msg)),
    );
  }

  private push(make: () => ZkEvent | null): Promise<void> {
    return this.appender.append(make);
  }

  async leave(): Promise<void> {
    if (!this.accepted || this.closed || !this.session) return;
    const left = new Promise<void>((resolve) => (this.leaving = resolve));
    this.pushOwn("leave");
    await Promise.race([left, sleep(2000)]);
  }

  notify(msg: Buffer): Promise<void> {
    this.pushOwn("notify", msg);
    return Promise.resolve();
  }

  block(): Promise<void> {
    this.blockOwed++;
    if (this.accepted) this.pushOwn("block");
    return Promise.resolve();
  }

  unblock(msg: Buffer): Promise<void> {
    this.pushOwn("unblock", msg);
    return Promise.resolve();
  }

  updateNode(node: SdNode): Promise<void> {
    this.myself = node;
    this.pushOwn("update");
    return Promise.resolve();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.ready.resolve();
    const s = this.session;
    this.session = null;
    if (!s || s.dead) return;
    // Close the session now so our ephemeral znodes vanish at once instead of after the timeout.
    const wasConnected = s.connected;
    const gone = new Promise<void>((resolve) =>
      s.client.on("state", (st) => st.code === zk.State.DISCONNECTED.code && resolve())
    );
    s.kill();
    if (wasConnected) await Promise.race([gone, sleep(1000)]);
  }
}
