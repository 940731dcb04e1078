// The fixed-layout payload codecs: what one side encodes the other decodes, at upstream's offsets
// (protocol.md §13), and short replies read as zeros instead of throwing.
import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { type SdNode } from "../../core/node.ts";
import {
  CLUSTER_INFO_SIZE,
  decodeClusterInfo,
  decodeEpochLogs,
  decodeMdInfo,
  decodeRecoveryState,
  decodeVdiStates,
  encodeClusterInfo,
  encodeEpochLog,
  encodeMdInfo,
  encodeRecoveryState,
  encodeVdiStates,
  epochLogRecordSize,
  LockState,
  MD_INFO_SIZE,
  VDI_STATE_SIZE,
} from "../../core/payloads.ts";
import { decodeNodeStats, emptyNodeStats, encodeNodeStats } from "../../core/node-stat.ts";

function node(port: number, zone = port): SdNode {
  const addr = Buffer.alloc(16);
  addr[10] = 0xff;
  addr[11] = 0xff;
  addr.set([127, 0, 0, 1], 12);
  return {
    addr,
    port,
    ioAddr: Buffer.alloc(16),
    ioPort: 0,
    nrVnodes: 128,
    zone,
    space: 1n << 30n,
  };
}

test("vdi_state: 1428-byte records, lock owner and participants as node ids", () => {
  const recs = [
    {
      vid: 0x7c2b25,
      nrCopies: 3,
      snapshot: false,
      deleted: false,
      copyPolicy: 0,
      blockSizeShift: 22,
      parentVid: 0x7c2b24,
      lockState: LockState.LOCKED,
      lockOwner: node(7001),
      participants: [],
    },
    {
      vid: 5,
      nrCopies: 6,
      snapshot: true,
      deleted: true,
      copyPolicy: 0x22,
      blockSizeShift: 23,
      parentVid: 0,
      lockState: LockState.SHARED,
      lockOwner: node(7002),
      participants: [{ state: 2, node: node(7003) }],
    },
  ];
  const b = encodeVdiStates(recs);
  expect(b.length).toBe(2 * VDI_STATE_SIZE);
  expect(b.readUInt32LE(0)).toBe(0x7c2b25);
  expect(b.readUInt32LE(16)).toBe(LockState.LOCKED);
  expect(b.readUInt16LE(20 + 16)).toBe(7001); // node_id.port
  const d = decodeVdiStates(b);
  expect(d.map((r) => [r.vid, r.nrCopies, r.snapshot, r.deleted, r.copyPolicy, r.parentVid]))
    .toEqual([[0x7c2b25, 3, false, false, 0, 0x7c2b24], [5, 6, true, true, 0x22, 0]]);
  expect(d[0].lockOwner!.port).toBe(7001);
  expect(d[1].participants.map((p) => [p.state, p.node.port])).toEqual([[2, 7003]]);
  // an unlocked VDI has no owner
  expect(decodeVdiStates(encodeVdiStates([{ ...recs[0], lockState: 1 }]))[0].lockOwner).toBeNull();
  // a trailing partial record is ignored
  expect(decodeVdiStates(b.subarray(0, VDI_STATE_SIZE + 10)).length).toBe(1);
});

test("md info: disks, count at 263680, short reply = no disks", () => {
  const disks = [
    { idx: 0, free: 100n, used: 50n, path: "/var/lib/sheepdog/obj" },
    { idx: 1, free: 7n << 40n, used: 1n, path: "/mnt/disk2" },
  ];
  const b = encodeMdInfo(disks);
  expect(b.length).toBe(MD_INFO_SIZE);
  expect(b.readInt32LE(263680)).toBe(2);
  expect(b.readBigUInt64LE(4120 + 8)).toBe(7n << 40n);
  expect(decodeMdInfo(b)).toEqual(disks);
  expect(decodeMdInfo(Buffer.alloc(10))).toEqual([]);
});

test("epoch logs: records of 48 + nodes_nr * 80 bytes", () => {
  const log = {
    ctime: 1467263842n << 32n,
    time: 1467263900n,
    epoch: 7,
    nrNodes: 2,
    disableRecovery: 0,
    nrCopies: 3,
    copyPolicy: 0,
    flags: 0x0004,
    drvName: "plain",
    nodes: [node(7000), node(7001)],
  };
  const rec = encodeEpochLog(log, 4);
  expect(rec.length).toBe(epochLogRecordSize(4));
  expect(rec.readUInt32LE(16)).toBe(7);
  const two = Buffer.concat([
    rec,
    encodeEpochLog({ ...log, epoch: 6, nodes: [node(7000)], nrNodes: 1 }, 4),
  ]);
  const d = decodeEpochLogs(two, 4);
  expect(d.map((l) => [l.epoch, l.nrNodes, l.nodes.map((n) => n.port), l.drvName])).toEqual([
    [7, 2, [7000, 7001], "plain"],
    [6, 1, [7000], "plain"],
  ]);
});

test("cluster info: upstream offsets (copies 18, policy 19, status 20, shift 21, store 25)", () => {
  const ci = {
    protoVer: 0x09,
    disableRecovery: false,
    epoch: 12,
    ctime: 99n,
    flags: 0x10,
    copies: 3,
    copyPolicy: 0x22,
    status: 1,
    blockSizeShift: 22,
    store: "tree",
    nodes: [node(7000), node(7001), node(7002)],
  };
  const b = encodeClusterInfo(ci);
  expect(b.length).toBe(CLUSTER_INFO_SIZE);
  expect([b[18], b[19], b[20], b[21]]).toEqual([3, 0x22, 1, 22]);
  expect(b.subarray(25, 29).toString()).toBe("tree");
  const d = decodeClusterInfo(b);
  expect({ ...d, nodes: d.nodes.map((n) => n.port) }).toEqual({ ...ci, nodes: [7000, 7001, 7002] });
  // a reply cut to the header still decodes (dog asks for the header only sometimes)
  const short = decodeClusterInfo(b.subarray(0, 48));
  expect([short.epoch, short.blockSizeShift, short.nodes.length]).toEqual([12, 22, 0]);
  expect(decodeClusterInfo(Buffer.alloc(0)).ctime).toBe(0n);
});

test("recovery state and node stats round-trip", () => {
  const st = { inRecovery: true, state: 2, nrFinished: 10n, nrTotal: 30n };
  expect(decodeRecoveryState(encodeRecoveryState(st))).toEqual(st);
  expect(decodeRecoveryState(Buffer.alloc(3)).nrTotal).toBe(0n);
  const s = emptyNodeStats();
  s.gwWrite = 5n;
  s.peerRx = 1n << 40n;
  const e = encodeNodeStats(s);
  expect(e.length).toBe(120);
  expect(e.readBigUInt64LE(10 * 8)).toBe(5n); // gway_total_write_nr
  expect(decodeNodeStats(e)).toEqual(s);
});
