// Cluster state machine (sheep-daemon.md §4): what a join, an accept, a leave and a format do to
// the cluster state. Pure functions of their inputs, so every member computes the same epochs.
import { cbor } from "./cbor.ts";
import { Buffer } from "node:buffer";
import type { SdNode } from "./node.ts";
import { decodeNodes, encodeNodes, nodeEqual, sortNodes } from "./node.ts";
import { ClusterFlag, Res, Status } from "./proto.ts";

export interface ClusterState {
  status: number; // Status.*
  epoch: number;
  ctime: bigint;
  flags: number;
  copies: number;
  copyPolicy: number;
  blockSizeShift: number;
  store: string;
  /** Membership of `epoch` (sorted by node order). */
  nodes: SdNode[];
  disableRecovery: boolean;
}

export function initialState(): ClusterState {
  return {
    status: Status.WAIT,
    epoch: 0,
    ctime: 0n,
    flags: 0,
    copies: 3,
    copyPolicy: 0,
    blockSizeShift: 22,
    store: "plain",
    nodes: [],
    disableRecovery: false,
  };
}

export function encodeState(s: ClusterState): Buffer {
  return Buffer.from(cbor.encode({ ...s, ctime: s.ctime.toString(), nodes: encodeNodes(s.nodes) }));
}

export function decodeState(b: Buffer): ClusterState {
  const o = cbor.decode(b);
  return { ...o, ctime: BigInt(o.ctime), nodes: decodeNodes(Buffer.from(o.nodes)) };
}

export function sameNodeSet(a: readonly SdNode[], b: readonly SdNode[]): boolean {
  if (a.length !== b.length) return false;
  return a.every((x) => b.some((y) => nodeEqual(x, y)));
}

/** A formatted cluster serves once every node of its last epoch is present again. */
function statusWith(s: ClusterState, present: readonly SdNode[]): number {
  return s.nodes.every((n) => present.some((m) => nodeEqual(m, n))) ? Status.OK : Status.WAIT;
}

export type JoinResult = { accept: true; state: ClusterState } | {
  accept: false;
  code: number;
  reason: string;
};

/**
 * Runs on the master. `members` excludes the joiner. The founding node (no members) decides with
 * its own on-disk state.
 */
export function decideJoin(
  master: ClusterState,
  members: readonly SdNode[],
  joining: SdNode,
  joiner: ClusterState,
): JoinResult {
  const all = [...members, joining];
  if (members.length === 0) {
    const s = { ...joiner };
    if (s.ctime === 0n) s.status = Status.WAIT;
    else s.status = statusWith(s, all);
    return { accept: true, state: s };
  }
  // A storage sheep whose vnode strategy (-V or not) is not the formatted cluster's: upstream
  // admits it for an epoch and then it exits; refused here before any epoch changes.
  if (
    master.ctime !== 0n && joining.nrVnodes > 0 &&
    ((master.flags ^ joiner.flags) & ClusterFlag.AUTO_VNODES) !== 0
  ) {
    const strategy = (f: number) => (f & ClusterFlag.AUTO_VNODES ? "auto" : "fixed");
    return {
      accept: false,
      code: Res.INVALID_VNODES_STRATEGY,
      reason: `vnodes strategy unmatch. cluster:${strategy(master.flags)}, joined:${
        strategy(joiner.flags)
      }`,
    };
  }
  // Upstream compares creation times only when both sides have an epoch (cluster_ctime_check).
  const foreign = joiner.epoch > 0 && master.epoch > 0 && joiner.ctime !== master.ctime;
  if (master.status === Status.WAIT) {
    // Upstream's waiting master panics on such a joiner; refusing it keeps the cluster waiting.
    if (foreign) {
      return { accept: false, code: Res.INVALID_CTIME, reason: "Creation times differ" };
    }
    // The larger epoch's view wins (restart in any order, an unformatted master included).
    const s = joiner.epoch > master.epoch ? { ...joiner } : { ...master };
    s.status = s.epoch > 0 && s.ctime !== 0n ? statusWith(s, all) : Status.WAIT;
    return { accept: true, state: s };
  }
  if (foreign) {
    // Upstream lets it in for one epoch and then the joiner exits; refusing it is the same end
    // without the two epochs and recoveries.
    return { accept: false, code: Res.INVALID_CTIME, reason: "Creation times differ" };
  }
  if (master.status === Status.OK) return { accept: true, state: { ...master } };
  return { accept: false, code: Res.SHUTDOWN, reason: "cluster is shutting down" };
}

/**
 * Applies an accepted join on every member. Returns the new state and whether a new epoch begins
 * (the caller writes the epoch log and starts recovery).
 */
export function applyAccept(
  decided: ClusterState,
  members: readonly SdNode[],
): { state: ClusterState; newEpoch: boolean } {
  const s = { ...decided, nodes: [...decided.nodes] };
  if (s.status !== Status.OK || s.ctime === 0n) return { state: s, newEpoch: false };
  if (sameNodeSet(s.nodes, members)) return { state: s, newEpoch: false };
  s.epoch += 1;
  s.nodes = sortNodes(members);
  return { state: s, newEpoch: true };
}

export function applyLeave(
  cur: ClusterState,
  members: readonly SdNode[],
): { state: ClusterState; newEpoch: boolean } {
  const s = { ...cur };
  if (s.status !== Status.OK || s.ctime === 0n || sameNodeSet(s.nodes, members)) {
    return { state: s, newEpoch: false };
  }
  s.epoch += 1;
  s.nodes = sortNodes(members);
  return { state: s, newEpoch: true };
}

export function applyFormat(
  cur: ClusterState,
  members: readonly SdNode[],
  f: {
    ctime: bigint;
    copies: number;
    copyPolicy: number;
    flags: number;
    blockSizeShift: number;
    store: string;
  },
): ClusterState {
  return {
    ...cur,
    status: Status.OK,
    epoch: 1,
    ctime: f.ctime,
    flags: f.flags,
    copies: f.copies || 3,
    copyPolicy: f.copyPolicy,
    blockSizeShift: f.blockSizeShift || 22,
    store: f.store,
    nodes: sortNodes(members),
    disableRecovery: false,
  };
}

/** A member's info changed (capacity after reweight, vnodes): a new epoch with the new info. */
export function applyUpdateNode(
  cur: ClusterState,
  node: SdNode,
): { state: ClusterState; newEpoch: boolean } {
  const idx = cur.nodes.findIndex((n) => nodeEqual(n, node));
  if (idx < 0) return { state: cur, newEpoch: false };
  const nodes = [...cur.nodes];
  nodes[idx] = node;
  if (cur.status !== Status.OK || cur.ctime === 0n) {
    return { state: { ...cur, nodes }, newEpoch: false };
  }
  return { state: { ...cur, nodes, epoch: cur.epoch + 1 }, newEpoch: true };
}

/**
 * `dog cluster recover force` (upstream cluster_force_recover): a cluster waiting for members
 * that will not come back serves with those present, in a new epoch; null when not waiting.
 */
export function applyForceRecover(
  cur: ClusterState,
  members: readonly SdNode[],
): ClusterState | null {
  if (cur.status !== Status.WAIT || cur.ctime === 0n || cur.epoch === 0) return null;
  return { ...cur, status: Status.OK, epoch: cur.epoch + 1, nodes: sortNodes(members) };
}
