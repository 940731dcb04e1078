// How the daemon wires its gateway (sheep/gateway.ts) and its recovery executor
// (sheep/recovery.ts, sheep/ec-recovery.ts) to its state: both see the cluster through these
// closures, never the Sheep itself.
import { encodeNode } from "../core/node.ts";
import { ClusterFlag, Flag, Header, Op, Res } from "../core/proto.ts";
import { SdError } from "../core/errors.ts";
import { registerInode } from "../core/vdi.ts";
import type { Sheep } from "./daemon.ts";
import { EcRecovery } from "./ec-recovery.ts";
import { Gateway } from "./gateway.ts";
import { inodeHeaderOf } from "./ops/reply.ts";
import { RecoveryManager } from "./recovery.ts";

export function makeGateway(s: Sheep): Gateway {
  return new Gateway({
    me: s.me,
    epoch: () => s.state.epoch,
    ring: () => s.ring,
    waitEpoch: (e, ms) => s.waitEpoch(e, ms),
    copiesFor: (oid, hint) => s.copiesFor(oid, hint),
    strict: () => (s.state.flags & ClusterFlag.STRICT) !== 0,
    pool: s.pool,
    local: { handlePeer: (h, d) => s.handlePeer(h, d) },
    ecPolicy: (oid, hint) => s.ecPolicyOf(oid, hint),
    storedSize: (oid, hint) => s.storedSize(oid, hint),
    log: (m) => s.log.warn(m),
  });
}

export function makeRecovery(s: Sheep): RecoveryManager {
  return new RecoveryManager({
    me: s.me,
    log: s.log,
    store: () => s.store,
    epoch: () => s.state.epoch,
    ring: () => s.ring,
    nodes: () => s.state.nodes.filter((n) => n.nrVnodes > 0),
    ringOf: (e) => s.ringOf(e),
    copiesFor: (oid) => s.copiesFor(oid, 0),
    storedSize: (oid) => s.storedSize(oid),
    peer: (node, hdr) => s.sendTo(node, hdr),
    reportComplete: async (epoch) => {
      const h = Header.req(Op.COMPLETE_RECOVERY, { flags: Flag.CMD_WRITE, dataLength: 80 });
      h.tgtEpoch = epoch;
      const r = await s.clusterNotify(h, encodeNode(s.me));
      if (r.hdr.result !== Res.SUCCESS) throw new SdError(r.hdr.result);
    },
    disabled: () => s.state.disableRecovery,
    throttle: () => s.recoveryThrottle,
    freeBytes: () => s.store.statfs().free,
    clientLoad: () => s.clientRequests,
    installed: (oid, data) => {
      const h = inodeHeaderOf(oid, 0, data);
      if (h) registerInode(s.vdis, h);
    },
    ec: s.ecRecovery = new EcRecovery({
      me: s.me,
      store: () => s.store,
      ring: () => s.ring,
      copiesFor: (oid) => s.copiesFor(oid, 0),
      policyOf: (oid) => s.ecPolicyOf(oid),
      stripSize: (oid) => s.storedSize(oid),
      peer: (node, hdr) => s.sendTo(node, hdr),
      epoch: () => s.state.epoch,
    }),
  });
}
