// A real corosync 3 for e2e tests (single-node knet ring on 127.0.0.1, see real-components.md).
//
// Only one corosync can run per host (fixed IPC names, UDP port 5405), and test files may run in
// parallel, so the instance is shared: every test process that uses it registers its pid under
// <tmp>/sheepdog-corosync/users. stop() unregisters and stops corosync when no live user is left.
// A detached reaper does the same for users that died without stop() (bun test killed, crash), so
// corosync never outlives the last test process by more than a second or two. A corosync that
// these helpers did not start (a system service) is used and never stopped.
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const STATE = path.join(os.tmpdir(), "sheepdog-corosync");
const USERS = path.join(STATE, "users");
const LOCK = path.join(STATE, "lock");
const PIDFILE = path.join(STATE, "corosync.pid");

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

/** The CPG group name to give one test cluster (`-c corosync:<group>`), unique per call. */
export function uniqueGroup(): string {
  return `sdtest-${randomBytes(5).toString("hex")}`;
}

export interface Corosync {
  /** Pid of the corosync these helpers started, or null for a foreign one. */
  readonly pid: number | null;
  /** corosync's output (instances these helpers started). */
  readonly logFile: string | null;
  /** Live test processes other than this one using the instance. */
  otherUsers(): number;
  /** Unregisters this process; stops corosync when it was started here and nobody else uses it. */
  stop(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/** Pid of the running corosync these helpers started (its command line names STATE), if any. */
function ourCorosync(): number | null {
  try {
    const pid = Number(fs.readFileSync(PIDFILE, "utf8").trim());
    if (!pid || !alive(pid)) return null;
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
    return cmd.startsWith("corosync\0") && cmd.includes(STATE) ? pid : null;
  } catch {
    return null;
  }
}

/** Live registered users, dropping the files of dead ones. */
function liveUsers(): number[] {
  const out: number[] = [];
  let names: string[] = [];
  try {
    names = fs.readdirSync(USERS);
  } catch { /* none */ }
  for (const n of names) {
    const pid = Number(n);
    if (pid && alive(pid)) out.push(pid);
    else fs.rmSync(path.join(USERS, n), { force: true });
  }
  return out;
}

/** Cross-process mutex (mkdir); a holder that died, or held it over 10 s, loses it. */
async function withLock<T>(f: () => Promise<T>): Promise<T> {
  fs.mkdirSync(STATE, { recursive: true });
  for (;;) {
    try {
      fs.mkdirSync(LOCK);
      fs.writeFileSync(path.join(LOCK, "pid"), String(process.pid));
      break;
    } catch (e) {
      if ((e as { code?: string }).code !== "EEXIST") throw e;
      let stale = false;
      try {
        const st = fs.statSync(LOCK);
        const pid = Number(fs.readFileSync(path.join(LOCK, "pid"), "utf8"));
        stale = (pid > 0 && !alive(pid)) || Date.now() - st.mtimeMs > 10_000;
      } catch {
        try {
          stale = Date.now() - fs.statSync(LOCK).mtimeMs > 2_000;
        } catch { /* just released */ }
      }
      if (stale) fs.rmSync(LOCK, { recursive: true, force: true });
      else await sleep(30);
    }
  }
  try {
    return await f();
  } finally {
    fs.rmSync(LOCK, { recursive: true, force: true });
  }
}

// Runs detached: when no registered user is alive any more, stops corosync (TERM, then KILL).
const REAPER = `
cpid=$1; state=$2
while kill -0 "$cpid" 2>/dev/null; do
  sleep 1
  if mkdir "$state/lock" 2>/dev/null; then
    echo $$ > "$state/lock/pid"
    n=0
    for f in "$state"/users/*; do
      [ -e "$f" ] || continue
      if kill -0 "\${f##*/}" 2>/dev/null; then n=$((n + 1)); else rm -f "$f"; fi
    done
    if [ "$n" -eq 0 ]; then
      kill "$cpid" 2>/dev/null
      i=0; while kill -0 "$cpid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
      kill -9 "$cpid" 2>/dev/null
      [ "\${KEEP:-}" = 1 ] || rm -rf "$state"/run-*
      rm -rf "$state/lock"
      exit 0
    fi
    rm -rf "$state/lock"
  fi
done
`;

async function stopOurs(pid: number): Promise<void> {
  try {
    process.kill(pid, "SIGTERM");
  } catch { /* gone */ }
  for (let i = 0; i < 100 && alive(pid); i++) await sleep(100);
  if (alive(pid)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch { /* gone */ }
    for (let i = 0; i < 50 && alive(pid); i++) await sleep(100);
  }
}

function config(): string {
  return `totem {
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
`;
}

/** Makes sure a corosync runs (starting one if needed) and registers this process as its user. */
export async function startCorosync(timeoutMs = 15_000): Promise<Corosync> {
  const me = path.join(USERS, String(process.pid));
  const started = await withLock(async () => {
    fs.mkdirSync(USERS, { recursive: true });
    fs.writeFileSync(me, "");
    if (corosyncReachable()) return null;
    const stale = ourCorosync();
    if (stale) await stopOurs(stale); // running but not answering: start afresh
    const dir = fs.mkdtempSync(path.join(STATE, "run-"));
    const conf = path.join(dir, "corosync.conf");
    fs.writeFileSync(conf, config());
    const logFile = path.join(dir, "corosync.log");
    const fd = fs.openSync(logFile, "a");
    let pid: number | undefined;
    try {
      // Detached: it belongs to every test process using it, not to this one.
      const p = spawn("corosync", ["-f", "-c", conf], {
        stdio: ["ignore", fd, fd],
        detached: true,
      });
      p.unref();
      pid = p.pid;
    } finally {
      fs.closeSync(fd);
    }
    if (!pid) throw new Error("cannot run corosync");
    fs.writeFileSync(PIDFILE, String(pid));
    spawn("/bin/sh", ["-c", REAPER, "sheepdog-corosync-reaper", String(pid), STATE], {
      stdio: "ignore",
      detached: true,
    })
      .unref();
    const deadline = Date.now() + timeoutMs;
    while (!corosyncReachable()) {
      const tail = () => {
        try {
          return fs.readFileSync(logFile, "utf8").split("\n").slice(-20).join("\n");
        } catch {
          return "";
        }
      };
      if (!alive(pid)) throw new Error(`corosync exited during startup\n${tail()}`);
      if (Date.now() > deadline) {
        await stopOurs(pid);
        throw new Error(`corosync not reachable after ${timeoutMs} ms\n${tail()}`);
      }
      await sleep(100);
    }
    return { pid, logFile };
  }).catch((e) => {
    fs.rmSync(me, { force: true });
    throw e;
  });
  let stopped = false;
  return {
    pid: started?.pid ?? null,
    logFile: started?.logFile ?? null,
    otherUsers: () => liveUsers().filter((p) => p !== process.pid).length,
    async stop() {
      if (stopped) return;
      stopped = true;
      await withLock(async () => {
        fs.rmSync(me, { force: true });
        if (liveUsers().length) return;
        const pid = ourCorosync();
        if (pid) await stopOurs(pid);
        for (const e of fs.readdirSync(STATE)) {
          if (e.startsWith("run-") && process.env.KEEP !== "1") {
            fs.rmSync(path.join(STATE, e), { recursive: true, force: true });
          }
        }
      });
    },
  };
}
