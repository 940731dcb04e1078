// `dog ... --json` (-j): machine-readable output of the list and info commands beside upstream's
// `-r`. Field names are part of the interface (README "Machine-readable output"): add fields,
// never rename or retype one. Sizes and counts are JSON numbers in bytes, written exactly even
// above 2^53 (64-bit values are printed from their bigint); times are Unix seconds.
import type { InodeHeader } from "../core/inode.ts";
import { nodeHostPort, nodeIp, type SdNode } from "../core/node.ts";
import type { EpochLog, MdDisk } from "../core/payloads.ts";
import { ClusterFlag, Res, strerror } from "../core/proto.ts";
import { ctimeSeconds, redundancyScheme } from "./format.ts";

/** JSON.stringify that prints bigints as exact numbers. */
export function toJson(v: unknown): string {
  // Bigints become quoted markers with a per-call random tag (no VDI name can carry it), which
  // are then unquoted into exact digits.
  const tag = Math.random().toString(36).slice(2, 10);
  const s = JSON.stringify(v, (_k, x) => typeof x === "bigint" ? `@@${tag}:${x}@@` : x, 2);
  return s.replace(new RegExp(`"@@${tag}:(-?\\d+)@@"`, "g"), "$1") + "\n";
}

export function nodeJson(id: number, n: SdNode) {
  return {
    id,
    host: nodeIp(n),
    port: n.port,
    address: nodeHostPort(n),
    vnodes: n.nrVnodes,
    zone: n.zone >>> 0,
  };
}

export function vdiJson(h: InodeHeader, myObjs: number, cowObjs: number) {
  const objSize = 2n ** BigInt(h.blockSizeShift);
  const snapshot = h.snapCtime !== 0n;
  return {
    name: h.name,
    vdiId: h.vdiId >>> 0,
    vdiIdHex: (h.vdiId >>> 0).toString(16),
    snapshotId: snapshot ? h.snapId : 0,
    tag: h.tag,
    snapshot,
    clone: !snapshot && h.snapId === 1 && h.parentVdiId !== 0,
    parentVdiId: h.parentVdiId >>> 0,
    size: h.vdiSize,
    used: BigInt(myObjs) * objSize,
    shared: BigInt(cowObjs) * objSize,
    createTime: ctimeSeconds(h.createTime),
    copies: h.nrCopies,
    redundancy: redundancyScheme(h.nrCopies, h.copyPolicy),
    erasureCoded: h.copyPolicy !== 0,
    blockSizeShift: h.blockSizeShift,
    hyperVolume: h.storePolicy === 1,
  };
}

export interface VdiTreeJson {
  name: string;
  vdiId: number;
  snapshotId: number;
  tag: string;
  snapshot: boolean;
  createTime: number;
  children: VdiTreeJson[];
}

/** The snapshot/clone forest: a VDI hangs under its parent VDI (clones included). */
export function vdiTreeJson(hs: InodeHeader[]): VdiTreeJson[] {
  const nodes = new Map<number, VdiTreeJson & { parent: number }>();
  for (const h of hs) {
    const snapshot = h.snapCtime !== 0n;
    nodes.set(h.vdiId >>> 0, {
      name: h.name,
      vdiId: h.vdiId >>> 0,
      snapshotId: snapshot ? h.snapId : 0,
      tag: h.tag,
      snapshot,
      createTime: ctimeSeconds(h.createTime),
      children: [],
      parent: h.parentVdiId >>> 0,
    });
  }
  const roots: VdiTreeJson[] = [];
  for (const n of nodes.values()) {
    const p = nodes.get(n.parent);
    (p ? p.children : roots).push(n);
  }
  const strip = (n: VdiTreeJson & { parent?: number }): VdiTreeJson => {
    const { parent: _p, ...rest } = n;
    return { ...rest, children: n.children.map(strip) };
  };
  return roots.map(strip);
}

export function nodeInfoJson(
  rows: { id: number; node: SdNode; size: bigint; free: bigint }[],
  vdiTotal: bigint,
) {
  const size = rows.reduce((a, r) => a + r.size, 0n);
  const free = rows.reduce((a, r) => a + r.free, 0n);
  return {
    nodes: rows.map((r) => ({
      ...nodeJson(r.id, r.node),
      size: r.size,
      used: r.size - r.free,
      avail: r.free,
    })),
    total: { size, used: size - free, avail: free, virtualImageSize: vdiTotal },
  };
}

export function mdInfoJson(address: string, disks: MdDisk[]) {
  return {
    address,
    disks: disks.map((d) => ({
      id: d.idx,
      path: d.path,
      size: d.free + d.used,
      used: d.used,
      avail: d.free,
    })),
  };
}

export function clusterInfoJson(result: number, logs: EpochLog[]) {
  const first = logs[0];
  const flags = first?.flags ?? 0;
  return {
    status: result === Res.SUCCESS ? "running" : strerror(result),
    autoRecovery: first ? !first.disableRecovery : null,
    created: first ? ctimeSeconds(first.ctime) : null,
    store: first?.drvName ?? null,
    redundancy: first ? redundancyScheme(first.nrCopies, first.copyPolicy) : null,
    copies: first?.nrCopies ?? null,
    vnodesStrategy: flags & ClusterFlag.AUTO_VNODES ? "auto" : "fixed",
    epochs: logs.map((l) => ({
      epoch: l.epoch,
      time: Number(BigInt.asIntN(64, l.time)),
      nodes: l.nodes.map((n) => ({
        address: nodeHostPort(n),
        vnodes: n.nrVnodes,
        zone: n.zone >>> 0,
      })),
    })),
  };
}
