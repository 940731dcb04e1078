import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import {
  fnv1a,
  fnv64,
  FNV_OFFSET,
  FNV_PRIME,
  sdHash,
  sdHashNext,
  sdHashOid,
  sdHashVdi,
} from "../../core/hash.ts";

const M64 = (1n << 64n) - 1n;

function refFnv1a(buf: Uint8Array, h = FNV_OFFSET): bigint {
  for (const b of buf) {
    h ^= BigInt(b);
    h = (h * FNV_PRIME) & M64;
  }
  return h;
}

function le64(v: bigint): Uint8Array {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v & M64);
  return b;
}

function refFnv64(v: bigint, h: bigint): bigint {
  return refFnv1a(le64(v), h);
}

function refSdHash(buf: Uint8Array): bigint {
  const h = refFnv1a(buf);
  return refFnv64(h, h);
}

function rand64(): bigint {
  return (BigInt((Math.random() * 2 ** 32) >>> 0) << 32n) | BigInt((Math.random() * 2 ** 32) >>> 0);
}

test("fnv1a / sd_hash_vdi known answers", () => {
  expect(fnv1a(Buffer.from("test"))).toBe(0xf9e6e6ef197c2b25n);
  expect(sdHashVdi("test")).toBe(0x7c2b25);
  expect(sdHashVdi(Buffer.from("test"))).toBe(0x7c2b25);
  expect(sdHashVdi("test1")).toBe(0xfd32fc);
  expect(sdHashVdi("test2")).toBe(0xfd3815);
  expect(fnv1a(new Uint8Array(0))).toBe(FNV_OFFSET);
});

test("sd_hash_oid known answers", () => {
  expect(sdHashOid(0x807c2b2500000000n)).toBe(0x8b4b18c243befa1an);
  expect(sdHashOid(0x007c2b2500000000n)).toBe(0x387358f0fb5c1275n);
  expect(sdHashOid(0x807c2b2500000000n)).toBe(sdHash(le64(0x807c2b2500000000n)));
});

test("sd_hash of nid 127.0.0.1:7000 and its first vnodes", () => {
  const id = Buffer.alloc(18);
  id[12] = 127;
  id[15] = 1;
  id.writeUInt16LE(7000, 16);
  const h = sdHash(id);
  expect(h).toBe(0x9cb3d6dd0a4c0f9fn);
  const v1 = sdHashNext(h);
  const v2 = sdHashNext(v1);
  const v3 = sdHashNext(v2);
  expect([v1, v2, v3]).toEqual([0x3af2cba6e538cdf3n, 0xfd38432fd111924bn, 0x2ad2bef8f506e35dn]);
});

test("fast implementation matches BigInt reference on random inputs", () => {
  for (let i = 0; i < 2000; i++) {
    const len = Math.floor(Math.random() * 40);
    const buf = new Uint8Array(len);
    for (let j = 0; j < len; j++) buf[j] = Math.floor(Math.random() * 256);
    const seed = i % 2 ? rand64() : FNV_OFFSET;
    expect(fnv1a(buf, seed)).toBe(refFnv1a(buf, seed));
    expect(sdHash(buf)).toBe(refSdHash(buf));
    const v = rand64(), h = rand64();
    expect(fnv64(v, h)).toBe(refFnv64(v, h));
    expect(sdHashOid(v)).toBe(refSdHash(le64(v)));
    expect(sdHashNext(h)).toBe(refFnv64(h, h));
    expect(sdHashVdi(buf)).toBe(Number(refFnv1a(buf) & 0xffffffn));
  }
  // extremes
  for (const v of [0n, M64, 1n << 63n, 0xffffffffn, 0x100000000n]) {
    expect(fnv64(v, v)).toBe(refFnv64(v, v));
    expect(sdHashOid(v)).toBe(refSdHash(le64(v)));
  }
  const ff = new Uint8Array(64).fill(0xff);
  expect(fnv1a(ff, M64)).toBe(refFnv1a(ff, M64));
});

test("sdHashVdi hashes UTF-8 bytes", () => {
  expect(sdHashVdi("vdi-ü")).toBe(Number(refFnv1a(Buffer.from("vdi-ü", "utf8")) & 0xffffffn));
});
