// The membership bookkeeping every driver shares: who the members are (in join order), the queue
// of cluster-operation blocks, and what the daemon is told when a totally ordered event arrives.
// A pure state machine (`step(event) -> effects`): the drivers keep only their transport, their
// liveness detection, their master primitive and the way they write a join decision back, and
// feed the events they deliver in order through one engine, so the three cannot drift apart.
import type { Buffer } from "node:buffer";
import type { SdNode } from "./node.ts";
import { nodeHostPort } from "./node.ts";
import { assert } from "./assert.ts";

/** A member incarnation: `key` tells two runs of a sheep on the same address apart. */
export interface Member {
  key: string;
  node: SdNode;
}

export type MembershipEvent =
  /** A join was accepted. `members` is the list after it when the decision carries it. */
  | {
    t: "accept";
    key: string;
    node: SdNode;
    msg: Buffer;
    members?: Member[];
    blocks?: string[];
  }
  | { t: "leave"; key: string }
  | { t: "notify"; node: SdNode; msg: Buffer }
  | { t: "block"; key: string; node: SdNode }
  | { t: "unblock"; key: string; node: SdNode; msg: Buffer }
  | { t: "update"; key: string; node: SdNode };

export type MembershipEffect =
  | { t: "accept"; node: SdNode; members: SdNode[]; msg: Buffer; key: string; self: boolean }
  | { t: "leave"; node: SdNode; members: SdNode[]; key: string }
  | { t: "notify"; node: SdNode; msg: Buffer }
  /** The head of the block queue changed: offer it (the daemon runs the work phase there). */
  | { t: "offerBlock"; node: SdNode; key: string }
  | { t: "updateNode"; node: SdNode; members: SdNode[] };

/** What the master writes back for a JOIN it accepts. */
export interface JoinProposal {
  /** Members the join decision is judged against (an older incarnation of the joiner excluded). */
  others: Member[];
  /** The member list after the join, in join order. */
  members: Member[];
  /** Pending blocks the joiner must track (an older incarnation's are void). */
  blocks: string[];
}

export class MembershipEngine {
  private list: Member[] = [];
  private blockQueue: Member[] = [];
  private isAccepted = false;

  constructor(readonly myKey: string) {}

  get accepted(): boolean {
    return this.isAccepted;
  }

  get members(): readonly Member[] {
    return this.list;
  }

  get nodes(): SdNode[] {
    return this.list.map((m) => m.node);
  }

  /** Keys of the pending blocks, head first. */
  get blocks(): string[] {
    return this.blockQueue.map((b) => b.key);
  }

  isMember(key: string): boolean {
    return this.list.some((m) => m.key === key);
  }

  member(key: string): Member | undefined {
    return this.list.find((m) => m.key === key);
  }

  /** The accept the master writes for `node` joining with `key`. */
  proposeJoin(key: string, node: SdNode): JoinProposal {
    const hp = nodeHostPort(node);
    const others = this.list.filter((m) => nodeHostPort(m.node) !== hp);
    const old = new Set(this.list.filter((m) => nodeHostPort(m.node) === hp).map((m) => m.key));
    return {
      others,
      members: [...others, { key, node }],
      blocks: this.blocks.filter((k) => !old.has(k)),
    };
  }

  /** The founding member accepts itself. */
  proposeFounding(node: SdNode): JoinProposal {
    return { others: [], members: [{ key: this.myKey, node }], blocks: [] };
  }

  step(ev: MembershipEvent): MembershipEffect[] {
    switch (ev.t) {
      case "accept":
        return ev.key === this.myKey && !this.isAccepted ? this.selfAccepted(ev) : this.joined(ev);
      case "leave": {
        const m = this.member(ev.key);
        return m ? this.remove(m) : [];
      }
      case "notify":
        return this.isAccepted ? [{ t: "notify", node: ev.node, msg: ev.msg }] : [];
      case "block":
        // A block from a node that is not (or no longer) a member is void: nobody would release it.
        if (!this.isAccepted || !this.isMember(ev.key)) return [];
        this.blockQueue.push({ key: ev.key, node: ev.node });
        return this.blockQueue.length === 1 ? this.offerHead() : [];
      case "unblock": {
        if (!this.isAccepted) return [];
        const released = this.blockQueue[0]?.key === ev.key;
        if (released) this.blockQueue.shift();
        const out: MembershipEffect[] = [{ t: "notify", node: ev.node, msg: ev.msg }];
        // Offered again only when the head changed: offering the same head twice would run its
        // work phase twice.
        if (released) out.push(...this.offerHead());
        return out;
      }
      case "update": {
        const m = this.member(ev.key);
        if (!this.isAccepted || !m) return [];
        m.node = ev.node;
        return [{ t: "updateNode", node: ev.node, members: this.nodes }];
      }
    }
  }

