// The sheep daemon: listens for the Sheepdog protocol, runs the cluster state machine on the
// membership driver's totally ordered events, and serves object I/O as gateway and as peer.
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
  Header,
  Op,
  Res,
  SD_SHEEP_PROTO_VER,
  Status,
} from "../core/proto.ts";
import { SdError } from "../core/errors.ts";
import type { SdNode } from "../core/node.ts";
import { makeNode, nodeEqual, nodeHostPort, nodeIp, sortNodes } from "../core/node.ts";
import { autoVnodes, Ring } from "../core/ring.ts";
import {
  isAttrObj,
  isVdiObj,
  oidToVid,
  SD_ATTR_OBJ_SIZE,
  SD_INODE_HEADER_SIZE,
  SD_INODE_SIZE,
  vidToVdiOid,
} from "../core/oid.ts";
import type { ObjectStore } from "../io/store.ts";
import type { Scrubber } from "./scrub.ts";
import { makeScrubber, openFileStore, openJournal } from "./store-setup.ts";
import { Journal } from "../io/journal.ts";
import { installPowerLossShim } from "../io/powerloss-store.ts";
import {
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
import { applyVdiAdded, applyVdiDeleted, registerInode, VdiTable } from "../core/vdi.ts";
import type { MetaIO } from "../core/vdi.ts";
import { ClientPool } from "../io/client.ts";
import type { ClusterDriver } from "../drivers/driver.ts";
import { createDriver } from "../drivers/driver.ts";
import { LocalOps } from "./ops/local.ts";
import { ClusterOps } from "./ops/cluster.ts";
import { OP_TABLE, type OpFamilies } from "./ops/table.ts";
import {
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
import { makeGateway, makeRecovery } from "./io-wiring.ts";
import { Isolation } from "./isolation.ts";
import { lockBaseDir } from "./base-dir-lock.ts";
import { listenProtocol } from "./protocol-server.ts";
import { applyRecycled, fetchVdiState, type VdiStatePort } from "./vdi-state-sync.ts";
import { adoptIdentity, vnodesDesignationError } from "./cluster-identity.ts";
import { fetchEpoch } from "./epoch-log.ts";

const nowSeconds = (): bigint => BigInt(Math.floor(Date.now() / 1000));
import { ObjectCache } from "./object-cache.ts";
import { CacheCoherence } from "./cache-coherence.ts";
import type { WriteRun } from "../core/write-runs.ts";

export class Sheep {
  readonly log: Logger;
  readonly baseDir: string;
  me!: SdNode;
  state: ClusterState = initialState();
  members: SdNode[] = [];
  ring: Ring = new Ring([]);
  store!: ObjectStore;
  /** The file store under the journal (the same as `store` without -j): disk events come from it. */
  rawStore: ObjectStore | null = null;
  /** -j: the write journal (io/journal.ts), null without it. */
  journal: Journal | null = null;
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
  scrub!: Scrubber;
  ecRecovery?: EcRecovery;
  private ringCache = new Map<number, Ring>();
  private readonly peerOps = new PeerOps(this);
  /** `sheep -w` (sheep/object-cache.ts); coherence runs with or without a cache of our own. */
  cache: ObjectCache | null = null;
  readonly coherence = new CacheCoherence(this);
  /** The op families the op table (ops/table.ts) dispatches to. */
  readonly ops: OpFamilies = {
    gateway: new GatewayOps(this),
    peer: this.peerOps,
    local: new LocalOps(this),
    cluster: new ClusterOps(this),
  };
  onExit: (code: number) => void = (code) => process.exit(code);

  /** Cut off from the membership engine: client I/O held (sheep/isolation.ts). */
  isolation!: Isolation;

  constructor(readonly opts: SheepOptions) {
    this.baseDir = path.resolve(opts.baseDir);
    const logFile = path.join(opts.logDir ? path.resolve(opts.logDir) : this.baseDir, "sheep.log");
    this.log = new Logger(opts.logDst, logFile);
    this.isolation = new Isolation(this.log);
    this.log.format = opts.logFormat;
    this.log.port = opts.port;
    this.log.level = opts.logLevel;
    if (opts.recovery) this.recoveryThrottle = { ...opts.recovery };
  }

  // ---------------------------------------------------------------- startup

  async start(): Promise<void> {
    fs.mkdirSync(this.baseDir, { recursive: true });
    fs.mkdirSync(path.join(this.baseDir, "epoch"), { recursive: true });
    lockBaseDir(this.baseDir);
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
    const designation = vnodesDesignationError(this.config, this.opts);
    if (designation) {
      this.log.err(designation);
      throw new Error(designation);
    }
    const storeKind = this.config.defaultStore === "tree" ? "tree" : "plain";
    // Nothing unless the test-only SHEEPDOG_TEST_POWERLOSS=1 is set (io/powerloss-store.ts).
    installPowerLossShim([this.baseDir, ...disks]);
    const raw = await openFileStore(this, storeKind, disks);
    this.store = await openJournal(this, raw, disks);
    if (this.config.space === 0n && !this.opts.gateway) {
      this.config.space = this.store.statfs().free; // measured once, as upstream
    }
    writeConfig(this.baseDir, this.config);

    if (this.opts.cache !== null) {
      const dir = path.resolve(this.opts.cache.dir ?? path.join(this.baseDir, "cache"));
      this.cache = new ObjectCache(this, this.opts.cache, dir);
      await this.cache.open(); // a bad dir fails the start (exit 1)
    }
    await this.loadLocalState();
    const servers = await listenProtocol(
      this.opts.bindAddr ?? "0.0.0.0",
      this.opts.port,
      this.baseDir,
      {
        handle: (h, d) => this.handle(h, d),
        classOf: (h) =>
          OP_TABLE.get(h.opcode)?.kind !== "peer"
            ? "client"
            : h.opcode === Op.GET_HASH || h.flags & Flag.CMD_RECOVERY
            ? "recovery"
            : "peer",
        epoch: () => this.state.epoch,
        log: this.log,
        sockets: this.sockets,
      },
    );
    this.server = servers.tcp;
    this.unixServer = servers.unix;
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
    this.gateway = makeGateway(this);
    this.recovery = makeRecovery(this);
    this.scrub = makeScrubber(this);
    const joined = new Promise<void>((resolve, reject) => (this.joinWaiter = { resolve, reject }));
    await this.driver.join(this.me, encodeState(this.state));
    await joined;
    if (this.cache) {
      this.cache.recover(); // what a crash left dirty is pushed before its VDI is served
      this.cache.start();
    }
    if (this.opts.nbd) await this.startNbd();
    if (this.opts.pidfile) fs.writeFileSync(this.opts.pidfile, `${process.pid}\n`);
    this.scrub.schedule();
    this.log.info(`sheep ${nodeHostPort(this.me)} started (store ${this.baseDir})`);
  }

  /** A (re)opened, scanned store of `kind`, behind the journal with -j (format may change kind). */
  async openObjectStore(kind: "plain" | "tree"): Promise<ObjectStore> {
    const s = await openFileStore(this, kind, this.objectDirs());
    return this.journal ? this.journal.wrap(s) : s;
  }

  /** Object directories: the extra PATH entries (multi-disk), else `<base>/obj`. */
  objectDirs(): string[] {
    return this.opts.objDirs.length
      ? this.opts.objDirs.map((d) => path.resolve(d))
      : [path.join(this.baseDir, "obj")];
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
        if (wasMe) this.isolation.set(false); // (re)admitted: the membership is known again
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
          if (members.length > 1) await fetchVdiState(this.vdiStatePort(), members);
          await filled;
          this.joinWaiter?.resolve();
        } else {
          void fetchVdiState(this.vdiStatePort(), [joined]);
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
      connection: (up: boolean) => this.isolation.set(!up),
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
    // An epoch seen only while waiting is not logged (as upstream); fillEpochLog copies the ones
    // this sheep missed, with their own times, once it serves. Logged with the vnodes each node
    // has in the ring (auto: from its capacity), as upstream.
    if (newEpoch) writeEpoch(this.baseDir, s.epoch, this.ringNodes(s.nodes), nowSeconds());
    await adoptIdentity(this, s);
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
      if (this.state.ctime === 0n || this.state.status !== Status.OK) return; // as upstream
      for (const e of missingEpochs(this.baseDir, this.state.epoch)) {
        const rec = await fetchEpoch(
          e,
          this.members,
          this.me,
          (n, h) => this.sendTo(n, h),
          (n, err) => this.log.debug(`epoch ${e} from ${nodeHostPort(n)}: ${err.message}`),
        );
        if (rec && !readEpoch(this.baseDir, e)) writeEpoch(this.baseDir, e, rec.nodes, rec.time);
      }
      // No member had the current epoch's log (all joined while waiting): log it ourselves.
      const s = this.state;
      if (s.status === Status.OK && s.epoch > 0 && !readEpoch(this.baseDir, s.epoch)) {
        writeEpoch(this.baseDir, s.epoch, this.ringNodes(s.nodes), nowSeconds());
      }
    });
    this.epochFill = run.catch(() => {});
    return this.epochFill;
  }

  /** Ring of an earlier epoch, from the local epoch log or, when missing, from a member. */
  async ringOf(epoch: number): Promise<Ring | null> {
    const cached = this.ringCache.get(epoch);
    if (cached) return cached;
    let nodes = readEpoch(this.baseDir, epoch)?.nodes ?? null;
    if (!nodes) {
      const rec = await fetchEpoch(epoch, this.state.nodes, this.me, (n, h) => this.sendTo(n, h));
      if (rec) writeEpoch(this.baseDir, epoch, rec.nodes, rec.time);
      nodes = rec?.nodes ?? null;
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

  private vdiStatePort(): VdiStatePort {
    return { me: this.me, vdis: this.vdis, pool: this.pool, log: this.log };
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
      if (a.recycled?.length) applyRecycled(this, a.recycled);
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

  /** Takes the cluster-wide lock of a VDI for this sheep (the NBD export's exclusive attach). */
  lockVdi(name: string, opts: { tag?: string; snapid?: number }): Promise<Reply> {
    return this.ops.cluster.lockVdi(name, opts);
  }

  releaseVdi(vid: number): Promise<Reply> {
    return this.ops.cluster.releaseVdi(vid);
  }

  /** The object cache's pulls and pushes: the gateway path without the cache. */
  cacheForward(hdr: Header, data: Buffer): Promise<Reply> {
    return this.ops.gateway.uncached(hdr, data);
  }

  /** The object cache's push of an object's dirty runs: one sync per replica for all of them. */
  cachePush(
    hdr: Header,
    runs: ReadonlyArray<WriteRun>,
    limit: <T>(f: () => Promise<T>) => Promise<T>,
  ): Promise<Reply[]> {
    return this.ops.gateway.pushRuns(hdr, runs, limit);
  }

  async recoveryIdle(): Promise<void> {
    const until = Date.now() + 120_000;
    while (this.recovery.status().inRecovery && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** host:port, as VDI lock owners are named. */
  selfName(): string {
    return nodeHostPort(this.me);
  }

  /** NBD exports: how they may use the cache (null: no cache). */
  get cacheMode(): "writeback" | "writethrough" | null {
    return this.cache ? this.opts.nbdCache : null;
  }

  /**
   * An NBD FLUSH: this sheep's dirty objects of `vid` are pushed, and when another sheep holds
   * the VDI, it is asked to flush too (so a read-only export's flush covers the writer's).
   */
  async flushVdi(vid: number): Promise<void> {
    await this.cache?.flushVdi(vid);
    await this.coherence.beforeRead(vidToVdiOid(vid));
  }

  /** Objects written with FUA: pushed before the write is answered. */
  async flushOids(oids: bigint[]): Promise<void> {
    await this.cache?.flushOids(oids);
  }

  /** Detach: push everything, then forget it (another sheep may attach and write next). */
  async releaseCache(vid: number): Promise<void> {
    if (!this.cache) return;
    await this.cache.flushVdi(vid);
    await this.cache.dropVdi(vid);
  }

  // ---------------------------------------------------------------- request dispatch

  /** Requests in progress other than recovery's own (recovery yields to them). */
  clientRequests = 0;

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
    if (row.kind === "gateway" && !(await this.isolation.passable())) {
      return errorReply(req, new SdError(Res.HALT));
    }
    // The object cache: snapshot/delete flush the lock owner's cache first; a release flushes ours.
    if (op === Op.NEW_VDI || op === Op.DEL_VDI) await this.coherence.beforeVdiOp(req, data);
    else if (op === Op.RELEASE_VDI && this.cache && this.coherence.mayCache(req.baseVdiId)) {
      await this.releaseCache(req.baseVdiId);
    }
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

  // ---------------------------------------------------------------- shutdown

  async shutdown(code: number, killed = false): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (killed) this.state = { ...this.state, status: Status.KILLED };
    this.log.info(`shutting down (${killed ? "killed" : "exit"})`);
    this.scrub?.stop();
    // NBD clients first, while this sheep is still a member: requests in progress finish, and each
    // export's detach (its cached objects pushed, its VDI lock released) needs the cluster. After
    // leaving, a detach still running would wait for a cluster this sheep is no longer in.
    const bounded = (p: Promise<unknown> | undefined, ms: number) =>
      Promise.race([p, new Promise((r) => setTimeout(r, ms))]);
    await bounded(
      this.nbdServer?.close().catch((e) => this.log.warn(`closing NBD: ${e}`)),
      30_000,
    );
    // Dirty cached objects go to the cluster while we are still a member (bounded wait).
    if (this.cache && this.joined) {
      await bounded(this.cache.stop(), 30_000);
    }
    try {
      await bounded(this.driver?.leave(), 1500);
      await this.driver?.close();
    } catch { /* exiting anyway */ }
    this.server?.close();
    this.unixServer?.close();
    await this.httpServer?.close().catch((e) => this.log.warn(`closing HTTP: ${e}`));
    for (const s of this.sockets) s.destroy();
    this.pool.close();
    // Everything applied made durable, so the next start has nothing to replay.
    await this.journal?.close().catch((e) => this.log.warn(`closing the journal: ${e}`));
    // Dirty checksum side files flushed and the write-intent logs emptied (io/csum-intent.ts), so
    // the next start has nothing to reseal.
    try {
      this.store?.close();
    } catch (e) {
      this.log.warn(`closing the store: ${e}`);
    }
    fs.rmSync(path.join(this.baseDir, "lock"), { force: true });
    if (this.opts.pidfile) fs.rmSync(this.opts.pidfile, { force: true });
    this.onExit(code);
  }
}
