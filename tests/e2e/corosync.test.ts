// The corosync membership driver against a real corosync 3 on 127.0.0.1: the appliance scenario,
// failures (kill -9 of a sheep, of its cpg-bridge, of corosync itself), concurrent cluster ops,
// and a clear startup error when corosync is not running.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { freePort, runDog, TestCluster } from "../lib/cluster.ts";
import { describeWith } from "../lib/components.ts";
import { type Corosync, corosyncReachable, startCorosync, uniqueGroup } from "../lib/corosync.ts";
import { createCorosyncDriver } from "../../drivers/corosync.ts";
import { cbor } from "../../core/cbor.ts";
import { makeNode, nodeHostPort, type SdNode } from "../../core/node.ts";

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Refuses to go on with a corosync that is not ours alone: these tests stop and kill it. */
const FOREIGN_COROSYNC = "stop it (e.g. `systemctl stop corosync`) and run corosync tests one " +
  "at a time (`flock /tmp/sheepdog-corosync.lock ...`), or set SHEEPDOG_SKIP=corosync";

/** Pids of the direct children of pid named comm (from /proc). */
function childrenNamed(pid: number, comm: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const st = fs.readFileSync(`/proc/${e}/stat`, "utf8");
      const close = st.lastIndexOf(")");
      const name = st.slice(st.indexOf("(") + 1, close);
      const ppid = Number(st.slice(close + 2).split(" ")[1]);
      if (ppid === pid && name === comm) out.push(Number(e));
    } catch { /* raced with exit */ }
  }
  return out;
}

/** Rows of `dog node list -r` ("idx ip:port vnodes zone") seen by node i. */
async function nodeList(c: TestCluster, i: number): Promise<string[]> {
  const out = await c.dogOk(["node", "list", "-r"], { node: i, timeoutMs: 15_000 });
  return out.trim().split("\n").filter((l) => l).map((l) => l.split(" ")[1]);
}

