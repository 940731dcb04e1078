// dog benchmark io: object-sized writes of zeros into a fully allocated VDI, round-robin over its
// objects, through the sheep's gateway (upstream dog/benchmark.c). Upstream prints nothing (use
// -T) and moves the in-object offset by an object each request, so every write after the first
// round falls past its object and fails; ours writes whole objects and prints a summary with
// latency percentiles.
import { Buffer } from "node:buffer";
import { vidToDataOid } from "../core/oid.ts";
import { writeObject } from "../core/object-io.ts";
import { NetworkError } from "../io/client.ts";
import { SdError } from "../core/errors.ts";
import { strerror } from "../core/proto.ts";
import { cFixed, strnumber } from "./format.ts";
import { Ctx, err, Exit, EXIT_FAILURE, EXIT_SUCCESS, EXIT_SYSFAIL, out } from "./common.ts";
import { readVdiObj, type VdiObj } from "./vdi-common.ts";

const DEFAULT_TOTAL = 1000;
/** Requests in flight: ordered runs one at a time, the others as many as this. */
const DEFAULT_THREADS = 8;
const UNLIMITED_CAP = 1024;

function concurrency(c: Ctx): number {
  const b = c.benchmark;
  switch (b.workqueue || "ordered") {
    case "ordered":
      return 1;
    case "dynamic":
    case "fixed":
      return b.threads || DEFAULT_THREADS;
    case "unlimited":
      return Math.min(UNLIMITED_CAP, b.total || DEFAULT_TOTAL);
    default:
      err(`unknown workqueue type: ${b.workqueue}`);
      err("assumed workqueue types: ordered, dynamic, unlimited, fixed");
      throw new Exit(EXIT_SYSFAIL);
  }
}

/** The value at fraction q of sorted `xs` (nearest rank). */
export function percentile(xs: number[], q: number): number {
  if (!xs.length) return 0;
  return xs[Math.min(xs.length - 1, Math.max(0, Math.ceil(q * xs.length) - 1))];
}

export async function benchmarkIo(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const depth = concurrency(c);
  if (!c.benchmark.force) {
    await c.confirm(
      "Caution! benchmark io command will erase all data of target VDI.\n" +
        " Are you sure you want to continue? [yes/no]: ",
    );
  }
  let v: VdiObj;
  try {
    v = await readVdiObj(c, name, 0, "", true);
  } catch (e) {
    if (e instanceof Exit) {
      err(`failed to lookup VDI ${name}`);
      throw new Exit(EXIT_SYSFAIL);
    }
    throw e;
  }
  const h = v.header;
  const objSize = 2 ** h.blockSizeShift;
  const nrObjects = Number(h.vdiSize / BigInt(objSize));
  for (let i = 0; i < nrObjects; i++) {
    if (v.slots.get(i) !== v.vid) {
      err(`VDI ${name} has unallocated data`);
      return EXIT_SYSFAIL;
    }
  }
  if (nrObjects === 0) {
    err(`VDI ${name} has no whole object to write`);
    return EXIT_SYSFAIL;
  }
  const total = c.benchmark.total || DEFAULT_TOTAL;
  const buf = Buffer.alloc(objSize);
  const lat: number[] = [];
  let next = 0;
  let failed: unknown = null;
  const t0 = performance.now();
  const worker = async () => {
    while (!failed && next < total) {
      const idx = next++ % nrObjects;
      const s = performance.now();
      try {
        await writeObject(c.req, vidToDataOid(v.vid, idx), buf, 0, {
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
        });
      } catch (e) {
        failed ??= e;
        return;
      }
      lat.push(performance.now() - s);
    }
  };
  await Promise.all(Array.from({ length: Math.min(depth, total) }, worker));
  const secs = (performance.now() - t0) / 1000;
  if (failed) {
    if (failed instanceof NetworkError || !(failed instanceof SdError)) throw failed;
    err(`failed to write object: ${strerror(failed.code)}`);
    return EXIT_FAILURE;
  }
  lat.sort((a, b) => a - b);
  const bytes = BigInt(objSize) * BigInt(total);
  const ms = (x: number) => cFixed(x, 2);
  if (c.raw) {
    out(
      `${total} ${objSize} ${cFixed(secs, 3)} ${ms(lat[0])} ${ms(percentile(lat, 0.5))} ` +
        `${ms(percentile(lat, 0.9))} ${ms(percentile(lat, 0.99))} ${ms(lat[lat.length - 1])}\n`,
    );
    return EXIT_SUCCESS;
  }
  out(
    `${total} writes of ${strnumber(objSize)} with ${depth} in flight in ${cFixed(secs, 3)} s: ` +
      `${cFixed(total / secs, 1)} IOPS, ${strnumber(BigInt(Math.round(Number(bytes) / secs)))}/s\n`,
  );
  out(
    `latency (ms): min ${ms(lat[0])}  p50 ${ms(percentile(lat, 0.5))}  p90 ${
      ms(percentile(lat, 0.9))
    }  p99 ${ms(percentile(lat, 0.99))}  max ${ms(lat[lat.length - 1])}\n`,
  );
  return EXIT_SUCCESS;
}
