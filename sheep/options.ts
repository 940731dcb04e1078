// `sheep` command-line options (sheep-daemon.md §1.1), parsed as upstream's getopt_long loop.
import type { LogFormat } from "./log.ts";
import { isIP } from "node:net";
import { getoptLong, type LongOption, strtolWhole } from "../core/getopt.ts";
import { LOG_LEVEL_HELP, OPTION_HELP, SUPPORTED_FEATURES } from "./options-help.ts";
import { VERSION } from "../core/version.ts";
import { type JournalOptions, parseJournalArg } from "../core/journal-record.ts";
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
  /** -l format=: upstream's line formats (sheep/log.ts). */
  logFormat: LogFormat;
  nosync: boolean;
  foreground: boolean;
  pidfile: string | null;
  gateway: boolean;
  vnodes: number | null;
  nbd: { host: string; port: number } | null;
  /** --http: /metrics, /healthz and the dashboard (loopback unless an address is given). */
  http: { host: string; port: number } | null;
  recovery: { max: number; interval: number } | null;
  /** -j: parsed and range-checked here; the directory is checked at start (io/journal.ts). */
  journal: JournalOptions | null;
  /** -w: the object cache (sheep/object-cache.ts); null when off. */
  cache: CacheOptions | null;
  /** --nbd-cache: whether NBD exports may use the cache write-back (default) or write-through. */
  nbdCache: "writeback" | "writethrough";
  directio: boolean;
  /** --scrub: background checksum + replica-hash scrub (sheep/scrub.ts); null = off. */
  scrub: { intervalS: number; rateMBs: number } | null;
  baseDir: string;
  objDirs: string[];
}

export interface CacheOptions {
  /** Bytes the cache files may take (data plus their 4 KiB headers). */
  size: number;
  directio: boolean;
  /** Cache directory; null: base_dir/cache. */
  dir: string | null;
}

/** The smallest cache that holds a useful working set (16 objects of 4 MiB). */
export const MIN_CACHE_SIZE = 64 * 1024 * 1024;

/** A refused command line: `message` goes to stderr, `stdout` (if any) to stdout; exit 1. */
export class UsageError extends Error {
  constructor(message: string, readonly stdout = "") {
    super(message);
  }
}

const SHORT_OPTS = "b:c:Dfgl:np:P:R:j:w:vV:y:z:hG";

const LONG_OPTS: LongOption[] = [
  { name: "bindaddr", hasArg: 1, val: "b" },
  { name: "cluster", hasArg: 1, val: "c" },
  { name: "directio", hasArg: 0, val: "D" },
  { name: "foreground", hasArg: 0, val: "f" },
  { name: "gateway", hasArg: 0, val: "g" },
  { name: "help", hasArg: 0, val: "h" },
  { name: "journal", hasArg: 1, val: "j" },
  { name: "log", hasArg: 1, val: "l" },
  { name: "nosync", hasArg: 0, val: "n" },
  { name: "port", hasArg: 1, val: "p" },
  { name: "pidfile", hasArg: 1, val: "P" },
  { name: "recovery", hasArg: 1, val: "R" },
  { name: "version", hasArg: 0, val: "v" },
  { name: "vnodes", hasArg: 1, val: "V" },
  { name: "cache", hasArg: 1, val: "w" },
  { name: "myaddr", hasArg: 1, val: "y" },
  { name: "zone", hasArg: 1, val: "z" },
  { name: "nbd", hasArg: 1, val: "nbd" },
  { name: "http", hasArg: 1, val: "http" },
  { name: "scrub", hasArg: 1, val: "scrub" },
  { name: "nbd-cache", hasArg: 1, val: "nbd-cache" },
];

/** On by default, once a day at 4 MB/s: bit rot is found without a client read, gently. */
export const DEFAULT_SCRUB = { intervalS: 86400, rateMBs: 4 };

export const HELP: Array<[string, string, string]> = [
  ["b", "bindaddr", "specify IP address of interface to listen on"],
  ["c", "cluster", "specify the cluster driver (default: local)"],
  ["D", "directio", "use direct IO for backend store"],
  ["f", "foreground", "make the program run in foreground"],
  ["g", "gateway", "make the program run as a gateway mode"],
  ["h", "help", "display this help and exit"],
  ["j", "journal", "use journal file to log all the write operations"],
  ["l", "log", "specify the log level, the log directory and the log format"],
  ["n", "nosync", "drop O_SYNC for write of backend"],
  ["p", "port", "specify the TCP port on which to listen (default: 7000)"],
  ["P", "pidfile", "create a pid file"],
  ["R", "recovery", "specify the recovery speed throttling"],
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
  lines.push(
    `      --${
      "scrub".padEnd(18)
    }scrub interval=SECONDS[smhd],rate=MB/s, or off (default 1d, 4 MB/s)`,
    `      --${"nbd-cache".padEnd(18)}writeback (default) or writethrough: NBD exports and -w`,
  );
  lines.push(
    "",
    "Try 'sheep <option>', e.g., 'sheep -z', to get more detail about specific option",
  );
  return lines.join("\n") + "\n";
}

