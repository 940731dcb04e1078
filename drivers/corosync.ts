// The `corosync` membership driver (`-c corosync[:GROUP]`, sheep-daemon.md §10.3).
//
// A small C helper (drivers/cpg-bridge.c) is this sheep's member of the CPG group; it relays
// configuration changes and delivered messages on its stdout and multicasts (CPG_TYPE_AGREED)
// what we write to its stdin. CPG gives every member the same sequence of confchg and message
// events, so every sheep runs the same state machine over that sequence:
//
// - A confchg that removes members is a LEAVE of those sheep (crash, killed bridge, lost node).
// - A joiner multicasts JOIN (the opaque cluster_info) once it sees itself in a confchg. A JOIN
//   stops processing on every member until a DECISION for it is delivered; the decision is then
//   applied at the JOIN's place and the events queued behind it follow. That is the in-place
//   rewrite of the local driver: nothing happens between the master's join check and the accept.
// - The master is the oldest accepted member still in the CPG group. It runs the join check on
//   the state at the JOIN and multicasts the DECISION with the member list and pending blocks (the
//   joiner starts from those). If the master dies first, the next one decides; when two decisions
//   are delivered, the first wins on every node.
// - The first sheep accepts itself when no CPG member is an accepted sheep and no live joiner's
//   JOIN came before its own. What happened before it joined the group it learns from STATUS
//   messages every existing member multicasts in answer to the confchg that added it.
// DECISION and STATUS are handled when delivered; everything else in delivery order.
import { Coalesced } from "../core/coalesce.ts";
import {
  applyEffect,
  type Member,
  type MembershipEffect,
  MembershipEngine,
} from "../core/membership.ts";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { cbor } from "../core/cbor.ts";
import type { SdNode } from "../core/node.ts";
import { decodeNode, encodeNode, nodeHostPort } from "../core/node.ts";
import type { ClusterDriver, DriverHandlers } from "./driver.ts";
import { DriverConfigError } from "./driver.ts";

const F_HELLO = 1;
const F_CONFCHG = 2;
const F_DELIVER = 3;
/** The bridge's limit for one multicast message. */
const MAX_MSG = 1024 * 1024;
const INIT_TIMEOUT_MS = 10_000;

type MsgType = "join" | "decision" | "status" | "leave" | "notify" | "block" | "unblock" | "update";
/** A CPG member's progress as the event stream shows it. */
type Stat = "new" | "joining" | "member" | "rejected" | "left";

interface Entry {
  key: string;
  node: Buffer;
}

interface Msg {
  t: MsgType;
  /** Sender's sd_node (join/leave/notify/block/unblock/update; update: the new node). */
  node?: Buffer;
  /** join: cluster_info; notify/unblock: payload; decision: the rewritten cluster_info. */
  msg?: Buffer;
  /** decision: key of the joiner decided on. */
  join?: string;
  accept?: boolean;
  /** decision: members after the join, in join order; pending block requests at the JOIN. */
  members?: Entry[];
  blocks?: Entry[];
  /** status: keys whose arrival this answers, and the sender's progress at that confchg. */
  for?: string[];
  st?: Stat;
}

type Item =
  | { kind: "conf"; members: string[]; left: string[]; joined: string[] }
  | { kind: "msg"; from: string; m: Msg };

const keyOf = (nodeid: number, pid: number) => `${nodeid}:${pid}`;

/** Where the bridge binary lives: next to the executable, in the source tree, or $SHEEPDOG_CPG_BRIDGE. */
export function bridgeCandidates(): string[] {
  const out: string[] = [];
  const exeDir = path.dirname(process.execPath);
  out.push(path.join(exeDir, "cpg-bridge"), path.join(exeDir, "drivers", "cpg-bridge"));
  try {
    const u = new URL("./cpg-bridge", import.meta.url);
    if (u.protocol === "file:") out.push(fileURLToPath(u));
  } catch { /* not a file URL inside a compiled binary */ }
  if (process.env.SHEEPDOG_CPG_BRIDGE) out.push(process.env.SHEEPDOG_CPG_BRIDGE);
  return out;
}

function findBridge(): string | null {
  for (const p of bridgeCandidates()) {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch { /* next */ }
  }
  return null;
}

