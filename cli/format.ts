// Output formatting and argument parsing helpers of `dog` (dog-cli.md §1.4-§1.6, §4.6, §5.1, §6.1).
// Everything here is pure so it can be unit tested byte for byte.
import type { EpochLog } from "../core/payloads.ts";
import { Buffer } from "node:buffer";
import type { SdNode } from "../core/node.ts";
import { nodeHostPort } from "../core/node.ts";
import { ClusterFlag, Res, strerror } from "../core/proto.ts";

// ---------------------------------------------------------------------------------------------
// printf-compatible number formatting

/** Splits a finite non-negative double into mant * 2^exp exactly. */
function decompose(x: number): { mant: bigint; exp: number } {
  const dv = new DataView(new ArrayBuffer(8));
  dv.setFloat64(0, x);
  const hi = dv.getUint32(0);
  const lo = dv.getUint32(4);
  const bexp = (hi >>> 20) & 0x7ff;
  let mant = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  let exp: number;
  if (bexp === 0) {
    exp = -1074;
  } else {
    mant |= 1n << 52n;
    exp = bexp - 1075;
  }
  return { mant, exp };
}

/**
 * printf("%.<digits>f", x) as glibc does it: exact decimal value of the double, ties to even.
 * (Number.prototype.toFixed rounds ties away from zero, which differs for e.g. 12.5 or 0.25.)
 */
export function cFixed(x: number, digits: number): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "nan" : x < 0 ? "-inf" : "inf";
  const neg = x < 0 || Object.is(x, -0);
  const { mant, exp } = decompose(Math.abs(x));
  const scale = 10n ** BigInt(digits);
  let q: bigint;
  if (exp >= 0) {
    q = (mant << BigInt(exp)) * scale;
  } else {
    const num = mant * scale;
    const den = 1n << BigInt(-exp);
    q = num / den;
    const r2 = (num % den) * 2n;
    if (r2 > den || (r2 === den && (q & 1n) === 1n)) q += 1n;
  }
  let s = q.toString();
  if (digits > 0) {
    s = s.padStart(digits + 1, "0");
    s = s.slice(0, s.length - digits) + "." + s.slice(s.length - digits);
  }
  return (neg ? "-" : "") + s;
}

/** Byte length as C sees it (UTF-8). */
function byteLen(s: string): number {
  return Buffer.byteLength(s, "utf8");
}

/** printf("%-Ns") */
export function padRight(s: string, width: number): string {
  const n = byteLen(s);
  return n >= width ? s : s + " ".repeat(width - n);
}

/** printf("%Ns") */
export function padLeft(s: string, width: number): string {
  const n = byteLen(s);
  return n >= width ? s : " ".repeat(width - n) + s;
}

// ---------------------------------------------------------------------------------------------
// §1.4 strnumber

const UNITS = ["MB", "GB", "TB", "PB", "EB", "ZB", "YB"];

/** dog's strnumber(): decimal bytes in raw mode, else MB..YB with %.0f/%.1f. */
export function strnumber(size: number | bigint, raw = false): string {
  const big = typeof size === "bigint" ? BigInt.asUintN(64, size) : BigInt(Math.trunc(size));
  if (raw) return big.toString();
  let v = Number(big); // uint64 -> double, round to nearest like the C conversion
  v /= 1024 * 1024;
  let i = 0;
  while (i < UNITS.length - 1 && v >= 1024) {
    i++;
    v /= 1024;
  }
  return (v >= 10 ? cFixed(v, 0) : cFixed(v, 1)) + " " + UNITS[i];
}

// ---------------------------------------------------------------------------------------------
// §1.5 size parsing

export const SIZE_HELP =
  "You may use B, K, M, G, T or P suffixes for bytes, kilobytes, megabytes, gigabytes, terabytes and petabytes.";

