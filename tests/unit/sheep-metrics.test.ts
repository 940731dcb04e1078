// sheep/metrics.ts against a stand-in daemon: the hooks feed the histograms, per-disk object
// counts with several disks, the recovery rate from samples on an injected clock, and the
// whole exposition parses.
import { expect, test } from "bun:test";
import { initialState } from "../../core/cluster.ts";
import { Cmd } from "../../core/nbd.ts";
import { emptyNodeStats } from "../../core/node-stat.ts";
import { makeNode } from "../../core/node.ts";
import { Op, Res, Status } from "../../core/proto.ts";
import type { Sheep } from "../../sheep/daemon.ts";
import { SheepMetrics } from "../../sheep/metrics.ts";
import { parseExposition } from "../lib/prom-parse.ts";

function fakeSheep() {
  const rec = { inRecovery: true, state: 1, finished: 0, total: 100 };
  const objects = [1n, 2n, 3n, 4n, 5n];
  let walks = 0;
  const sheep = {
    opts: { gateway: false },
    me: makeNode("127.0.0.1", 7000),
    state: { ...initialState(), status: Status.OK, epoch: 4, ctime: 1n, copies: 3 },
    members: [makeNode("127.0.0.1", 7000), makeNode("127.0.0.1", 7001)],
    vdis: { states: new Map([[1, { deleted: false }], [2, { deleted: true }]]) },
    stats: { ...emptyNodeStats(), gwRead: 7n, gwActive: 2n },
    recovery: { status: () => ({ ...rec }), completedEpoch: 3 },
    store: {
      list: () => objects,
      // odd oids on disk a, even on disk b
      path: (oid: bigint) => (oid % 2n ? "/d/a/" : "/d/b/") + oid.toString(16),
      diskInfo: () => {
        walks++;
        return [{ path: "/d/a", free: 10n, used: 3n }, { path: "/d/b", free: 20n, used: 2n }];
      },
      statfs: () => ({ size: 35n, free: 30n }),
      objectBytes: () => 5n,
    },
  };
  sheep.state.nodes = sheep.members;
  return { sheep, rec, objects, walks: () => walks };
}

test("hooks, store, recovery and cluster figures", () => {
  const f = fakeSheep();
  let now = 0;
  const m = new SheepMetrics(f.sheep as unknown as Sheep, () => now);
  m.onRequest(Op.READ_OBJ, 0.2, Res.SUCCESS);
  m.onRequest(Op.READ_OBJ, 3, Res.NO_OBJ);
  m.onRequest(0xfe, 1, Res.SUCCESS); // no such opcode: still counted, by number
  m.onNbdCommand(Cmd.READ, 0.1, 4096, true);
  m.onNbdCommand(Cmd.WRITE, 0.1, 8192, true);
  m.onNbdCommand(Cmd.WRITE, 0.1, 8192, false);

  const p = parseExposition(m.render());
  const v = (name: string, labels: Record<string, string> = {}, sample = name) =>
    p.get(name)!.samples.find((s) =>
      s.name === sample && Object.entries(labels).every(([k, x]) => s.labels[k] === x)
    )?.value;
  const h = "sheep_request_duration_seconds";
  expect(v(h, { op: "read_obj" }, `${h}_count`)).toBe(2);
  expect(v(h, { op: "read_obj", le: "0.00025" }, `${h}_bucket`)).toBe(1);
  expect(v(h, { op: "read_obj", le: "0.0025" }, `${h}_bucket`)).toBe(1);
  expect(v(h, { op: "read_obj", le: "0.005" }, `${h}_bucket`)).toBe(2);
  expect(v(h, { op: "0xfe" }, `${h}_count`)).toBe(1);
  expect(v("sheep_request_errors_total", { op: "read_obj", result: "no_obj" })).toBe(1);
  const n = "sheep_nbd_command_duration_seconds";
  expect(v(n, { command: "write" }, `${n}_count`)).toBe(2);
  expect(v("sheep_nbd_command_errors_total", { command: "write" })).toBe(1);
  expect(v("sheep_nbd_bytes_total", { direction: "read" })).toBe(4096);
  expect(v("sheep_nbd_bytes_total", { direction: "write" })).toBe(8192); // the failed one not
  expect(v("sheep_requests_total", { role: "gateway", kind: "read" })).toBe(7);
  expect(v("sheep_requests_in_flight", { role: "gateway" })).toBe(2);
  expect(v("sheep_disk_objects", { disk: "/d/a" })).toBe(3);
  expect(v("sheep_disk_objects", { disk: "/d/b" })).toBe(2);
  expect(v("sheep_disk_free_bytes", { disk: "/d/b" })).toBe(20);
  expect(v("sheep_store_objects")).toBe(5);
  expect(v("sheep_store_free_bytes")).toBe(30);
  expect(v("sheep_epoch")).toBe(4);
  expect(v("sheep_cluster_status", { status: "ok" })).toBe(1);
  expect(v("sheep_cluster_nodes")).toBe(2);
  expect(v("sheep_vdis")).toBe(1);
  expect(v("sheep_recovery_completed_epoch")).toBe(3);

  // Recovery: 10 objects a second over the window; remaining follows done.
  for (let t = 1; t <= 4; t++) {
    now = t * 1000;
    f.rec.finished = t * 10;
    m.sampleRecovery();
  }
  expect(m.recoveryRate()).toBeCloseTo(10, 6);
  const q = parseExposition(m.render());
  expect(q.get("sheep_recovery_objects_remaining")!.samples[0].value).toBe(60);
  expect(q.get("sheep_recovery_running")!.samples[0].value).toBe(1);
  // A new recovery (the counts restart) starts a new series instead of a negative slope.
  f.rec.total = 7;
  f.rec.finished = 0;
  now = 5000;
  m.sampleRecovery();
  expect(m.recoveryRate()).toBe(0);
  now = 6000;
  f.rec.finished = 3;
  m.sampleRecovery();
  expect(m.recoveryRate()).toBeCloseTo(3, 6);
  // The directory walk ran once within 10 s however often it was scraped.
  expect(f.walks()).toBe(1);
  now = 20_000;
  m.render();
  expect(f.walks()).toBe(2);
});
