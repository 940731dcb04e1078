// Erasure-code throughput on one core: `node_modules/.bin/bun bench/ec.ts [--nbd]` (the codec
// part also runs under deno run -A). MB/s of object data (4 MiB objects): "parity" = computing
// the p parity strips from the d data strips, "encode" = splitting an object into strips plus
// parity (what the gateway does per write), "decode" = rebuilding p lost data strips from the
// survivors and joining the object. With --nbd (needs ./sheepdog and nbdcopy): sequential NBD
// write and read of BENCH_EC_NBD_MB (default 512) MiB into a 4:2 VDI and a copies=3 VDI on the
// same 6-node cluster.
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { ErasureCode } from "../core/ec.ts";

const OBJ = 4 << 20;
const MiB_ = 1 << 20;
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

/** MB/s per core of parity, whole-object encode and decode with p strips lost. */
export function codecRates(): { code: string; parity: number; encode: number; decode: number }[] {
  const out = [];
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
    out.push({ code: `${d}:${p}`, parity: par, encode: enc, decode: dec });
  }
  return out;
}

if (import.meta.main) {
  const rt = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined" ? "bun" : "deno";
  console.log(`erasure code, one core, ${rt}, MB/s of object data`);
  console.log("| code | parity | encode (split+parity) | decode (p lost) |");
  console.log("|---|---|---|---|");
  for (const r of codecRates()) {
    console.log(
      `| ${r.code} | ${r.parity.toFixed(0)} | ${r.encode.toFixed(0)} | ${r.decode.toFixed(0)} |`,
    );
  }
  if (process.argv.includes("--nbd")) {
    const mb = Number(process.env.BENCH_EC_NBD_MB ?? 512);
    console.log(`\nNBD sequential, ${mb} MiB, 6 nodes, nbdcopy (MB/s)`);
    console.log("| VDI | write | read |");
    console.log("|---|---|---|");
    for (const r of await nbdBench(mb)) {
      console.log(`| ${r.name} (${r.copies}) | ${r.write.toFixed(0)} | ${r.read.toFixed(0)} |`);
    }
  }
}

/** nbdcopy write and read MB/s of an EC 4:2 VDI and a copies=3 VDI on one 6-node cluster. */
export async function nbdBench(
  mb: number,
): Promise<{ name: string; copies: string; write: number; read: number }[]> {
  const { TestCluster } = await import("../tests/lib/cluster.ts");
  const { fail, nbdcopy } = await import("./lib.ts");
  const rows = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ec-bench-"));
  const src = path.join(tmp, "src");
  const out = path.join(tmp, "out");
  const chunk = Buffer.alloc(MiB_);
  const fd = fs.openSync(src, "w");
  for (let i = 0; i < mb; i++) {
    for (let k = 0; k < MiB_; k += 4) {
      chunk.writeUInt32LE(Math.imul(i * MiB_ + k + 7, 2654435761) >>> 0, k);
    }
    fs.writeSync(fd, chunk);
  }
  fs.closeSync(fd);
  const c = await TestCluster.start(6, { nbd: true, format: { copies: 3 } });
  try {
    for (const [name, copies] of [["ec42", "4:2"], ["rep3", "3"]]) {
      await c.dogOk(["vdi", "create", "-c", copies, name, `${mb}M`]);
      const uri = `nbd://127.0.0.1:${c.nodes[0].nbdPort}/${name}`;
      const w = await nbdcopy(src, uri, ["--flush"], 600_000);
      if (w.code !== 0) throw fail("nbdcopy in", w);
      const r = await nbdcopy(uri, out, [], 600_000);
      if (r.code !== 0) throw fail("nbdcopy out", r);
      if (!fs.readFileSync(out).equals(fs.readFileSync(src))) {
        throw new Error(`${name}: data differs`);
      }
      const rate = (ms: number) => (mb * MiB_) / 1e6 / (ms / 1000);
      rows.push({ name, copies, write: rate(w.ms), read: rate(r.ms) });
    }
    return rows;
  } finally {
    await c.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
