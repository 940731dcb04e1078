// Object id layout, object file names and data-model constants (protocol.md §9.1, §9.2, §11).

export const VDI_BIT = 1n << 63n;
export const VMSTATE_BIT = 1n << 62n;
export const VDI_ATTR_BIT = 1n << 61n;
export const VDI_BTREE_BIT = 1n << 60n;
export const LEDGER_BIT = 1n << 59n;
export const SD_VDI_MASK = 0x00ffffff00000000n;
export const VDI_SPACE_SHIFT = 32n;
/** Bits 59-63: any of them set means "not a data object". */
const TYPE_BITS = VDI_BIT | VMSTATE_BIT | VDI_ATTR_BIT | VDI_BTREE_BIT | LEDGER_BIT;

export const SD_NR_VDIS = 1 << 24;
export const MAX_DATA_OBJS = 1 << 20;
export const SD_MAX_VDI_SIZE = (1n << 22n) * (1n << 32n);
export const SD_INODE_SIZE = 12587576;
export const SD_INODE_HEADER_SIZE = 4664;
export const SD_INODE_DATA_INDEX_OFFSET = 4664;
export const SD_INODE_GREF_OFFSET = 4198968;
export const SD_ATTR_OBJ_SIZE = 66320;
export const SD_DEFAULT_BLOCK_SIZE_SHIFT = 22;
export const SD_DEFAULT_COPIES = 3;
export const SD_MAX_COPIES = 31;
export const SD_DEFAULT_VNODES = 128;
export const SD_MAX_NODES = 6144;

function vidBits(vid: number): bigint {
  return BigInt((vid & 0xffffff) >>> 0) << 32n;
}

function low32(n: number): bigint {
  return BigInt(n >>> 0);
}

export function vidToVdiOid(vid: number): bigint {
  return VDI_BIT | vidBits(vid);
}

export function vidToDataOid(vid: number, idx: number): bigint {
  return vidBits(vid) | low32(idx);
}

export function vidToVmstateOid(vid: number, idx: number): bigint {
  return VMSTATE_BIT | vidBits(vid) | low32(idx);
}

/** Attribute objects: vid part is sd_hash_vdi(name), not the VDI's real vid. */
export function vidToAttrOid(vid: number, attrId: number): bigint {
  return VDI_ATTR_BIT | vidBits(vid) | low32(attrId);
}

export function vidToBtreeOid(vid: number, n: number): bigint {
  return VDI_BTREE_BIT | vidBits(vid) | low32(n);
}

export function ledgerOid(oid: bigint): bigint {
  return oid | LEDGER_BIT;
}

export function oidToVid(oid: bigint): number {
  return Number((oid & SD_VDI_MASK) >> 32n);
}

export function dataOidToIdx(oid: bigint): number {
  return Number(oid & 0xffffffffn);
}

export function isDataObj(oid: bigint): boolean {
  return (oid & TYPE_BITS) === 0n;
}

export function isVdiObj(oid: bigint): boolean {
  return (oid & VDI_BIT) !== 0n;
}

export function isVmstateObj(oid: bigint): boolean {
  return (oid & VMSTATE_BIT) !== 0n;
}

export function isAttrObj(oid: bigint): boolean {
  return (oid & VDI_ATTR_BIT) !== 0n;
}

export function isBtreeObj(oid: bigint): boolean {
  return (oid & VDI_BTREE_BIT) !== 0n;
}

export function isLedgerObj(oid: bigint): boolean {
  return (oid & LEDGER_BIT) !== 0n;
}

/** %016x */
export function oidHex(oid: bigint): string {
  return BigInt.asUintN(64, oid).toString(16).padStart(16, "0");
}

/** "%016x" for replicated objects, "%016x_%d" for EC strips. */
export function objectFileName(oid: bigint, ecIndex?: number): string {
  return ecIndex === undefined ? oidHex(oid) : `${oidHex(oid)}_${ecIndex}`;
}

const NAME_RE = /^([0-9a-f]{16})(?:_([0-9]{1,3}))?$/;

/**
 * Parse an object directory entry. Rejects temp files (".tmp"), stale names (".N"),
 * dot files, oid 0 and anything else that is not exactly our own naming.
 */
export function parseObjectFileName(name: string): { oid: bigint; ecIndex?: number } | null {
  const m = NAME_RE.exec(name);
  if (!m) return null;
  const oid = BigInt("0x" + m[1]);
  // upstream skips oid 0 and ULLONG_MAX (strtoull failure values)
  if (oid === 0n || oid === 0xffffffffffffffffn) return null;
  if (m[2] === undefined) return { oid };
  const ecIndex = Number(m[2]);
  if (ecIndex > 255) return null;
  return { oid, ecIndex };
}
