// End-to-end harness: starts real sheep processes on 127.0.0.1, runs dog against them, and makes
// sure no process outlives the test process (SIGKILL on exit, SIGINT, SIGTERM, SIGHUP).
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { Buffer } from "node:buffer";
import { fileURLToPath } from "node:url";

/** Repository root (this file lives in <root>/tests/lib). */
export const ROOT: string = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

/**
 * How to run the product. SHEEPDOG_RUNTIME=deno|bun runs mod.ts from source; otherwise the
 * compiled ./sheepdog (or SHEEPDOG_BIN) is used.
 */
export function sheepCommand(): string[] {
  const rt = process.env.SHEEPDOG_RUNTIME ?? "";
  if (rt === "deno") {
    return [path.join(ROOT, "node_modules/.bin/deno"), "run", "-A", path.join(ROOT, "mod.ts")];
  }
  if (rt === "bun") return [path.join(ROOT, "node_modules/.bin/bun"), path.join(ROOT, "mod.ts")];
  if (rt !== "" && rt !== "binary") {
    throw new Error(`SHEEPDOG_RUNTIME=${rt}: expected "deno", "bun" or "binary"`);
  }
  const bin = process.env.SHEEPDOG_BIN || path.join(ROOT, "sheepdog");
  if (!fs.existsSync(bin)) {
    throw new Error(
      `${bin} does not exist: run \`make build\` first, or set SHEEPDOG_RUNTIME=bun|deno to run mod.ts from source`,
    );
  }
  return [bin];
}

// ---------------------------------------------------------------------------------------------
// Process bookkeeping. Every child spawned here must die with the test process, however that
// ends: `bun test` fires no 'exit' event and a SIGKILLed runner runs no handler at all. So a
// detached watchdog shell holds the read end of a pipe from this process; at EOF it SIGKILLs the
// registered pids and removes the registered temp dirs (unless KEEP=1).

const WATCHDOG = `
trap '' INT TERM HUP
pids=""; dirs=""
while IFS= read -r l; do
  v=\${l#? }
  case "$l" in
    "p "*) pids="$pids $v" ;;
    "u "*) n=""; for x in $pids; do [ "$x" = "$v" ] || n="$n $x"; done; pids=$n ;;
    "d "*) dirs="$dirs $v" ;;
    "e "*) n=""; for x in $dirs; do [ "$x" = "$v" ] || n="$n $x"; done; dirs=$n ;;
  esac
done
[ -n "$pids" ] && kill -9 $pids 2>/dev/null
if [ "\${KEEP:-}" != 1 ] && [ -n "$dirs" ]; then sleep 0.2; rm -rf $dirs; fi
exit 0
`;

const live = new Set<ChildProcess>();
const tempRoots = new Set<string>();
let watchdog: ChildProcess | null = null;
let hooksInstalled = false;

function tell(line: string): void {
  if (!watchdog?.stdin || watchdog.stdin.destroyed) return;
  try {
    watchdog.stdin.write(line + "\n");
  } catch { /* watchdog gone: the in-process hooks still apply */ }
}

function killAllSync(): void {
  for (const p of live) {
    try {
      if (p.pid) process.kill(p.pid, "SIGKILL");
    } catch { /* already gone */ }
  }
  live.clear();
  for (const d of tempRoots) {
    if (process.env.KEEP === "1") {
      console.error(`[cluster] kept ${d}`);
    } else {
      try {
        fs.rmSync(d, { recursive: true, force: true });
      } catch { /* best effort at exit */ }
    }
  }
  tempRoots.clear();
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  watchdog = spawn("/bin/sh", ["-c", WATCHDOG], {
    detached: true,
    stdio: ["pipe", "ignore", "ignore"],
  });
  watchdog.on("error", () => {
    watchdog = null;
  });
  watchdog.stdin?.on("error", () => {});
  watchdog.unref();
  (watchdog.stdin as unknown as { unref?: () => void })?.unref?.();
  process.on("exit", killAllSync);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(sig, () => {
      killAllSync();
      process.exit(128 + (os.constants.signals[sig] ?? 1));
    });
  }
}

