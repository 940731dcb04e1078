// The daemon's object store and scrubber, wired to the daemon (sheep/daemon.ts): the file store
// with -n/-D and its disk events (issue 15), and the background scrub (sheep/scrub.ts).
import { Header, Op, Status } from "../core/proto.ts";
import { probeDirectIo } from "../io/fd-cache.ts";
import { DirectIo, type ObjectStore, openStore } from "../io/store.ts";
import * as fs from "node:fs";
import * as path from "node:path";
import { Journal } from "../io/journal.ts";
import type { Sheep } from "./daemon.ts";
import { Scrubber } from "./scrub.ts";

/**
 * Opens and scans the file store over `disks` with the daemon's I/O options (-n, -D) and its
 * reaction to disk events: a failed disk's objects are recovered from the other nodes, and a
 * sheep whose last disk failed leaves the cluster (sheep-daemon.md §9).
 */
export async function openFileStore(
  s: Sheep,
  kind: "plain" | "tree",
  disks: string[],
): Promise<ObjectStore & { deferSync: boolean }> {
  let io: DirectIo | undefined;
  if (s.opts.directio) {
    io = await DirectIo.create();
    for (const d of disks) probeDirectIo(d, io);
  }
  const store = openStore(kind, disks, {
    nosync: s.opts.nosync,
    io,
    log: (level, msg) => s.log[level](msg),
    onDisk: (ev) => {
      // Events of a store already replaced (format with another layout) are not ours.
      if (ev.kind !== "failed" || store !== s.rawStore) return;
      if (ev.left === 0) {
        s.log.emerg(`no disk left (${ev.path} failed): leaving the cluster`);
        void s.shutdown(1);
      } else if (ev.lost > 0 && s.state.status === Status.OK) s.startRecovery(null);
    },
  });
  await store.init();
  s.rawStore = store;
  if (io) s.log.info(`direct I/O (O_DIRECT) on ${disks.join(", ")}`);
  return store;
}

/** The background scrub of this sheep (off on a gateway: it stores nothing). */
export function makeScrubber(s: Sheep): Scrubber {
  return new Scrubber({
    log: s.log,
    store: () => s.store,
    me: () => s.me,
    epoch: () => s.state.epoch,
    ring: () => s.ring,
    quiet: () => s.state.status === Status.OK && !s.recovery.status().inRecovery,
    copiesFor: (oid) => s.copiesFor(oid, 0),
    storedSize: (oid) => s.storedSize(oid),
    isEc: (oid) => s.ecPolicyOf(oid) !== 0,
    gatewayRead: (oid, size) => {
      const h = Header.req(Op.READ_OBJ, { dataLength: size });
      h.oid = oid;
      return s.gateway.read(h);
    },
    sendTo: (n, h) => s.sendTo(n, h),
  }, s.opts.gateway ? null : s.opts.scrub);
}

/**
 * -j: opens the journal and replays it onto `raw` (before the sheep listens or joins, so nothing
 * reads the store before it is right) and returns the store to use: `raw` behind the journal,
 * or `raw` itself without -j or on a gateway-only sheep.
 */
export async function openJournal(
  s: Sheep,
  raw: ObjectStore & { deferSync: boolean },
  disks: string[],
): Promise<ObjectStore> {
  const j = s.opts.journal;
  if (!j) return raw;
  if (s.opts.gateway) {
    s.log.warn("-j: a gateway-only sheep stores no objects, so it keeps no journal");
    return raw;
  }
  s.journal = new Journal(
    j,
    path.resolve(j.dir ?? path.join(s.baseDir, "journal")),
    disks,
    s.log,
    fs.realpathSync(s.baseDir),
  );
  await s.journal.open(raw);
  return s.journal.wrap(raw);
}
