// Local ops: requests one sheep answers from its own state (node list, epoch logs, cluster
// info, store and recovery figures, log level, vnodes, object lists ...), without a cluster-wide
// operation (sheep-daemon.md §4, upstream's local ops). One method per opcode; the op table
// (table.ts) says which may run before the cluster is formatted.
import type { Sheep } from "../daemon.ts";
import {
  encodeClusterInfo,
  encodeEpochLog,
  encodeMdInfo,
  encodeRecoveryState,
  encodeScrubStatus,
  encodeVdiStates as encodeVdiStateRecords,
  epochLogRecordSize,
  LockState,
  MD_INFO_SIZE,
  SCRUB_STATUS_SIZE,
  SD_MAX_NODES,
  VDI_STATE_SIZE,
} from "../../core/payloads.ts";
import { encodeNodeStats } from "../../core/node-stat.ts";
import { Buffer } from "node:buffer";
import fs from "node:fs";
import {
  ClusterFlag,
  EMPTY,
  Flag,
  Header,
  MAX_PAYLOAD,
  Op,
  Res,
  SD_SHEEP_PROTO_VER,
  Status,
} from "../../core/proto.ts";
import { SdError } from "../../core/errors.ts";
import type { SdNode } from "../../core/node.ts";
import { encodeNodes, makeNode, nodeHostPort } from "../../core/node.ts";
import { epochFileBytes, listEpochs, readEpoch } from "../../io/config-file.ts";
import { VdiTable } from "../../core/vdi.ts";

import { encodeOids, errorReply, withResult } from "./reply.ts";
import type { Reply } from "./reply.ts";

/** What local ops see of the daemon. */
export type LocalContext = Pick<
  Sheep,
  | "baseDir"
  | "driver"
  | "ecRecovery"
  | "log"
  | "me"
  | "members"
  | "nodeList"
  | "opts"
  | "recovery"
  | "recoveryIntervalSet"
  | "recoveryThrottle"
  | "sendTo"
  | "scrub"
  | "shutdown"
  | "state"
  | "stats"
  | "store"
  | "storedSize"
  | "vdis"
>;

export class LocalOps {
  constructor(private readonly s: LocalContext) {}

  /** READ_VDIS */
  async readVdis(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (req.dataLength !== 2097152) return errorReply(req, new SdError(Res.INVALID_PARMS));
    return { hdr: rsp, data: this.s.vdis.inuse.toBuffer() };
  }

  /** READ_DEL_VDIS */
  async readDelVdis(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (req.dataLength !== 2097152) return errorReply(req, new SdError(Res.INVALID_PARMS));
    return { hdr: rsp, data: this.s.vdis.deleted.toBuffer() };
  }

  /** GET_VDI_COPIES */
  async getVdiCopies(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (this.s.vdis.states.size * VDI_STATE_SIZE > req.dataLength) {
      return errorReply(req, new SdError(Res.BUFFER_SMALL));
    }
    return { hdr: rsp, data: encodeVdiStates(this.s.vdis, this.s.members) };
  }

  /** GET_CLUSTER_DEFAULT */
  async getClusterDefault(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    rsp.defNrCopies = this.s.state.copies;
    rsp.defCopyPolicy = this.s.state.copyPolicy;
    rsp.defBlockSizeShift = this.s.state.blockSizeShift;
    return { hdr: rsp, data: EMPTY };
  }

  /** GET_NODE_LIST */
  async getNodeList(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    const nodes = this.s.nodeList();
    rsp.rspNrNodes = nodes.length;
    const buf = encodeNodes(nodes);
    return {
      hdr: rsp,
      data: buf.subarray(0, Math.min(buf.length, req.dataLength || buf.length)),
    };
  }

  /** STAT_SHEEP */
  async statSheep(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (this.s.opts.gateway) return { hdr: rsp, data: EMPTY };
    const st = this.s.store.statfs();
    rsp.storeSize = st.size;
    rsp.storeFree = st.free;
    return { hdr: rsp, data: EMPTY };
  }

  /** STAT_CLUSTER */
  async statCluster(req: Header, _data: Buffer): Promise<Reply> {
    return this.epochLogReply(req);
  }

  /** CLUSTER_INFO */
  async clusterInfo(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    return { hdr: rsp, data: this.clusterInfoBytes().subarray(0, req.dataLength || undefined) };
  }

