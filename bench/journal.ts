// `make bench` section "journal" (sheep -j, issue 12): the same 3-node copies=3 cluster over NBD
// with and without the journal: nbdcopy sequential write of the random file (first write), then
// fio 4k random write QD1 and QD32 over the written VDI. The journal sits on the same disk as the
// objects (base_dir/journal): what it saves is the per-object fdatasync (and, for creates, the
// temp file sync + rename + directory sync) replaced by one sequential fdatasync of the journal
// shared by every write in flight (group commit); a journal on a separate device (dir=) would
// also take those syncs off the object disk.
import { TestCluster } from "../tests/lib/cluster.ts";
import { fail, fio, type FioResult, log, MB, nbdcopy, type Results } from "./lib.ts";

const JOURNAL = "size=512M";

interface Figures {
  write: number;
  fio: Record<string, FioResult>;
}

async function measure(
  journal: boolean,
  src: string,
  size: number,
  fioRuntime: number,
): Promise<Figures> {
  const extra = journal ? ["-j", JOURNAL] : [];
  const c = await TestCluster.start(3, { nbd: true, extra, format: { copies: 3 } });
  try {
    await c.dogOk(["vdi", "create", "j", String(size)]);
    const uri = `nbd://127.0.0.1:${c.nodes[0].nbdPort}/j`;
    const w = await nbdcopy(src, uri, ["--flush", "--connections=1"], 900_000);
    if (w.code !== 0) throw fail("nbdcopy write", w);
    const f: Figures = { write: size / MB / (w.ms / 1000), fio: {} };
    for (const qd of [1, 32]) f.fio[`QD${qd}`] = await fio(uri, "randwrite", qd, fioRuntime, size);
    log(
      `journal bench ${journal ? "with -j " + JOURNAL : "without journal"}: nbdcopy ${
        f.write.toFixed(1)
      } MB/s, 4k randwrite QD1 ${f.fio.QD1.iops.toFixed(0)} IOPS (p50 ${
        f.fio.QD1.p50us.toFixed(0)
      } us), QD32 ${f.fio.QD32.iops.toFixed(0)} IOPS`,
    );
    return f;
  } finally {
    await c.stop();
  }
}

export async function journalBench(o: {
  results: Results;
  src: string;
  size: number;
  fioRuntime: number;
}): Promise<void> {
  const sec = "journal";
  const without = await measure(false, o.src, o.size, o.fioRuntime);
  const withJ = await measure(true, o.src, o.size, o.fioRuntime);
  const refName = "same sheep without -j";
  o.results.add({
    section: sec,
    metric: `nbdcopy seq write ${o.size >> 20} MiB, 1 conn, 3 nodes copies=3, -j ${JOURNAL}`,
    unit: "MB/s",
    ours: withJ.write,
    refName,
    ref: without.write,
    better: "higher",
  });
  for (const qd of [1, 32]) {
    const k = `QD${qd}`;
    o.results.add({
      section: sec,
      metric: `fio 4k randwrite ${k}, 3 nodes copies=3, -j ${JOURNAL}`,
      unit: "IOPS",
      ours: withJ.fio[k].iops,
      refName,
      ref: without.fio[k].iops,
      better: "higher",
    });
  }
  o.results.add({
    section: sec,
    metric: `fio 4k randwrite QD1 p50 latency, -j ${JOURNAL}`,
    unit: "us",
    ours: withJ.fio.QD1.p50us,
    refName,
    ref: without.fio.QD1.p50us,
    better: "lower",
  });
  o.results.note(
    "journal: journal and objects share one disk (the journal's win is one group-committed sequential fdatasync instead of per-object fdatasync and create rename/dir syncs)",
  );
}
