// The sheep daemon: listens for the Sheepdog protocol, runs the cluster state machine on the
// membership driver's totally ordered events, and serves object I/O as gateway and as peer.
import { decodeVdiStates, LockState, VDI_STATE_SIZE } from "../core/payloads.ts";
import { emptyNodeStats, requestDone, requestStarted } from "../core/node-stat.ts";
import type { NodeStats } from "../core/node-stat.ts";
import { cbor } from "../core/cbor.ts";
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import {
  ClusterFlag,
  EMPTY,
  Flag,
  FrameParser,
  Header,
  Op,
  ProtocolError,
  Res,
  SD_SHEEP_PROTO_VER,
  Status,
} from "../core/proto.ts";
import { SdError } from "../core/errors.ts";
import type { SdNode } from "../core/node.ts";
import {
  decodeNodes,
  encodeNode,
  makeNode,
  nodeEqual,
  nodeHostPort,
  nodeIp,
  sortNodes,
} from "../core/node.ts";
import { autoVnodes, Ring } from "../core/ring.ts";
import {
  isAttrObj,
  isVdiObj,
  oidToVid,
  SD_ATTR_OBJ_SIZE,
  SD_INODE_HEADER_SIZE,
  SD_INODE_SIZE,
} from "../core/oid.ts";
import type { ObjectStore } from "../io/store.ts";
import { openStore } from "../io/store.ts";
import { powerLossStore } from "../io/powerloss-store.ts";
import {
  decodeEpochFile,
  latestEpoch,
  missingEpochs,
  readConfig,
  readEpoch,
  writeConfig,
  writeEpoch,
} from "../io/config-file.ts";
import type { SheepConfig } from "../io/config-file.ts";
import type { ClusterState } from "../core/cluster.ts";
import {
  applyAccept,
  applyLeave,
  applyUpdateNode,
  decideJoin,
  decodeState,
  encodeState,
  initialState,
} from "../core/cluster.ts";
import { decodeInodeHeader } from "../core/inode.ts";
import {
  applyVdiAdded,
  applyVdiDeleted,
  forgetVdis,
  registerInode,
  VdiTable,
} from "../core/vdi.ts";
import type { MetaIO } from "../core/vdi.ts";
import { ClientPool } from "../io/client.ts";
import type { ClusterDriver } from "../drivers/driver.ts";
import { createDriver } from "../drivers/driver.ts";
import { LocalOps } from "./ops/local.ts";
import { ClusterOps } from "./ops/cluster.ts";
import { OP_TABLE, type OpFamilies } from "./ops/table.ts";
import {
  announcedSpace,
  type Apply,
  errorReply,
  inodeHeaderOf,
  type Reply,
  withResult,
  type WorkResult,
} from "./ops/reply.ts";
import { GatewayOps } from "./ops/gateway.ts";
import { ClusterOpQueue } from "./cluster-queue.ts";
import { PeerOps } from "./ops/peer.ts";
import { Gateway } from "./gateway.ts";
import { ecPolicyToDp, isErasureOid } from "../core/ec.ts";
import { EcRecovery } from "./ec-recovery.ts";
import { RecoveryManager } from "./recovery.ts";
import type { SheepOptions } from "./options.ts";
import { Logger } from "./log.ts";

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
  config!: SheepConfig;
  private server: net.Server | null = null;
  private unixServer: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  private readonly clusterQueue = new ClusterOpQueue({
    driver: () => this.driver,
    log: () => this.log,
    mainPhase: (req, data, sender) => this.mainPhase(req, data, sender),
    applyWorkResult: (a) => this.applyWorkResult(a),
  });
  private epochWaiters: Array<() => void> = [];
  private joined = false;
  private joinWaiter: { resolve: () => void; reject: (e: Error) => void } | null = null;
  private stopping = false;
  recoveryThrottle = { max: 0, interval: 0 };
  /** SET_RECOVERY's interval as set (a u64), reported back exactly by GET_RECOVERY. */
  recoveryIntervalSet: bigint | null = null;
  private nbdServer: { close(): Promise<void> } | null = null;
  /** Set by sheep/http.ts (--http): each request handle() served, and each NBD command. */
  requestHook: ((opcode: number, ms: number, result: number) => void) | null = null;
  nbdHook: ((cmd: number, ms: number, bytes: number, ok: boolean) => void) | null = null;
  private httpServer: { close(): Promise<void> } | null = null;
  recovery!: RecoveryManager;
  ecRecovery?: EcRecovery;
  private ringCache = new Map<number, Ring>();
  private readonly peerOps = new PeerOps(this);
  /** The op families the op table (ops/table.ts) dispatches to. */
  readonly ops: OpFamilies = {
    gateway: new GatewayOps(this),
    peer: this.peerOps,
    local: new LocalOps(this),
    cluster: new ClusterOps(this),
  };
  onExit: (code: number) => void = (code) => process.exit(code);

  constructor(readonly opts: SheepOptions) {
    this.baseDir = path.resolve(opts.baseDir);
    const logFile = path.join(opts.logDir ? path.resolve(opts.logDir) : this.baseDir, "sheep.log");
    this.log = new Logger(opts.logDst, logFile);
    this.log.format = opts.logFormat;
    this.log.port = opts.port;
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
    // powerLossStore is the store itself unless the test-only SHEEPDOG_TEST_POWERLOSS=1 is set.
    this.store = powerLossStore(openStore(storeKind, disks, { nosync: this.opts.nosync }), [
      this.baseDir,
      ...disks,
    ]);
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
    // Before joining: a port in use fails the start before we join, and /healthz says "joining".
    if (this.opts.http) this.httpServer = await (await import("./http.ts")).startHttp(this);

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
      ecPolicy: (oid, hint) => this.ecPolicyOf(oid, hint),
      storedSize: (oid, hint) => this.storedSize(oid, hint),
      log: (m) => this.log.warn(m),
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
      ec: this.ecRecovery = new EcRecovery({
        me: this.me,
        store: () => this.store,
        ring: () => this.ring,
        copiesFor: (oid) => this.copiesFor(oid, 0),
        policyOf: (oid) => this.ecPolicyOf(oid),
        stripSize: (oid) => this.storedSize(oid),
        peer: (node, hdr) => this.sendTo(node, hdr),
        epoch: () => this.state.epoch,
      }),
    });
    const joined = new Promise<void>((resolve, reject) => (this.joinWaiter = { resolve, reject }));
    await this.driver.join(this.me, encodeState(this.state));
    await joined;
    if (this.opts.nbd) await this.startNbd();
    if (this.opts.pidfile) fs.writeFileSync(this.opts.pidfile, `${process.pid}\n`);
    this.log.info(`sheep ${nodeHostPort(this.me)} started (store ${this.baseDir})`);
  }

  /** Object directories: the extra PATH entries (multi-disk), else `<base>/obj`. */
  objectDirs(): string[] {
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
      onCommand: this.nbdHook ?? undefined,
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
            await this.store.moveToStale(oid, myOldEpoch).catch((e) =>
              this.log.warn(`keeping ${oid.toString(16)} as stale: ${(e as Error).message}`)
            );
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
      notify: (sender: SdNode, msg: Buffer) => this.clusterQueue.onNotify(sender, msg),
      block: (sender: SdNode) => nodeEqual(sender, this.me) && this.clusterQueue.runNext(),
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
  async setState(s: ClusterState, newEpoch: boolean): Promise<void> {
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

  startRecovery(movedFrom: number | null): void {
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
  async sendTo(node: SdNode, hdr: Header, data?: Buffer): Promise<Reply> {
    if (nodeEqual(node, this.me)) return await this.handle(hdr, data ?? EMPTY);
    const c = await this.pool.get(nodeIp(node), node.port);
    return await c.request(hdr, data);
  }

  private ringNodes(nodes: SdNode[]): SdNode[] {
    return this.state.flags & ClusterFlag.AUTO_VNODES ? autoVnodes(nodes) : nodes;
  }

  persistConfig(): void {
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

  copiesFor(oid: bigint, hint: number): number {
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
          const st = await c.request(
            Header.req(Op.GET_VDI_COPIES, { dataLength: VDI_STATE_SIZE * 65536 }),
          );
          if (inuse.hdr.result || del.hdr.result || st.hdr.result) return;
          mergeVdiState(this.vdis, inuse.data, del.data, st.data);
        } catch (e) {
          this.log.debug(`vdi state from ${nodeHostPort(n)}: ${(e as Error).message}`);
        }
      }),
    );
  }

  // ---------------------------------------------------------------- cluster operations

  /** A cluster op with a work phase, serialized cluster-wide (cluster-queue.ts). */
  clusterWork(run: () => Promise<WorkResult>): Promise<Reply> {
    return this.clusterQueue.work(run);
  }

  /** A cluster op without work phase: broadcast; every node runs its main phase in order. */
  clusterNotify(req: Header, data: Buffer): Promise<Reply> {
    return this.clusterQueue.notify(req, data);
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

  /** The main phase of a broadcast cluster op, on every sheep in the total order. */
  private async mainPhase(req: Header, data: Buffer, _sender: SdNode): Promise<Reply> {
    const main = OP_TABLE.get(req.opcode)?.main;
    if (!main) return { hdr: withResult(new Header(), Res.INVALID_PARMS), data: EMPTY };
    return await main(this.ops, req, data);
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

  /** Every node forgets recycled VIDs and drops what it still stores of them (leftovers). */
  private applyRecycled(vids: number[]): void {
    forgetVdis(this.vdis, vids);
    const gone = new Set(vids);
    const oids = this.store.list().filter((oid) => gone.has(oidToVid(oid)));
    void (async () => {
      for (const oid of oids) {
        await this.store.remove(oid).catch((e) => this.logDrop("remove", oid, e));
        for (let k = 0; k < 16; k++) {
          if (this.store.exists(oid, k)) {
            await this.store.remove(oid, k).catch((e) => this.logDrop("remove", oid, e));
          }
        }
      }
    })();
    this.log.info(`recycled VIDs ${vids.map((v) => v.toString(16)).join(" ")}`);
  }

  /** Takes the cluster-wide lock of a VDI for this sheep (the NBD export's exclusive attach). */
  lockVdi(name: string, opts: { tag?: string; snapid?: number }): Promise<Reply> {
    return this.ops.cluster.lockVdi(name, opts);
  }

  releaseVdi(vid: number): Promise<Reply> {
    return this.ops.cluster.releaseVdi(vid);
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
    const t0 = this.requestHook ? performance.now() : 0;
    let result: number = Res.SUCCESS;
    try {
      const r = await this.handleCounted(req, data);
      txBytes = r.data.length;
      result = r.hdr.result;
      return r;
    } catch (e) {
      result = errorReply(req, e).hdr.result; // what the caller will answer
      throw e;
    } finally {
      if (counted) this.clientRequests--;
      if (started) requestDone(this.stats, started, txBytes);
      this.requestHook?.(req.opcode, performance.now() - t0, result);
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
    const row = OP_TABLE.get(op);
    const forced = row?.force || (row?.kind === "peer" && req.flags & Flag.CMD_RECOVERY);
    if (!forced) {
      if (this.state.status !== Status.OK || !this.joined) {
        return errorReply(
          req,
          new SdError(this.state.ctime === 0n ? Res.WAIT_FOR_FORMAT : Res.WAIT_FOR_JOIN),
        );
      }
    }
    if (!row?.run) return errorReply(req, new SdError(Res.INVALID_PARMS));
    return await row.run(this.ops, req, data);
  }

  nodeList(): SdNode[] {
    return this.state.status === Status.OK
      ? this.ringNodes(this.state.nodes)
      : this.ringNodes(this.members);
  }

  objectSize(oid: bigint): number {
    const st = this.vdis.states.get(oidToVid(oid));
    return 1 << (st?.blockSizeShift || this.state.blockSizeShift || 22);
  }

  // ---------------------------------------------------------------- peer ops (local store)

  /** EC policy of a striped object (0: replicated), from the request or the VDI's state. */
  ecPolicyOf(oid: bigint, hint = 0): number {
    const policy = hint || this.vdis.states.get(oidToVid(oid))?.copyPolicy || 0;
    return isErasureOid(oid, policy) ? policy : 0;
  }

  /** Peer opcodes on this node's store (sheep/ops/peer.ts). */
  handlePeer(req: Header, data: Buffer): Promise<Reply> {
    return this.peerOps.handle(req, data);
  }

  /** Size of the file holding `oid` here: a strip file of an EC object is 1/d of the object. */
  storedSize(oid: bigint, policyHint = 0): number {
    if (isVdiObj(oid)) return SD_INODE_SIZE;
    if (isAttrObj(oid)) return SD_ATTR_OBJ_SIZE;
    const policy = this.ecPolicyOf(oid, policyHint);
    if (policy) return this.objectSize(oid) / ecPolicyToDp(policy).d;
    return this.objectSize(oid);
  }

  /** A best-effort cleanup that failed: worth a line in the log, not a failure. */
  private logDrop(what: string, oid: bigint, e: unknown): void {
    this.log.warn(`${what} ${oid.toString(16)}: ${(e as Error)?.message ?? e}`);
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
    await this.nbdServer?.close().catch((e) => this.log.warn(`closing NBD: ${e}`));
    await this.httpServer?.close().catch((e) => this.log.warn(`closing HTTP: ${e}`));
    for (const s of this.sockets) s.destroy();
    this.pool.close();
    fs.rmSync(path.join(this.baseDir, "lock"), { force: true });
    if (this.opts.pidfile) fs.rmSync(this.opts.pidfile, { force: true });
    this.onExit(code);
  }
}

/** A joining node merges what a member knows about VDIs into its own table. */
function mergeVdiState(t: VdiTable, inuse: Buffer, deleted: Buffer, states: Buffer): void {
  t.inuse.merge(inuse);
  t.deleted.merge(deleted);
  for (const r of decodeVdiStates(states)) {
    t.states.set(r.vid, {
      vid: r.vid,
      nrCopies: r.nrCopies,
      snapshot: r.snapshot,
      deleted: r.deleted,
      copyPolicy: r.copyPolicy,
      blockSizeShift: r.blockSizeShift,
      parentVid: r.parentVid,
    });
    if (r.lockState === LockState.LOCKED && r.lockOwner) {
      t.locks.set(r.vid, { owner: nodeHostPort(r.lockOwner) });
    }
  }
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
