// A throwaway ZooKeeper server (Debian's zookeeper package) for e2e tests: random port on
// 127.0.0.1, temp data dir, registered with the cluster.ts watchdog so it dies with the test process.
import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { freePort, registerPid } from "./cluster.ts";

export interface ZookeeperServer {
  port: number;
  /** "127.0.0.1:<port>" for -c zookeeper:... */
  hosts: string;
  /** Stops the server for good (SIGTERM, then SIGKILL) and removes its data dir. */
  stop(): Promise<void>;
  /** SIGKILLs the server; restart() brings it back with the same port and data (sessions survive). */
  kill(): Promise<void>;
  /** Starts the server again (killing it first if it runs) and waits until it answers `ruok`. */
  restart(): Promise<void>;
  /** The server's captured output (for failure messages). */
  logTail(lines?: number): string;
}

// zookeeper.jar's manifest Class-Path names its other dependencies.
const JARS = ["/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar"];

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Sends a four-letter word; resolves with the reply ("" when nothing answers). */
export function fourLetter(port: number, word: string, timeoutMs = 1000): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
    let out = "";
    const done = () => {
      clearTimeout(t);
      s.removeAllListeners();
      s.on("error", () => {});
      s.destroy();
      resolve(out);
    };
    const t = setTimeout(done, timeoutMs);
    s.on("connect", () => s.write(word));
    s.on("data", (d) => (out += d.toString()));
    s.on("end", done);
    s.on("close", done);
    s.on("error", done);
  });
}

/**
 * Starts ZooKeeper. tickTime defaults to 1000 ms (session expiry is checked once per tick), and
 * session timeouts from 2 s to 60 s are allowed so tests can pick short ones.
 */
export async function startZookeeper(opts: { tickTime?: number } = {}): Promise<ZookeeperServer> {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-zk-"));
  fs.mkdirSync(path.join(dir, "data"));
  const cfg = path.join(dir, "zoo.cfg");
  const tick = opts.tickTime ?? 1000;
  fs.writeFileSync(
    cfg,
    [
      `tickTime=${tick}`,
      `dataDir=${path.join(dir, "data")}`,
      `clientPort=${port}`,
      "clientPortAddress=127.0.0.1",
      "admin.enableServer=false",
      "4lw.commands.whitelist=ruok,stat,srvr,mntr,cons",
      "maxClientCnxns=0",
      `minSessionTimeout=${2 * tick}`,
      "maxSessionTimeout=60000",
      // A test cluster writes little; syncing every transaction only slows the tests down.
      "forceSync=no",
      "",
    ].join("\n"),
  );
  const logFile = path.join(dir, "zookeeper.log");
  const classpath = JARS.filter((j) => fs.existsSync(j)).join(":");
  let proc: ChildProcess | null = null;
  let exited: Promise<unknown> = Promise.resolve();
  let first = true;
  let stopped = false;
  let release = () => {};

  const tail = (lines = 40) => {
    try {
      return fs.readFileSync(logFile, "utf8").split("\n").slice(-lines - 1).join("\n");
    } catch {
      return "";
    }
  };

  const launch = async () => {
    const fd = fs.openSync(logFile, "a");
    try {
      proc = spawn("java", [
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Dzookeeper.admin.enableServer=false",
        "-cp",
        classpath,
        "org.apache.zookeeper.server.ZooKeeperServerMain",
        cfg,
      ], { stdio: ["ignore", fd, fd], env: process.env });
    } finally {
      fs.closeSync(fd);
    }
    const reg = registerPid(proc, first ? dir : undefined);
    if (first) release = reg.release;
    first = false;
    let done = false;
    exited = reg.exited.then(() => (done = true));
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (done) throw new Error(`zookeeper exited during startup\n${tail()}`);
      if ((await fourLetter(port, "ruok", 500)) === "imok") return;
      if (Date.now() > deadline) {
        proc.kill("SIGKILL");
        throw new Error(`zookeeper did not answer ruok on port ${port} within 30 s\n${tail()}`);
      }
      await sleep(100);
    }
  };

  const killNow = async (signal: NodeJS.Signals) => {
    const p = proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    p.kill(signal);
    const r = await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]);
    if (!r) {
      p.kill("SIGKILL");
      await exited;
    }
    proc = null;
  };

  try {
    await launch();
  } catch (e) {
    await killNow("SIGKILL");
    fs.rmSync(dir, { recursive: true, force: true });
    release();
    throw e;
  }

  return {
    port,
    hosts: `127.0.0.1:${port}`,
    logTail: tail,
    async kill() {
      await killNow("SIGKILL");
    },
    async restart() {
      if (stopped) throw new Error("zookeeper: restart after stop()");
      await killNow("SIGKILL");
      await launch();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await killNow("SIGTERM");
      if (process.env.KEEP === "1") {
        console.error(`[zookeeper] KEEP=1: kept ${dir}`);
      } else {
        fs.rmSync(dir, { recursive: true, force: true });
      }
      release();
    },
  };
}