export function versionText(): string {
  return `Sheepdog daemon version ${VERSION}\n${SUPPORTED_FEATURES}\tMiscellaneous: none\n`;
}

/** Upstream's number options: strtol over the whole word, then a range check. */
function parseNumber(s: string, min: number, max: number, error: string): number {
  const n = strtolWhole(s);
  if (n === null || n < BigInt(min) || n > BigInt(max)) throw new UsageError(error);
  return Number(n);
}

/** `key=value,...` sub-options as upstream's option parser: each item starts with `key=`. */
function subOptions(s: string, keys: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const item of s.split(",")) {
    if (!item) continue;
    const key = keys.find((k) => item.startsWith(`${k}=`));
    if (!key) throw new UsageError(`invalid option ${item}`);
    out.set(key, item.slice(key.length + 1));
  }
  return out;
}

/** `[ADDR:]PORT`, ADDR possibly a bracketed IPv6 address. */
function hostPort(s: string, defaultHost: string, what: string): { host: string; port: number } {
  const colon = s.lastIndexOf(":");
  const host = colon < 0 ? defaultHost : s.slice(0, colon).replace(/^\[|\]$/g, "");
  const p = colon < 0 ? s : s.slice(colon + 1);
  const port = parseNumber(p, 1, 65535, `Invalid ${what} '${p}'`);
  if (!host) throw new UsageError(`Invalid ${what} '${s}'`);
  return { host, port };
}

/** `--scrub off` or `--scrub interval=N[s|m|h|d],rate=MB/s` (either key may be left out). */
function parseScrub(arg: string): { intervalS: number; rateMBs: number } | null {
  if (arg === "off") return null;
  const m = subOptions(arg, ["interval", "rate"]);
  const out = { ...DEFAULT_SCRUB };
  const iv = m.get("interval");
  if (iv !== undefined) {
    const r = /^(\d+)([smhd]?)$/.exec(iv);
    const unit: Record<string, number> = { "": 1, s: 1, m: 60, h: 3600, d: 86400 };
    const n = r ? Number(r[1]) * unit[r[2]] : NaN;
    if (!(n >= 1 && n <= 365 * 86400)) throw new UsageError(`Invalid scrub interval '${iv}'`);
    out.intervalS = n;
  }
  const rate = m.get("rate");
  if (rate !== undefined) {
    out.rateMBs = parseNumber(rate, 1, 100000, `Invalid scrub rate '${rate}'`);
  }
  return out;
}

function parseLog(o: SheepOptions, arg: string): void {
  const m = subOptions(arg, ["dir", "level", "format", "dst"]);
  if (m.has("dir")) o.logDir = m.get("dir")!;
  if (m.has("level")) {
    const lv = m.get("level")!;
    const idx = LOG_LEVELS.indexOf(lv as typeof LOG_LEVELS[number]);
    if (idx < 0) throw new UsageError(`Invalid log level '${lv}'`, LOG_LEVEL_HELP);
    o.logLevel = idx;
  }
  if (m.has("format")) {
    const f = m.get("format")!;
    if (!["default", "server", "json"].includes(f)) {
      throw new UsageError(
        `invalid log format: ${f}\nvalid options are:\n\tdefault\n\tserver\n\tjson`,
      );
    }
    o.logFormat = f as LogFormat;
  }
  if (m.has("dst")) {
    const d = m.get("dst")!;
    if (d === "stdout") {
      o.logDst = "stdout";
      o.foreground = true;
    } else if (d === "default") o.logDst = "file";
    else if (d === "stderr") o.logDst = "stderr";
    else throw new UsageError(`invalid type of log destination: ${d}`);
  }
}

function parseRecovery(arg: string): { max: number; interval: number } {
  const m = subOptions(arg, ["max", "interval"]);
  const max = parseNumber(
    m.get("max") ?? "",
    1,
    1 << 30,
    `Invalid recovery max '${m.get("max") ?? ""}'`,
  );
  const iv = m.get("interval") ?? "";
  const interval = parseNumber(iv, 1, 1 << 30, `Invalid recovery interval '${iv}'`);
  return { max, interval };
}

/** `-w size=SIZE[,directio][,dir=PATH]`: SIZE in MiB unless it ends in K, M, G or T. */
function parseCache(arg: string): CacheOptions {
  const o: CacheOptions = { size: 0, directio: false, dir: null };
  let sized = false;
  for (const item of arg.split(",")) {
    if (!item) continue;
    if (item === "directio") o.directio = true;
    else if (item.startsWith("dir=")) {
      o.dir = item.slice(4);
      if (!o.dir) throw new UsageError("Invalid object cache option 'dir=': empty path");
    } else if (item.startsWith("size=")) {
      const v = item.slice(5);
      const m = /^(\d+)([kKmMgGtT]?)$/.exec(v);
      if (!m) throw new UsageError(`Invalid object cache size '${v}'`);
      const unit = { "": 20, k: 10, m: 20, g: 30, t: 40 }[m[2].toLowerCase()]!;
      o.size = Number(BigInt(m[1]) << BigInt(unit));
      sized = true;
    } else throw new UsageError(`Invalid object cache option '${item}'`);
  }
  if (!sized) throw new UsageError("Invalid object cache option: size= is required");
  if (!(o.size >= MIN_CACHE_SIZE) || !Number.isSafeInteger(o.size)) {
    throw new UsageError(`Invalid object cache size: at least 64M (${MIN_CACHE_SIZE} bytes)`);
  }
  return o;
}

