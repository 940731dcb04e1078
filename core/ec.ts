// Erasure coding (protocol.md §12.5): Reed-Solomon over GF(2^8) with upstream's construction, so
// that strips on disk are byte-identical to upstream's. Field: polynomial x^8+x^4+x^3+x^2+1
// (0x11D), generator 2. Code: the (d+p)×d matrix whose row 0 is [1,0,...,0] and row r >= 1 is
// [α^((r-1)·c)], made systematic by multiplying with the inverse of its top d×d block (zfec's
// construction, which upstream's ISA-L build feeds to ec_init_tables too).
//
// Object layout: stripes of 512 bytes, each cut into d strips of 512/d bytes; strip file i holds
// strip i of every stripe, back to back (file size = object size / d). Parity is computed byte
// by byte, so it is the same whether it is computed per stripe or over whole strip files.
import { Buffer } from "node:buffer";
import { SdError } from "./errors.ts";
import { Res } from "./proto.ts";
import { isDataObj, isVmstateObj } from "./oid.ts";
import { type SimdKernel, simdKernel } from "./ec-simd.ts";

export const SD_EC_DATA_STRIPE_SIZE = 512;
export const SD_EC_MAX_STRIP = 16;

// ---------------------------------------------------------------- GF(2^8)

const GF_EXP = new Uint8Array(510);
const GF_LOG = new Int32Array(256);
const GF_INV = new Uint8Array(256);
/** GF_MUL[a * 256 + b] = a·b. */
const GF_MUL = new Uint8Array(65536);

(function initTables() {
  let x = 1;
  for (let i = 0; i < 255; i++) {
    GF_EXP[i] = x;
    GF_LOG[x] = i;
    x <<= 1;
    if (x & 0x100) x ^= 0x11d;
  }
  GF_LOG[0] = 255; // undefined; upstream uses the same marker
  for (let i = 0; i < 255; i++) GF_EXP[i + 255] = GF_EXP[i];
  GF_INV[0] = 0;
  for (let i = 1; i < 256; i++) GF_INV[i] = GF_EXP[255 - GF_LOG[i]];
  for (let a = 1; a < 256; a++) {
    for (let b = 1; b < 256; b++) GF_MUL[a * 256 + b] = GF_EXP[GF_LOG[a] + GF_LOG[b]];
  }
})();

export function gfMul(a: number, b: number): number {
  return GF_MUL[(a & 0xff) * 256 + (b & 0xff)];
}

export function gfInv(a: number): number {
  if (a === 0) throw new RangeError("gfInv(0)");
  return GF_INV[a];
}

export function gfExp(i: number): number {
  return GF_EXP[((i % 255) + 255) % 255];
}

/** Inverse of an n×n matrix (row-major) by Gauss-Jordan; throws on a singular one. */
export function gfInvertMatrix(m: Uint8Array, n: number): Uint8Array {
  const a = Uint8Array.from(m);
  const out = new Uint8Array(n * n);
  for (let i = 0; i < n; i++) out[i * n + i] = 1;
  for (let col = 0; col < n; col++) {
    let piv = col;
    while (piv < n && a[piv * n + col] === 0) piv++;
    if (piv === n) throw new RangeError("singular matrix");
    if (piv !== col) {
      for (let k = 0; k < n; k++) {
        let t = a[piv * n + k];
        a[piv * n + k] = a[col * n + k];
        a[col * n + k] = t;
        t = out[piv * n + k];
        out[piv * n + k] = out[col * n + k];
        out[col * n + k] = t;
      }
    }
    const inv = GF_INV[a[col * n + col]];
    for (let k = 0; k < n; k++) {
      a[col * n + k] = gfMul(a[col * n + k], inv);
      out[col * n + k] = gfMul(out[col * n + k], inv);
    }
    for (let r = 0; r < n; r++) {
      const f = a[r * n + col];
      if (r === col || f === 0) continue;
      for (let k = 0; k < n; k++) {
        a[r * n + k] ^= gfMul(f, a[col * n + k]);
        out[r * n + k] ^= gfMul(f, out[col * n + k]);
      }
    }
  }
  return out;
}

/** C = A·B with A rows×inner, B inner×cols. */
function gfMatMul(a: Uint8Array, b: Uint8Array, rows: number, inner: number, cols: number) {
  const c = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let col = 0; col < cols; col++) {
      let acc = 0;
      for (let i = 0; i < inner; i++) acc ^= gfMul(a[r * inner + i], b[i * cols + col]);
      c[r * cols + col] = acc;
    }
  }
  return c;
}

// ---------------------------------------------------------------- policy

