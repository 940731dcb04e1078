// dog node: list, info, kill, recovery, md, stat, log, vnodes (upstream dog/node.c), and scrub
// (our extension: the background scrub of sheep/scrub.ts).
import { nodeCacheLines } from "./vdi-cache.ts";
import { mdInfoJson, nodeInfoJson, nodeJson, toJson } from "./json.ts";
import {
  decodeMdInfo,
  decodeRecoveryState,
  decodeScrubStatus,
  MD_INFO_SIZE,
  RECOVERY_STATE_SIZE,
  type RecoveryState,
  SCRUB_STATUS_SIZE,
  type ScrubStatus,
} from "../core/payloads.ts";
import { decodeNodeStats, NODE_STAT_SIZE } from "../core/node-stat.ts";
import { Buffer } from "node:buffer";
import { strtolWhole } from "../core/getopt.ts";
import { NetworkError } from "../io/client.ts";
import { nodeHostPort, type SdNode } from "../core/node.ts";
import { Flag, Header, Op, Res, strerror } from "../core/proto.ts";
import {
  banner,
  isNumeric,
  LOG_LEVELS,
  NODE_INFO_HEADER,
  NODE_LIST_HEADER,
  nodeInfoRow,
  nodeInfoTotal,
  nodeListRow,
  padLeft,
  padRight,
  RECOVERY_HEADER,
  recoveryRow,
  strftime,
  strnumber,
} from "./format.ts";
import {
  Ctx,
  err,
  Exit,
  EXIT_FAILURE,
  EXIT_SUCCESS,
  EXIT_SYSFAIL,
  EXIT_USAGE,
  genericSubcommand,
  out,
  showProgress,
  updateNodeList,
} from "./common.ts";
import { isSnap, parseVdi } from "./vdi-common.ts";

// ---------------------------------------------------------------------------------------------
// node commands

export async function nodeList(c: Ctx): Promise<number> {
  if (c.json) {
    out(toJson(c.nodes.map((n, i) => nodeJson(i, n))));
    return EXIT_SUCCESS;
  }
  if (!c.raw) out(NODE_LIST_HEADER);
  c.nodes.forEach((n, i) => out(nodeListRow(i, n, c.raw)));
  return EXIT_SUCCESS;
}

export async function nodeInfo(c: Ctx): Promise<number> {
  if (!c.raw && !c.json) out(NODE_INFO_HEADER);
  let success = 0, totalSize = 0n, totalAvail = 0n;
  const rows: { id: number; node: SdNode; size: bigint; free: bigint }[] = [];
  for (let i = 0; i < c.nodes.length; i++) {
    let ok = false, size = 0n, free = 0n;
    try {
      const rsp = await c.exec(Header.req(Op.STAT_SHEEP), undefined, c.nodes[i]);
      size = rsp.hdr.storeSize;
      free = rsp.hdr.storeFree;
      if (rsp.hdr.result === Res.SUCCESS) ok = true;
      else err(`Response's result: ${strerror(rsp.hdr.result)}`);
    } catch (e) {
      if (!(e instanceof NetworkError)) throw e;
    }
    if (ok) {
      if (c.json) rows.push({ id: i, node: c.nodes[i], size, free });
      else out(nodeInfoRow(i, size, free, c.raw));
      success++;
      totalSize += size;
      totalAvail += free;
    }
  }
  if (success === 0) {
    err("Cannot get information from any nodes");
    return EXIT_SYSFAIL;
  }
  const list = await parseVdi(c, false);
  if (!list) return EXIT_SYSFAIL;
  let vdiTotal = 0n;
  for (const v of list) if (!isSnap(v.header)) vdiTotal += v.header.vdiSize;
  if (c.json) out(toJson(nodeInfoJson(rows, vdiTotal)));
  else {out(
      nodeInfoTotal(totalSize, totalAvail, vdiTotal, c.raw) + await nodeCacheLines(c, c.nodes),
    );}
  return EXIT_SUCCESS;
}

