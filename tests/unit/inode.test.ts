import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import {
  dataVdiIdOffset,
  decodeInodeHeader,
  emptyInodeHeader,
  encodeInodeHeader,
  grefOffset,
  Inode,
  type InodeHeader,
} from "../../core/inode.ts";
import { SD_INODE_GREF_OFFSET, SD_INODE_HEADER_SIZE, SD_INODE_SIZE } from "../../core/oid.ts";

function sample(): InodeHeader {
  return {
    name: "test",
    tag: "snap-a",
    createTime: 0x5f5e100012345678n,
    snapCtime: 0x1122334455667788n,
    vmClockNsec: 0x0102030405060708n,
    vdiSize: 4n << 30n,
    vmStateSize: 12345n,
    copyPolicy: 0x22,
    storePolicy: 1,
    nrCopies: 6,
    blockSizeShift: 22,
    snapId: 7,
    vdiId: 0x7c2b25,
    parentVdiId: 0x7c2b24,
    btreeCounter: 9,
  };
}

test("header field offsets match struct sd_inode", () => {
  const b = encodeInodeHeader(sample());
  expect(b.length).toBe(4664);
  expect(b.subarray(0, 5).toString("latin1")).toBe("test\0");
  expect(b.subarray(256, 263).toString("latin1")).toBe("snap-a\0");
  expect(b.readBigUInt64LE(512)).toBe(0x5f5e100012345678n);
  expect(b.readBigUInt64LE(520)).toBe(0x1122334455667788n);
  expect(b.readBigUInt64LE(528)).toBe(0x0102030405060708n);
  expect(b.readBigUInt64LE(536)).toBe(4n << 30n);
  expect(b.readBigUInt64LE(544)).toBe(12345n);
  expect(b[552]).toBe(0x22);
  expect(b[553]).toBe(1);
  expect(b[554]).toBe(6);
  expect(b[555]).toBe(22);
  expect(b.readUInt32LE(556)).toBe(7);
  expect(b.readUInt32LE(560)).toBe(0x7c2b25);
  expect(b.readUInt32LE(564)).toBe(0x7c2b24);
  expect(b.readUInt32LE(568)).toBe(9);
  expect(b.subarray(572).every((x) => x === 0)).toBe(true);
  expect(decodeInodeHeader(b)).toEqual(sample());
});

test("256-byte name without NUL round-trips", () => {
  const h = { ...sample(), name: "n".repeat(256), tag: "t".repeat(256) };
  const b = encodeInodeHeader(h);
  expect(b[255]).toBe(0x6e);
  expect(b[256]).toBe(0x74);
  const d = decodeInodeHeader(b);
  expect(d.name).toBe("n".repeat(256));
  expect(d.tag).toBe("t".repeat(256));
});

test("full encode places data_vdi_id and gref at their offsets", () => {
  const ino = Inode.create(sample());
  ino.dataVdiId[0] = 0x7c2b25;
  ino.dataVdiId[1048575] = 0xabcdef;
  ino.gref[2 * 3] = 5;
  ino.gref[2 * 3 + 1] = -2;
  const b = ino.encode();
  expect(b.length).toBe(SD_INODE_SIZE);
  expect(SD_INODE_SIZE).toBe(12587576);
  expect(dataVdiIdOffset(0)).toBe(4664);
  expect(grefOffset(0)).toBe(4198968);
  expect(b.readUInt32LE(4664)).toBe(0x7c2b25);
  expect(b.readUInt32LE(4664 + 4 * 1048575)).toBe(0xabcdef);
  expect(b.readInt32LE(SD_INODE_GREF_OFFSET + 8 * 3)).toBe(5);
  expect(b.readInt32LE(SD_INODE_GREF_OFFSET + 8 * 3 + 4)).toBe(-2);
  const d = Inode.decode(b);
  expect(d.header).toEqual(sample());
  expect(d.dataVdiId[0]).toBe(0x7c2b25);
  expect(d.dataVdiId[1048575]).toBe(0xabcdef);
  expect(d.gref[6]).toBe(5);
  expect(d.gref[7]).toBe(-2);
  expect(d.isSnapshot()).toBe(true);
});

test("decode accepts prefixes; missing parts are zero", () => {
  const ino = Inode.create({ ...sample(), snapCtime: 0n });
  ino.dataVdiId[2] = 42;
  ino.gref[4] = 3;
  const full = ino.encode();

  const hdrOnly = Inode.decode(full.subarray(0, SD_INODE_HEADER_SIZE));
  expect(hdrOnly.header.name).toBe("test");
  expect(hdrOnly.dataVdiId[2]).toBe(0);
  expect(hdrOnly.isSnapshot()).toBe(false);

  const qemu = Inode.decode(full.subarray(0, SD_INODE_GREF_OFFSET));
  expect(qemu.dataVdiId[2]).toBe(42);
  expect(qemu.gref[4]).toBe(0);

  // unaligned source buffer
  const shifted = Buffer.alloc(SD_INODE_HEADER_SIZE + 13);
  full.copy(shifted, 1, 0, SD_INODE_HEADER_SIZE + 12);
  const un = Inode.decode(shifted.subarray(1));
  expect(un.dataVdiId[2]).toBe(42);
});

test("encodePrefix stops after the last non-zero slot", () => {
  const ino = Inode.create(sample());
  expect(ino.encodePrefix().length).toBe(4664);
  ino.dataVdiId[0] = 1;
  ino.dataVdiId[9] = 0x7c2b25;
  const p = ino.encodePrefix();
  expect(p.length).toBe(4664 + 40);
  expect(p.readUInt32LE(4664)).toBe(1);
  expect(p.readUInt32LE(4664 + 36)).toBe(0x7c2b25);
  const back = Inode.decode(p);
  expect(back.dataVdiId[9]).toBe(0x7c2b25);
  expect(back.header).toEqual(sample());
});

test("dataRange and grefRange give the bytes for a slice write", () => {
  const ino = Inode.create(emptyInodeHeader());
  ino.dataVdiId[10] = 0x010203;
  ino.dataVdiId[11] = 0x0a0b0c;
  const r = ino.dataRange(10, 12);
  expect([...r]).toEqual([3, 2, 1, 0, 0x0c, 0x0b, 0x0a, 0]);
  expect(ino.dataRange(5, 5).length).toBe(0);
  ino.gref[2 * 10] = 1;
  ino.gref[2 * 10 + 1] = 2;
  expect([...ino.grefRange(10, 11)]).toEqual([1, 0, 0, 0, 2, 0, 0, 0]);
  expect(() => ino.dataRange(3, 2)).toThrow();
  expect(() => ino.dataRange(0, 1048577)).toThrow();
  // returned bytes are a copy
  r[0] = 99;
  expect(ino.dataVdiId[10]).toBe(0x010203);
});
