// dog output formatting and argument parsing (dog-cli.md §1, §4.6, §5.1, §6.1).
import { decodeEpochLogs, type EpochLog } from "../../core/payloads.ts";
import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";

process.env.TZ = "UTC";

import {
  banner,
  cFixed,
  clusterInfoText,
  countSlots,
  ctimeString,
  NODE_LIST_HEADER,
  nodeInfoRow,
  nodeInfoTotal,
  nodeListRow,
  parseCopies,
  parseSize,
  rawEscape,
  redundancyScheme,
  strnumber,
  VDI_LIST_HEADER,
  vdiListRow,
  type VdiRowInfo,
} from "../../cli/format.ts";
import {
  COMMANDS,
  findCommand,
  findSub,
  invalidSubcommand,
  mainUsage,
  parseSubArgs,
  subcommandUsage,
} from "../../cli/options.ts";
import { encodeNodes, makeNode } from "../../core/node.ts";
import { renderVdiTree } from "../../cli/vdi-view.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

test("strnumber examples of §1.4", () => {
  expect(strnumber(0)).toBe("0.0 MB");
  expect(strnumber(524288)).toBe("0.5 MB");
  expect(strnumber(4 * MiB)).toBe("4.0 MB");
  expect(strnumber(12 * MiB)).toBe("12 MB");
  expect(strnumber(864 * MiB)).toBe("864 MB");
  expect(strnumber(GiB)).toBe("1.0 GB");
  expect(strnumber(5 * GiB)).toBe("5.0 GB");
  expect(strnumber(10 * GiB)).toBe("10 GB");
  expect(strnumber(1073217536)).toBe("1024 MB");
  expect(strnumber(4194304, true)).toBe("4194304");
  expect(strnumber(1n << 54n)).toBe("16 PB");
  expect(strnumber(0xffffffffffffffffn, true)).toBe("18446744073709551615");
});

test("strnumber rounds exact ties to even like glibc printf", () => {
  expect(strnumber(12.5 * MiB)).toBe("12 MB");
  expect(strnumber(13.5 * MiB)).toBe("14 MB");
  expect(strnumber(0.25 * MiB)).toBe("0.2 MB");
  expect(strnumber(0.75 * MiB)).toBe("0.8 MB");
  expect(cFixed(2.5, 0)).toBe("2");
  expect(cFixed(0.125, 2)).toBe("0.12");
  expect(cFixed(1.005, 2)).toBe("1.00"); // 1.005 is really 1.00499999...
  expect(cFixed(12.345, 3)).toBe("12.345");
});

test("size parsing §1.5", () => {
  expect(parseSize("1G")).toBe(1073741824n);
  expect(parseSize("10M")).toBe(10n * 1048576n);
  expect(parseSize("1.5K")).toBe(1536n);
  expect(parseSize("100")).toBe(100n);
  expect(parseSize("4b")).toBe(4n);
  expect(parseSize("2t")).toBe(2n * 1024n ** 4n);
  expect(parseSize("16P")).toBe(1n << 54n);
  expect(parseSize("0.5m")).toBe(524288n);
  expect(parseSize("12MB")).toBeNull();
  expect(parseSize("abc")).toBeNull();
  expect(parseSize("1x")).toBeNull();
  // upstream reads "" as 0 and "-5G" as a huge size; neither is a size
  expect(parseSize("")).toBeNull();
  expect(parseSize("G")).toBeNull();
  expect(parseSize("-5G")).toBeNull();
  expect(parseSize("-1")).toBeNull();
  expect(parseSize("nan")).toBeNull();
  expect(parseSize("0")).toBe(0n);
});

test("redundancy parsing §1.6", () => {
  expect(parseCopies("3")).toEqual({ copies: 3, policy: 0 });
  expect(parseCopies("31")).toEqual({ copies: 31, policy: 0 });
  expect(parseCopies("2:1")).toEqual({ copies: 3, policy: 0x11 });
  expect(parseCopies("4:2")).toEqual({ copies: 6, policy: 0x22 });
  expect(parseCopies("16:15")).toEqual({ copies: 31, policy: 0x8f });
  for (const bad of ["0", "32", "3:2", "4:0", "4:16", "a", "2:x", "-1", ""]) {
    expect(parseCopies(bad)).toBeNull();
  }
  expect(redundancyScheme(6, 0x22)).toBe("4:2");
  expect(redundancyScheme(3, 0)).toBe("3");
});

