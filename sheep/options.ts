// `sheep` command-line options (sheep-daemon.md §1.1), parsed with node:util parseArgs
// (JSR's @std/cli is unreachable here).
import { parseArgs } from "node:util";
import { VERSION } from "../core/version.ts";
import { LOG_LEVELS } from "./log.ts";

export interface SheepOptions {
  port: number;
  bindAddr: string | null;
  myAddr: string | null;
  zone: number | null;
  cluster: string;
  logDir: string | null;
  logLevel: number;
  logDst: "file" | "stdout" | "stderr";
  nosync: boolean;
  foreground: boolean;
  pidfile: string | null;
  gateway: boolean;
  vnodes: number | null;
  nbd: { host: string; port: number } | null;
  /** --http: /metrics, /healthz and the dashboard (loopback unless an address is given). */
  http: { host: string; port: number } | null;
  recovery: { max: number; interval: number } | null;
  journal: string | null;
  cache: string | null;
  directio: boolean;
  baseDir: string;
  objDirs: string[];
}

export class UsageError extends Error {}

const OPTIONS = {
  port: { type: "string", short: "p" },
  bindaddr: { type: "string", short: "b" },
  myaddr: { type: "string", short: "y" },
  zone: { type: "string", short: "z" },
  cluster: { type: "string", short: "c" },
  log: { type: "string", short: "l" },
  nosync: { type: "boolean", short: "n" },
  foreground: { type: "boolean", short: "f" },
  pidfile: { type: "string", short: "P" },
  gateway: { type: "boolean", short: "g" },
  Gateway: { type: "boolean", short: "G" },
  vnodes: { type: "string", short: "V" },
  recovery: { type: "string", short: "R" },
  journal: { type: "string", short: "j" },
  cache: { type: "string", short: "w" },
  directio: { type: "boolean", short: "D" },
  nbd: { type: "string" },
  http: { type: "string" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "v" },
} as const;

export const HELP: Array<[string, string, string]> = [
  ["b", "bindaddr", "specify IP address of interface to listen on"],
  ["c", "cluster", "specify the cluster driver (local[:dir], zookeeper:host:port,...)"],
  ["D", "directio", "use direct IO for backend store"],
  ["f", "foreground", "make the program run in foreground"],
  ["g", "gateway", "make the program run as a gateway mode (also -G)"],
  ["h", "help", "display this help and exit"],
  ["j", "journal", "use journal file to log all the write operations"],
  ["l", "log", "specify the log level, the log directory and the log format"],
  ["n", "nosync", "drop O_SYNC for write of backend"],
  ["p", "port", "specify the TCP port on which to listen (default: 7000)"],
  ["P", "pidfile", "create a pid file"],
  ["R", "recovery", "specify the recovery throttling (max=N,interval=MS)"],
  ["v", "version", "show the version"],
  ["V", "vnodes", "set number of vnodes"],
  ["w", "cache", "enable object cache"],
  ["y", "myaddr", "specify the address advertised to other sheep"],
  ["z", "zone", "specify the zone id (default: determined by listen address)"],
];

export function helpText(): string {
  const lines = [
    `Sheepdog daemon (version ${VERSION})`,
    "Usage: sheep [OPTION]... [PATH] (default: /tmp)",
    "Options:",
  ];
  for (const [s, l, d] of HELP) lines.push(`  -${s}, --${l.padEnd(18)}${d}`);
  lines.push(`      --${"nbd".padEnd(18)}serve VDIs over NBD on [ADDR:]PORT (off unless given)`);
  lines.push(
    `      --${"http".padEnd(18)}serve metrics and a dashboard on [ADDR:]PORT (127.0.0.1)`,
  );
  lines.push("", "Try 'sheep -<opt>' for more information about each option.");
  return lines.join("\n") + "\n";
}

function parseIntStrict(s: string, what: string, min: number, max: number): number {
  if (!/^\d+$/.test(s)) throw new UsageError(`Invalid ${what} '${s}'`);
  const n = Number(s);
  if (n < min || n > max) throw new UsageError(`Invalid ${what} '${s}'`);
  return n;
}

/** Parses `key=value,key=value` sub-options, matching keys by prefix as upstream does. */
function subOptions(s: string, keys: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const item of s.split(",")) {
    if (!item) continue;
    const eq = item.indexOf("=");
    const k = eq < 0 ? item : item.slice(0, eq);
    const v = eq < 0 ? "" : item.slice(eq + 1);
    const key = keys.find((x) => x.startsWith(k) && k.length > 0);
    if (!key) throw new UsageError(`invalid option ${item}`);
    out.set(key, v);
  }
  return out;
}

