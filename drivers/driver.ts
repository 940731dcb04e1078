// The membership-driver contract (upstream's cluster_driver, sheep-daemon.md §10.1). The daemon
// core only talks to this interface; local, zookeeper and corosync implement it.
import type { Buffer } from "node:buffer";
import type { SdNode } from "../core/node.ts";

export interface JoinDecision {
  accept: boolean;
  /** The (possibly rewritten) opaque join message; delivered to every accept handler. */
  opaque: Buffer;
}

/**
 * Callbacks the core gives the driver. Events are delivered one at a time in the cluster-wide total
 * order; a handler may return a promise and the driver waits for it before delivering the next.
 */
export interface DriverHandlers {
  /** Runs on exactly one member (the master) for each joining node; must be a function of core state. */
  join(joining: SdNode, members: SdNode[], opaque: Buffer): JoinDecision;
  /** On every member including the joiner; `members` already includes `joined`. */
  accept(joined: SdNode, members: SdNode[], opaque: Buffer): void | Promise<void>;
  /** The joiner learns it was rejected (opaque explains why); the daemon exits. */
  rejected(opaque: Buffer): void;
  /** `members` no longer includes `left`. */
  leave(left: SdNode, members: SdNode[]): void | Promise<void>;
  notify(sender: SdNode, msg: Buffer): void | Promise<void>;
  /** The head block request reached the front; returns true only on its sender (work phase runs there). */
  block(sender: SdNode): boolean;
  updateNode(node: SdNode, members: SdNode[]): void | Promise<void>;
  /** Membership was lost for good (session gone, engine died): the node must stop serving. */
  fatal(reason: string): void;
  /**
   * The join message for a rejoin (after a lost session): the node's current cluster view, so a
   * node that rejoins is judged by what it knows now, not by what it knew at startup.
   */
  joinMessage?(): Buffer;
  /**
   * The link to the membership engine was lost (up=false) or is back with the same membership
   * (up=true). While it is lost this sheep may have been expelled without knowing it.
   */
  connection?(up: boolean): void;
}

export interface ClusterDriver {
  readonly name: string;
  /** Connect to the engine; throws a clear Error when it is unreachable or the option is bad. */
  init(handlers: DriverHandlers): Promise<void>;
  /** Address to advertise when -y is not given. */
  localAddr(): string;
  join(myself: SdNode, opaque: Buffer): Promise<void>;
  leave(): Promise<void>;
  notify(msg: Buffer): Promise<void>;
  block(): Promise<void>;
  unblock(msg: Buffer): Promise<void>;
  updateNode(node: SdNode): Promise<void>;
  close(): Promise<void>;
}

export class DriverConfigError extends Error {}

/** Parses `-c driver[:options]` into a driver instance. */
export async function createDriver(spec: string): Promise<ClusterDriver> {
  const colon = spec.indexOf(":");
  const name = colon < 0 ? spec : spec.slice(0, colon);
  const opt = colon < 0 ? "" : spec.slice(colon + 1);
  switch (name) {
    case "local": {
      const { LocalDriver } = await import("./local.ts");
      return new LocalDriver(opt || "/tmp/sheepdog-local");
    }
    case "zookeeper": {
      const { createZookeeperDriver } = await import("./zookeeper.ts");
      return createZookeeperDriver(opt);
    }
    case "corosync": {
      const { createCorosyncDriver } = await import("./corosync.ts");
      return createCorosyncDriver(opt);
    }
    default:
      throw new DriverConfigError(
        `Invalid cluster driver '${spec}'\nSupported drivers: local zookeeper corosync`,
      );
  }
}
