// WebAssembly SIMD kernel for GF(2^8) multiply-accumulate, the split-nibble method of ISA-L
// (ec_init_tables): c·x = lo[x & 15] ^ hi[x >> 4] with two 16-entry tables per coefficient,
// looked up for 16 bytes at once by i8x16.swizzle. The module is assembled here from its opcodes
// (a few dozen bytes) so no toolchain or binary blob is needed; runtimes without WASM SIMD get
// null and the caller keeps its table-driven JavaScript loop.

/** out[0..len) ^= c·src[0..len) for each call; len a multiple of 32. */
export interface SimdKernel {
  memory: WebAssembly.Memory;
  /** (src, dst, tables, len): byte offsets into memory; tables = 32 bytes (lo then hi). */
  mulXor(src: number, dst: number, tab: number, len: number): void;
}

const SIMD = 0xfd;
const memarg = (offset: number) => [0x00, ...uleb(offset)];

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

function section(id: number, body: number[]): number[] {
  return [id, ...uleb(body.length), ...body];
}

const name = (s: string) => [s.length, ...[...s].map((c) => c.charCodeAt(0))];

/** The module's bytes: memory "mem", function "mulxor"(src, dst, tab, len). */
function moduleBytes(): Uint8Array<ArrayBuffer> {
  // locals: 0 src, 1 dst, 2 tab, 3 len (params); 4 k; 5 lo, 6 hi, 7 mask, 8 v, 9 w
  const get = (i: number) => [0x20, i];
  const set = (i: number) => [0x21, i];
  const v128load = (off: number) => [SIMD, 0x00, ...memarg(off)];
  const v128store = (off: number) => [SIMD, 0x0b, ...memarg(off)];
  const and = [SIMD, 0x4e], xor = [SIMD, 0x51], swizzle = [SIMD, 0x0e], splat = [SIMD, 0x0f];
  const shr4 = [0x41, 4, SIMD, 0x6d]; // i8x16.shr_u by 4
  const addr = [...get(1), ...get(4), 0x6a]; // dst + k
  // out ^= lo[v & 15] ^ hi[v >> 4], for the vector in local `v` at dst+k+off
  const one = (v: number, off: number) => [
    ...addr,
    ...addr,
    ...v128load(off),
    ...get(5),
    ...get(v),
    ...get(7),
    ...and,
    ...swizzle,
    ...xor,
    ...get(6),
    ...get(v),
    ...shr4,
    ...swizzle,
    ...xor,
    ...v128store(off),
  ];
  const body = [
    2, // local groups
    1,
    0x7f, // k: i32
    5,
    0x7b, // lo, hi, mask, v, w: v128
    ...get(2),
    ...v128load(0),
    ...set(5),
    ...get(2),
    ...v128load(16),
    ...set(6),
    0x41,
    15,
    ...splat,
    ...set(7),
    0x02,
    0x40, // block
    0x03,
    0x40, // loop
    ...get(4),
    ...get(3),
    0x4f, // i32.ge_u
    0x0d,
    1, // br_if 1 (out of the block)
    // two vectors per round: both loads first, so they overlap
    ...get(0),
    ...get(4),
    0x6a,
    ...v128load(0),
    ...set(8),
    ...get(0),
    ...get(4),
    0x6a,
    ...v128load(16),
    ...set(9),
    ...one(8, 0),
    ...one(9, 16),
    ...get(4),
    0x41,
    32,
    0x6a,
    ...set(4),
    0x0c,
    0, // br 0 (loop)
    0x0b,
    0x0b,
    0x0b, // end loop, block, function
  ];
  const bytes = [
    0x00,
    0x61,
    0x73,
    0x6d,
    0x01,
    0x00,
    0x00,
    0x00,
    ...section(1, [1, 0x60, 4, 0x7f, 0x7f, 0x7f, 0x7f, 0]),
    ...section(3, [1, 0]),
    ...section(5, [1, 0x00, 1]), // one memory, min 1 page, no max
    ...section(7, [2, ...name("mem"), 0x02, 0, ...name("mulxor"), 0x00, 0]),
    ...section(10, [1, ...uleb(body.length), ...body]),
  ];
  return new Uint8Array(bytes);
}

let cached: SimdKernel | null | undefined;

/** The kernel, or null where WebAssembly SIMD is not available. */
export function simdKernel(): SimdKernel | null {
  if (cached !== undefined) return cached;
  cached = null;
  try {
    const W = (globalThis as { WebAssembly?: typeof WebAssembly }).WebAssembly;
    if (!W) return null;
    const bytes = moduleBytes();
    if (!W.validate(bytes)) return null;
    const inst = new W.Instance(new W.Module(bytes), {});
    const ex = inst.exports as { mem: WebAssembly.Memory; mulxor: SimdKernel["mulXor"] };
    cached = { memory: ex.mem, mulXor: ex.mulxor };
  } catch {
    cached = null;
  }
  return cached;
}