/** Prefix that C strtod() would consume, and its value. */
function strtod(s: string): { value: number; rest: string } {
  const m =
    /^[ \t\n\v\f\r]*([+-]?)(0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)/i
      .exec(s);
  if (!m) return { value: 0, rest: s };
  const sign = m[1] === "-" ? -1 : 1;
  const body = m[2];
  let value: number;
  const lower = body.toLowerCase();
  if (lower.startsWith("inf")) value = Infinity;
  else if (lower === "nan") value = NaN;
  else if (lower.startsWith("0x")) {
    const hm = /^0x([0-9a-f]*)(?:\.([0-9a-f]*))?(?:p([+-]?\d+))?$/.exec(lower)!;
    const ip = hm[1] || "0";
    const fp = hm[2] ?? "";
    value = parseInt(ip, 16);
    for (let k = 0; k < fp.length; k++) value += parseInt(fp[k], 16) / 16 ** (k + 1);
    if (hm[3]) value *= 2 ** Number(hm[3]);
  } else value = Number(body);
  return { value: sign * value, rest: s.slice(m[0].length) };
}

/** (uint64_t) cast of a double as x86-64 does it (out of range -> 2^63). */
function doubleToU64(d: number): bigint {
  if (!Number.isFinite(d)) return 1n << 63n;
  const t = Math.trunc(d);
  if (t >= 0) return t >= 2 ** 64 ? 1n << 63n : BigInt(t);
  if (t <= -(2 ** 63)) return 1n << 63n;
  return BigInt.asUintN(64, BigInt(t));
}

/** option_parse_size(): returns the byte count, or null when invalid (caller prints the error). */
export function parseSize(value: string): bigint | null {
  const { value: v, rest } = strtod(value);
  if (rest.length > 1) return null;
  // strtod takes "-5G" and upstream wraps it to a huge size; a size is never negative.
  if (!(v >= 0) || rest === value) return null;
  const mult: Record<string, number> = {
    P: 1024 ** 5,
    p: 1024 ** 5,
    T: 1024 ** 4,
    t: 1024 ** 4,
    G: 1024 ** 3,
    g: 1024 ** 3,
    M: 1024 ** 2,
    m: 1024 ** 2,
    K: 1024,
    k: 1024,
    B: 1,
    b: 1,
    "": 1,
  };
  const k = mult[rest];
  if (k === undefined) return null;
  // upstream multiplies by 1024 once per step; with powers of two that is exact either way
  return doubleToU64(v * k);
}

/** The two stderr lines printed for an invalid size. */
export function invalidSizeMessage(value: string): string {
  return `Invalid size '${value}'\n${SIZE_HELP}\n`;
}

// ---------------------------------------------------------------------------------------------
// §1.6 redundancy

export const SD_MAX_COPIES = 31;
export const SD_EC_MAX_STRIP = 16;

export function isNumeric(s: string | undefined): boolean {
  return !!s && /^[0-9]+$/.test(s);
}

/** parse_copy(): {copies, policy} or null when invalid. Quirks kept: uint8 truncation. */
export function parseCopies(str: string): { copies: number; policy: number } | null {
  const toks = str.split(":").filter((t) => t.length > 0);
  const n1 = toks[0];
  const n2 = toks[1];
  if (!n1 || !isNumeric(n1) || (n2 !== undefined && !isNumeric(n2))) return null;
  const copy = Number(BigInt.asUintN(8, BigInt(n1)));
  if (copy > SD_MAX_COPIES) return null;
  if (n2 === undefined) return copy === 0 ? null : { copies: copy, policy: 0 };
  if (copy !== 2 && copy !== 4 && copy !== 8 && copy !== 16) return null;
  const parity = Number(BigInt.asUintN(8, BigInt(n2)));
  if (parity >= SD_EC_MAX_STRIP || parity === 0) return null;
  const total = (copy + parity) & 0xff;
  return { copies: total, policy: ((copy / 2) << 4) + parity };
}

export function invalidCopiesMessage(opt: string): string {
  return `Invalid parameter ${opt}\n` +
    "To create replicated vdi, set -c x\n" +
    `  x(1 to ${SD_MAX_COPIES})   - number of replicated copies\n` +
    "To create erasure coded vdi, set -c x:y\n" +
    "  x(2,4,8,16)  - number of data strips\n" +
    "  y(1 to 15)   - number of parity strips\n";
}

export function ecPolicyToDp(policy: number): { d: number; p: number } {
  return { d: (policy >> 4) * 2, p: policy & 0x0f };
}