/** corosync's address for this node (nodelist.node.<local_node_pos>.ring0_addr), if an IP literal. */
function ringAddr(): Promise<string | null> {
  return new Promise((resolve) => {
    execFile("corosync-cmapctl", ["nodelist."], { timeout: 2000 }, (err, stdout) => {
      if (err) return resolve(null);
      const text = String(stdout);
      const pos = /^nodelist\.local_node_pos \(u32\) = (\d+)$/m.exec(text)?.[1];
      if (pos === undefined) return resolve(null);
      const re = new RegExp(`^nodelist\\.node\\.${pos}\\.ring0_addr \\(str\\) = (\\S+)$`, "m");
      const addr = re.exec(text)?.[1] ?? null;
      resolve(addr && /^[0-9.]+$|:/.test(addr) ? addr : null);
    });
  });
}

export function createCorosyncDriver(opt: string): ClusterDriver {
  const group = opt || "sheepdog";
  if (Buffer.byteLength(group) > 127) {
    throw new DriverConfigError(`corosync: group name too long: ${group}`);
  }
  return new CorosyncDriver(group);
}

class CorosyncDriver implements ClusterDriver {
  readonly name = "corosync";
  private handlers!: DriverHandlers;
  private proc: ChildProcess | null = null;
  private stderrTail = "";
  private inBuf: Buffer = Buffer.alloc(0);
  private myKey = "";
  private myself: SdNode | null = null;
  private addr = "127.0.0.1";
  private closed = false;
  private dead = false;
  /** Settle init() on the bridge's HELLO or its early exit. */
  private onHello: (() => void) | null = null;
  private onEarlyExit: ((why: string) => void) | null = null;

  // Delivery-level knowledge (updated as frames arrive).
  private live = new Set<string>();
  private seenSelf = false;
  /** Members present when we joined the group whose STATUS we still need. */
  private statusNeeded = new Set<string>();
  private reported = new Map<string, Stat>();
  private stat = new Map<string, Stat>();
  /** Delivery index of each JOIN seen. */
  private joinIdx = new Map<string, number>();
  private joinCounter = 0;
  private decisions = new Map<string, Msg>();
  private decided = new Set<string>();
  private decisionSent = new Set<string>();
  private joinOpaque: Buffer | null = null;
  private joinSent = false;

  // Processing-level state (the replicated state machine).
  private queue: Item[] = [];
  private readonly pumper = new Coalesced(() => this.drainQueue());
  private rejected = false;
  /** Members and blocks (core/membership.ts); made at join(), once our CPG key is known. */
  private engine: MembershipEngine | null = null;
  /** The undecided JOIN processing waits at (only set when every earlier event is done). */
  private blockedAt: { from: string; m: Msg } | null = null;
  private leaving: (() => void) | null = null;

  constructor(readonly group: string) {}