/** Policy byte -> {d, p}; throws for 0 / malformed bytes. */
export function ecPolicyToDp(policy: number): { d: number; p: number } {
  const d = ((policy >> 4) & 0x0f) * 2;
  const p = policy & 0x0f;
  if (!p || !d) throw new SdError(Res.INVALID_PARMS, `invalid EC policy 0x${policy.toString(16)}`);
  return { d, p };
}

export function ecDpToPolicy(d: number, p: number): number {
  return ((d / 2) << 4) | p;
}

// ---------------------------------------------------------------- the code

/** The systematic (d+p)×d encoding matrix, upstream's fec_new(). */
export function encodingMatrix(d: number, p: number): Uint8Array {
  const n = d + p;
  const vdm = new Uint8Array(n * d);
  vdm[0] = 1;
  for (let r = 1; r < n; r++) {
    for (let c = 0; c < d; c++) vdm[r * d + c] = GF_EXP[((r - 1) * c) % 255];
  }
  const topInv = gfInvertMatrix(vdm.subarray(0, d * d), d);
  const bottom = gfMatMul(vdm.subarray(d * d), topInv, p, d, d);
  const enc = new Uint8Array(n * d);
  for (let i = 0; i < d; i++) enc[i * d + i] = 1;
  enc.set(bottom, d * d);
  return enc;
}

/**
 * Product tables for two bytes at once: T[c][x] = (c·(x>>8))<<8 | c·(x&255). 128 KiB each, built
 * on first use of a coefficient (a code uses d·p of them, decoding a few more).
 */
const MUL16 = new Map<number, Uint16Array>();
function mul16(c: number): Uint16Array {
  let t = MUL16.get(c);
  if (!t) {
    t = new Uint16Array(65536);
    const row = c * 256;
    for (let hi = 0; hi < 256; hi++) {
      const h = GF_MUL[row + hi] << 8;
      for (let lo = 0; lo < 256; lo++) t[(hi << 8) | lo] = h | GF_MUL[row + lo];
    }
    MUL16.set(c, t);
  }
  return t;
}

// Outputs are produced in chunks so the chunk stays in L1 while every input is folded into it.
const CHUNK_WORDS = 2048;

/**
 * out_r = Σ_i coef[r·n + i] · in_i for every output row, over `len` bytes. The hot loop works on
 * 32-bit words with two 16-bit table lookups each.
 */
export function gfMulAdd(
  coef: Uint8Array,
  inputs: readonly Uint8Array[],
  outputs: readonly Uint8Array[],
  len: number,
): void {
  const n = inputs.length;
  const k = simdKernel();
  if (k && len >= 1024) {
    gfMulAddSimd(k, coef, inputs, outputs, len);
    return;
  }
  const aligned = (len & 3) === 0 && inputs.every((b) => (b.byteOffset & 3) === 0) &&
    outputs.every((b) => (b.byteOffset & 3) === 0);
  if (!aligned) {
    gfMulAddBytes(coef, inputs, outputs, len);
    return;
  }
  const words = len >>> 2;
  const in32 = inputs.map((b) => new Uint32Array(b.buffer, b.byteOffset, words));
  for (let r = 0; r < outputs.length; r++) {
    const o = new Uint32Array(outputs[r].buffer, outputs[r].byteOffset, words);
    const tabs: (Uint16Array | null)[] = [];
    const srcs: Uint32Array[] = [];
    for (let i = 0; i < n; i++) {
      const c = coef[r * n + i];
      if (c === 0) continue;
      tabs.push(c === 1 ? null : mul16(c));
      srcs.push(in32[i]);
    }
    if (!srcs.length) {
      o.fill(0);
      continue;
    }
    for (let start = 0; start < words; start += CHUNK_WORDS) {
      const end = Math.min(words, start + CHUNK_WORDS);
      for (let i = 0; i < srcs.length; i++) {
        const t = tabs[i], s = srcs[i];
        if (i === 0) {
          if (t === null) o.set(s.subarray(start, end), start);
          else mulSet16(t, s, o, start, end);
        } else if (t === null) xor32(s, o, start, end);
        else mulXor16(t, s, o, start, end);
      }
    }
  }
}

function mulSet16(t: Uint16Array, s: Uint32Array, o: Uint32Array, start: number, end: number) {
  for (let k = start; k < end; k++) {
    const w = s[k];
    o[k] = t[w & 0xffff] | (t[w >>> 16] << 16);
  }
}

function mulXor16(t: Uint16Array, s: Uint32Array, o: Uint32Array, start: number, end: number) {
  for (let k = start; k < end; k++) {
    const w = s[k];
    o[k] ^= t[w & 0xffff] | (t[w >>> 16] << 16);
  }
}

function xor32(s: Uint32Array, o: Uint32Array, start: number, end: number) {
  for (let k = start; k < end; k++) o[k] ^= s[k];
}

