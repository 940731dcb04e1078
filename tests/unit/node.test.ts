import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import {
  decodeNode,
  decodeNodes,
  encodeNode,
  encodeNodes,
  makeNode,
  nodeCompare,
  nodeEqual,
  nodeHostPort,
  nodeIp,
  nodeString,
  sortNodes,
} from "../../core/node.ts";

test("makeNode IPv4 layout and default zone", () => {
  const n = makeNode("10.0.0.1", 7000);
  expect([...n.addr]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
  expect(n.zone).toBe(0x0100000a);
  expect(n.nrVnodes).toBe(128);
  expect(n.space).toBe(0n);
  expect(n.ioPort).toBe(0);
  expect(n.ioAddr.equals(Buffer.alloc(16))).toBe(true);
  const z = makeNode("127.0.0.1", 7001, { zone: 5, nrVnodes: 0, space: 123n });
  expect([z.zone, z.nrVnodes, z.space]).toEqual([5, 0, 123n]);
  expect(makeNode("255.255.255.255", 1).zone).toBe(0xffffffff);
});

test("makeNode IPv6", () => {
  const n = makeNode("fe80::1:2", 7000);
  expect(n.addr.toString("hex")).toBe("fe800000000000000000000000010002");
  expect(nodeIp(n)).toBe("fe80::1:2");
  expect(nodeString(n)).toBe("IPv6 ip:fe80::1:2 port:7000");
  expect(nodeHostPort(n)).toBe("fe80::1:2:7000");
  expect(nodeIp(makeNode("::1", 1))).toBe("::1");
  expect(nodeIp(makeNode("2001:db8:0:0:1:0:0:1", 1))).toBe("2001:db8::1:0:0:1");
  expect(nodeIp(makeNode("1:0:2:0:3:0:4:0", 1))).toBe("1:0:2:0:3:0:4:0");
  expect(nodeIp(makeNode("1::", 1))).toBe("1::");
  expect(nodeIp(makeNode("::ffff:1.2.3.4", 1))).toBe("::ffff:1.2.3.4");
  expect(makeNode("::ffff:1.2.3.4", 1).addr.toString("hex")).toBe(
    "00000000000000000000ffff01020304",
  );
  expect(() => makeNode("nope", 1)).toThrow();
});

test("string forms", () => {
  const n = makeNode("127.0.0.1", 7000);
  expect(nodeIp(n)).toBe("127.0.0.1");
  expect(nodeHostPort(n)).toBe("127.0.0.1:7000");
  expect(nodeString(n)).toBe("IPv4 ip:127.0.0.1 port:7000");
});

test("encode/decode round trip and layout", () => {
  const n = makeNode("192.168.1.20", 7005, {
    zone: 0xdeadbeef,
    nrVnodes: 77,
    space: 0x123456789abcn,
  });
  n.ioAddr = makeNode("10.1.1.1", 1).addr;
  n.ioPort = 7100;
  const b = encodeNode(n);
  expect(b.length).toBe(80);
  expect(b.subarray(0, 24).equals(Buffer.alloc(24))).toBe(true);
  expect(b.subarray(24, 40).equals(n.addr)).toBe(true);
  expect(b.readUInt16LE(40)).toBe(7005);
  expect(b.readUInt16LE(58)).toBe(7100);
  expect(b.readUInt16LE(64)).toBe(77);
  expect(b.readUInt32LE(68)).toBe(0xdeadbeef);
  expect(b.readBigUInt64LE(72)).toBe(0x123456789abcn);
  expect(decodeNode(b)).toEqual(n);

  const ns = [n, makeNode("::1", 7000, { space: 5n }), makeNode("127.0.0.1", 7001)];
  const all = encodeNodes(ns);
  expect(all.length).toBe(240);
  expect(decodeNodes(all)).toEqual(ns);
  expect(decodeNodes(all, 2)).toEqual(ns.slice(0, 2));
  const out = Buffer.alloc(100, 0xee);
  encodeNode(ns[1], out, 10);
  expect(decodeNode(out, 10)).toEqual(ns[1]);
  expect(out[9]).toBe(0xee);
  expect(out[90]).toBe(0xee);
});

test("ordering: memcmp(addr) then port", () => {
  const a = makeNode("127.0.0.1", 7001);
  const b = makeNode("127.0.0.1", 7000);
  const c = makeNode("10.0.0.5", 9000);
  const d = makeNode("::1", 1);
  expect(nodeCompare(b, a)).toBeLessThan(0);
  expect(nodeCompare(c, b)).toBeLessThan(0);
  expect(nodeEqual(a, makeNode("127.0.0.1", 7001, { zone: 9 }))).toBe(true);
  expect(nodeEqual(a, b)).toBe(false);
  const input = [a, b, c, d];
  const s = sortNodes(input);
  expect(s.map(nodeHostPort)).toEqual([
    "::1:1",
    "10.0.0.5:9000",
    "127.0.0.1:7000",
    "127.0.0.1:7001",
  ]);
  expect(input[0]).toBe(a); // not mutated
});
