// VDI bitmaps and states are merged from other members (upstream: GET_VDI_COPIES): a joiner asks
// every member, and members ask the joiner, so after a full restart everyone knows every VDI
// even when its inode is not stored locally.
import type { Buffer } from "node:buffer";
import { decodeVdiStates, LockState, VDI_STATE_SIZE } from "../core/payloads.ts";
import { Header, Op } from "../core/proto.ts";
import { nodeEqual, nodeHostPort, nodeIp, type SdNode } from "../core/node.ts";
import type { VdiTable } from "../core/vdi.ts";
import type { ClientPool } from "../io/client.ts";
import type { Logger } from "./log.ts";
import { oidToVid } from "../core/oid.ts";
import { forgetVdis } from "../core/vdi.ts";
import type { Sheep } from "./daemon.ts";

export interface VdiStatePort {
  me: SdNode;
  vdis: VdiTable;
  pool: ClientPool;
  log: Logger;
}

export async function fetchVdiState(p: VdiStatePort, from: SdNode[]): Promise<void> {
  await Promise.all(
    from.filter((n) => !nodeEqual(n, p.me)).map(async (n) => {
      try {
        const c = await p.pool.get(nodeIp(n), n.port);
        const inuse = await c.request(Header.req(Op.READ_VDIS, { dataLength: 2097152 }));
        const del = await c.request(Header.req(Op.READ_DEL_VDIS, { dataLength: 2097152 }));
        const st = await c.request(
          Header.req(Op.GET_VDI_COPIES, { dataLength: VDI_STATE_SIZE * 65536 }),
        );
        if (inuse.hdr.result || del.hdr.result || st.hdr.result) return;
        mergeVdiState(p.vdis, inuse.data, del.data, st.data);
      } catch (e) {
        p.log.debug(`vdi state from ${nodeHostPort(n)}: ${(e as Error).message}`);
      }
    }),
  );
}

/** Merges what a member knows about VDIs into this sheep's table. */
function mergeVdiState(t: VdiTable, inuse: Buffer, deleted: Buffer, states: Buffer): void {
  t.inuse.merge(inuse);
  t.deleted.merge(deleted);
  for (const r of decodeVdiStates(states)) {
    t.states.set(r.vid, {
      vid: r.vid,
      nrCopies: r.nrCopies,
      snapshot: r.snapshot,
      deleted: r.deleted,
      copyPolicy: r.copyPolicy,
      blockSizeShift: r.blockSizeShift,
      parentVid: r.parentVid,
    });
    if (r.lockState === LockState.LOCKED && r.lockOwner) {
      t.locks.set(r.vid, { owner: nodeHostPort(r.lockOwner) });
    }
  }
}

/**
 * VIDs freed for reuse (a deleted VDI family, upstream 1.0): forgotten, and every object and
 * cached copy of them removed here, so a reused VID never meets old data.
 */
export function applyRecycled(s: Sheep, vids: number[]): void {
  forgetVdis(s.vdis, vids);
  const gone = new Set(vids);
  const oids = s.store.list().filter((oid) => gone.has(oidToVid(oid)));
  const drop = (oid: bigint, e: unknown) =>
    s.log.warn(`remove ${oid.toString(16)}: ${(e as Error)?.message ?? e}`);
  void (async () => {
    for (const oid of oids) {
      await s.store.remove(oid).catch((e) => drop(oid, e));
      for (let k = 0; k < 16; k++) {
        if (s.store.exists(oid, k)) await s.store.remove(oid, k).catch((e) => drop(oid, e));
      }
    }
  })();
  for (const v of vids) void s.cache?.dropVdi(v);
  s.log.info(`recycled VIDs ${vids.map((v) => v.toString(16)).join(" ")}`);
}
