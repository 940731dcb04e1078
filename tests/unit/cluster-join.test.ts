// The join decision (core/cluster.ts) against upstream's rules: creation times are compared only
// when both sides have an epoch, the larger epoch's view wins while waiting, and the cluster
// serves once every node of that view's last epoch is present.
import { expect, test } from "bun:test";
import { applyForceRecover, decideJoin, initialState } from "../../core/cluster.ts";
import { makeNode } from "../../core/node.ts";
import { ClusterFlag, Res, Status } from "../../core/proto.ts";

const [a, b, c] = [7000, 7001, 7002].map((p) => makeNode("127.0.0.1", p));
const formatted = (epoch: number, nodes = [a, b], ctime = 5n, status: number = Status.WAIT) => ({
  ...initialState(),
  status,
  epoch,
  ctime,
  nodes,
});

test("waiting master: the larger epoch wins, OK once its last epoch's nodes are all there", () => {
  const r = decideJoin(formatted(1, [a, b, c]), [c], b, formatted(2, [a, b]));
  expect(r.accept && [r.state.epoch, r.state.status]).toEqual([2, Status.WAIT]);
  const ok = decideJoin(formatted(2, [a, b]), [c, b], a, formatted(3, [a]));
  expect(ok.accept && [ok.state.epoch, ok.state.status]).toEqual([3, Status.OK]);
});

test("an unformatted waiting master takes a formatted joiner's identity", () => {
  const r = decideJoin(initialState(), [c], a, formatted(4, [a]));
  expect(r.accept && [r.state.ctime, r.state.epoch, r.state.status]).toEqual([5n, 4, Status.OK]);
  const u = decideJoin(initialState(), [c], a, initialState());
  expect(u.accept && [u.state.ctime, u.state.status]).toEqual([0n, Status.WAIT]);
});

test("creation times differ only matters when both have an epoch", () => {
  for (const status of [Status.WAIT, Status.OK]) {
    const r = decideJoin(formatted(3, [a, b], 5n, status), [a], b, formatted(2, [a, b], 9n));
    expect(r).toEqual({ accept: false, code: Res.INVALID_CTIME, reason: "Creation times differ" });
    const noEpoch = decideJoin(formatted(3, [a, b], 5n, status), [a], b, formatted(0, [], 9n));
    expect(noEpoch.accept).toBe(true);
  }
});

test("a running cluster accepts an older or unformatted sheep with its own view", () => {
  const master = formatted(6, [a, b], 5n, Status.OK);
  for (const j of [formatted(2, [a, b, c]), initialState()]) {
    const r = decideJoin(master, [a, b], c, j);
    expect(r.accept && r.state).toEqual(master);
  }
});

test("force recover: only a formatted waiting cluster, into a new epoch with those present", () => {
  const r = applyForceRecover(formatted(3, [a, b, c]), [b, a]);
  expect(r && [r.status, r.epoch, r.nodes]).toEqual([Status.OK, 4, [a, b]]);
  expect(applyForceRecover(formatted(3, [a, b], 5n, Status.OK), [a])).toBeNull();
  expect(applyForceRecover(initialState(), [a])).toBeNull();
});

test("a storage sheep with the other vnode strategy is refused; a gateway is not", () => {
  const auto = { ...formatted(2, [a, b], 5n, Status.OK), flags: ClusterFlag.AUTO_VNODES };
  const fixedJoiner = { ...initialState(), flags: 0 };
  const r = decideJoin(auto, [a, b], c, fixedJoiner);
  expect(r.accept === false && [r.code, r.reason]).toEqual([
    Res.INVALID_VNODES_STRATEGY,
    "vnodes strategy unmatch. cluster:auto, joined:fixed",
  ]);
  expect(decideJoin(auto, [a, b], { ...c, nrVnodes: 0 }, fixedJoiner).accept).toBe(true);
  const same = decideJoin(auto, [a, b], c, { ...initialState(), flags: ClusterFlag.AUTO_VNODES });
  expect(same.accept).toBe(true);
});