  async init(handlers: DriverHandlers): Promise<void> {
    this.handlers = handlers;
    const bin = findBridge();
    if (!bin) {
      throw new DriverConfigError(
        `corosync driver: cpg-bridge not found (looked in ${bridgeCandidates().join(", ")}); ` +
          "build it with `make` (needs libcpg-dev) or set SHEEPDOG_CPG_BRIDGE",
      );
    }
    const proc = spawn(bin, [this.group], { stdio: ["pipe", "pipe", "pipe"] });
    this.proc = proc;
    proc.stdin!.on("error", () => {}); // EPIPE after the bridge died: its exit is reported instead
    proc.stderr!.on("data", (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString()).slice(-2000);
    });
    const hello = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `corosync driver: no answer from cpg-bridge within ${INIT_TIMEOUT_MS} ms (corosync hung?)`,
          ),
        );
        proc.kill("SIGKILL");
      }, INIT_TIMEOUT_MS);
      this.onHello = () => {
        clearTimeout(timer);
        resolve();
      };
      this.onEarlyExit = (why) => {
        clearTimeout(timer);
        reject(new Error(`corosync driver: cannot join CPG group '${this.group}': ${why}`));
      };
    });
    proc.stdout!.on("data", (d: Buffer) => this.onData(d));
    proc.on("error", (e) => this.bridgeGone(`cannot run ${bin}: ${e.message}`));
    proc.on("exit", (code, signal) => {
      // stderr may still hold the reason: give it a moment to drain.
      setTimeout(() => {
        const why = this.stderrTail.trim() || "no message";
        this.bridgeGone(
          `cpg-bridge exited (${signal ? `signal ${signal}` : `code ${code}`}): ${why}`,
        );
      }, 50);
    });
    await hello;
    this.addr = (await ringAddr()) ?? "127.0.0.1";
  }

  private bridgeGone(why: string): void {
    if (this.dead) return;
    this.dead = true;
    if (this.onEarlyExit) {
      const f = this.onEarlyExit;
      this.onEarlyExit = null;
      this.onHello = null;
      f(why);
      return;
    }
    if (!this.closed) {
      this.closed = true;
      this.handlers.fatal(`corosync driver: ${why}`);
    }
  }

  localAddr(): string {
    return this.addr;
  }

  // ------------------------------------------------------------------ bridge I/O

  private onData(d: Buffer): void {
    this.inBuf = this.inBuf.length ? Buffer.concat([this.inBuf, d]) : d;
    let off = 0;
    while (this.inBuf.length - off >= 4) {
      const len = this.inBuf.readUInt32LE(off);
      if (this.inBuf.length - off - 4 < len) break;
      const f = this.inBuf.subarray(off + 4, off + 4 + len);
      off += 4 + len;
      try {
        this.onFrame(f);
      } catch (e) {
        this.fail(`bad event from cpg-bridge: ${(e as Error).stack ?? e}`);
        return;
      }
    }
    this.inBuf = off === this.inBuf.length
      ? Buffer.alloc(0)
      : Buffer.from(this.inBuf.subarray(off));
  }

  private fail(why: string): void {
    if (this.closed) return;
    this.closed = true;
    this.proc?.kill("SIGKILL");
    this.handlers.fatal(`corosync driver: ${why}`);
  }

  private send(m: Msg): void {
    if (this.dead || !this.proc?.stdin || this.proc.stdin.destroyed) return;
    const body = cbor.encode(m) as Buffer;
    if (body.length > MAX_MSG) {
      throw new Error(`corosync driver: message of ${body.length} bytes exceeds ${MAX_MSG}`);
    }
    const h = Buffer.alloc(4);
    h.writeUInt32LE(body.length);
    this.proc.stdin.write(Buffer.concat([h, body]));
  }

  private onFrame(f: Buffer): void {
    const type = f[0];
    if (type === F_HELLO) {
      this.myKey = keyOf(f.readUInt32LE(1), f.readUInt32LE(5));
      const h = this.onHello;
      this.onHello = null;
      this.onEarlyExit = null;
      h?.();
      return;
    }
    if (this.closed) return;
    if (type === F_CONFCHG) {
      const nm = f.readUInt32LE(1), nl = f.readUInt32LE(5), nj = f.readUInt32LE(9);
      const list = (start: number, n: number) => {
        const out: string[] = [];
        for (let i = 0; i < n; i++) {
          const o = 13 + (start + i) * 12;
          out.push(keyOf(f.readUInt32LE(o), f.readUInt32LE(o + 4)));
        }
        return out;
      };
      const item = {
        kind: "conf" as const,
        members: list(0, nm),
        left: list(nm, nl),
        joined: list(nm + nl, nj),
      };
      this.onConfchg(item);
      this.queue.push(item);
    } else if (type === F_DELIVER) {
      const from = keyOf(f.readUInt32LE(1), f.readUInt32LE(5));
      const m = cbor.decode(f.subarray(9)) as Msg;
      // Control messages are not queued but may unblock a waiting JOIN: kick anyway.
      if (this.onMessage(from, m)) this.queue.push({ kind: "msg", from, m });
    } else {
      throw new Error(`unknown frame type ${type}`);
    }
    this.kick();
  }

  private onConfchg(c: { members: string[]; left: string[]; joined: string[] }): void {
    this.live = new Set(c.members);
    if (!this.seenSelf && c.joined.includes(this.myKey)) {
      this.seenSelf = true;
      for (const k of c.members) if (!c.joined.includes(k)) this.statusNeeded.add(k);
      this.sendJoin();
    } else if (this.seenSelf && c.joined.length) {
      // Tell the newcomers what they missed about us.
      this.send({ t: "status", for: c.joined, st: this.myStat() });
    }
  }

  private myStat(): Stat {
    const s = this.stat.get(this.myKey) ?? "new";
    return s === "rejected" ? "left" : s;
  }

  /** Delivery-time bookkeeping; returns false for control messages that are not queued. */
  private onMessage(from: string, m: Msg): boolean {
    switch (m.t) {
      case "status":
        if (this.statusNeeded.has(from) && m.for?.includes(this.myKey)) {
          this.statusNeeded.delete(from);
          if (m.st) this.reported.set(from, m.st);
        }
        return false;
      case "decision": {
        const j = m.join ?? "";
        if (!this.decided.has(j) && !this.decisions.has(j)) {
          this.decisions.set(j, m);
          this.stat.set(j, m.accept ? "member" : "rejected");
        }
        return false;
      }
      case "join":
        if (!this.stat.has(from)) this.stat.set(from, "joining");
        this.joinIdx.set(from, this.joinCounter++);
        return true;
      case "leave":
        this.stat.set(from, "left");
        return true;
      default:
        return true;
    }
  }

  private sendJoin(): void {
    if (this.joinSent || !this.seenSelf || !this.joinOpaque || !this.myself) return;
    this.joinSent = true;
    this.send({ t: "join", node: encodeNode(this.myself), msg: this.joinOpaque });
  }

  // ------------------------------------------------------------------ replicated state machine

  private kick(): void {
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.closed) return;
    try {
      await this.pumper.run();
    } catch (e) {
      this.fail(`${(e as Error).stack ?? e}`);
    }
  }

  /** Processes delivered items in order until one must wait (an undecided JOIN). */
  private async drainQueue(): Promise<void> {
    while (this.queue.length && !this.closed) {
      const done = await this.process(this.queue[0]);
      if (!done) {
        this.maybeDecide();
        break;
      }
      this.queue.shift();
    }
  }

  private get accepted(): boolean {
    return this.engine?.accepted ?? false;
  }

  private get members(): readonly Member[] {
    return this.engine?.members ?? [];
  }

  private async run(effects: MembershipEffect[]): Promise<void> {
    for (const e of effects) await applyEffect(this.handlers, e);
  }

  /** Returns false when processing must wait at this event (an undecided JOIN). */
  private async process(it: Item): Promise<boolean> {
    if (it.kind === "conf") {
      if (!this.accepted) return true;
      const left = new Set(it.left);
      const gone = this.members.filter((m) => left.has(m.key));
      const prev = this.members.length;
      // Partition guard: with 3+ members, survivors that are no majority of the previous view
      // may be the minority side of a split; stop serving rather than split the brain.
      if (prev >= 3 && (prev - gone.length) * 2 <= prev) {
        this.fail(
          `network partition suspected: ${gone.length} of ${prev} members left in one configuration change ` +
            `(${gone.map((m) => nodeHostPort(m.node)).join(", ")}); stopping I/O`,
        );
        return false;
      }
      await this.run(this.engine!.removeAll(left));
      return true;
    }
    const { from, m } = it;
    if (m.t === "join") return await this.processJoin(from, m);
    if (!this.accepted) return true;
    const node = decodeNode(m.node!);
    const engine = this.engine!;
    const msg = m.msg ?? Buffer.alloc(0);
    switch (m.t) {
      case "leave":
        await this.run(engine.step({ t: "leave", key: from }));
        if (from === this.myKey && this.leaving) this.leaving();
        return true;
      case "notify":
        await this.run(engine.step({ t: "notify", node, msg }));
        return true;
      case "block":
        await this.run(engine.step({ t: "block", key: from, node }));
        return true;
      case "unblock":
        await this.run(engine.step({ t: "unblock", key: from, node, msg }));
        return true;
      case "update":
        await this.run(engine.step({ t: "update", key: from, node }));
        return true;
      default:
        return true;
    }
  }

  private async processJoin(from: string, m: Msg): Promise<boolean> {
    const mine = from === this.myKey;
    if (!this.accepted && !mine) return true; // before our own JOIN nothing concerns us
    if (this.rejected) return false;
    if (this.accepted && this.engine!.isMember(from)) return true;
    const d = this.decisions.get(from);
    if (!d) {
      this.blockedAt = { from, m };
      return false;
    }
    this.blockedAt = null;
    this.decisions.delete(from);
    this.decided.add(from);
    const node = decodeNode(m.node!);
    const opaque = d.msg ?? Buffer.alloc(0);
    if (!d.accept) {
      if (mine) {
        this.rejected = true;
        this.handlers.rejected(opaque);
        return false;
      }
      return true;
    }
    if (mine) {
      await this.run(this.engine!.step({
        t: "accept",
        key: from,
        node,
        msg: opaque,
        members: (d.members ?? []).map((e) => ({ key: e.key, node: decodeNode(e.node) })),
        blocks: (d.blocks ?? []).map((e) => e.key),
      }));
      return true;
    }
    // The engine drops an older incarnation of the joiner first.
    await this.run(this.engine!.step({ t: "accept", key: from, node, msg: opaque }));
    return true;
  }

  /** Called when processing waits at an undecided JOIN or membership/knowledge changed. */
  private maybeDecide(): void {
    const b = this.blockedAt;
    if (!b || this.closed || this.decisions.has(b.from) || this.decisionSent.has(b.from)) return;
    if (this.accepted) {
      const master = this.members.find((x) => this.live.has(x.key));
      if (master?.key !== this.myKey) return;
      const node = decodeNode(b.m.node!);
      const p = this.engine!.proposeJoin(b.from, node);
      const d = this.handlers.join(node, p.others.map((x) => x.node), b.m.msg ?? Buffer.alloc(0));
      this.decisionSent.add(b.from);
      this.send({
        t: "decision",
        join: b.from,
        accept: d.accept,
        msg: d.opaque,
        members: p.members.map((x) => ({ key: x.key, node: encodeNode(x.node) })),
        blocks: p.blocks.map((k) => ({ key: k, node: encodeNode(this.engine!.member(k)!.node) })),
      });
    } else if (b.from === this.myKey && this.mayFound()) {
      const d = this.handlers.join(this.myself!, [], b.m.msg ?? Buffer.alloc(0));
      this.decisionSent.add(b.from);
      this.send({
        t: "decision",
        join: b.from,
        accept: d.accept,
        msg: d.opaque,
        members: [{ key: this.myKey, node: encodeNode(this.myself!) }],
        blocks: [],
      });
    }
  }

  /** True when no live CPG member is an accepted sheep or a joiner whose JOIN precedes ours. */
  private mayFound(): boolean {
    for (const k of this.statusNeeded) if (this.live.has(k)) return false;
    const myIdx = this.joinIdx.get(this.myKey) ?? Infinity;
    for (const k of this.live) {
      if (k === this.myKey) continue;
      const s = this.stat.get(k) ?? this.reported.get(k) ?? "new";
      if (s === "member") return false;
      if (s === "joining") {
        const idx = this.joinIdx.get(k);
        if (idx === undefined || idx < myIdx) return false; // reported joining: JOIN before ours
      }
    }
    return true;
  }

  // ------------------------------------------------------------------ driver API

  join(myself: SdNode, opaque: Buffer): Promise<void> {
    this.myself = myself;
    this.engine = new MembershipEngine(this.myKey);
    this.joinOpaque = opaque;
    this.sendJoin();
    return Promise.resolve();
  }

  async leave(): Promise<void> {
    if (!this.accepted || this.closed || !this.engine?.isMember(this.myKey)) return;
    const left = new Promise<void>((resolve) => (this.leaving = resolve));
    this.send({ t: "leave", node: encodeNode(this.myself!) });
    await Promise.race([left, new Promise((r) => setTimeout(r, 2000))]);
  }

  private sendFrom(t: MsgType, msg?: Buffer): Promise<void> {
    this.send({ t, node: encodeNode(this.myself!), msg });
    return Promise.resolve();
  }

  notify(msg: Buffer): Promise<void> {
    return this.sendFrom("notify", msg);
  }

  block(): Promise<void> {
    return this.sendFrom("block");
  }

  unblock(msg: Buffer): Promise<void> {
    return this.sendFrom("unblock", msg);
  }

  updateNode(node: SdNode): Promise<void> {
    if (this.myself && nodeHostPort(node) === nodeHostPort(this.myself)) this.myself = node;
    this.send({ t: "update", node: encodeNode(node) });
    return Promise.resolve();
  }

  async close(): Promise<void> {
    this.closed = true;
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((r) => p.once("exit", () => r()));
    p.stdin?.end(); // the bridge leaves the group and exits at EOF
    const t = setTimeout(() => p.kill("SIGKILL"), 1000);
    await exited;
    clearTimeout(t);
  }
}
