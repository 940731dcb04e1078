// The ZooKeeper driver's znode records and queue bookkeeping: event and meta records, member
// keys, mastership and the purge of processed queue znodes (see zookeeper.ts for the layout).
import { Buffer } from "node:buffer";
import process from "node:process";
import { cbor } from "../core/cbor.ts";
import type { Member } from "../core/membership.ts";
import { decodeNode, nodeString } from "../core/node.ts";
import { randomBytes } from "node:crypto";
import { errCode, type Session, SessionLost, zk } from "./zookeeper-session.ts";

export type EventType =
  | "join"
  | "accept"
  | "reject"
  | "leave"
  | "notify"
  | "block"
  | "unblock"
  | "update";

export interface WireMember {
  node: Buffer;
  nonce: string;
}

export interface ZkEvent {
  t: EventType;
  /** Unique per push; also the znode name prefix, to find an event after a lost connection. */
  id: string;
  /** Sender (or subject for join/leave/update) and its incarnation. */
  node: Buffer;
  nonce: string;
  /** join/accept/reject: the opaque join message. notify/unblock: the message. */
  msg?: Buffer;
  /** accept: the member list after the join, in join order. */
  members?: WireMember[];
  /** accept: pending block requests (member keys) at that point. */
  blocks?: string[];
  time: number;
}

export type Step = "next" | "again" | "wait";

export const EMPTY = Buffer.alloc(0);
export const CONNECT_TIMEOUT_MS = 10_000;
export const TICK_MS = 1000;
export const PURGE_EVERY_TICKS = 5;
/** The newest processed queue znodes are kept anyway (a little history for debugging). */
export const PURGE_KEEP = 16;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function asBuf(x: unknown): Buffer {
  if (Buffer.isBuffer(x)) return x;
  if (x instanceof Uint8Array) return Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  return EMPTY;
}

/** Sequence number of a sequential znode name ("<prefix>-%010d"). */
export function seqOf(name: string): number {
  return Number(name.slice(-10));
}

export function keyOf(m: { ns: string; nonce: string }): string {
  return `${m.ns}#${m.nonce}`;
}

/** The incarnation nonce of a member key. */
export function nonceOf(key: string): string {
  return key.slice(key.lastIndexOf("#") + 1);
}

export function log(msg: string): void {
  try {
    process.stderr.write(`zookeeper: ${msg}\n`);
  } catch { /* stderr gone */ }
}

/** The members an ACCEPT lists, in join order. */
export function membersOf(ev: ZkEvent): Member[] {
  return (ev.members ?? []).map((w) => {
    const node = decodeNode(asBuf(w.node));
    return { key: keyOf({ ns: nodeString(node), nonce: w.nonce }), node };
  });
}

/** A queue_pos or member znode's record; null when it is not one. */
export function decodeMeta(b: Buffer): { node?: string; nonce?: string; pos?: number } | null {
  try {
    const v = cbor.decode(b);
    return v && typeof v === "object" ? v : null;
  } catch {
    return null;
  }
}

export function makeEvent(t: EventType, node: Buffer, nonce: string, msg?: Buffer): ZkEvent {
  const ev: ZkEvent = { t, id: "", node, nonce, time: Date.now() };
  if (msg) ev.msg = msg;
  return ev;
}

/** The master: the member with the lowest live token (its key, or "" when none is live). */
export function masterKey(toks: string[], members: readonly Member[]): string {
  let best = Infinity;
  let who = "";
  for (const m of members) {
    const t = toks.find((x) => x.startsWith(`${nonceOf(m.key)}-`));
    if (t && seqOf(t) < best) {
      best = seqOf(t);
      who = m.key;
    }
  }
  return who;
}

/**
 * Master only: deletes the queue znodes every member has processed (minus the newest
 * PURGE_KEEP). `pos` is how far this sheep has processed; the others' come from queue_pos.
 */
export async function purgeProcessed(
  s: Session,
  dir: (sub: string) => string,
  toks: string[],
  members: readonly Member[],
  myKey: string,
  pos: number,
): Promise<void> {
  // A live token of a non-member is a joiner that may not have read its ACCEPT/REJECT yet.
  if (!toks.every((t) => members.some((m) => t.startsWith(`${nonceOf(m.key)}-`)))) return;
  let min = pos;
  for (const m of [...members]) {
    if (m.key === myKey) continue;
    const r = await s.getData(`${dir("queue_pos")}/${nodeString(m.node)}`);
    const meta = r && decodeMeta(r.data);
    if (!meta || meta.nonce !== nonceOf(m.key) || typeof meta.pos !== "number") return;
    min = Math.min(min, meta.pos);
  }
  const kids = (await s.getChildren(dir("queue"))).map((name) => ({ name, seq: seqOf(name) }))
    .filter((k) => Number.isFinite(k.seq)).sort((a, b) => a.seq - b.seq);
  const victims = kids.slice(0, Math.max(0, kids.length - PURGE_KEEP)).filter((k) => k.seq <= min);
  await Promise.all(victims.map((k) => s.remove(`${dir("queue")}/${k.name}`)));
}

/** What the appender needs of the driver. */
export interface AppendContext {
  /** Closed or failed: give up. */
  stopped(): boolean;
  /** Resolves when the driver has a session it may write with (after a rejoin). */
  ready(): Promise<void>;
  session(): Session | null;
  queueDir(): string;
  /** An event was appended: process the queue. */
  appended(): void;
  fail(reason: string): void;
}

/**
 * Appends events to the queue exactly once even across lost connections: the id in the znode name
 * tells whether a create whose reply was lost happened, and so does seeing it while processing.
 */
export class EventAppender {
  private readonly inFlight = new Map<string, boolean>();
  constructor(private readonly ctx: AppendContext) {}

  /** The queue processor met the event with this id. */
  seen(id: string): void {
    if (this.inFlight.has(id)) this.inFlight.set(id, true);
  }

  /** make() runs per attempt and may return null to drop the event (its incarnation is gone). */
  async append(make: () => ZkEvent | null): Promise<void> {
    const id = randomBytes(6).toString("hex");
    this.inFlight.set(id, false);
    try {
      let maybeCreated = false;
      for (;;) {
        if (this.ctx.stopped()) return;
        await this.ctx.ready();
        const s = this.ctx.session();
        if (this.ctx.stopped()) return;
        if (!s || s.dead) {
          await sleep(100);
          continue;
        }
        try {
          if (maybeCreated) {
            await s.waitConnected();
            if (
              this.inFlight.get(id) ||
              (await s.getChildren(this.ctx.queueDir())).some((n) => n.startsWith(`${id}-`))
            ) return;
          }
          const ev = make();
          if (!ev) return;
          ev.id = id;
          maybeCreated = true;
          await s.create(
            `${this.ctx.queueDir()}/${id}-`,
            Buffer.from(cbor.encode(ev)),
            zk.CreateMode.PERSISTENT_SEQUENTIAL,
          );
          this.ctx.appended();
          return;
        } catch (e) {
          if (this.ctx.stopped()) return;
          if (e instanceof SessionLost || errCode(e) === zk.Exception.CONNECTION_LOSS) {
            await sleep(50);
            continue;
          }
          throw e;
        }
      }
    } catch (e) {
      this.ctx.fail(`zookeeper driver: cannot queue an event: ${(e as Error).message}`);
    } finally {
      this.inFlight.delete(id);
    }
  }
}
