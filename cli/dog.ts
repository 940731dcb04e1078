// `dog`: the Sheepdog administrator CLI (dog-cli.md). Same commands, output and exit codes as
// upstream 1.0. This file is the dispatch: the handler of every subcommand (one table), the
// per-family option parsers, and the entry point; the commands live in vdi*.ts, backup.ts,
// node.ts and cluster.ts.
import { clusterSnapshot } from "./farm.ts";
import { benchmarkIo } from "./benchmark.ts";
import { Buffer } from "node:buffer";
import * as dns from "node:dns";
import { isIP } from "node:net";
import { NetworkError } from "../io/client.ts";
import { VERSION } from "../core/version.ts";
import { cFixed, invalidCopiesMessage, isNumeric, parseCopies } from "./format.ts";
import { findCommand, findSub, invalidSubcommand, mainUsage, parseSubArgs } from "./options.ts";
import {
  Ctx,
  err,
  Exit,
  EXIT_FAILURE,
  EXIT_SUCCESS,
  EXIT_SYSFAIL,
  EXIT_USAGE,
  flushStream,
  type Handler,
  onStdoutError,
  out,
  STORE_LEN,
  updateNodeList,
} from "./common.ts";
import { vdiCheck, vdiLock } from "./vdi-check.ts";
import { vdiCache } from "./vdi-cache.ts";
import {
  vdiAlterCopy,
  vdiClone,
  vdiCreate,
  vdiDelete,
  vdiList,
  vdiRead,
  vdiResize,
  vdiRollback,
  vdiSnapshot,
  vdiWrite,
} from "./vdi.ts";
import { vdiGetattr, vdiGraph, vdiObject, vdiSetattr, vdiTrack, vdiTree } from "./vdi-view.ts";
import { vdiBackup, vdiRestore } from "./backup.ts";
import {
  nodeInfo,
  nodeKill,
  nodeList,
  nodeLog,
  nodeMd,
  nodeRecovery,
  nodeScrub,
  nodeStat,
  nodeVnodes,
} from "./node.ts";
import {
  clusterAlterCopy,
  clusterCheck,
  clusterFormat,
  clusterInfo,
  clusterRecover,
  clusterReweight,
  clusterShutdown,
} from "./cluster.ts";

// ---------------------------------------------------------------------------------------------
// dispatch

const HANDLERS: Record<string, Handler> = {
  "vdi check": vdiCheck,
  "vdi create": vdiCreate,
  "vdi snapshot": vdiSnapshot,
  "vdi clone": vdiClone,
  "vdi delete": vdiDelete,
  "vdi rollback": vdiRollback,
  "vdi list": vdiList,
  "vdi tree": vdiTree,
  "vdi graph": vdiGraph,
  "vdi object": vdiObject,
  "vdi track": vdiTrack,
  "vdi setattr": vdiSetattr,
  "vdi getattr": vdiGetattr,
  "vdi resize": vdiResize,
  "vdi read": vdiRead,
  "vdi write": vdiWrite,
  "vdi backup": vdiBackup,
  "vdi restore": vdiRestore,
  "vdi alter-copy": vdiAlterCopy,
  "vdi lock": vdiLock,
  "vdi cache": vdiCache,
  "node kill": nodeKill,
  "node list": nodeList,
  "node info": nodeInfo,
  "node recovery": nodeRecovery,
  "node md": nodeMd,
  "node scrub": nodeScrub,
  "node stat": nodeStat,
  "node log": nodeLog,
  "node vnodes": nodeVnodes,
  "cluster info": clusterInfo,
  "cluster format": clusterFormat,
  "cluster shutdown": clusterShutdown,
  "cluster recover": clusterRecover,
  "cluster reweight": clusterReweight,
  "cluster check": clusterCheck,
  "cluster alter-copy": clusterAlterCopy,
  "cluster snapshot": (c) => clusterSnapshot(c, { updateNodeList, format: clusterFormat }),
  "benchmark io": benchmarkIo,
};

/** str_to_addr(): IPv4/IPv6 literal or a resolvable host name. */
async function resolveAddr(s: string): Promise<string | null> {
  if (isIP(s)) return s;
  if (!s) return null;
  try {
    // sheep usually listens on IPv4; prefer it when a name has both kinds of address
    const rs = await dns.promises.lookup(s, { all: true });
    return (rs.find((r) => r.family === 4) ?? rs[0])?.address ?? null;
  } catch {
    return null;
  }
}

function parsePort(s: string): number | null {
  if (!isNumeric(s)) return null;
  const n = Number(s);
  return n >= 1 && n <= 65535 ? n : null;
}

