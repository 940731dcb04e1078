// Erasure-code throughput on one core: `node_modules/.bin/bun bench/ec.ts` (or deno run -A).
// MB/s of object data (4 MiB objects): "parity" = computing the p parity strips from the d data
// strips, "encode" = splitting an object into strips plus parity (what the gateway does per
// write), "decode" = rebuilding p lost data strips from the survivors and joining the object.
import { Buffer } from "node:buffer";
import process from "node:process";
import { ErasureCode } from "../core/ec.ts";

const OBJ = 4 << 20;
const SECONDS = Number(process.env.BENCH_EC_SECONDS ?? 2);

function rate(fn: () => void): number {
  fn(); // warm up (tables, JIT)
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < SECONDS * 1000) {
    fn();
    n++;
  }
  return (n * OBJ) / 1e6 / ((performance.now() - t0) / 1000);
}

const obj = Buffer.alloc(OBJ);
for (let i = 0; i < OBJ; i += 4) obj.writeUInt32LE(Math.imul(i + 1, 2654435761) >>> 0, i);

const rows: string[] = [];
for (const [d, p] of [[4, 2], [8, 3]]) {
  const code = new ErasureCode(d, p);
  const data = code.split(obj);
  const len = data[0].length;
  const parity = Array.from({ length: p }, () => new Uint8Array(len));
  const par = rate(() => code.encode(data, parity, len));
  const enc = rate(() => code.encodeObject(obj));
  const full = code.encodeObject(obj);
  const dec = rate(() => {
    const strips: (Uint8Array | null)[] = full.map((s, i) => (i < p ? null : s));
    code.reconstruct(strips, len);
    code.join(strips.slice(0, d) as Uint8Array[]);
  });
  rows.push(
    `| ${d}:${p} | ${par.toFixed(0)} | ${enc.toFixed(0)} | ${dec.toFixed(0)} |`,
  );
}
const rt = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined" ? "bun" : "deno";
console.log(`erasure code, one core, ${rt}, MB/s of object data`);
console.log("| code | parity | encode (split+parity) | decode (p lost) |");
console.log("|---|---|---|---|");
for (const r of rows) console.log(r);
