// The op table (upstream's sd_op_template): one row per opcode with its kind, whether it may run
// before the cluster is formatted or while it waits for members, and the functions that serve it.
//   gateway  object I/O from clients, spread to the replicas (ops/gateway.ts)
//   peer     one replica's part of it, on its own store (ops/peer.ts)
//   local    answered from this sheep's own state (ops/local.ts)
//   cluster  totally ordered through the membership driver (ops/cluster.ts): `run` is the request
//            phase on the receiving sheep (a work phase under the cluster-wide block, or the
//            broadcast), `main` what every sheep applies in the total order
// An opcode without a row, or a row without `run`, is answered INVALID_PARMS.
import type { Buffer } from "node:buffer";
import { type Header, Op } from "../../core/proto.ts";
import type { ClusterOps } from "./cluster.ts";
import type { GatewayOps } from "./gateway.ts";
import type { LocalOps } from "./local.ts";
import type { PeerOps } from "./peer.ts";
import type { Reply } from "./reply.ts";

export type OpKind = "gateway" | "peer" | "local" | "cluster";

/** The op families a row's functions are called with. */
export interface OpFamilies {
  readonly gateway: GatewayOps;
  readonly peer: PeerOps;
  readonly local: LocalOps;
  readonly cluster: ClusterOps;
}

type OpFn = (ops: OpFamilies, req: Header, data: Buffer) => Promise<Reply>;

export interface OpRow {
  name: string;
  kind: OpKind;
  /** Served before format and while the cluster waits (protocol.md §5.2). */
  force?: boolean;
  run?: OpFn;
  main?: OpFn;
}

