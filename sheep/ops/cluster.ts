// Cluster ops: totally ordered through the membership driver. Ops with a work phase (NEW_VDI,
// DEL_VDI, GET_VDI_ATTR, VDI locks) run it on the sheep that received them while the cluster
// is blocked, then every sheep applies the result; ops without one (format, shutdown,
// alter-copy ...) are broadcast and every sheep runs their main phase in the same order.
import type { Sheep } from "../daemon.ts";
import { Buffer } from "node:buffer";
import {
  ClusterFlag,
  EMPTY,
  Flag,
  Header,
  Op,
  readFixedString,
  Res,
  Status,
} from "../../core/proto.ts";
import { SdError } from "../../core/errors.ts";
import { decodeNode, nodeHostPort } from "../../core/node.ts";
import { SD_INODE_HEADER_SIZE, vidToVdiOid } from "../../core/oid.ts";
import { readEpoch, removeEpochs, writeConfig } from "../../io/config-file.ts";
import { applyForceRecover, applyFormat } from "../../core/cluster.ts";
import { decodeInodeHeader } from "../../core/inode.ts";
import {
  applyVdiAdded,
  deleteVdi,
  getVdiAttr,
  lookupVdi,
  newVdi,
  recyclableAfterDelete,
  registerInode,
  VdiTable,
} from "../../core/vdi.ts";
import { ctimeNow } from "../../io/clock.ts";

import { errorReply, vdiFound, vdiNameArgs, withResult } from "./reply.ts";
import type { Apply, Reply } from "./reply.ts";

/** What cluster ops see of the daemon. */
export type ClusterContext = Pick<
  Sheep,
  | "baseDir"
  | "clusterNotify"
  | "clusterWork"
  | "config"
  | "driver"
  | "me"
  | "members"
  | "metaIO"
  | "objectDirs"
  | "openObjectStore"
  | "opts"
  | "persistConfig"
  | "recovery"
  | "setState"
  | "shutdown"
  | "startRecovery"
  | "state"
  | "store"
  | "vdis"
>;

export class ClusterOps {
  constructor(private readonly s: ClusterContext) {}

  /** NEW_VDI */
  async newVdi(req: Header, data: Buffer): Promise<Reply> {
    if (data.length !== 256) return errorReply(req, new SdError(Res.INVALID_PARMS));
    return await this.newVdiWork(req, data);
  }

  /** DEL_VDI */
  async delVdi(req: Header, data: Buffer): Promise<Reply> {
    if (data.length !== 256 && data.length !== 512) {
      return errorReply(req, new SdError(Res.INVALID_PARMS));
    }
    return await this.delVdiWork(req, data);
  }

  /** LOCK_VDI, GET_VDI_INFO */
  async getVdiInfo(req: Header, data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (data.length !== 256 && data.length !== 512) {
      return errorReply(req, new SdError(Res.INVALID_PARMS));
    }
    const { name, opts } = vdiNameArgs(req, data);
    // Without the cluster flag USE_LOCK a LOCK_VDI is only a lookup (upstream).
    if (req.opcode === Op.LOCK_VDI && this.s.state.flags & ClusterFlag.USE_LOCK) {
      return await this.lockVdi(name, opts);
    }
    return {
      hdr: vdiFound(rsp, await lookupVdi(this.s.metaIO, this.s.vdis, name, opts)),
      data: EMPTY,
    };
  }

  /** RELEASE_VDI */
  async releaseVdiOp(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (this.s.vdis.locks.has(req.baseVdiId)) await this.releaseVdi(req.baseVdiId);
    return { hdr: rsp, data: EMPTY };
  }

  /** GET_VDI_ATTR */
  async getVdiAttr(req: Header, data: Buffer): Promise<Reply> {
    if (data.length < 784) return errorReply(req, new SdError(Res.INVALID_PARMS));
    return await this.s.clusterWork(async () => {
      const h = new Header();
      // The VDI must exist; its create_time goes into the attribute (upstream).
      const name = readFixedString(data, 0, 256);
      const tag = readFixedString(data, 256, 256);
      const snapid = data.readUInt32LE(520) || req.snapid;
      const v = await lookupVdi(this.s.metaIO, this.s.vdis, name, {
        tag: tag || undefined,
        snapid: snapid || undefined,
      });
      const a = await getVdiAttr(this.s.metaIO, this.s.vdis, data, {
        creat: !!(req.flags & Flag.CMD_CREAT),
        excl: !!(req.flags & Flag.CMD_EXCL),
        del: !!(req.flags & Flag.CMD_DEL),
      }, v.header.createTime);
      h.rspVdiId = a.vid;
      h.rspAttrId = a.attrId;
      return { hdr: h, data: EMPTY };
    });
  }