function registerDir(d: string): void {
  installHooks();
  tempRoots.add(d);
  if (!/\s/.test(d)) tell(`d ${d}`);
}

function unregisterDir(d: string): void {
  tempRoots.delete(d);
  tell(`e ${d}`);
}

interface Tracked {
  proc: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  done: boolean;
}

function track(proc: ChildProcess): Tracked {
  installHooks();
  live.add(proc);
  if (proc.pid) tell(`p ${proc.pid}`);
  const t: Tracked = { proc, done: false, exited: undefined as never };
  t.exited = new Promise((resolve) => {
    let settled = false;
    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (settled) return;
      settled = true;
      t.done = true;
      live.delete(proc);
      if (proc.pid) tell(`u ${proc.pid}`);
      resolve({ code, signal });
    };
    proc.on("exit", finish);
    proc.on("error", () => finish(proc.exitCode ?? -1, null));
  });
  return t;
}

/**
 * For other harnesses (e.g. tests/lib/zookeeper.ts): proc is SIGKILLed, and tempDir (if given)
 * removed, when the test process dies. Returns proc's exit; release() forgets tempDir again.
 */
export function registerPid(
  proc: ChildProcess,
  tempDir?: string,
): { exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>; release(): void } {
  if (tempDir) registerDir(tempDir);
  return { exited: track(proc).exited, release: () => tempDir && unregisterDir(tempDir) };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------

const handedOut = new Set<number>();

/** A TCP port on 127.0.0.1 that was free a moment ago (never the same one twice per process). */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer();
      srv.unref();
      srv.on("error", reject);
      srv.listen(0, "127.0.0.1", () => {
        const addr = srv.address();
        const p = typeof addr === "object" && addr ? addr.port : 0;
        srv.close(() => resolve(p));
      });
    });
    if (port > 0 && !handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error("freePort: no free port found");
}

/** True when something accepts TCP connections on 127.0.0.1:port. */
export function portOpen(port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      s.removeAllListeners();
      s.on("error", () => {});
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
  });
}

function tailFile(file: string, lines: number): string {
  try {
    const all = fs.readFileSync(file, "utf8").split("\n");
    return all.slice(-lines - 1).join("\n");
  } catch {
    return "";
  }
}

export interface SheepOpts {
  port: number;
  zone?: number;
  /** Cluster driver for -c; default "local:<temp root>/cluster". */
  driver?: string;
  extra?: string[];
  /** Store (base) directory; default <temp root>/<index>. */
  dir?: string;
  nbdPort?: number;
  /** Extra object directories (multi-disk): PATH becomes `dir,objDir1,objDir2...`. */
  objDirs?: string[];
}

export interface SheepNode {
  port: number;
  zone: number;
  dir: string;
  nbdPort?: number;
  driver: string;
  extra: string[];
  objDirs?: string[];
  proc: ChildProcess | null;
  /** stdout + stderr of the process (appended across restarts). */
  logFile: string;
}

export interface StartOpts {
  /** Node i listens on basePort + i; default: random free ports. */
  basePort?: number;
  /** Zone of node i; default i. */
  zones?: number[];
  driver?: string;
  extra?: string[];
  /** Give every node an NBD server (--nbd 127.0.0.1:<free port>). */
  nbd?: boolean;
  /** Run `dog cluster format` after the nodes are up, then wait until every node is running. */
  format?: { copies?: number | string; store?: string };
}

export interface DogOpts {
  input?: Buffer | string;
  /** Which node's port to talk to (default 0). */
  node?: number;
  /** Default 120 s; the dog process is killed and an error thrown after it. */
  timeoutMs?: number;
  /** Do not append `-a 127.0.0.1 -p PORT` (for commands that take no address, e.g. `dog upgrade`). */
  noAddress?: boolean;
  env?: Record<string, string>;
}

export interface DogResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

export class TestCluster {
  readonly root: string;
  nodes: SheepNode[] = [];
  private tracked = new Map<number, Tracked>();
  private defaultDriver: string;
  private stopped = false;

