// What a sheep keeps of the cluster it belongs to: the config file's identity (creation time,
// flags, store), checked at start-up and adopted when an unformatted sheep becomes a member.
import { ClusterFlag, Status } from "../core/proto.ts";
import type { ClusterState } from "../core/cluster.ts";
import type { SheepConfig } from "../io/config-file.ts";
import { type ObjectStore, openStore } from "../io/store.ts";

/**
 * Upstream's init_config_file: a formatted storage sheep restarted with the other vnode strategy
 * (`-V` given or not) refuses to start, since its ring would differ from the cluster's.
 */
export function vnodesDesignationError(
  cfg: SheepConfig,
  opts: { vnodes: number | null; gateway: boolean },
): string | null {
  if (cfg.ctime === 0n || opts.gateway) return null;
  const storedAuto = (cfg.flags & ClusterFlag.AUTO_VNODES) !== 0;
  const wantAuto = opts.vnodes === null;
  return storedAuto === wantAuto
    ? null
    : "Designation of before a restart and a vnodes option is different.";
}

export interface IdentityHost {
  config: SheepConfig;
  store: ObjectStore;
  objectDirs(): string[];
  readonly opts: { nosync: boolean; gateway: boolean };
  persistConfig(): void;
}

/**
 * A sheep that serves a formatted cluster it has no record of (it joined unformatted, or was the
 * waiting master a formatted sheep brought the identity to) writes the cluster's config, as
 * upstream's set_cluster_config: after a whole-cluster restart it must come back as a member of
 * that cluster, whichever sheep starts first. An unformatted store holds nothing, so it is
 * reopened with the cluster's store driver.
 */
export async function adoptIdentity(h: IdentityHost, s: ClusterState): Promise<void> {
  if (s.status !== Status.OK || s.ctime === 0n || h.config.ctime === s.ctime) return;
  if (h.config.ctime !== 0n) return; // another cluster's sheep: refused at the join
  const kind = s.store === "tree" ? "tree" : "plain";
  if (!h.opts.gateway && h.store.kind !== kind) {
    h.store = openStore(kind, h.objectDirs(), { nosync: h.opts.nosync });
    await h.store.init();
  }
  h.persistConfig();
}