function defaults(): SheepOptions {
  return {
    port: 7000,
    bindAddr: null,
    myAddr: null,
    zone: null,
    cluster: "local",
    logDir: null,
    logLevel: 6,
    logDst: "file",
    logFormat: "server",
    nosync: false,
    foreground: false,
    pidfile: null,
    gateway: false,
    vnodes: null,
    nbd: null,
    http: null,
    recovery: null,
    journal: null,
    cache: null,
    nbdCache: "writeback",
    directio: false,
    scrub: { ...DEFAULT_SCRUB },
    baseDir: "/tmp",
    objDirs: [],
  };
}

/**
 * Options are acted on in command-line order, as upstream's getopt loop does: the first bad one
 * is the one reported, and `-h`/`-v` win only when they come before it.
 */
export function parseSheepArgs(
  argv: string[],
  prog = "sheep",
  env: { POSIXLY_CORRECT?: string } = {},
): SheepOptions | "help" | "version" {
  const parsed = getoptLong(argv, SHORT_OPTS, LONG_OPTS, prog, {
    posixlyCorrect: env.POSIXLY_CORRECT !== undefined,
  });
  const o = defaults();
  for (const it of parsed.items) {
    if ("error" in it) {
      const detail = OPTION_HELP[it.optopt];
      if (detail) throw new UsageError(it.error, detail + "\n");
      throw new UsageError(`${it.error}\nTry 'sheep --help' for more information.`);
    }
    const arg = it.arg ?? "";
    switch (it.opt) {
      case "p":
        o.port = parseNumber(arg, 1, 65535, `Invalid port number '${arg}'`);
        break;
      case "z":
        o.zone = parseNumber(
          arg,
          0,
          4294967295,
          `Invalid zone id '${arg}': must be an integer between 0 and 4294967295`,
        );
        break;
      case "V":
        o.vnodes = parseNumber(
          arg,
          1,
          65535,
          `Invalid number of vnodes '${arg}': must be an integer between 1 and 65535`,
        );
        break;
      case "b":
        if (!isIP(arg)) throw new UsageError(`Bad address '${arg}'`);
        o.bindAddr = arg;
        break;
      case "y":
        if (isIP(arg) !== (arg.includes(":") ? 6 : 4)) {
          throw new UsageError(`Invalid address: '${arg}'`);
        }
        o.myAddr = arg;
        break;
      case "c":
        if (!/^(local(:.*)?|zookeeper:.+|corosync(:.*)?)$/.test(arg)) {
          throw new UsageError(`Invalid cluster driver '${arg}'`, SUPPORTED_FEATURES);
        }
        o.cluster = arg;
        break;
      case "l":
        parseLog(o, arg);
        break;
      case "n":
        o.nosync = true;
        break;
      case "f":
        o.foreground = true;
        break;
      case "P":
        o.pidfile = arg;
        break;
      case "g":
      case "G":
        o.gateway = true;
        break;
      case "R":
        o.recovery = parseRecovery(arg);
        break;
      case "j":
        try {
          o.journal = parseJournalArg(arg);
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
        break;
      case "w":
        o.cache = parseCache(arg);
        break;
      case "nbd-cache":
        if (arg !== "writeback" && arg !== "writethrough") {
          throw new UsageError(`Invalid --nbd-cache '${arg}': writeback or writethrough`);
        }
        o.nbdCache = arg;
        break;
      case "D":
        o.directio = true;
        break;
      case "http":
        o.http = hostPort(arg, "127.0.0.1", "HTTP port");
        break;
      case "scrub":
        o.scrub = parseScrub(arg);
        break;
      case "nbd": {
        const colon = arg.lastIndexOf(":");
        const host = colon < 0 ? "0.0.0.0" : arg.slice(0, colon).replace(/^\[|\]$/g, "");
        const p = colon < 0 ? arg : arg.slice(colon + 1);
        o.nbd = { host, port: parseNumber(p, 1, 65535, `Invalid NBD port '${p}'`) };
        break;
      }
      case "h":
        return "help";
      case "v":
        return "version";
    }
  }
  if (o.gateway && o.vnodes !== null) {
    throw new UsageError("Options '-g' and '-V' can not be both specified");
  }
  if (o.logDst !== "file" && o.logDir !== null) {
    throw new UsageError(
      `logdir (${o.logDir}) is specified but logging destination is ${o.logDst}`,
    );
  }
  // Upstream takes the first word left after the options as PATH and ignores the rest.
  const pathArg = parsed.positionals[0] ?? "/tmp";
  const [baseDir, ...objDirs] = pathArg.split(",");
  o.baseDir = baseDir;
  o.objDirs = objDirs;
  return o;
}