  /** Members the transport saw go (a configuration change): as many leaves, in member order. */
  removeAll(keys: Iterable<string>): MembershipEffect[] {
    const gone = new Set(keys);
    const out: MembershipEffect[] = [];
    for (const m of this.list.filter((x) => gone.has(x.key))) out.push(...this.remove(m));
    return out;
  }

  private selfAccepted(ev: Extract<MembershipEvent, { t: "accept" }>): MembershipEffect[] {
    this.list = (ev.members ?? [{ key: ev.key, node: ev.node }]).map((m) => ({ ...m }));
    assert(this.isMember(this.myKey), "our own accept lists us as a member");
    // Blocks of nodes that are not members died with them.
    this.blockQueue = (ev.blocks ?? []).flatMap((k) => {
      const m = this.member(k);
      return m ? [{ key: k, node: m.node }] : [];
    });
    this.isAccepted = true;
    return [{
      t: "accept",
      node: ev.node,
      members: this.nodes,
      msg: ev.msg,
      key: ev.key,
      self: true,
    }];
  }

  private joined(ev: Extract<MembershipEvent, { t: "accept" }>): MembershipEffect[] {
    if (!this.isAccepted || this.isMember(ev.key)) return [];
    const out: MembershipEffect[] = [];
    // A restarted sheep may join before the leave of its previous incarnation is processed.
    const hp = nodeHostPort(ev.node);
    for (const old of this.list.filter((m) => nodeHostPort(m.node) === hp)) {
      out.push(...this.remove(old));
    }
    if (ev.members) this.list = ev.members.map((m) => ({ ...m }));
    else this.list.push({ key: ev.key, node: ev.node });
    assert(this.isMember(ev.key), "an accepted joiner is a member");
    out.push({
      t: "accept",
      node: ev.node,
      members: this.nodes,
      msg: ev.msg,
      key: ev.key,
      self: false,
    });
    return out;
  }

  private remove(m: Member): MembershipEffect[] {
    this.list = this.list.filter((x) => x.key !== m.key);
    const wasHead = this.blockQueue[0]?.key === m.key;
    this.blockQueue = this.blockQueue.filter((b) => b.key !== m.key);
    const out: MembershipEffect[] = [{ t: "leave", node: m.node, members: this.nodes, key: m.key }];
    if (wasHead) out.push(...this.offerHead());
    return out;
  }

  private offerHead(): MembershipEffect[] {
    const head = this.blockQueue[0];
    return head ? [{ t: "offerBlock", node: head.node, key: head.key }] : [];
  }
}

/** The handler calls an effect stands for; awaited in order, as the events were delivered. */
export interface MembershipHandlers {
  accept(joined: SdNode, members: SdNode[], opaque: Buffer): void | Promise<void>;
  leave(left: SdNode, members: SdNode[]): void | Promise<void>;
  notify(sender: SdNode, msg: Buffer): void | Promise<void>;
  block(sender: SdNode): boolean;
  updateNode(node: SdNode, members: SdNode[]): void | Promise<void>;
}

export async function applyEffect(h: MembershipHandlers, e: MembershipEffect): Promise<void> {
  switch (e.t) {
    case "accept":
      return await h.accept(e.node, e.members, e.msg);
    case "leave":
      return await h.leave(e.node, e.members);
    case "notify":
      return await h.notify(e.node, e.msg);
    case "offerBlock":
      h.block(e.node);
      return;
    case "updateNode":
      return await h.updateNode(e.node, e.members);
  }
}
