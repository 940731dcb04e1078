// ZooKeeper for the zookeeper driver: the -c option, and a small session wrapper over
// node-zookeeper-client (promises, one watcher set per session, connection-loss handling) so the
// driver (zookeeper.ts) deals in events and decisions only.
import zookeeper from "node-zookeeper-client";
import { Buffer } from "node:buffer";
import * as net from "node:net";
import { DriverConfigError } from "./driver.ts";

// ------------------------------------------------------------------------------ option parsing

export interface ZookeeperOptions {
  servers: Array<{ host: string; port: number }>;
  /** Connection string without chroot: "host:port,host:port". */
  connect: string;
  /** Base znode of this cluster: "/sheepdog" or "/<cluster id>". */
  base: string;
  /** Requested session timeout in ms (the server may clamp it). */
  timeout: number;
}

const USAGE = "expected zookeeper:HOST:PORT[,HOST:PORT...][/CLUSTER_ID][,timeout=MS]";
export const DEFAULT_BASE = "/sheepdog";
export const DEFAULT_TIMEOUT_MS = 30_000;

function badChars(s: string): boolean {
  for (const ch of s) {
    const c = ch.charCodeAt(0);
    if (c < 0x21 || c === 0x7f) return true;
  }
  return false;
}

export function parseZookeeperOption(opt: string): ZookeeperOptions {
  const bad = (why: string) => new DriverConfigError(`zookeeper driver: ${why}; ${USAGE}`);
  if (!opt) throw bad("no ZooKeeper server given");
  const servers: Array<{ host: string; port: number }> = [];
  let base = DEFAULT_BASE;
  let timeout = DEFAULT_TIMEOUT_MS;
  let sawId = false;
  for (const item of opt.split(",")) {
    if (item.startsWith("timeout=")) {
      const v = item.slice("timeout=".length);
      if (!/^\d+$/.test(v) || Number(v) <= 0 || Number(v) > 0x7fffffff) {
        throw bad(`invalid timeout '${v}' (milliseconds)`);
      }
      timeout = Number(v);
      continue;
    }
    if (sawId) throw bad(`unexpected '${item}' after the cluster id`);
    let hp = item;
    const slash = item.indexOf("/");
    if (slash >= 0) {
      hp = item.slice(0, slash);
      const id = item.slice(slash + 1);
      const segs = id.split("/");
      if (!id || segs.some((s) => !s || s === "." || s === ".." || badChars(s))) {
        throw bad(`invalid cluster id '${id}'`);
      }
      if (segs[0] === "zookeeper") {
        throw bad("the cluster id must not start with 'zookeeper' (reserved)");
      }
      base = "/" + id;
      sawId = true;
    }
    // node-zookeeper-client cannot parse IPv6 literals in its connection string.
    const m = /^([^\s:/[\]]+):(\d+)$/.exec(hp);
    if (!m) throw bad(`invalid server '${hp}' (HOST:PORT, host name or IPv4 address)`);
    const port = Number(m[2]);
    if (port < 1 || port > 65535) throw bad(`invalid port in '${hp}'`);
    servers.push({ host: m[1], port });
  }
  if (!servers.length) throw bad("no ZooKeeper server given");
  return { servers, connect: servers.map((s) => `${s.host}:${s.port}`).join(","), base, timeout };
}

// ------------------------------------------------------------------------------ client wrapper

export interface ZkState {
  name: string;
  code: number;
}
interface ZkStat {
  version: number;
}
type Cb<T> = (err: unknown, value: T, extra?: unknown) => void;
interface ZkTransaction {
  create(path: string, data: Buffer, mode: number): ZkTransaction;
  commit(cb: Cb<Array<{ type: number; path?: string }>>): void;
}
interface ZkClient {
  connect(): void;
  close(): void;
  on(ev: "state", f: (s: ZkState) => void): void;
  getSessionId(): Buffer;
  getSessionTimeout(): number;
  create(path: string, data: Buffer, mode: number, cb: Cb<string>): void;
  remove(path: string, version: number, cb: Cb<void>): void;
  setData(path: string, data: Buffer, version: number, cb: Cb<ZkStat>): void;
  getData(
    path: string,
    watcher: (() => void) | undefined,
    cb: (err: unknown, data: Buffer, stat: ZkStat) => void,
  ): void;
  getChildren(path: string, watcher: (() => void) | undefined, cb: Cb<string[]>): void;
  mkdirp(path: string, cb: Cb<string>): void;
  transaction(): ZkTransaction;
  connectionManager?: {
    socket?: net.Socket;
    pendingBuffer?: Buffer | null;
    on?(ev: "state", f: (st: number) => void): void;
    onSocketData?(b: Buffer): void;
  };
}
interface ZkModule {
  createClient(
    conn: string,
    opts: { sessionTimeout: number; spinDelay: number; retries: number },
  ): ZkClient;
  CreateMode: {
    PERSISTENT: number;
    EPHEMERAL: number;
    PERSISTENT_SEQUENTIAL: number;
    EPHEMERAL_SEQUENTIAL: number;
  };
  State: Record<"SYNC_CONNECTED" | "DISCONNECTED" | "EXPIRED", ZkState>;
  Exception: Record<
    "NO_NODE" | "NODE_EXISTS" | "BAD_VERSION" | "CONNECTION_LOSS" | "SESSION_EXPIRED",
    number
  >;
}
export const zk = zookeeper as unknown as ZkModule;