export const OP_TABLE: ReadonlyMap<number, OpRow> = new Map<number, OpRow>([
  [Op.READ_OBJ, { name: "READ_OBJ", kind: "gateway", run: (o, req) => o.gateway.read(req) }],
  [Op.CREATE_AND_WRITE_OBJ, {
    name: "CREATE_AND_WRITE_OBJ",
    kind: "gateway",
    run: (o, req, data) => o.gateway.create(req, data),
  }],
  [Op.WRITE_OBJ, {
    name: "WRITE_OBJ",
    kind: "gateway",
    run: (o, req, data) => o.gateway.write(req, data),
  }],
  [Op.REMOVE_OBJ, { name: "REMOVE_OBJ", kind: "gateway", run: (o, req) => o.gateway.remove(req) }],
  [Op.DISCARD_OBJ, {
    name: "DISCARD_OBJ",
    kind: "gateway",
    run: (o, req) => o.gateway.discard(req),
  }],
  [Op.CREATE_AND_WRITE_PEER, {
    name: "CREATE_AND_WRITE_PEER",
    kind: "peer",
    run: (o, req, data) => o.peer.handle(req, data),
  }],
  [Op.READ_PEER, {
    name: "READ_PEER",
    kind: "peer",
    run: (o, req, data) => o.peer.handle(req, data),
  }],
  [Op.WRITE_PEER, {
    name: "WRITE_PEER",
    kind: "peer",
    run: (o, req, data) => o.peer.handle(req, data),
  }],
  [Op.WRITE_RUNS_PEER, {
    name: "WRITE_RUNS_PEER",
    kind: "peer",
    run: (o, req, data) => o.peer.handle(req, data),
  }],
  [Op.REMOVE_PEER, {
    name: "REMOVE_PEER",
    kind: "peer",
    run: (o, req, data) => o.peer.handle(req, data),
  }],
  [Op.DECREF_PEER, {
    name: "DECREF_PEER",
    kind: "peer",
    run: (o, req, data) => o.peer.handle(req, data),
  }],
  [Op.GET_HASH, {
    name: "GET_HASH",
    kind: "peer",
    run: (o, req, data) => o.peer.handle(req, data),
  }],
  [Op.READ_VDIS, {
    name: "READ_VDIS",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.readVdis(req, data),
  }],
  [Op.READ_DEL_VDIS, {
    name: "READ_DEL_VDIS",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.readDelVdis(req, data),
  }],
  [Op.GET_VDI_COPIES, {
    name: "GET_VDI_COPIES",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.getVdiCopies(req, data),
  }],
  [Op.FLUSH_VDI, {
    name: "FLUSH_VDI",
    kind: "gateway",
    run: (o, req) => o.gateway.flushVdi(req),
  }],
  [Op.GET_CACHE_INFO, {
    name: "GET_CACHE_INFO",
    kind: "local",
    run: (o, req) => o.gateway.cacheInfo(req),
  }],
  [Op.CACHE_PURGE, {
    name: "CACHE_PURGE",
    kind: "local",
    run: (o, req) => o.gateway.purgeCache(req),
  }],
  [Op.GET_CLUSTER_DEFAULT, {
    name: "GET_CLUSTER_DEFAULT",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.getClusterDefault(req, data),
  }],
  [Op.GET_NODE_LIST, {
    name: "GET_NODE_LIST",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.getNodeList(req, data),
  }],
  [Op.STAT_SHEEP, {
    name: "STAT_SHEEP",
    kind: "local",
    run: (o, req, data) => o.local.statSheep(req, data),
  }],
  [Op.STAT_CLUSTER, {
    name: "STAT_CLUSTER",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.statCluster(req, data),
  }],
  [Op.CLUSTER_INFO, {
    name: "CLUSTER_INFO",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.clusterInfo(req, data),
  }],
  [Op.GET_STORE_LIST, {
    name: "GET_STORE_LIST",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.getStoreList(req, data),
  }],
  [Op.STAT_RECOVERY, {
    name: "STAT_RECOVERY",
    kind: "local",
    run: (o, req, data) => o.local.statRecovery(req, data),
  }],
  [Op.FLUSH_DEL_CACHE, {
    name: "FLUSH_DEL_CACHE",
    kind: "local",
    run: (o, req, data) => o.local.noop(req, data),
  }],
  [Op.DELETE_CACHE, {
    name: "DELETE_CACHE",
    kind: "local",
    run: (o, req) => o.gateway.deleteCache(req),
  }],
  [Op.CLEANUP, {
    name: "CLEANUP",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.noop(req, data),
  }],
  [Op.NOTIFY_VDI_DEL, {
    name: "NOTIFY_VDI_DEL",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.noop(req, data),
  }],
  [Op.KILL_NODE, {
    name: "KILL_NODE",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.killNode(req, data),
  }],
  [Op.GET_EPOCH, {
    name: "GET_EPOCH",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.getEpoch(req, data),
  }],
  [Op.GET_OBJ_LIST, {
    name: "GET_OBJ_LIST",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.getObjList(req, data),
  }],
  [Op.REPAIR_REPLICA, {
    name: "REPAIR_REPLICA",
    kind: "local",
    run: (o, req, data) => o.local.repairReplica(req, data),
  }],
  [Op.EXIST, {
    name: "EXIST",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.exist(req, data),
  }],
  [Op.OIDS_EXIST, {
    name: "OIDS_EXIST",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.oidsExist(req, data),
  }],
  [Op.GET_LOGLEVEL, {
    name: "GET_LOGLEVEL",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.getLoglevel(req, data),
  }],
  [Op.SET_LOGLEVEL, {
    name: "SET_LOGLEVEL",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.setLoglevel(req, data),
  }],
  [Op.GET_RECOVERY, {
    name: "GET_RECOVERY",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.getRecovery(req, data),
  }],
  [Op.SET_RECOVERY, {
    name: "SET_RECOVERY",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.setRecovery(req, data),
  }],
  [Op.MD_INFO, {
    name: "MD_INFO",
    kind: "local",
    run: (o, req, data) => o.local.mdInfo(req, data),
  }],
  [Op.MD_PLUG, {
    name: "MD_PLUG",
    kind: "local",
    run: (o, req, data) => o.local.mdPlug(req, data, true),
  }],
  [Op.MD_UNPLUG, {
    name: "MD_UNPLUG",
    kind: "local",
    run: (o, req, data) => o.local.mdPlug(req, data, false),
  }],
  [Op.SCRUB_START, {
    name: "SCRUB_START",
    kind: "local",
    run: (o, req, data) => o.local.scrubStart(req, data),
  }],
  [Op.SCRUB_STATUS, {
    name: "SCRUB_STATUS",
    kind: "local",
    force: true,
    run: (o, req, data) => o.local.scrubStatus(req, data),
  }],
  [Op.SET_VNODES, {
    name: "SET_VNODES",
    kind: "local",
    run: (o, req, data) => o.local.setVnodes(req, data),
  }],
  [Op.GET_VNODES, {
    name: "GET_VNODES",
    kind: "local",
    run: (o, req, data) => o.local.getVnodes(req, data),
  }],
  [Op.STAT, { name: "STAT", kind: "local", run: (o, req, data) => o.local.stat(req, data) }],
  [Op.NEW_VDI, {
    name: "NEW_VDI",
    kind: "cluster",
    run: (o, req, data) => o.cluster.newVdi(req, data),
  }],
  [Op.DEL_VDI, {
    name: "DEL_VDI",
    kind: "cluster",
    run: (o, req, data) => o.cluster.delVdi(req, data),
  }],
  [Op.LOCK_VDI, {
    name: "LOCK_VDI",
    kind: "cluster",
    run: (o, req, data) => o.cluster.getVdiInfo(req, data),
  }],
  [Op.GET_VDI_INFO, {
    name: "GET_VDI_INFO",
    kind: "cluster",
    run: (o, req, data) => o.cluster.getVdiInfo(req, data),
  }],
  [Op.RELEASE_VDI, {
    name: "RELEASE_VDI",
    kind: "cluster",
    run: (o, req, data) => o.cluster.releaseVdiOp(req, data),
  }],
  [Op.GET_VDI_ATTR, {
    name: "GET_VDI_ATTR",
    kind: "cluster",
    run: (o, req, data) => o.cluster.getVdiAttr(req, data),
  }],
  [Op.MAKE_FS, {
    name: "MAKE_FS",
    kind: "cluster",
    force: true,
    run: (o, req, data) => o.cluster.broadcast(req, data),
    main: (o, req, data) => o.cluster.mainMakeFs(req, data),
  }],
  [Op.SHUTDOWN, {
    name: "SHUTDOWN",
    kind: "cluster",
    force: true,
    run: (o, req, data) => o.cluster.broadcast(req, data),
    main: (o, req, data) => o.cluster.mainShutdown(req, data),
  }],
  [Op.REWEIGHT, {
    name: "REWEIGHT",
    kind: "cluster",
    run: (o, req, data) => o.cluster.broadcast(req, data),
    main: (o, req, data) => o.cluster.mainReweight(req, data),
  }],
  [Op.ALTER_VDI_COPY, {
    name: "ALTER_VDI_COPY",
    kind: "cluster",
    run: (o, req, data) => o.cluster.broadcast(req, data),
    main: (o, req, data) => o.cluster.mainAlterVdiCopy(req, data),
  }],
  [Op.ENABLE_RECOVER, {
    name: "ENABLE_RECOVER",
    kind: "cluster",
    run: (o, req, data) => o.cluster.broadcast(req, data),
    main: (o, req, data) => o.cluster.mainSetRecoveryEnabled(req, data),
  }],
  [Op.DISABLE_RECOVER, {
    name: "DISABLE_RECOVER",
    kind: "cluster",
    run: (o, req, data) => o.cluster.broadcast(req, data),
    main: (o, req, data) => o.cluster.mainSetRecoveryEnabled(req, data),
  }],
  [Op.ALTER_CLUSTER_COPY, {
    name: "ALTER_CLUSTER_COPY",
    kind: "cluster",
    run: (o, req, data) => o.cluster.broadcast(req, data),
    main: (o, req, data) => o.cluster.mainAlterClusterCopy(req, data),
  }],
  [Op.NOTIFY_VDI_ADD, {
    name: "NOTIFY_VDI_ADD",
    kind: "cluster",
    force: true,
    run: (o, req, data) => o.cluster.broadcast(req, data),
    main: (o, req, data) => o.cluster.mainNotifyVdiAdd(req, data),
  }],
  [Op.COMPLETE_RECOVERY, {
    name: "COMPLETE_RECOVERY",
    kind: "cluster",
    force: true,
    main: (o, req, data) => o.cluster.mainCompleteRecovery(req, data),
  }],
  [Op.FORCE_RECOVER, {
    name: "FORCE_RECOVER",
    kind: "cluster",
    force: true,
    run: (o, req, data) => o.cluster.forceRecover(req, data),
    main: (o, req, data) => o.cluster.mainForceRecover(req, data),
  }],
]);