  /** GET_STORE_LIST */
  async getStoreList(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    return { hdr: rsp, data: Buffer.from("tree plain ") /* upstream's registration order */ };
  }

  /** STAT_RECOVERY */
  async statRecovery(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    const st = this.s.recovery.status();
    const data = encodeRecoveryState({
      inRecovery: st.inRecovery,
      state: st.state,
      nrFinished: BigInt(st.finished),
      nrTotal: BigInt(st.total),
    });
    return { hdr: rsp, data };
  }

  /** FLUSH_DEL_CACHE, DELETE_CACHE, CLEANUP, NOTIFY_VDI_DEL */
  async noop(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    return { hdr: rsp, data: EMPTY };
  }

  /** KILL_NODE */
  async killNode(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    setTimeout(() => this.s.shutdown(0, true), 10);
    return { hdr: rsp, data: EMPTY };
  }

  /** GET_EPOCH */
  async getEpoch(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    const rec = readEpoch(this.s.baseDir, req.tgtEpoch);
    if (!rec) return errorReply(req, new SdError(Res.NO_TAG));
    const b = epochFileBytes(rec.nodes, rec.time);
    if (req.dataLength && b.length > req.dataLength) {
      return errorReply(req, new SdError(Res.BUFFER_SMALL));
    }
    return { hdr: rsp, data: b };
  }

  /** GET_OBJ_LIST */
  async getObjList(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    // Stale copies count: they are what a new owner recovers from.
    const b = encodeOids(
      new Set([...this.s.store.list(), ...this.s.store.listStale().map((x) => x.oid)]),
    );
    if (b.length > req.dataLength) return errorReply(req, new SdError(Res.BUFFER_SMALL));
    return { hdr: rsp, data: b };
  }

  /** REPAIR_REPLICA */
  async repairReplica(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    // Fetch the object from the named node and store it here (dog vdi check).
    const addr = req.b.subarray(24, 40);
    const port = req.b.readUInt16LE(40);
    const src = makeNode("127.0.0.1", port);
    addr.copy(src.addr);
    const size = this.s.storedSize(req.oid);
    const rq = Header.req(Op.READ_PEER, { flags: Flag.CMD_RECOVERY, dataLength: size });
    rq.oid = req.oid;
    rq.epoch = this.s.state.epoch;
    rq.tgtEpoch = this.s.state.epoch;
    const r = await this.s.sendTo(src, rq);
    if (r.hdr.result !== Res.SUCCESS) return errorReply(req, new SdError(r.hdr.result));
    await this.s.store.createAndWrite(req.oid, 0, r.data, size);
    return { hdr: rsp, data: EMPTY };
  }

  /** EXIST */
  async exist(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    return {
      hdr: withResult(
        rsp,
        this.s.store.verify(req.oid, this.s.ecRecovery?.localIndex(req.oid))
          ? Res.SUCCESS
          : Res.NO_OBJ,
      ),
      data: EMPTY,
    };
  }

  /** OIDS_EXIST */
  async oidsExist(_req: Header, data: Buffer): Promise<Reply> {
    const rsp = new Header();
    const missing: bigint[] = [];
    for (let i = 0; i + 8 <= data.length; i += 8) {
      const oid = data.readBigUInt64LE(i);
      if (!this.s.store.verify(oid, this.s.ecRecovery?.localIndex(oid))) missing.push(oid);
    }
    return {
      hdr: withResult(rsp, missing.length ? Res.NO_OBJ : Res.SUCCESS),
      data: encodeOids(missing),
    };
  }

  /** GET_LOGLEVEL */
  async getLoglevel(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    const b = Buffer.alloc(4);
    b.writeInt32LE(this.s.log.level);
    return { hdr: rsp, data: b };
  }

  /** SET_LOGLEVEL */
  async setLoglevel(req: Header, data: Buffer): Promise<Reply> {
    const rsp = new Header();
    const lv = data.length >= 4 ? data.readInt32LE(0) : -1;
    if (lv < 0 || lv > 7) return errorReply(req, new SdError(Res.INVALID_PARMS));
    this.s.log.level = lv;
    return { hdr: rsp, data: EMPTY };
  }

