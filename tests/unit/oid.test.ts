import { expect, test } from "bun:test";
import * as O from "../../core/oid.ts";

test("constants", () => {
  expect(O.VDI_BIT).toBe(0x8000000000000000n);
  expect(O.VMSTATE_BIT).toBe(0x4000000000000000n);
  expect(O.VDI_ATTR_BIT).toBe(0x2000000000000000n);
  expect(O.VDI_BTREE_BIT).toBe(0x1000000000000000n);
  expect(O.LEDGER_BIT).toBe(0x0800000000000000n);
  expect(O.SD_NR_VDIS).toBe(16777216);
  expect(O.MAX_DATA_OBJS).toBe(1048576);
  expect(O.SD_MAX_VDI_SIZE).toBe(1n << 54n);
  expect(O.SD_INODE_SIZE).toBe(O.SD_INODE_GREF_OFFSET + 8 * O.MAX_DATA_OBJS);
  expect(O.SD_INODE_GREF_OFFSET).toBe(O.SD_INODE_DATA_INDEX_OFFSET + 4 * O.MAX_DATA_OBJS);
  expect(O.SD_ATTR_OBJ_SIZE).toBe(784 + 65536);
});

test("oid builders", () => {
  expect(O.vidToVdiOid(0x7c2b25)).toBe(0x807c2b2500000000n);
  expect(O.vidToDataOid(0x7c2b25, 0)).toBe(0x007c2b2500000000n);
  expect(O.vidToDataOid(0x7c2b25, 2)).toBe(0x007c2b2500000002n);
  expect(O.vidToDataOid(0xffffff, 0xfffff)).toBe(0x00ffffff000fffffn);
  expect(O.vidToVmstateOid(1, 3)).toBe(0x4000000100000003n);
  expect(O.vidToAttrOid(0x7c2b25, 0xdeadbeef)).toBe(0x207c2b25deadbeefn);
  expect(O.vidToBtreeOid(5, 7)).toBe(0x1000000500000007n);
  expect(O.ledgerOid(0x007c2b2500000001n)).toBe(0x087c2b2500000001n);
});

test("oid accessors and predicates", () => {
  const data = O.vidToDataOid(0x7c2b25, 9);
  expect(O.oidToVid(data)).toBe(0x7c2b25);
  expect(O.dataOidToIdx(data)).toBe(9);
  expect(O.oidToVid(O.vidToVdiOid(0xabcdef))).toBe(0xabcdef);
  expect(O.oidToVid(O.ledgerOid(data))).toBe(0x7c2b25);
  expect(O.isDataObj(data)).toBe(true);
  expect(O.isVdiObj(data)).toBe(false);
  const kinds: [bigint, (o: bigint) => boolean][] = [
    [O.vidToVdiOid(1), O.isVdiObj],
    [O.vidToVmstateOid(1, 0), O.isVmstateObj],
    [O.vidToAttrOid(1, 0), O.isAttrObj],
    [O.vidToBtreeOid(1, 0), O.isBtreeObj],
    [O.ledgerOid(data), O.isLedgerObj],
  ];
  const preds = kinds.map((k) => k[1]);
  for (const [oid, pred] of kinds) {
    expect(O.isDataObj(oid)).toBe(false);
    for (const p of preds) expect(p(oid)).toBe(p === pred);
  }
});

test("file names", () => {
  expect(O.oidHex(0x807c2b2500000000n)).toBe("807c2b2500000000");
  expect(O.oidHex(1n)).toBe("0000000000000001");
  expect(O.objectFileName(0x807c2b2500000000n)).toBe("807c2b2500000000");
  expect(O.objectFileName(0x007c2b2500000001n, 3)).toBe("007c2b2500000001_3");
  expect(O.parseObjectFileName("807c2b2500000000")).toEqual({ oid: 0x807c2b2500000000n });
  expect(O.parseObjectFileName("007c2b2500000001_3")).toEqual({
    oid: 0x007c2b2500000001n,
    ecIndex: 3,
  });
  expect(O.parseObjectFileName("007c2b2500000001_0")).toEqual({
    oid: 0x007c2b2500000001n,
    ecIndex: 0,
  });
  for (
    const bad of [
      "807c2b2500000000.tmp",
      "007c2b2500000001_3.tmp",
      "807c2b2500000000.5",
      ".stale",
      "0000000000000000",
      "807c2b250000000",
      "807c2b25000000000",
      "807C2B2500000000",
      "007c2b2500000001_",
      "007c2b2500000001_x",
      "007c2b2500000001_999",
      "junk",
      "",
    ]
  ) {
    expect(O.parseObjectFileName(bad)).toBeNull();
  }
});