/** strtol(s, &p, 10) with "whole string consumed" and value. */
function strtolFull(s: string): { ok: boolean; value: number } {
  const m = /^[ \t\n\v\f\r]*([+-]?\d+)$/.exec(s);
  if (!m) return { ok: false, value: 0 };
  return { ok: true, value: Number(m[1]) };
}

function blockSizeShiftOpt(opt: string): number {
  const m = /^[ \t\n\v\f\r]*([+-]?\d+)/.exec(opt);
  const shift = m ? Number(BigInt.asUintN(32, BigInt(m[1]))) & 0xff : 0;
  if (shift > 31) {
    err("Object Size is limited to 2^31. Please set shift bit lower than 31");
    throw new Exit(EXIT_FAILURE);
  } else if (shift < 20) {
    err("Object Size is larger than 2^20. Please set shift bit larger than 20");
    throw new Exit(EXIT_FAILURE);
  }
  return shift;
}

function vdiParser(c: Ctx, ch: string, opt: string): void {
  const d = c.vdi;
  switch (ch) {
    case "P":
      d.prealloc = true;
      break;
    case "n":
      d.noShare = true;
      break;
    case "i": {
      const m = opt.startsWith("0x")
        ? /^0x([0-9a-fA-F]+)/.exec(opt)
        : /^[ \t]*([+-]?\d+)/.exec(opt);
      if (!m) {
        err("The index must be a decimal integer or a hexadecimal integer started with 0x");
        throw new Exit(EXIT_FAILURE);
      }
      d.index = opt.startsWith("0x") ? parseInt(m[1], 16) : Number(m[1]);
      // uint64_t: -1 wraps to ~0, upstream's "no index" (the inode object)
      if (d.index < -1) d.index = 2 ** 64 + d.index;
      break;
    }
    case "s": {
      const r = strtolFull(opt);
      if (!r.ok) {
        d.snapshotId = 0;
        d.snapshotTag = Buffer.from(opt, "utf8").subarray(0, 255).toString("utf8");
      } else if (r.value === 0) {
        err("The snapshot id must be larger than zero");
        throw new Exit(EXIT_FAILURE);
      } else {
        d.snapshotId = r.value | 0;
      }
      break;
    }
    case "x":
      d.exclusive = true;
      break;
    case "d":
      d.delete = true;
      break;
    case "w":
      d.writeback = true;
      break;
    case "c": {
      const r = parseCopies(opt);
      if (!r) {
        err(invalidCopiesMessage(opt));
        throw new Exit(EXIT_FAILURE);
      }
      d.nrCopies = r.copies;
      d.copyPolicy = r.policy;
      break;
    }
    case "F": {
      const r = strtolFull(opt);
      if (!r.ok) {
        d.fromSnapshotId = 0;
        d.fromSnapshotTag = opt;
      } else d.fromSnapshotId = r.value;
      break;
    }
    case "f":
      d.force = true;
      break;
    case "y":
      d.storePolicy = 1;
      break;
    case "o": {
      const m = /^[ \t]*(?:0[xX])?([0-9a-fA-F]+)/.exec(opt);
      if (!m) {
        err("object id must be a hex integer");
        throw new Exit(EXIT_FAILURE);
      }
      d.oid = BigInt.asUintN(64, BigInt("0x" + m[1]));
      break;
    }
    case "e":
      d.exist = true;
      break;
    case "z":
      d.blockSizeShift = blockSizeShiftOpt(opt);
      break;
    case "R":
      d.reduceIdentical = true;
      break;
  }
}

function clusterParser(c: Ctx, ch: string, opt: string): void {
  const d = c.cluster;
  switch (ch) {
    case "b":
      d.name = Buffer.from(opt, "utf8").subarray(0, STORE_LEN - 1).toString("utf8");
      break;
    case "c": {
      const r = parseCopies(opt);
      if (!r) {
        err(invalidCopiesMessage(opt));
        throw new Exit(EXIT_FAILURE);
      }
      d.copies = r.copies;
      d.copyPolicy = r.policy;
      break;
    }
    case "f":
      d.force = true;
      break;
    case "l":
      d.useLock = true;
      break;
    case "m":
      d.multithread = true;
      d.strict = true;
      break; // upstream fallthrough
    case "t":
      d.strict = true;
      break;
    case "z":
      d.blockSizeShift = blockSizeShiftOpt(opt);
      break;
    case "V":
      d.fixedVnodes = true;
      break;
    case "R":
      d.recycleVid = true;
      break;
    case "d":
      d.diff = true;
      break;
    case "F":
      d.avoidDiskfull = true;
      break;
  }
}