test("option parsing: GNU style, options after positionals", () => {
  const vdi = findCommand("vdi")!;
  const create = findSub(vdi, "create")!;
  const r = parseSubArgs(vdi, create, ["test", "-c", "2", "1G", "-P", "--port=7001", "-z22"]);
  expect(r.ok).toBe(true);
  if (!r.ok) return;
  expect(r.positionals).toEqual(["test", "1G"]);
  expect(r.opts).toEqual([
    { ch: "c", value: "2" },
    { ch: "P", value: true },
    { ch: "p", value: "7001" },
    { ch: "z", value: "22" },
  ]);
  const bad = parseSubArgs(vdi, create, ["test", "1G", "-s", "snap"]);
  expect(bad).toEqual({ ok: false, message: "dog: invalid option -- 's'" });
  const missing = parseSubArgs(vdi, create, ["test", "-c"]);
  expect(missing).toEqual({ ok: false, message: "dog: option requires an argument -- 'c'" });
  const long = parseSubArgs(vdi, create, ["--bogus"]);
  expect(long).toEqual({ ok: false, message: "dog: unrecognized option '--bogus'" });
  const read = findSub(vdi, "read")!;
  const r2 = parseSubArgs(vdi, read, ["-s", "1", "v", "--", "-5"]);
  expect(r2.ok && r2.positionals).toEqual(["v", "-5"]);
});

test("subcommand usage text §1", () => {
  const vdi = findCommand("vdi")!;
  const text = subcommandUsage(vdi, findSub(vdi, "create")!);
  const lines = text.split("\n");
  expect(lines[0]).toBe(
    "Usage: dog vdi create [-P] [-y] [-c copies] [-a address] [-p port] [-h] [-r] [-v] [-z block_size_shift] [-T] <vdiname> <size>",
  );
  expect(lines[1]).toBe("Options:");
  expect(lines[2]).toBe("  -P, --prealloc          preallocate all the data objects");
  expect(lines).toContain(
    "  -z, --block_size_shift  specify the bit shift num for data object size",
  );
  const obj = subcommandUsage(vdi, findSub(vdi, "object")!);
  expect(obj.split("\n").slice(0, 5)).toEqual([
    "Usage: dog vdi object {location|map|dump-inode} [-i index] [-s snapshot] [-a address] [-p port] [-h] [-T] <vdiname>",
    "Available subcommands:",
    "  location                show object location information",
    "  map                     show object map information",
    "  dump-inode              dump inode information",
  ]);
  const main = mainUsage("1.2.3").split("\n");
  expect(main[0]).toBe("Sheepdog administrator utility (version 1.2.3)");
  expect(main[1]).toBe("Usage: dog <command> <subcommand> [options]");
  expect(main[2]).toBe("");
  expect(main[3]).toBe("Available commands:");
  expect(main).toContain("  vdi create              create an image");
  expect(main).toContain("  cluster info            show cluster information");
  expect(main[main.length - 2]).toBe(
    "For more information, run 'dog <command> <subcommand> --help'.",
  );
  expect(invalidSubcommand(findCommand("node")!, "bogus").split("\n").slice(0, 3)).toEqual([
    "Invalid command 'node bogus'",
    "Available node commands:",
    "  node kill",
  ]);
  // every subcommand has a handler-able, well-formed option string
  for (const c of COMMANDS) {
    for (const s of c.subs) expect(() => subcommandUsage(c, s)).not.toThrow();
  }
});

function info(over: Partial<VdiRowInfo>): VdiRowInfo {
  return {
    name: "test",
    tag: "",
    createTime: BigInt(Date.UTC(2016, 5, 30, 14, 17, 2) / 1000) << 32n,
    snapCtime: 0n,
    vdiSize: 12n * BigInt(MiB),
    nrCopies: 6,
    copyPolicy: 0,
    blockSizeShift: 22,
    snapId: 1,
    vdiId: 0x7c2b25,
    parentVdiId: 0,
    ...over,
  };
}

