// Jepsen-style chaos run (issue 19): real sheep (local driver, copies=3, every store on its own
// small tmpfs), a workload writing to VDIs over NBD that records every acknowledged write and FLUSH,
// a seeded nemesis, and an oracle. The nemesis: kill -9 + restart, SIGSTOP/SIGCONT, a new sheep,
// kill -9 of the NBD gateway a client uses (the client reconnects to another sheep), a full disk
// (the tmpfs filled up), and EIO from a store (bytes of one replica's object file flipped behind
// its back, which its checksums turn into EIO; a tmpfs remounted read-only is refused with EBUSY
// while the store holds files open for writing, and would give EROFS anyway). At most copies-1
// sheep are down at once. Partitions need the zookeeper driver and network namespaces: they are
// tests/e2e/chaos-partition.test.ts, not part of this nemesis (the local driver shares files).
// SEED replays the fault schedule; the workload's timing (and so the interleaving) varies.
//
// The oracle works per 4 KiB block. One writer per VDI issues one request at a time, so for every
// block the value of the last acknowledged write is known, plus the writes sent after it that
// failed or timed out (they may or may not have landed). A read (during the run, and at the end
// through two other gateways and `dog vdi read`) returning anything else is a violation: a lost
// write or data older than an acknowledged write.
import { Buffer } from "node:buffer";
import { createHash, randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { freePort, TestCluster } from "./cluster.ts";
import { Rng } from "./fuzz.ts";
import { NbdCmd, NbdConn } from "./chaos-nbd.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
export const BLOCK = 4 * KiB;
const OBJ = 4 * MiB;
const COPIES = 3;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const hashOf = (b: Buffer) => createHash("sha1").update(b).digest("hex").slice(0, 16);
const ZERO = hashOf(Buffer.alloc(BLOCK));

export interface ChaosOpts {
  seed: number;
  events: number;
  sheep?: number;
  vdis?: number;
  vdiSize?: number;
  /** tmpfs size of each store, MiB. */
  diskMb?: number;
  log?: (line: string) => void;
}

export interface AckedWrite {
  vdi: number;
  offset: number;
  length: number;
  hash: string;
  sentAt: number;
  ackAt: number;
  gateway: number;
}

export interface ChaosResult {
  seed: number;
  events: string[];
  violations: string[];
  acked: AckedWrite[];
  flushes: number;
  /** Acknowledgement times of the FLUSHes (ms since the epoch). */
  flushAcks: number[];
  failedOps: number;
  reads: number;
  /** Sheep that exited without the nemesis killing them (restarted; not counted as violations). */
  unexpectedExits: string[];
}

interface BlockState {
  acked: string;
  pend: string[];
}

const mounts: string[] = [];

function unmountAll(): void {
  for (const m of mounts.splice(0)) {
    try {
      execFileSync("umount", ["-l", m]);
    } catch { /* already gone */ }
  }
}
process.on("exit", unmountAll);

/** Per-block history of one VDI: the last acknowledged value and later unacknowledged ones. */
export class Model {
  private blocks = new Map<number, BlockState>();
  get(b: number): BlockState {
    let s = this.blocks.get(b);
    if (!s) this.blocks.set(b, s = { acked: ZERO, pend: [] });
    return s;
  }
  /** A write of `data` at `offset` is about to be sent: its blocks may now hold it. */
  begin(offset: number, data: Buffer): string[] {
    const hs = [];
    for (let i = 0; i * BLOCK < data.length; i++) {
      const h = hashOf(data.subarray(i * BLOCK, (i + 1) * BLOCK));
      hs.push(h);
      this.get(offset / BLOCK + i).pend.push(h);
    }
    return hs;
  }
  /** ... and was acknowledged: nothing sent before it may show any more. */
  ack(offset: number, hs: string[]): void {
    for (let i = 0; i < hs.length; i++) {
      const st = this.get(offset / BLOCK + i);
      st.acked = hs[i];
      st.pend = [];
    }
  }
  /** Which block indices of `data` (read at `offset`) hold a value no history allows. */
  check(offset: number, data: Buffer): Array<{ block: number; got: string; want: BlockState }> {
    const bad = [];
    for (let i = 0; i * BLOCK < data.length; i++) {
      const b = offset / BLOCK + i;
      const got = hashOf(data.subarray(i * BLOCK, (i + 1) * BLOCK));
      const st = this.get(b);
      if (got !== st.acked && !st.pend.includes(got)) bad.push({ block: b, got, want: st });
    }
    return bad;
  }
}

export class ChaosRun {
  readonly rng: Rng;
  readonly t0 = Date.now();
  c!: TestCluster;
  readonly events: string[] = [];
  readonly violations: string[] = [];
  readonly acked: AckedWrite[] = [];
  readonly unexpectedExits: string[] = [];
  private models: Model[] = [];
  private conns: Array<{ conn: NbdConn; node: number } | null> = [];
  private stopped = new Set<number>(); // SIGSTOPped
  private down = new Set<number>(); // killed by the nemesis, not restarted yet
  private faulted = new Set<number>(); // any active fault on the node
  private expectedExit = new Set<number>();
  private running = true;
  flushes = 0;
  readonly flushAcks: number[] = [];
  failedOps = 0;
  reads = 0;
  private readonly nVdi: number;
  private readonly vdiSize: number;
  private readonly diskMb: number;
  private readonly say: (l: string) => void;

  constructor(readonly opts: ChaosOpts) {
    this.rng = new Rng(opts.seed);
    this.nVdi = opts.vdis ?? 2;
    this.vdiSize = opts.vdiSize ?? 16 * MiB;
    this.diskMb = opts.diskMb ?? 192;
    this.say = opts.log ?? ((l) => console.log(l));
  }

  private stamp(): string {
    return `+${((Date.now() - this.t0) / 1000).toFixed(1)}s`;
  }

  event(line: string): void {
    const l = `${this.stamp()} ${line}`;
    this.events.push(l);
    this.say(`[chaos ${this.opts.seed}] ${l}`);
  }

  violation(line: string): void {
    const l = `${this.stamp()} ${line}`;
    this.violations.push(l);
    this.say(`[chaos ${this.opts.seed}] VIOLATION ${l}`);
  }

  private async addSheep(): Promise<number> {
    const i = this.c.nodes.length;
    const dir = path.join(this.c.root, `n${i}`);
    fs.mkdirSync(dir, { recursive: true });
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${this.diskMb}m`, "tmpfs", dir]);
    mounts.push(dir);
    return await this.c.addNode({
      port: await freePort(),
      zone: i,
      dir,
      nbdPort: await freePort(),
      extra: ["-V", "64"],
    });
  }

  async setup(): Promise<void> {
    this.c = TestCluster.create();
    for (let i = 0; i < (this.opts.sheep ?? 5); i++) await this.addSheep();
    await this.c.waitFor(
      async () =>
        (await this.c.dogOk(["node", "list", "-r"])).trim().split("\n").length ===
          this.c.nodes.length,
      30_000,
      "all sheep to be members",
    );
    await this.c.dogOk(["cluster", "format", "-c", String(COPIES), "-V"]);
    await this.c.waitRunning();
    for (let v = 0; v < this.nVdi; v++) {
      await this.c.dogOk(["vdi", "create", `chaos${v}`, String(this.vdiSize)]);
      this.models.push(new Model());
      this.conns.push(null);
    }
  }

  /** Nodes a client may attach to now. */
  private usable(): number[] {
    return this.c.nodes.map((_, i) => i).filter((i) =>
      this.c.isRunning(i) && !this.stopped.has(i) && this.c.nodes[i].nbdPort !== undefined
    );
  }

  private async attach(v: number, avoid: number): Promise<void> {
    const cand = this.usable().filter((i) => i !== avoid);
    if (cand.length === 0) throw new Error("no usable gateway");
    // Not the nemesis's generator: attach times depend on timing, the fault schedule must not.
    const node = cand[Math.floor(Math.random() * cand.length)];
    const conn = await NbdConn.connect(this.c.nodes[node].nbdPort!, `chaos${v}`, 5_000);
    if (conn.readOnly) {
      // The VDI lock of the previous connection is not released yet.
      conn.close();
      throw new Error(`chaos${v} is read-only through sheep ${node}`);
    }
    this.conns[v] = { conn, node };
  }

  private async workload(v: number): Promise<void> {
    const m = this.models[v];
    let last = -1;
    while (this.running) {
      const cur = this.conns[v];
      if (!cur) {
        try {
          await this.attach(v, last);
        } catch {
          await sleep(300);
        }
        continue;
      }
      const op = Math.random();
      const timeout = 10_000;
      try {
        if (op < 0.85) {
          const nblk = 1 + Math.floor(Math.random() * 16);
          const obj = Math.floor(Math.random() * (this.vdiSize / OBJ));
          const first = Math.floor(Math.random() * (OBJ / BLOCK - nblk + 1));
          const offset = obj * OBJ + first * BLOCK;
          const data = randomBytes(nblk * BLOCK);
          const hs = m.begin(offset, data);
          const sentAt = Date.now();
          await cur.conn.request(NbdCmd.WRITE, offset, data.length, data, timeout);
          m.ack(offset, hs);
          this.acked.push({
            vdi: v,
            offset,
            length: data.length,
            hash: hashOf(data),
            sentAt,
            ackAt: Date.now(),
            gateway: cur.node,
          });
        } else if (op < 0.95) {
          const nblk = 1 + Math.floor(Math.random() * 32);
          const offset = Math.floor(Math.random() * (this.vdiSize / BLOCK - nblk + 1)) * BLOCK;
          const data = await cur.conn.request(NbdCmd.READ, offset, nblk * BLOCK, null, timeout);
          this.reads++;
          for (const b of m.check(offset, data)) {
            this.violation(
              `read of chaos${v} through sheep ${cur.node}: block ${b.block} (offset ${
                b.block * BLOCK
              }) is ${b.got}, acknowledged ${b.want.acked}` +
                (b.want.pend.length ? ` (or unacknowledged ${b.want.pend.join(",")})` : ""),
            );
          }
        } else {
          await cur.conn.request(NbdCmd.FLUSH, 0, 0, null, timeout);
          this.flushes++;
          this.flushAcks.push(Date.now());
        }
      } catch (e) {
        this.failedOps++;
        if (this.failedOps % 20 === 1) {
          this.event(`chaos${v} via sheep ${cur.node}: ${(e as Error).message} (reconnecting)`);
        }
        cur.conn.close();
        this.conns[v] = null;
        last = cur.node;
      }
    }
    this.conns[v]?.conn.close();
    this.conns[v] = null;
  }

  /** Restarts a node the nemesis did not kill but that exited (noted, not a violation). */
  private async reviveStray(): Promise<void> {
    for (let i = 0; i < this.c.nodes.length; i++) {
      if (this.c.isRunning(i) || this.down.has(i) || this.expectedExit.has(i)) continue;
      const st = await this.c.exitStatus(i);
      this.unexpectedExits.push(`sheep ${i} exited (${JSON.stringify(st)})`);
      this.event(`sheep ${i} exited on its own (${JSON.stringify(st)}): restarting`);
      await this.c.startNode(i, { waitNbd: false, timeoutMs: 30_000 }).catch((e) =>
        this.event(`restart of sheep ${i} failed: ${(e as Error).message.split("\n")[0]}`)
      );
    }
  }

  private candidates(): number[] {
    return this.c.nodes.map((_, i) => i).filter((i) => this.c.isRunning(i) && !this.faulted.has(i));
  }

  /** Injects one fault; returns its healing action (null for instant faults). */
  private async inject(): Promise<
    { what: string; node: number; heal: () => Promise<void> } | null
  > {
    const downNow = this.down.size + this.stopped.size;
    const kinds: string[] = ["fill", "eio"];
    if (downNow < COPIES - 1) kinds.push("kill", "kill", "stop", "gateway");
    // With the local driver a SIGSTOPped member is alive (its pid exists), so a join waits for it:
    // new sheep only while none is stopped.
    if (this.c.nodes.length < (this.opts.sheep ?? 5) + 2 && this.stopped.size === 0) {
      kinds.push("add");
    }
    const kind = kinds[this.rng.int(kinds.length)];
    const cand = this.candidates();
    if (kind !== "add" && cand.length === 0) return null;
    let node = cand[this.rng.int(cand.length)];
    switch (kind) {
      case "gateway":
      case "kill": {
        if (kind === "gateway") {
          const gws = this.conns.map((x) => x?.node).filter((n): n is number =>
            n !== undefined && cand.includes(n)
          );
          if (gws.length > 0) node = gws[this.rng.int(gws.length)];
        }
        this.down.add(node);
        this.faulted.add(node);
        await this.c.kill(node, "SIGKILL");
        this.event(`${kind === "gateway" ? "kill -9 NBD gateway" : "kill -9"} sheep ${node}`);
        return {
          what: `restart sheep ${node}`,
          node,
          heal: async () => {
            await this.c.startNode(node, { waitNbd: false, timeoutMs: 30_000 });
            this.down.delete(node);
          },
        };
      }
      case "stop": {
        this.stopped.add(node);
        this.faulted.add(node);
        this.c.nodes[node].proc?.kill("SIGSTOP");
        this.event(`SIGSTOP sheep ${node}`);
        return {
          what: `SIGCONT sheep ${node}`,
          node,
          heal: async () => {
            this.c.nodes[node].proc?.kill("SIGCONT");
            this.stopped.delete(node);
            await sleep(500);
          },
        };
      }
      case "add": {
        const i = await this.addSheep();
        this.event(`added sheep ${i}`);
        return null;
      }
      case "fill": {
        const dir = this.c.nodes[node].dir;
        const filler = path.join(dir, "filler");
        const free = Number(fs.statfsSync(dir).bavail) * Number(fs.statfsSync(dir).bsize);
        this.faulted.add(node);
        try {
          execFileSync("fallocate", ["-l", String(Math.max(0, free - 64 * KiB)), filler]);
        } catch { /* as full as it gets */ }
        this.event(`filled the disk of sheep ${node} (${(free / MiB).toFixed(0)} MiB)`);
        return {
          what: `freed the disk of sheep ${node}`,
          node,
          heal: () => {
            fs.rmSync(filler, { force: true });
            return Promise.resolve();
          },
        };
      }
      default: { // eio: one replica's bytes flipped; its checksums make the store answer EIO
        const objs = this.c.objectFiles(node).filter((n) => !n.startsWith("80"));
        if (objs.length === 0) return null;
        const name = objs[this.rng.int(objs.length)];
        const file = path.join(this.c.nodes[node].dir, "obj", name);
        try {
          const fd = fs.openSync(file, "r+");
          const size = fs.fstatSync(fd).size;
          const at = this.rng.int(Math.max(1, size - 64));
          const b = Buffer.alloc(64);
          fs.readSync(fd, b, 0, 64, at);
          for (let i = 0; i < 64; i++) b[i] ^= 0xa5;
          fs.writeSync(fd, b, 0, 64, at);
          fs.closeSync(fd);
          this.event(`corrupted ${name} on sheep ${node} at ${at} (its store answers EIO)`);
        } catch (e) {
          this.event(`corrupting ${name} on sheep ${node} failed: ${(e as Error).message}`);
        }
        return null;
      }
    }
  }

  async nemesis(): Promise<void> {
    const active: Array<{ what: string; node: number; heal: () => Promise<void> }> = [];
    const heal = async (k: number) => {
      const [f] = active.splice(k, 1);
      try {
        await f.heal();
        this.event(f.what);
      } catch (e) {
        this.event(`${f.what} failed: ${(e as Error).message.split("\n")[0]}`);
      }
      this.faulted.delete(f.node);
    };
    for (let e = 0; e < this.opts.events; e++) {
      await this.reviveStray();
      while (active.length >= 2 || (active.length > 0 && this.rng.chance(0.5))) {
        await heal(this.rng.int(active.length));
      }
      const f = await this.inject();
      if (f) active.push(f);
      await sleep(this.rng.range(1500, 4000));
    }
    while (active.length > 0) await heal(0);
    await this.reviveStray();
  }

  /** Every sheep up and a member, and no recovery in progress, three polls in a row. */
  async settle(timeoutMs = 180_000): Promise<void> {
    let quiet = 0;
    let last = "";
    await this.c.waitFor(
      async () => {
        for (let i = 0; i < this.c.nodes.length; i++) {
          if (!this.c.isRunning(i)) await this.c.startNode(i, { waitNbd: false });
        }
        const list = await this.c.dog(["node", "list", "-r"], { timeoutMs: 10_000 });
        const rec = await this.c.dog(["node", "recovery"], { timeoutMs: 10_000 });
        const ok = list.code === 0 &&
          list.stdout.toString().trim().split("\n").length === this.c.nodes.length &&
          rec.code === 0 && !/^\s*\d+\s+\S+:\d+/m.test(rec.stdout.toString());
        quiet = ok ? quiet + 1 : 0;
        last =
          `node list:\n${list.stdout}${list.stderr}\nnode recovery:\n${rec.stdout}${rec.stderr}`;
        if (quiet < 3) await sleep(1000);
        return quiet >= 3;
      },
      timeoutMs,
      "the cluster to settle (all members, no recovery)",
    ).catch((e) => {
      throw new Error(`${(e as Error).message}\n${last}`);
    });
  }

  private checkImage(v: number, how: string, data: Buffer): void {
    const bad = this.models[v].check(0, data);
    if (data.length !== this.vdiSize) {
      this.violation(`${how}: chaos${v} read ${data.length} bytes, want ${this.vdiSize}`);
    }
    for (const b of bad.slice(0, 3)) {
      const w = this.acked.findLast((a) =>
        a.vdi === v && a.offset <= b.block * BLOCK && a.offset + a.length > b.block * BLOCK
      );
      this.violation(
        `${how}: chaos${v} block ${b.block} (offset ${
          b.block * BLOCK
        }) is ${b.got}, want ${b.want.acked}` +
          (w
            ? ` (acknowledged ${w.offset}+${w.length} at +${
              ((w.ackAt - this.t0) / 1000).toFixed(1)
            }s via sheep ${w.gateway})`
            : " (never written: zeros)"),
      );
    }
    if (bad.length > 3) this.violation(`${how}: chaos${v}: ${bad.length - 3} more bad blocks`);
  }

  /** After the nemesis: every acknowledged write through two gateways and `dog vdi read`. */
  async verify(): Promise<void> {
    const nodes = this.usable();
    for (let v = 0; v < this.nVdi; v++) {
      for (const node of [nodes[v % nodes.length], nodes[(v + 2) % nodes.length]]) {
        const conn = await NbdConn.connect(this.c.nodes[node].nbdPort!, `chaos${v}`, 10_000);
        const parts = [];
        for (let off = 0; off < this.vdiSize; off += MiB) {
          parts.push(await conn.request(NbdCmd.READ, off, MiB, null, 30_000));
        }
        conn.close();
        this.checkImage(v, `NBD read through sheep ${node}`, Buffer.concat(parts));
      }
      const node = nodes[(v + 1) % nodes.length];
      const r = await this.c.dog(["vdi", "read", `chaos${v}`], { node, timeoutMs: 120_000 });
      if (r.code !== 0) this.violation(`dog vdi read chaos${v} on sheep ${node}: ${r.stderr}`);
      else this.checkImage(v, `dog vdi read on sheep ${node}`, r.stdout);
    }
  }

  async run(): Promise<ChaosResult> {
    try {
      await this.setup();
      this.event(`cluster: ${this.c.nodes.length} sheep, copies=${COPIES}, ${this.nVdi} VDIs`);
      const work = Array.from({ length: this.nVdi }, (_, v) => this.workload(v));
      await sleep(1000);
      await this.nemesis();
      await sleep(2000);
      this.running = false;
      await Promise.all(work);
      this.event(`nemesis over: ${this.acked.length} acknowledged writes, ${this.flushes} flushes`);
      await this.settle();
      this.event("recovery settled");
      await this.verify();
      this.event(`verified: ${this.violations.length} violations`);
    } finally {
      this.running = false;
      for (const i of this.stopped) this.c?.nodes[i]?.proc?.kill("SIGCONT");
      // The sheep logs live on the tmpfs stores: keep copies beside the harness logs (KEEP=1).
      for (const [i, n] of (this.c?.nodes ?? []).entries()) {
        try {
          fs.copyFileSync(
            path.join(n.dir, "sheep.log"),
            path.join(this.c.root, "logs", `sheep${i}.log`),
          );
        } catch { /* never started */ }
      }
      // Detached first, so the harness can remove the directories the mounts sat on.
      unmountAll();
      await this.c?.stop();
    }
    return {
      seed: this.opts.seed,
      events: this.events,
      violations: this.violations,
      acked: this.acked,
      flushes: this.flushes,
      flushAcks: this.flushAcks,
      failedOps: this.failedOps,
      reads: this.reads,
      unexpectedExits: this.unexpectedExits,
    };
  }
}

export function runChaos(opts: ChaosOpts): Promise<ChaosResult> {
  return new ChaosRun(opts).run();
}