/** "3" for replication, "4:2" for erasure coding. */
export function redundancyScheme(nrCopies: number, policy: number): string {
  if (policy > 0) {
    const { d, p } = ecPolicyToDp(policy);
    return `${d}:${p}`;
  }
  return String(nrCopies);
}

// ---------------------------------------------------------------------------------------------
// dates (local time, like localtime_r + strftime)

const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

function p2(n: number): string {
  return n < 10 ? "0" + n : String(n);
}

/** strftime subset used by dog: %Y %m %d %H %M %S %b %a %e and %2d-style day. */
export function strftime(fmt: string, sec: number): string {
  const d = new Date(sec * 1000);
  return fmt.replace(/%([YmdHMSbae%])/g, (_, c: string) => {
    switch (c) {
      case "Y":
        return String(d.getFullYear());
      case "m":
        return p2(d.getMonth() + 1);
      case "d":
        return p2(d.getDate());
      case "e":
        return padLeft(String(d.getDate()), 2);
      case "H":
        return p2(d.getHours());
      case "M":
        return p2(d.getMinutes());
      case "S":
        return p2(d.getSeconds());
      case "b":
        return MONTHS[d.getMonth()];
      case "a":
        return DAYS[d.getDay()];
      default:
        return "%";
    }
  });
}

/** ctime(3) without the trailing newline: "Thu Jun 30 14:17:22 2016". */
export function ctimeString(sec: number): string {
  const d = new Date(sec * 1000);
  return `${DAYS[d.getDay()]} ${MONTHS[d.getMonth()]}${padLeft(String(d.getDate()), 3)} ` +
    `${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())} ${d.getFullYear()}`;
}

/** Seconds part of a ctime-style 64-bit timestamp. */
export function ctimeSeconds(t: bigint): number {
  return Number(BigInt.asUintN(64, t) >> 32n);
}

// ---------------------------------------------------------------------------------------------
// raw-mode escaping

/** `vdi list -r` name escaping: whitespace and backslashes get a backslash in front. */
export function rawEscape(name: string): string {
  return name.replace(/[ \t\n\v\f\r\\]/g, (c) => "\\" + c);
}

// ---------------------------------------------------------------------------------------------
// §4.6 vdi list

export const VDI_LIST_HEADER =
  "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift\n";

/** The inode header fields a vdi list row needs (names as in core/inode.ts). */
export interface VdiRowInfo {
  name: string;
  tag: string;
  createTime: bigint;
  snapCtime: bigint;
  vdiSize: bigint;
  nrCopies: number;
  copyPolicy: number;
  blockSizeShift: number;
  snapId: number;
  vdiId: number;
  parentVdiId: number;
}

export function isSnapshot(h: { snapCtime: bigint }): boolean {
  return h.snapCtime !== 0n;
}

/** One `vdi list` line (with newline). myObjs/cowObjs = slots owned by this VID / by others. */
export function vdiListRow(h: VdiRowInfo, myObjs: number, cowObjs: number, raw: boolean): string {
  const snapid = isSnapshot(h) ? h.snapId : 0;
  const isClone = h.snapId === 1 && h.parentVdiId !== 0;
  const objSize = 2 ** h.blockSizeShift;
  const ti = ctimeSeconds(h.createTime);
  const used = BigInt(myObjs) * BigInt(objSize);
  const shared = BigInt(cowObjs) * BigInt(objSize);
  const copies = redundancyScheme(h.nrCopies, h.copyPolicy);
  const vid = (h.vdiId >>> 0).toString(16);
  if (raw) {
    const marker = isSnapshot(h) ? "s" : isClone ? "c" : "=";
    return `${marker} ${rawEscape(h.name)} ${snapid} ${strnumber(h.vdiSize, true)} ${
      strnumber(used, true)
    } ` +
      `${strnumber(shared, true)} ${ti} ${vid} ${copies} ${h.tag} ${h.blockSizeShift}\n`;
  }
  const marker = isSnapshot(h) ? "s" : isClone ? "c" : " ";
  return `${marker} ${padRight(h.name, 8)} ${padLeft(String(snapid), 5)} ${
    padLeft(strnumber(h.vdiSize), 7)
  } ` +
    `${padLeft(strnumber(used), 7)} ${padLeft(strnumber(shared), 7)} ${
      strftime("%Y-%m-%d %H:%M", ti)
    }  ` +
    `${padLeft(vid, 7)} ${padLeft(copies, 6)} ${padLeft(h.tag, 13)} ${
      padLeft(String(h.blockSizeShift), 3)
    }\n`;
}