/** Latest epoch number in `dog cluster info -r` of node i (rows: "<time> <epoch> [nodes]"). */
async function epochOf(c: TestCluster, i: number): Promise<number> {
  const out = await c.dogOk(["cluster", "info", "-r"], { node: i, timeoutMs: 15_000 });
  const epochs = [...out.matchAll(/^-?\d+ (\d+) \[/gm)].map((m) => Number(m[1]));
  if (!epochs.length) throw new Error(`no epoch rows in: ${out}`);
  return Math.max(...epochs);
}

async function waitMembers(
  c: TestCluster,
  on: number[],
  expected: number[],
  what: string,
): Promise<void> {
  const want = expected.map((i) => `127.0.0.1:${c.nodes[i].port}`).sort();
  for (const i of on) {
    await c.waitFor(
      async () => {
        const have = (await nodeList(c, i)).sort();
        return JSON.stringify(have) === JSON.stringify(want);
      },
      30_000,
      `node ${i} to list ${what}`,
    );
  }
}

/** VDI id of each working VDI in `dog vdi list -r` of node i, by name. */
async function vdiIds(c: TestCluster, i: number): Promise<Map<string, number>> {
  const out = await c.dogOk(["vdi", "list", "-r"], { node: i });
  const m = new Map<string, number>();
  for (const l of out.trim().split("\n")) {
    const f = l.split(" ");
    if (f[0] === "=") m.set(f[1], parseInt(f[7], 16));
  }
  return m;
}

describeWith("corosync", "without corosync", () => {
  test("sheep -c corosync exits non-zero with a clear error within 10 s", async () => {
    // A corosync these helpers started for an earlier test file stops a second or two after it.
    for (let t = 0; corosyncReachable(); t++) {
      if (t >= 20) throw new Error(`a corosync is already running: ${FOREIGN_COROSYNC}`);
      await sleep(500);
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-nocs-"));
    try {
      const port = await freePort();
      const t0 = Date.now();
      const r = await runDog([
        "sheep",
        "-b",
        "127.0.0.1",
        "-p",
        String(port),
        "-c",
        "corosync",
        "-f",
        dir,
      ], {
        timeoutMs: 20_000,
      });
      const took = Date.now() - t0;
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/corosync/);
      expect(r.stderr).toMatch(/cannot connect to corosync|is it running/);
      expect(took).toBeLessThan(10_000);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);
});

describeWith("corosync", "3 sheep on corosync", () => {
  let cs: Corosync;
  let c: TestCluster;
  const data = randomBytes(12 * MiB + 4321);
  const off = 3 * MiB;

  beforeAll(async () => {
    cs = await startCorosync();
    c = await TestCluster.start(3, { driver: `corosync:${uniqueGroup()}` });
    // A sheep's port opens before it has joined: format only once all three are members, or dog
    // sees fewer zones than copies, asks for confirmation and (stdin empty) quietly gives up.
    await waitMembers(c, [0, 1, 2], [0, 1, 2], "3 members before format");
    await c.dogOk(["cluster", "format", "-c", "3"]);
    await c.waitRunning();
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
    await cs?.stop();
  });

  test("all three see the same membership and epoch 1", async () => {
    for (let i = 0; i < 3; i++) {
      expect((await nodeList(c, i)).length).toBe(3);
      expect(await epochOf(c, i)).toBe(1);
    }
    const info = await c.dogOk(["cluster", "info"], { node: 2 });
    expect(info.split("\n")[0]).toBe("Cluster status: running, auto-recovery enabled");
  });

  test("vdi create, write, read back byte for byte through every sheep", async () => {
    await c.dogOk(["vdi", "create", "alpha", "64M"], { node: 1 });
    await c.dogOk(["vdi", "write", "alpha", String(off), String(data.length)], { input: data });
    for (let i = 0; i < 3; i++) {
      const r = await c.dog(["vdi", "read", "alpha", String(off), String(data.length)], {
        node: i,
      });
      expect(r.code).toBe(0);
      expect(Buffer.compare(r.stdout, data)).toBe(0);
    }
  }, 120_000);

  test(
    "kill -9 of a sheep: survivors see the leave, new epoch, data reads; restart rejoins",
    async () => {
      const before = await epochOf(c, 0);
      await c.kill(2, "SIGKILL");
      await waitMembers(c, [0, 1], [0, 1], "2 members after the kill");
      await c.waitFor(
        async () => (await epochOf(c, 0)) === before + 1,
        30_000,
        "epoch +1 after the kill",
      );
      expect(await epochOf(c, 1)).toBe(before + 1);
      const info = await c.dogOk(["cluster", "info"]);
      const survivors = [c.nodes[0].port, c.nodes[1].port].sort((a, b) => a - b).map((p) =>
        `127.0.0.1:${p}:128`
      );
      expect(info).toContain(` ${before + 1} [${survivors.join(", ")}]`);
      const r = await c.dog(["vdi", "read", "alpha", String(off), String(data.length)], {
        node: 1,
      });
      expect(r.code).toBe(0);
      expect(Buffer.compare(r.stdout, data)).toBe(0);

      await c.startNode(2);
      await waitMembers(c, [0, 1, 2], [0, 1, 2], "3 members after the restart");
      await c.waitFor(
        async () => (await epochOf(c, 2)) === before + 2,
        30_000,
        "epoch +2 on the restarted sheep",
      );
      expect(await epochOf(c, 0)).toBe(before + 2);
      await c.waitRunning();
      const r2 = await c.dog(["vdi", "read", "alpha", String(off), String(data.length)], {
        node: 2,
      });
      expect(r2.code).toBe(0);
      expect(Buffer.compare(r2.stdout, data)).toBe(0);
    },
    120_000,
  );

  test("killing a sheep's cpg-bridge stops that sheep; the others see it leave", async () => {
    const pid = c.nodes[1].proc!.pid!;
    const bridges = childrenNamed(pid, "cpg-bridge");
    expect(bridges.length).toBe(1);
    const before = await epochOf(c, 0);
    process.kill(bridges[0], "SIGKILL");
    await c.waitFor(async () => !c.isRunning(1), 15_000, "sheep 1 to exit after losing its bridge");
    const st = await c.exitStatus(1);
    expect(st?.code).not.toBe(0);
    expect(c.logTail(1, 30)).toMatch(/membership lost: corosync driver: cpg-bridge exited/);
    await waitMembers(c, [0, 2], [0, 2], "2 members after the bridge died");
    await c.waitFor(
      async () => (await epochOf(c, 2)) === before + 1,
      30_000,
      "epoch +1 after the bridge died",
    );
    const r = await c.dog(["vdi", "read", "alpha", String(off), String(data.length)], { node: 2 });
    expect(Buffer.compare(r.stdout, data)).toBe(0);

    await c.startNode(1);
    await waitMembers(c, [0, 1, 2], [0, 1, 2], "3 members after restarting sheep 1");
    await c.waitRunning();
  }, 120_000);

  test("20 parallel creates of distinct names through different sheep all succeed", async () => {
    const names = Array.from({ length: 20 }, (_, i) => `par${i}`);
    const rs = await Promise.all(
      names.map((n, i) => c.dog(["vdi", "create", n, "8M"], { node: i % 3 })),
    );
    for (const [i, r] of rs.entries()) {
      expect({ name: names[i], code: r.code, err: r.stderr }).toEqual({
        name: names[i],
        code: 0,
        err: "",
      });
    }
    const lists = await Promise.all([0, 1, 2].map((i) => vdiIds(c, i)));
    const vids = names.map((n) => lists[0].get(n));
    expect(vids.every((v) => typeof v === "number" && v > 0)).toBe(true);
    expect(new Set(vids).size).toBe(20);
    for (const l of lists.slice(1)) for (const n of names) expect(l.get(n)).toBe(lists[0].get(n));
  }, 180_000);

  test("10 parallel creates of one name succeed exactly once", async () => {
    const rs = await Promise.all(
      Array.from({ length: 10 }, (_, i) => c.dog(["vdi", "create", "same", "8M"], { node: i % 3 })),
    );
    expect(rs.filter((r) => r.code === 0).length).toBe(1);
    for (const r of rs.filter((r) => r.code !== 0)) expect(r.stderr).toMatch(/exist/i);
    for (let i = 0; i < 3; i++) expect((await vdiIds(c, i)).has("same")).toBe(true);
  }, 180_000);

  test("corosync going away stops every sheep", async () => {
    if (cs.pid === null || cs.otherUsers() > 0) {
      throw new Error(
        `corosync is not ours alone (foreign, or another test uses it): ${FOREIGN_COROSYNC}`,
      );
    }
    await cs.stop();
    for (let i = 0; i < 3; i++) {
      await c.waitFor(
        async () => !c.isRunning(i),
        30_000,
        `sheep ${i} to exit after corosync stopped`,
      );
      expect((await c.exitStatus(i))?.code).not.toBe(0);
      expect(c.logTail(i, 30)).toMatch(/membership lost/);
    }
  }, 90_000);
});

// ---------------------------------------------------------------------------------------------
// The driver's state machine against a simulated CPG: drivers in this process, fed the bridge's
// frames by a fake bus that delivers every event to the current group members in one total
// order. Handlers take random time, so members lag each other as real sheep do. This reaches the
// races real runs rarely hit: concurrent founders, the master dying with a JOIN pending,
// partitions, joins in the middle of block/unblock traffic.

interface SimNode {
  key: string;
  hp: string;
  node: SdNode;
  // deno-lint-ignore no-explicit-any
  d: any;
  log: string[];
  accepted: boolean;
  alive: boolean;
  fatal: string | null;
  rejected: boolean;
  /** Replaces the multicast of one message (e.g. to die instead of sending a decision). */
  intercept?: (m: { t: string }) => boolean;
}

class FakeCpg {
  group: SimNode[] = [];
  private q: Array<() => void> = [];
  private pid = 100;
  private port = 7000;
  unblocks = 0;

  private static frame(type: number, body: Buffer): Buffer {
    const h = Buffer.alloc(5);
    h.writeUInt32LE(body.length + 1);
    h[4] = type;
    return Buffer.concat([h, body]);
  }

  private static ids(key: string): Buffer {
    const [n, p] = key.split(":").map(Number);
    const b = Buffer.alloc(8);
    b.writeUInt32LE(n);
    b.writeUInt32LE(p, 4);
    return b;
  }

  enqueue(f: () => void): void {
    this.q.push(f);
  }

  /** A new sheep whose bridge has connected but not yet joined the group. */
  create(port?: number): SimNode {
    const key = `1:${this.pid++}`;
    const node = makeNode("127.0.0.1", port ?? this.port++);
    const d = createCorosyncDriver("sim");
    const s: SimNode = {
      key,
      hp: nodeHostPort(node),
      node,
      d,
      log: [],
      accepted: false,
      alive: true,
      fatal: null,
      rejected: false,
    };
    s.d.send = (m: { t: string }) => {
      if (!s.alive) return;
      if (s.intercept && s.intercept(m)) return;
      const body = Buffer.from(cbor.encode(m));
      this.enqueue(() => {
        if (!this.group.includes(s)) return; // sent after it left: never delivered
        const f = FakeCpg.frame(3, Buffer.concat([FakeCpg.ids(s.key), body]));
        for (const x of [...this.group]) x.d.onData(f);
      });
    };
    s.d.handlers = this.handlers(s);
    s.d.onData(FakeCpg.frame(1, FakeCpg.ids(key)));
    return s;
  }

  private confchg(joined: SimNode[], left: SimNode[]): void {
    const list = (l: SimNode[], reason: number) =>
      l.map((x) => Buffer.concat([FakeCpg.ids(x.key), Buffer.from([reason, 0, 0, 0])]));
    const head = Buffer.alloc(12);
    head.writeUInt32LE(this.group.length);
    head.writeUInt32LE(left.length, 4);
    head.writeUInt32LE(joined.length, 8);
    const f = FakeCpg.frame(
      2,
      Buffer.concat([head, ...list(this.group, 0), ...list(left, 5), ...list(joined, 1)]),
    );
    for (const x of [...this.group]) x.d.onData(f);
  }

  /** The sheep join the CPG group in one configuration change, then call join(). */
  join(...ss: SimNode[]): void {
    this.enqueue(() => {
      this.group.push(...ss);
      this.confchg(ss, []);
    });
    for (const s of ss) void s.d.join(s.node, Buffer.from(`cinfo ${s.hp}`));
  }

  /** The sheep die (their bridges leave) in one configuration change. */
  kill(...ss: SimNode[]): void {
    this.enqueue(() => this.killNow(...ss));
  }

  killNow(...ss: SimNode[]): void {
    for (const s of ss) {
      s.alive = false;
      s.d.closed = true;
    }
    this.group = this.group.filter((x) => !ss.includes(x));
    this.confchg([], ss);
  }

  private handlers(s: SimNode) {
    const jitter = () => new Promise<void>((r) => setTimeout(r, Math.floor(Math.random() * 3)));
    const names = (ms: SdNode[]) => ms.map((m) => nodeHostPort(m)).join(",");
    return {
      join: (_j: SdNode, _m: SdNode[], opaque: Buffer) => ({ accept: true, opaque }),
      accept: async (joined: SdNode, members: SdNode[], opaque: Buffer) => {
        await jitter();
        s.log.push(`accept ${nodeHostPort(joined)} [${names(members)}] ${opaque.toString()}`);
        if (nodeHostPort(joined) === s.hp) s.accepted = true;
      },
      rejected: () => {
        s.rejected = true;
      },
      leave: async (left: SdNode, members: SdNode[]) => {
        await jitter();
        s.log.push(`leave ${nodeHostPort(left)} [${names(members)}]`);
      },
      notify: async (sender: SdNode, msg: Buffer) => {
        await jitter();
        s.log.push(`notify ${nodeHostPort(sender)} ${msg.toString()}`);
      },
      block: (sender: SdNode) => {
        s.log.push(`block ${nodeHostPort(sender)}`);
        if (nodeHostPort(sender) !== s.hp) return false;
        setTimeout(
          () => void s.d.unblock(Buffer.from(`unblock ${this.unblocks++}`)),
          Math.floor(Math.random() * 4),
        );
        return true;
      },
      updateNode: async (node: SdNode, members: SdNode[]) => {
        await jitter();
        s.log.push(`update ${nodeHostPort(node)} [${names(members)}]`);
      },
      fatal: (reason: string) => {
        s.fatal = reason;
      },
    };
  }

  /** Delivers queued events one per macrotask until nothing happens for a while. */
  async settle(): Promise<void> {
    let idle = 0;
    while (idle < 25) {
      const f = this.q.shift();
      if (f) {
        idle = 0;
        f();
      } else idle++;
      await new Promise((r) => setTimeout(r, f ? 0 : 2));
    }
  }
}

/** Every accepted node's log, from its own accept on, is what every other node logged from there. */
function expectConsistent(nodes: SimNode[]): void {
  for (const a of nodes) {
    if (!a.accepted) continue;
    expect(a.log[0]?.startsWith(`accept ${a.hp} `)).toBe(true);
    for (const b of nodes) {
      if (!b.accepted || a === b) continue;
      const at = b.log.indexOf(a.log[0]);
      if (at < 0) continue; // b had left or died before a joined
      const n = Math.min(a.log.length, b.log.length - at);
      expect({ pair: `${b.hp} vs ${a.hp}`, log: b.log.slice(at, at + n) }).toEqual({
        pair: `${b.hp} vs ${a.hp}`,
        log: a.log.slice(0, n),
      });
    }
  }
}

describe("corosync driver state machine (simulated CPG)", () => {
  test("concurrent starters: one founder, everyone accepted, one event order", async () => {
    for (let round = 0; round < 10; round++) {
      const cpg = new FakeCpg();
      const [a, b, c2, d] = [cpg.create(), cpg.create(), cpg.create(), cpg.create()];
      cpg.join(a);
      cpg.join(b);
      cpg.join(c2, d);
      await cpg.settle();
      for (const s of [a, b, c2, d]) {
        expect({ hp: s.hp, accepted: s.accepted }).toEqual({ hp: s.hp, accepted: true });
      }
      const founders = [a, b, c2, d].filter((s) => /^accept \S+ \[[^,]+\]/.test(s.log[0]));
      expect(founders.length).toBe(1);
      expectConsistent([a, b, c2, d]);
      const last = a.log.filter((l) => l.startsWith("accept ")).at(-1)!;
      expect(last.split(" ")[2].split(",").length).toBe(4);
    }
  }, 60_000);

  test("a late starter is decided by the running cluster, not by itself", async () => {
    const cpg = new FakeCpg();
    const [a, b] = [cpg.create(), cpg.create()];
    cpg.join(a);
    await cpg.settle();
    cpg.join(b);
    await cpg.settle();
    expect(b.log[0]).toBe(`accept ${b.hp} [${a.hp},${b.hp}] cinfo ${b.hp}`);
    expectConsistent([a, b]);
  });

  test("the master dies with a JOIN pending: the next member decides it", async () => {
    const cpg = new FakeCpg();
    const ss = [cpg.create(), cpg.create(), cpg.create(), cpg.create()];
    for (const s of ss) {
      cpg.join(s);
      await cpg.settle();
    }
    const [master] = ss;
    master.intercept = (m) => {
      if (m.t !== "decision") return false;
      cpg.killNow(master); // dies instead of multicasting the decision
      return true;
    };
    const e = cpg.create();
    cpg.join(e);
    await cpg.settle();
    expect(master.alive).toBe(false);
    expect(e.accepted).toBe(true);
    expect(e.log[0]).toBe(
      `accept ${e.hp} [${ss.map((s) => s.hp).join(",")},${e.hp}] cinfo ${e.hp}`,
    );
    expect(e.log[1]).toBe(`leave ${master.hp} [${[...ss.slice(1), e].map((s) => s.hp).join(",")}]`);
    for (const s of ss.slice(1)) expect(s.fatal).toBeNull();
    expectConsistent([...ss, e]);
  });

  test("a configuration change that removes a majority stops the survivors", async () => {
    const cpg = new FakeCpg();
    const ss = Array.from({ length: 5 }, () => cpg.create());
    for (const s of ss) {
      cpg.join(s);
      await cpg.settle();
    }
    cpg.kill(ss[0]); // one of five: a failure, not a partition
    await cpg.settle();
    for (const s of ss.slice(1)) expect(s.fatal).toBeNull();
    cpg.kill(ss[1], ss[2]); // two of four at once: no majority left
    await cpg.settle();
    for (const s of ss.slice(3)) {
      expect(s.fatal).toMatch(/network partition/);
      expect(s.log.at(-1)).toMatch(/^leave .*\[/); // the earlier single failure, not these
      expect(s.log.some((l) => l.startsWith(`leave ${ss[1].hp}`))).toBe(false);
    }
  });

  test(
    "block/unblock from every member, with a sheep joining midway: one order, each once",
    async () => {
      for (let round = 0; round < 5; round++) {
        const cpg = new FakeCpg();
        const ss = [cpg.create(), cpg.create(), cpg.create()];
        for (const s of ss) {
          cpg.join(s);
          await cpg.settle();
        }
        for (let i = 0; i < 3; i++) for (const s of ss) void s.d.block();
        const late = cpg.create();
        cpg.join(late);
        for (let i = 0; i < 2; i++) void ss[i].d.notify(Buffer.from(`n${i}`));
        await cpg.settle();
        for (let i = 0; i < 2; i++) void late.d.block();
        await cpg.settle();
        expect(late.accepted).toBe(true);
        const all = [...ss, late];
        expectConsistent(all);
        const unblocks = ss[0].log.filter((l) =>
          l.startsWith("notify ") && l.includes(" unblock ")
        );
        expect(unblocks.length).toBe(11);
        expect(new Set(unblocks.map((l) => l.split(" ").at(-1))).size).toBe(11);
        for (const s of all) expect(s.d.engine.blocks.length).toBe(0);
      }
    },
    60_000,
  );

  test(
    "random joins, deaths, notifies and blocks: survivors agree on order and membership",
    async () => {
      for (let round = 0; round < 20; round++) {
        const cpg = new FakeCpg();
        const all: SimNode[] = [];
        for (let step = 0; step < 14; step++) {
          const alive = all.filter((s) => s.alive);
          const r = Math.random();
          if (r < 0.35 || alive.length < 2) {
            const s = cpg.create();
            all.push(s);
            cpg.join(s);
          } else if (r < 0.5 && alive.length > 3) {
            cpg.kill(alive[Math.floor(Math.random() * alive.length)]);
          } else {
            const s = alive[Math.floor(Math.random() * alive.length)];
            if (s.accepted) {
              void (r < 0.75 ? s.d.notify(Buffer.from(`r${round}s${step}`)) : s.d.block());
            }
          }
          if (Math.random() < 0.5) await cpg.settle();
        }
        await cpg.settle();
        const alive = all.filter((s) => s.alive);
        for (const s of alive) {
          expect({ hp: s.hp, accepted: s.accepted, fatal: s.fatal }).toEqual({
            hp: s.hp,
            accepted: true,
            fatal: null,
          });
        }
        expectConsistent(all);
        const want = alive.map((s) => s.hp).sort();
        for (const s of alive) {
          expect(s.d.members.map((m: { key: string }) => m.key).sort()).toEqual(
            alive.map((x) => x.key).sort(),
          );
        }
        expect(want.length).toBe(alive.length);
      }
    },
    120_000,
  );

  test("a restarted sheep (same address, new bridge) replaces its old incarnation", async () => {
    const cpg = new FakeCpg();
    const [a, b] = [cpg.create(), cpg.create()];
    cpg.join(a);
    await cpg.settle();
    cpg.join(b);
    await cpg.settle();
    // b's old bridge is still in the group when the new one joins (its death not yet noticed).
    b.alive = false;
    b.d.closed = true;
    const b2 = cpg.create(b.node.port);
    cpg.join(b2);
    await cpg.settle();
    expect(b2.accepted).toBe(true);
    expect(a.log.slice(-2)).toEqual([
      `leave ${b.hp} [${a.hp}]`,
      `accept ${b.hp} [${a.hp},${b.hp}] cinfo ${b.hp}`,
    ]);
    cpg.kill(b); // the old bridge's leave arrives late: nothing more happens
    await cpg.settle();
    expect(a.log.length).toBe(4);
    expectConsistent([a, b2]);
  });
});
