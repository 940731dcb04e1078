// The sheep daemon: listens for the Sheepdog protocol, runs the cluster state machine on the
// membership driver's totally ordered events, and serves object I/O as gateway and as peer.
import { emptyNodeStats, encodeNodeStats, requestDone, requestStarted } from "../core/node-stat.ts";
import type { NodeStats } from "../core/node-stat.ts";
import { cbor } from "../core/cbor.ts";
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import {
  ClusterFlag,
  EMPTY,
  Flag,
  FrameParser,
  Header,
  Op,
  ProtocolError,
  readFixedString,
  Res,
  SD_SHEEP_PROTO_VER,
  Status,
} from "../core/proto.ts";
import { errnoToRes, SdError } from "../core/errors.ts";
import type { SdNode } from "../core/node.ts";
import {
  decodeNode,
  decodeNodes,
  encodeNode,
  encodeNodes,
  makeNode,
  nodeEqual,
  nodeHostPort,
  nodeIp,
  sortNodes,
} from "../core/node.ts";
import { autoVnodes, Ring } from "../core/ring.ts";
import {
  dataOidToIdx,
  isAttrObj,
  isDataObj,
  isVdiObj,
  LEDGER_BIT,
  ledgerOid,
  oidToVid,
  SD_ATTR_OBJ_SIZE,
  SD_INODE_DATA_INDEX_OFFSET,
  SD_INODE_GREF_OFFSET,
  SD_INODE_HEADER_SIZE,
  SD_INODE_SIZE,
  vidToVdiOid,
} from "../core/oid.ts";
import type { ObjectStore } from "../io/store.ts";
import { openStore } from "../io/store.ts";
import {
  decodeEpochFile,
  epochFileBytes,
  latestEpoch,
  listEpochs,
  missingEpochs,
  readConfig,
  readEpoch,
  removeEpochs,
  writeConfig,
  writeEpoch,
} from "../io/config-file.ts";
import type { SheepConfig } from "../io/config-file.ts";
import type { ClusterState } from "../core/cluster.ts";
import {
  applyAccept,
  applyFormat,
  applyLeave,
  applyUpdateNode,
  decideJoin,
  decodeState,
  encodeState,
  initialState,
} from "../core/cluster.ts";
import { decodeInodeHeader, type InodeHeader } from "../core/inode.ts";
import {
  applyLedgerDecref,
  applyVdiAdded,
  applyVdiDeleted,
  decrefPlan,
  deleteVdi,
  forgetVdis,
  getVdiAttr,
  ledgerFromBuffer,
  ledgerToBuffer,
  lookupVdi,
  newVdi,
  recyclableAfterDelete,
  registerInode,
  VdiTable,
} from "../core/vdi.ts";
import type { MetaIO, VdiState } from "../core/vdi.ts";
import { ClientPool } from "../io/client.ts";
import { ctimeNow } from "../io/clock.ts";
import type { ClusterDriver } from "../drivers/driver.ts";
import { createDriver } from "../drivers/driver.ts";
import { Gateway } from "./gateway.ts";
import { RecoveryManager } from "./recovery.ts";
import type { SheepOptions } from "./options.ts";
import { Logger } from "./log.ts";

type Reply = { hdr: Header; data: Buffer };
/** What a work phase tells every node to apply in its main phase. */
type Apply =
  | { type: "vdi-added"; state: VdiState & { oldVid?: number } }
  | { type: "vdi-deleted"; vid: number; recycled?: number[] }
  | { type: "lock"; vid: number; owner: string }
  | { type: "unlock"; vid: number };
type WorkResult = Reply & { apply?: Apply };

/** Opcodes that run while the cluster is not OK (protocol.md §5.2). */
const FORCE_OPS = new Set<number>([
  Op.MAKE_FS,
  Op.SHUTDOWN,
  Op.FORCE_RECOVER,
  Op.CLEANUP,
  Op.NOTIFY_VDI_DEL,
  Op.NOTIFY_VDI_ADD,
  Op.COMPLETE_RECOVERY,
  Op.GET_STORE_LIST,
  Op.READ_VDIS,
  Op.READ_DEL_VDIS,
  Op.GET_VDI_COPIES,
  Op.GET_NODE_LIST,
  Op.STAT_CLUSTER,
  Op.KILL_NODE,
  Op.GET_LOGLEVEL,
  Op.SET_LOGLEVEL,
  Op.EXIST,
  Op.OIDS_EXIST,
  Op.CLUSTER_INFO,
  Op.GET_CLUSTER_DEFAULT,
  Op.GET_RECOVERY,
  Op.SET_RECOVERY,
  Op.GET_EPOCH,
  Op.GET_OBJ_LIST,
]);
const PEER_OPS = new Set<number>([
  Op.CREATE_AND_WRITE_PEER,
  Op.READ_PEER,
  Op.WRITE_PEER,
  Op.REMOVE_PEER,
  Op.DECREF_PEER,
]);

interface ClusterOpMsg {
  kind: "op";
  opId: string;
  req: Buffer;
  rsp: Buffer;
  data: Buffer;
  apply?: Apply;
}

export class Sheep {
  readonly log: Logger;
  readonly baseDir: string;
  me!: SdNode;
  state: ClusterState = initialState();
  members: SdNode[] = [];
  ring: Ring = new Ring([]);
  store!: ObjectStore;
  driver!: ClusterDriver;
  vdis = new VdiTable();
  readonly pool = new ClientPool();
  gateway!: Gateway;
  private config!: SheepConfig;
  private server: net.Server | null = null;
  private unixServer: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  private readonly pendingOps = new Map<string, (r: Reply) => void>();
  private readonly workQueue: Array<{ opId: string; run: () => Promise<WorkResult> }> = [];
  private epochWaiters: Array<() => void> = [];
  private joined = false;
  private joinWaiter: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private stopping = false;
  private recoveryThrottle = { max: 0, interval: 0 };
  private recoveryIntervalSet: bigint | null = null;
  private nbdServer: { close(): Promise<void> } | null = null;
  recovery!: RecoveryManager;
  private ringCache = new Map<number, Ring>();
  onExit: (code: number) => void = (code) => process.exit(code);

  constructor(readonly opts: SheepOptions) {
    this.baseDir = path.resolve(opts.baseDir);
    const logFile = path.join(opts.logDir ? path.resolve(opts.logDir) : this.baseDir, "sheep.log");
    this.log = new Logger(opts.logDst, logFile);
    this.log.level = opts.logLevel;
    if (opts.recovery) this.recoveryThrottle = { ...opts.recovery };
  }

  // ---------------------------------------------------------------- startup