  private constructor(root: string, driver?: string) {
    this.root = root;
    this.defaultDriver = driver ?? `local:${path.join(root, "cluster")}`;
  }

  /** An empty cluster object with its temp dir; add nodes with addNode(). */
  static create(driver?: string): TestCluster {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-test-"));
    registerDir(root);
    fs.mkdirSync(path.join(root, "logs"));
    return new TestCluster(root, driver);
  }

  static async start(n: number, opts: StartOpts = {}): Promise<TestCluster> {
    const c = TestCluster.create(opts.driver);
    try {
      for (let i = 0; i < n; i++) {
        const port = opts.basePort !== undefined ? opts.basePort + i : await freePort();
        const nbdPort = opts.nbd ? await freePort() : undefined;
        c.define({ port, zone: opts.zones?.[i] ?? i, extra: opts.extra, nbdPort });
      }
      // Sequential starts keep join order (and so node order in epochs) deterministic.
      for (let i = 0; i < n; i++) await c.startNode(i);
      if (opts.format) {
        // A sheep listens before it has joined: format only once every node sees all members,
        // or dog would count too few zones (and ask for confirmation).
        await c.waitFor(
          async () => {
            for (let i = 0; i < n; i++) {
              const r = await c.dog(["node", "list", "-r"], { node: i });
              if (r.code !== 0 || r.stdout.toString().trim().split("\n").length !== n) return false;
            }
            return true;
          },
          30_000,
          `all ${n} sheep to be members`,
        );
        const args = ["cluster", "format"];
        if (opts.format.copies !== undefined) args.push("-c", String(opts.format.copies));
        if (opts.format.store !== undefined) args.push("-b", opts.format.store);
        await c.dogOk(args);
        await c.waitRunning();
      }
      return c;
    } catch (e) {
      await c.stop();
      throw e;
    }
  }

  private define(o: Partial<SheepOpts> & { port: number }): number {
    const i = this.nodes.length;
    this.nodes.push({
      port: o.port,
      zone: o.zone ?? i,
      dir: o.dir ?? path.join(this.root, String(i)),
      nbdPort: o.nbdPort,
      driver: o.driver ?? this.defaultDriver,
      extra: o.extra ?? [],
      objDirs: o.objDirs,
      proc: null,
      logFile: path.join(this.root, "logs", `node${i}.log`),
    });
    return i;
  }

  /** Command line (after the product command) that starts node i. */
  sheepArgs(i: number): string[] {
    const n = this.nodes[i];
    const args = [
      "sheep",
      "-b",
      "127.0.0.1",
      "-p",
      String(n.port),
      "-z",
      String(n.zone),
      "-c",
      n.driver,
      "-f",
      "-l",
      `dir=${n.dir}`,
    ];
    if (n.nbdPort !== undefined) args.push("--nbd", `127.0.0.1:${n.nbdPort}`);
    args.push(...n.extra, [n.dir, ...(n.objDirs ?? [])].join(","));
    return args;
  }

  /**
   * Starts (or restarts) node i and waits until its port accepts connections, and its NBD port
   * too unless waitNbd is false (a sheep that cannot join may never open it).
   */
  async startNode(i: number, opts: { timeoutMs?: number; waitNbd?: boolean } = {}): Promise<void> {
    const timeoutMs = opts.timeoutMs ?? 20_000;
    const n = this.nodes[i];
    if (!n) throw new Error(`startNode: no node ${i}`);
    if (n.proc && !this.tracked.get(i)?.done) throw new Error(`startNode: node ${i} is running`);
    fs.mkdirSync(n.dir, { recursive: true });
    const [cmd, ...pre] = sheepCommand();
    const args = [...pre, ...this.sheepArgs(i)];
    const fd = fs.openSync(n.logFile, "a");
    fs.writeSync(fd, `\n=== ${new Date().toISOString()} ${cmd} ${args.join(" ")}\n`);
    let proc: ChildProcess;
    try {
      proc = spawn(cmd, args, { cwd: ROOT, stdio: ["ignore", fd, fd], env: process.env });
    } finally {
      fs.closeSync(fd);
    }
    const t = track(proc);
    this.tracked.set(i, t);
    n.proc = proc;

    const deadline = Date.now() + timeoutMs;
    const ports = [
      n.port,
      ...(n.nbdPort !== undefined && opts.waitNbd !== false ? [n.nbdPort] : []),
    ];
    for (const port of ports) {
      for (;;) {
        if (t.done) {
          const r = await t.exited;
          n.proc = null;
          throw new Error(
            `sheep ${i} (port ${n.port}) exited during startup (code ${r.code}, signal ${r.signal})\n` +
              this.logTail(i),
          );
        }
        if (await portOpen(port, 500)) break;
        if (Date.now() > deadline) {
          await this.kill(i, "SIGKILL");
          throw new Error(
            `sheep ${i}: port ${port} not accepting after ${timeoutMs} ms\n${this.logTail(i)}`,
          );
        }
        await sleep(50);
      }
    }
  }

