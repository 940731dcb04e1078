// Request counters of one sheep (upstream's `struct sd_stat`, the SD_OP_STAT payload): what
// `dog node stat` prints and the metrics endpoint exports. One codec for sheep and dog; the
// counting rule (which opcode is a gateway or a peer request, and of which kind) lives here too.
import { Buffer } from "node:buffer";
import { Op } from "./proto.ts";

export const NODE_STAT_SIZE = 120;

/** Field order is the wire order (15 little-endian u64). */
export interface NodeStats {
  gwActive: bigint;
  peerActive: bigint;
  gwTotal: bigint;
  peerTotal: bigint;
  gwRx: bigint;
  gwTx: bigint;
  peerRx: bigint;
  peerTx: bigint;
  gwRemove: bigint;
  gwRead: bigint;
  gwWrite: bigint;
  gwFlush: bigint;
  peerRemove: bigint;
  peerRead: bigint;
  peerWrite: bigint;
}

const FIELDS: (keyof NodeStats)[] = [
  "gwActive",
  "peerActive",
  "gwTotal",
  "peerTotal",
  "gwRx",
  "gwTx",
  "peerRx",
  "peerTx",
  "gwRemove",
  "gwRead",
  "gwWrite",
  "gwFlush",
  "peerRemove",
  "peerRead",
  "peerWrite",
];

export function emptyNodeStats(): NodeStats {
  const s = {} as NodeStats;
  for (const f of FIELDS) s[f] = 0n;
  return s;
}

export function encodeNodeStats(s: NodeStats): Buffer {
  const b = Buffer.alloc(NODE_STAT_SIZE);
  FIELDS.forEach((f, i) => b.writeBigUInt64LE(BigInt.asUintN(64, s[f]), i * 8));
  return b;
}

/** A short payload (an older sheep) reads as zeros for the missing fields. */
export function decodeNodeStats(data: Buffer): NodeStats {
  const b = Buffer.alloc(NODE_STAT_SIZE);
  data.copy(b, 0, 0, Math.min(NODE_STAT_SIZE, data.length));
  const s = emptyNodeStats();
  FIELDS.forEach((f, i) => s[f] = b.readBigUInt64LE(i * 8));
  return s;
}

export type RequestKind = "read" | "write" | "remove" | "flush";

/** Which counters an opcode moves: gateway (client-facing) or peer (replica) requests. */
export function classifyRequest(opcode: number): { peer: boolean; kind: RequestKind } | null {
  switch (opcode) {
    case Op.READ_OBJ:
      return { peer: false, kind: "read" };
    case Op.WRITE_OBJ:
    case Op.CREATE_AND_WRITE_OBJ:
      return { peer: false, kind: "write" };
    case Op.REMOVE_OBJ:
    case Op.DISCARD_OBJ:
      return { peer: false, kind: "remove" };
    case Op.FLUSH_VDI:
      return { peer: false, kind: "flush" };
    case Op.READ_PEER:
      return { peer: true, kind: "read" };
    case Op.WRITE_PEER:
    case Op.WRITE_RUNS_PEER:
    case Op.CREATE_AND_WRITE_PEER:
      return { peer: true, kind: "write" };
    case Op.REMOVE_PEER:
    case Op.DECREF_PEER:
      return { peer: true, kind: "remove" };
    default:
      return null;
  }
}

/** Counts a request as it starts; returns what `requestDone` needs. */
export function requestStarted(
  s: NodeStats,
  opcode: number,
  rxBytes: number,
): { peer: boolean } | null {
  const c = classifyRequest(opcode);
  if (!c) return null;
  const rx = BigInt(rxBytes);
  if (c.peer) {
    s.peerActive++;
    s.peerTotal++;
    s.peerRx += rx;
    if (c.kind === "read") s.peerRead++;
    else if (c.kind === "write") s.peerWrite++;
    else s.peerRemove++;
  } else {
    s.gwActive++;
    s.gwTotal++;
    s.gwRx += rx;
    if (c.kind === "read") s.gwRead++;
    else if (c.kind === "write") s.gwWrite++;
    else if (c.kind === "remove") s.gwRemove++;
    else s.gwFlush++;
  }
  return { peer: c.peer };
}

export function requestDone(s: NodeStats, started: { peer: boolean }, txBytes: number): void {
  const tx = BigInt(txBytes);
  if (started.peer) {
    s.peerActive--;
    s.peerTx += tx;
  } else {
    s.gwActive--;
    s.gwTx += tx;
  }
}