test("vdi list rows §4.6", () => {
  expect(VDI_LIST_HEADER).toBe(
    "  Name        Id    Size    Used  Shared    Creation time   VDI id  Copies  Tag   Block Size Shift\n",
  );
  const snap = info({ snapCtime: 1n, tag: "snap1" });
  expect(vdiListRow(snap, 1, 0, false)).toBe(
    "s test         1   12 MB  4.0 MB  0.0 MB 2016-06-30 14:17   7c2b25      6         snap1  22\n",
  );
  const work = info({ snapId: 3, vdiId: 0x7c2b27, parentVdiId: 0x7c2b26 });
  expect(vdiListRow(work, 0, 2, false)).toBe(
    "  test         0   12 MB  0.0 MB  8.0 MB 2016-06-30 14:17   7c2b27      6                22\n",
  );
  const clone = info({
    name: "disk2",
    vdiSize: 10n * BigInt(GiB),
    nrCopies: 6,
    copyPolicy: 0x22,
    parentVdiId: 0x1234,
    vdiId: 0xa1b2c3,
  });
  expect(vdiListRow(clone, 0, 1, false)).toBe(
    "c disk2        0   10 GB  0.0 MB  4.0 MB 2016-06-30 14:17   a1b2c3    4:2                22\n",
  );
  const raw = info({ vdiSize: BigInt(GiB), nrCopies: 3 });
  expect(vdiListRow(raw, 1, 0, true)).toBe(
    "= test 0 1073741824 4194304 0 1467296222 7c2b25 3  22\n",
  );
  expect(vdiListRow(info({ name: "a b\\c" }), 0, 0, true).startsWith("= a\\ b\\\\c 0 ")).toBe(true);
  expect(rawEscape("x\ty")).toBe("x\\\ty");
  expect(countSlots(Uint32Array.from([0, 5, 7, 5, 0]), 5)).toEqual({ my: 2, cow: 1 });
});

test("node list and node info rows §5", () => {
  expect(NODE_LIST_HEADER).toBe("  Id   Host:Port         V-Nodes       Zone\n");
  const n = makeNode("127.0.0.1", 7000, { zone: 0, nrVnodes: 128 });
  expect(nodeListRow(0, n, false)).toBe("   0   127.0.0.1:7000      \t128          0\n");
  expect(nodeListRow(0, n, true)).toBe("0 127.0.0.1:7000 128 0\n");
  const v6 = makeNode("::1", 7001, { zone: 1, nrVnodes: 64 });
  expect(nodeListRow(1, v6, true)).toBe("1 ::1:7001 64 1\n");
  const size = 39n * BigInt(GiB), free = 38n * BigInt(GiB);
  expect(nodeInfoRow(0, size, free, false)).toBe(" 0\t39 GB\t1.0 GB\t38 GB\t  2%\n");
  expect(nodeInfoRow(0, 0n, 0n, false)).toBe(" 0\t0.0 MB\t0.0 MB\t0.0 MB\t  0%\n");
  expect(nodeInfoRow(3, size, free, true)).toBe(`3 ${size} ${size - free} ${free} 2%\n`);
  expect(nodeInfoTotal(2n * size, 2n * free, 20n * BigInt(GiB), false)).toBe(
    "Total\t78 GB\t2.0 GB\t76 GB\t  2%\n\nTotal virtual image size\t20 GB\n",
  );
});

function epochLog(
  epoch: number,
  time: Date,
  ports: number[],
  over: Partial<EpochLog> = {},
): EpochLog {
  return {
    ctime: BigInt(Date.UTC(2016, 5, 30, 14, 17, 22) / 1000) << 32n,
    time: BigInt(time.getTime() / 1000),
    epoch,
    nrNodes: ports.length,
    disableRecovery: 0,
    nrCopies: 3,
    copyPolicy: 0,
    flags: 0x4,
    drvName: "plain",
    nodes: ports.map((p, i) => makeNode("127.0.0.1", p, { zone: i, nrVnodes: 128 })),
    ...over,
  };
}

test("cluster info table §6.1", () => {
  const logs = [
    epochLog(2, new Date(Date.UTC(2016, 5, 30, 14, 20, 1)), [7000, 7001, 7002]),
    epochLog(1, new Date(Date.UTC(2016, 5, 30, 14, 17, 22)), [7000, 7001]),
  ];
  expect(ctimeString(1467296242)).toBe("Thu Jun 30 14:17:22 2016");
  expect(ctimeString(Date.UTC(2016, 5, 3, 1, 2, 3) / 1000)).toBe("Fri Jun  3 01:02:03 2016");
  const base = { result: 0, logs, hasData: true, verbose: false, raw: false, diff: false };
  expect(clusterInfoText(base)).toBe(
    "Cluster status: running, auto-recovery enabled\n\n" +
      "Cluster created at Thu Jun 30 14:17:22 2016\n\n" +
      "Epoch Time           Version [Host:Port:V-Nodes,,,]\n" +
      "2016-06-30 14:20:01      2 [127.0.0.1:7000:128, 127.0.0.1:7001:128, 127.0.0.1:7002:128]\n" +
      "2016-06-30 14:17:22      1 [127.0.0.1:7000:128, 127.0.0.1:7001:128]\n",
  );
  expect(clusterInfoText({ ...base, diff: true }).split("\n").slice(5, 7)).toEqual([
    "2016-06-30 14:20:01      2 [+127.0.0.1:7002]",
    "2016-06-30 14:17:22      1 [formated]",
  ]);
  expect(clusterInfoText({ ...base, verbose: true }).split("\n").slice(0, 5)).toEqual([
    "Cluster status: running, auto-recovery enabled",
    "Cluster store: plain with 3 redundancy policy",
    "Cluster vnodes strategy: auto",
    "Cluster vnode mode: node",
    "Cluster created at Thu Jun 30 14:17:22 2016",
  ]);
  expect(clusterInfoText({ ...base, raw: true })).toBe(
    "running, auto-recovery enabled\n\n" +
      "1467296401 2 [127.0.0.1:7000:128, 127.0.0.1:7001:128, 127.0.0.1:7002:128]\n" +
      "1467296242 1 [127.0.0.1:7000:128, 127.0.0.1:7001:128]\n",
  );
  expect(
    clusterInfoText({
      result: 0x16,
      logs: [],
      hasData: false,
      verbose: false,
      raw: false,
      diff: false,
    }),
  ).toBe(
    "Cluster status: Waiting for cluster to be formatted\n\n",
  );
});

