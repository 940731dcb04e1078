// FNV-1a 64-bit hashing used by Sheepdog for placement (protocol.md §12.1).
// The hot path keeps the 64-bit state as two uint32 halves in plain numbers; BigInt is only
// used at the API boundary. FNV prime = 2^40 + 0x1b3, so h*prime = h*0x1b3 + (h << 40).
import { Buffer } from "node:buffer";

export const FNV_OFFSET = 0xcbf29ce484222325n;
export const FNV_PRIME = 0x100000001b3n;

const OFF_HI = 0xcbf29ce4;
const OFF_LO = 0x84222325;
const TWO32 = 4294967296;

// Result registers of the internal half-word functions (avoids allocating per call).
let rHi = 0;
let rLo = 0;

function fnvBytesParts(buf: Uint8Array, hi: number, lo: number): void {
  for (let i = 0; i < buf.length; i++) {
    lo = (lo ^ buf[i]) >>> 0;
    const t = lo * 0x1b3; // < 2^41: exact in a double
    const nlo = t >>> 0;
    hi = (Math.imul(hi, 0x1b3) + (t - nlo) / TWO32 + (lo << 8)) >>> 0;
    lo = nlo;
  }
  rHi = hi;
  rLo = lo;
}

function fnvByte(hi: number, lo: number, b: number): void {
  lo = (lo ^ b) >>> 0;
  const t = lo * 0x1b3;
  const nlo = t >>> 0;
  rHi = (Math.imul(hi, 0x1b3) + (t - nlo) / TWO32 + (lo << 8)) >>> 0;
  rLo = nlo;
}

/** fnv64 over the 8 little-endian bytes of (vHi:vLo), starting from (hHi:hLo); result in rHi/rLo. */
function fnv64Parts(vHi: number, vLo: number, hHi: number, hLo: number): void {
  fnvByte(hHi, hLo, vLo & 0xff);
  fnvByte(rHi, rLo, (vLo >>> 8) & 0xff);
  fnvByte(rHi, rLo, (vLo >>> 16) & 0xff);
  fnvByte(rHi, rLo, vLo >>> 24);
  fnvByte(rHi, rLo, vHi & 0xff);
  fnvByte(rHi, rLo, (vHi >>> 8) & 0xff);
  fnvByte(rHi, rLo, (vHi >>> 16) & 0xff);
  fnvByte(rHi, rLo, vHi >>> 24);
}

function toBig(hi: number, lo: number): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}

function hiOf(v: bigint): number {
  return Number(BigInt.asUintN(64, v) >> 32n);
}

function loOf(v: bigint): number {
  return Number(BigInt.asUintN(32, v));
}

/** FNV-1a 64 over buf, continuing from h (64-bit wraparound). */
export function fnv1a(buf: Uint8Array, h: bigint = FNV_OFFSET): bigint {
  fnvBytesParts(buf, hiOf(h), loOf(h));
  return toBig(rHi, rLo);
}

/** fnv1a over the 8 little-endian bytes of v starting from h (upstream fnv_64a_64). */
export function fnv64(v: bigint, h: bigint): bigint {
  fnv64Parts(hiOf(v), loOf(v), hiOf(h), loOf(h));
  return toBig(rHi, rLo);
}

/** sd_hash: h = fnv1a(buf); fnv64(h, h). */
export function sdHash(buf: Uint8Array): bigint {
  fnvBytesParts(buf, OFF_HI, OFF_LO);
  fnv64Parts(rHi, rLo, rHi, rLo);
  return toBig(rHi, rLo);
}

/**
 * sd_hash_oid as two uint32 halves written to out[0] (high) and out[1] (low).
 * Used by the rings so a lookup needs no BigInt arithmetic beyond splitting the oid.
 */
export function sdHashOidParts(oid: bigint, out: Uint32Array): void {
  fnv64Parts(hiOf(oid), loOf(oid), OFF_HI, OFF_LO);
  fnv64Parts(rHi, rLo, rHi, rLo);
  out[0] = rHi;
  out[1] = rLo;
}

/** sd_hash_oid: sd_hash of the 8 LE bytes of oid. */
export function sdHashOid(oid: bigint): bigint {
  fnv64Parts(hiOf(oid), loOf(oid), OFF_HI, OFF_LO);
  fnv64Parts(rHi, rLo, rHi, rLo);
  return toBig(rHi, rLo);
}

/** sd_hash_next in halves: out = fnv64(h, h). */
export function sdHashNextParts(hi: number, lo: number, out: Uint32Array): void {
  fnv64Parts(hi, lo, hi, lo);
  out[0] = rHi;
  out[1] = rLo;
}

/** sd_hash_next: fnv64(h, h). */
export function sdHashNext(h: bigint): bigint {
  const hi = hiOf(h), lo = loOf(h);
  fnv64Parts(hi, lo, hi, lo);
  return toBig(rHi, rLo);
}

/** sd_hash in halves (for ring construction). */
export function sdHashParts(buf: Uint8Array, out: Uint32Array): void {
  fnvBytesParts(buf, OFF_HI, OFF_LO);
  fnv64Parts(rHi, rLo, rHi, rLo);
  out[0] = rHi;
  out[1] = rLo;
}

/** sd_hash_vdi: low 24 bits of a single FNV-1a round over the name bytes (no second round). */
export function sdHashVdi(name: string | Uint8Array): number {
  const buf = typeof name === "string" ? Buffer.from(name, "utf8") : name;
  fnvBytesParts(buf, OFF_HI, OFF_LO);
  return rLo & 0xffffff;
}
