// Issue 14 acceptance: erasure-coded VDIs really stripe (strip i on the i-th node of the
// placement, ~1.5x the data for 4:2), survive two kill -9 with reads that reconstruct, and
// recovery rebuilds strips on the survivors and on new joiners as placement says.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import process from "node:process";
import { TestCluster } from "../lib/cluster.ts";
import { testWith } from "../lib/components.ts";
import { Ring } from "../../core/ring.ts";
import { makeNode } from "../../core/node.ts";
import { oidHex } from "../../core/oid.ts";
import { ErasureCode } from "../../core/ec.ts";
import { SheepClient } from "../../io/client.ts";
import { Flag, Header, Op, Res } from "../../core/proto.ts";

const MiB = 1024 * 1024;
const SIZE = Number(process.env.EC_TEST_MB ?? 256) * MiB;
const OBJ = 4 * MiB;
const nbdTest = testWith("nbd-clients");

async function vnodeCounts(c: TestCluster, alive: number[]): Promise<Map<number, number>> {
  const out = await c.dogOk(["node", "list", "-r"], { node: alive[0] });
  const m = new Map<number, number>();
  for (const line of out.trim().split("\n")) {
    const [, hp, vn] = line.split(" ");
    m.set(Number(hp.split(":")[1]), Number(vn));
  }
  return m;
}

/** Strip files (`%016x_%d`) per node: name -> size. */
function strips(c: TestCluster, i: number): Map<string, number> {
  const dir = path.join(c.nodes[i].dir, "obj");
  const m = new Map<string, number>();
  for (const f of fs.readdirSync(dir)) {
    if (/^[0-9a-f]{16}_\d+$/.test(f)) m.set(f, fs.statSync(path.join(dir, f)).size);
  }
  return m;
}

/**
 * Every data object of `vid` has strip k on the k-th node of the ring of `alive` (capped at the
 * zones), and nowhere else. Returns the differences.
 */
async function stripReport(c: TestCluster, alive: number[], n: number): Promise<string[]> {
  const vn = await vnodeCounts(c, alive);
  const ring = new Ring(
    alive.map((i) =>
      makeNode("127.0.0.1", c.nodes[i].port, {
        zone: c.nodes[i].zone,
        nrVnodes: vn.get(c.nodes[i].port) ?? 128,
      })
    ),
  );
  const have = new Map<string, number[]>(); // "oid_k" -> ports
  const oids = new Set<string>();
  for (const i of alive) {
    for (const name of strips(c, i).keys()) {
      const arr = have.get(name) ?? [];
      arr.push(c.nodes[i].port);
      have.set(name, arr);
      oids.add(name.split("_")[0]);
    }
  }
  const bad: string[] = [];
  for (const o of oids) {
    const place = ring.placeObject(BigInt("0x" + o), n);
    for (let k = 0; k < n; k++) {
      const want = k < place.length ? String(place[k].port) : "";
      const got = (have.get(`${o}_${k}`) ?? []).sort().join(",");
      if (want !== got) bad.push(`${oidHex(BigInt("0x" + o))}_${k}: want ${want} have ${got}`);
    }
  }
  return bad;
}