  /** MAKE_FS, SHUTDOWN, REWEIGHT, ALTER_VDI_COPY, ENABLE_RECOVER, DISABLE_RECOVER, ALTER_CLUSTER_COPY, NOTIFY_VDI_ADD */
  async broadcast(req: Header, data: Buffer): Promise<Reply> {
    return await this.s.clusterNotify(req, data);
  }

  /** FORCE_RECOVER: refused here unless waiting, then applied by every sheep in order. */
  async forceRecover(req: Header, data: Buffer): Promise<Reply> {
    // Nor when the waiting epoch came from a joiner (not in our own log): its history differs
    // from ours, and upstream refuses that case too.
    const logged = readEpoch(this.s.baseDir, this.s.state.epoch) !== null;
    if (!logged || !applyForceRecover(this.s.state, this.s.members)) {
      return { hdr: withResult(new Header(), Res.FORCE_RECOVER), data: EMPTY };
    }
    return await this.s.clusterNotify(req, data);
  }

  async mainForceRecover(_req: Header, _data: Buffer): Promise<Reply> {
    const s = applyForceRecover(this.s.state, this.s.members);
    if (!s) return { hdr: withResult(new Header(), Res.FORCE_RECOVER), data: EMPTY };
    await this.s.setState(s, true); // logs the epoch, recovers from the one it was waiting in
    return { hdr: new Header(), data: EMPTY };
  }

  /** MAKE_FS */
  async mainMakeFs(req: Header, data: Buffer): Promise<Reply> {
    const rsp = new Header();
    const storeName = readFixedString(data, 0, data.length).trim() || "plain";
    if (storeName !== "plain" && storeName !== "tree") {
      return { hdr: withResult(rsp, Res.NO_STORE), data: EMPTY };
    }
    await this.s.store.format();
    if (this.s.store.kind !== storeName) {
      this.s.store.close();
      this.s.store = await this.s.openObjectStore(storeName);
    }
    this.s.vdis = new VdiTable();
    removeEpochs(this.s.baseDir);
    const s = applyFormat(this.s.state, this.s.members, {
      ctime: req.clusterCtime,
      copies: req.clusterCopies,
      copyPolicy: req.clusterCopyPolicy,
      flags: req.clusterFlags,
      blockSizeShift: req.clusterBlockSizeShift,
      store: storeName,
    });
    this.s.state = { ...s, epoch: 0 };
    await this.s.setState(s, true);
    this.s.config.shutdown = false;
    this.s.persistConfig();
    return { hdr: rsp, data: EMPTY };
  }

  /** SHUTDOWN */
  async mainShutdown(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    this.s.state = { ...this.s.state, status: Status.SHUTDOWN };
    this.s.config.shutdown = true;
    this.s.persistConfig();
    setTimeout(() => this.s.shutdown(0), 200);
    return { hdr: rsp, data: EMPTY };
  }

  /** ENABLE_RECOVER, DISABLE_RECOVER */
  async mainSetRecoveryEnabled(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    this.s.state = { ...this.s.state, disableRecovery: req.opcode === Op.DISABLE_RECOVER };
    this.s.recovery?.poke();
    return { hdr: rsp, data: EMPTY };
  }

  /** COMPLETE_RECOVERY */
  async mainCompleteRecovery(req: Header, data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (data.length >= 80) await this.s.recovery?.onComplete(decodeNode(data), req.tgtEpoch);
    return { hdr: rsp, data: EMPTY };
  }

  /** REWEIGHT */
  async mainReweight(_req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    // Every node re-measures its capacity; a change of 1 % or more is announced (new epoch).
    if (this.s.opts.gateway) return { hdr: rsp, data: EMPTY };
    // Exact bytes, as upstream: auto vnodes are proportional to what each sheep announces.
    const space = this.s.store.statfs().free + this.s.store.objectBytes();
    const old = this.s.me.space;
    const diff = space > old ? space - old : old - space;
    if (old === 0n || diff * 100n >= old) {
      this.s.config.space = space;
      writeConfig(this.s.baseDir, this.s.config);
      void this.s.driver.updateNode({ ...this.s.me, space });
    }
    return { hdr: rsp, data: EMPTY };
  }

  /** ALTER_VDI_COPY */
  async mainAlterVdiCopy(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (req.b[26] !== 0) return { hdr: withResult(rsp, Res.INVALID_PARMS), data: EMPTY };
    const vid = req.b.readUInt32LE(20);
    const st = this.s.vdis.states.get(vid);
    if (st) st.nrCopies = req.b[24];
    // Same epoch, more (or fewer) owners: fetch what is now missing here.
    this.s.startRecovery(null);
    return { hdr: rsp, data: EMPTY };
  }

