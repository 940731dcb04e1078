// dog vdi backup / restore (farm-backup.md §2): incremental diffs between two snapshots; the
// stream codec is backup-stream.ts.
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as path from "node:path";
import { tmpdir } from "node:os";
import {
  backupEndMarker,
  type BackupEvent,
  BackupFormatError,
  backupHeader,
  type BackupLimits,
  backupRecordHeader,
  BackupStreamParser,
  backupTrailer,
  StreamDigest,
} from "./backup-stream.ts";
import { errnoText, NetworkError } from "../io/client.ts";
import { SdError } from "../core/errors.ts";
import { SD_INODE_HEADER_SIZE, vidToDataOid, vidToVdiOid } from "../core/oid.ts";
import { strerror } from "../core/proto.ts";
import { countDataObjs, Limiter, readObject, writeObject } from "../core/object-io.ts";
import {
  Ctx,
  err,
  Exit,
  EXIT_FAILURE,
  EXIT_SUCCESS,
  EXIT_SYSFAIL,
  EXIT_USAGE,
  out,
  outAsync,
  StderrProgress,
} from "./common.ts";
import { doVdiCreate, doVdiDelete, hex, readVdiObj, type VdiObj } from "./vdi-common.ts";

// vdi backup / restore (farm-backup.md §2)

const SECTOR_SIZE = 512;

export async function vdiBackup(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const d = c.vdi;
  if ((!d.snapshotId && !d.snapshotTag) || (!d.fromSnapshotId && !d.fromSnapshotTag)) {
    err("Please specify snapshots with '-F' and '-s' options");
    return EXIT_USAGE;
  }
  const from = await readVdiObj(c, name, d.fromSnapshotId, d.fromSnapshotTag, true);
  const to = await readVdiObj(c, name, d.snapshotId, d.snapshotTag, true);
  const os = 2 ** from.header.blockSizeShift;
  const nrObjs = countDataObjs(to.header);
  const digest = await StreamDigest.create();
  const put = async (b: Buffer, hashed = true) => {
    if (hashed) digest.update(b);
    try {
      await outAsync(b);
    } catch (e) {
      progress.end();
      err(`failed to write backup data, ${errnoText(e)}`);
      throw new Exit(EXIT_SYSFAIL);
    }
  };
  const progress = new StderrProgress(BigInt(nrObjs) * BigInt(os), c.raw);
  await put(backupHeader());
  const readOrZero = async (vid: number, idx: number): Promise<Buffer> => {
    if (!vid) return Buffer.alloc(os);
    try {
      return await readObject(c.req, vidToDataOid(vid, idx), os, 0, true);
    } catch (e) {
      if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
      progress.end();
      err(`Failed to read object ${hex(vidToDataOid(vid, idx))} ${strerror(e.code)}`);
      err(`Failed to read object ${hex(vid)}, ${idx}`);
      throw new Exit(EXIT_FAILURE);
    }
  };
  // prefetch a few objects ahead, emit in index order
  const WINDOW = 4;
  const pending: { idx: number; p: Promise<[Buffer, Buffer]> }[] = [];
  let idx = 0;
  const fill = () => {
    while (pending.length < WINDOW && idx < nrObjs) {
      const i = idx++;
      const f = from.slots.get(i), t = to.slots.get(i);
      if (!f && !t) continue;
      const p = Promise.all([readOrZero(t, i), readOrZero(f, i)]);
      p.catch(() => {});
      pending.push({ idx: i, p });
    }
  };
  fill();
  while (pending.length) {
    const { idx: i, p } = pending.shift()!;
    const [toData, fromData] = await p;
    fill();
    progress.update(BigInt(i + 1) * BigInt(os));
    let offset = 0, length = os;
    while (
      length > 0 &&
      toData.compare(fromData, offset, offset + SECTOR_SIZE, offset, offset + SECTOR_SIZE) === 0
    ) {
      offset += SECTOR_SIZE;
      length -= SECTOR_SIZE;
    }
    let tail = os - SECTOR_SIZE;
    while (
      length > 0 &&
      toData.compare(fromData, tail, tail + SECTOR_SIZE, tail, tail + SECTOR_SIZE) === 0
    ) {
      tail -= SECTOR_SIZE;
      length -= SECTOR_SIZE;
    }
    if (length === 0) continue;
    await put(backupRecordHeader(i, offset, length));
    await put(toData.subarray(offset, offset + length));
  }
  await put(backupEndMarker());
  await put(backupTrailer(digest.digest()), false);
  progress.update(BigInt(nrObjs) * BigInt(os));
  progress.end();
  return EXIT_SUCCESS;
}

/** A backup stream read whole and checked; record data waits in an unlinked temporary file. */
interface SpooledBackup {
  records: { idx: number; offset: number; length: number; pos: number }[];
  fd: number;
  checked: boolean;
}

/**
 * Reads all of stdin through the backup parser before restore changes anything, so junk, a
 * truncated stream or (with our trailer) a flipped bit leaves the VDI as it was.
 */