async function waitStrips(c: TestCluster, alive: number[], n: number, what: string) {
  let last: string[] = [];
  try {
    await c.waitFor(
      async () => (last = await stripReport(c, alive, n)).length === 0,
      180_000,
      what,
    );
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${last.slice(0, 10).join("\n")} (${last.length})`);
  }
}

async function readAll(c: TestCluster, name: string, size: number, node: number): Promise<Buffer> {
  const r = await c.dog(["vdi", "read", name, "0", String(size)], { node, timeoutMs: 300_000 });
  if (r.code !== 0) throw new Error(`vdi read failed: ${r.stderr}`);
  return r.stdout;
}

describe("6 nodes, 4:2", () => {
  let c: TestCluster;
  const data = randomBytes(SIZE);

  beforeAll(async () => {
    c = await TestCluster.start(6, { nbd: true, format: { copies: 3 } });
    await c.dogOk(["vdi", "create", "-c", "4:2", "v", "1G"]);
    await c.dogOk(["vdi", "write", "v", "0", String(SIZE)], { input: data, timeoutMs: 600_000 });
  }, 600_000);
  afterAll(async () => {
    await c?.stop();
  });

  test("vdi list shows the policy", async () => {
    const out = await c.dogOk(["vdi", "list", "-r"]);
    expect(out.split(" ")).toContain("4:2");
  });

  test("stores hold 1.5x the data, as strips of 1 MiB, strip k on the k-th placed node", async () => {
    let bytes = 0, files = 0;
    for (let i = 0; i < 6; i++) {
      for (const [name, size] of strips(c, i)) {
        expect(size).toBe(OBJ / 4);
        if (name.startsWith("00")) {
          bytes += size;
          files++;
        }
      }
      // no plain replica of a data object anywhere
      expect(c.objectFiles(i).filter((f) => /^00[0-9a-f]{14}$/.test(f))).toEqual([]);
    }
    expect(files).toBe((SIZE / OBJ) * 6);
    expect(bytes / SIZE).toBe(1.5);
    expect(await stripReport(c, [0, 1, 2, 3, 4, 5], 6)).toEqual([]);
  });

  test("strip files are the Reed-Solomon strips of the data", () => {
    const code = new ErasureCode(4, 2);
    const want = code.encodeObject(data.subarray(0, OBJ));
    const all = new Map<string, Buffer>();
    for (let i = 0; i < 6; i++) {
      for (const name of strips(c, i).keys()) {
        all.set(name, fs.readFileSync(path.join(c.nodes[i].dir, "obj", name)));
      }
    }
    const first = [...all.keys()].filter((n) => n.startsWith("00") && n.includes("00000000_"));
    expect(first.length).toBe(6);
    for (const name of first) {
      const k = Number(name.split("_")[1]);
      expect(Buffer.compare(all.get(name)!, want[k])).toBe(0);
    }
  });

  test("unaligned partial writes read back (read-modify-write of the stripes)", async () => {
    const patch = randomBytes(1500);
    await c.dogOk(["vdi", "write", "v", String(OBJ + 700), "1500"], { input: patch });
    patch.copy(data, OBJ + 700);
    const r = await c.dog(["vdi", "read", "v", String(OBJ), String(OBJ)]);
    expect(Buffer.compare(r.stdout, data.subarray(OBJ, 2 * OBJ))).toBe(0);
  });

  test("vdi check: clean, an inconsistent parity strip, a missing strip rebuilt", async () => {
    const clean = await c.dog(["vdi", "check", "v"], { timeoutMs: 300_000 });
    expect(clean.code).toBe(0);
    expect(clean.stdout.toString()).toContain("finish check&repair v");
    expect(clean.stdout.toString()).not.toContain("fixed");
    expect(clean.stderr).not.toContain("inconsistent");
    const where = (name: string) => [0, 1, 2, 3, 4, 5].find((i) => strips(c, i).has(name))!;
    // a flipped byte in a parity strip (in place: the sheep's open file sees it)
    const oid0 = [...strips(c, 0).keys(), ...strips(c, 1).keys()][0].split("_")[0];
    const pfile = path.join(c.nodes[where(`${oid0}_4`)].dir, "obj", `${oid0}_4`);
    const fd = fs.openSync(pfile, "r+");
    const one = Buffer.alloc(1);
    fs.readSync(fd, one, 0, 1, 100);
    fs.writeSync(fd, Buffer.from([one[0] ^ 0xff]), 0, 1, 100);
    const bad = await c.dog(["vdi", "check", "v"], { timeoutMs: 300_000 });
    expect(bad.stderr).toContain(`object ${oid0} is inconsistent`);
    fs.writeSync(fd, one, 0, 1, 100);
    fs.closeSync(fd);
    // strip 1 removed from its node
    const n1 = where(`${oid0}_1`);
    const file1 = path.join(c.nodes[n1].dir, "obj", `${oid0}_1`);
    const before = fs.readFileSync(file1);
    const cl = await SheepClient.connect("127.0.0.1", c.nodes[n1].port);
    const h = Header.req(Op.REMOVE_PEER, { flags: Flag.CMD_RECOVERY });
    h.oid = BigInt("0x" + oid0);
    h.ecIndex = 1;
    h.objCopyPolicy = 0x22;
    expect((await cl.request(h)).hdr.result).toBe(Res.SUCCESS);
    cl.close();
    expect(fs.existsSync(file1)).toBe(false);
    const fix = await c.dog(["vdi", "check", "v"], { timeoutMs: 300_000 });
    expect(fix.stdout.toString()).toContain(`fixed missing ${oid0}, copy index 1`);
    expect(fs.readFileSync(file1).equals(before)).toBe(true);
  }, 300_000);

  nbdTest("NBD serves an EC VDI: nbdcopy in and out, unaligned qemu-io writes", async () => {
    await c.dogOk(["vdi", "create", "-c", "4:2", "n", "64M"]);
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ec-nbd-"));
    try {
      const src = path.join(tmp, "src"), out = path.join(tmp, "out");
      const img = randomBytes(64 * MiB);
      fs.writeFileSync(src, img);
      const uri = (i: number) => `nbd://127.0.0.1:${c.nodes[i].nbdPort}/n`;
      const sh = (cmd: string, args: string[]) => {
        const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 120_000 });
        if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
        return r.stdout;
      };
      sh("nbdcopy", [src, uri(0)]);
      // bytes 1000..4999 and 9 MiB - 3 .. +7: inside a stripe and across an object boundary
      sh("qemu-io", ["-f", "raw", "-c", "write -P 0xab 1000 4000", uri(1)]);
      sh("qemu-io", ["-f", "raw", "-c", `write -P 0xcd ${8 * MiB - 3} 10`, uri(2)]);
      img.fill(0xab, 1000, 5000);
      img.fill(0xcd, 8 * MiB - 3, 8 * MiB + 7);
      sh("nbdcopy", [uri(3), out]);
      expect(Buffer.compare(fs.readFileSync(out), img)).toBe(0);
      const viaDog = await readAll(c, "n", 64 * MiB, 4);
      expect(Buffer.compare(viaDog, img)).toBe(0);
      await c.dogOk(["vdi", "delete", "n"]);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }, 300_000);

  test("kill -9 two nodes: every byte reads back", async () => {
    await c.kill(4);
    await c.kill(5);
    const got = await readAll(c, "v", SIZE, 0);
    expect(Buffer.compare(got, data)).toBe(0);
  }, 300_000);

  test("recovery: the 4 survivors hold strips 0-3 as the 4-zone placement says", async () => {
    await waitStrips(c, [0, 1, 2, 3], 6, "strips on 4 survivors");
    const got = await readAll(c, "v", SIZE, 2);
    expect(Buffer.compare(got, data)).toBe(0);
  }, 300_000);

  test("two new nodes: every object has its 6 strips again", async () => {
    const a = await c.addNode({ zone: 6 });
    const b = await c.addNode({ zone: 7 });
    const alive = [0, 1, 2, 3, a, b];
    await waitStrips(c, alive, 6, "6 strips on 6 nodes");
    // a new node's strips are right: read with two old nodes gone
    await c.kill(0);
    await c.kill(1);
    const got = await readAll(c, "v", SIZE, a);
    expect(Buffer.compare(got, data)).toBe(0);
  }, 400_000);

  test("the killed nodes come back: strips as placement says, stale strips purged", async () => {
    await c.startNode(0);
    await c.startNode(1);
    const alive = [0, 1, 2, 3, 6, 7];
    await waitStrips(c, alive, 6, "6 strips after two rejoins");
    const stale = (i: number) => {
      try {
        return fs.readdirSync(path.join(c.nodes[i].dir, "obj", ".stale")).length;
      } catch {
        return 0;
      }
    };
    await c.waitFor(async () => alive.every((i) => stale(i) === 0), 60_000, "stale purged");
    const got = await readAll(c, "v", SIZE, 1);
    expect(Buffer.compare(got, data)).toBe(0);
  }, 400_000);
});