  async start(): Promise<void> {
    fs.mkdirSync(this.baseDir, { recursive: true });
    fs.mkdirSync(path.join(this.baseDir, "epoch"), { recursive: true });
    this.lockBaseDir();
    const disks = this.objectDirs();
    for (const d of this.opts.objDirs) {
      if (fs.existsSync(path.join(d, "config")) && fs.existsSync(path.join(d, "epoch"))) {
        throw new Error(`${d} is meta-store, abort`);
      }
    }
    const cfg = readConfig(this.baseDir);
    this.config = cfg ?? {
      ctime: 0n,
      flags: 0,
      copies: 3,
      defaultStore: "plain",
      shutdown: false,
      copyPolicy: 0,
      blockSizeShift: 22,
      version: 6,
      space: 0n,
    };
    const storeKind = this.config.defaultStore === "tree" ? "tree" : "plain";
    this.store = openStore(storeKind, disks, { nosync: this.opts.nosync });
    await this.store.init();
    if (this.config.space === 0n && !this.opts.gateway) {
      this.config.space = announcedSpace(this.store.statfs().free);
    }
    writeConfig(this.baseDir, this.config);

    // Accepted so existing command lines keep working, but said out loud: neither exists here.
    if (this.opts.journal !== null) {
      this.log.warn(
        "-j (journal) is not implemented: every write is synced to its object file before it is acknowledged",
      );
      process.stderr.write(
        "sheep: warning: -j (journal) is not implemented; writes are synced directly\n",
      );
    }
    if (this.opts.cache !== null) {
      this.log.warn("-w (object cache) is not implemented (upstream removed it in 1.0)");
      process.stderr.write("sheep: warning: -w (object cache) is not implemented\n");
    }
    if (this.opts.directio) {
      this.log.warn(
        "-D (direct I/O) is not implemented: object files use the page cache and fsync",
      );
      process.stderr.write("sheep: warning: -D (direct I/O) is not implemented; using fsync\n");
    }
    await this.loadLocalState();
    await this.listen();

    const addr = this.opts.myAddr ??
      (this.opts.bindAddr && this.opts.bindAddr !== "0.0.0.0" && this.opts.bindAddr !== "::"
        ? this.opts.bindAddr
        : null);
    this.driver = await createDriver(this.opts.cluster);
    await this.driver.init(this.handlers());
    const ip = addr ?? this.driver.localAddr();
    this.me = makeNode(ip, this.opts.port, {
      zone: this.opts.zone ?? undefined,
      nrVnodes: this.opts.gateway ? 0 : (this.opts.vnodes ?? 128),
      space: this.opts.gateway ? 0n : this.config.space,
    });
    this.gateway = new Gateway({
      me: this.me,
      epoch: () => this.state.epoch,
      ring: () => this.ring,
      waitEpoch: (e, ms) => this.waitEpoch(e, ms),
      copiesFor: (oid, hint) => this.copiesFor(oid, hint),
      strict: () => (this.state.flags & ClusterFlag.STRICT) !== 0,
      pool: this.pool,
      local: { handlePeer: (h, d) => this.handlePeer(h, d) },
    });
    this.recovery = new RecoveryManager({
      me: this.me,
      log: this.log,
      store: () => this.store,
      epoch: () => this.state.epoch,
      ring: () => this.ring,
      nodes: () => this.state.nodes.filter((n) => n.nrVnodes > 0),
      ringOf: (e) => this.ringOf(e),
      copiesFor: (oid) => this.copiesFor(oid, 0),
      storedSize: (oid) => this.storedSize(oid),
      peer: (node, hdr) => this.sendTo(node, hdr),
      reportComplete: async (epoch) => {
        const h = Header.req(Op.COMPLETE_RECOVERY, { flags: Flag.CMD_WRITE, dataLength: 80 });
        h.tgtEpoch = epoch;
        const r = await this.clusterNotify(h, encodeNode(this.me));
        if (r.hdr.result !== Res.SUCCESS) throw new SdError(r.hdr.result);
      },
      disabled: () => this.state.disableRecovery,
      throttle: () => this.recoveryThrottle,
      freeBytes: () => this.store.statfs().free,
      clientLoad: () => this.clientRequests,
      installed: (oid, data) => {
        const h = inodeHeaderOf(oid, 0, data);
        if (h) registerInode(this.vdis, h);
      },
    });
    const joined = new Promise<void>((resolve, reject) => (this.joinWaiter = { resolve, reject }));
    await this.driver.join(this.me, encodeState(this.state));
    await joined;
    if (this.opts.nbd) await this.startNbd();
    if (this.opts.pidfile) fs.writeFileSync(this.opts.pidfile, `${process.pid}\n`);
    this.log.info(`sheep ${nodeHostPort(this.me)} started (store ${this.baseDir})`);
  }

  /** Object directories: the extra PATH entries (multi-disk), else `<base>/obj`. */
  private objectDirs(): string[] {
    return this.opts.objDirs.length
      ? this.opts.objDirs.map((d) => path.resolve(d))
      : [path.join(this.baseDir, "obj")];
  }

  /** One daemon per store directory: an exclusive lock file holding our pid. */
  private lockBaseDir(): void {
    const lock = path.join(this.baseDir, "lock");
    for (let i = 0; i < 2; i++) {
      try {
        const fd = fs.openSync(lock, "wx");
        fs.writeSync(fd, `${process.pid}\n`);
        fs.closeSync(fd);
        return;
      } catch (e) {
        if ((e as { code?: string }).code !== "EEXIST") throw e;
        const pid = Number(fs.readFileSync(lock, "utf8").trim());
        if (pid && pid !== process.pid && processAlive(pid)) {
          throw new Error(`another sheep daemon is using ${this.baseDir}`);
        }
        fs.rmSync(lock, { force: true });
      }
    }
    throw new Error(`cannot lock ${this.baseDir}`);
  }

  /** Rebuilds state from the local store: last epoch, VDI bitmaps and states from local inodes. */
  private async loadLocalState(): Promise<void> {
    const s = initialState();
    s.ctime = this.config.ctime;
    // An unformatted sheep advertises its vnode strategy; dog cluster format checks it.
    s.flags = this.config.ctime === 0n
      ? (this.opts.vnodes === null ? ClusterFlag.AUTO_VNODES : 0)
      : this.config.flags;
    s.copies = this.config.copies;
    s.copyPolicy = this.config.copyPolicy;
    s.blockSizeShift = this.config.blockSizeShift;
    s.store = this.config.defaultStore || "plain";
    const e = latestEpoch(this.baseDir);
    if (e > 0) {
      const rec = readEpoch(this.baseDir, e);
      if (rec) {
        s.epoch = e;
        s.nodes = rec.nodes;
      }
    }
    this.state = s;
    for (const oid of this.store.list()) {
      if (!isVdiObj(oid)) continue;
      try {
        registerInode(
          this.vdis,
          decodeInodeHeader(await this.store.read(oid, 0, SD_INODE_HEADER_SIZE)),
        );
      } catch (err) {
        this.log.warn(`cannot read inode ${oid.toString(16)}: ${(err as Error).message}`);
      }
    }
  }

  private listen(): Promise<void> {
    const onConn = (sock: net.Socket) => this.serveConnection(sock);
    const tcp = net.createServer({ noDelay: true } as net.ServerOpts, onConn);
    const host = this.opts.bindAddr ?? "0.0.0.0";
    const unixPath = path.join(this.baseDir, "sock");
    fs.rmSync(unixPath, { force: true });
    const unix = net.createServer(onConn);
    return new Promise((resolve, reject) => {
      tcp.once(
        "error",
        (e) =>
          reject(new Error(`cannot listen on ${host}:${this.opts.port}: ${(e as Error).message}`)),
      );
      tcp.listen(this.opts.port, host, () => {
        this.server = tcp;
        unix.on("error", (e) => this.log.warn(`unix socket: ${e.message}`));
        unix.listen(unixPath, () => {
          this.unixServer = unix;
          resolve();
        });
      });
    });
  }

  private async startNbd(): Promise<void> {
    const { startNbdServer } = await import("./nbd.ts");
    const { SheepExportProvider } = await import("./nbd-export.ts");
    const nbd = this.opts.nbd!;
    this.nbdServer = await startNbdServer({
      host: nbd.host,
      port: nbd.port,
      provider: new SheepExportProvider(this),
      log: (m: string) => this.log.info(`nbd: ${m}`),
    });
    this.log.info(`NBD server listening on ${nbd.host}:${nbd.port}`);
  }

  // ---------------------------------------------------------------- membership handlers

  private handlers() {
    return {
      join: (joining: SdNode, members: SdNode[], opaque: Buffer) => {
        const r = decideJoin(this.state, members, joining, decodeState(opaque));
        if (r.accept) return { accept: true, opaque: encodeState(r.state) };
        return {
          accept: false,
          opaque: Buffer.from(cbor.encode({ code: r.code, reason: r.reason })),
        };
      },
      accept: async (joined: SdNode, members: SdNode[], opaque: Buffer) => {
        const decided = decodeState(opaque);
        // Also true for a rejoin after a lost session: everything a joiner does is redone.
        const wasMe = nodeEqual(joined, this.me);
        const prevCtime = this.state.ctime;
        const myOldEpoch = this.state.epoch;
        const { state, newEpoch } = applyAccept(decided, members);
        this.members = sortNodes(members);
        if (
          wasMe && state.status === Status.OK &&
          !decided.nodes.some((n) => nodeEqual(n, this.me)) && myOldEpoch > 0
        ) {
          // Not in the cluster's last epoch: everything here may be outdated; keep it only as
          // stale copies of the epoch it belonged to (upstream's purge_obj).
          for (const oid of this.store.list()) {
            await this.store.moveToStale(oid, myOldEpoch).catch(() => {});
          }
        }
        const wasOk = this.state.status === Status.OK && this.joined;
        await this.setState(state, newEpoch);
        const filled = this.fillEpochLog();
        // Same epoch but the cluster (re)starts serving: objects may be missing after an unclean stop.
        if (state.status === Status.OK && !newEpoch && (wasMe || !wasOk)) this.startRecovery(null);
        if (wasMe) {
          this.joined = true;
          if (prevCtime !== state.ctime && state.ctime !== 0n) this.persistConfig();
          if (members.length > 1) await this.fetchVdiState(members);
          await filled;
          this.joinWaiter?.resolve();
        } else {
          void this.fetchVdiState([joined]);
        }
        this.log.info(
          `${
            nodeHostPort(joined)
          } joined; epoch ${this.state.epoch}, ${members.length} members, status ${this.state.status}`,
        );
      },
      rejected: (opaque: Buffer) => {
        let reason = "rejected";
        try {
          reason = cbor.decode(opaque).reason;
        } catch { /* keep default */ }
        this.joinWaiter?.reject(new Error(`failed to join the cluster: ${reason}`));
      },
      leave: async (left: SdNode, members: SdNode[]) => {
        this.members = sortNodes(members);
        // A dead holder cannot release its VDI locks: they go with it (upstream drops them too).
        for (const [vid, l] of this.vdis.locks) {
          if (l.owner === nodeHostPort(left)) this.vdis.locks.delete(vid);
        }
        const { state, newEpoch } = applyLeave(this.state, members);
        await this.setState(state, newEpoch);
        this.log.info(`${nodeHostPort(left)} left; epoch ${this.state.epoch}`);
      },
      notify: (sender: SdNode, msg: Buffer) => this.onNotify(sender, msg),
      block: (sender: SdNode) => {
        if (!nodeEqual(sender, this.me)) return false;
        const w = this.workQueue.shift();
        if (!w) {
          this.driver.unblock(Buffer.from(cbor.encode({ kind: "noop" })));
          return true;
        }
        w.run()
          .catch((e): WorkResult => {
            this.log.warn(`cluster operation failed: ${(e as Error).message}`);
            return errorReply(new Header(), e);
          })
          .then((r) =>
            this.driver.unblock(
              Buffer.from(
                cbor.encode({
                  kind: "op",
                  opId: w.opId,
                  req: EMPTY,
                  rsp: r.hdr.b,
                  data: r.data,
                  apply: r.apply,
                }),
              ),
            )
          );
        return true;
      },
      updateNode: async (node: SdNode, members: SdNode[]) => {
        this.members = sortNodes(members.map((m) => (nodeEqual(m, node) ? node : m)));
        if (nodeEqual(node, this.me)) this.me = node;
        const { state, newEpoch } = applyUpdateNode(this.state, node);
        await this.setState(state, newEpoch);
        this.log.info(
          `${
            nodeHostPort(node)
          } updated (vnodes ${node.nrVnodes}, space ${node.space}); epoch ${this.state.epoch}`,
        );
      },
      joinMessage: () => encodeState(this.state),
      fatal: (reason: string) => {
        this.log.emerg(`membership lost: ${reason}`);
        this.shutdown(1);
      },
    };
  }

