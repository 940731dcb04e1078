// What `sheep --http` exports on /metrics: latency histograms fed by the daemon's request hook and
// the NBD server's command hook, plus gauges read from the daemon when scraped (its `dog node
// stat` counters, store, recovery, cluster state). Nothing here runs unless --http is given.
import { Cmd } from "../core/nbd.ts";
import type { NodeStats } from "../core/node-stat.ts";
import { Op, Res, Status } from "../core/proto.ts";
import type { Family, Sample } from "../core/prom-text.ts";
import { HistogramVec, render } from "../core/prom-text.ts";
import { VERSION } from "../core/version.ts";
import { nodeHostPort } from "../core/node.ts";
import type { Sheep } from "./daemon.ts";

const OP_NAMES = new Map<number, string>(
  Object.entries(Op).map(([name, code]) => [code, name.toLowerCase()]),
);
const RES_NAMES = new Map<number, string>(
  Object.entries(Res).map(([name, code]) => [code, name.toLowerCase()]),
);
const CMD_NAMES = new Map<number, string>(
  Object.entries(Cmd).map(([name, code]) => [code, name.toLowerCase()]),
);
export const STATUS_NAMES: Record<number, string> = {
  [Status.OK]: "ok",
  [Status.WAIT]: "wait",
  [Status.SHUTDOWN]: "shutdown",
  [Status.KILLED]: "killed",
};

export function opName(op: number): string {
  return OP_NAMES.get(op) ?? `0x${op.toString(16).padStart(2, "0")}`;
}

/** Per-disk figures walk the object directories: at most this often, however often scraped. */
const DISK_WALK_MS = 10_000;
/** The recovery rate is the slope over this window of samples. */
const RATE_WINDOW_MS = 5_000;

export class SheepMetrics {
  readonly ops = new HistogramVec("op");
  /** Keyed by opcode and result name, "op\0result". */
  readonly opErrors = new Map<string, number>();
  readonly nbd = new HistogramVec("command");
  readonly nbdErrors = new Map<string, number>();
  nbdReadBytes = 0;
  nbdWriteBytes = 0;
  private recSamples: Array<{ t: number; done: number; total: number }> = [];
  private diskCache: {
    t: number;
    disks: Array<{ path: string; free: bigint; used: bigint; objects: number }>;
  } = { t: -Infinity, disks: [] };

  constructor(private readonly sheep: Sheep, private readonly now: () => number) {}

  /** Sheep.requestHook: every request handle() served (sockets, NBD, recovery peers). */
  onRequest = (opcode: number, ms: number, result: number): void => {
    const name = opName(opcode);
    this.ops.get(name).observe(ms / 1000);
    if (result !== Res.SUCCESS) {
      const key = `${name}\0${RES_NAMES.get(result) ?? `0x${result.toString(16)}`}`;
      this.opErrors.set(key, (this.opErrors.get(key) ?? 0) + 1);
    }
  };

  /** NbdServerOptions.onCommand: one NBD command answered. */
  onNbdCommand = (cmd: number, ms: number, bytes: number, ok: boolean): void => {
    const name = CMD_NAMES.get(cmd) ?? `cmd${cmd}`;
    this.nbd.get(name).observe(ms / 1000);
    if (!ok) this.nbdErrors.set(name, (this.nbdErrors.get(name) ?? 0) + 1);
    else if (cmd === Cmd.READ) this.nbdReadBytes += bytes;
    else if (cmd === Cmd.WRITE) this.nbdWriteBytes += bytes;
  };

  /** Called every second by the HTTP server (and on each scrape) to follow recovery's progress. */
  sampleRecovery(): void {
    const st = this.sheep.recovery.status();
    const t = this.now();
    const last = this.recSamples[this.recSamples.length - 1];
    // A new recovery (counts restart) or the same one: only a monotonic series has a slope.
    if (last && (st.total !== last.total || st.finished < last.done)) this.recSamples = [];
    this.recSamples.push({ t, done: st.finished, total: st.total });
    while (this.recSamples.length > 2 && t - this.recSamples[0].t > RATE_WINDOW_MS) {
      this.recSamples.shift();
    }
  }

  /** Objects recovered per second over the last few seconds (0 when idle). */
  recoveryRate(): number {
    const s = this.recSamples;
    if (s.length < 2) return 0;
    const a = s[0], b = s[s.length - 1];
    const dt = (b.t - a.t) / 1000;
    return dt > 0 ? (b.done - a.done) / dt : 0;
  }