  /** GET_RECOVERY */
  async getRecovery(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    const b = Buffer.alloc(24);
    b.writeUInt32LE(this.s.recoveryThrottle.max, 0);
    b.writeBigUInt64LE(this.s.recoveryIntervalSet ?? BigInt(this.s.recoveryThrottle.interval), 8);
    b[16] = this.s.recoveryThrottle.max > 0 && this.s.recoveryThrottle.interval > 0 ? 1 : 0;
    return { hdr: rsp, data: b };
  }

  /** SET_RECOVERY */
  async setRecovery(req: Header, data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (data.length < 16) return errorReply(req, new SdError(Res.INVALID_PARMS));
    // Reported back exactly as set (a u64); waited for at most what a timer can hold.
    this.s.recoveryIntervalSet = data.readBigUInt64LE(8);
    this.s.recoveryThrottle = {
      max: data.readUInt32LE(0),
      interval: Number(
        this.s.recoveryIntervalSet > 0x7fffffffn ? 0x7fffffffn : this.s.recoveryIntervalSet,
      ),
    };
    this.s.recovery.poke();
    return { hdr: rsp, data: EMPTY };
  }

  /** MD_INFO */
  async mdInfo(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (req.dataLength !== MD_INFO_SIZE) return errorReply(req, new SdError(Res.INVALID_PARMS));
    const disks = this.s.opts.gateway ? [] : this.s.store.diskInfo();
    const data = encodeMdInfo(
      disks.map((d, idx) => ({ idx, free: d.free, used: d.used, path: d.path })),
    );
    return { hdr: rsp, data };
  }

  /**
   * MD_PLUG / MD_UNPLUG: comma-separated paths, NUL-terminated. UNKNOWN when no disk was added or
   * removed (duplicates, non-directories, unknown paths and the last disk are logged), as upstream.
   */
  async mdPlug(_req: Header, data: Buffer, plug: boolean): Promise<Reply> {
    const rsp = new Header();
    const nul = data.indexOf(0);
    const paths = data.subarray(0, nul < 0 ? data.length : nul).toString("utf8").split(",")
      .filter((p) => p.length > 0);
    const usable = paths.filter((p) => {
      // The base directory holds config and epochs: purging it would destroy the node.
      const meta = fs.existsSync(`${p}/config`) && fs.existsSync(`${p}/epoch`);
      if (plug && meta) this.s.log.err(`${p} is meta-store, not plugged`);
      return !(plug && meta);
    });
    // MD_INFO has room for 64 disks (upstream's MD_MAX_DISK).
    if (plug && this.s.store.diskPaths().length + usable.length > 64) {
      this.s.log.err(`too many disks: at most 64`);
      return { hdr: withResult(rsp, Res.UNKNOWN), data: EMPTY };
    }
    const n = plug ? this.s.store.plug(usable) : this.s.store.unplug(usable);
    return { hdr: n > 0 ? rsp : withResult(rsp, Res.UNKNOWN), data: EMPTY };
  }

  /** SCRUB_START (our extension): a background scrub pass now; BUSY-like UNKNOWN if running. */
  async scrubStart(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (this.s.state.status !== Status.OK) {
      return errorReply(req, new SdError(Res.WAIT_FOR_FORMAT));
    }
    return { hdr: this.s.scrub.start() ? rsp : withResult(rsp, Res.UNKNOWN), data: EMPTY };
  }

  /** SCRUB_STATUS (our extension): this sheep's scrub figures. */
  async scrubStatus(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (req.dataLength < SCRUB_STATUS_SIZE) {
      return errorReply(req, new SdError(Res.INVALID_PARMS));
    }
    return { hdr: rsp, data: encodeScrubStatus(this.s.scrub.status()) };
  }

  /** SET_VNODES */
  async setVnodes(req: Header, data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (this.s.opts.gateway) return errorReply(req, new SdError(Res.GATEWAY_MODE));
    if (this.s.state.flags & ClusterFlag.AUTO_VNODES) {
      return errorReply(req, new SdError(Res.INVALID_VNODES_STRATEGY));
    }
    const v = data.length >= 4 ? data.readInt32LE(0) : 0;
    if (v < 1 || v > 65535) return errorReply(req, new SdError(Res.INVALID_PARMS));
    await this.s.driver.updateNode({ ...this.s.me, nrVnodes: v });
    return { hdr: rsp, data: EMPTY };
  }