/** sd_inode_stat for flat volumes: slots owned by `vid` and by other VIDs. */
export function countSlots(
  slots: ArrayLike<number>,
  vid: number,
  n = slots.length,
): { my: number; cow: number } {
  let my = 0, cow = 0;
  const lim = Math.min(n, slots.length);
  for (let i = 0; i < lim; i++) {
    const v = slots[i];
    if (v === 0) continue;
    if (v === vid) my++;
    else cow++;
  }
  return { my, cow };
}

// ---------------------------------------------------------------------------------------------
// §5 node tables

export const NODE_LIST_HEADER = "  Id   Host:Port         V-Nodes       Zone\n";

export function nodeListRow(id: number, n: SdNode, raw: boolean): string {
  const host = nodeHostPort(n);
  if (raw) return `${id} ${host} ${n.nrVnodes} ${n.zone >>> 0}\n`;
  return `${padLeft(String(id), 4)}   ${padRight(host, 20)}\t${padLeft(String(n.nrVnodes), 2)}${
    padLeft(String(n.zone >>> 0), 11)
  }\n`;
}

export const NODE_INFO_HEADER = "Id\tSize\tUsed\tAvail\tUse%\n";

/** (int)(((double)used / size) * 100), with the size==0 guard of the per-node rows. */
export function usePercent(size: bigint, free: bigint, guardZero = true): number {
  if (size === 0n && guardZero) return 0;
  const r = (Number(size - free) / Number(size)) * 100;
  if (!Number.isFinite(r)) return r > 0 ? 2147483647 : -2147483648; // x86 cvttsd2si-ish
  return Math.trunc(r) | 0;
}

export function nodeInfoRow(id: number, size: bigint, free: bigint, raw: boolean): string {
  const pct = usePercent(size, free);
  if (raw) {
    return `${id} ${strnumber(size, true)} ${strnumber(size - free, true)} ${
      strnumber(free, true)
    } ${pct}%\n`;
  }
  return `${padLeft(String(id), 2)}\t${strnumber(size)}\t${strnumber(size - free)}\t${
    strnumber(free)
  }\t${padLeft(String(pct), 3)}%\n`;
}

export function nodeInfoTotal(size: bigint, free: bigint, vdiTotal: bigint, raw: boolean): string {
  const pct = size === 0n ? 0 : usePercent(size, free, false);
  if (raw) {
    return `Total ${strnumber(size, true)} ${strnumber(size - free, true)} ${
      strnumber(free, true)
    } ${pct}% ${strnumber(vdiTotal, true)}\n`;
  }
  return `Total\t${strnumber(size)}\t${strnumber(size - free)}\t${strnumber(free)}\t${
    padLeft(String(pct), 3)
  }%\n\n` +
    `Total virtual image size\t${strnumber(vdiTotal)}\n`;
}

export const RECOVERY_HEADER =
  "Nodes In Recovery:\n  Id   Host:Port         V-Nodes       Zone       Progress\n";

export function recoveryRow(
  id: number,
  n: SdNode,
  finished: bigint,
  total: bigint,
  raw: boolean,
): string {
  const host = nodeHostPort(n);
  if (raw) return `${id} ${host} ${n.nrVnodes} ${n.zone | 0} ${finished} ${total}\n`;
  // upstream computes 100 * (float)finished / total in single precision
  const pct = Math.fround(
    Math.fround(100 * Math.fround(Number(finished))) / Math.fround(Number(total)),
  );
  return `${padLeft(String(id), 4)}   ${padRight(host, 20)}${padLeft(String(n.nrVnodes), 5)}${
    padLeft(String(n.zone | 0), 11)
  }${padLeft(cFixed(pct, 1), 11)}%\n`;
}

// ---------------------------------------------------------------------------------------------
// §6.1 cluster info

