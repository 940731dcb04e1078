// /api/state: the JSON the dashboard polls. Cluster and VDI figures come from this sheep's view;
// per-node capacity and object counts are asked of each node (STAT_SHEEP, GET_OBJ_LIST), so one
// dashboard shows the whole cluster. Those are asked at most once a second however many browsers
// poll; this sheep's own counters are read fresh on every request (the throughput needs them).
import { Buffer } from "node:buffer";
import { decodeInodeHeader } from "../../core/inode.ts";
import { nodeEqual, nodeHostPort, nodeIp } from "../../core/node.ts";
import type { SdNode } from "../../core/node.ts";
import { SD_INODE_HEADER_SIZE, vidToVdiOid } from "../../core/oid.ts";
import { EMPTY, Header, Op, Res } from "../../core/proto.ts";
import type { Reply } from "../../io/client.ts";
import type { Sheep } from "../daemon.ts";
import type { SheepMetrics } from "../metrics.ts";
import { STATUS_NAMES } from "../metrics.ts";
import { VERSION } from "../../core/version.ts";

export interface NodeView {
  id: string;
  zone: number;
  vnodes: number;
  /** Announced capacity (bytes). */
  space: number;
  /** From the node itself; null when it did not answer. */
  size: number | null;
  free: number | null;
  objects: number | null;
  me: boolean;
}

export interface VdiView {
  vid: number;
  name: string;
  tag: string;
  snapId: number;
  snapshot: boolean;
  parent: number;
  size: number;
  copies: number;
  created: number;
}

export interface DashState {
  time: number;
  version: string;
  me: string;
  cluster: {
    status: string;
    formatted: boolean;
    epoch: number;
    copies: number;
    store: string;
    nodes: number;
    members: number;
  };
  nodes: NodeView[];
  vdis: VdiView[];
  recovery: { running: boolean; phase: number; total: number; done: number; rate: number };
  /** Counters; the dashboard turns their deltas into throughput. */
  counters: {
    gwRead: number;
    gwWrite: number;
    gwRx: number;
    gwTx: number;
    peerRx: number;
    peerTx: number;
    nbdRead: number;
    nbdWrite: number;
  };
}

const PEER_TIMEOUT_MS = 1000;
const MAX_VDIS = 1000;
/** GET_OBJ_LIST answers with every oid: room for 8M objects (a 32 TiB store of 4 MiB objects). */
const OBJ_LIST_LIMIT = 64 * 1024 * 1024;

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let t: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new Error("timeout")), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

export class DashboardState {
  private cache: { t: number; p: Promise<{ nodes: NodeView[]; vdis: VdiView[] }> } | null = null;
  /** Snapshots never change: their inode headers are read once. */
  private snapHeaders = new Map<number, VdiView>();

  constructor(private readonly sheep: Sheep, private readonly metrics: SheepMetrics) {}

  async get(): Promise<DashState> {
    const t = Date.now();
    if (!this.cache || t - this.cache.t >= 1000) {
      const p = this.ask1s();
      this.cache = { t, p };
      // A failed build is not kept: the next poll tries again.
      p.catch(() => {
        if (this.cache?.p === p) this.cache = null;
      });
    }
    const { nodes, vdis } = await this.cache.p;
    return this.compose(nodes, vdis);
  }

  private ask(n: SdNode, hdr: Header): Promise<Reply> {
    if (nodeEqual(n, this.sheep.me)) return this.sheep.handle(hdr, EMPTY);
    return withTimeout(this.sheep.pool.request(nodeIp(n), n.port, hdr), PEER_TIMEOUT_MS);
  }