  /** GET_VNODES */
  async getVnodes(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    const b = Buffer.alloc(4);
    b.writeInt32LE(this.s.me.nrVnodes);
    return { hdr: rsp, data: b };
  }

  /** STAT */
  async stat(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    return { hdr: rsp, data: encodeNodeStats(this.s.stats) };
  }

  private epochLogReply(req: Header): Reply {
    const rsp = new Header();
    const nodesNr = req.nodesNr;
    // A bogus node count or length must not size the reply (up to 4 GiB per request otherwise).
    if (nodesNr > SD_MAX_NODES) return { hdr: withResult(rsp, Res.INVALID_PARMS), data: EMPTY };
    const room = Math.min(req.dataLength, MAX_PAYLOAD);
    const recSize = epochLogRecordSize(nodesNr);
    const epochs = listEpochs(this.s.baseDir).sort((a, b) => b - a);
    const out: Buffer[] = [];
    let result: number = Res.SUCCESS;
    if (this.s.state.ctime === 0n) result = Res.WAIT_FOR_FORMAT;
    else if (this.s.state.status === Status.WAIT) result = Res.WAIT_FOR_JOIN;
    else if (this.s.state.status === Status.SHUTDOWN) result = Res.SHUTDOWN;
    for (let i = 0; i < epochs.length; i++) {
      if ((out.length + 1) * recSize > room) break;
      const e = epochs[i];
      const rec = readEpoch(this.s.baseDir, e);
      if (!rec) continue;
      if (rec.nodes.length > nodesNr) {
        return { hdr: withResult(rsp, Res.BUFFER_SMALL), data: EMPTY };
      }
      // Only the newest record carries the cluster's current settings (upstream).
      const cur = i === 0;
      out.push(encodeEpochLog({
        ctime: cur ? this.s.state.ctime : 0n,
        time: rec.time,
        epoch: e,
        nrNodes: rec.nodes.length,
        disableRecovery: cur && this.s.state.disableRecovery ? 1 : 0,
        nrCopies: cur ? this.s.state.copies : 0,
        copyPolicy: cur ? this.s.state.copyPolicy : 0,
        flags: cur ? this.s.state.flags : 0,
        drvName: cur ? this.s.state.store : "",
        nodes: rec.nodes,
      }, nodesNr));
    }
    if (out.length === 0 && this.s.state.ctime !== 0n) {
      out.push(encodeEpochLog({
        ctime: this.s.state.ctime,
        time: 0n,
        epoch: 0,
        nrNodes: 0,
        disableRecovery: 0,
        nrCopies: 0,
        copyPolicy: 0,
        flags: 0,
        drvName: "",
        nodes: [],
      }, nodesNr));
    }
    return { hdr: withResult(rsp, result), data: Buffer.concat(out) };
  }

  private clusterInfoBytes(): Buffer {
    const st = this.s.state;
    return encodeClusterInfo({
      protoVer: SD_SHEEP_PROTO_VER,
      disableRecovery: st.disableRecovery,
      epoch: st.epoch,
      ctime: st.ctime,
      // Unformatted, each sheep shows its own vnode strategy (-V), which dog cluster format checks.
      flags: st.ctime === 0n
        ? (st.flags & ~ClusterFlag.AUTO_VNODES) |
          (this.s.opts.vnodes === null ? ClusterFlag.AUTO_VNODES : 0)
        : st.flags,
      copies: st.copies,
      copyPolicy: st.copyPolicy,
      status: st.status,
      blockSizeShift: st.blockSizeShift,
      store: st.store,
      nodes: st.nodes,
    });
  }
}

/** GET_VDI_COPIES payload: what this sheep knows of every VDI, with its lock. */
function encodeVdiStates(t: VdiTable, nodes: SdNode[]): Buffer {
  return encodeVdiStateRecords([...t.states.values()].map((s) => {
    const lock = t.locks.get(s.vid);
    const owner = lock ? nodes.find((n) => nodeHostPort(n) === lock.owner) ?? null : null;
    return {
      ...s,
      lockState: lock ? LockState.LOCKED : LockState.UNLOCKED,
      lockOwner: owner,
      participants: [],
    };
  }));
}
