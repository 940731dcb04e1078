// The object cache's push of several dirty runs of one object (Gateway.writeRuns): every replica
// fdatasyncs once per object, not once per run, and when the push returns every run is on disk on
// every replica (checked by cutting the power with the test-only shim, io/powerloss-store.ts,
// over three real file stores served by the real peer ops). A client cannot set CMD_NOSYNC, and
// with a journal (-j) the unsynced records are covered by the last one's sync.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { openStore } from "../../io/store.ts";
import { Journal } from "../../io/journal.ts";
import { PowerLossLog } from "../../io/powerloss-store.ts";
import { Gateway, type GatewayContext } from "../../sheep/gateway.ts";
import { type PeerContext, PeerOps } from "../../sheep/ops/peer.ts";
import { makeNode, type SdNode } from "../../core/node.ts";
import { Ring } from "../../core/ring.ts";
import { Flag, Header, Op, Res } from "../../core/proto.ts";
import type { ObjectStore } from "../../core/store.ts";
import type { ClientPool } from "../../io/client.ts";

const OBJ = 4 * 1024 * 1024;
const OID = 0x00e33dea00000007n;
const nodes = [0, 1, 2].map((i) => makeNode("127.0.0.1", 7100 + i, { zone: i, nrVnodes: 64 }));
let shim: PowerLossLog | null = null;
const dirs: string[] = [];
let syncs = 0;
let realFdatasync: typeof fs.fdatasync | null = null;

function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-push-sync-"));
  dirs.push(d);
  return d;
}