/** `[ADDR:]PORT`, ADDR possibly a bracketed IPv6 address. */
function hostPort(s: string, defaultHost: string, what: string): { host: string; port: number } {
  const colon = s.lastIndexOf(":");
  const host = colon < 0 ? defaultHost : s.slice(0, colon).replace(/^\[|\]$/g, "");
  const port = parseIntStrict(colon < 0 ? s : s.slice(colon + 1), what, 1, 65535);
  if (!host) throw new UsageError(`Invalid ${what} '${s}'`);
  return { host, port };
}

export function parseSheepArgs(argv: string[]): SheepOptions | "help" | "version" {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const v = parsed.values;
  if (v.help) return "help";
  if (v.version) return "version";
  if (parsed.positionals.length > 1) {
    throw new UsageError(`too many arguments: ${parsed.positionals.join(" ")}`);
  }
  const pathArg = parsed.positionals[0] ?? "/tmp";
  const [baseDir, ...objDirs] = pathArg.split(",");
  const o: SheepOptions = {
    port: v.port !== undefined ? parseIntStrict(v.port, "port number", 1, 65535) : 7000,
    bindAddr: v.bindaddr ?? null,
    myAddr: v.myaddr ?? null,
    zone: v.zone !== undefined ? parseIntStrict(v.zone, "zone id", 0, 4294967295) : null,
    cluster: v.cluster ?? "local",
    logDir: null,
    logLevel: 6,
    logDst: "file",
    nosync: !!v.nosync,
    foreground: !!v.foreground,
    pidfile: v.pidfile ?? null,
    gateway: !!(v.gateway || v.Gateway),
    vnodes: v.vnodes !== undefined ? parseIntStrict(v.vnodes, "number of vnodes", 1, 65535) : null,
    nbd: null,
    http: null,
    recovery: null,
    journal: v.journal ?? null,
    cache: v.cache ?? null,
    directio: !!v.directio,
    baseDir,
    objDirs,
  };
  if (o.gateway && o.vnodes !== null) throw new UsageError("Cannot use -V and -g at the same time");
  if (v.log !== undefined) {
    const m = subOptions(v.log, ["dir", "level", "format", "dst"]);
    if (m.has("dir")) o.logDir = m.get("dir")!;
    if (m.has("level")) {
      const lv = m.get("level")!;
      const idx = /^\d+$/.test(lv)
        ? Number(lv)
        : LOG_LEVELS.indexOf(lv as typeof LOG_LEVELS[number]);
      if (idx < 0 || idx > 7) throw new UsageError(`invalid log level: ${lv}`);
      o.logLevel = idx;
    }
    if (m.has("dst")) {
      const d = m.get("dst")!;
      if (d === "stdout") {
        o.logDst = "stdout";
        o.foreground = true;
      } else if (d === "default") o.logDst = "file";
      else if (d === "stderr") o.logDst = "stderr";
      else throw new UsageError(`invalid log destination: ${d}`);
      if (o.logDst !== "file" && m.has("dir")) {
        throw new UsageError("dir= cannot be used with a non-default log destination");
      }
    }
  }
  if (v.recovery !== undefined) {
    const m = subOptions(v.recovery, ["max", "interval"]);
    const max = parseIntStrict(m.get("max") ?? "", "recovery max", 1, 1 << 30);
    const interval = parseIntStrict(m.get("interval") ?? "", "recovery interval", 1, 1 << 30);
    o.recovery = { max, interval };
  }
  if (v.nbd !== undefined) {
    const s = v.nbd;
    const colon = s.lastIndexOf(":");
    const host = colon < 0 ? "0.0.0.0" : s.slice(0, colon).replace(/^\[|\]$/g, "");
    const port = parseIntStrict(colon < 0 ? s : s.slice(colon + 1), "NBD port", 1, 65535);
    o.nbd = { host, port };
  }
  if (v.http !== undefined) o.http = hostPort(v.http, "127.0.0.1", "HTTP port");
  const validDriver = /^(local(:.*)?|zookeeper:.+|corosync(:.*)?)$/.test(o.cluster);
  if (!validDriver) {
    throw new UsageError(
      `Invalid cluster driver '${o.cluster}'\nSupported drivers: local zookeeper corosync`,
    );
  }
  return o;
}