// Bytes of each strip per kernel round: inputs and outputs of a round stay in L1/L2.
const SIMD_CHUNK = 8192;

function gfMulAddSimd(
  k: SimdKernel,
  coef: Uint8Array,
  inputs: readonly Uint8Array[],
  outputs: readonly Uint8Array[],
  len: number,
): void {
  const n = inputs.length, m = outputs.length;
  const tabBytes = 32 * n * m;
  const inBase = tabBytes;
  const outBase = inBase + n * SIMD_CHUNK;
  const need = outBase + m * SIMD_CHUNK;
  if (k.memory.buffer.byteLength < need) {
    k.memory.grow(Math.ceil((need - k.memory.buffer.byteLength) / 65536));
  }
  const mem = new Uint8Array(k.memory.buffer);
  for (let r = 0; r < m; r++) {
    for (let i = 0; i < n; i++) {
      const row = coef[r * n + i] * 256;
      const t = 32 * (r * n + i);
      for (let x = 0; x < 16; x++) {
        mem[t + x] = GF_MUL[row + x];
        mem[t + 16 + x] = GF_MUL[row + (x << 4)];
      }
    }
  }
  const vlen = len & ~15;
  for (let off = 0; off < vlen; off += SIMD_CHUNK) {
    const c = Math.min(SIMD_CHUNK, vlen - off);
    for (let i = 0; i < n; i++) mem.set(inputs[i].subarray(off, off + c), inBase + i * SIMD_CHUNK);
    for (let r = 0; r < m; r++) {
      k.mulRow(inBase, SIMD_CHUNK, n, 32 * r * n, outBase + r * SIMD_CHUNK, c);
      outputs[r].set(mem.subarray(outBase + r * SIMD_CHUNK, outBase + r * SIMD_CHUNK + c), off);
    }
  }
  if (vlen < len) {
    gfMulAddBytes(
      coef,
      inputs.map((b) => b.subarray(vlen, len)),
      outputs.map((b) => b.subarray(vlen, len)),
      len - vlen,
    );
  }
}

function gfMulAddBytes(
  coef: Uint8Array,
  inputs: readonly Uint8Array[],
  outputs: readonly Uint8Array[],
  len: number,
): void {
  const n = inputs.length;
  for (let r = 0; r < outputs.length; r++) {
    const out = outputs[r];
    out.fill(0, 0, len);
    for (let i = 0; i < n; i++) {
      const c = coef[r * n + i];
      if (c === 0) continue;
      const src = inputs[i];
      const row = c * 256;
      for (let k = 0; k < len; k++) out[k] ^= GF_MUL[row + src[k]];
    }
  }
}

/** One code (d, p) with its matrices; decode matrices are cached per set of present strips. */
export class ErasureCode {
  readonly n: number;
  readonly enc: Uint8Array;
  readonly stripSize: number;
  private readonly parityRows: Uint8Array;
  private readonly decodeCache = new Map<string, Uint8Array>();

  constructor(readonly d: number, readonly p: number) {
    // p may exceed d: upstream accepts e.g. 4:5 (any d rows of the matrix stay invertible).
    if (![2, 4, 8, 16].includes(d) || p < 1 || p > 15) {
      throw new SdError(Res.INVALID_PARMS, `invalid EC ${d}:${p}`);
    }
    this.n = d + p;
    this.enc = encodingMatrix(d, p);
    this.parityRows = this.enc.subarray(d * d);
    this.stripSize = SD_EC_DATA_STRIPE_SIZE / d;
  }

  static forPolicy(policy: number): ErasureCode {
    const { d, p } = ecPolicyToDp(policy);
    const key = (d << 8) | p;
    let c = CODES.get(key);
    if (!c) CODES.set(key, c = new ErasureCode(d, p));
    return c;
  }

  /** Parity strips (each `len` bytes) from the d data strips. */
  encode(data: readonly Uint8Array[], parity: readonly Uint8Array[], len: number): void {
    if (data.length !== this.d || parity.length !== this.p) {
      throw new RangeError(
        `encode: ${data.length}+${parity.length} strips for ${this.d}:${this.p}`,
      );
    }
    gfMulAdd(this.parityRows, data, parity, len);
  }

