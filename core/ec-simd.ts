// WebAssembly SIMD kernel for GF(2^8) multiply-accumulate, the split-nibble method of ISA-L
// (ec_init_tables): c·x = lo[x & 15] ^ hi[x >> 4] with two 16-entry tables per coefficient,
// looked up for 16 bytes at once by i8x16.swizzle. The module is assembled here from its opcodes
// (a few dozen bytes) so no toolchain or binary blob is needed; runtimes without WASM SIMD get
// null and the caller keeps its table-driven JavaScript loop.

export interface SimdKernel {
  memory: WebAssembly.Memory;
  /**
   * dst[0..len) = Σ_i c_i·in_i for i < n, where in_i starts at inBase + i·stride and the tables
   * of c_i (32 bytes: lo then hi) at tab + 32·i. Byte offsets into memory; len a multiple of 16.
   */
  mulRow(inBase: number, stride: number, n: number, tab: number, dst: number, len: number): void;
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

/** The module's bytes: memory "mem", function "mulrow"(inBase, stride, n, tab, dst, len). */
function moduleBytes(): Uint8Array<ArrayBuffer> {
  // params 0 inBase, 1 stride, 2 n, 3 tab, 4 dst, 5 len; locals 6 k, 7 i, 8 p, 9 t (i32),
  // 10 acc, 11 v, 12 mask (v128)
  const get = (i: number) => [0x20, i];
  const set = (i: number) => [0x21, i];
  const load = (off: number) => [SIMD, 0x00, ...memarg(off)];
  const store = [SIMD, 0x0b, ...memarg(0)];
  const and = [SIMD, 0x4e], xor = [SIMD, 0x51], swizzle = [SIMD, 0x0e], splat = [SIMD, 0x0f];
  const add = 0x6a, geU = 0x4f;
  const body = [
    ...[2, 4, 0x7f, 3, 0x7b], // local groups: 4 x i32, 3 x v128
    ...[0x41, 15, ...splat, ...set(12)],
    ...[0x02, 0x40, 0x03, 0x40], // block, loop (over k)
    ...[...get(6), ...get(5), geU, 0x0d, 1],
    ...[0x41, 0, ...splat, ...set(10)],
    ...[...get(0), ...get(6), add, ...set(8)],
    ...[...get(3), ...set(9)],
    ...[0x41, 0, ...set(7)],
    ...[0x02, 0x40, 0x03, 0x40], // block, loop (over inputs)
    ...[...get(7), ...get(2), geU, 0x0d, 1],
    ...[...get(8), ...load(0), ...set(11)],
    // acc ^= lo[v & 15] ^ hi[v >> 4]
    ...[...get(10), ...get(9), ...load(0), ...get(11), ...get(12), ...and, ...swizzle, ...xor],
    ...[...get(9), ...load(16), ...get(11), 0x41, 4, SIMD, 0x6d, ...swizzle, ...xor, ...set(10)],
    ...[...get(8), ...get(1), add, ...set(8)],
    ...[...get(9), 0x41, 32, add, ...set(9)],
    ...[...get(7), 0x41, 1, add, ...set(7)],
    ...[0x0c, 0, 0x0b, 0x0b], // br loop; end loop, block
    ...[...get(4), ...get(6), add, ...get(10), ...store],
    ...[...get(6), 0x41, 16, add, ...set(6)],
    ...[0x0c, 0, 0x0b, 0x0b, 0x0b], // br loop; end loop, block, function
  ];
  const bytes = [
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, [1, 0x60, 6, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0]),
    ...section(3, [1, 0]),
    ...section(5, [1, 0x00, 1]), // one memory, min 1 page, no max
    ...section(7, [2, ...name("mem"), 0x02, 0, ...name("mulrow"), 0x00, 0]),
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
    const ex = inst.exports as { mem: WebAssembly.Memory; mulrow: SimdKernel["mulRow"] };
    cached = { memory: ex.mem, mulRow: ex.mulrow };
  } catch {
    cached = null;
  }
  return cached;
}