/** The session this operation ran on is gone (expired, closed or replaced). */
export class SessionLost extends Error {}

export function errCode(e: unknown): number | undefined {
  const x = e as { getCode?: () => number; code?: unknown };
  if (typeof x?.getCode === "function") return x.getCode();
  return typeof x?.code === "number" ? x.code : undefined;
}

/** One ZooKeeper session. Operations reject with SessionLost once it is killed. */
export class Session {
  dead = false;
  connected = false;
  private failers = new Set<(e: Error) => void>();
  private onConnect: Array<() => void> = [];
  private memo = new Map<string, () => void>();

  private watchdog: ReturnType<typeof setInterval> | null = null;
  private lastSocket: net.Socket | null = null;

  constructor(readonly client: ZkClient) {}

  /**
   * The client times only the TCP connect, not the handshake that follows. A server that is
   * starting up can accept a connection and then neither answer nor close it (ZooKeeper 3.8 hits
   * a NullPointerException closing it), and the session expires while we wait. So a connection
   * attempt that makes no progress for `ms` is dropped, which makes the client try again.
   */
  startWatchdog(ms: number): void {
    this.watchdog = setInterval(() => {
      if (this.dead) return;
      if (this.connected) {
        this.lastSocket = null;
        // The client pings when idle but never notices that no reply comes back (a partition
        // drops packets, no FIN): after readTimeoutMs of silence the connection counts as lost,
        // as ZooKeeper's own clients do, so the sheep stops serving before it may be expelled.
        if (this.readTimeoutMs > 0 && Date.now() - this.lastHeard > this.readTimeoutMs) {
          this.client.connectionManager?.socket?.destroy();
          this.setConnected(false);
          this.onSilent?.();
        }
        return;
      }
      const sock = this.client.connectionManager?.socket ?? null;
      if (sock && sock === this.lastSocket && !sock.destroyed) sock.destroy();
      this.lastSocket = sock;
    }, ms);
  }

  /** When the server was last heard from (any bytes on the connection). */
  lastHeard = Date.now();
  /** Silence after which a connected session counts as disconnected (0: never). */
  readTimeoutMs = 0;
  /** Called when the watchdog declares a silent connection lost. */
  onSilent: (() => void) | null = null;

  /** A stable watcher function per purpose, so the client registers it once per path. */
  watcher(kind: string, f: () => void): () => void {
    let w = this.memo.get(kind);
    if (!w) {
      w = () => {
        if (!this.dead) f();
      };
      this.memo.set(kind, w);
    }
    return w;
  }

  private op<T>(run: (done: (err: unknown, value?: T) => void) => void): Promise<T> {
    if (this.dead) return Promise.reject(new SessionLost("session closed"));
    return new Promise<T>((resolve, reject) => {
      const fail = (e: Error) => reject(e);
      this.failers.add(fail);
      try {
        run((err, value) => {
          if (!this.failers.delete(fail)) return;
          if (err) {
            const c = errCode(err);
            reject(c === zk.Exception.SESSION_EXPIRED ? new SessionLost("session expired") : err);
          } else {
            resolve(value as T);
          }
        });
      } catch (e) {
        this.failers.delete(fail);
        reject(e);
      }
    });
  }

  create(path: string, data: Buffer, mode: number): Promise<string> {
    return this.op((done) => this.client.create(path, data, mode, done));
  }

  /** False when the node already exists. */
  async createIfAbsent(path: string, data: Buffer, mode: number): Promise<boolean> {
    try {
      await this.create(path, data, mode);
      return true;
    } catch (e) {
      if (errCode(e) === zk.Exception.NODE_EXISTS) return false;
      throw e;
    }
  }

  /** False when the node does not exist (or has another version). */
  async remove(path: string, version = -1): Promise<boolean> {
    try {
      await this.op<void>((done) => this.client.remove(path, version, done));
      return true;
    } catch (e) {
      const c = errCode(e);
      if (c === zk.Exception.NO_NODE || c === zk.Exception.BAD_VERSION) return false;
      throw e;
    }
  }