export async function nodeKill(c: Ctx): Promise<number> {
  let target: SdNode | null = null;
  let local = false;
  if (c.node.local) local = true;
  const p = c.arg();
  if (p !== undefined) {
    if (local) {
      err("don't use -l option and specify node id at the same time");
      throw new Exit(EXIT_USAGE);
    }
    if (!isNumeric(p)) {
      err(`Invalid node id '${p}', please specify a numeric value`);
      throw new Exit(EXIT_USAGE);
    }
    const id = Number.parseInt(p, 10);
    if (id < 0 || id >= c.nodes.length) {
      err(`Invalid node id '${id}'`);
      throw new Exit(EXIT_USAGE);
    }
    target = c.nodes[id];
  }
  if (!target && !local) {
    err("please specify -l option or node id");
    throw new Exit(EXIT_USAGE);
  }
  const ok = await c.light(Header.req(Op.KILL_NODE), target ?? undefined);
  if (!ok) {
    err("Failed to execute request");
    throw new Exit(EXIT_FAILURE);
  }
  return EXIT_SUCCESS;
}

async function getRecoveryState(c: Ctx): Promise<RecoveryState | null> {
  const rsp = await c.exec(Header.req(Op.STAT_RECOVERY, { dataLength: RECOVERY_STATE_SIZE }));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(strerror(rsp.hdr.result));
    return null;
  }
  return decodeRecoveryState(rsp.data);
}

async function nodeRecoveryProgress(c: Ctx): Promise<number> {
  let st = await getRecoveryState(c);
  if (!st) return EXIT_SYSFAIL;
  if (!st.inRecovery) return EXIT_SUCCESS;
  for (;;) {
    const prevTotal = st.nrTotal;
    const next = await getRecoveryState(c);
    if (!next) return EXIT_SYSFAIL;
    st = next;
    if (!st.inRecovery) {
      showProgress(prevTotal, prevTotal, true);
      break;
    }
    switch (st.state) {
      case 0:
        out("\rpreparing a checked object list...");
        break;
      case 2:
        out("\rnotifying a completion of recovery...");
        break;
      default:
        showProgress(st.nrFinished, st.nrTotal, true);
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  return EXIT_SUCCESS;
}

async function nodeRecoveryInfo(c: Ctx): Promise<number> {
  if (c.node.recoveryProgress) return nodeRecoveryProgress(c);
  if (!c.raw) out(RECOVERY_HEADER);
  for (let i = 0; i < c.nodes.length; i++) {
    const n = c.nodes[i];
    const rsp = await c.exec(
      Header.req(Op.STAT_RECOVERY, { dataLength: RECOVERY_STATE_SIZE }),
      undefined,
      n,
    );
    if (rsp.hdr.result !== Res.SUCCESS) {
      err(strerror(rsp.hdr.result));
      return EXIT_FAILURE;
    }
    const st = decodeRecoveryState(rsp.data);
    if (st.inRecovery) out(recoveryRow(i, n, st.nrFinished, st.nrTotal, c.raw));
  }
  return EXIT_SUCCESS;
}

async function nodeRecoverySet(c: Ctx): Promise<number> {
  const a = c.arg(), b = c.arg(1);
  if (a === undefined || b === undefined) {
    err(`Invalid interval max (${a ?? "(null)"}), interval (${b ?? "(null)"})`);
    throw new Exit(EXIT_USAGE);
  }
  // strtol semantics as upstream: blanks and '+' allowed; max is a u32, interval a long long.
  const am = strtolWhole(a), bm = strtolWhole(b);
  if (am === null || am < 0n || am > 0xffffffffn) {
    err(`Invalid max (${a})`);
    throw new Exit(EXIT_USAGE);
  }
  if (bm === null || bm < 0n || bm > 0x7fffffffffffffffn) {
    err(`Invalid interval (${b})`);
    throw new Exit(EXIT_USAGE);
  }
  const max = Number(am), interval = bm;
  if ((max === 0) !== (interval === 0n)) {
    err(`Invalid interval max (${max}), interval (${interval})`);
    throw new Exit(EXIT_USAGE);
  }
  const payload = Buffer.alloc(24);
  payload.writeUInt32LE(max, 0);
  payload.writeBigUInt64LE(interval, 8);
  const rsp = await c.exec(
    Header.req(Op.SET_RECOVERY, { flags: Flag.CMD_WRITE, dataLength: RECOVERY_STATE_SIZE }),
    payload,
  );
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request");
    return 255;
  }
  return EXIT_SUCCESS;
}

async function nodeRecoveryGet(c: Ctx): Promise<number> {
  const rsp = await c.exec(Header.req(Op.GET_RECOVERY, { dataLength: RECOVERY_STATE_SIZE }));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request");
    return 255;
  }
  const b = Buffer.alloc(24);
  rsp.data.copy(b, 0, 0, Math.min(24, rsp.data.length));
  err(`max (${b.readUInt32LE(0)}), interval (${b.readBigUInt64LE(8)})`);
  return EXIT_SUCCESS;
}

