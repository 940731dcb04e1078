// Recovery planning (sheep-daemon.md §6), as pure functions of rings and object lists so that a
// seeded simulation can drive them through thousands of membership changes.
import type { SdNode } from "./node.ts";
import { nodeEqual } from "./node.ts";
import type { Ring } from "./ring.ts";

/** One epoch's ring, for looking up who held an object then. */
export interface EpochRing {
  epoch: number;
  ring: Ring;
}

export function isOwner(ring: Ring, me: SdNode, oid: bigint, copies: number): boolean {
  return ring.placeObject(oid, copies).some((n) => nodeEqual(n, me));
}

/**
 * Objects this node must fetch in the new epoch: every object known anywhere in the cluster that
 * the new ring places on this node and that is not present locally. Sorted, so every node works
 * through the object space in the same order.
 */
export function objectsToRecover(args: {
  me: SdNode;
  ring: Ring;
  copiesOf: (oid: bigint) => number;
  known: Iterable<bigint>;
  present: (oid: bigint) => boolean;
}): bigint[] {
  const out: bigint[] = [];
  const seen = new Set<bigint>();
  for (const oid of args.known) {
    if (seen.has(oid)) continue;
    seen.add(oid);
    if (args.present(oid)) continue;
    if (isOwner(args.ring, args.me, oid, args.copiesOf(oid))) out.push(oid);
  }
  return out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * Where to look for an object: the holders of each earlier epoch, newest first, that are alive
 * now (a holder answers from its current copy or from its stale copy of that epoch). Copies of
 * the newest epoch saw every acknowledged write of that epoch, which is why order matters.
 */
export function recoverySources(args: {
  oid: bigint;
  copies: number;
  me: SdNode;
  history: EpochRing[];
  alive: (n: SdNode) => boolean;
}): Array<{ node: SdNode; epoch: number }> {
  const out: Array<{ node: SdNode; epoch: number }> = [];
  for (const { epoch, ring } of args.history) {
    for (const n of ring.placeObject(args.oid, args.copies)) {
      if (!args.alive(n)) continue;
      out.push({ node: n, epoch });
    }
  }
  return out;
}

/** Local objects the new ring no longer places here: they become stale copies. */
export function objectsNoLongerOwned(args: {
  me: SdNode;
  ring: Ring;
  copiesOf: (oid: bigint) => number;
  local: Iterable<bigint>;
}): bigint[] {
  const out: bigint[] = [];
  for (const oid of args.local) {
    if (!isOwner(args.ring, args.me, oid, args.copiesOf(oid))) out.push(oid);
  }
  return out;
}
