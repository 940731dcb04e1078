// Real network partitions for e2e tests (issue 19): every sheep and ZooKeeper run in a network
// namespace of their own, wired by veth pairs to a bridge in a "hub" namespace; nothing touches the
// host's namespace. partition() moves some veths to a second bridge in the hub: those sheep then
// reach each other but neither ZooKeeper nor the rest. heal() moves them back. The zookeeper driver
// is what makes the partition real (the local driver shares files, which no partition cuts).
// Processes go through cluster.ts's watchdog, so they die with the test process; destroy() kills
// them and deletes every namespace.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { Buffer } from "node:buffer";
import { registerPid, ROOT, sheepCommand } from "./cluster.ts";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const ZK_JARS = ["/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar"];
export const SHEEP_PORT = 7000;
const ZK_PORT = 2181;

function ip(...args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

// Namespaces outlive processes: whatever a crashed test left is deleted when this process exits.
const liveNamespaces = new Set<string>();
process.on("exit", () => {
  for (const n of liveNamespaces) {
    try {
      ip("netns", "del", n);
    } catch { /* gone */ }
  }
});

interface Proc {
  proc: ChildProcess;
  exited: Promise<{ code: number | null; signal: string | null }>;
  done: boolean;
}

export class NetnsCluster {
  readonly tag = `sd${process.pid % 10000}${Math.floor(Math.random() * 100)}`;
  readonly root = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-netns-"));
  readonly subnet = `10.${100 + Math.floor(Math.random() * 100)}.${
    Math.floor(Math.random() * 250)
  }`;
  private namespaces: string[] = [];
  private procs = new Map<string, Proc>();
  private release: () => void = () => {};
  zkAddr = "";

  get hub(): string {
    return `${this.tag}-hub`;
  }
  ns(i: number): string {
    return `${this.tag}-s${i}`;
  }
  addr(i: number): string {
    return `${this.subnet}.${10 + i}`;
  }

  private addNs(name: string, addr: string): void {
    ip("netns", "add", name);
    this.namespaces.push(name);
    liveNamespaces.add(name);
    ip("-n", name, "link", "set", "lo", "up");
    const inner = `${name.replace(/-/g, "")}i`;
    const outer = `${name.replace(/-/g, "")}o`;
    ip("link", "add", inner, "type", "veth", "peer", "name", outer);
    ip("link", "set", inner, "netns", name);
    ip("link", "set", outer, "netns", this.hub);
    ip("-n", this.hub, "link", "set", outer, "master", "br0", "up");
    ip("-n", name, "addr", "add", `${addr}/24`, "dev", inner);
    ip("-n", name, "link", "set", inner, "up");
  }

  /** The hub, ZooKeeper's namespace (and ZooKeeper), and n sheep namespaces. */
  async setup(n: number): Promise<void> {
    const r = registerPid(spawn("true"), this.root);
    this.release = r.release;
    ip("netns", "add", this.hub);
    this.namespaces.push(this.hub);
    liveNamespaces.add(this.hub);
    for (const br of ["br0", "br1"]) {
      ip("-n", this.hub, "link", "add", br, "type", "bridge");
      ip("-n", this.hub, "link", "set", br, "up");
    }
    this.zkAddr = `${this.subnet}.2`;
    this.addNs(`${this.tag}-zk`, this.zkAddr);
    for (let i = 0; i < n; i++) this.addNs(this.ns(i), this.addr(i));
    await this.startZk();
  }

  private spawnIn(key: string, ns: string, cmd: string, args: string[], log: string): Proc {
    const fd = fs.openSync(log, "a");
    let proc: ChildProcess;
    try {
      proc = spawn("ip", ["netns", "exec", ns, cmd, ...args], {
        cwd: ROOT,
        stdio: ["ignore", fd, fd],
        env: process.env,
      });
    } finally {
      fs.closeSync(fd);
    }
    const p: Proc = { proc, exited: null as never, done: false };
    p.exited = registerPid(proc).exited.then((r) => {
      p.done = true;
      return r;
    });
    this.procs.set(key, p);
    return p;
  }

  private async startZk(): Promise<void> {
    const dir = path.join(this.root, "zk");
    fs.mkdirSync(path.join(dir, "data"), { recursive: true });
    const cfg = path.join(dir, "zoo.cfg");
    fs.writeFileSync(
      cfg,
      [
        "tickTime=500",
        `dataDir=${dir}/data`,
        `clientPort=${ZK_PORT}`,
        `clientPortAddress=${this.zkAddr}`,
        "admin.enableServer=false",
        "4lw.commands.whitelist=ruok",
        "maxClientCnxns=0",
        "minSessionTimeout=1000",
        "maxSessionTimeout=60000",
        "forceSync=no",
        "",
      ].join("\n"),
    );
    this.spawnIn("zk", `${this.tag}-zk`, "java", [
      "-Xmx256m",
      "-XX:+UseSerialGC",
      "-XX:TieredStopAtLevel=1",
      "-cp",
      ZK_JARS.filter((j) => fs.existsSync(j)).join(":"),
      "org.apache.zookeeper.server.ZooKeeperServerMain",
      cfg,
    ], path.join(dir, "zk.log"));
    const deadline = Date.now() + 30_000;
    for (;;) {
      const r = await this.run(`${this.tag}-zk`, "bash", [
        "-c",
        `exec 3<>/dev/tcp/${this.zkAddr}/${ZK_PORT} && echo ruok >&3 && timeout 1 cat <&3`,
      ]).catch(() => null);
      if (r?.stdout.toString().includes("imok")) return;
      if (Date.now() > deadline) {
        throw new Error(
          `zookeeper in its namespace did not start:\n${
            fs.readFileSync(path.join(dir, "zk.log"), "utf8").slice(-3000)
          }`,
        );
      }
      await sleep(200);
    }
  }

  logFile(i: number): string {
    return path.join(this.root, `sheep${i}.log`);
  }
  dir(i: number): string {
    return path.join(this.root, `s${i}`);
  }

  /** Starts sheep i in its namespace and waits until its port answers. */
  async startSheep(i: number): Promise<void> {
    fs.mkdirSync(this.dir(i), { recursive: true });
    const [cmd, ...pre] = sheepCommand();
    this.spawnIn(`s${i}`, this.ns(i), cmd, [
      ...pre,
      "sheep",
      "-b",
      this.addr(i),
      "-p",
      String(SHEEP_PORT),
      "-z",
      String(i),
      "-c",
      `zookeeper:${this.zkAddr}:${ZK_PORT},timeout=3000`,
      "-f",
      "-l",
      `dir=${this.dir(i)}`,
      "-V",
      "64",
      this.dir(i),
    ], this.logFile(i));
    const deadline = Date.now() + 30_000;
    while ((await this.dog(i, ["node", "list"], 5_000)).code !== 0) {
      if (this.procs.get(`s${i}`)!.done) {
        throw new Error(`sheep ${i} exited at start:\n${fs.readFileSync(this.logFile(i), "utf8")}`);
      }
      if (Date.now() > deadline) throw new Error(`sheep ${i} did not answer`);
      await sleep(200);
    }
  }

  isRunning(i: number): boolean {
    const p = this.procs.get(`s${i}`);
    return !!p && !p.done;
  }

  /** Runs a command inside namespace ns; rejects on timeout only. */
  run(
    ns: string,
    cmd: string,
    args: string[],
    opts: { input?: Buffer; timeoutMs?: number } = {},
  ): Promise<{ code: number; stdout: Buffer; stderr: string }> {
    return new Promise((resolve, reject) => {
      const proc = spawn("ip", ["netns", "exec", ns, cmd, ...args], { cwd: ROOT });
      const { exited } = registerPid(proc);
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      proc.stdout!.on("data", (b: Buffer) => out.push(b));
      proc.stderr!.on("data", (b: Buffer) => err.push(b));
      proc.stdin!.on("error", () => {});
      proc.stdin!.end(opts.input ?? Buffer.alloc(0));
      const timer = setTimeout(() => {
        proc.kill("SIGKILL");
        reject(new Error(`${cmd} ${args.join(" ")} timed out`));
      }, opts.timeoutMs ?? 60_000);
      exited.then((r) => {
        clearTimeout(timer);
        setTimeout(() =>
          resolve({
            code: r.code ?? 128,
            stdout: Buffer.concat(out),
            stderr: Buffer.concat(err).toString(),
          }), 50);
      });
    });
  }

  /** dog against sheep i, from inside its namespace; a timeout comes back as code -1. */
  async dog(
    i: number,
    args: string[],
    timeoutMs = 60_000,
    input?: Buffer,
  ): Promise<{ code: number; stdout: Buffer; stderr: string }> {
    const [cmd, ...pre] = sheepCommand();
    try {
      return await this.run(this.ns(i), cmd, [
        ...pre,
        "dog",
        ...args,
        "-a",
        this.addr(i),
        "-p",
        String(SHEEP_PORT),
      ], { input, timeoutMs });
    } catch (e) {
      return { code: -1, stdout: Buffer.alloc(0), stderr: (e as Error).message };
    }
  }

  /** Cuts sheep `side` off from ZooKeeper and every other sheep (they still reach each other). */
  partition(side: number[]): void {
    for (const i of side) {
      ip("-n", this.hub, "link", "set", `${this.ns(i).replace(/-/g, "")}o`, "master", "br1");
    }
  }

  heal(side: number[]): void {
    for (const i of side) {
      ip("-n", this.hub, "link", "set", `${this.ns(i).replace(/-/g, "")}o`, "master", "br0");
    }
  }

  async kill(i: number): Promise<void> {
    const p = this.procs.get(`s${i}`);
    if (!p || p.done) return;
    p.proc.kill("SIGKILL");
    await p.exited;
  }

  async destroy(): Promise<void> {
    for (const p of this.procs.values()) {
      if (!p.done) p.proc.kill("SIGKILL");
    }
    await Promise.all([...this.procs.values()].map((p) => p.exited));
    for (const n of this.namespaces.reverse()) {
      try {
        ip("netns", "del", n);
      } catch { /* already gone */ }
      liveNamespaces.delete(n);
    }
    this.namespaces = [];
    if (process.env.KEEP === "1") console.error(`[netns] KEEP=1: kept ${this.root}`);
    else fs.rmSync(this.root, { recursive: true, force: true });
    this.release();
  }
}