export async function nodeRecovery(c: Ctx): Promise<number> {
  if (c.args.length === c.optind) {
    await updateNodeList(c);
    return nodeRecoveryInfo(c);
  }
  return genericSubcommand(c, c.sub.sub!, {
    info: nodeRecoveryInfo,
    "set-throttle": nodeRecoverySet,
    "get-throttle": nodeRecoveryGet,
  });
}

async function nodeMdInfoOne(c: Ctx, n?: SdNode): Promise<number> {
  const rsp = await c.exec(Header.req(Op.MD_INFO, { dataLength: MD_INFO_SIZE }), undefined, n);
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`failed to get multi-disk information: ${strerror(rsp.hdr.result)}`);
    return EXIT_FAILURE;
  }
  const host = n ? nodeHostPort(n) : `${c.host}:${c.port}`;
  if (c.json) {
    c.jsonRows.push(mdInfoJson(host, decodeMdInfo(rsp.data)));
    return EXIT_SUCCESS;
  }
  for (const { idx, free, used, path } of decodeMdInfo(rsp.data)) {
    const size = free + used;
    const ratio = Math.trunc((Number(used) / Number(size)) * 100) | 0;
    if (c.raw) {
      out(
        `${host} ${idx} ${strnumber(size, true)} ${strnumber(used, true)} ${
          strnumber(free, true)
        } ${ratio}% ${path}\n`,
      );
    } else {out(
        `${padLeft(String(idx), 2)}\t${strnumber(size)}\t${strnumber(used)}\t${strnumber(free)}\t${
          padLeft(String(ratio), 3)
        }%\t${path}\n`,
      );}
  }
  return EXIT_SUCCESS;
}

async function mdInfo(c: Ctx): Promise<number> {
  const text = !c.raw && !c.json;
  if (text) out("Id\tSize\tUsed\tAvail\tUse%\tPath\n");
  if (!c.node.allNodes) {
    const r = await nodeMdInfoOne(c);
    if (c.json && r === EXIT_SUCCESS) out(toJson(c.jsonRows[0]));
    return r;
  }
  for (let i = 0; i < c.nodes.length; i++) {
    if (text) out(`Node ${i}:\n`);
    if (await nodeMdInfoOne(c, c.nodes[i]) !== EXIT_SUCCESS) return EXIT_FAILURE;
  }
  if (c.json) out(toJson(c.jsonRows));
  return EXIT_SUCCESS;
}

async function mdPlugUnplug(c: Ctx, plug: boolean): Promise<number> {
  if (!c.node.force) {
    await c.confirm(
      banner(
        plug
          ? "Caution! The directories to be plugged will be purged."
          : "Caution! Recovery will be triggered after unplugging.",
      ),
    );
  }
  const disks = c.arg()!;
  const payload = Buffer.concat([Buffer.from(disks, "utf8"), Buffer.alloc(1)]);
  const rsp = await c.exec(
    Header.req(plug ? Op.MD_PLUG : Op.MD_UNPLUG, { flags: Flag.CMD_WRITE }),
    payload,
  );
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request, look for sheep.log for more information");
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

export function nodeMd(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, {
    info: mdInfo,
    plug: (cc) => mdPlugUnplug(cc, true),
    unplug: (cc) => mdPlugUnplug(cc, false),
  });
}