describe("cluster default 2:1", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await TestCluster.start(3, { format: { copies: "2:1" } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test("a VDI created without -c is 2:1 and striped", async () => {
    await c.dogOk(["vdi", "create", "d", "16M"]);
    expect((await c.dogOk(["vdi", "list", "-r"])).split(" ")).toContain("2:1");
    const info = await c.dogOk(["cluster", "info", "-v"]);
    expect(info).toContain("2:1 redundancy policy");
    const d = randomBytes(8 * MiB);
    await c.dogOk(["vdi", "write", "d", "0"], { input: d });
    const names = [0, 1, 2].flatMap((i) => [...strips(c, i).keys()]).filter((n) =>
      n.startsWith("00")
    );
    expect(names.length).toBe(6); // 2 objects x 3 strips
    expect(names.every((n) => strips(c, 0).has(n) ? strips(c, 0).get(n) === OBJ / 2 : true)).toBe(
      true,
    );
    const r = await c.dog(["vdi", "read", "d", "0", String(8 * MiB)]);
    expect(Buffer.compare(r.stdout, d)).toBe(0);
    await c.dogOk(["vdi", "delete", "d"]);
    await c.waitFor(
      async () =>
        [0, 1, 2].every((i) => [...strips(c, i).keys()].every((n) => !n.startsWith("00"))),
      30_000,
      "strips removed with the VDI",
    );
  }, 120_000);
});

describe("snapshots and clones of an EC VDI (copy-on-write through strips)", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await TestCluster.start(3, { format: { copies: 2 } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test("snapshot, partial writes to the VDI and to a clone: each reads its own bytes", async () => {
    await c.dogOk(["vdi", "create", "-c", "2:1", "base", "16M"]);
    const a = randomBytes(8 * MiB);
    await c.dogOk(["vdi", "write", "base", "0"], { input: a });
    await c.dogOk(["vdi", "snapshot", "-s", "s1", "base"]);
    await c.dogOk(["vdi", "clone", "-s", "s1", "base", "cl"]);
    const p = randomBytes(1000);
    await c.dogOk(["vdi", "write", "base", "700", "1000"], { input: p });
    const q = randomBytes(3000);
    await c.dogOk(["vdi", "write", "cl", String(5 * MiB + 11), "3000"], { input: q });
    const read = async (args: string[]) => (await c.dog(["vdi", "read", ...args])).stdout;
    const snap = await read(["-s", "s1", "base", "0", String(8 * MiB)]);
    expect(Buffer.compare(snap, a)).toBe(0);
    const now = Buffer.from(a);
    p.copy(now, 700);
    expect(Buffer.compare(await read(["base", "0", String(8 * MiB)]), now)).toBe(0);
    const cl = Buffer.from(a);
    q.copy(cl, 5 * MiB + 11);
    expect(Buffer.compare(await read(["cl", "0", String(8 * MiB)]), cl)).toBe(0);
    expect((await c.dogOk(["vdi", "list", "-r", "cl"])).split(" ")).toContain("2:1");
  }, 120_000);
});

describe("bad input and too few zones", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await TestCluster.start(3, { format: { copies: 2 } });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test("-c 3:5 is upstream's invalid parameter", async () => {
    const r = await c.dog(["vdi", "create", "-c", "3:5", "x", "8M"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("Invalid parameter 3:5");
    expect(r.stderr).toContain("x(2,4,8,16)  - number of data strips");
  });

  test("4:2 on 3 zones: create works, writes fail with a system error (fewer zones than d)", async () => {
    await c.dogOk(["vdi", "create", "-c", "4:2", "w", "8M"]);
    const r = await c.dog(["vdi", "write", "w", "0", "4096"], { input: Buffer.alloc(4096, 1) });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("System error");
  });

  test(
    "2:1 on 3 zones is complete; on 2 zones only data strips are written, reads work",
    async () => {
      await c.dogOk(["vdi", "create", "-c", "2:1", "y", "8M"]);
      const d = randomBytes(2 * MiB);
      await c.dogOk(["vdi", "write", "y", "0"], { input: d });
      const total = [0, 1, 2].reduce((s, i) => s + strips(c, i).size, 0);
      expect(total).toBe(3);
      await c.kill(2);
      const d2 = randomBytes(MiB);
      await c.dogOk(["vdi", "write", "y", String(4 * MiB)], { input: d2 });
      const r = await c.dog(["vdi", "read", "y", "0", String(5 * MiB)]);
      expect(Buffer.compare(r.stdout.subarray(0, 2 * MiB), d)).toBe(0);
      expect(Buffer.compare(r.stdout.subarray(4 * MiB), d2)).toBe(0);
    },
    120_000,
  );
});
