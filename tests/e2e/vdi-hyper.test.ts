// VDI lifecycle acceptance, part 2: 100 TiB hyper volumes, deletion of their data, alter-copy and
// vdi track on copies 2 of 3 nodes (the model and helpers are tests/lib/vdi-model.ts).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { TestCluster } from "../lib/cluster.ts";
import { isDataObj, isVdiObj, oidHex, vidToDataOid, vidToVdiOid } from "../../core/oid.ts";
import { Ring } from "../../core/ring.ts";
import { makeNode } from "../../core/node.ts";

import {
  allOids,
  expectFail,
  hexs,
  listRows,
  MiB,
  OBJ,
  objectPath,
  readVdi,
  replicaContent,
  rowOf,
  TiB,
  vidOf,
  writeVdi,
} from "../lib/vdi-model.ts";

describe("hyper volume of 100 TiB, alter-copy (3 nodes, copies 2)", () => {
  let c: TestCluster;
  const LAST = 100 * TiB - OBJ; // start of the last object

  beforeAll(async () => {
    c = await TestCluster.start(3, { format: { copies: 2 } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test(
    "create -y 100T, write the last object (and two more), read back, list, map, check, no snapshot",
    async () => {
      await c.dogOk(["vdi", "create", "-y", "big", "100T"]);
      const rows = await listRows(c);
      expect(rows.length).toBe(1);
      expect(rows[0]).toMatchObject({
        name: "big",
        size: 100 * TiB,
        used: 0,
        shared: 0,
        copies: "2",
      });
      const vid = rows[0].vid;

      const P = randomBytes(OBJ), Q = randomBytes(1 * MiB), R = randomBytes(3 * MiB);
      await writeVdi(c, "big", LAST, P);
      await writeVdi(c, "big", 0, Q);
      await writeVdi(c, "big", 50 * TiB + 2 * MiB, R); // straddles objects 13107200 and 13107201
      expect((await readVdi(c, "big", "", LAST, OBJ)).equals(P)).toBe(true);
      expect((await readVdi(c, "big", "", 0, MiB)).equals(Q)).toBe(true);
      expect((await readVdi(c, "big", "", 50 * TiB + 2 * MiB, 3 * MiB)).equals(R)).toBe(true);
      // holes read as zeros; the read is clipped at the end of the VDI
      expect((await readVdi(c, "big", "", 7 * TiB, MiB)).equals(Buffer.alloc(MiB))).toBe(true);
      expect((await readVdi(c, "big", "", LAST + OBJ - 10, 100)).equals(P.subarray(OBJ - 10))).toBe(
        true,
      );
      // overwrite inside an existing object (plain WRITE_OBJ, no new index entry)
      const S = randomBytes(4096);
      await writeVdi(c, "big", LAST + 8192, S);
      S.copy(P, 8192);
      expect((await readVdi(c, "big", "", LAST, OBJ)).equals(P)).toBe(true);

      const last = 100 * 1024 * 1024 / 4 - 1; // 26214399
      const map = await c.dogOk(["vdi", "object", "map", "big"]);
      expect(map).toBe(
        "Index       VID\n" +
          [0, 13107200, 13107201, last].map((i) =>
            `${String(i).padStart(8, "0")} ${hexs(vid).padStart(8)}\n`
          ).join(""),
      );
      expect((await listRows(c))[0]).toMatchObject({ used: 4 * OBJ, shared: 0 });
      // the data objects live under the VDI's own VID, two replicas each
      const files = allOids(c).filter((o) => isDataObj(o.oid));
      expect(files.length).toBe(4 * 2);
      for (const o of files) expect(o.oid >> 32n).toBe(BigInt(vid));
      expect(await c.dogOk(["vdi", "check", "big"])).toBe("finish check&repair big\n");
      expectFail(
        await c.dog(["vdi", "snapshot", "big"]),
        1,
        /creating a snapshot of hypervolume is not supported/,
      );
      expectFail(
        await c.dog(["vdi", "create", "-y", "-z", "23", "big2", "1T"]),
        1,
        /Don't specify both -y and -z options, please/,
      );
      expectFail(
        await c.dog(["vdi", "create", "flat", "5T"]),
        64,
        /please use '-y' to create a hyper volume/,
      );
      expectFail(await c.dog(["vdi", "create", "-y", "huge", "17P"]), 64, /VDI size is too large/);
    },
    180_000,
  );

  test("deleting the hyper volume removes its data objects", async () => {
    await c.dogOk(["vdi", "delete", "big"]);
    expect(await listRows(c)).toEqual([]);
    const left = allOids(c).filter((o) => !isVdiObj(o.oid));
    expect(left.map((o) => `node${o.node}:${o.name}`)).toEqual([]);
    const ino = allOids(c).filter((o) => isVdiObj(o.oid));
    for (const o of ino) {
      expect(fs.readFileSync(objectPath(c, o.node, o.name)!).subarray(4664).every((x) => x === 0))
        .toBe(true);
    }
  }, 60_000);

  test(
    "alter-copy of a standalone VDI: header and placement follow (recovery adds the third replica)",
    async () => {
      await c.dogOk(["vdi", "create", "ac", String(8 * MiB)]);
      const D = randomBytes(5 * MiB);
      await writeVdi(c, "ac", 0, D);
      const vid = await vidOf(c, "ac");
      const oids = [vidToVdiOid(vid), vidToDataOid(vid, 0), vidToDataOid(vid, 1)];
      const holders = (oid: bigint) =>
        c.nodes.filter((_, i) => objectPath(c, i, oidHex(oid))).length;
      for (const oid of oids) expect(holders(oid)).toBe(2);
      const r = await c.dog(["vdi", "alter-copy", "-c", "3", "-f", "ac"]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({
        code: 0,
        stderr: "ac's redundancy level is set to 3, the old one was 2.\n",
      });
      expect(rowOf(await listRows(c), { name: "ac", tag: "", snapshot: false }).copies).toBe("3");
      await c.waitFor(
        async () => oids.every((oid) => holders(oid) === 3),
        30_000,
        "a third replica of every object of ac",
      );
      for (const oid of oids.slice(1)) {
        const reps = [0, 1, 2].map((i) => replicaContent(c, i, oid, OBJ)!);
        expect(reps[1].equals(reps[0]) && reps[2].equals(reps[0])).toBe(true);
      }
      expect((await readVdi(c, "ac", "", 0, 5 * MiB)).equals(D)).toBe(true);
      expectFail(
        await c.dog(["vdi", "alter-copy", "-c", "3", "-f", "ac"]),
        1,
        /ac's redundancy level is already set to 3, nothing changed/,
      );
      expectFail(
        await c.dog(["vdi", "alter-copy", "-c", "2:1", "-f", "ac"]),
        64,
        /Changing redundancy level of erasure coded vdi is not supported yet/,
      );
      // only standalone VDIs: not one with snapshots
      await c.dogOk(["vdi", "snapshot", "ac"]);
      expectFail(
        await c.dog(["vdi", "alter-copy", "-c", "2", "-f", "ac"]),
        1,
        /Only standalone vdi supports changing redundancy level/,
      );
    },
    60_000,
  );

  test("vdi track matches where the replicas are (copies 2 of 3 nodes)", async () => {
    await c.dogOk(["vdi", "create", "tr", String(8 * MiB)]);
    await writeVdi(c, "tr", 4 * MiB, randomBytes(4096));
    const vid = await vidOf(c, "tr");
    const out = await c.dogOk(["vdi", "track", "-i", "1", "tr"]);
    const oid = vidToDataOid(vid, 1);
    const section =
      out.split(`obj ${hexs(oid)} locations at epoch 1, copies = 2\n${"-".repeat(51)}\n`)[1];
    const ports = section.trim().split("\n").map((l) => Number(l.split(":")[1])).sort();
    expect(ports.length).toBe(2);
    const holders = c.nodes.map((n, i) => objectPath(c, i, oidHex(oid)) ? n.port : 0).filter((p) =>
      p
    ).sort();
    expect(ports).toEqual(holders);
    // the same answer from the ring dog and sheep share
    const vn = new Map<number, number>();
    for (const l of (await c.dogOk(["node", "list", "-r"])).trim().split("\n")) {
      const [, hp, v] = l.split(" ");
      vn.set(Number(hp.split(":")[1]), Number(v));
    }
    const ring = new Ring(
      c.nodes.map((n) =>
        makeNode("127.0.0.1", n.port, { zone: n.zone, nrVnodes: vn.get(n.port) ?? 128 })
      ),
    );
    expect(ring.placeObject(oid, 2).map((n) => n.port).sort()).toEqual(holders);
  });
});