test("STAT_CLUSTER records decode", () => {
  const nodesNr = 3;
  const rec = Buffer.alloc(48 + nodesNr * 80);
  rec.writeBigUInt64LE(5n << 32n, 0);
  rec.writeBigUInt64LE(1467296401n, 8);
  rec.writeUInt32LE(2, 16);
  rec.writeUInt32LE(2, 20);
  rec[25] = 3;
  rec.writeUInt16LE(0x4, 30);
  rec.write("plain", 32);
  encodeNodes([makeNode("127.0.0.1", 7000), makeNode("127.0.0.1", 7001)]).copy(rec, 48);
  const logs = decodeEpochLogs(Buffer.concat([rec, rec]), nodesNr);
  expect(logs.length).toBe(2);
  expect(logs[0].epoch).toBe(2);
  expect(logs[0].nodes.map((n) => n.port)).toEqual([7000, 7001]);
  expect(logs[0].drvName).toBe("plain");
  expect(logs[0].nrCopies).toBe(3);
});

test("vdi tree rendering §4.7", () => {
  const t = renderVdiTree([
    { name: "test", label: "[2016-06-30 14:17]", vid: 1, pvid: 0, highlight: false },
    { name: "test", label: "[2016-06-30 14:18]", vid: 2, pvid: 1, highlight: false },
    { name: "test", label: "(you are here)", vid: 3, pvid: 2, highlight: false },
    { name: "test2", label: "[2016-06-30 14:19]", vid: 10, pvid: 0, highlight: false },
    { name: "test2", label: "[2016-06-30 14:19]", vid: 11, pvid: 10, highlight: false },
    { name: "test2", label: "[2016-06-30 14:20]", vid: 12, pvid: 10, highlight: false },
    { name: "test2", label: "(you are here)", vid: 13, pvid: 12, highlight: false },
  ]);
  expect(t).toBe(
    "test---[2016-06-30 14:17]---[2016-06-30 14:18]---(you are here)\n" +
      "test2---[2016-06-30 14:19]-+-[2016-06-30 14:19]\n" +
      "                           `-[2016-06-30 14:20]---(you are here)\n",
  );
});

test("vdi tree: a clone hangs under the snapshot it was cloned from, labelled with its name", () => {
  const t = renderVdiTree([
    { name: "base", label: "[2016-06-30 14:17]", vid: 1, pvid: 0, highlight: false },
    { name: "base", label: "(you are here)", vid: 2, pvid: 1, highlight: false },
    { name: "c1", label: "[2016-06-30 14:18]", vid: 3, pvid: 1, highlight: false },
    { name: "c1", label: "(you are here)", vid: 4, pvid: 3, highlight: false },
    { name: "c2", label: "(you are here)", vid: 5, pvid: 3, highlight: false },
    // a clone whose snapshot was deleted is a root of its own
    { name: "orphan", label: "(you are here)", vid: 9, pvid: 7, highlight: false },
  ]);
  expect(t).toBe(
    "base---[2016-06-30 14:17]-+-(you are here)\n" +
      "                          `-c1: [2016-06-30 14:18]-+-(you are here)\n" +
      "                                                   `-c2: (you are here)\n" +
      "orphan---(you are here)\n",
  );
});

test("confirmation banner §8.1", () => {
  expect(banner("Caution! The cluster is not empty.")).toBe(
    "    __\n   ()'`;\n   /\\|`\n  /  |   Caution! The cluster is not empty.\n(/_)_|_  Are you sure you want to continue? [yes/no]: ",
  );
});
