// A real corosync 3 for e2e tests (single-node knet ring on 127.0.0.1, see real-components.md).
// Only one corosync can run per host (fixed IPC names, UDP port 5405), so a running one is reused
// (and left alone); one started here is killed by stop() or, at the latest, with the test process.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { registerPid } from "./cluster.ts";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** True when the corosync executable is installed. */
export function corosyncInstalled(): boolean {
  const r = spawnSync("corosync", ["-v"], { stdio: "ignore", timeout: 5000 });
  return r.status === 0;
}

/** True when a corosync answers CPG clients (corosync-cpgtool connects). */
export function corosyncReachable(): boolean {
  const r = spawnSync("corosync-cpgtool", [], { stdio: "ignore", timeout: 5000 });
  return r.status === 0;
}

export interface Corosync {
  /** False when an already running corosync was reused (stop() leaves it running). */
  readonly owned: boolean;
  readonly pid: number | null;
  /** corosync's own output (owned instances only). */
  readonly logFile: string | null;
  stop(): Promise<void>;
}

/** The CPG group name to give one test cluster (`-c corosync:<group>`), unique per call. */
export function uniqueGroup(): string {
  return `sdtest-${randomBytes(5).toString("hex")}`;
}

export async function startCorosync(timeoutMs = 15_000): Promise<Corosync> {
  if (corosyncReachable()) return { owned: false, pid: null, logFile: null, stop: () => Promise.resolve() };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-corosync-"));
  const conf = path.join(dir, "corosync.conf");
  fs.writeFileSync(
    conf,
    `totem {
  version: 2
  cluster_name: sd${randomBytes(4).toString("hex")}
  transport: knet
  crypto_cipher: none
  crypto_hash: none
  token: 1000
}
nodelist {
  node {
    ring0_addr: 127.0.0.1
    name: node1
    nodeid: 1
  }
}
quorum {
  provider: corosync_votequorum
}
logging {
  to_stderr: yes
  to_syslog: no
  to_logfile: no
}
`,
  );
  const logFile = path.join(dir, "corosync.log");
  const fd = fs.openSync(logFile, "a");
  let proc: ChildProcess;
  try {
    proc = spawn("corosync", ["-f", "-c", conf], { stdio: ["ignore", fd, fd] });
  } finally {
    fs.closeSync(fd);
  }
  const reg = registerPid(proc, dir);
  let done = false;
  void reg.exited.then(() => (done = true));
  const log = () => {
    try {
      return fs.readFileSync(logFile, "utf8").split("\n").slice(-20).join("\n");
    } catch {
      return "";
    }
  };
  const deadline = Date.now() + timeoutMs;
  while (!corosyncReachable()) {
    if (done) {
      const r = await reg.exited;
      throw new Error(`corosync exited during startup (code ${r.code}, signal ${r.signal})\n${log()}`);
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      await reg.exited;
      throw new Error(`corosync not reachable after ${timeoutMs} ms\n${log()}`);
    }
    await sleep(100);
  }
  let stopped = false;
  return {
    owned: true,
    pid: proc.pid ?? null,
    logFile,
    async stop() {
      if (stopped) return;
      stopped = true;
      if (!done) {
        proc.kill("SIGTERM");
        const r = await Promise.race([reg.exited, sleep(10_000).then(() => null)]);
        if (r === null) {
          proc.kill("SIGKILL");
          await reg.exited;
        }
      }
      reg.release();
      if (process.env.KEEP !== "1") fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
