// VDI lookup by name, tag or snapshot id (protocol.md §9.5): the family run of the name's hash,
// or with RECYCLE_VID the whole VID space (VIDs are handed out lowest first there).
import { Res } from "./proto.ts";
import { SdError } from "./errors.ts";
import { sdHashVdi } from "./hash.ts";
import { SD_INODE_HEADER_SIZE, SD_NR_VDIS, vidToVdiOid } from "./oid.ts";
import { decodeInodeHeader, type InodeHeader } from "./inode.ts";
import type { MetaIO, VdiTable } from "./vdi.ts";

// Lookup (§9.5 family run)

/** sd_hash_vdi with the "0 is never a VID" adjustment used for bitmap ranges. */
export function vdiHashStart(name: string): number {
  return sdHashVdi(name) || 1;
}

export interface LookupInfo {
  /** SUCCESS, NO_VDI, NO_TAG or FULL_VDI. */
  result: number;
  /** Matched VID; on NO_VDI after a deleted working VDI: its latest snapshot; NO_TAG: the working VDI. */
  vid: number;
  /** snap_id + 1 of the newest family member seen (0 if none) — for current-VDI lookups. */
  snapIdNext: number;
  /** VID the next member of this family gets. */
  freeBit: number;
  header?: InodeHeader;
}

function hasTag(opts: { tag?: string; snapid?: number }): boolean {
  return !!(opts.tag && opts.tag.length) || !!opts.snapid;
}

function tagMatch(opts: { tag?: string; snapid?: number }, h: InodeHeader): boolean {
  if (h.tag !== "" && h.tag === (opts.tag ?? "")) return true;
  return (opts.snapid ?? 0) === h.snapId;
}

/**
 * Full lookup result including the NO_VDI/NO_TAG side information (free bit, next snap id,
 * latest snapshot of a deleted working VDI) that create/snapshot need. Never throws for
 * NO_VDI/NO_TAG/FULL_VDI; I/O errors propagate.
 */
export async function lookupVdiInfo(
  io: MetaIO,
  t: VdiTable,
  name: string,
  opts: { tag?: string; snapid?: number } = {},
): Promise<LookupInfo> {
  if (t.recycle) return await lookupRecycled(io, t, name, opts);
  const left = vdiHashStart(name);
  let right = t.inuse.findNextZero(left);
  const info: LookupInfo = { result: Res.NO_VDI, vid: 0, snapIdNext: 0, freeBit: right };
  if (right === left) return info;
  // Scan order newest -> oldest: [1, right) then [left, NR) when the run wraps.
  const ranges: Array<[number, number]> = [];
  if (right === SD_NR_VDIS) {
    right = t.inuse.findNextZero(1);
    info.freeBit = right;
    if (right === SD_NR_VDIS) {
      info.result = Res.FULL_VDI;
      return info;
    }
    if (right > 1) ranges.push([1, right]);
    ranges.push([left, SD_NR_VDIS]);
  } else {
    ranges.push([left, right]);
  }

  const tagged = hasTag(opts);
  let nameExists = false;
  for (const [lo, hi] of ranges) {
    for (let vid = hi - 1; vid >= lo; vid--) {
      if (!t.inuse.test(vid) && !t.deleted.test(vid)) continue;
      const h = decodeInodeHeader(await io.read(vidToVdiOid(vid), 0, SD_INODE_HEADER_SIZE));
      if (h.name !== name) continue;
      const snap = h.snapCtime !== 0n;
      if (tagged) {
        if (!snap) {
          nameExists = true;
          info.vid = h.vdiId;
          continue;
        }
        if (!tagMatch(opts, h)) continue;
      } else {
        info.snapIdNext = h.snapId + 1;
        if (snap) {
          // the working VDI was deleted; its newest snapshot decides the next snap id
          info.vid = h.vdiId;
          info.result = Res.NO_VDI;
          return info;
        }
      }
      info.vid = h.vdiId;
      info.header = h;
      info.result = Res.SUCCESS;
      return info;
    }
  }
  info.result = nameExists ? Res.NO_TAG : Res.NO_VDI;
  return info;
}

/**
 * RECYCLE_VID: a family's VIDs are wherever the lowest free bits were, so every VID in use is
 * looked at, and "newest" is the highest snap_id, not the highest VID. (Upstream keeps taking the
 * highest VID: once VIDs are reused, a snapshot can shadow its working VDI, which then cannot
 * be written; ours does not do that.)
 */
async function lookupRecycled(
  io: MetaIO,
  t: VdiTable,
  name: string,
  opts: { tag?: string; snapid?: number },
): Promise<LookupInfo> {
  const freeBit = t.inuse.findNextZero(1);
  const info: LookupInfo = { result: Res.NO_VDI, vid: 0, snapIdNext: 0, freeBit };
  if (freeBit === SD_NR_VDIS) {
    info.result = Res.FULL_VDI;
    return info;
  }
  const tagged = hasTag(opts);
  let newest: InodeHeader | null = null;
  let tagHit: InodeHeader | null = null;
  let working = 0;
  for (let vid = nextUsed(t, 1); vid < SD_NR_VDIS; vid = nextUsed(t, vid + 1)) {
    const h = decodeInodeHeader(await io.read(vidToVdiOid(vid), 0, SD_INODE_HEADER_SIZE));
    if (h.name !== name) continue;
    const snap = h.snapCtime !== 0n;
    if (!newest || h.snapId > newest.snapId) newest = h;
    if (!snap) working = h.vdiId;
    if (tagged && snap && tagMatch(opts, h) && (!tagHit || h.snapId > tagHit.snapId)) tagHit = h;
  }
  if (tagged) {
    const hit = tagHit;
    if (hit) Object.assign(info, { result: Res.SUCCESS, vid: hit.vdiId, header: hit });
    else if (working) Object.assign(info, { result: Res.NO_TAG, vid: working });
    return info;
  }
  if (!newest) return info;
  info.snapIdNext = newest.snapId + 1;
  info.vid = newest.vdiId;
  if (newest.snapCtime !== 0n) return info; // the working VDI was deleted
  info.header = newest;
  info.result = Res.SUCCESS;
  return info;
}

function nextUsed(t: VdiTable, from: number): number {
  return Math.min(t.inuse.findNextSet(from), t.deleted.findNextSet(from));
}

/** GET_VDI_INFO / LOCK_VDI lookup. Throws SdError(NO_VDI | NO_TAG | FULL_VDI). */
export async function lookupVdi(
  io: MetaIO,
  t: VdiTable,
  name: string,
  opts: { tag?: string; snapid?: number } = {},
): Promise<
  { vid: number; nrCopies: number; blockSizeShift: number; snapIdNext: number; header: InodeHeader }
> {
  const info = await lookupVdiInfo(io, t, name, opts);
  if (info.result !== Res.SUCCESS || !info.header) throw new SdError(info.result);
  const st = t.states.get(info.vid);
  return {
    vid: info.vid,
    nrCopies: st?.nrCopies || info.header.nrCopies,
    blockSizeShift: st?.blockSizeShift || info.header.blockSizeShift,
    snapIdNext: info.snapIdNext,
    header: info.header,
  };
}