async function spoolBackup(c: Ctx, limits: BackupLimits): Promise<SpooledBackup> {
  const dir = fs.mkdtempSync(path.join(tmpdir(), "dog-restore-"));
  const file = path.join(dir, "stream");
  const fd = fs.openSync(file, "w+", 0o600);
  fs.unlinkSync(file);
  fs.rmdirSync(dir);
  const sp: SpooledBackup = { records: [], fd, checked: false };
  const parser = new BackupStreamParser(limits, await StreamDigest.create());
  let pos = 0;
  const keep = (evs: BackupEvent[]) => {
    for (const ev of evs) {
      if (ev.type !== "record") continue;
      try {
        fs.writeSync(fd, ev.data, 0, ev.data.length, pos);
      } catch (e) {
        fs.closeSync(fd);
        err(`failed to keep the backup stream in ${tmpdir()} (set TMPDIR): ${errnoText(e)}`);
        throw new Exit(EXIT_SYSFAIL);
      }
      sp.records.push({ idx: ev.idx, offset: ev.offset, length: ev.data.length, pos });
      pos += ev.data.length;
    }
  };
  try {
    for (;;) {
      const chunk = await c.stdin.chunk();
      if (chunk === null) break;
      keep(parser.push(chunk));
    }
    const end = parser.finish();
    sp.checked = end.type === "end" && end.checked;
  } catch (e) {
    if (!(e instanceof BackupFormatError)) throw e;
    fs.closeSync(fd);
    err("The backup file is corrupted");
    err(`${e.message}; nothing was changed`);
    throw new Exit(EXIT_SYSFAIL);
  }
  return sp;
}

/** Writes the spooled records into the new VDI `vid` (copy-on-write from the snapshot). */
async function applyBackup(c: Ctx, sp: SpooledBackup, vid: number, snap: VdiObj): Promise<void> {
  const h = snap.header;
  const total = sp.records.reduce((n, r) => n + BigInt(r.length), 0n);
  const progress = new StderrProgress(total, c.raw);
  const lim = new Limiter(8);
  let done = 0n;
  let failed: unknown = null;
  await Promise.all(sp.records.map((r) =>
    lim.run(async () => {
      if (failed) return;
      const data = Buffer.allocUnsafe(r.length);
      fs.readSync(sp.fd, data, 0, r.length, r.pos);
      const parentVid = snap.slots.get(r.idx);
      try {
        await writeObject(c.req, vidToDataOid(vid, r.idx), data, r.offset, {
          create: true,
          cowOid: parentVid ? vidToDataOid(parentVid, r.idx) : 0n,
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
          direct: true,
        });
        const slot = Buffer.alloc(4);
        slot.writeUInt32LE(vid, 0);
        await writeObject(c.req, vidToVdiOid(vid), slot, SD_INODE_HEADER_SIZE + 4 * r.idx, {
          copies: h.nrCopies,
          copyPolicy: h.copyPolicy,
          direct: true,
        });
        done += BigInt(r.length);
        progress.update(done);
      } catch (e) {
        failed ??= e;
      }
    })
  ));
  progress.end();
  if (failed) throw failed;
}

export async function vdiRestore(c: Ctx): Promise<number> {
  const name = c.arg()!;
  const d = c.vdi;
  if (!d.snapshotId && !d.snapshotTag) {
    err("We can restore a backup file only to snapshots");
    err("Please specify the '-s' option");
    return EXIT_USAGE;
  }
  let snap: VdiObj;
  try {
    snap = await readVdiObj(c, name, d.snapshotId, d.snapshotTag, true);
  } catch (e) {
    if (e instanceof Exit) {
      err(`Snapshot ID ${d.snapshotId} or tag ${d.snapshotTag} doesn't exist`);
      return e.code;
    }
    throw e;
  }
  const current = await readVdiObj(c, name, 0, "", false);
  try {
    await readObject(c.req, vidToVdiOid(current.header.parentVdiId), SD_INODE_HEADER_SIZE, 0, true);
  } catch (e) {
    if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
    out("error\n");
    return EXIT_FAILURE;
  }
  if (process.stdin.isTTY) {
    err("stdin must be pipe");
    return EXIT_USAGE;
  }
  const sh = snap.header;
  // Everything is read and checked first: until here nothing has changed.
  const sp = await spoolBackup(c, {
    nrObjs: countDataObjs(sh),
    objectSize: 2 ** sh.blockSizeShift,
  });
  try {
    if (!sp.checked && c.verbose) err("the backup stream has no checksum (written by upstream)");
    const del = await doVdiDelete(c, name, 0, "");
    if (del !== EXIT_SUCCESS) {
      err("Failed to delete the current state");
      return del;
    }
    let ret = EXIT_SUCCESS;
    const vid = await doVdiCreate(
      c,
      name,
      sh.vdiSize,
      snap.vid,
      false,
      sh.nrCopies,
      sh.copyPolicy,
      sh.storePolicy,
      sh.blockSizeShift,
    );
    if (vid === null) {
      err("Failed to read VDI");
      ret = EXIT_FAILURE;
    } else {
      try {
        await applyBackup(c, sp, vid, snap);
      } catch (e) {
        if (e instanceof NetworkError || !(e instanceof SdError)) throw e;
        err(`Failed to write object: ${strerror(e.code)}`);
        err("failed to restore backup");
        await doVdiDelete(c, name, 0, "");
        ret = EXIT_FAILURE;
      }
    }
    // The working VDI comes back on its old parent; the restored VDI, when there is one, becomes
    // a snapshot (the server's rebase), else the working VDI is simply created again.
    const ch = current.header;
    const r = await doVdiCreate(
      c,
      name,
      ch.vdiSize,
      ch.parentVdiId,
      ret === EXIT_SUCCESS,
      ch.nrCopies,
      ch.copyPolicy,
      ch.storePolicy,
      ch.blockSizeShift,
    );
    if (r === null) {
      err("failed to resume the current vdi");
      ret = EXIT_FAILURE;
    }
    return ret;
  } finally {
    fs.closeSync(sp.fd);
  }
}