/** The shim over `root`, with every fdatasync counted. */
function cutter(root: string): PowerLossLog {
  shim = new PowerLossLog([root]);
  shim.install();
  realFdatasync = fs.fdatasync;
  const inner = realFdatasync;
  fs.fdatasync = ((fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => {
    syncs++;
    inner(fd, cb);
  }) as typeof fs.fdatasync;
  return shim;
}

afterEach(() => {
  if (realFdatasync) fs.fdatasync = realFdatasync;
  realFdatasync = null;
  shim?.uninstall();
  shim = null;
  syncs = 0;
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/**
 * Three nodes, each a real store behind the real peer ops, under the power-loss shim of a new
 * temp root; node 0 is the gateway. The object is created on all three; `seen` and `syncs`
 * start counting after that. `oldPeers`: the replicas answer WRITE_RUNS_PEER as a sheep
 * without it does (no table row: INVALID_PARMS).
 */
async function cluster(oldPeers = false) {
  const root = tempDir();
  cutter(root);
  let epoch = 1;
  const ring = new Ring(nodes);
  const stores: ObjectStore[] = [];
  const seen: Array<{ port: number; nosync: boolean; runs?: boolean }> = [];
  const peers = new Map<number, PeerOps>();
  const refused = { n: 0 };
  for (const n of nodes) {
    const d = path.join(root, String(n.port));
    fs.mkdirSync(d, { recursive: true });
    const store = openStore("plain", [d]);
    await store.init();
    stores.push(store);
    const ctx = {
      opts: { gateway: false },
      get state() {
        return { epoch };
      },
      store,
      recovery: { ensure: () => Promise.resolve() },
      ring,
      me: n,
      log: { info() {}, warn() {}, err() {}, debug() {} },
      waitEpoch: () => Promise.resolve(),
      ecPolicyOf: () => 0,
      storedSize: () => OBJ,
      copiesFor: () => 3,
    } as unknown as PeerContext;
    peers.set(n.port, new PeerOps(ctx));
  }
  const handle = (n: SdNode, hdr: Header, data: Buffer) => {
    if (hdr.opcode === Op.WRITE_RUNS_PEER && oldPeers) {
      refused.n++;
      const rsp = new Header();
      rsp.result = Res.INVALID_PARMS;
      return Promise.resolve({ hdr: rsp, data: Buffer.alloc(0) });
    }
    if (hdr.opcode === Op.WRITE_PEER || hdr.opcode === Op.WRITE_RUNS_PEER) {
      const runs = hdr.opcode === Op.WRITE_RUNS_PEER;
      seen.push({ port: n.port, nosync: !!(hdr.flags & Flag.CMD_NOSYNC), runs });
    }
    return peers.get(n.port)!.handle(hdr, data);
  };
  const ctx: GatewayContext = {
    me: nodes[0],
    epoch: () => epoch,
    ring: () => ring,
    waitEpoch: () => new Promise((r) => setTimeout(r, 5)),
    copiesFor: () => 3,
    strict: () => false,
    pool: {
      get: (_ip: string, port: number) =>
        Promise.resolve({
          request: (hdr: Header, data?: Buffer) =>
            handle(nodes.find((n) => n.port === port)!, hdr, data ?? Buffer.alloc(0)),
        }),
    } as unknown as ClientPool,
    local: { handlePeer: (hdr: Header, data: Buffer) => handle(nodes[0], hdr, data) },
  };
  const g = new Gateway(ctx);
  const base = randomBytes(OBJ);
  const ch = Header.req(Op.CREATE_AND_WRITE_OBJ, { flags: Flag.CMD_WRITE, dataLength: OBJ });
  ch.oid = OID;
  await g.writeAll(ch, base);
  seen.length = 0;
  syncs = 0;
  return {
    root,
    g,
    stores,
    seen,
    base,
    refused,
    bumpEpoch: () => epoch++,
  };
}

/** Runs of 4 KiB at scattered offsets, and `base` with them applied. */
function runsOver(base: Buffer, n: number) {
  const want = Buffer.from(base);
  const runs = Array.from({ length: n }, (_, i) => {
    const r = { off: (i * 37 + 3) * 4096 * 2, data: randomBytes(4096) };
    r.data.copy(want, r.off);
    return r;
  });
  return { runs, want };
}

function pushHeader(): Header {
  const h = Header.req(Op.WRITE_OBJ, { flags: Flag.CMD_WRITE });
  h.oid = OID;
  return h;
}

/** The power cut: what every replica's disk holds afterwards. */
async function afterCut(root: string): Promise<Buffer[]> {
  shim!.undoAll();
  if (realFdatasync) fs.fdatasync = realFdatasync;
  realFdatasync = null;
  shim!.uninstall();
  shim = null;
  const out: Buffer[] = [];
  for (const n of nodes) {
    const s = openStore("plain", [path.join(root, String(n.port))]);
    await s.init();
    out.push(await s.read(OID, 0, OBJ));
  }
  return out;
}

describe("push of several runs", () => {
  test("one request and one sync per replica, every run on disk everywhere when it returns", async () => {
    const c = await cluster();
    const { runs, want } = runsOver(c.base, 12);
    const replies = await c.g.writeRuns(pushHeader(), runs);
    expect(replies.map((r) => r.hdr.result)).toEqual([Res.SUCCESS]);
    for (const n of nodes) {
      const mine = c.seen.filter((s) => s.port === n.port);
      expect(mine).toEqual([{ port: n.port, nosync: false, runs: true }]);
    }
    // The object file, once per replica: its side file is covered by the disk's write-intent log
    // (io/csum-intent.ts), which marked the object at its create.
    expect(syncs).toBe(3);
    for (const disk of await afterCut(c.root)) expect(Buffer.compare(disk, want)).toBe(0);
  });

  test("replicas without WRITE_RUNS_PEER: run by run, still one sync per replica", async () => {
    const c = await cluster(true);
    const { runs, want } = runsOver(c.base, 12);
    const replies = await c.g.writeRuns(pushHeader(), runs);
    expect(replies.map((r) => r.hdr.result)).toEqual(runs.map(() => Res.SUCCESS));
    // 11 unsynced runs and the synced last one on each replica.
    for (const n of nodes) {
      const mine = c.seen.filter((s) => s.port === n.port);
      expect(mine.length).toBe(12);
      expect(mine.filter((s) => s.nosync).length).toBe(11);
      expect(mine[mine.length - 1].nosync).toBe(false);
    }
    // The object file, once per replica (12 runs used to cost 72): its side file is covered by
    // the disk's write-intent log (io/csum-intent.ts), which marked the object at its create.
    expect(syncs).toBe(3);
    for (const disk of await afterCut(c.root)) expect(Buffer.compare(disk, want)).toBe(0);
    // Refused once per epoch: the next push of the epoch goes run by run at once; a new epoch
    // (an upgraded sheep rejoining) tries WRITE_RUNS_PEER again.
    const refusedOnce = c.refused.n;
    expect(refusedOnce).toBeGreaterThan(0);
    await c.g.writeRuns(pushHeader(), runsOver(c.base, 3).runs);
    expect(c.refused.n).toBe(refusedOnce);
    c.bumpEpoch();
    await c.g.writeRuns(pushHeader(), runsOver(c.base, 3).runs);
    expect(c.refused.n).toBeGreaterThan(refusedOnce);
  });

  test("a client's CMD_NOSYNC is cleared: its write is synced on every replica", async () => {
    const c = await cluster();
    const h = Header.req(Op.WRITE_OBJ, {
      flags: Flag.CMD_WRITE | Flag.CMD_NOSYNC,
      dataLength: 8192,
    });
    h.oid = OID;
    h.offset = 65536;
    const d = randomBytes(8192);
    await c.g.writeAll(h, d);
    expect(c.seen.length).toBe(3);
    expect(c.seen.every((s) => !s.nosync)).toBe(true);
    const want = Buffer.from(c.base);
    d.copy(want, 65536);
    for (const disk of await afterCut(c.root)) expect(Buffer.compare(disk, want)).toBe(0);
  });

  test("run by run: an epoch change during the push writes the unsynced runs again, synced", async () => {
    const c = await cluster(true);
    const { runs, want } = runsOver(c.base, 4);
    let n = 0;
    await c.g.writeRuns(pushHeader(), runs, async (f) => {
      const r = await f();
      // The refused WRITE_RUNS_PEER, then the 3 unsynced runs: bumped before the last is sent.
      if (++n === 4) c.bumpEpoch();
      return r;
    });
    // 3 unsynced + 1 synced, then the 3 again synced, on each of the 3 replicas.
    expect(c.seen.filter((s) => s.nosync).length).toBe(9);
    expect(c.seen.filter((s) => !s.nosync).length).toBe(12);
    for (const disk of await afterCut(c.root)) expect(Buffer.compare(disk, want)).toBe(0);
  });
});

describe("push of several runs with a journal", () => {
  let prevEnv: string | undefined;
  beforeAll(() => {
    prevEnv = process.env.SHEEPDOG_JOURNAL_CHECKPOINT_MS;
    process.env.SHEEPDOG_JOURNAL_CHECKPOINT_MS = "0"; // the records stay for replay
  });
  afterAll(() => {
    if (prevEnv === undefined) delete process.env.SHEEPDOG_JOURNAL_CHECKPOINT_MS;
    else process.env.SHEEPDOG_JOURNAL_CHECKPOINT_MS = prevEnv;
  });

  test("unsynced records are made durable by the next synced one and replayed", async () => {
    const root = tempDir();
    const disk = path.join(root, "obj"), jdir = path.join(root, "journal");
    fs.mkdirSync(disk);
    const log = { info() {}, warn() {}, err() {} };
    const open = async () => {
      const raw = openStore("plain", [disk]);
      await raw.init();
      const j = new Journal({ size: 64 << 20, dir: jdir, skip: false }, jdir, [disk], log, root);
      await j.open(raw);
      return { j, store: j.wrap(raw) };
    };
    cutter(root);
    const a = await open();
    const want = randomBytes(OBJ);
    await a.store.createAndWrite(OID, 0, want, OBJ);
    expect(shim!.describe().filter((l) => /^data .*journal_file/.test(l))).toEqual([]);
    const r1 = randomBytes(4096), r2 = randomBytes(4096);
    await a.store.write(OID, 8192, r1, undefined, true);
    // The unsynced record is still pending in the journal's page cache...
    expect(shim!.describe().some((l) => /^data .*journal_file/.test(l))).toBe(true);
    await a.store.write(OID, 65536, r2);
    // ...and the synced one after it covers it.
    expect(shim!.describe().filter((l) => /^data .*journal_file/.test(l))).toEqual([]);
    r1.copy(want, 8192);
    r2.copy(want, 65536);
    shim!.undoAll();
    if (realFdatasync) fs.fdatasync = realFdatasync;
    realFdatasync = null;
    shim!.uninstall();
    shim = null;
    const b = await open();
    expect(Buffer.compare(await b.store.read(OID, 0, OBJ), want)).toBe(0);
    await b.j.close();
  });
});