  private async nodeView(n: SdNode, vnodes: number): Promise<NodeView> {
    const v: NodeView = {
      id: nodeHostPort(n),
      zone: n.zone,
      vnodes,
      space: Number(n.space),
      size: null,
      free: null,
      objects: null,
      me: nodeEqual(n, this.sheep.me),
    };
    const [stat, list] = await Promise.allSettled([
      this.ask(n, Header.req(Op.STAT_SHEEP)),
      this.ask(n, Header.req(Op.GET_OBJ_LIST, { dataLength: OBJ_LIST_LIMIT })),
    ]);
    if (stat.status === "fulfilled" && stat.value.hdr.result === Res.SUCCESS) {
      v.size = Number(stat.value.hdr.storeSize);
      v.free = Number(stat.value.hdr.storeFree);
    }
    if (list.status === "fulfilled" && list.value.hdr.result === Res.SUCCESS) {
      v.objects = Math.floor(list.value.data.length / 8);
    }
    return v;
  }

  private async vdiView(vid: number, snapshot: boolean, parent: number): Promise<VdiView | null> {
    const cached = this.snapHeaders.get(vid);
    if (cached) return cached;
    let b: Buffer;
    try {
      b = await withTimeout(
        this.sheep.metaIO.read(vidToVdiOid(vid), 0, SD_INODE_HEADER_SIZE),
        PEER_TIMEOUT_MS,
      );
    } catch {
      return null;
    }
    const h = decodeInodeHeader(b);
    if (!h.name) return null;
    const v: VdiView = {
      vid,
      name: h.name,
      tag: h.tag,
      snapId: h.snapId,
      snapshot,
      parent: parent || h.parentVdiId,
      size: Number(h.vdiSize),
      copies: h.nrCopies,
      created: Number(h.createTime >> 32n),
    };
    if (snapshot) this.snapHeaders.set(vid, v);
    return v;
  }

  /** The figures that take requests to other nodes (and inode reads). */
  private async ask1s(): Promise<{ nodes: NodeView[]; vdis: VdiView[] }> {
    const s = this.sheep;
    // The ring's copy of a node carries its effective vnodes (auto vnodes scale with capacity).
    const vnodesOf = (n: SdNode) =>
      s.ring.nodes.find((r) => nodeEqual(r, n))?.nrVnodes ?? n.nrVnodes;
    const states = [...s.vdis.states.values()].filter((v) => !v.deleted).slice(0, MAX_VDIS);
    const [nodes, vdis] = await Promise.all([
      Promise.all(this.metrics.clusterNodes().map((n) => this.nodeView(n, vnodesOf(n)))),
      Promise.all(states.map((v) => this.vdiView(v.vid, v.snapshot, v.parentVid))),
    ]);
    return {
      nodes,
      vdis: vdis.filter((v): v is VdiView => v !== null).sort((a, b) => a.vid - b.vid),
    };
  }

  private compose(nodeViews: NodeView[], vdiViews: VdiView[]): DashState {
    const s = this.sheep;
    const m = this.metrics;
    m.sampleRecovery();
    const rec = s.recovery.status();
    const st = s.stats;
    return {
      time: Date.now(),
      version: VERSION,
      me: nodeHostPort(s.me),
      cluster: {
        status: STATUS_NAMES[s.state.status] ?? String(s.state.status),
        formatted: s.state.ctime !== 0n,
        epoch: s.state.epoch,
        copies: s.state.copies,
        store: s.state.store,
        nodes: m.clusterNodes().length,
        members: s.members.length,
      },
      nodes: nodeViews,
      vdis: vdiViews,
      recovery: {
        running: rec.inRecovery,
        phase: rec.state,
        total: rec.total,
        done: rec.finished,
        rate: m.recoveryRate(),
      },
      counters: {
        gwRead: Number(st.gwRead),
        gwWrite: Number(st.gwWrite),
        gwRx: Number(st.gwRx),
        gwTx: Number(st.gwTx),
        peerRx: Number(st.peerRx),
        peerTx: Number(st.peerTx),
        nbdRead: m.nbdReadBytes,
        nbdWrite: m.nbdWriteBytes,
      },
    };
  }
}