  /** Installs a new cluster state; writes the epoch log when a new epoch begins. */
  private async setState(s: ClusterState, newEpoch: boolean): Promise<void> {
    const prevEpoch = this.state.epoch;
    this.state = s;
    if (newEpoch || (s.epoch > 0 && !readEpoch(this.baseDir, s.epoch) && s.ctime !== 0n)) {
      writeEpoch(this.baseDir, s.epoch, s.nodes, BigInt(Math.floor(Date.now() / 1000)));
    }
    this.vdis.recycle = (s.flags & ClusterFlag.RECYCLE_VID) !== 0;
    this.ring = new Ring(this.ringNodes(s.nodes));
    if (newEpoch && s.status === Status.OK && s.epoch > 1) {
      this.startRecovery(prevEpoch > 0 ? prevEpoch : null);
    }
    if (s.epoch !== prevEpoch) {
      const w = this.epochWaiters;
      this.epochWaiters = [];
      for (const f of w) f();
    }
  }

  private startRecovery(movedFrom: number | null): void {
    if (this.opts.gateway || !this.recovery) return;
    this.recovery.start(movedFrom);
  }

  private epochFill: Promise<void> = Promise.resolve();

  /**
   * The epoch log is complete on every node, as upstream's: epochs this sheep did not see (it was
   * down, or joined later) are copied from the members with GET_EPOCH, creation time included,
   * so `dog cluster info` lists the same history everywhere. Runs one at a time.
   */
  private fillEpochLog(): Promise<void> {
    const run = this.epochFill.then(async () => {
      if (this.state.ctime === 0n) return;
      for (const e of missingEpochs(this.baseDir, this.state.epoch)) {
        for (const n of this.members) {
          if (nodeEqual(n, this.me)) continue;
          try {
            const h = Header.req(Op.GET_EPOCH, { dataLength: 6144 * 80 + 8 });
            h.tgtEpoch = e;
            const r = await this.sendTo(n, h);
            if (r.hdr.result !== Res.SUCCESS) continue;
            const rec = decodeEpochFile(r.data);
            if (!readEpoch(this.baseDir, e)) writeEpoch(this.baseDir, e, rec.nodes, rec.time);
            break;
          } catch (err) {
            this.log.debug(`epoch ${e} from ${nodeHostPort(n)}: ${(err as Error).message}`);
          }
        }
      }
    });
    this.epochFill = run.catch(() => {});
    return this.epochFill;
  }

  /** Ring of an earlier epoch, from the local epoch log or, when missing, from a member. */
  private async ringOf(epoch: number): Promise<Ring | null> {
    const cached = this.ringCache.get(epoch);
    if (cached) return cached;
    let nodes = readEpoch(this.baseDir, epoch)?.nodes ?? null;
    if (!nodes) {
      for (const n of this.state.nodes) {
        if (nodeEqual(n, this.me)) continue;
        try {
          const h = Header.req(Op.GET_EPOCH, { dataLength: 6144 * 80 + 8 });
          h.tgtEpoch = epoch;
          const r = await this.sendTo(n, h);
          if (r.hdr.result !== Res.SUCCESS) continue;
          nodes = decodeNodes(r.data.subarray(0, r.data.length - 8));
          writeEpoch(this.baseDir, epoch, nodes, r.data.readBigInt64LE(r.data.length - 8));
          break;
        } catch { /* try the next member */ }
      }
    }
    if (!nodes) return null;
    const ring = new Ring(this.ringNodes(nodes));
    this.ringCache.set(epoch, ring);
    return ring;
  }

  /** One request to a peer (or to ourselves). */
  private async sendTo(node: SdNode, hdr: Header, data?: Buffer): Promise<Reply> {
    if (nodeEqual(node, this.me)) return await this.handle(hdr, data ?? EMPTY);
    const c = await this.pool.get(nodeIp(node), node.port);
    return await c.request(hdr, data);
  }

  private ringNodes(nodes: SdNode[]): SdNode[] {
    return this.state.flags & ClusterFlag.AUTO_VNODES ? autoVnodes(nodes) : nodes;
  }

  private persistConfig(): void {
    this.config = {
      ...this.config,
      ctime: this.state.ctime,
      flags: this.state.flags,
      copies: this.state.copies,
      copyPolicy: this.state.copyPolicy,
      blockSizeShift: this.state.blockSizeShift,
      defaultStore: this.state.store,
    };
    writeConfig(this.baseDir, this.config);
  }