  /** Defines and starts one more node; returns its index. */
  async addNode(opts: Partial<SheepOpts> = {}): Promise<number> {
    const port = opts.port ?? await freePort();
    const i = this.define({ ...opts, port });
    await this.startNode(i);
    return i;
  }

  /** Sends a signal (default SIGKILL) to node i and waits for it to exit (SIGKILL after 30 s). */
  async kill(i: number, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const n = this.nodes[i];
    const t = this.tracked.get(i);
    if (!n || !t || t.done) {
      if (n) n.proc = null;
      return;
    }
    try {
      t.proc.kill(signal);
    } catch { /* raced with exit */ }
    const r = await Promise.race([t.exited, sleep(30_000).then(() => null)]);
    if (r === null) {
      t.proc.kill("SIGKILL");
      await t.exited;
      n.proc = null;
      throw new Error(`sheep ${i} did not exit within 30 s of ${signal}\n${this.logTail(i)}`);
    }
    n.proc = null;
  }

  /** Exit status of node i's last process, or null while it runs / was never started. */
  async exitStatus(
    i: number,
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null } | null> {
    const t = this.tracked.get(i);
    if (!t || !t.done) return null;
    return await t.exited;
  }

  isRunning(i: number): boolean {
    const t = this.tracked.get(i);
    return !!t && !t.done;
  }

  /** Runs `<product> dog <args> -a 127.0.0.1 -p <port of node>`. */
  async dog(args: string[], opts: DogOpts = {}): Promise<DogResult> {
    const node = this.nodes[opts.node ?? 0];
    if (!node && !opts.noAddress) throw new Error(`dog: no node ${opts.node ?? 0}`);
    const full = ["dog", ...args];
    if (!opts.noAddress) full.push("-a", "127.0.0.1", "-p", String(node.port));
    return await runDog(full, opts);
  }

  /** dog() that throws (with stderr) unless the exit code is 0; returns stdout as text. */
  async dogOk(args: string[], opts: DogOpts = {}): Promise<string> {
    const r = await this.dog(args, opts);
    if (r.code !== 0) {
      throw new Error(
        `dog ${args.join(" ")} (node ${
          opts.node ?? 0
        }) exited ${r.code}\nstderr: ${r.stderr}\nstdout: ${r.stdout}`,
      );
    }
    return r.stdout.toString();
  }

  /** Polls cond (errors count as false) every 100 ms until true; throws after timeoutMs. */
  async waitFor(
    cond: () => Promise<boolean>,
    timeoutMs = 30_000,
    what = "condition",
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastErr: unknown = null;
    for (;;) {
      try {
        if (await cond()) return;
        lastErr = null;
      } catch (e) {
        lastErr = e;
      }
      if (Date.now() > deadline) {
        const why = lastErr
          ? `; last error: ${lastErr instanceof Error ? lastErr.message : String(lastErr)}`
          : "";
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
      }
      await sleep(100);
    }
  }

  /** Waits until `dog cluster info` on every running node reports a running cluster. */
  async waitRunning(timeoutMs = 30_000): Promise<void> {
    for (let i = 0; i < this.nodes.length; i++) {
      if (!this.isRunning(i)) continue;
      await this.waitFor(
        async () => {
          const r = await this.dog(["cluster", "info"], { node: i, timeoutMs: 10_000 });
          return r.code === 0 && /Cluster status: running/.test(r.stdout.toString());
        },
        timeoutMs,
        `node ${i} to report "Cluster status: running"`,
      );
    }
  }

