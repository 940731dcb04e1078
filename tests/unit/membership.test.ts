// The membership engine all three drivers share: event tables in, effects out.
import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import {
  type MembershipEffect,
  MembershipEngine,
  type MembershipEvent,
} from "../../core/membership.ts";
import type { SdNode } from "../../core/node.ts";

function node(port: number): SdNode {
  const addr = Buffer.alloc(16);
  addr[10] = 0xff;
  addr[11] = 0xff;
  addr.set([127, 0, 0, 1], 12);
  return { addr, port, ioAddr: Buffer.alloc(16), ioPort: 0, nrVnodes: 64, zone: port, space: 0n };
}
const M = Buffer.from("m");
const A = { key: "a.1", node: node(7000) };
const B = { key: "b.1", node: node(7001) };
const C = { key: "c.1", node: node(7002) };
const B2 = { key: "b.2", node: node(7001) }; // B restarted: same address, new incarnation

/** Effects as short strings: "accept 7001", "leave 7000", "offer 7002", "notify 7001" ... */
function show(effects: MembershipEffect[]): string[] {
  return effects.map((e) => {
    const port = e.node.port;
    switch (e.t) {
      case "accept":
        return `accept ${port}${e.self ? " self" : ""} [${e.members.map((n) => n.port)}]`;
      case "leave":
        return `leave ${port} [${e.members.map((n) => n.port)}]`;
      case "offerBlock":
        return `offer ${port}`;
      case "notify":
        return `notify ${port}`;
      case "updateNode":
        return `update ${port}`;
    }
  });
}

function run(me: string, table: [MembershipEvent, string[]][]): MembershipEngine {
  const e = new MembershipEngine(me);
  for (const [ev, want] of table) expect([ev.t, show(e.step(ev))]).toEqual([ev.t, want]);
  return e;
}

test("own accept, later joins and leaves", () => {
  const e = run("b.1", [
    // nothing is delivered before our own accept
    [{ t: "notify", node: A.node, msg: M }, []],
    [{ t: "block", key: A.key, node: A.node }, []],
    [
      { t: "accept", key: B.key, node: B.node, msg: M, members: [A, B], blocks: [A.key, "gone.9"] },
      [
        "accept 7001 self [7000,7001]",
      ],
    ],
    [{ t: "accept", key: C.key, node: C.node, msg: M }, ["accept 7002 [7000,7001,7002]"]],
    // a duplicate accept (re-read) changes nothing
    [{ t: "accept", key: C.key, node: C.node, msg: M }, []],
    [{ t: "leave", key: C.key }, ["leave 7002 [7000,7001]"]],
    [{ t: "leave", key: C.key }, []],
  ]);
  // the block of a node that was no member died with it
  expect(e.blocks).toEqual([A.key]);
});

test("block queue: offered once per head, re-offered only when the head is released", () => {
  const e = new MembershipEngine(A.key);
  e.step({ t: "accept", key: A.key, node: A.node, msg: M, members: [A, B, C] });
  const steps: [MembershipEvent, string[]][] = [
    [{ t: "block", key: B.key, node: B.node }, ["offer 7001"]],
    [{ t: "block", key: C.key, node: C.node }, []],
    // an unblock from a node that is not the head releases nothing and offers nothing
    [{ t: "unblock", key: C.key, node: C.node, msg: M }, ["notify 7002"]],
    [{ t: "unblock", key: B.key, node: B.node, msg: M }, ["notify 7001", "offer 7002"]],
    [{ t: "block", key: A.key, node: A.node }, []],
    // the head leaves: its block is void and the next one is offered
    [{ t: "leave", key: C.key }, ["leave 7002 [7000,7001]", "offer 7000"]],
    // a non-head leaves: nothing to offer
    [{ t: "block", key: B.key, node: B.node }, []],
    [{ t: "leave", key: B.key }, ["leave 7001 [7000]"]],
    // a block from a node that already left is void
    [{ t: "block", key: C.key, node: C.node }, []],
  ];
  for (const [ev, want] of steps) expect([ev.t, show(e.step(ev))]).toEqual([ev.t, want]);
  expect(e.blocks).toEqual([A.key]);
});

test("a restarted sheep: the old incarnation leaves first, its blocks are void", () => {
  const e = new MembershipEngine(A.key);
  e.step({ t: "accept", key: A.key, node: A.node, msg: M, members: [A, B] });
  expect(show(e.step({ t: "block", key: B.key, node: B.node }))).toEqual(["offer 7001"]);
  const p = e.proposeJoin(B2.key, B2.node);
  expect(p.others.map((m) => m.key)).toEqual([A.key]);
  expect(p.members.map((m) => m.key)).toEqual([A.key, B2.key]);
  expect(p.blocks).toEqual([]);
  expect(show(e.step({ t: "accept", key: B2.key, node: B2.node, msg: M, members: p.members })))
    .toEqual(["leave 7001 [7000]", "accept 7001 [7000,7001]"]);
  expect(e.members.map((m) => m.key)).toEqual([A.key, B2.key]);
  expect(e.blocks).toEqual([]);
});

test("updates only for members; configuration changes remove several at once", () => {
  const e = new MembershipEngine(A.key);
  e.step({ t: "accept", key: A.key, node: A.node, msg: M, members: [A, B, C] });
  const moved = { ...B.node, nrVnodes: 7 };
  expect(show(e.step({ t: "update", key: B.key, node: moved }))).toEqual(["update 7001"]);
  expect(e.member(B.key)!.node.nrVnodes).toBe(7);
  expect(e.step({ t: "update", key: "nobody", node: moved })).toEqual([]);
  e.step({ t: "block", key: C.key, node: C.node });
  expect(show(e.removeAll([B.key, C.key]))).toEqual([
    "leave 7001 [7000,7002]",
    "leave 7002 [7000]",
  ]);
  expect(e.nodes.map((n) => n.port)).toEqual([7000]);
});

test("founding", () => {
  const e = new MembershipEngine(A.key);
  const p = e.proposeFounding(A.node);
  expect(show(e.step({ t: "accept", key: A.key, node: A.node, msg: M, members: p.members })))
    .toEqual(["accept 7000 self [7000]"]);
  expect(e.accepted).toBe(true);
});