  private disks(
    objects: bigint[],
  ): Array<{ path: string; free: bigint; used: bigint; objects: number }> {
    const t = this.now();
    const s = this.sheep;
    if (t - this.diskCache.t >= DISK_WALK_MS) {
      const disks = (s.opts.gateway ? [] : s.store.diskInfo()).map((d) => ({ ...d, objects: 0 }));
      // Which disk holds an object is a lookup per object: only with several disks, and only
      // as often as the walk.
      if (disks.length > 1) {
        for (const oid of objects) {
          const p = s.store.path(oid);
          const d = disks.find((x) => p.startsWith(x.path + "/"));
          if (d) d.objects++;
        }
      }
      this.diskCache = { t, disks };
    }
    const disks = this.diskCache.disks;
    if (disks.length === 1) disks[0].objects = objects.length;
    return disks;
  }

  /** `sheep -w`: size, use and activity of the object cache (nothing without one). */
  private cacheFamilies(
    g: (name: string, help: string, samples: Sample[]) => Family,
    c: (name: string, help: string, samples: Sample[]) => Family,
  ): Family[] {
    const cache = this.sheep.cache;
    if (!cache) return [];
    const ix = cache.index;
    let dirty = 0;
    for (const r of cache.info()) dirty += r.dirty;
    const k = cache.counters;
    return [
      g("sheep_cache_size_bytes", "Size of the object cache (-w size=).", [{ value: ix.capacity }]),
      g("sheep_cache_used_bytes", "Bytes the cache files take.", [{ value: ix.usedBytes }]),
      g("sheep_cache_dirty_bytes", "Bytes of dirty blocks not pushed yet.", [{
        value: ix.dirtyBytes,
      }]),
      g("sheep_cache_objects", "Cached objects, by state.", [
        { labels: { state: "dirty" }, value: dirty },
        { labels: { state: "clean" }, value: ix.size - dirty },
      ]),
      c("sheep_cache_reads_total", "Cached-object reads, by outcome.", [
        { labels: { outcome: "hit" }, value: k.hits },
        { labels: { outcome: "miss" }, value: k.misses },
      ]),
      c("sheep_cache_pushes_total", "Objects pushed to the cluster.", [{ value: k.pushed }]),
      c("sheep_cache_reclaimed_total", "Clean objects dropped to make room.", [{
        value: k.reclaimed,
      }]),
      c("sheep_cache_bad_files_total", "Cache files dropped at start (0-byte, short, torn).", [{
        value: k.dropped,
      }]),
    ];
  }

  /** Nodes of the current epoch when the cluster runs, else the members seen so far. */
  clusterNodes() {
    const s = this.sheep;
    return s.state.status === Status.OK ? s.state.nodes : s.members;
  }

