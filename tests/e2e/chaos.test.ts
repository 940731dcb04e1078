// The short chaos run inside `make test` (issue 19): 5 sheep, copies=3, two VDIs over NBD, 10
// seeded nemesis events (tests/lib/chaos.ts), then every acknowledged write checked through two
// other gateways and `dog vdi read`. `make chaos` is the long version; SEED=n make chaos replays.
import { describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import { BLOCK, Model, runChaos } from "../lib/chaos.ts";

const SEED = 19;

describe("chaos", () => {
  test("the oracle flags lost and stale blocks, and allows unacknowledged ones", () => {
    const m = new Model();
    const a = randomBytes(2 * BLOCK);
    m.ack(0, m.begin(0, a));
    const b = randomBytes(BLOCK);
    m.begin(BLOCK, b); // sent, never acknowledged: either value may show
    expect(m.check(0, a)).toEqual([]);
    expect(m.check(0, Buffer.concat([a.subarray(0, BLOCK), b]))).toEqual([]);
    // an older value (zeros) where a write was acknowledged is a violation
    expect(m.check(0, Buffer.alloc(2 * BLOCK)).map((x) => x.block)).toEqual([0, 1]);
    const c = randomBytes(BLOCK);
    m.ack(BLOCK, m.begin(BLOCK, c));
    // after a later acknowledged write the unacknowledged one may not show any more
    expect(m.check(BLOCK, b).map((x) => x.block)).toEqual([1]);
  });

  test(`seed ${SEED}, 10 events: no acknowledged write lost, no stale read`, async () => {
    const r = await runChaos({ seed: SEED, events: 10 });
    console.log(`chaos: seed ${SEED}: ${r.acked.length} acknowledged writes, ${r.flushes} flushes`);
    console.log(`chaos: 10 events, 1 seeds, ${r.violations.length} violations`);
    if (r.violations.length) console.log(`event log:\n  ${r.events.join("\n  ")}`);
    expect(r.acked.length).toBeGreaterThan(100);
    expect(r.violations).toEqual([]);
  }, 300_000);
});
