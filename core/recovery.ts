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

/**
 * What a source said when asked for an object, short of sending it: "absent" is a definitive "no
 * such object" (SD_RES_NO_OBJ); "failed" is anything else (unreachable, timed out, shutting down,
 * I/O error), after which the source may still hold the newest copy.
 */
export type SourceAnswer = "absent" | "failed";

/**
 * The next source of `sources` (recoverySources' walk) to ask, given the answers so far (index
 * aligned; undefined: not asked yet). A source that failed blocks every later source of an older
 * epoch: it may hold writes the older copy lacks, and installing that copy would lose them. Sources
 * of the same or a newer epoch stay usable. "absent" when every source said it has no copy;
 * "retry" when the rest sit behind a failure, so the object must be fetched again later.
 */
export function nextRecoverySource(
  sources: ReadonlyArray<{ epoch: number }>,
  answers: ReadonlyArray<SourceAnswer | undefined>,
): number | "absent" | "retry" {
  let blockedBelow = -Infinity;
  let failed = false;
  for (let i = 0; i < sources.length; i++) {
    const a = answers[i];
    if (a === "failed") {
      failed = true;
      blockedBelow = Math.max(blockedBelow, sources[i].epoch);
    } else if (a === undefined && sources[i].epoch >= blockedBelow) return i;
  }
  return failed ? "retry" : "absent";
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