  /** Object file names (%016x or %016x_<idx>) in node i's store, sorted; skips .stale and *.tmp. */
  objectFiles(i: number): string[] {
    return [...storeObjects(this.nodes[i].dir).keys()].sort();
  }

  /** Last lines of node i's captured output and of its sheep.log, for failure messages. */
  logTail(i: number, lines = 40): string {
    const n = this.nodes[i];
    let s = `--- ${n.logFile} ---\n${tailFile(n.logFile, lines)}`;
    const sheepLog = path.join(n.dir, "sheep.log");
    if (fs.existsSync(sheepLog)) s += `\n--- ${sheepLog} ---\n${tailFile(sheepLog, lines)}`;
    return s;
  }

  /** SIGTERM every node, SIGKILL after 5 s, then remove the temp dir unless KEEP=1. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const running = [...this.tracked.values()].filter((t) => !t.done);
    for (const t of running) {
      try {
        t.proc.kill("SIGTERM");
      } catch { /* gone */ }
    }
    await Promise.all(running.map(async (t) => {
      const r = await Promise.race([t.exited, sleep(5_000).then(() => null)]);
      if (r === null) {
        try {
          t.proc.kill("SIGKILL");
        } catch { /* gone */ }
        await t.exited;
      }
    }));
    for (const n of this.nodes) n.proc = null;
    unregisterDir(this.root);
    if (process.env.KEEP === "1") {
      console.error(`[cluster] KEEP=1: kept ${this.root}`);
    } else {
      fs.rmSync(this.root, { recursive: true, force: true });
    }
  }
}

/** Runs the product with the given argv (e.g. ["dog", "vdi", "list", ...]) and collects output. */
/** Object files under `<storeDir>/obj` (any layout): name -> path; skips .stale and *.tmp. */
export function storeObjects(storeDir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of ents) {
      if (e.isDirectory()) {
        if (e.name !== ".stale") walk(path.join(d, e.name));
      } else if (!e.name.endsWith(".tmp") && /^[0-9a-f]{16}(_\d+)?$/.test(e.name)) {
        out.set(e.name, path.join(d, e.name));
      }
    }
  };
  walk(path.join(storeDir, "obj"));
  return out;
}

export async function runDog(argv: string[], opts: DogOpts = {}): Promise<DogResult> {
  const [cmd, ...pre] = sheepCommand();
  const proc = spawn(cmd, [...pre, ...argv], {
    cwd: ROOT,
    stdio: ["pipe", "pipe", "pipe"],
    env: opts.env ? { ...process.env, ...opts.env } : process.env,
  });
  const t = track(proc);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const outDone = new Promise<void>((r) =>
    proc.stdout!.on("data", (b: Buffer) => out.push(b)).on("close", r)
  );
  const errDone = new Promise<void>((r) =>
    proc.stderr!.on("data", (b: Buffer) => err.push(b)).on("close", r)
  );
  proc.stdin!.on("error", () => {}); // dog may exit without reading its input
  if (opts.input !== undefined) proc.stdin!.end(opts.input);
  else proc.stdin!.end();

  const timeoutMs = opts.timeoutMs ?? 120_000;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    proc.kill("SIGKILL");
  }, timeoutMs);
  const r = await t.exited;
  clearTimeout(timer);
  // Output pipes can close after 'exit'; wait for them, but not forever (a grandchild may hold them).
  await Promise.race([Promise.all([outDone, errDone]), sleep(2_000)]);
  const stderr = Buffer.concat(err).toString();
  if (timedOut) {
    throw new Error(
      `dog ${argv.slice(1).join(" ")} timed out after ${timeoutMs} ms\nstderr: ${stderr}`,
    );
  }
  const code = r.code ?? 128 + (r.signal ? os.constants.signals[r.signal] ?? 0 : 0);
  return { code, stdout: Buffer.concat(out), stderr };
}
