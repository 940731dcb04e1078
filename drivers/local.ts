// The `local` membership driver: many sheep on one host, no other software.
//
// Total order: a directory of sequentially numbered event files (<dir>/queue/%010d). An event is
// written to a temp file and link()ed to the next free number; link() fails with EEXIST when
// another sheep took that number, so every number has exactly one complete event (the same
// guarantee ZooKeeper's sequential znodes give, which is why the zookeeper driver can share this
// design). A JOIN is rewritten in place (rename) to ACCEPT or REJECT by the master.
//
// Liveness: every sheep listens on a Unix socket <dir>/members/<ip>_<port>.<nonce>.sock and every
// member keeps a connection to every other member. The kernel closes those connections when a
// process exits, even while it lingers as a zombie, so death is seen at once and without looking
// at pids (upstream's kill(pid, 0) check crashes on zombies). Whoever sees a member's connection
// close appends a LEAVE; duplicates are ignored when processed.
import { Coalesced } from "../core/coalesce.ts";
import { cbor } from "../core/cbor.ts";
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import type { SdNode } from "../core/node.ts";
import { decodeNode, encodeNode, nodeHostPort, nodeIp } from "../core/node.ts";
import type { ClusterDriver, DriverHandlers } from "./driver.ts";
import {
  applyEffect,
  type Member,
  type MembershipEffect,
  MembershipEngine,
} from "../core/membership.ts";
import { DriverConfigError } from "./driver.ts";

type EventType = "join" | "accept" | "reject" | "leave" | "notify" | "block" | "unblock" | "update";

interface QueueEvent {
  t: EventType;
  /** Sender (or subject for join/leave/update). */
  node: Buffer;
  nonce: string;
  /** join/accept/reject: the opaque join message. notify/unblock: the message. */
  msg?: Buffer;
  /** accept: the full member list after the join, in join order. */
  members?: Array<{ node: Buffer; nonce: string }>;
  /** accept: pending block requests (keys) at that point, so the joiner can track unblocks. */
  blocks?: string[];
  time: number;
}

const POLL_MS = 40;
const ELECTION_MS = 100;
/** Members publish their queue position this often; the master compacts this often. */
const POS_EVERY = 64;
const COMPACT_EVERY = 256;
/** Events kept behind the slowest member, as a margin for a member that is about to publish. */
const KEEP_BEHIND = 1024;

function memberKey(m: { node: SdNode; nonce: string }): string {
  return `${nodeHostPort(m.node)}.${m.nonce}`;
}

/** The incarnation nonce of a member key (hex, after the last dot). */
function nonceOf(key: string): string {
  return key.slice(key.lastIndexOf(".") + 1);
}

export class LocalDriver implements ClusterDriver {
  readonly name = "local";
  private handlers!: DriverHandlers;
  private readonly queueDir: string;
  private readonly memberDir: string;
  private readonly tmpDir: string;
  private readonly posDir: string;
  private processed = 0;
  private compactedBelow = 0;
  private readonly nonce = randomBytes(6).toString("hex");
  private myself!: SdNode;
  private server: net.Server | null = null;
  /** Members and blocks: the shared bookkeeping (core/membership.ts); made at join(). */
  private engine: MembershipEngine | null = null;
  private joinSeq = -1;
  private pos = -1;
  private nextSeq = 0;
  private tmpCounter = 0;
  private conns = new Map<string, net.Socket>();
  /** Peers' liveness connections to us: closed with us, as the kernel does when a process dies. */
  private readonly inbound = new Set<net.Socket>();
  private dead = new Set<string>();
  private readonly pumper = new Coalesced(() => this.drainQueue());
  private timer: ReturnType<typeof setInterval> | null = null;
  private lastElection = 0;
  private closed = false;
  private leaving: (() => void) | null = null;

  constructor(readonly dir: string) {
    this.queueDir = path.join(dir, "queue");
    this.memberDir = path.join(dir, "members");
    this.tmpDir = path.join(dir, "tmp");
    this.posDir = path.join(dir, "pos");
  }

  init(handlers: DriverHandlers): Promise<void> {
    this.handlers = handlers;
    try {
      for (const d of [this.dir, this.queueDir, this.memberDir, this.tmpDir, this.posDir]) {
        fs.mkdirSync(d, { recursive: true });
      }
    } catch (e) {
      throw new DriverConfigError(`local driver: cannot use ${this.dir}: ${(e as Error).message}`);
    }
    return Promise.resolve();
  }

  localAddr(): string {
    return "127.0.0.1";
  }

  /** This process's member key (address and incarnation). */
  private myKey(): string {
    return memberKey({ node: this.myself, nonce: this.nonce });
  }

