// struct sd_node (80 bytes, protocol.md §13.1) and node identity/order helpers (§12.2).
import { Buffer } from "node:buffer";

export interface SdNode {
  /** 16 bytes; IPv4 = 12 zero bytes + 4 address bytes (not ::ffff: mapped). */
  addr: Buffer;
  port: number;
  ioAddr: Buffer;
  ioPort: number;
  nrVnodes: number;
  zone: number;
  space: bigint;
}

export const SD_NODE_SIZE = 80;
const NID_OFF = 24;

const IPV4_BYTE = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
const IPV4_RE = new RegExp(`^${IPV4_BYTE}(\\.${IPV4_BYTE}){3}$`);
const HEX_GROUP_RE = /^[0-9a-fA-F]{1,4}$/;

/** 4 or 6 for an IPv4/IPv6 literal (IPv6 may carry a %zone), else 0: node:net isIP, kept pure. */
export function ipFamily(ip: string): 0 | 4 | 6 {
  if (IPV4_RE.test(ip)) return 4;
  const pct = ip.indexOf("%");
  if (pct === 0 || pct === ip.length - 1) return 0;
  const s = pct > 0 ? ip.slice(0, pct) : ip;
  const halves = s.split("::");
  if (halves.length > 2) return 0;
  let groups = 0;
  for (let h = 0; h < halves.length; h++) {
    if (halves[h] === "") continue;
    const parts = halves[h].split(":");
    for (let i = 0; i < parts.length; i++) {
      const last = h === halves.length - 1 && i === parts.length - 1;
      if (last && IPV4_RE.test(parts[i])) groups += 2;
      else if (HEX_GROUP_RE.test(parts[i])) groups++;
      else return 0;
    }
  }
  return (halves.length === 2 ? groups <= 7 : groups === 8) ? 6 : 0;
}

function parseIpv4(ip: string, out: Buffer, off: number): void {
  const parts = ip.split(".");
  for (let i = 0; i < 4; i++) out[off + i] = Number(parts[i]);
}

function parseIpv6(ip: string): Buffer {
  const out = Buffer.alloc(16);
  const pct = ip.indexOf("%");
  if (pct >= 0) ip = ip.slice(0, pct);
  const words: number[] = [];
  const tail: number[] = [];
  const dbl = ip.indexOf("::");
  const parseGroups = (s: string, dst: number[]): void => {
    if (s === "") return;
    for (const g of s.split(":")) {
      if (g.includes(".")) {
        const b = Buffer.alloc(4);
        parseIpv4(g, b, 0);
        dst.push((b[0] << 8) | b[1], (b[2] << 8) | b[3]);
      } else {
        dst.push(parseInt(g, 16));
      }
    }
  };
  if (dbl >= 0) {
    parseGroups(ip.slice(0, dbl), words);
    parseGroups(ip.slice(dbl + 2), tail);
    while (words.length + tail.length < 8) words.push(0);
    words.push(...tail);
  } else {
    parseGroups(ip, words);
  }
  for (let i = 0; i < 8; i++) out.writeUInt16BE(words[i] ?? 0, i * 2);
  return out;
}

/** 16-byte sheepdog address of an IPv4/IPv6 literal. */
export function ipToAddr(ip: string): Buffer {
  const fam = ipFamily(ip);
  if (fam === 4) {
    const out = Buffer.alloc(16);
    parseIpv4(ip, out, 12);
    return out;
  }
  if (fam === 6) return parseIpv6(ip);
  throw new Error(`invalid IP address: ${ip}`);
}

/** Upstream default zone: addr[12..15] read little-endian (§12.4). */
export function defaultZone(addr: Uint8Array): number {
  return (addr[12] | (addr[13] << 8) | (addr[14] << 16) | (addr[15] << 24)) >>> 0;
}

export function makeNode(
  ip: string,
  port: number,
  opts: { zone?: number; nrVnodes?: number; space?: bigint } = {},
): SdNode {
  const addr = ipToAddr(ip);
  return {
    addr,
    port,
    ioAddr: Buffer.alloc(16),
    ioPort: 0,
    nrVnodes: opts.nrVnodes ?? 128,
    zone: opts.zone ?? defaultZone(addr),
    space: opts.space ?? 0n,
  };
}

/** Encode the 80-byte sd_node; the 24-byte rb part is written as zeros. */
export function encodeNode(n: SdNode, out?: Buffer, off = 0): Buffer {
  const b = out ?? Buffer.alloc(SD_NODE_SIZE);
  b.fill(0, off, off + SD_NODE_SIZE);
  n.addr.copy(b, off + NID_OFF, 0, 16);
  b.writeUInt16LE(n.port & 0xffff, off + 40);
  n.ioAddr.copy(b, off + 42, 0, 16);
  b.writeUInt16LE(n.ioPort & 0xffff, off + 58);
  b.writeUInt16LE(n.nrVnodes & 0xffff, off + 64);
  b.writeUInt32LE(n.zone >>> 0, off + 68);
  b.writeBigUInt64LE(BigInt.asUintN(64, n.space), off + 72);
  return b;
}

