// Regression (issue 19, make chaos): a client write failed with EIO when one replica had just
// restarted and had not recovered the object yet (its peer answer: NO_OBJ). The gateway now sends
// the write to every replica again while the others have the object; a write of an object no
// replica has still fails with NO_OBJ.
import { describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { Gateway, type GatewayContext } from "../../sheep/gateway.ts";
import { makeNode, type SdNode } from "../../core/node.ts";
import { Ring } from "../../core/ring.ts";
import { Header, Op, Res } from "../../core/proto.ts";
import type { ClientPool } from "../../io/client.ts";

const nodes = [0, 1, 2].map((i) => makeNode("127.0.0.1", 7000 + i, { zone: i, nrVnodes: 64 }));

/** A gateway on node 0 whose peers answer through `answer` (called per node and attempt). */
function gateway(answer: (n: SdNode, attempt: number) => number) {
  const attempts = new Map<number, number>();
  const reply = (n: SdNode, hdr: Header) => {
    const k = attempts.get(n.port) ?? 0;
    attempts.set(n.port, k + 1);
    const h = hdr.clone();
    h.result = answer(n, k);
    return Promise.resolve({ hdr: h, data: Buffer.alloc(0) });
  };
  const ring = new Ring(nodes);
  const ctx: GatewayContext = {
    me: nodes[0],
    epoch: () => 1,
    ring: () => ring,
    waitEpoch: () => new Promise((r) => setTimeout(r, 10)),
    copiesFor: () => 3,
    strict: () => false,
    pool: {
      get: (_ip: string, port: number) =>
        Promise.resolve({
          request: (hdr: Header) => reply(nodes.find((n) => n.port === port)!, hdr),
        }),
    } as unknown as ClientPool,
    local: { handlePeer: (hdr: Header) => reply(nodes[0], hdr) },
  };
  return { g: new Gateway(ctx), attempts };
}

function writeReq(): Header {
  const h = Header.req(Op.WRITE_OBJ, { dataLength: 4096 });
  h.oid = 0x00e33dea00000002n;
  return h;
}

describe("gateway write while a replica recovers", () => {
  test("a replica answering NO_OBJ next to ones that have the object is retried", async () => {
    const { g, attempts } = gateway((n, k) => n.port === 7002 && k < 3 ? Res.NO_OBJ : Res.SUCCESS);
    const r = await g.writeAll(writeReq(), Buffer.alloc(4096, 1));
    expect(r.hdr.result).toBe(Res.SUCCESS);
    expect(attempts.get(7002)).toBe(4);
  });

  test("an object no replica has still fails with NO_OBJ, at once", async () => {
    const { g, attempts } = gateway(() => Res.NO_OBJ);
    let code = 0;
    await g.writeAll(writeReq(), Buffer.alloc(4096)).catch((e) => (code = e.code));
    expect(code).toBe(Res.NO_OBJ);
    expect(attempts.get(7001)).toBe(1);
  });

  test("NO_OBJ next to another error is not retried as recovery", async () => {
    const { g } = gateway((n) =>
      n.port === 7001 ? Res.NO_OBJ : n.port === 7002 ? Res.NO_SPACE : Res.SUCCESS
    );
    let code = 0;
    await g.writeAll(writeReq(), Buffer.alloc(4096)).catch((e) => (code = e.code));
    expect([Res.NO_OBJ, Res.NO_SPACE] as number[]).toContain(code);
  });

  test("a request to a node the new epoch dropped fails at once and the write goes on", async () => {
    // 7002 is partitioned away: it never answers. The epoch then moves to a ring without it.
    let epoch = 1;
    let ring = new Ring(nodes);
    const waiters: Array<() => void> = [];
    const answered = new Map<number, number>();
    const reply = (port: number, hdr: Header) => {
      answered.set(port, (answered.get(port) ?? 0) + 1);
      if (port === 7002) return new Promise<never>(() => {});
      const h = hdr.clone();
      h.result = Res.SUCCESS;
      return Promise.resolve({ hdr: h, data: Buffer.alloc(0) });
    };
    const ctx: GatewayContext = {
      me: nodes[0],
      epoch: () => epoch,
      ring: () => ring,
      waitEpoch: (e, ms) =>
        epoch > e ? Promise.resolve() : new Promise((r) => {
          waiters.push(r);
          setTimeout(r, ms);
        }),
      copiesFor: () => 3,
      strict: () => false,
      pool: {
        get: (_ip: string, port: number) =>
          Promise.resolve({ request: (hdr: Header) => reply(port, hdr) }),
      } as unknown as ClientPool,
      local: { handlePeer: (hdr: Header) => reply(7000, hdr) },
    };
    const g = new Gateway(ctx);
    const w = g.writeAll(writeReq(), Buffer.alloc(4096, 2));
    await new Promise((r) => setTimeout(r, 50));
    epoch = 2;
    ring = new Ring(nodes.slice(0, 2));
    for (const r of waiters.splice(0)) r();
    const t0 = Date.now();
    const r = await w;
    expect(r.hdr.result).toBe(Res.SUCCESS);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(answered.get(7000)).toBe(2); // first attempt and the retry on the new ring
  });
});
