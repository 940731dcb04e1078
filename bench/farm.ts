// Farm benchmark: `dog cluster snapshot save` / `load` of a cluster holding BENCH_FARM_MB
// (default 1024) MiB of random data, against `tar` of the three store directories in the same
// run on the same disk (tar cf + sync of the archive; tar xf + sync of the extracted files).
// Runs on its own (`node_modules/.bin/bun bench/farm.ts`) or as the "farm" section of
// bench/run.ts. copies=1, so the stores hold exactly the data once, as the farm does.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { TestCluster } from "../tests/lib/cluster.ts";
import { dogArgv, fail, log, MB, MiB, Results, run } from "./lib.ts";

function mbps(bytes: number, ms: number): number {
  return bytes / MB / (ms / 1000);
}

function treeBytes(d: string): number {
  let n = 0;
  for (const e of fs.readdirSync(d, { withFileTypes: true })) {
    const p = path.join(d, e.name);
    n += e.isDirectory() ? treeBytes(p) : fs.statSync(p).size;
  }
  return n;
}

export interface FarmBenchOpts {
  results: Results;
  /** Scratch directory (on the disk being measured). */
  work: string;
  /** A file of at least `size` random bytes. */
  src: string;
  size: number;
}

export async function farmBench(o: FarmBenchOpts): Promise<void> {
  const { results, work, src, size } = o;
  const sec = `farm 3 nodes copies=1, ${size / MiB} MiB`;
  const c = await TestCluster.start(3, { format: { copies: 1 } });
  try {
    const port = c.nodes[0].port;
    await c.dogOk(["vdi", "create", "v", String(size)]);
    const wr = await run(dogArgv(port, ["vdi", "write", "v", "0", String(size)]), {
      timeoutMs: 900_000,
      stdinFile: src,
    });
    if (wr.code !== 0) throw fail("dog vdi write", wr);
    await c.dogOk(["vdi", "snapshot", "-s", "s0", "v"]);

    // Reference first: tar of the stores (the cluster is idle, nothing changes under it).
    const archive = path.join(work, "stores.tar");
    const dirs = c.nodes.map((n) => n.dir);
    const tc = await run([
      "sh",
      "-c",
      `tar -cf '${archive}' ${dirs.map((d) => `'${d}'`).join(" ")} && sync '${archive}'`,
    ], { timeoutMs: 900_000 });
    if (tc.code !== 0) throw fail("tar cf", tc);
    const tarBytes = fs.statSync(archive).size;

    const farm = path.join(work, "farm");
    fs.rmSync(farm, { recursive: true, force: true });
    const sv = await run(dogArgv(port, ["cluster", "snapshot", "save", "b1", farm]), {
      timeoutMs: 900_000,
    });
    if (sv.code !== 0) throw fail("dog cluster snapshot save", sv);
    const farmBytes = treeBytes(path.join(farm, "objects"));

    const again = await run(dogArgv(port, ["cluster", "snapshot", "save", "b2", farm]), {
      timeoutMs: 900_000,
    });
    if (again.code !== 0) throw fail("dog cluster snapshot save (unchanged)", again);
    const added = treeBytes(path.join(farm, "objects")) - farmBytes;

    const out = path.join(work, "untar");
    fs.rmSync(out, { recursive: true, force: true });
    fs.mkdirSync(out);
    const tx = await run([
      "sh",
      "-c",
      `tar -xf '${archive}' -C '${out}' && sync -f '${out}'`,
    ], { timeoutMs: 900_000 });
    if (tx.code !== 0) throw fail("tar xf", tx);
    fs.rmSync(out, { recursive: true, force: true });
    fs.rmSync(archive, { force: true });

    const ld = await run(dogArgv(port, ["cluster", "snapshot", "load", "-f", "b1", farm]), {
      timeoutMs: 900_000,
      stdoutFile: "/dev/null",
    });
    if (ld.code !== 0) throw fail("dog cluster snapshot load", ld);
    // Untimed: the loaded VDI holds the data written.
    const chk = await run([
      "sh",
      "-c",
      `${dogArgv(port, ["vdi", "read", "v", "0", String(size)]).map((a) => `'${a}'`).join(" ")}` +
      ` | cmp -n ${size} - '${src}'`,
    ], { timeoutMs: 900_000 });
    if (chk.code !== 0) results.note(`farm: data after load differs: ${chk.out}${chk.err}`);

    results.add({
      section: sec,
      metric: `dog cluster snapshot save (farm ${(farmBytes / MiB).toFixed(0)} MiB)`,
      unit: "MB/s",
      ours: mbps(size, sv.ms),
      refName: `tar cf + sync of 3 stores (${(tarBytes / MiB).toFixed(0)} MiB)`,
      ref: mbps(size, tc.ms),
      better: "higher",
    });
    results.add({
      section: sec,
      metric: "dog cluster snapshot load -f (format + write back)",
      unit: "MB/s",
      ours: mbps(size, ld.ms),
      refName: "tar xf + sync of 3 stores",
      ref: mbps(size, tx.ms),
      better: "higher",
    });
    results.add({
      section: sec,
      metric: "second save of the unchanged cluster (snapshot data not re-read)",
      unit: "MB/s",
      ours: mbps(size, again.ms),
      refName: "tar cf + sync of 3 stores",
      ref: mbps(size, tc.ms),
      better: "higher",
    });
    results.add({
      section: sec,
      metric: "second save of the unchanged cluster: bytes added",
      unit: "MiB",
      ours: added / MiB,
      refName: "first save",
      ref: farmBytes / MiB,
      better: "lower",
    });
  } finally {
    await c.stop();
  }
}

if (import.meta.main) {
  const size = (Number(process.env.BENCH_FARM_MB) || 1024) * MiB;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-bench-farm-"));
  const results = new Results();
  try {
    const src = path.join(work, "random.bin");
    log(`writing ${size / MiB} MiB of random data to ${src}`);
    const r = await run(["head", "-c", String(size), "/dev/urandom"], {
      timeoutMs: 600_000,
      stdoutFile: src,
    });
    if (r.code !== 0) throw fail("head /dev/urandom", r);
    await farmBench({ results, work, src, size });
    console.log(results.table());
  } finally {
    if (process.env.KEEP !== "1") fs.rmSync(work, { recursive: true, force: true });
  }
}
