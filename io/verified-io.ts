// Verified object-file I/O of the store (io/store.ts) against the stored checksums of
// io/checksum.ts: a read checks every block it touches, a write updates the blocks' entries.
import fs from "node:fs";
import { Buffer } from "node:buffer";
import { SdError } from "../core/errors.ts";
import { Res } from "../core/proto.ts";
import {
  blockCount,
  blockLen,
  blockSizeOf,
  crcOf,
  CSUM_BLOCK,
  CSUM_SUFFIX,
  entryMatches,
  entryOffset,
  firstBadBlock,
  tableForWrite,
} from "./checksum.ts";
import { closeQuiet, type DataIo, isEnoent, preadFull, pwriteFull } from "./fd-cache.ts";

export function checksumError(path: string, block: number, bs = CSUM_BLOCK): SdError {
  return new SdError(Res.EIO, `checksum mismatch in ${path} block ${block} (${bs} bytes)`);
}

/** A side file: its descriptor and, when the store keeps it in memory, all of its entries. */
export interface SideFile {
  fd: number;
  table?: Buffer;
}

function entriesOf(sf: SideFile, first: number, n: number): Buffer {
  // Past the end of the table, fewer entries: entryMatches then fails, as for a short file.
  if (sf.table) return sf.table.subarray(entryOffset(first), entryOffset(first + n));
  return preadFull(sf.fd, entryOffset(n), entryOffset(first));
}

/**
 * Byte range of a side file's table in memory changed but not written yet: several writes of one
 * object (the object cache's push) update the table, then write what they changed at once.
 */
export interface PendingEntries {
  lo: number;
  hi: number;
}

/**
 * Writes entries from block `first` to the file, then to the copy in memory (if any). With
 * `pending` and a table in memory only the copy is updated, and the range to write is widened.
 */
function storeEntries(sf: SideFile, t: Buffer, first: number, pending?: PendingEntries): void {
  const at = entryOffset(first);
  if (!pending || !sf.table) pwriteFull(sf.fd, t, at);
  if (!sf.table) return;
  if (at + t.length > sf.table.length) {
    const grown = Buffer.alloc(at + t.length);
    sf.table.copy(grown);
    sf.table = grown;
  }
  t.copy(sf.table, at);
  if (pending) {
    pending.lo = Math.min(pending.lo, at);
    pending.hi = Math.max(pending.hi, at + t.length);
  }
}

/** Writes the entries `pending` covers (one write for all of them). */
export function writePendingEntries(sf: SideFile, pending: PendingEntries): void {
  if (!sf.table || pending.hi <= pending.lo) return;
  pwriteFull(sf.fd, sf.table.subarray(pending.lo, pending.hi), pending.lo);
  pending.lo = Infinity;
  pending.hi = 0;
}

/**
 * Reads [offset, offset+length) of the open object file `fd` of `size` bytes and checks every
 * block it touches against the side file `sf` (the whole blocks are read, then trimmed).
 */
export function verifiedRead(
  io: DataIo,
  fd: number,
  sf: SideFile,
  size: number,
  offset: number,
  length: number,
  path: string,
  bs = CSUM_BLOCK,
): Buffer {
  const end = Math.min(offset + length, size);
  if (end <= offset) return io.pread(fd, length, offset);
  const first = Math.floor(offset / bs);
  const last = Math.floor((end - 1) / bs);
  const start = first * bs;
  const span = Math.min((last + 1) * bs, size) - start;
  const buf = io.pread(fd, span, start);
  // The table in memory is used in place (entry 0 is block 0): no view made per read.
  const bad = sf.table
    ? firstBadBlock(buf, first, size, sf.table, bs, 0)
    : firstBadBlock(buf, first, size, entriesOf(sf, first, last - first + 1), bs);
  if (bad >= 0) throw checksumError(path, bad, bs);
  if (start === offset && span === length) return buf;
  // Inside what was read: a view, no copy (a 4 KiB read of a 64 KiB block is the common case).
  if (offset - start + length <= span) return buf.subarray(offset - start, offset - start + length);
  const out = Buffer.alloc(length);
  buf.copy(out, 0, offset - start, Math.min(span, offset - start + length));
  return out;
}

/**
 * Writes the entries of the blocks a write of `data` at `offset` changes. Blocks the write only
 * partly covers are read back and verified first: a checksum over a corrupt block would make the
 * corruption look valid.
 */
export function updateTable(
  io: DataIo,
  fd: number,
  sf: SideFile,
  offset: number,
  data: Buffer,
  path: string,
  oldSize: number,
  bs = CSUM_BLOCK,
  pending?: PendingEntries,
): void {
  if (data.length === 0) return;
  const end = offset + data.length;
  const newSize = Math.max(oldSize, end);
  const first = Math.floor(Math.min(offset, oldSize) / bs);
  const last = Math.floor((end - 1) / bs);
  const prev = entriesOf(sf, first, last - first + 1);
  const old = (i: number): Buffer => {
    const b = io.pread(fd, bs, i * bs);
    const len = blockLen(i, oldSize, bs);
    if (len > 0 && !entryMatches(prev, i - first, crcOf(b.subarray(0, len)))) {
      throw checksumError(path, i, bs);
    }
    return b;
  };
  const t = tableForWrite(first, last, offset, data, newSize, old, prev, bs);
  storeEntries(sf, t, first, pending);
}

/**
 * Recomputes every entry of the side file of `path` from the data on disk and flushes it (the
 * object was dirty in the write-intent log at a crash, io/csum-intent.ts: either file may hold
 * the newer state). Returns how many blocks matched neither slot, -1 when there is no side file.
 */
export function resealFile(path: string): number {
  let fd: number;
  let cfd: number;
  try {
    fd = fs.openSync(path, "r");
  } catch (e) {
    if (isEnoent(e)) return -1;
    throw e;
  }
  try {
    try {
      cfd = fs.openSync(path + CSUM_SUFFIX, "r+");
    } catch (e) {
      if (isEnoent(e)) return -1;
      throw e;
    }
    try {
      const size = fs.fstatSync(fd).size;
      const old = preadFull(cfd, fs.fstatSync(cfd).size, 0);
      let bs = blockSizeOf(old.length, size);
      // A table of neither length (torn growth) is rewritten with 4 KiB blocks.
      if (old.length !== blockCount(size, bs) * 8) bs = CSUM_BLOCK;
      const n = blockCount(size, bs);
      const t = Buffer.alloc(n * 8);
      let bad = 0;
      const chunk = 256 * bs;
      for (let i = 0; i < n; i += 256) {
        const buf = preadFull(fd, Math.min(chunk, size - i * bs), i * bs);
        for (let k = 0; k < 256 && i + k < n; k++) {
          const c = crcOf(buf.subarray(k * bs, k * bs + blockLen(i + k, size, bs)));
          if (!entryMatches(old, i + k, c)) bad++;
          t.writeUInt32LE(c, (i + k) * 8);
          t.writeUInt32LE(c, (i + k) * 8 + 4);
        }
      }
      pwriteFull(cfd, t, 0);
      if (old.length > t.length) fs.ftruncateSync(cfd, t.length);
      fs.fdatasyncSync(cfd);
      return bad;
    } finally {
      closeQuiet(cfd);
    }
  } finally {
    closeQuiet(fd);
  }
}
