import { describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import {
  ecDpToPolicy,
  ecPolicyToDp,
  encodingMatrix,
  ErasureCode,
  gfExp,
  gfInv,
  gfInvertMatrix,
  gfMul,
  gfMulAdd,
  SD_EC_DATA_STRIPE_SIZE,
} from "../../core/ec.ts";
import { simdKernel } from "../../core/ec-simd.ts";

const hex = (a: Uint8Array) => Buffer.from(a).toString("hex");

/** Slow reference multiply: carry-less product reduced by 0x11D, bit by bit. */
function slowMul(a: number, b: number): number {
  let r = 0;
  while (b) {
    if (b & 1) r ^= a;
    b >>= 1;
    a <<= 1;
    if (a & 0x100) a ^= 0x11d;
  }
  return r;
}

function rand(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

describe("GF(2^8)", () => {
  test("field of x^8+x^4+x^3+x^2+1, generator 2", () => {
    expect(gfExp(8)).toBe(0x1d);
    expect(gfExp(255)).toBe(1);
    const seen = new Set<number>();
    for (let i = 0; i < 255; i++) seen.add(gfExp(i));
    expect(seen.size).toBe(255); // 2 generates the whole multiplicative group
    for (let a = 0; a < 256; a += 7) {
      for (let b = 0; b < 256; b += 3) expect(gfMul(a, b)).toBe(slowMul(a, b));
    }
    for (let a = 1; a < 256; a++) expect(gfMul(a, gfInv(a))).toBe(1);
  });

  test("matrix inversion", () => {
    const m = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 10]);
    const inv = gfInvertMatrix(m, 3);
    for (let r = 0; r < 3; r++) {
      for (let c = 0; c < 3; c++) {
        let acc = 0;
        for (let i = 0; i < 3; i++) acc ^= gfMul(m[r * 3 + i], inv[i * 3 + c]);
        expect(acc).toBe(r === c ? 1 : 0);
      }
    }
    expect(() => gfInvertMatrix(Uint8Array.from([1, 1, 1, 1]), 2)).toThrow();
  });
});

describe("upstream's encoding matrix", () => {
  // Known answers of upstream lib/fec.c fec_new() (protocol.md §12.5).
  test("parity rows of 2:1 and 4:2", () => {
    expect(hex(encodingMatrix(2, 1).subarray(4))).toBe("0302");
    const m = encodingMatrix(4, 2);
    expect(hex(m.subarray(16, 20))).toBe("7740380e");
    expect(hex(m.subarray(20, 24))).toBe("c7a70d6c");
  });

  test("systematic: identity on top", () => {
    for (const [d, p] of [[2, 1], [4, 2], [8, 3], [16, 15]]) {
      const m = encodingMatrix(d, p);
      for (let r = 0; r < d; r++) {
        for (let c = 0; c < d; c++) expect(m[r * d + c]).toBe(r === c ? 1 : 0);
      }
    }
  });

  test("MDS: every d of the d+p rows are invertible (4:2, 8:3, 4:5 all; 16:15 sampled)", () => {
    const check = (d: number, p: number, rows: number[]) => {
      const m = encodingMatrix(d, p);
      const sub = new Uint8Array(d * d);
      rows.forEach((r, i) => sub.set(m.subarray(r * d, r * d + d), i * d));
      expect(() => gfInvertMatrix(sub, d)).not.toThrow();
    };
    const subsets = (n: number, k: number): number[][] => {
      if (k === 0) return [[]];
      if (n < k) return [];
      return [...subsets(n - 1, k - 1).map((s) => [...s, n - 1]), ...subsets(n - 1, k)];
    };
    for (const s of subsets(6, 4)) check(4, 2, s);
    for (const s of subsets(11, 8)) check(8, 3, s);
    for (const s of subsets(9, 4)) check(4, 5, s);
    for (let t = 0; t < 50; t++) {
      const rows = [...Array(31).keys()].sort(() => Math.random() - 0.5).slice(0, 16);
      check(16, 15, rows.sort((a, b) => a - b));
    }
  });

  test("fixed stripe vector: byte i = (7i+3) mod 256, 4:2", () => {
    const stripe = Buffer.alloc(512);
    for (let i = 0; i < 512; i++) stripe[i] = (7 * i + 3) & 0xff;
    const s = new ErasureCode(4, 2).encodeObject(stripe);
    expect(s.length).toBe(6);
    expect(hex(s[4].subarray(0, 8))).toBe("d7dec5cccbf2f9e0");
    expect(hex(s[5].subarray(0, 8))).toBe("7e776c65625b5049");
    // data strips are the plain bytes
    expect(s[1].equals(stripe.subarray(128, 256))).toBe(true);
  });
});