  /** NOTIFY_VDI_ADD */
  async mainNotifyVdiAdd(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    // vdi_state view (dog's farm load): old_vid 16, new_vid 20, copies 24, set_bitmap 25,
    // copy_policy 26, block_size_shift 27. A stored inode adds snapshot/deleted/parent.
    const vid = req.b.readUInt32LE(20);
    applyVdiAdded(this.s.vdis, {
      vid,
      oldVid: req.b.readUInt32LE(16),
      nrCopies: req.b[24],
      setBitmap: req.b[25] !== 0,
      copyPolicy: req.b[26],
      blockSizeShift: req.b[27],
      snapshot: false,
      deleted: false,
      parentVid: 0,
    });
    try {
      const ih = decodeInodeHeader(
        await this.s.metaIO.read(vidToVdiOid(vid), 0, SD_INODE_HEADER_SIZE),
      );
      if (ih.vdiId === vid) registerInode(this.s.vdis, ih);
    } catch { /* no inode yet: the header fields above are all there is */ }
    return { hdr: rsp, data: EMPTY };
  }

  /** ALTER_CLUSTER_COPY */
  async mainAlterClusterCopy(req: Header, _data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (req.clusterCopyPolicy !== 0) {
      return { hdr: withResult(rsp, Res.INVALID_PARMS), data: EMPTY };
    }
    this.s.state = { ...this.s.state, copies: req.clusterCopies };
    this.s.persistConfig();
    return { hdr: rsp, data: EMPTY };
  }

  newVdiWork(req: Header, data: Buffer): Promise<Reply> {
    return this.s.clusterWork(async () => {
      const rsp = new Header();
      rsp.opcode = req.opcode;
      const name = readFixedString(data, 0, 256);
      const r = await newVdi(this.s.metaIO, this.s.vdis, {
        name,
        size: req.vdiSize,
        baseVid: req.baseVdiId,
        snapshot: req.snapid !== 0,
        copies: req.vdiCopies,
        copyPolicy: req.vdiCopyPolicy,
        storePolicy: req.storePolicy,
        blockSizeShift: req.vdiBlockSizeShift,
        now: ctimeNow(),
      }, {
        copies: this.s.state.copies,
        copyPolicy: this.s.state.copyPolicy,
        blockSizeShift: this.s.state.blockSizeShift,
      });
      rsp.rspVdiId = r.vid;
      rsp.rspVdiCopies = r.nrCopies;
      rsp.rspVdiBlockSizeShift = r.blockSizeShift;
      return { hdr: rsp, data: EMPTY, apply: { type: "vdi-added", state: r.added } };
    });
  }

  delVdiWork(req: Header, data: Buffer): Promise<Reply> {
    return this.s.clusterWork(async () => {
      const rsp = new Header();
      rsp.opcode = req.opcode;
      const { name, opts } = vdiNameArgs(req, data);
      // A VDI attached for writing is not deleted under its user.
      const found = await lookupVdi(this.s.metaIO, this.s.vdis, name, opts);
      if (this.s.vdis.locks.has(found.vid)) {
        return { hdr: withResult(rsp, Res.VDI_LOCKED), data: EMPTY };
      }
      const vid = await deleteVdi(this.s.metaIO, this.s.vdis, name, opts);
      rsp.rspVdiId = vid;
      const recycled = await this.recycleWork(vid);
      return { hdr: rsp, data: EMPTY, apply: { type: "vdi-deleted", vid, recycled } };
    });
  }

  /**
   * RECYCLE_VID, in the DEL_VDI work phase: when the deleted VDI was the last live member of its
   * family, the family's inodes are removed on every replica while the cluster is still blocked,
   * so no create can be handed one of these VIDs before its old inode is gone.
   */
  private async recycleWork(vid: number): Promise<number[]> {
    if (!this.s.vdis.recycle) return [];
    const vids = recyclableAfterDelete(this.s.vdis, vid);
    for (const v of vids) await this.s.metaIO.remove!(vidToVdiOid(v));
    return vids;
  }

  /**
   * Takes the cluster-wide lock of a VDI for this sheep (exclusive attach). Serialized with every
   * other cluster operation, so two sheep can never both win.
   */
  lockVdi(name: string, opts: { tag?: string; snapid?: number }): Promise<Reply> {
    return this.s.clusterWork(async () => {
      const r = await lookupVdi(this.s.metaIO, this.s.vdis, name, opts);
      const rsp = vdiFound(new Header(), r);
      if (this.s.vdis.locks.has(r.vid)) {
        return { hdr: withResult(rsp, Res.VDI_LOCKED), data: EMPTY };
      }
      return {
        hdr: rsp,
        data: EMPTY,
        apply: { type: "lock", vid: r.vid, owner: nodeHostPort(this.s.me) },
      };
    });
  }

  releaseVdi(vid: number): Promise<Reply> {
    return this.s.clusterWork(() => {
      const rsp = new Header();
      rsp.rspVdiId = vid;
      if (!this.s.vdis.locks.has(vid)) return Promise.resolve({ hdr: rsp, data: EMPTY });
      return Promise.resolve({ hdr: rsp, data: EMPTY, apply: { type: "unlock", vid } as Apply });
    });
  }
}