  waitEpoch(epoch: number, ms: number): Promise<void> {
    if (this.state.epoch > epoch) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.epochWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /** Copies of inodes this node is creating, before the operation commits their VDI state. */
  private readonly pendingCopies = new Map<number, number>();

  private copiesFor(oid: bigint, hint: number): number {
    const vid = oidToVid(oid);
    const st = this.vdis.states.get(vid);
    if (st && st.nrCopies) return st.nrCopies;
    return this.pendingCopies.get(vid) || hint || this.state.copies || 3;
  }

  /**
   * VDI bitmaps and states are merged from other members (upstream: GET_VDI_COPIES): a joiner asks
   * every member, and members ask the joiner, so after a full restart everyone knows every VDI
   * even when its inode is not stored locally.
   */
  private async fetchVdiState(from: SdNode[]): Promise<void> {
    await Promise.all(
      from.filter((n) => !nodeEqual(n, this.me)).map(async (n) => {
        try {
          const c = await this.pool.get(nodeIp(n), n.port);
          const inuse = await c.request(Header.req(Op.READ_VDIS, { dataLength: 2097152 }));
          const del = await c.request(Header.req(Op.READ_DEL_VDIS, { dataLength: 2097152 }));
          const st = await c.request(Header.req(Op.GET_VDI_COPIES, { dataLength: 1428 * 65536 }));
          if (inuse.hdr.result || del.hdr.result || st.hdr.result) return;
          mergeVdiState(this.vdis, inuse.data, del.data, st.data);
        } catch (e) {
          this.log.debug(`vdi state from ${nodeHostPort(n)}: ${(e as Error).message}`);
        }
      }),
    );
  }

  // ---------------------------------------------------------------- cluster operations

  /** A cluster op with a work phase: serialized cluster-wide with block/unblock. */
  private clusterWork(run: () => Promise<WorkResult>): Promise<Reply> {
    const opId = randomBytes(8).toString("hex");
    return new Promise((resolve) => {
      this.pendingOps.set(opId, resolve);
      this.workQueue.push({ opId, run });
      this.driver.block();
    });
  }

  /** A cluster op without work phase: broadcast; every node applies it in order. */
  private clusterNotify(req: Header, data: Buffer): Promise<Reply> {
    const opId = randomBytes(8).toString("hex");
    return new Promise((resolve) => {
      this.pendingOps.set(opId, resolve);
      const rsp = new Header();
      this.driver.notify(
        Buffer.from(cbor.encode({ kind: "op", opId, req: req.b, rsp: rsp.b, data })),
      );
    });
  }

  private async onNotify(sender: SdNode, msg: Buffer): Promise<void> {
    let m: ClusterOpMsg | { kind: string };
    try {
      m = cbor.decode(msg);
    } catch {
      return;
    }
    if (m.kind !== "op") return;
    const op = m as ClusterOpMsg;
    let rsp = new Header(Buffer.from(op.rsp));
    let data: Buffer = Buffer.from(op.data ?? EMPTY);
    if (op.req && op.req.length === 48) {
      // notify-type op: main phase on every node
      try {
        const r = await this.mainPhase(new Header(Buffer.from(op.req)), data, sender);
        rsp = r.hdr;
        data = r.data;
      } catch (e) {
        rsp = errorReply(new Header(Buffer.from(op.req)), e).hdr;
      }
    } else if (op.apply) {
      this.applyWorkResult(op.apply);
    }
    const done = this.pendingOps.get(op.opId);
    if (done) {
      this.pendingOps.delete(op.opId);
      done({ hdr: rsp, data });
    }
  }

  /** Every node learns what a work phase did (NEW_VDI / DEL_VDI) in the same order. */
  private applyWorkResult(a: Apply): void {
    if (a.type === "vdi-added") {
      applyVdiAdded(this.vdis, a.state);
      this.pendingCopies.delete(a.state.vid);
    } else if (a.type === "vdi-deleted") {
      applyVdiDeleted(this.vdis, a.vid);
      if (a.recycled?.length) this.applyRecycled(a.recycled);
    } else if (a.type === "lock") this.vdis.locks.set(a.vid, { owner: a.owner });
    else this.vdis.locks.delete(a.vid);
  }

  private async mainPhase(req: Header, data: Buffer, _sender: SdNode): Promise<Reply> {
    const rsp = new Header();
    switch (req.opcode) {
      case Op.MAKE_FS: {
        const storeName = readFixedString(data, 0, data.length).trim() || "plain";
        if (storeName !== "plain" && storeName !== "tree") {
          return { hdr: withResult(rsp, Res.NO_STORE), data: EMPTY };
        }
        await this.store.format();
        if (this.store.kind !== storeName) {
          this.store = openStore(storeName, this.objectDirs(), { nosync: this.opts.nosync });
          await this.store.init();
        }
        this.vdis = new VdiTable();
        removeEpochs(this.baseDir);
        const s = applyFormat(this.state, this.members, {
          ctime: req.clusterCtime,
          copies: req.clusterCopies,
          copyPolicy: req.clusterCopyPolicy,
          flags: req.clusterFlags,
          blockSizeShift: req.clusterBlockSizeShift,
          store: storeName,
        });
        this.state = { ...s, epoch: 0 };
        await this.setState(s, true);
        this.config.shutdown = false;
        this.persistConfig();
        return { hdr: rsp, data: EMPTY };
      }
      case Op.SHUTDOWN: {
        this.state = { ...this.state, status: Status.SHUTDOWN };
        this.config.shutdown = true;
        this.persistConfig();
        setTimeout(() => this.shutdown(0), 200);
        return { hdr: rsp, data: EMPTY };
      }
      case Op.ENABLE_RECOVER:
      case Op.DISABLE_RECOVER:
        this.state = { ...this.state, disableRecovery: req.opcode === Op.DISABLE_RECOVER };
        this.recovery?.poke();
        return { hdr: rsp, data: EMPTY };
      case Op.COMPLETE_RECOVERY:
        if (data.length >= 80) await this.recovery?.onComplete(decodeNode(data), req.tgtEpoch);
        return { hdr: rsp, data: EMPTY };
      case Op.REWEIGHT: {
        // Every node re-measures its capacity; a change of 1 % or more is announced (new epoch).
        if (this.opts.gateway) return { hdr: rsp, data: EMPTY };
        const space = announcedSpace(this.store.statfs().free + this.store.objectBytes());
        const old = this.me.space;
        const diff = space > old ? space - old : old - space;
        if (old === 0n || diff * 100n >= old) {
          this.config.space = space;
          writeConfig(this.baseDir, this.config);
          void this.driver.updateNode({ ...this.me, space });
        }
        return { hdr: rsp, data: EMPTY };
      }
      case Op.ALTER_VDI_COPY: {
        if (req.b[26] !== 0) return { hdr: withResult(rsp, Res.INVALID_PARMS), data: EMPTY };
        const vid = req.b.readUInt32LE(20);
        const st = this.vdis.states.get(vid);
        if (st) st.nrCopies = req.b[24];
        // Same epoch, more (or fewer) owners: fetch what is now missing here.
        this.startRecovery(null);
        return { hdr: rsp, data: EMPTY };
      }
      case Op.ALTER_CLUSTER_COPY:
        if (req.clusterCopyPolicy !== 0) {
          return { hdr: withResult(rsp, Res.INVALID_PARMS), data: EMPTY };
        }
        this.state = { ...this.state, copies: req.clusterCopies };
        this.persistConfig();
        return { hdr: rsp, data: EMPTY };
      default:
        return { hdr: withResult(rsp, Res.INVALID_PARMS), data: EMPTY };
    }
  }

  /** Object I/O for VDI metadata work, through the gateway (replicated). */
  readonly metaIO: MetaIO = {
    read: async (oid, offset, length) => {
      const h = Header.req(Op.READ_OBJ, { dataLength: length });
      h.oid = oid;
      h.offset = offset;
      const r = await this.gateway.read(h);
      return r.data.length >= length
        ? r.data
        : Buffer.concat([r.data, Buffer.alloc(length - r.data.length)]);
    },
    create: async (oid, data, offset = 0) => {
      const h = Header.req(Op.CREATE_AND_WRITE_OBJ, {
        flags: Flag.CMD_WRITE,
        dataLength: data.length,
      });
      h.oid = oid;
      h.offset = offset;
      // A new inode lives on as many nodes as its header says, from its first byte on.
      const ih = inodeHeaderOf(oid, offset, data);
      if (ih) {
        const copies = ih.nrCopies;
        if (copies) {
          this.pendingCopies.set(oidToVid(oid), copies);
          h.objCopies = copies;
        }
      }
      await this.gateway.writeAll(h, data);
    },
    write: async (oid, offset, data) => {
      const h = Header.req(Op.WRITE_OBJ, { flags: Flag.CMD_WRITE, dataLength: data.length });
      h.oid = oid;
      h.offset = offset;
      await this.gateway.writeAll(h, data);
    },
    remove: async (oid) => {
      const h = Header.req(Op.REMOVE_OBJ);
      h.oid = oid;
      await this.gateway.writeAll(h, EMPTY).catch((e) => {
        if (!(e instanceof SdError && e.code === Res.NO_OBJ)) throw e;
      });
    },
  };

  private newVdiWork(req: Header, data: Buffer): Promise<Reply> {
    return this.clusterWork(async () => {
      const rsp = new Header();
      rsp.opcode = req.opcode;
      const name = readFixedString(data, 0, 256);
      const r = await newVdi(this.metaIO, this.vdis, {
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
        copies: this.state.copies,
        copyPolicy: this.state.copyPolicy,
        blockSizeShift: this.state.blockSizeShift,
      });
      rsp.rspVdiId = r.vid;
      rsp.rspVdiCopies = r.nrCopies;
      rsp.rspVdiBlockSizeShift = r.blockSizeShift;
      return { hdr: rsp, data: EMPTY, apply: { type: "vdi-added", state: r.added } };
    });
  }

  private delVdiWork(req: Header, data: Buffer): Promise<Reply> {
    return this.clusterWork(async () => {
      const rsp = new Header();
      rsp.opcode = req.opcode;
      const { name, opts } = vdiNameArgs(req, data);
      // A VDI attached for writing is not deleted under its user.
      const found = await lookupVdi(this.metaIO, this.vdis, name, opts);
      if (this.vdis.locks.has(found.vid)) {
        return { hdr: withResult(rsp, Res.VDI_LOCKED), data: EMPTY };
      }
      const vid = await deleteVdi(this.metaIO, this.vdis, name, opts);
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
    if (!this.vdis.recycle) return [];
    const vids = recyclableAfterDelete(this.vdis, vid);
    for (const v of vids) await this.metaIO.remove!(vidToVdiOid(v));
    return vids;
  }

  /** Every node forgets recycled VIDs and drops what it still stores of them (leftovers). */
  private applyRecycled(vids: number[]): void {
    forgetVdis(this.vdis, vids);
    const gone = new Set(vids);
    const oids = this.store.list().filter((oid) => gone.has(oidToVid(oid)));
    void (async () => {
      for (const oid of oids) {
        await this.store.remove(oid).catch(() => {});
        for (let k = 0; k < 16; k++) {
          if (this.store.exists(oid, k)) await this.store.remove(oid, k).catch(() => {});
        }
      }
    })();
    this.log.info(`recycled VIDs ${vids.map((v) => v.toString(16)).join(" ")}`);
  }

  /**
   * Takes the cluster-wide lock of a VDI for this sheep (exclusive attach). Serialized with every
   * other cluster operation, so two sheep can never both win.
   */
  lockVdi(name: string, opts: { tag?: string; snapid?: number }): Promise<Reply> {
    return this.clusterWork(async () => {
      const r = await lookupVdi(this.metaIO, this.vdis, name, opts);
      const rsp = vdiFound(new Header(), r);
      if (this.vdis.locks.has(r.vid)) return { hdr: withResult(rsp, Res.VDI_LOCKED), data: EMPTY };
      return {
        hdr: rsp,
        data: EMPTY,
        apply: { type: "lock", vid: r.vid, owner: nodeHostPort(this.me) },
      };
    });
  }

  releaseVdi(vid: number): Promise<Reply> {
    return this.clusterWork(() => {
      const rsp = new Header();
      rsp.rspVdiId = vid;
      if (!this.vdis.locks.has(vid)) return Promise.resolve({ hdr: rsp, data: EMPTY });
      return Promise.resolve({ hdr: rsp, data: EMPTY, apply: { type: "unlock", vid } as Apply });
    });
  }

  // ---------------------------------------------------------------- request dispatch

  private serveConnection(sock: net.Socket): void {
    this.sockets.add(sock);
    sock.setNoDelay(true);
    const parser = new FrameParser("request");
    let inflight = 0;
    const send = (r: Reply) => {
      if (sock.destroyed) return;
      r.hdr.dataLength = r.data.length;
      if (r.data.length) {
        sock.cork();
        sock.write(r.hdr.b);
        sock.write(r.data);
        sock.uncork();
      } else sock.write(r.hdr.b);
    };
    sock.on("data", (chunk: Buffer) => {
      let frames;
      try {
        frames = parser.push(chunk);
      } catch (e) {
        this.log.warn(
          `bad request stream from ${sock.remoteAddress ?? "unix"}: ${
            (e as ProtocolError).message
          }`,
        );
        sock.destroy();
        return;
      }
      for (const f of frames) {
        inflight++;
        // Bounded memory: stop reading while many requests are being served.
        if (inflight > 64) sock.pause();
        this.handle(f.hdr, f.data)
          .catch((e) => errorReply(f.hdr, e))
          .then((r) => {
            r.hdr.opcode = f.hdr.opcode;
            r.hdr.id = f.hdr.id;
            r.hdr.epoch = this.state.epoch;
            send(r);
            inflight--;
            if (inflight <= 32 && sock.isPaused()) sock.resume();
          });
      }
    });
    sock.on("error", () => {});
    sock.on("close", () => this.sockets.delete(sock));
  }

  /** Requests in progress other than recovery's own (recovery yields to them). */
  private clientRequests = 0;

  /** `dog node stat` counters: every request that reaches handle() (sockets and NBD). */
  readonly stats: NodeStats = emptyNodeStats();

  async handle(req: Header, data: Buffer): Promise<Reply> {
    const counted = !(req.flags & Flag.CMD_RECOVERY) && req.opcode !== Op.GET_OBJ_LIST &&
      req.opcode !== Op.STAT_RECOVERY;
    if (counted) this.clientRequests++;
    const started = requestStarted(this.stats, req.opcode, data.length);
    let txBytes = 0;
    try {
      const r = await this.handleCounted(req, data);
      txBytes = r.data.length;
      return r;
    } finally {
      if (counted) this.clientRequests--;
      if (started) requestDone(this.stats, started, txBytes);
    }
  }

  private async handleCounted(req: Header, data: Buffer): Promise<Reply> {
    const op = req.opcode;
    if (op >= 0x80 && req.protoVer !== SD_SHEEP_PROTO_VER) {
      return errorReply(req, new SdError(Res.VER_MISMATCH));
    }
    if (op < 0x80 && req.protoVer > 0x02) return errorReply(req, new SdError(Res.VER_MISMATCH));
    if (this.state.status === Status.KILLED) return errorReply(req, new SdError(Res.KILLED));
    if (this.state.status === Status.SHUTDOWN) return errorReply(req, new SdError(Res.SHUTDOWN));
    if (!FORCE_OPS.has(op) && !(PEER_OPS.has(op) && req.flags & Flag.CMD_RECOVERY)) {
      if (this.state.status !== Status.OK || !this.joined) {
        return errorReply(
          req,
          new SdError(this.state.ctime === 0n ? Res.WAIT_FOR_FORMAT : Res.WAIT_FOR_JOIN),
        );
      }
    }
    if (PEER_OPS.has(op) || op === Op.GET_HASH) return this.handlePeer(req, data);
    return this.handleGatewayOrLocal(req, data);
  }

  private async handleGatewayOrLocal(req: Header, data: Buffer): Promise<Reply> {
    const rsp = new Header();
    switch (req.opcode) {
      case Op.READ_OBJ:
        return await this.gateway.read(req);
      case Op.CREATE_AND_WRITE_OBJ:
        return await this.gwCreate(req, data);
      case Op.WRITE_OBJ:
        return await this.gwWrite(req, data);
      case Op.REMOVE_OBJ:
        return await this.gateway.writeAll(req, EMPTY);
      case Op.DISCARD_OBJ: {
        // Dropping a data object = writing 0 into its inode slot; the inode write path reclaims it.
        const h = Header.req(Op.WRITE_OBJ, { flags: Flag.CMD_WRITE, dataLength: 4 });
        h.oid = vidToVdiOid(oidToVid(req.oid));
        h.offset = SD_INODE_DATA_INDEX_OFFSET + 4 * dataOidToIdx(req.oid);
        await this.gwWrite(h, Buffer.alloc(4)).catch(() => {});
        return { hdr: rsp, data: EMPTY };
      }
      case Op.NEW_VDI:
        if (data.length !== 256) return errorReply(req, new SdError(Res.INVALID_PARMS));
        return await this.newVdiWork(req, data);
      case Op.DEL_VDI:
        if (data.length !== 256 && data.length !== 512) {
          return errorReply(req, new SdError(Res.INVALID_PARMS));
        }
        return await this.delVdiWork(req, data);
      case Op.LOCK_VDI:
      case Op.GET_VDI_INFO: {
        if (data.length !== 256 && data.length !== 512) {
          return errorReply(req, new SdError(Res.INVALID_PARMS));
        }
        const { name, opts } = vdiNameArgs(req, data);
        // Without the cluster flag USE_LOCK a LOCK_VDI is only a lookup (upstream).
        if (req.opcode === Op.LOCK_VDI && this.state.flags & ClusterFlag.USE_LOCK) {
          return await this.lockVdi(name, opts);
        }
        return {
          hdr: vdiFound(rsp, await lookupVdi(this.metaIO, this.vdis, name, opts)),
          data: EMPTY,
        };
      }
      case Op.RELEASE_VDI:
        if (this.vdis.locks.has(req.baseVdiId)) await this.releaseVdi(req.baseVdiId);
        return { hdr: rsp, data: EMPTY };
      case Op.GET_VDI_ATTR: {
        if (data.length < 784) return errorReply(req, new SdError(Res.INVALID_PARMS));
        return await this.clusterWork(async () => {
          const h = new Header();
          // The VDI must exist; its create_time goes into the attribute (upstream).
          const name = readFixedString(data, 0, 256);
          const tag = readFixedString(data, 256, 256);
          const snapid = data.readUInt32LE(520) || req.snapid;
          const v = await lookupVdi(this.metaIO, this.vdis, name, {
            tag: tag || undefined,
            snapid: snapid || undefined,
          });
          const a = await getVdiAttr(this.metaIO, this.vdis, data, {
            creat: !!(req.flags & Flag.CMD_CREAT),
            excl: !!(req.flags & Flag.CMD_EXCL),
            del: !!(req.flags & Flag.CMD_DEL),
          }, v.header.createTime);
          h.rspVdiId = a.vid;
          h.rspAttrId = a.attrId;
          return { hdr: h, data: EMPTY };
        });
      }
      case Op.READ_VDIS:
        if (req.dataLength !== 2097152) return errorReply(req, new SdError(Res.INVALID_PARMS));
        return { hdr: rsp, data: this.vdis.inuse.toBuffer() };
      case Op.READ_DEL_VDIS:
        if (req.dataLength !== 2097152) return errorReply(req, new SdError(Res.INVALID_PARMS));
        return { hdr: rsp, data: this.vdis.deleted.toBuffer() };
      case Op.GET_VDI_COPIES: {
        if (this.vdis.states.size * 1428 > req.dataLength) {
          return errorReply(req, new SdError(Res.BUFFER_SMALL));
        }
        return { hdr: rsp, data: encodeVdiStates(this.vdis, this.members) };
      }
      case Op.FLUSH_VDI:
        return errorReply(req, new SdError(Res.INVALID_PARMS));
      case Op.GET_CLUSTER_DEFAULT:
        rsp.defNrCopies = this.state.copies;
        rsp.defCopyPolicy = this.state.copyPolicy;
        rsp.defBlockSizeShift = this.state.blockSizeShift;
        return { hdr: rsp, data: EMPTY };
      case Op.GET_NODE_LIST: {
        const nodes = this.nodeList();
        rsp.rspNrNodes = nodes.length;
        const buf = encodeNodes(nodes);
        return {
          hdr: rsp,
          data: buf.subarray(0, Math.min(buf.length, req.dataLength || buf.length)),
        };
      }
      case Op.MAKE_FS:
      case Op.SHUTDOWN:
      case Op.REWEIGHT:
      case Op.ALTER_VDI_COPY:
      case Op.ENABLE_RECOVER:
      case Op.DISABLE_RECOVER:
      case Op.ALTER_CLUSTER_COPY:
        return await this.clusterNotify(req, data);
      case Op.STAT_SHEEP: {
        if (this.opts.gateway) return { hdr: rsp, data: EMPTY };
        const st = this.store.statfs();
        rsp.storeSize = st.size;
        rsp.storeFree = st.free;
        return { hdr: rsp, data: EMPTY };
      }
      case Op.STAT_CLUSTER:
        return this.statCluster(req);
      case Op.CLUSTER_INFO:
        return { hdr: rsp, data: this.clusterInfoBytes().subarray(0, req.dataLength || undefined) };
      case Op.GET_STORE_LIST:
        return { hdr: rsp, data: Buffer.from("tree plain ") }; // upstream's registration order
      case Op.STAT_RECOVERY: {
        const st = this.recovery.status();
        const b = Buffer.alloc(24);
        b[0] = st.inRecovery ? 1 : 0;
        b.writeUInt32LE(st.state, 4);
        b.writeBigUInt64LE(BigInt(st.finished), 8);
        b.writeBigUInt64LE(BigInt(st.total), 16);
        return { hdr: rsp, data: b };
      }
      case Op.FLUSH_DEL_CACHE:
      case Op.DELETE_CACHE:
      case Op.CLEANUP:
      case Op.NOTIFY_VDI_DEL:
        return { hdr: rsp, data: EMPTY };
      case Op.KILL_NODE:
        setTimeout(() => this.shutdown(0, true), 10);
        return { hdr: rsp, data: EMPTY };
      case Op.GET_EPOCH: {
        const rec = readEpoch(this.baseDir, req.tgtEpoch);
        if (!rec) return errorReply(req, new SdError(Res.NO_TAG));
        const b = epochFileBytes(rec.nodes, rec.time);
        if (req.dataLength && b.length > req.dataLength) {
          return errorReply(req, new SdError(Res.BUFFER_SMALL));
        }
        return { hdr: rsp, data: b };
      }
      case Op.GET_OBJ_LIST: {
        // Stale copies count: they are what a new owner recovers from.
        const b = encodeOids(
          new Set([...this.store.list(), ...this.store.listStale().map((x) => x.oid)]),
        );
        if (b.length > req.dataLength) return errorReply(req, new SdError(Res.BUFFER_SMALL));
        return { hdr: rsp, data: b };
      }
      case Op.REPAIR_REPLICA: {
        // Fetch the object from the named node and store it here (dog vdi check).
        const addr = req.b.subarray(24, 40);
        const port = req.b.readUInt16LE(40);
        const src = makeNode("127.0.0.1", port);
        addr.copy(src.addr);
        const size = this.storedSize(req.oid);
        const rq = Header.req(Op.READ_PEER, { flags: Flag.CMD_RECOVERY, dataLength: size });
        rq.oid = req.oid;
        rq.epoch = this.state.epoch;
        rq.tgtEpoch = this.state.epoch;
        const r = await this.sendTo(src, rq);
        if (r.hdr.result !== Res.SUCCESS) return errorReply(req, new SdError(r.hdr.result));
        await this.store.createAndWrite(req.oid, 0, r.data, size);
        return { hdr: rsp, data: EMPTY };
      }
      case Op.EXIST:
        return {
          hdr: withResult(rsp, this.store.verify(req.oid) ? Res.SUCCESS : Res.NO_OBJ),
          data: EMPTY,
        };
      case Op.OIDS_EXIST: {
        const missing: bigint[] = [];
        for (let i = 0; i + 8 <= data.length; i += 8) {
          const oid = data.readBigUInt64LE(i);
          if (!this.store.verify(oid)) missing.push(oid);
        }
        return {
          hdr: withResult(rsp, missing.length ? Res.NO_OBJ : Res.SUCCESS),
          data: encodeOids(missing),
        };
      }
      case Op.GET_LOGLEVEL: {
        const b = Buffer.alloc(4);
        b.writeInt32LE(this.log.level);
        return { hdr: rsp, data: b };
      }
      case Op.SET_LOGLEVEL: {
        const lv = data.length >= 4 ? data.readInt32LE(0) : -1;
        if (lv < 0 || lv > 7) return errorReply(req, new SdError(Res.INVALID_PARMS));
        this.log.level = lv;
        return { hdr: rsp, data: EMPTY };
      }
      case Op.GET_RECOVERY: {
        const b = Buffer.alloc(24);
        b.writeUInt32LE(this.recoveryThrottle.max, 0);
        b.writeBigUInt64LE(this.recoveryIntervalSet ?? BigInt(this.recoveryThrottle.interval), 8);
        b[16] = this.recoveryThrottle.max > 0 && this.recoveryThrottle.interval > 0 ? 1 : 0;
        return { hdr: rsp, data: b };
      }
      case Op.SET_RECOVERY: {
        if (data.length < 16) return errorReply(req, new SdError(Res.INVALID_PARMS));
        // Reported back exactly as set (a u64); waited for at most what a timer can hold.
        this.recoveryIntervalSet = data.readBigUInt64LE(8);
        this.recoveryThrottle = {
          max: data.readUInt32LE(0),
          interval: Number(
            this.recoveryIntervalSet > 0x7fffffffn ? 0x7fffffffn : this.recoveryIntervalSet,
          ),
        };
        this.recovery.poke();
        return { hdr: rsp, data: EMPTY };
      }
      case Op.MD_INFO: {
        if (req.dataLength !== 263688) return errorReply(req, new SdError(Res.INVALID_PARMS));
        const b = Buffer.alloc(263688);
        const disks = this.opts.gateway ? [] : this.store.diskInfo().slice(0, 64);
        disks.forEach((d, i) => {
          const o = i * 4120;
          b.writeInt32LE(i, o);
          b.writeBigUInt64LE(d.free, o + 8);
          b.writeBigUInt64LE(d.used, o + 16);
          b.write(d.path, o + 24, 4095, "utf8");
        });
        b.writeInt32LE(disks.length, 263680);
        return { hdr: rsp, data: b };
      }
      case Op.SET_VNODES: {
        if (this.opts.gateway) return errorReply(req, new SdError(Res.GATEWAY_MODE));
        if (this.state.flags & ClusterFlag.AUTO_VNODES) {
          return errorReply(req, new SdError(Res.INVALID_VNODES_STRATEGY));
        }
        const v = data.length >= 4 ? data.readInt32LE(0) : 0;
        if (v < 1 || v > 65535) return errorReply(req, new SdError(Res.INVALID_PARMS));
        await this.driver.updateNode({ ...this.me, nrVnodes: v });
        return { hdr: rsp, data: EMPTY };
      }
      case Op.GET_VNODES: {
        const b = Buffer.alloc(4);
        b.writeInt32LE(this.me.nrVnodes);
        return { hdr: rsp, data: b };
      }
      case Op.STAT:
        return { hdr: rsp, data: encodeNodeStats(this.stats) };
      default:
        return errorReply(req, new SdError(Res.INVALID_PARMS));
    }
  }

  private nodeList(): SdNode[] {
    return this.state.status === Status.OK
      ? this.ringNodes(this.state.nodes)
      : this.ringNodes(this.members);
  }

  /** Data objects of snapshots are read-only. */
  private checkWritable(oid: bigint): void {
    if (!isDataObj(oid)) return;
    const st = this.vdis.states.get(oidToVid(oid));
    if (st?.snapshot) throw new SdError(Res.READONLY);
  }

  private async gwCreate(req: Header, data: Buffer): Promise<Reply> {
    this.checkWritable(req.oid);
    if (req.flags & Flag.CMD_COW) {
      // Copy-on-write: seed the new object from cow_oid, overlay the payload, create it whole.
      const objSize = this.objectSize(req.oid);
      let full: Buffer;
      if (req.offset === 0 && data.length === objSize) full = data;
      else {
        const rh = Header.req(Op.READ_OBJ, { dataLength: objSize });
        rh.oid = req.cowOid;
        const base = await this.gateway.read(rh);
        full = Buffer.alloc(objSize);
        base.data.copy(full, 0, 0, Math.min(objSize, base.data.length));
        data.copy(full, req.offset);
      }
      const h = req.clone();
      h.flags = (h.flags & ~Flag.CMD_COW) | Flag.CMD_WRITE;
      h.offset = 0;
      h.dataLength = full.length;
      h.cowOid = 0n;
      return await this.gateway.writeAll(h, full);
    }
    return await this.gateway.writeAll(req, data);
  }

  /**
   * Writes to an inode's data_vdi_id range drop references to the objects they replace
   * (protocol.md §9.4): an object referenced by nobody else (gref {0,0}) is removed at once.
   */
  private async gwWrite(req: Header, data: Buffer): Promise<Reply> {
    this.checkWritable(req.oid);
    const oid = req.oid;
    const start = req.offset;
    const end = start + data.length;
    if (!isVdiObj(oid) || end <= SD_INODE_DATA_INDEX_OFFSET || start >= SD_INODE_GREF_OFFSET) {
      return await this.gateway.writeAll(req, data);
    }
    // Hyper volumes keep a B-tree root there, not flat slots: no reference counting (upstream).
    const storePolicy = (await this.metaIO.read(oid, 553, 1))[0];
    if (storePolicy !== 0) return await this.gateway.writeAll(req, data);
    const s = Math.max(start, SD_INODE_DATA_INDEX_OFFSET);
    const e = Math.min(end, SD_INODE_GREF_OFFSET);
    const firstIdx = Math.floor((s - SD_INODE_DATA_INDEX_OFFSET) / 4);
    const lastIdx = Math.ceil((e - SD_INODE_DATA_INDEX_OFFSET) / 4);
    const n = lastIdx - firstIdx;
    const old = await this.metaIO.read(oid, SD_INODE_DATA_INDEX_OFFSET + firstIdx * 4, n * 4);
    // Filling empty slots (every new object) replaces nothing: no counts to read or drop.
    if (old.every((b) => b === 0)) return await this.gateway.writeAll(req, data);
    const gref = await this.metaIO.read(oid, SD_INODE_GREF_OFFSET + firstIdx * 8, n * 8);
    const r = await this.gateway.writeAll(req, data);
    // Slot-aligned writes carry the new slots; anything else is read back.
    const aligned = start >= SD_INODE_DATA_INDEX_OFFSET && end <= SD_INODE_GREF_OFFSET &&
      (start - SD_INODE_DATA_INDEX_OFFSET) % 4 === 0 && data.length % 4 === 0;
    const now = aligned
      ? data
      : await this.metaIO.read(oid, SD_INODE_DATA_INDEX_OFFSET + firstIdx * 4, n * 4);
    const plan = decrefPlan(firstIdx, old, gref, now);
    if (plan.decrefs.length && !plan.gref.equals(gref)) {
      await this.metaIO.write(oid, SD_INODE_GREF_OFFSET + firstIdx * 8, plan.gref);
    }
    const drops = plan.decrefs.map((d) =>
      this.decref(d.oid, d.generation, d.count).catch((err) =>
        this.log.warn(`decref ${d.oid.toString(16)}: ${err.message}`)
      )
    );
    await Promise.all(drops);
    return r;
  }

  /** Drops one reference to a data object (generational reference counting, §9.4). */
  private async decref(dataOid: bigint, gen: number, count: number): Promise<void> {
    if (gen === 0 && count === 0) {
      const h = Header.req(Op.REMOVE_OBJ);
      h.oid = dataOid;
      await this.gateway.writeAll(h, EMPTY).catch((e) => {
        if (!(e instanceof SdError && e.code === Res.NO_OBJ)) throw e;
      });
      return;
    }
    const h = Header.req(Op.DECREF_OBJ);
    h.oid = ledgerOid(dataOid);
    h.b.writeUInt32LE(gen, 24);
    h.b.writeUInt32LE(count, 28);
    await this.gateway.writeAll(h, EMPTY);
  }

  private objectSize(oid: bigint): number {
    const st = this.vdis.states.get(oidToVid(oid));
    return 1 << (st?.blockSizeShift || this.state.blockSizeShift || 22);
  }

  // ---------------------------------------------------------------- peer ops (local store)

  async handlePeer(req: Header, data: Buffer): Promise<Reply> {
    const rsp = new Header();
    if (req.opcode !== Op.GET_HASH && !(req.flags & Flag.CMD_RECOVERY)) {
      if (req.epoch < this.state.epoch) {
        return { hdr: withResult(rsp, Res.OLD_NODE_VER), data: EMPTY };
      }
      if (req.epoch > this.state.epoch) {
        await this.waitEpoch(req.epoch - 1, 5000);
        if (req.epoch > this.state.epoch) {
          return { hdr: withResult(rsp, Res.NEW_NODE_VER), data: EMPTY };
        }
      }
    }
    if (this.opts.gateway) return { hdr: withResult(rsp, Res.NO_OBJ), data: EMPTY };
    try {
      switch (req.opcode) {
        case Op.READ_PEER: {
          if (req.flags & Flag.CMD_RECOVERY) {
            if (this.store.exists(req.oid)) {
              return { hdr: rsp, data: await this.store.read(req.oid, req.offset, req.dataLength) };
            }
            return {
              hdr: rsp,
              data: await this.store.readStale(req.oid, req.tgtEpoch, req.offset, req.dataLength),
            };
          }
          if (!this.store.exists(req.oid)) await this.recovery.ensure(req.oid);
          const d = await this.store.read(
            req.oid,
            req.offset,
            req.dataLength,
            req.ecIndex || undefined,
          );
          return { hdr: rsp, data: d };
        }
        case Op.CREATE_AND_WRITE_PEER: {
          await this.store.createAndWrite(
            req.oid,
            req.offset,
            data,
            this.storedSize(req.oid),
            req.ecIndex || undefined,
          );
          const ih = inodeHeaderOf(req.oid, req.offset, data);
          if (ih) registerInode(this.vdis, ih);
          return { hdr: rsp, data: EMPTY };
        }
        case Op.WRITE_PEER:
          if (!this.store.exists(req.oid)) await this.recovery.ensure(req.oid);
          await this.store.write(req.oid, req.offset, data, req.ecIndex || undefined);
          return { hdr: rsp, data: EMPTY };
        case Op.REMOVE_PEER:
          await this.store.remove(req.oid, req.ecIndex || undefined);
          return { hdr: rsp, data: EMPTY };
        case Op.GET_HASH: {
          if (!this.store.verify(req.oid)) return { hdr: withResult(rsp, Res.NO_OBJ), data: EMPTY };
          const { createHash } = await import("node:crypto");
          const size = this.storedSize(req.oid);
          const d = await this.store.read(req.oid, 0, size);
          const digest = createHash("sha1").update(d).digest();
          digest.copy(rsp.b, 24);
          return { hdr: rsp, data: EMPTY };
        }
        case Op.DECREF_PEER:
          await this.decrefPeer(req.oid, req.b.readUInt32LE(24), req.b.readUInt32LE(28));
          return { hdr: rsp, data: EMPTY };
        default:
          return { hdr: withResult(rsp, Res.INVALID_PARMS), data: EMPTY };
      }
    } catch (e) {
      return { hdr: withResult(rsp, e instanceof SdError ? e.code : errnoToRes(e)), data: EMPTY };
    }
  }

  private readonly ledgerLocks = new Map<bigint, Promise<void>>();

  /**
   * One replica's share of a DECREF (protocol.md §9.4): update the ledger; when no generation
   * references the data object any more, drop the ledger, and the first holder of the ledger
   * removes the data object from the cluster.
   */
  private decrefPeer(ledger: bigint, gen: number, count: number): Promise<void> {
    const prev = this.ledgerLocks.get(ledger) ?? Promise.resolve();
    const next = prev.catch(() => {}).then(async () => {
      const size = 4 * 1024 * 1024;
      const cur = this.store.exists(ledger)
        ? ledgerFromBuffer(await this.store.read(ledger, 0, size))
        : null;
      const r = applyLedgerDecref(cur, gen, count);
      if (!r.empty) {
        await this.store.createAndWrite(ledger, 0, ledgerToBuffer(r.ledger), size);
        return;
      }
      if (cur) await this.store.remove(ledger).catch(() => {});
      const first = this.ring.placeObject(ledger, this.copiesFor(ledger, 0))[0];
      if (first && nodeEqual(first, this.me)) {
        const h = Header.req(Op.REMOVE_OBJ);
        h.oid = ledger & ~LEDGER_BIT;
        void this.gateway.writeAll(h, EMPTY).catch((e) =>
          this.log.warn(`reclaim ${h.oid.toString(16)}: ${(e as Error).message}`)
        );
      }
    });
    this.ledgerLocks.set(ledger, next);
    void next.finally(() => {
      if (this.ledgerLocks.get(ledger) === next) this.ledgerLocks.delete(ledger);
    });
    return next;
  }

  storedSize(oid: bigint): number {
    if (isVdiObj(oid)) return SD_INODE_SIZE;
    if (isAttrObj(oid)) return SD_ATTR_OBJ_SIZE;
    return this.objectSize(oid);
  }

  // ---------------------------------------------------------------- cluster info replies

  private statCluster(req: Header): Reply {
    const rsp = new Header();
    const nodesNr = req.nodesNr;
    const recSize = 48 + nodesNr * 80;
    const epochs = listEpochs(this.baseDir).sort((a, b) => b - a);
    const out: Buffer[] = [];
    let result: number = Res.SUCCESS;
    if (this.state.ctime === 0n) result = Res.WAIT_FOR_FORMAT;
    else if (this.state.status === Status.WAIT) result = Res.WAIT_FOR_JOIN;
    else if (this.state.status === Status.SHUTDOWN) result = Res.SHUTDOWN;
    for (let i = 0; i < epochs.length; i++) {
      if ((out.length + 1) * recSize > req.dataLength) break;
      const e = epochs[i];
      const rec = readEpoch(this.baseDir, e);
      if (!rec) continue;
      if (rec.nodes.length > nodesNr) {
        return { hdr: withResult(rsp, Res.BUFFER_SMALL), data: EMPTY };
      }
      const b = Buffer.alloc(recSize);
      if (i === 0) {
        b.writeBigUInt64LE(this.state.ctime, 0);
        b[24] = this.state.disableRecovery ? 1 : 0;
        b[25] = this.state.copies;
        b[26] = this.state.copyPolicy;
        b.writeUInt16LE(this.state.flags, 30);
        b.write(this.state.store, 32, 15, "utf8");
      }
      b.writeBigUInt64LE(rec.time, 8);
      b.writeUInt32LE(e, 16);
      b.writeUInt32LE(rec.nodes.length, 20);
      rec.nodes.forEach((n, k) => encodeNode(n, b, 48 + k * 80));
      out.push(b);
    }
    if (out.length === 0 && this.state.ctime !== 0n) {
      const b = Buffer.alloc(recSize);
      b.writeBigUInt64LE(this.state.ctime, 0);
      out.push(b);
    }
    return { hdr: withResult(rsp, result), data: Buffer.concat(out) };
  }

  private clusterInfoBytes(): Buffer {
    const nodes = this.state.nodes;
    const b = Buffer.alloc(48 + 6144 * 80);
    b[0] = SD_SHEEP_PROTO_VER;
    b[1] = this.state.disableRecovery ? 1 : 0;
    b.writeInt16LE(nodes.length, 2);
    b.writeUInt32LE(this.state.epoch, 4);
    b.writeBigUInt64LE(this.state.ctime, 8);
    b.writeUInt16LE(this.state.flags, 16);
    b[18] = this.state.copies;
    b[19] = this.state.copyPolicy;
    b[20] = this.state.status;
    b[21] = this.state.blockSizeShift;
    b.write(this.state.store, 25, 15, "utf8");
    nodes.forEach((n, i) => encodeNode(n, b, 48 + i * 80));
    return b;
  }

  // ---------------------------------------------------------------- shutdown

  async shutdown(code: number, killed = false): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (killed) this.state = { ...this.state, status: Status.KILLED };
    this.log.info(`shutting down (${killed ? "killed" : "exit"})`);
    try {
      await Promise.race([this.driver?.leave(), new Promise((r) => setTimeout(r, 1500))]);
      await this.driver?.close();
    } catch { /* exiting anyway */ }
    this.server?.close();
    this.unixServer?.close();
    await this.nbdServer?.close().catch(() => {});
    for (const s of this.sockets) s.destroy();
    this.pool.close();
    fs.rmSync(path.join(this.baseDir, "lock"), { force: true });
    if (this.opts.pidfile) fs.rmSync(this.opts.pidfile, { force: true });
    this.onExit(code);
  }
}

/** GET_VDI_COPIES payload: vdi_state records of 1428 bytes (protocol.md §13.5). */
function encodeVdiStates(t: VdiTable, nodes: SdNode[]): Buffer {
  const states = [...t.states.values()];
  const b = Buffer.alloc(states.length * 1428);
  states.forEach((s, i) => {
    const o = i * 1428;
    b.writeUInt32LE(s.vid, o);
    b[o + 4] = s.nrCopies;
    b[o + 5] = s.snapshot ? 1 : 0;
    b[o + 6] = s.deleted ? 1 : 0;
    b[o + 7] = s.copyPolicy;
    b[o + 8] = s.blockSizeShift;
    b.writeUInt32LE(s.parentVid, o + 12);
    const lock = t.locks.get(s.vid);
    b.writeUInt32LE(lock ? 2 : 1, o + 16);
    const owner = lock && nodes.find((n) => nodeHostPort(n) === lock.owner);
    if (owner) encodeNode(owner).copy(b, o + 20, 24, 64);
  });
  return b;
}

/** A joining node merges what a member knows about VDIs into its own table. */
function mergeVdiState(t: VdiTable, inuse: Buffer, deleted: Buffer, states: Buffer): void {
  t.inuse.merge(inuse);
  t.deleted.merge(deleted);
  for (let o = 0; o + 1428 <= states.length; o += 1428) {
    const vid = states.readUInt32LE(o);
    t.states.set(vid, {
      vid,
      nrCopies: states[o + 4],
      snapshot: states[o + 5] !== 0,
      deleted: states[o + 6] !== 0,
      copyPolicy: states[o + 7],
      blockSizeShift: states[o + 8],
      parentVid: states.readUInt32LE(o + 12),
    });
    if (states.readUInt32LE(o + 16) === 2) {
      const owner = decodeNode(
        Buffer.concat([Buffer.alloc(24), states.subarray(o + 20, o + 60), Buffer.alloc(16)]),
      );
      t.locks.set(vid, { owner: nodeHostPort(owner) });
    }
  }
}

/** Capacity is announced in whole GiB: sheep sharing a filesystem measure its free space a moment
 * apart, and auto vnodes (128 x space / average) would otherwise differ (127, 129). */
function announcedSpace(bytes: bigint): bigint {
  const gib = 1n << 30n;
  return bytes >= gib ? (bytes / gib) * gib : bytes;
}

/** The inode header carried by a write that starts an inode object, else null. */
function inodeHeaderOf(oid: bigint, offset: number, data: Buffer): InodeHeader | null {
  return isVdiObj(oid) && offset === 0 && data.length >= SD_INODE_HEADER_SIZE
    ? decodeInodeHeader(data)
    : null;
}

/** name[256] or name[256] + tag[256] payload plus the header's snapid (VDI lookups). */
function vdiNameArgs(
  req: Header,
  data: Buffer,
): { name: string; opts: { tag?: string; snapid?: number } } {
  const tag = data.length >= 512 ? readFixedString(data, 256, 256) : "";
  return {
    name: readFixedString(data, 0, 256),
    opts: { tag: tag || undefined, snapid: req.snapid || undefined },
  };
}

/** Reply fields of a VDI lookup (GET_VDI_INFO, LOCK_VDI). */
function vdiFound(h: Header, r: { vid: number; nrCopies: number; blockSizeShift: number }): Header {
  h.rspVdiId = r.vid;
  h.rspVdiCopies = r.nrCopies;
  h.rspVdiBlockSizeShift = r.blockSizeShift;
  return h;
}

/** u64 LE oid array (GET_OBJ_LIST, OIDS_EXIST replies). */
function encodeOids(oids: Iterable<bigint>): Buffer {
  const list = [...oids];
  const b = Buffer.alloc(list.length * 8);
  list.forEach((o, i) => b.writeBigUInt64LE(o, i * 8));
  return b;
}

function withResult(h: Header, code: number): Header {
  h.result = code;
  return h;
}

export function errorReply(_req: Header, e: unknown): Reply {
  const h = new Header();
  h.result = e instanceof SdError ? e.code : errnoToRes(e);
  return { hdr: h, data: EMPTY };
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    // A zombie still answers kill(0); /proc tells the truth.
    const st = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^\d+ \(.*\) Z/.test(st);
  } catch {
    return false;
  }
}
