// `dog vdi read` has two loops: over a blocking socket (io/sync-socket.ts, the compiled binary
// on Bun) and event-driven (Deno, SHEEPDOG_SYNC_READ=0). Both give the same bytes, messages and
// exit codes: allocated and unallocated objects, ranges inside and across objects, snapshots.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { TestCluster } from "../lib/cluster.ts";

const MiB = 1024 * 1024;
let c: TestCluster;
const data = Buffer.alloc(12 * MiB);

beforeAll(async () => {
  c = await TestCluster.start(2, { format: { copies: 2 } });
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  await c.dogOk(["vdi", "create", "v", "20M"]);
  // objects 0-1 and 3 written, 2 and 4 left unallocated
  await c.dogOk(["vdi", "write", "v", "0", String(8 * MiB)], { input: data.subarray(0, 8 * MiB) });
  await c.dogOk(["vdi", "write", "v", String(12 * MiB), String(4 * MiB)], {
    input: data.subarray(8 * MiB),
  });
  await c.dogOk(["vdi", "snapshot", "-s", "s1", "v"]);
  await c.dogOk(["vdi", "write", "v", "0", "4096"], { input: Buffer.alloc(4096, 0xab) });
});
afterAll(async () => {
  await c?.stop();
});

function expected(snap: boolean): Buffer {
  const b = Buffer.alloc(20 * MiB);
  data.copy(b, 0, 0, 8 * MiB);
  data.copy(b, 12 * MiB, 8 * MiB);
  if (!snap) b.fill(0xab, 0, 4096);
  return b;
}

const cases: [string, string[], boolean, number, number][] = [
  ["whole VDI", ["v"], false, 0, 20 * MiB],
  ["a range across objects", ["v", "1000", String(13 * MiB)], false, 1000, 13 * MiB],
  ["inside one object", ["v", String(5 * MiB + 7), "100"], false, 5 * MiB + 7, 100],
  ["a snapshot", ["-s", "s1", "v"], true, 0, 20 * MiB],
  ["a length past the end", ["v", String(19 * MiB), String(8 * MiB)], false, 19 * MiB, MiB],
];

for (const [what, args, snap, off, len] of cases) {
  test(`both read loops agree: ${what}`, async () => {
    const want = expected(snap).subarray(off, off + len);
    for (const sync of ["1", "0"]) {
      const r = await c.dog(["vdi", "read", ...args], { env: { SHEEPDOG_SYNC_READ: sync } });
      expect({ sync, code: r.code, err: r.stderr }).toEqual({ sync, code: 0, err: "" });
      expect(r.stdout.equals(want)).toBe(true);
    }
  });
}

test("both read loops fail alike: offset past the end, missing VDI", async () => {
  for (const args of [["v", String(21 * MiB)], ["nosuch"]]) {
    const rs = [];
    for (const sync of ["1", "0"]) {
      const r = await c.dog(["vdi", "read", ...args], { env: { SHEEPDOG_SYNC_READ: sync } });
      rs.push({ code: r.code, err: r.stderr, out: r.stdout.length });
    }
    expect(rs[0].code).not.toBe(0);
    expect(rs[0]).toEqual(rs[1]);
  }
});