export async function nodeStat(c: Ctx): Promise<number> {
  let last: bigint[] | null = null;
  for (;;) {
    const rsp = await c.exec(Header.req(Op.STAT, { dataLength: NODE_STAT_SIZE }));
    if (rsp.hdr.result !== Res.SUCCESS) {
      err(`failed to get stat information: ${strerror(rsp.hdr.result)}`);
      return EXIT_FAILURE;
    }
    const st = decodeNodeStats(rsp.data);
    const s = [st.gwActive, st.peerActive, st.gwTotal, st.peerTotal, st.gwRx, st.gwTx, st.peerRx];
    s.push(st.peerTx);
    const { gwActive: gAct, peerActive: pAct, gwTotal: gTot, peerTotal: pTot } = st;
    const { gwRx: gRx, gwTx: gTx, peerRx: pRx, peerTx: pTx, gwRemove: gRm } = st;
    const { gwRead: gRd, gwWrite: gWr, gwFlush: gFl, peerRemove: pRm, peerRead: pRd } = st;
    const pWr = st.peerWrite;
    const sn = (v: bigint) => strnumber(v, c.raw);
    if (c.node.watch) {
      if (!last) last = s;
      const l = last;
      out(
        (c.raw
          ? ""
          : "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD\tWRBW\tRDBW\tRPS\nClient\t") +
          `${gAct}\t${gTot}\t${gWr}\t${gRd}\t${gRm}\t${gFl}\t${sn(gRx)}\t${sn(gTx)}\t${
            sn(gRx - l[4])
          }\t${sn(gTx - l[5])}\t${gTot - l[2]}\n`,
      );
      out(
        (c.raw ? "" : "Peer\t") +
          `${pAct}\t${pTot}\t${pWr}\t${pRd}\t${pRm}\t0\t${sn(pRx)}\t${sn(pTx)}\t${
            sn(pRx - l[6])
          }\t${sn(pTx - l[7])}\t${pTot - l[3]}\n`,
      );
      last = s;
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    // upstream quirk: the Write column shows the read counter and vice versa
    out(
      (c.raw
        ? ""
        : "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD\nClient\t") +
        `${gAct}\t${gTot}\t${gRd}\t${gWr}\t${gRm}\t${gFl}\t${sn(gRx)}\t${sn(gTx)}\n`,
    );
    out(
      (c.raw ? "" : "Peer\t") +
        `${pAct}\t${pTot}\t${pRd}\t${pWr}\t${pRm}\t0\t${sn(pRx)}\t${sn(pTx)}\n`,
    );
    return EXIT_SUCCESS;
  }
}

async function logLevelSet(c: Ctx): Promise<number> {
  const s = c.arg()!;
  const level = LOG_LEVELS.indexOf(s);
  if (level < 0) {
    err(`invalid loglevel: ${s}`);
    err("available loglevels:");
    LOG_LEVELS.forEach((n, i) => err(`${n}\t(${i})`));
    return 255;
  }
  const payload = Buffer.alloc(4);
  payload.writeInt32LE(level);
  const rsp = await c.exec(Header.req(Op.SET_LOGLEVEL, { flags: Flag.CMD_WRITE }), payload);
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request");
    return 255;
  }
  return EXIT_SUCCESS;
}

async function logLevelGet(c: Ctx): Promise<number> {
  const rsp = await c.exec(Header.req(Op.GET_LOGLEVEL, { dataLength: 4 }));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request");
    return 255;
  }
  const level = rsp.data.length >= 4 ? rsp.data.readInt32LE(0) : -1;
  err(`${LOG_LEVELS[level] ?? "unknown loglevel"} (${level})`);
  return EXIT_SUCCESS;
}

async function logLevelList(_c: Ctx): Promise<number> {
  LOG_LEVELS.forEach((n, i) => err(`${n}\t(${i})`));
  return EXIT_SUCCESS;
}