function benchmarkParser(c: Ctx, ch: string, opt: string): void {
  const b = c.benchmark;
  if (ch === "w") b.workqueue = opt;
  else if (ch === "f") b.force = true;
  else if (ch === "t" || ch === "n") {
    const r = strtolFull(opt);
    if (!r.ok || r.value < 1 || r.value > 100_000_000) {
      err(`Invalid ${ch === "t" ? "total" : "number of threads"} '${opt}'`);
      throw new Exit(EXIT_USAGE);
    }
    if (ch === "t") b.total = r.value;
    else b.threads = r.value;
  }
}

function nodeParser(c: Ctx, ch: string): void {
  switch (ch) {
    case "A":
      c.node.allNodes = true;
      break;
    case "P":
      c.node.recoveryProgress = true;
      break;
    case "w":
      c.node.watch = true;
      break;
    case "l":
      c.node.local = true;
      break;
    case "f":
      c.node.force = true;
      break;
  }
}

async function run(argv: string[], version: string): Promise<number> {
  if (argv.length < 1) {
    out(mainUsage(version));
    return EXIT_SUCCESS;
  }
  const [cmdName, subName] = argv;
  const cmd = findCommand(cmdName);
  if (!cmd) {
    if (cmdName !== "help" && cmdName !== "--help" && cmdName !== "-h") {
      err(`Invalid command '${cmdName}'`);
      err("Try 'dog --help' for more information.");
      return EXIT_USAGE;
    }
    out(mainUsage(version));
    return EXIT_SUCCESS;
  }
  const sub = findSub(cmd, subName);
  if (!sub) {
    process.stderr.write(invalidSubcommand(cmd, subName));
    return EXIT_USAGE;
  }
  const start = performance.now();
  const c = new Ctx(cmd, sub);

  const envAddr = process.env.SHEEPDOG_DOG_ADDR;
  if (envAddr !== undefined) {
    const a = await resolveAddr(envAddr);
    if (!a) {
      err(`Invalid ip address ${envAddr}`);
      return EXIT_FAILURE;
    }
    c.host = a;
  }
  const envPort = process.env.SHEEPDOG_DOG_PORT;
  if (envPort !== undefined) {
    const p = parsePort(envPort);
    if (p === null) {
      err(`Invalid port number '${envPort}'`);
      return EXIT_USAGE;
    }
    c.port = p;
  }

  const parsed = parseSubArgs(cmd, sub, argv.slice(2));
  if (!parsed.ok) {
    err(parsed.message);
    err("Try 'dog --help' for more information.");
    return EXIT_USAGE;
  }
  for (const o of parsed.opts) {
    const v = typeof o.value === "string" ? o.value : "";
    switch (o.ch) {
      case "a": {
        const a = await resolveAddr(v);
        if (!a) {
          err(`Invalid ip address ${v}`);
          return EXIT_FAILURE;
        }
        c.host = a;
        continue;
      }
      case "p": {
        const p = parsePort(v);
        if (p === null) {
          err(`Invalid port number '${v}'`);
          return EXIT_USAGE;
        }
        c.port = p;
        continue;
      }
      case "r":
        c.raw = true;
        continue;
      case "v":
        c.verbose = true;
        continue;
      case "h":
        c.usage(EXIT_SUCCESS);
        break;
      case "T":
        c.elapsed = true;
        continue;
      case "j":
        c.json = true;
        continue;
    }
    if (cmd.name === "vdi") vdiParser(c, o.ch, v);
    else if (cmd.name === "cluster") clusterParser(c, o.ch, v);
    else if (cmd.name === "node") nodeParser(c, o.ch);
    else if (cmd.name === "benchmark") benchmarkParser(c, o.ch, v);
  }
  c.args = parsed.positionals;

  try {
    if (sub.needNodeList) await updateNodeList(c);
    if (sub.needArg && c.args.length === 0) c.usage(EXIT_USAGE);
    const ret = await HANDLERS[`${cmd.name} ${sub.name}`](c);
    if (ret === EXIT_USAGE) c.usage(EXIT_USAGE);
    if (c.elapsed) {
      out(`\nElapsed time: ${cFixed((performance.now() - start) / 1000, 3)} seconds\n`);
    }
    return ret;
  } finally {
    c.closing = true;
    c.pool.close();
    c.stdin.close();
  }
}

/** Entry point of `dog`: returns the exit code; never throws for user or cluster errors. */
export async function dogMain(argv: string[]): Promise<number> {
  process.stdout.on("error", onStdoutError);
  let code: number;
  try {
    code = await run(argv, VERSION);
  } catch (e) {
    if (e instanceof Exit) code = e.code;
    else if (e instanceof NetworkError) code = EXIT_SYSFAIL;
    else {
      err(`dog exits unexpectedly (${(e as Error)?.stack ?? String(e)}).`);
      code = EXIT_SYSFAIL;
    }
  }
  await flushStream(process.stdout);
  await flushStream(process.stderr);
  process.stdout.removeListener("error", onStdoutError);
  return code;
}