describe("policy byte", () => {
  test("d:p <-> byte", () => {
    expect(ecDpToPolicy(2, 1)).toBe(0x11);
    expect(ecDpToPolicy(4, 2)).toBe(0x22);
    expect(ecDpToPolicy(8, 3)).toBe(0x43);
    expect(ecDpToPolicy(16, 15)).toBe(0x8f);
    expect(ecPolicyToDp(0x43)).toEqual({ d: 8, p: 3 });
    expect(() => ecPolicyToDp(0)).toThrow();
    expect(() => new ErasureCode(3, 1)).toThrow();
    expect(() => new ErasureCode(4, 16)).toThrow();
    expect(() => new ErasureCode(4, 0)).toThrow();
    expect(new ErasureCode(4, 5).n).toBe(9); // upstream accepts p > d
  });
});

describe("strips", () => {
  test("layout: byte o is in strip (o%512)/ss at (o/512)·ss + o%ss", () => {
    for (const d of [2, 4, 8, 16]) {
      const code = new ErasureCode(d, 1);
      const obj = rand(SD_EC_DATA_STRIPE_SIZE * 9, d);
      const strips = code.split(obj);
      const ss = 512 / d;
      for (let o = 0; o < obj.length; o += 13) {
        const strip = Math.floor((o % 512) / ss);
        expect(strips[strip][Math.floor(o / 512) * ss + (o % ss)]).toBe(obj[o]);
      }
      expect(code.join(strips).equals(obj)).toBe(true);
      // strips at odd addresses take the byte-wise path
      const odd = strips.map((st) => {
        const b = Buffer.alloc(st.length + 1);
        st.copy(b, 1);
        return b.subarray(1);
      });
      expect(code.join(odd).equals(obj)).toBe(true);
      expect(code.split(Buffer.concat([Buffer.alloc(1), obj]).subarray(1))).toEqual(strips);
    }
  });

  test("parity per stripe equals parity over whole strip files", () => {
    const code = new ErasureCode(4, 2);
    const obj = rand(512 * 8, 5);
    const whole = code.encodeObject(obj);
    for (let s = 0; s < 8; s++) {
      const one = code.encodeObject(obj.subarray(s * 512, s * 512 + 512));
      for (let k = 0; k < 6; k++) {
        expect(one[k].equals(whole[k].subarray(s * 128, s * 128 + 128))).toBe(true);
      }
    }
  });

  test("word kernel equals byte kernel (aligned and unaligned buffers)", () => {
    const code = new ErasureCode(8, 3);
    const backing = rand(8 * 1000 + 3, 9);
    const data = [...Array(8).keys()].map((j) =>
      backing.subarray(1 + j * 1000, 1 + j * 1000 + 996)
    );
    const a = [0, 1, 2].map(() => new Uint8Array(996));
    code.encode(data, a, 996);
    const aligned = data.map((b) => Uint8Array.from(b));
    const b = [0, 1, 2].map(() => new Uint8Array(996));
    code.encode(aligned, b, 996);
    for (let k = 0; k < 3; k++) {
      expect(hex(a[k])).toBe(hex(b[k]));
      // straight from the definition
      for (let x = 0; x < 996; x += 37) {
        let acc = 0;
        for (let j = 0; j < 8; j++) acc ^= slowMul(code.enc[(8 + k) * 8 + j], data[j][x]);
        expect(a[k][x]).toBe(acc);
      }
    }
    const z = [new Uint8Array(8).fill(1)];
    gfMulAdd(new Uint8Array(1), [new Uint8Array(8).fill(5)], z, 8);
    expect([...z[0]]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
  });

  test("WASM SIMD kernel (long strips) equals the definition, tails included", () => {
    expect(simdKernel()).not.toBeNull(); // the fast path is what runs here
    for (const len of [1024, 5000, 65536 + 17]) {
      const code = new ErasureCode(8, 3);
      const data = [...Array(8).keys()].map((j) => rand(len, 100 + j + len));
      const par = [0, 1, 2].map(() => new Uint8Array(len).fill(0xee));
      code.encode(data, par, len);
      for (let k = 0; k < 3; k++) {
        for (let x = 0; x < len; x += x < 64 || x > len - 64 ? 1 : 29) {
          let acc = 0;
          for (let j = 0; j < 8; j++) acc ^= slowMul(code.enc[(8 + k) * 8 + j], data[j][x]);
          expect(par[k][x]).toBe(acc);
        }
      }
    }
  });

  test("reconstruct from any d strips: 4:2 every pair lost, 8:3 every triple lost", () => {
    for (const [d, p] of [[4, 2], [8, 3]]) {
      const code = new ErasureCode(d, p);
      const obj = rand(512 * 64, d * 31 + p);
      const full = code.encodeObject(obj);
      const n = d + p;
      for (let a = 0; a < n; a++) {
        for (let b = a + 1; b < n; b++) {
          for (let c = p === 3 ? b + 1 : n; c < (p === 3 ? n : n + 1); c++) {
            const lost = p === 3 ? [a, b, c] : [a, b];
            const strips: (Uint8Array | null)[] = full.map((s, i) => lost.includes(i) ? null : s);
            code.reconstruct(strips, full[0].length);
            for (const i of lost) expect(Buffer.from(strips[i]!).equals(full[i])).toBe(true);
          }
        }
      }
    }
  });

  test("reconstruct only what is wanted; too few strips is NO_OBJ", () => {
    const code = new ErasureCode(4, 2);
    const full = code.encodeObject(rand(1024, 3));
    const strips: (Uint8Array | null)[] = [null, full[1], null, full[3], full[4], full[5]];
    code.reconstruct(strips, full[0].length, [2]);
    expect(strips[0]).toBeNull();
    expect(Buffer.from(strips[2]!).equals(full[2])).toBe(true);
    expect(() => code.reconstruct([null, null, null, full[3], full[4], full[5]], 256)).toThrow(
      /strips/,
    );
  });
});

describe("ground truth from upstream's sheep", () => {
  // Strip files written by C Sheepdog 1.0 (3ebe5ea7, shared/reference/c-sheepdog) on a 6-node
  // cluster: `dog vdi create -c 2:1|4:2 v 8M`, `dog vdi write v 0 1048576` of byte
  // i = (floor(i²/32) + 7i + 3) mod 256, then (4:2 only) an unaligned `dog vdi write v 1000 8` of
  // "HELLO-EC". SHA-1 of each file of data object 0 (4 MiB object, the rest zero).
  const upstream: Record<string, string[]> = {
    "2:1": [
      "1ef6028c7ea16044d76d3d10852f15a48f55beb6",
      "69da045b7d373e3f192382ebe83970249f32a835",
      "d323ec8107a387c9cac2406b9b8695c408074ee5",
    ],
    "4:2": [
      "f6b2cfcc1ecadf6facc477f57045828d01039dd7",
      "ff38e904cf68754e9fecd0b2b74e7ddd4f12d6c8",
      "422f3b3b2523881ce92f0b07dab23ce925f14dbc",
      "507db973502c2d8f85f58985d7bba5bd3b6e1428",
      "2a247e474a9eaf29b6fa03cd9851bb4bc574172f",
      "de4f6d18eb2b2db7e272dc9797790be298363131",
    ],
  };
  for (const [policy, sums] of Object.entries(upstream)) {
    test(`${policy}: our strips are upstream's files`, () => {
      const [d, p] = policy.split(":").map(Number);
      const obj = Buffer.alloc(4 << 20);
      for (let i = 0; i < 1 << 20; i++) obj[i] = (Math.floor(i * i / 32) + 7 * i + 3) & 0xff;
      if (d === 4) Buffer.from("HELLO-EC").copy(obj, 1000);
      const strips = new ErasureCode(d, p).encodeObject(obj);
      expect(strips.map((s) => createHash("sha1").update(s).digest("hex"))).toEqual(sums);
      expect(strips[0].length).toBe((4 << 20) / d);
    });
  }
});
