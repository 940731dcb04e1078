import { afterAll, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import { Buffer } from "node:buffer";
import {
  decodeConfig,
  encodeConfig,
  epochFileBytes,
  latestEpoch,
  listEpochs,
  missingEpochs,
  readConfig,
  readEpoch,
  removeEpochs,
  SD_FORMAT_VERSION,
  type SheepConfig,
  writeConfig,
  writeEpoch,
} from "../../io/config-file.ts";
import { makeNode } from "../../core/node.ts";

const roots: string[] = [];
function tmp(): string {
  const d = fs.mkdtempSync(`${os.tmpdir()}/sd-config-`);
  roots.push(d);
  return d;
}
afterAll(() => {
  for (const r of roots) fs.rmSync(r, { recursive: true, force: true });
});

const cfg: SheepConfig = {
  ctime: 0x5f00112233445566n,
  flags: 0x0102,
  copies: 3,
  defaultStore: "tree",
  shutdown: true,
  copyPolicy: 0x22,
  blockSizeShift: 22,
  version: SD_FORMAT_VERSION,
  space: 0x0000001122334455n,
};

test("config encodes to the 40-byte upstream layout", () => {
  const b = encodeConfig(cfg);
  expect(b.length).toBe(40);
  expect(b.readBigUInt64LE(0)).toBe(cfg.ctime);
  expect(b.subarray(0, 8)).toEqual(Buffer.from([0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00, 0x5f]));
  expect(b.readUInt16LE(8)).toBe(0x0102);
  expect(b[10]).toBe(3);
  expect(b.subarray(11, 27)).toEqual(Buffer.concat([Buffer.from("tree"), Buffer.alloc(12)]));
  expect(b[27]).toBe(1);
  expect(b[28]).toBe(0x22);
  expect(b[29]).toBe(22);
  expect(b.subarray(30, 32)).toEqual(Buffer.from([0x06, 0x00]));
  expect(b.readBigUInt64LE(32)).toBe(0x1122334455n);
  expect(decodeConfig(b)).toEqual(cfg);
  expect(decodeConfig(encodeConfig({ ...cfg, shutdown: false, defaultStore: "plain" }))).toEqual({
    ...cfg,
    shutdown: false,
    defaultStore: "plain",
  });
});

test("readConfig/writeConfig round trip atomically", () => {
  const d = tmp();
  expect(readConfig(d)).toBeNull();
  writeConfig(d, cfg);
  expect(fs.statSync(`${d}/config`).size).toBe(40);
  expect(readConfig(d)).toEqual(cfg);
  writeConfig(d, { ...cfg, shutdown: false });
  expect(readConfig(d)!.shutdown).toBe(false);
  expect(fs.readdirSync(d)).toEqual(["config"]);
});

test("epoch files: sorted 80-byte sd_node records + time_t", () => {
  const d = tmp();
  expect(latestEpoch(d)).toBe(0);
  expect(listEpochs(d)).toEqual([]);
  const n1 = makeNode("127.0.0.1", 7001, { zone: 1, space: 1000n });
  const n0 = makeNode("127.0.0.1", 7000, { zone: 0, space: 2000n, nrVnodes: 64 });
  const n2 = makeNode("10.0.0.1", 7000);
  writeEpoch(d, 1, [n1, n0], 1700000000n);
  writeEpoch(d, 2, [n1, n0, n2], 1700000100n);
  const raw: Buffer = fs.readFileSync(`${d}/epoch/00000001`);
  expect(raw.length).toBe(2 * 80 + 8);
  // node order: addr then port -> 7000 first; rb part zeroed
  expect(raw.subarray(0, 24)).toEqual(Buffer.alloc(24));
  expect(raw.subarray(24 + 12, 24 + 16)).toEqual(Buffer.from([127, 0, 0, 1]));
  expect(raw.readUInt16LE(40)).toBe(7000);
  expect(raw.readUInt16LE(64)).toBe(64);
  expect(raw.readUInt32LE(68)).toBe(0);
  expect(raw.readBigUInt64LE(72)).toBe(2000n);
  expect(raw.readUInt16LE(80 + 40)).toBe(7001);
  expect(raw.readUInt32LE(80 + 68)).toBe(1);
  expect(raw.readBigUInt64LE(160)).toBe(1700000000n);
  expect(raw).toEqual(epochFileBytes([n0, n1], 1700000000n));

  const e1 = readEpoch(d, 1)!;
  expect(e1.time).toBe(1700000000n);
  expect(e1.nodes).toEqual([n0, n1]);
  const e2 = readEpoch(d, 2)!;
  expect(e2.nodes.map((n) => n.port)).toEqual([7000, 7000, 7001]); // 10.0.0.1 sorts first
  expect(e2.nodes[0]).toEqual(n2);
  expect(readEpoch(d, 3)).toBeNull();
  expect(listEpochs(d)).toEqual([1, 2]);
  expect(latestEpoch(d)).toBe(2);
  writeEpoch(d, 10, [], 5n);
  expect(fs.readFileSync(`${d}/epoch/00000010`)).toEqual(Buffer.from([5, 0, 0, 0, 0, 0, 0, 0]));
  expect(readEpoch(d, 10)).toEqual({ nodes: [], time: 5n });
  expect(latestEpoch(d)).toBe(10);
  expect(fs.readdirSync(`${d}/epoch`).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  removeEpochs(d);
  expect(listEpochs(d)).toEqual([]);
  expect(latestEpoch(d)).toBe(0);
});

test("malformed epoch file is rejected", () => {
  const d = tmp();
  fs.mkdirSync(`${d}/epoch`);
  fs.writeFileSync(`${d}/epoch/00000001`, Buffer.alloc(81));
  expect(() => readEpoch(d, 1)).toThrow();
});

test("missingEpochs names the epochs a sheep has no log of", () => {
  const d = tmp();
  expect(missingEpochs(d, 3)).toEqual([1, 2, 3]);
  const n = makeNode("127.0.0.1", 7000);
  writeEpoch(d, 1, [n], 1n);
  writeEpoch(d, 4, [n], 4n);
  expect(missingEpochs(d, 5)).toEqual([2, 3, 5]);
  expect(missingEpochs(d, 1)).toEqual([]);
});