export function decodeNode(buf: Buffer, off = 0): SdNode {
  if (buf.length < off + SD_NODE_SIZE) throw new RangeError("short sd_node");
  return {
    addr: Buffer.from(buf.subarray(off + NID_OFF, off + NID_OFF + 16)),
    port: buf.readUInt16LE(off + 40),
    ioAddr: Buffer.from(buf.subarray(off + 42, off + 58)),
    ioPort: buf.readUInt16LE(off + 58),
    nrVnodes: buf.readUInt16LE(off + 64),
    zone: buf.readUInt32LE(off + 68),
    space: buf.readBigUInt64LE(off + 72),
  };
}

export function encodeNodes(ns: readonly SdNode[]): Buffer {
  const b = Buffer.alloc(ns.length * SD_NODE_SIZE);
  for (let i = 0; i < ns.length; i++) encodeNode(ns[i], b, i * SD_NODE_SIZE);
  return b;
}

export function decodeNodes(buf: Buffer, count?: number): SdNode[] {
  const n = count ?? Math.floor(buf.length / SD_NODE_SIZE);
  const out: SdNode[] = [];
  for (let i = 0; i < n; i++) out.push(decodeNode(buf, i * SD_NODE_SIZE));
  return out;
}

/** Upstream node_id_cmp: memcmp(addr) then numeric port. */
export function nodeCompare(a: SdNode, b: SdNode): number {
  const c = Buffer.compare(a.addr, b.addr);
  if (c !== 0) return c;
  return a.port < b.port ? -1 : a.port > b.port ? 1 : 0;
}

export function nodeEqual(a: SdNode, b: SdNode): boolean {
  return a.port === b.port && a.addr.equals(b.addr);
}

export function sortNodes(ns: readonly SdNode[]): SdNode[] {
  return [...ns].sort(nodeCompare);
}

/** Upstream's IPv4 test: addr[12] non-zero and the first 12 bytes zero. */
function isV4(addr: Uint8Array): boolean {
  if (!addr[12]) return false;
  for (let i = 0; i < 12; i++) if (addr[i]) return false;
  return true;
}

/** inet_ntop(AF_INET6) as glibc prints it (longest zero run >= 2 compressed, embedded IPv4). */
function ipv6ToString(a: Uint8Array): string {
  const w: number[] = [];
  for (let i = 0; i < 8; i++) w.push((a[i * 2] << 8) | a[i * 2 + 1]);
  let bestBase = -1, bestLen = 0, curBase = -1, curLen = 0;
  for (let i = 0; i < 8; i++) {
    if (w[i] === 0) {
      if (curBase === -1) {
        curBase = i;
        curLen = 1;
      } else curLen++;
    } else if (curBase !== -1) {
      if (bestBase === -1 || curLen > bestLen) {
        bestBase = curBase;
        bestLen = curLen;
      }
      curBase = -1;
    }
  }
  if (curBase !== -1 && (bestBase === -1 || curLen > bestLen)) {
    bestBase = curBase;
    bestLen = curLen;
  }
  if (bestBase !== -1 && bestLen < 2) bestBase = -1;
  let s = "";
  for (let i = 0; i < 8; i++) {
    if (bestBase !== -1 && i >= bestBase && i < bestBase + bestLen) {
      if (i === bestBase) s += ":";
      continue;
    }
    if (i !== 0) s += ":";
    if (i === 6 && bestBase === 0 && (bestLen === 6 || (bestLen === 5 && w[5] === 0xffff))) {
      s += `${a[12]}.${a[13]}.${a[14]}.${a[15]}`;
      break;
    }
    s += w[i].toString(16);
  }
  if (bestBase !== -1 && bestBase + bestLen === 8) s += ":";
  return s;
}

export function addrToIp(addr: Uint8Array): string {
  return isV4(addr) ? `${addr[12]}.${addr[13]}.${addr[14]}.${addr[15]}` : ipv6ToString(addr);
}

export function nodeIp(n: SdNode): string {
  return addrToIp(n.addr);
}

/** "ip:port" as upstream addr_to_str (IPv6 without brackets). */
export function nodeHostPort(n: SdNode): string {
  return `${nodeIp(n)}:${n.port}`;
}

/** Upstream node_to_str: "IPv4 ip:127.0.0.1 port:7000". */
export function nodeString(n: SdNode): string {
  return `${isV4(n.addr) ? "IPv4" : "IPv6"} ip:${nodeIp(n)} port:${n.port}`;
}