export interface ClusterInfoInput {
  result: number;
  logs: EpochLog[];
  /** rsp.data_length > 0 */
  hasData: boolean;
  verbose: boolean;
  raw: boolean;
  diff: boolean;
  /** number of disks per node in disk-vnode mode (unused in node mode) */
}

function printNodes(log: EpochLog): string {
  return log.nodes.map((n) => `${nodeHostPort(n)}:${n.nrVnodes}`).join(", ");
}

function nodesDiff(a: EpochLog, b: EpochLog, act: string): string[] {
  const out: string[] = [];
  for (const n of a.nodes) {
    const found = b.nodes.some((m) => m.port === n.port && m.addr.equals(n.addr));
    if (!found) out.push(act + nodeHostPort(n));
  }
  return out;
}

/** Full `cluster info` stdout text. */
export function clusterInfoText(inp: ClusterInfoInput): string {
  const { result, logs, verbose, raw } = inp;
  const first = logs[0];
  let s = "";
  if (!raw) s += "Cluster status: ";
  if (result === Res.SUCCESS) {
    s += `running, auto-recovery ${first && first.disableRecovery ? "disabled" : "enabled"}\n`;
  } else s += strerror(result) + "\n";

  if (verbose) {
    if (!raw) s += "Cluster store: ";
    if (result === Res.SUCCESS && first) {
      s += `${first.drvName} with ${
        redundancyScheme(first.nrCopies, first.copyPolicy)
      } redundancy policy\n`;
    } else s += strerror(result) + "\n";
    const flags = first ? first.flags : 0;
    const strategy = flags & ClusterFlag.AUTO_VNODES ? "auto" : "fixed";
    const mode = flags & ClusterFlag.DISKMODE ? "disk" : "node";
    s += raw ? `${strategy}\n` : `Cluster vnodes strategy: ${strategy}\n`;
    s += raw ? `${mode}\n` : `Cluster vnode mode: ${mode}\n`;
  } else s += "\n";

  if (!raw && inp.hasData && first) {
    s += `Cluster created at ${ctimeString(ctimeSeconds(first.ctime))}\n\n`;
    s += "Epoch Time           Version [Host:Port:V-Nodes,,,]\n";
  }
  for (let i = 0; i < logs.length; i++) {
    const log = logs[i];
    const ti = Number(BigInt.asIntN(64, log.time));
    const t = raw ? String(ti) : strftime("%Y-%m-%d %H:%M:%S", ti);
    s += raw ? `${t} ${log.epoch}` : `${t} ${padLeft(String(log.epoch), 6)}`;
    s += " [";
    if (inp.diff) {
      if (i === logs.length - 1) s += "formated";
      else {
        const prev = logs[i + 1];
        s += [...nodesDiff(log, prev, "+"), ...nodesDiff(prev, log, "-")].join(", ");
      }
    } else s += printNodes(log);
    s += "]\n";
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// misc

export const LOG_LEVELS = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];

/** The sheep ASCII banner used by confirmation prompts (§8.1). */
export function banner(line1: string, line2?: string): string {
  if (line2 === undefined) {
    return "    __\n   ()'`;\n   /\\|`\n  /  |   " + line1 +
      "\n(/_)_|_  Are you sure you want to continue? [yes/no]: ";
  }
  return "    __\n   ()'`;\n   /\\|`  " + line1 + "\n  /  |   " + line2 +
    "\n(/_)_|_  Are you sure you want to continue? [yes/no]: ";
}

/** Progress bar line (without the leading \r), width = terminal columns. */
export function progressLine(done: bigint, total: bigint, raw: boolean, width = 80): string {
  const barLen = width - 30;
  const pct = total === 0n ? NaN : (Number(done) / Number(total)) * 100;
  let s = padLeft(cFixed(pct, 1), 5) + " % [";
  for (let i = 0; i < barLen; i++) {
    const bi = BigInt(i), bl = BigInt(barLen);
    if ((total * (bi + 1n)) / bl <= done) s += "=";
    else if ((total * bi) / bl <= done && done < (total * (bi + 1n)) / bl) s += ">";
    else s += " ";
  }
  s += `] ${strnumber(done, raw)} / ${strnumber(total, raw)}`;
  s = s.slice(0, width - 1);
  return s.padEnd(width, " ");
}
