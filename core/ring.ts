// Consistent hashing ring, upstream "node mode" (protocol.md §12.3/§12.4), and the per-node
// multi-disk ring (sheep-daemon.md §9).
import { Buffer } from "node:buffer";
import { sdHashNextParts, sdHashOidParts, sdHashParts } from "./hash.ts";
import { type SdNode, sortNodes } from "./node.ts";
import { SD_DEFAULT_VNODES, SD_MAX_COPIES } from "./oid.ts";

/** Vnode keys as parallel hi/lo uint32 arrays sorted by unsigned 64-bit key. */
interface KeyTable {
  hi: Uint32Array;
  lo: Uint32Array;
  owner: Uint32Array;
}

function buildTable(raw: { hi: number[]; lo: number[]; owner: number[] }, what: string): KeyTable {
  const n = raw.hi.length;
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  const rh = raw.hi, rl = raw.lo;
  order.sort((a, b) => (rh[a] - rh[b]) || (rl[a] - rl[b]));
  const t: KeyTable = { hi: new Uint32Array(n), lo: new Uint32Array(n), owner: new Uint32Array(n) };
  for (let i = 0; i < n; i++) {
    const j = order[i];
    t.hi[i] = rh[j];
    t.lo[i] = rl[j];
    t.owner[i] = raw.owner[j];
    // upstream panics on a duplicate key in the rb-tree
    if (i > 0 && t.hi[i] === t.hi[i - 1] && t.lo[i] === t.lo[i - 1]) {
      throw new Error(`${what} hash collision`);
    }
  }
  return t;
}

/** Index of the first key >= (kh:kl), wrapping to 0 (upstream rb_nsearch). Table must be non-empty. */
function lowerBound(t: KeyTable, kh: number, kl: number): number {
  let lo = 0, hi = t.hi.length;
  const H = t.hi, L = t.lo;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const h = H[mid];
    if (h < kh || (h === kh && L[mid] < kl)) lo = mid + 1;
    else hi = mid;
  }
  return lo === H.length ? 0 : lo;
}

const scratch = new Uint32Array(2);

export class Ring {
  /** All members sorted by (addr, port), gateways included; placement returns indexes into this. */
  readonly nodes: SdNode[];
  /** Distinct zones among nodes with vnodes, capped at SD_MAX_COPIES. */
  readonly nrZones: number;
  private readonly table: KeyTable;
  private readonly zoneOf: Uint32Array;

  constructor(nodes: readonly SdNode[]) {
    this.nodes = sortNodes(nodes);
    const raw = { hi: [] as number[], lo: [] as number[], owner: [] as number[] };
    const zones = new Set<number>();
    const h = new Uint32Array(2);
    this.zoneOf = new Uint32Array(this.nodes.length);
    for (let i = 0; i < this.nodes.length; i++) {
      const n = this.nodes[i];
      this.zoneOf[i] = n.zone >>> 0;
      if (n.nrVnodes <= 0) continue;
      if (zones.size < SD_MAX_COPIES) zones.add(n.zone >>> 0);
      // seed = sd_hash(addr[16] || port LE), the first 18 bytes of node_id
      const id = Buffer.alloc(18);
      n.addr.copy(id, 0, 0, 16);
      id.writeUInt16LE(n.port & 0xffff, 16);
      sdHashParts(id, h);
      for (let k = 0; k < n.nrVnodes; k++) {
        sdHashNextParts(h[0], h[1], h);
        raw.hi.push(h[0]);
        raw.lo.push(h[1]);
        raw.owner.push(i);
      }
    }
    this.nrZones = zones.size;
    this.table = buildTable(raw, "vnode");
  }

  get nrVnodes(): number {
    return this.table.hi.length;
  }

  /** Indexes into this.nodes of the min(copies, nrZones) nodes holding oid, copy 0 first. */
  placeObjectIdx(oid: bigint, copies: number): number[] {
    const t = this.table;
    const nv = t.hi.length;
    const n = Math.min(copies, this.nrZones);
    if (n <= 0 || nv === 0) return [];
    sdHashOidParts(oid, scratch);
    let p = lowerBound(t, scratch[0], scratch[1]);
    const first = t.owner[p];
    const out = [first];
    if (n === 1) return out;
    const chosenZones = [this.zoneOf[first]];
    while (out.length < n) {
      p = p + 1 === nv ? 0 : p + 1;
      const o = t.owner[p];
      const z = this.zoneOf[o];
      if (chosenZones.includes(z)) continue;
      chosenZones.push(z);
      out.push(o);
    }
    return out;
  }

  placeObject(oid: bigint, copies: number): SdNode[] {
    return this.placeObjectIdx(oid, copies).map((i) => this.nodes[i]);
  }
}

/**
 * Auto vnodes (upstream recalculate_vnodes): avg = integer mean of non-zero space,
 * nr_vnodes = rintf(128 * ((float)space / (float)avg)) in single precision.
 * Returns copies; if no node has space, counts are left unchanged (as upstream).
 */
export function autoVnodes(nodes: readonly SdNode[]): SdNode[] {
  let total = 0n, cnt = 0n;
  for (const n of nodes) {
    if (n.space > 0n) {
      total += n.space;
      cnt++;
    }
  }
  if (cnt === 0n) return nodes.map((n) => ({ ...n }));
  const avg = Math.fround(Number(total / cnt));
  return nodes.map((n) => {
    const factor = Math.fround(Math.fround(Number(n.space)) / avg);
    const v = Math.fround(SD_DEFAULT_VNODES * factor);
    // nr_vnodes is a uint16 in sd_node
    return { ...n, nrVnodes: rintHalfEven(v) & 0xffff };
  });
}

/** rint() in the default FE_TONEAREST mode: ties go to the even integer. */
export function rintHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}

export interface DiskSpec {
  path: string;
  /** bytes */
  capacity: bigint;
}

const MD_VDISK_SIZE = 1n << 30n;

/**
 * Per-node multi-disk ring (upstream md.c, non disk-mode): each disk gets ceil(capacity / 1 GiB)
 * vdisks, keys h = sd_hash_next(h) starting from h = sd_hash(path) (trailing '/' trimmed).
 * Disks with capacity 0 get no vdisks (upstream rejects them).
 */
export class DiskRing {
  readonly disks: DiskSpec[];
  private readonly table: KeyTable;

  constructor(disks: readonly DiskSpec[]) {
    this.disks = disks.map((d) => ({ ...d }));
    const raw = { hi: [] as number[], lo: [] as number[], owner: [] as number[] };
    const h = new Uint32Array(2);
    for (let i = 0; i < this.disks.length; i++) {
      const d = this.disks[i];
      const nr = Number((d.capacity + MD_VDISK_SIZE - 1n) / MD_VDISK_SIZE);
      sdHashParts(Buffer.from(trimLastSlash(d.path), "utf8"), h);
      for (let k = 0; k < nr; k++) {
        sdHashNextParts(h[0], h[1], h);
        raw.hi.push(h[0]);
        raw.lo.push(h[1]);
        raw.owner.push(i);
      }
    }
    this.table = buildTable(raw, "vdisk");
  }

  /** Index into this.disks holding oid, or -1 if no disk has vdisks. */
  pickDisk(oid: bigint): number {
    if (this.table.hi.length === 0) return -1;
    sdHashOidParts(oid, scratch);
    return this.table.owner[lowerBound(this.table, scratch[0], scratch[1])];
  }
}

function trimLastSlash(p: string): string {
  let e = p.length;
  while (e > 1 && p[e - 1] === "/") e--;
  return p.slice(0, e);
}