  private sockPath(node: SdNode, nonce: string): string {
    return path.join(this.memberDir, `${nodeIp(node)}_${node.port}.${nonce}.sock`);
  }

  private get accepted(): boolean {
    return this.engine?.accepted ?? false;
  }

  async join(myself: SdNode, opaque: Buffer): Promise<void> {
    this.myself = myself;
    this.engine = new MembershipEngine(this.myKey());
    await this.listen();
    this.nextSeq = this.maxSeq() + 1;
    this.joinSeq = this.append({
      t: "join",
      node: encodeNode(myself),
      nonce: this.nonce,
      msg: opaque,
      time: Date.now(),
    });
    this.pos = this.joinSeq;
    this.timer = setInterval(() => this.pump(), POLL_MS);
    this.pump();
  }

  private listen(): Promise<void> {
    const p = this.sockPath(this.myself, this.nonce);
    return new Promise((resolve, reject) => {
      const srv = net.createServer((sock) => {
        this.inbound.add(sock);
        sock.on("close", () => this.inbound.delete(sock));
        let buf = "";
        sock.on("data", (d) => {
          buf += d.toString();
          let nl;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (line === "S") {
              sock.write(JSON.stringify({ accepted: this.accepted, joinSeq: this.joinSeq }) + "\n");
            } else {
              this.pump();
            }
          }
        });
        sock.on("error", () => {});
      });
      srv.on("error", reject);
      srv.listen(p, () => {
        this.server = srv;
        resolve();
      });
    });
  }

  private maxSeq(): number {
    let max = -1;
    for (const f of fs.readdirSync(this.queueDir)) {
      const n = Number(f);
      if (Number.isInteger(n) && n > max) max = n;
    }
    return max;
  }

  private seqPath(seq: number): string {
    return path.join(this.queueDir, String(seq).padStart(10, "0"));
  }

  private writeTmp(ev: QueueEvent): string {
    const tmp = path.join(this.tmpDir, `${this.nonce}.${this.tmpCounter++}`);
    fs.writeFileSync(tmp, cbor.encode(ev));
    return tmp;
  }

  /** Appends an event at the next free sequence number; returns the number. */
  private append(ev: QueueEvent): number {
    const tmp = this.writeTmp(ev);
    let seq = Math.max(this.nextSeq, this.pos);
    for (;;) {
      try {
        fs.linkSync(tmp, this.seqPath(seq));
        break;
      } catch (e) {
        if ((e as { code?: string }).code !== "EEXIST") {
          fs.rmSync(tmp, { force: true });
          throw e;
        }
        seq++;
      }
    }
    fs.rmSync(tmp, { force: true });
    this.nextSeq = seq + 1;
    this.poke();
    return seq;
  }

  private rewrite(seq: number, ev: QueueEvent): void {
    fs.renameSync(this.writeTmp(ev), this.seqPath(seq));
    this.poke();
  }

  private poke(): void {
    for (const c of this.conns.values()) if (!c.destroyed) c.write("P\n");
    queueMicrotask(() => this.pump());
  }

  private read(seq: number): QueueEvent | null {
    try {
      return cbor.decode(fs.readFileSync(this.seqPath(seq))) as QueueEvent;
    } catch (e) {
      if ((e as { code?: string }).code === "ENOENT") return null;
      throw e;
    }
  }

  private async pump(): Promise<void> {
    if (this.closed) return;
    try {
      await this.pumper.run();
    } catch (e) {
      this.handlers.fatal(`local driver: ${(e as Error).stack ?? e}`);
    }
  }

  /** Processes queue events in order from our position until one must wait. */
  private async drainQueue(): Promise<void> {
    for (;;) {
      if (this.closed) return;
      const ev = this.read(this.pos);
      if (!ev) break;
      const done = await this.process(this.pos, ev);
      if (!done) break;
      this.pos++;
      if (this.accepted && ++this.processed % POS_EVERY === 0) this.publishPos();
      if (this.accepted && this.processed % COMPACT_EVERY === 0 && this.isMaster()) {
        this.compact();
      }
    }
  }

  private isMember(key: string): boolean {
    return this.engine?.isMember(key) ?? false;
  }

  /** The master is the oldest member still alive as far as this process can tell. */
  private isMaster(): boolean {
    const me = this.myKey();
    for (const m of this.engine?.members ?? []) {
      if (m.key === me) return true;
      if (!this.dead.has(m.key)) return false;
    }
    return false;
  }

  /** Runs the engine's effects in order; a member that left loses its liveness connection. */
  private async run(effects: MembershipEffect[]): Promise<void> {
    for (const e of effects) {
      if (e.t === "leave") {
        this.conns.get(e.key)?.destroy();
        this.conns.delete(e.key);
      }
      await applyEffect(this.handlers, e);
    }
  }

  private static membersOf(ev: QueueEvent): Member[] {
    return (ev.members ?? []).map((m) => {
      const node = decodeNode(m.node);
      return { key: memberKey({ node, nonce: m.nonce }), node };
    });
  }

  /** Returns false when processing must stop at this event (a JOIN not yet decided). */
  private async process(seq: number, ev: QueueEvent): Promise<boolean> {
    const node = decodeNode(ev.node);
    const key = memberKey({ node, nonce: ev.nonce });
    const engine = this.engine!;
    const msg = ev.msg ?? Buffer.alloc(0);
    if (!engine.accepted) {
      // Before our own ACCEPT we only look at our JOIN.
      if (seq !== this.joinSeq) return true;
      if (ev.t === "join") {
        await this.electFirst(seq, ev);
        return false;
      }
      if (ev.t === "reject") {
        this.handlers.rejected(msg);
        return false;
      }
      if (ev.t !== "accept") return true;
      const effects = engine.step({
        t: "accept",
        key,
        node,
        msg,
        members: LocalDriver.membersOf(ev),
        blocks: ev.blocks ?? [],
      });
      this.publishPos();
      for (const m of engine.members) this.watch(m);
      await this.run(effects);
      return true;
    }
    switch (ev.t) {
      case "join": {
        if (!this.isMaster()) return false;
        const p = engine.proposeJoin(key, node);
        const d = this.handlers.join(node, p.others.map((m) => m.node), msg);
        if (d.accept) {
          this.rewrite(seq, {
            ...ev,
            t: "accept",
            msg: d.opaque,
            members: p.members.map((m) => ({ node: encodeNode(m.node), nonce: nonceOf(m.key) })),
            blocks: p.blocks,
          });
        } else {
          this.rewrite(seq, { ...ev, t: "reject", msg: d.opaque });
        }
        return false; // re-read the rewritten entry
      }
      case "accept": {
        const effects = engine.step({
          t: "accept",
          key,
          node,
          msg,
          members: LocalDriver.membersOf(ev),
        });
        if (engine.isMember(key)) this.watch({ key, node });
        await this.run(effects);
        return true;
      }
      case "reject":
        return true;
      case "leave":
        await this.run(engine.step({ t: "leave", key }));
        if (key === this.myKey() && this.leaving) this.leaving();
        return true;
      case "notify":
        await this.run(engine.step({ t: "notify", node, msg }));
        return true;
      case "block":
        await this.run(engine.step({ t: "block", key, node }));
        return true;
      case "unblock":
        await this.run(engine.step({ t: "unblock", key, node, msg }));
        return true;
      case "update":
        await this.run(engine.step({ t: "update", key, node }));
        return true;
    }
  }

  /** Where this member is in the queue: the master never deletes events at or after it. */
  private publishPos(): void {
    const f = path.join(this.posDir, this.myKey());
    const tmp = path.join(this.tmpDir, `${this.nonce}.pos`);
    fs.writeFileSync(tmp, String(this.pos));
    fs.renameSync(tmp, f);
  }

  /**
   * Deletes events every member has processed (the queue would otherwise grow without bound).
   * Positions of processes that are no longer members are dropped first.
   */
  private compact(): void {
    const members = new Set(
      this.engine?.blocks === undefined ? [] : this.engine.members.map((m) => m.key),
    );
    let min = Infinity;
    for (const f of fs.readdirSync(this.posDir)) {
      if (!members.has(f)) {
        fs.rmSync(path.join(this.posDir, f), { force: true });
        continue;
      }
      const n = Number(fs.readFileSync(path.join(this.posDir, f), "utf8"));
      if (Number.isFinite(n)) min = Math.min(min, n);
    }
    // A member that has not published yet holds the compaction back entirely.
    if (!Number.isFinite(min) || members.size > fs.readdirSync(this.posDir).length) return;
    const below = min - KEEP_BEHIND;
    if (this.compactedBelow === 0) {
      for (const f of fs.readdirSync(this.queueDir)) {
        const n = Number(f);
        if (Number.isInteger(n) && n < below) {
          fs.rmSync(path.join(this.queueDir, f), { force: true });
        }
      }
    } else {
      for (let n = this.compactedBelow; n < below; n++) fs.rmSync(this.seqPath(n), { force: true });
    }
    if (below > this.compactedBelow) this.compactedBelow = below;
  }

  /** Keeps a connection to a member; its close means the member process is gone. */
  private watch(m: Member): void {
    const key = m.key;
    const nonce = nonceOf(key);
    if (key === this.myKey() || this.conns.has(key)) return;
    const sock = net.connect(this.sockPath(m.node, nonce));
    this.conns.set(key, sock);
    sock.on("error", () => {});
    sock.on("close", () => {
      if (this.closed) return;
      this.dead.add(key);
      this.conns.delete(key);
      fs.rmSync(this.sockPath(m.node, nonce), { force: true });
      if (this.isMember(key)) {
        this.append({ t: "leave", node: encodeNode(m.node), nonce, time: Date.now() });
      }
      this.pump();
    });
  }

  /**
   * Nobody accepted our JOIN yet: if no accepted member is alive, the live joiner with the lowest
   * JOIN number founds the cluster by accepting itself.
   */
  private async electFirst(seq: number, ev: QueueEvent): Promise<void> {
    const now = Date.now();
    if (now - this.lastElection < ELECTION_MS) return;
    this.lastElection = now;
    const peers = await this.probeAll();
    if (this.closed || this.accepted) return;
    if (peers.some((p) => p.accepted)) return;
    if (peers.some((p) => p.joinSeq >= 0 && p.joinSeq < seq)) return;
    const cur = this.read(seq);
    if (!cur || cur.t !== "join") return;
    const d = this.handlers.join(this.myself, [], ev.msg ?? Buffer.alloc(0));
    if (d.accept) {
      this.rewrite(seq, {
        ...ev,
        t: "accept",
        msg: d.opaque,
        members: [{ node: ev.node, nonce: ev.nonce }],
        blocks: [],
      });
    } else {
      this.rewrite(seq, { ...ev, t: "reject", msg: d.opaque });
    }
  }

  private async probeAll(): Promise<Array<{ accepted: boolean; joinSeq: number }>> {
    const mine = path.basename(this.sockPath(this.myself, this.nonce));
    const files = fs.readdirSync(this.memberDir).filter((f) => f.endsWith(".sock") && f !== mine);
    const res = await Promise.all(files.map((f) => this.probe(path.join(this.memberDir, f))));
    return res.filter((r): r is { accepted: boolean; joinSeq: number } => r !== null);
  }

  private probe(p: string): Promise<{ accepted: boolean; joinSeq: number } | null> {
    return new Promise((resolve) => {
      const sock = net.connect(p);
      let buf = "";
      const done = (v: { accepted: boolean; joinSeq: number } | null) => {
        clearTimeout(t);
        sock.destroy();
        resolve(v);
      };
      // A live but busy sheep answers late; counting it as alive-and-accepted is the safe side.
      const t = setTimeout(() => done({ accepted: true, joinSeq: -1 }), 2000);
      sock.on("connect", () => sock.write("S\n"));
      sock.on("data", (d) => {
        buf += d.toString();
        const nl = buf.indexOf("\n");
        if (nl >= 0) {
          try {
            done(JSON.parse(buf.slice(0, nl)));
          } catch {
            done(null);
          }
        }
      });
      sock.on("error", (e) => {
        const code = (e as { code?: string }).code;
        if (code === "ECONNREFUSED" || code === "ENOENT") fs.rmSync(p, { force: true });
        done(null);
      });
    });
  }

  async leave(): Promise<void> {
    if (!this.accepted || this.closed) return;
    const left = new Promise<void>((resolve) => (this.leaving = resolve));
    this.append({ t: "leave", node: encodeNode(this.myself), nonce: this.nonce, time: Date.now() });
    await Promise.race([left, new Promise((r) => setTimeout(r, 2000))]);
  }

  notify(msg: Buffer): Promise<void> {
    this.append({
      t: "notify",
      node: encodeNode(this.myself),
      nonce: this.nonce,
      msg,
      time: Date.now(),
    });
    return Promise.resolve();
  }

  block(): Promise<void> {
    this.append({ t: "block", node: encodeNode(this.myself), nonce: this.nonce, time: Date.now() });
    return Promise.resolve();
  }

  unblock(msg: Buffer): Promise<void> {
    this.append({
      t: "unblock",
      node: encodeNode(this.myself),
      nonce: this.nonce,
      msg,
      time: Date.now(),
    });
    return Promise.resolve();
  }

  updateNode(node: SdNode): Promise<void> {
    this.append({ t: "update", node: encodeNode(node), nonce: this.nonce, time: Date.now() });
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    for (const c of this.conns.values()) c.destroy();
    this.conns.clear();
    for (const c of this.inbound) c.destroy();
    this.inbound.clear();
    if (this.myself) {
      fs.rmSync(this.sockPath(this.myself, this.nonce), { force: true });
      fs.rmSync(path.join(this.posDir, this.myKey()), { force: true });
    }
    return new Promise((resolve) => {
      if (!this.server) return resolve();
      this.server.close(() => resolve());
    });
  }
}