  render(): string {
    this.sampleRecovery();
    const s = this.sheep;
    const st: NodeStats = s.stats;
    const g = (name: string, help: string, samples: Sample[]): Family => ({
      name,
      help,
      type: "gauge",
      samples,
    });
    const c = (name: string, help: string, samples: Sample[]): Family => ({
      name,
      help,
      type: "counter",
      samples,
    });
    const one = (value: number | bigint, labels?: Record<string, string>): Sample[] => [
      { value, labels },
    ];
    const counts = (m: Map<string, number>, label: string): Sample[] =>
      [...m].sort(([a], [b]) => a.localeCompare(b)).map(([k, value]) => ({
        labels: { [label]: k },
        value,
      }));

    const rec = s.recovery.status();
    const storeStat = s.opts.gateway ? { size: 0n, free: 0n } : s.store.statfs();
    const objects = s.opts.gateway ? [] : s.store.list();
    const disks = this.disks(objects);
    const status = s.state.status;
    const families: Family[] = [
      g("sheep_info", "Version and address of this sheep.", [{
        labels: { version: VERSION, node: nodeHostPort(s.me) },
        value: 1,
      }]),
      {
        name: "sheep_request_duration_seconds",
        help: "Time to serve a Sheepdog request, by opcode (count = requests served).",
        type: "histogram",
        series: this.ops.series(),
      },
      c(
        "sheep_request_errors_total",
        "Requests answered with a result other than success, by opcode and result.",
        [...this.opErrors].sort(([a], [b]) => a.localeCompare(b)).map(([k, value]) => {
          const [op, result] = k.split("\0");
          return { labels: { op, result }, value };
        }),
      ),
      c("sheep_requests_total", "Object requests (dog node stat), by role and kind.", [
        { labels: { role: "gateway", kind: "read" }, value: st.gwRead },
        { labels: { role: "gateway", kind: "write" }, value: st.gwWrite },
        { labels: { role: "gateway", kind: "remove" }, value: st.gwRemove },
        { labels: { role: "gateway", kind: "flush" }, value: st.gwFlush },
        { labels: { role: "peer", kind: "read" }, value: st.peerRead },
        { labels: { role: "peer", kind: "write" }, value: st.peerWrite },
        { labels: { role: "peer", kind: "remove" }, value: st.peerRemove },
      ]),
      c("sheep_request_bytes_total", "Payload bytes of object requests, by role and direction.", [
        { labels: { role: "gateway", direction: "rx" }, value: st.gwRx },
        { labels: { role: "gateway", direction: "tx" }, value: st.gwTx },
        { labels: { role: "peer", direction: "rx" }, value: st.peerRx },
        { labels: { role: "peer", direction: "tx" }, value: st.peerTx },
      ]),
      g("sheep_requests_in_flight", "Object requests being served now, by role.", [
        { labels: { role: "gateway" }, value: st.gwActive },
        { labels: { role: "peer" }, value: st.peerActive },
      ]),
      {
        name: "sheep_nbd_command_duration_seconds",
        help: "Time to answer an NBD command, by command (count = commands answered).",
        type: "histogram",
        series: this.nbd.series(),
      },
      c(
        "sheep_nbd_command_errors_total",
        "NBD commands answered with an error, by command.",
        counts(this.nbdErrors, "command"),
      ),
      c("sheep_nbd_bytes_total", "Bytes read and written by NBD clients.", [
        { labels: { direction: "read" }, value: this.nbdReadBytes },
        { labels: { direction: "write" }, value: this.nbdWriteBytes },
      ]),
      g("sheep_store_objects", "Objects stored on this sheep.", one(objects.length)),
      g(
        "sheep_store_object_bytes",
        "Bytes held by the objects stored on this sheep.",
        one(s.opts.gateway ? 0n : s.store.objectBytes()),
      ),
      g("sheep_store_free_bytes", "Free space on the store's disks.", one(storeStat.free)),
      g("sheep_store_size_bytes", "Object bytes plus free space.", one(storeStat.size)),
      g(
        "sheep_disk_objects",
        "Objects stored per disk (with several disks, refreshed every 10 s).",
        disks.map((d) => ({ labels: { disk: d.path }, value: d.objects })),
      ),
      g(
        "sheep_disk_used_bytes",
        "Disk blocks held by objects per disk (refreshed every 10 s).",
        disks.map((d) => ({ labels: { disk: d.path }, value: d.used })),
      ),
      g(
        "sheep_disk_free_bytes",
        "Free bytes per disk (refreshed every 10 s).",
        disks.map((d) => ({ labels: { disk: d.path }, value: d.free })),
      ),
      g("sheep_recovery_running", "1 while this sheep recovers objects.", one(+rec.inRecovery)),
      g(
        "sheep_recovery_objects",
        "Objects the current (or last) recovery has to fetch here.",
        one(rec.total),
      ),
      g(
        "sheep_recovery_objects_done",
        "Objects of that recovery fetched so far.",
        one(rec.finished),
      ),
      g(
        "sheep_recovery_objects_remaining",
        "Objects of that recovery still to fetch.",
        one(rec.total - rec.finished),
      ),
      g(
        "sheep_recovery_rate_objects_per_second",
        "Objects recovered per second over the last 5 s.",
        one(this.recoveryRate()),
      ),
      g(
        "sheep_recovery_completed_epoch",
        "Newest epoch every member finished recovering.",
        one(s.recovery.completedEpoch),
      ),
      g("sheep_epoch", "Current epoch.", one(s.state.epoch)),
      g(
        "sheep_cluster_status",
        "Cluster status as this sheep sees it: 1 for the current one.",
        Object.entries(STATUS_NAMES).map(([code, name]) => ({
          labels: { status: name },
          value: +(Number(code) === status),
        })),
      ),
      g(
        "sheep_cluster_formatted",
        "1 once the cluster is formatted.",
        one(+(s.state.ctime !== 0n)),
      ),
      g(
        "sheep_cluster_nodes",
        "Nodes in the cluster (the epoch's when running).",
        one(
          this.clusterNodes().length,
        ),
      ),
      g(
        "sheep_cluster_members",
        "Sheep the membership driver reports alive.",
        one(
          s.members.length,
        ),
      ),
      g("sheep_cluster_copies", "Default number of copies.", one(s.state.copies)),
      g(
        "sheep_vdis",
        "VDIs (including snapshots) known to this sheep.",
        one(
          [...s.vdis.states.values()].filter((v) => !v.deleted).length,
        ),
      ),
      ...this.cacheFamilies(g, c),
    ];
    const j = s.journal?.stats();
    if (j) {
      families.push(
        g(
          "sheep_journal_bytes",
          "Journal (-j) size and bytes held by records not yet checkpointed.",
          [
            { labels: { kind: "size" }, value: j.size },
            { labels: { kind: "used" }, value: j.used },
          ],
        ),
        c("sheep_journal_records_total", "Records written to the journal.", one(j.records)),
        c(
          "sheep_journal_checkpoints_total",
          "Journal checkpoints (space freed).",
          one(j.checkpoints),
        ),
        c(
          "sheep_journal_full_waits_total",
          "Writes that waited for journal space.",
          one(j.fullWaits),
        ),
        g(
          "sheep_journal_failed",
          "1 once a journal I/O error turned the journal off.",
          one(j.failed ? 1 : 0),
        ),
      );
    }
    return render(families);
  }
}