  /**
   * Rebuilds the missing entries of `strips` (length d+p; null = missing) from any d present
   * ones, each `len` bytes. Only the indexes in `want` are produced (default: all missing).
   */
  reconstruct(strips: (Uint8Array | null)[], len: number, want?: number[]): void {
    if (strips.length !== this.n) throw new RangeError(`reconstruct: ${strips.length} strips`);
    const have: number[] = [];
    for (let i = 0; i < this.n && have.length < this.d; i++) if (strips[i]) have.push(i);
    if (have.length < this.d) {
      throw new SdError(Res.NO_OBJ, `only ${have.length} of ${this.d} strips needed are present`);
    }
    const missing = (want ?? [...strips.keys()]).filter((i) => !strips[i]);
    if (!missing.length) return;
    const key = have.join(",");
    let inv = this.decodeCache.get(key);
    if (!inv) {
      const sub = new Uint8Array(this.d * this.d);
      for (let r = 0; r < this.d; r++) {
        sub.set(this.enc.subarray(have[r] * this.d, have[r] * this.d + this.d), r * this.d);
      }
      inv = gfInvertMatrix(sub, this.d);
      this.decodeCache.set(key, inv);
    }
    // Row m of enc·inv expresses strip m in terms of the present strips.
    const coef = new Uint8Array(missing.length * this.d);
    missing.forEach((m, r) => {
      coef.set(
        gfMatMul(this.enc.subarray(m * this.d, m * this.d + this.d), inv, 1, this.d, this.d),
        r * this.d,
      );
    });
    const outs = missing.map(() => new Uint8Array(len));
    gfMulAdd(coef, have.map((i) => strips[i]!), outs, len);
    missing.forEach((m, r) => (strips[m] = outs[r]));
  }

  // ------------------------------------------------ object <-> strip files

  /**
   * Splits `buf` (a whole number of 512-byte stripes) into d data strips: strip j gets bytes
   * [s·512 + j·ss, s·512 + (j+1)·ss) of every stripe s.
   */
  split(buf: Uint8Array): Buffer[] {
    const ss = this.stripSize;
    const stripes = buf.length / SD_EC_DATA_STRIPE_SIZE;
    if (!Number.isInteger(stripes)) throw new RangeError(`split: ${buf.length} bytes`);
    const out: Buffer[] = [];
    for (let j = 0; j < this.d; j++) out.push(Buffer.allocUnsafe(stripes * ss));
    if (ss % 4 === 0 && (buf.byteOffset & 3) === 0) {
      const w = ss >>> 2;
      const src = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
      const dst = out.map((b) => new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2));
      let si = 0;
      for (let s = 0; s < stripes; s++) {
        for (let j = 0; j < this.d; j++) {
          const o = dst[j];
          const base = s * w;
          for (let k = 0; k < w; k++) o[base + k] = src[si++];
        }
      }
    } else {
      let si = 0;
      for (let s = 0; s < stripes; s++) {
        for (let j = 0; j < this.d; j++) {
          out[j].set(buf.subarray(si, si + ss), s * ss);
          si += ss;
        }
      }
    }
    return out;
  }

  /** Inverse of split: the d data strips back into stripes. */
  join(strips: readonly Uint8Array[]): Buffer {
    const ss = this.stripSize;
    const stripes = strips[0].length / ss;
    const out = Buffer.allocUnsafe(stripes * SD_EC_DATA_STRIPE_SIZE);
    if (ss % 4 === 0 && strips.every((b) => (b.byteOffset & 3) === 0)) {
      const w = ss >>> 2;
      const dst = new Uint32Array(out.buffer, out.byteOffset, out.length >>> 2);
      const src = strips.map((b) => new Uint32Array(b.buffer, b.byteOffset, (stripes * ss) >>> 2));
      let di = 0;
      for (let s = 0; s < stripes; s++) {
        const base = s * w;
        for (let j = 0; j < this.d; j++) {
          const from = src[j];
          for (let k = 0; k < w; k++) dst[di++] = from[base + k];
        }
      }
      return out;
    }
    let oi = 0;
    for (let s = 0; s < stripes; s++) {
      for (let j = 0; j < this.d; j++) {
        out.set(strips[j].subarray(s * ss, s * ss + ss), oi);
        oi += ss;
      }
    }
    return out;
  }

  /** All d+p strips of `buf` (whole stripes). */
  encodeObject(buf: Uint8Array): Buffer[] {
    const data = this.split(buf);
    const len = data[0].length;
    const parity: Buffer[] = [];
    for (let k = 0; k < this.p; k++) parity.push(Buffer.allocUnsafe(len));
    this.encode(data, parity, len);
    return [...data, ...parity];
  }
}

const CODES = new Map<number, ErasureCode>();

/**
 * Objects striped under an EC policy: data and vmstate objects. Inodes, B-tree nodes and ledgers
 * are replicated d+p times (protocol.md §12.5); so are attribute objects, whose 66,320 bytes are
 * not whole stripes.
 */
export function isErasureOid(oid: bigint, policy: number): boolean {
  return policy !== 0 && (isDataObj(oid) || isVmstateObj(oid));
}