export function nodeLog(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, {
    level: (cc) =>
      genericSubcommand(cc, cc.sub.sub![0].sub!, {
        set: logLevelSet,
        get: logLevelGet,
        list: logLevelList,
      }),
  });
}

async function vnodesSet(c: Ctx): Promise<number> {
  const s = c.arg()!;
  const n = isNumeric(s) ? Number(s) : NaN;
  if (!(n >= 1 && n <= 65535)) {
    err(`Invalid number of vnodes '${s}': must be an integer between 1 and 65535`);
    throw new Exit(EXIT_USAGE);
  }
  const payload = Buffer.alloc(8);
  payload.writeInt32LE(n, 0);
  const rsp = await c.exec(Header.req(Op.SET_VNODES, { flags: Flag.CMD_WRITE }), payload);
  if (rsp.hdr.result !== Res.SUCCESS) {
    err("Failed to execute request");
    return 255; // upstream's node_vnodes_set returns -1 here
  }
  return EXIT_SUCCESS;
}

export function nodeVnodes(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, { set: vnodesSet });
}

// ---- node scrub (our extension: upstream has no background scrub) ----

const SCRUB_HEADER =
  "Id   Host:Port              Status      Last scrub           Objects  Corrupt" +
  "  Mismatch  Repaired  Failed\n";

async function scrubStatusOf(c: Ctx, n: SdNode): Promise<ScrubStatus | null> {
  const rsp = await c.exec(
    Header.req(Op.SCRUB_STATUS, { dataLength: SCRUB_STATUS_SIZE }),
    undefined,
    n,
  );
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`failed to get scrub status of ${nodeHostPort(n)}: ${strerror(rsp.hdr.result)}`);
    return null;
  }
  return decodeScrubStatus(rsp.data);
}

function scrubState(s: ScrubStatus): string {
  if (s.running) return `running:${s.progress}`;
  return s.enabled ? "idle" : "off";
}

function lastScrub(s: ScrubStatus): string {
  return s.passes === 0 ? "never" : strftime("%Y-%m-%d %H:%M:%S", Number(s.finishedAt));
}

/** Lines of `node scrub status` (also the tail of `cluster check`): one per node. */
export async function scrubReport(c: Ctx, header: boolean): Promise<number> {
  if (header && !c.raw) out(SCRUB_HEADER);
  for (let i = 0; i < c.nodes.length; i++) {
    const n = c.nodes[i];
    const s = await scrubStatusOf(c, n);
    if (!s) return EXIT_FAILURE;
    const figures = [s.objects, s.corrupt, s.mismatched, s.repaired, s.failed];
    if (c.raw) {
      out(
        `${nodeHostPort(n)} ${scrubState(s)} ${s.passes ? s.finishedAt : 0} ${figures.join(" ")}\n`,
      );
    } else {
      out(
        `${padLeft(String(i), 2)}   ${padRight(nodeHostPort(n), 22)} ${
          padRight(scrubState(s), 11)
        } ${padRight(lastScrub(s), 19)} ${
          figures.map((v, k) => padLeft(String(v), k ? 9 : 8)).join("")
        }` +
          "\n",
      );
    }
  }
  return EXIT_SUCCESS;
}

async function scrubStart(c: Ctx): Promise<number> {
  const targets = c.node.allNodes ? c.nodes : [null];
  for (const n of targets) {
    const rsp = await c.exec(Header.req(Op.SCRUB_START), undefined, n ?? undefined);
    const where = n ? nodeHostPort(n) : `${c.host}:${c.port}`;
    if (rsp.hdr.result === Res.UNKNOWN) out(`scrub already running on ${where}\n`);
    else if (rsp.hdr.result !== Res.SUCCESS) {
      err(`failed to start scrub on ${where}: ${strerror(rsp.hdr.result)}`);
      return EXIT_FAILURE;
    } else out(`scrub started on ${where}\n`);
  }
  return EXIT_SUCCESS;
}

export function nodeScrub(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, {
    start: scrubStart,
    status: (cc) => scrubReport(cc, true),
  });
}