  /** False when the version did not match or the node is gone. */
  async setData(path: string, data: Buffer, version = -1): Promise<boolean> {
    try {
      await this.op<ZkStat>((done) => this.client.setData(path, data, version, done));
      return true;
    } catch (e) {
      const c = errCode(e);
      if (c === zk.Exception.NO_NODE || c === zk.Exception.BAD_VERSION) return false;
      throw e;
    }
  }

  /** null when the node does not exist. */
  async getData(
    path: string,
    watch?: () => void,
  ): Promise<{ data: Buffer; version: number } | null> {
    try {
      return await this.op((done) =>
        this.client.getData(
          path,
          watch,
          (err, data, stat) =>
            done(err, { data: data ?? Buffer.alloc(0), version: stat?.version ?? 0 }),
        )
      );
    } catch (e) {
      if (errCode(e) === zk.Exception.NO_NODE) return null;
      throw e;
    }
  }

  getChildren(path: string, watch?: () => void): Promise<string[]> {
    return this.op((done) => this.client.getChildren(path, watch, done));
  }

  mkdirp(path: string): Promise<string> {
    return this.op((done) => this.client.mkdirp(path, done));
  }

  /** Creates all nodes atomically; returns their actual paths. */
  createAll(items: Array<[string, Buffer, number]>): Promise<string[]> {
    return this.op((done) => {
      let tx = this.client.transaction();
      for (const [p, d, m] of items) tx = tx.create(p, d, m);
      tx.commit((err, res) => done(err, (res ?? []).map((r) => r.path ?? "")));
    });
  }

  sessionHex(): string {
    return this.client.getSessionId().toString("hex");
  }

  setConnected(up: boolean): void {
    this.connected = up;
    if (up) {
      const w = this.onConnect;
      this.onConnect = [];
      for (const f of w) f();
    }
  }

  /** Resolves once connected (at once if connected); rejects with SessionLost when the session dies. */
  waitConnected(): Promise<void> {
    if (this.dead) return Promise.reject(new SessionLost("session closed"));
    if (this.connected) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const fail = (e: Error) => reject(e);
      this.failers.add(fail);
      this.onConnect.push(() => {
        if (this.failers.delete(fail)) resolve();
      });
    });
  }

  /** Fails every pending operation and closes the client (CLOSE_SESSION if still connected). */
  kill(): void {
    if (this.dead) return;
    this.dead = true;
    if (this.watchdog) clearInterval(this.watchdog);
    const f = [...this.failers];
    this.failers.clear();
    for (const x of f) x(new SessionLost("session closed"));
    try {
      this.client.close();
    } catch { /* already closed */ }
  }
}

/** What a session tells its driver after it is up. */
export interface SessionEvents {
  /** Connected again, same session. */
  reconnected(s: Session): void;
  expired(s: Session): void;
  disconnected(s: Session): void;
}

/** Opens a session; rejects when it is not connected within timeoutMs. */
export function openSession(
  opts: ZookeeperOptions,
  timeoutMs: number,
  on: SessionEvents,
): Promise<Session> {
  const client = zk.createClient(opts.connect, {
    sessionTimeout: opts.timeout,
    spinDelay: 500,
    retries: 0,
  });
  const s = new Session(client);
  // The client keeps a partial frame from a dropped connection and would parse the next
  // connection's handshake reply behind it: start every connection attempt (state 1,
  // CONNECTING) with an empty buffer.
  const cm = client.connectionManager;
  cm?.on?.("state", (st) => {
    if (st === 1) cm.pendingBuffer = null;
  });
  // Every byte from the server counts as a sign of life (the client pings every timeout / 3).
  const onData = cm?.onSocketData;
  if (cm && onData) {
    cm.onSocketData = (b: Buffer) => {
      s.lastHeard = Date.now();
      onData.call(cm, b);
    };
  }
  s.readTimeoutMs = Math.floor((opts.timeout * 2) / 3);
  s.onSilent = () => on.disconnected(s);
  s.startWatchdog(Math.min(2000, Math.max(250, Math.floor(opts.timeout / 6))));
  return new Promise((resolve, reject) => {
    let up = false;
    const timer = setTimeout(() => {
      if (up) return;
      s.kill();
      reject(
        new Error(
          `zookeeper driver: cannot connect to ZooKeeper at ${opts.connect} within ${
            timeoutMs / 1000
          } s (is it running?)`,
        ),
      );
    }, timeoutMs);
    client.on("state", (st) => {
      if (st.code === zk.State.SYNC_CONNECTED.code) {
        s.lastHeard = Date.now();
        s.setConnected(true);
        if (!up) {
          up = true;
          clearTimeout(timer);
          resolve(s);
        } else on.reconnected(s);
      } else if (st.code === zk.State.EXPIRED.code) {
        s.setConnected(false);
        on.expired(s);
      } else if (st.code === zk.State.DISCONNECTED.code) {
        s.setConnected(false);
        on.disconnected(s);
      }
    });
    client.connect();
  });
}
