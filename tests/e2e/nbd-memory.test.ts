// The NBD server in-process with MemoryExport devices, driven by Debian's real NBD clients
// (libnbd's nbdinfo/nbdcopy, qemu-img, qemu-io, fio's nbd engine) and by a raw-socket client
// for hostile and ordering cases the real clients never produce.
import { RawClient } from "../lib/nbd-raw-client.ts";
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  type ExportProvider,
  MemoryExport,
  type MemoryExportOptions,
  NbdOpenError,
} from "../../core/blockdev.ts";
import {
  ClientFlag,
  Cmd,
  CmdFlag,
  decodeChunkPayload,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
  Info,
  Opt,
  Rep,
  StateFlag,
  TxFlag,
} from "../../core/nbd.ts";
import { startNbdServer } from "../../sheep/nbd.ts";
import { testWith } from "../lib/components.ts";

const MiB = 1024 * 1024;
const DISK_SIZE = 64 * MiB;
/** Tests that drive the Debian NBD clients (the raw-protocol tests below need none). */
const clientTest = testWith("nbd-clients");

/** MemoryExport with optional delays and counters, to observe ordering and concurrency. */
class TestExport extends MemoryExport {
  writeDelay = 0;
  readDelay: (offset: number) => number = () => 0;
  events: string[] = [];
  activeReadBytes = 0;
  maxActiveReadBytes = 0;
  readsStarted = 0;

  constructor(name: string, size: number, opts: MemoryExportOptions = {}) {
    super(name, size, opts);
  }

  override async read(offset: number, length: number): Promise<Buffer> {
    this.readsStarted++;
    this.activeReadBytes += length;
    this.maxActiveReadBytes = Math.max(this.maxActiveReadBytes, this.activeReadBytes);
    try {
      const d = this.readDelay(offset);
      if (d) await sleep(d);
      return await super.read(offset, length);
    } finally {
      this.activeReadBytes -= length;
    }
  }

  override async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.events.push(`write-start ${offset}`);
    if (this.writeDelay) await sleep(this.writeDelay);
    await super.write(offset, data, fua);
    this.events.push(`write-done ${offset}`);
  }

  flushGate: Promise<void> | null = null;
  activeFlushes = 0;
  maxActiveFlushes = 0;

  override async flush(): Promise<void> {
    this.events.push("flush");
    this.activeFlushes++;
    this.maxActiveFlushes = Math.max(this.maxActiveFlushes, this.activeFlushes);
    try {
      if (this.flushGate) await this.flushGate;
      await super.flush();
    } finally {
      this.activeFlushes--;
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

const exports = new Map<string, TestExport>();
const opens = new Map<string, number>();
const provider: ExportProvider = {
  async list() {
    return [...exports.values()].map((e) => ({ name: e.name, description: e.description }));
  },
  async open(name) {
    if (name === "locked") throw new NbdOpenError("locked", "held by another client");
    if (name === "broken") throw new NbdOpenError("other", "backend unavailable");
    const e = exports.get(name);
    if (!e) throw new NbdOpenError("unknown", `no export named ${name}`);
    opens.set(name, (opens.get(name) ?? 0) + 1);
    return e;
  },
};

let port = 0;
let closeServer: () => Promise<void> = async () => {};
let tmp = "";
const logs: string[] = [];
const disk = () => exports.get("disk")!;

function addExport(name: string, size: number, opts: MemoryExportOptions = {}): TestExport {
  const e = new TestExport(name, size, opts);
  exports.set(name, e);
  return e;
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "nbd-e2e-"));
  addExport("disk", DISK_SIZE, { description: "scratch disk" });
  const snap = addExport("disk@snap", DISK_SIZE, {
    readOnly: true,
    description: "snapshot of disk",
  });
  const seed = Buffer.alloc(1 * MiB, 0x5a);
  // Fill the snapshot directly; its export is read-only to clients.
  snap.objects.set(1, Buffer.concat([seed, Buffer.alloc(3 * MiB)]));
  addExport("slow", 8 * MiB, { objectSize: 1 * MiB });
  addExport("small", 8 * MiB, { maxBlock: 1 * MiB, minBlock: 512 });
  const srv = await startNbdServer({
    host: "127.0.0.1",
    port: 0,
    provider,
    log: (m) => logs.push(m),
    maxInflightBytes: 4 * MiB,
  });
  port = srv.port;
  closeServer = srv.close;
});

afterAll(async () => {
  await closeServer();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

const uri = (name = "disk") => `nbd://127.0.0.1:${port}/${name}`;

function run(
  cmd: string,
  args: string[],
  timeoutMs = 60_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    // In the scratch directory: fio, for one, leaves state files in its working directory.
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], cwd: tmp });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    const t = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    p.on("error", reject);
    p.on("close", (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

function json(s: string): any {
  return JSON.parse(s.slice(s.search(/[{[]/)));
}

/** Waits until cond() holds (the server closes exports asynchronously after a disconnect). */
async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting for condition");
    await sleep(10);
  }
}

/** A sparse test image: random data in a few regions, zeroes elsewhere. */
function makeImage(file: string, seed: number): Buffer {
  const img = Buffer.alloc(DISK_SIZE);
  let s = seed;
  const fill = (off: number, len: number) => {
    for (let i = 0; i < len; i += 4) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      img.writeUInt32LE(s, off + i);
    }
  };
  fill(0, 3 * MiB);
  fill(20 * MiB + 4096, 1 * MiB);
  fill(DISK_SIZE - 2 * MiB, 2 * MiB);
  fs.writeFileSync(file, img);
  return img;
}

// ------------------------------------------------------------------------------ real clients

clientTest("nbdinfo shows the export and its flags", async () => {
  const r = await run("nbdinfo", ["--json", uri()]);
  expect(r.code).toBe(0);
  const e = json(r.stdout).exports[0];
  expect(e["export-name"]).toBe("disk");
  expect(e["export-size"]).toBe(DISK_SIZE);
  expect(e.description).toBe("scratch disk");
  expect(e.contexts).toContain("base:allocation");
  expect([
    e.is_read_only,
    e.can_flush,
    e.can_fua,
    e.can_trim,
    e.can_zero,
    e.can_fast_zero,
    e.can_multi_conn,
    e.can_df,
  ])
    .toEqual([false, true, true, true, true, true, true, true]);
  expect([e.block_size_minimum, e.block_size_preferred, e.block_size_maximum]).toEqual([
    1,
    4096,
    32 * MiB,
  ]);
  const ro = json((await run("nbdinfo", ["--json", uri("disk@snap")])).stdout).exports[0];
  expect([ro.is_read_only, ro.can_trim, ro.can_zero]).toEqual([true, false, false]);
});

clientTest("nbdinfo --list lists every export", async () => {
  const r = await run("nbdinfo", ["--list", "--json", `nbd://127.0.0.1:${port}`]);
  expect(r.code).toBe(0);
  const names = json(r.stdout).exports.map((e: { "export-name": string }) => e["export-name"])
    .sort();
  expect(names).toEqual(["disk", "disk@snap", "slow", "small"]);
});

clientTest("unknown, locked and broken exports are refused with an error", async () => {
  const unknown = await run("nbdinfo", [uri("nope")]);
  expect(unknown.code).not.toBe(0);
  expect(unknown.stderr).toMatch(/No such file|unknown/i);
  const locked = await run("nbdinfo", [uri("locked")]);
  expect(locked.code).not.toBe(0);
  expect(locked.stderr).toMatch(/not permitted|policy|locked/i);
  expect((await run("nbdinfo", [uri("broken")])).code).not.toBe(0);
});

clientTest("qemu-io writes and reads back a pattern across an object boundary", async () => {
  disk().objects.clear();
  const r = await run("qemu-io", [
    "-f",
    "raw",
    "-c",
    "write -P 0xab 4190000 10000",
    "-c",
    "read -P 0xab 4190000 10000",
    uri(),
  ]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  expect(r.stdout).toContain("wrote 10000/10000 bytes at offset 4190000");
  expect(r.stdout).toContain("read 10000/10000 bytes at offset 4190000");
  expect(r.stdout).not.toContain("Pattern verification failed");
  const back = await disk().read(4190000, 10000);
  expect(back.equals(Buffer.alloc(10000, 0xab))).toBe(true);
});

clientTest("nbdinfo --map reports data and holes by object", async () => {
  // State from the previous test: objects 0 and 1 (4 MiB each) hold data.
  const r = await run("nbdinfo", ["--map", "--json", uri()]);
  expect(r.code).toBe(0);
  expect(json(r.stdout)).toEqual([
    { offset: 0, length: 8 * MiB, type: 0, description: "data" },
    { offset: 8 * MiB, length: DISK_SIZE - 8 * MiB, type: 3, description: "hole,zero" },
  ]);
});

clientTest("qemu-img convert -n in and out, and qemu-img compare", async () => {
  const src = path.join(tmp, "src.raw");
  const out = path.join(tmp, "out.raw");
  const img = makeImage(src, 1);
  disk().objects.clear();
  await disk().write(30 * MiB, Buffer.alloc(4096, 0xee), false); // stale data that must be zeroed
  const up = await run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", src, uri()]);
  expect(up.stderr).toBe("");
  expect(up.code).toBe(0);
  const cmp = await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", src, uri()]);
  expect(cmp.stdout).toContain("Images are identical");
  expect(cmp.code).toBe(0);
  fs.writeFileSync(out, "");
  fs.truncateSync(out, DISK_SIZE);
  const down = await run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", uri(), out]);
  expect(down.code).toBe(0);
  expect(fs.readFileSync(out).equals(img)).toBe(true);
  // The zero regions did not need storage.
  expect(disk().allocatedBytes).toBeLessThan(DISK_SIZE / 2);
});

clientTest("nbdcopy in and out (multi-conn)", async () => {
  const src = path.join(tmp, "src2.raw");
  const out = path.join(tmp, "out2.raw");
  const img = makeImage(src, 2);
  const up = await run("nbdcopy", [src, uri()]);
  expect(up.stderr).toBe("");
  expect(up.code).toBe(0);
  expect((await disk().read(0, DISK_SIZE)).equals(img)).toBe(true);
  const down = await run("nbdcopy", [uri(), out]);
  expect(down.code).toBe(0);
  expect(fs.readFileSync(out).equals(img)).toBe(true);
});

clientTest("fio randrw with crc32c verification", async () => {
  const r = await run("fio", [
    "--name=nbdverify",
    "--ioengine=nbd",
    `--uri=${uri()}`,
    "--rw=randrw",
    "--bs=4k",
    "--iodepth=8",
    "--verify=crc32c",
    "--size=16m",
    "--runtime=5",
    "--output-format=json",
    "--verify_state_save=0",
  ]);
  expect(r.stderr).not.toMatch(/verify|error/i);
  expect(r.code).toBe(0);
  const job = json(r.stdout).jobs[0];
  expect(job.error).toBe(0);
  expect(job.write.io_bytes).toBeGreaterThan(0);
  expect(job.read.io_bytes).toBeGreaterThan(0);
}, 60_000);

clientTest("read-only export: reads work, writes are refused", async () => {
  const rd = await run("qemu-io", [
    "-r",
    "-f",
    "raw",
    "-c",
    `read -P 0x5a ${4 * MiB} ${1 * MiB}`,
    uri("disk@snap"),
  ]);
  expect(rd.code).toBe(0);
  expect(rd.stdout).not.toContain("Pattern verification failed");
  const wr = await run("qemu-io", ["-f", "raw", "-c", "write -P 1 0 4096", uri("disk@snap")]);
  expect(wr.code).not.toBe(0);
  // The server itself refuses, too, even when a client ignores the READ_ONLY flag.
  const c = await RawClient.open(port, "disk@snap");
  expect(c.txFlags & TxFlag.READ_ONLY).toBeTruthy();
  expect((await c.request(Cmd.WRITE, 0, 4096, 0, Buffer.alloc(4096, 1))).error).toBe(1); // EPERM
  expect((await c.request(Cmd.TRIM, 0, 4096)).error).toBe(1);
  expect((await c.request(Cmd.WRITE_ZEROES, 0, 4096)).error).toBe(1);
  await c.disconnect();
  expect((await exports.get("disk@snap")!.read(0, 4096)).equals(Buffer.alloc(4096))).toBe(true);
});

clientTest("a write past the end is refused", async () => {
  const q = await run("qemu-io", ["-f", "raw", "-c", `write -P 1 ${DISK_SIZE - 2048} 4096`, uri()]);
  expect(q.code).not.toBe(0);
  const c = await RawClient.open(port, "disk");
  expect((await c.request(Cmd.WRITE, DISK_SIZE - 2048, 4096, 0, Buffer.alloc(4096, 1))).error).toBe(
    28,
  ); // ENOSPC
  expect((await c.request(Cmd.WRITE_ZEROES, DISK_SIZE, 1)).error).toBe(28);
  expect((await c.request(Cmd.READ, DISK_SIZE - 1, 2)).error).toBe(22); // EINVAL
  expect((await c.request(Cmd.TRIM, 2 ** 60, 1)).error).toBe(22);
  expect((await c.request(Cmd.WRITE, DISK_SIZE - 1, 1, 0, Buffer.from([7]))).error).toBe(0);
  await c.disconnect();
});

// ------------------------------------------------------------------------------ raw protocol

async function serverStillWorks(): Promise<void> {
  const c = await RawClient.open(port, "disk");
  expect((await c.request(Cmd.READ, 0, 512)).error).toBe(0);
  await c.disconnect();
}

test("structured read sends holes as OFFSET_HOLE and data as OFFSET_DATA", async () => {
  const d = disk();
  d.objects.clear();
  await d.write(4 * MiB, Buffer.alloc(8192, 0x11), false); // object 1 allocated
  const c = await RawClient.open(port, "disk", { structured: true, meta: true });
  const { error, parts } = await c.request(Cmd.READ, 4 * MiB - 4096, 8192);
  expect(error).toBe(0);
  const decoded = parts.map((
    p,
  ) => (p.kind === "chunk" ? decodeChunkPayload(p.type, p.payload) : p));
  expect(decoded.map((x) => (x as { type: string }).type)).toEqual(["hole", "data"]);
  expect(decoded[0]).toEqual({ type: "hole", offset: 4 * MiB - 4096, size: 4096 });
  expect((decoded[1] as { data: Buffer }).data.equals(Buffer.alloc(4096, 0x11))).toBe(true);
  // DF asks for a single content chunk.
  const df = await c.request(Cmd.READ, 4 * MiB - 4096, 8192, CmdFlag.DF);
  expect(df.parts.length).toBe(1);
  // Block status, whole map and REQ_ONE.
  const bs = await c.request(Cmd.BLOCK_STATUS, 0, 12 * MiB);
  expect(
    decodeChunkPayload(
      (bs.parts[0] as { type: number }).type,
      (bs.parts[0] as { payload: Buffer }).payload,
    ),
  ).toEqual({
    type: "status",
    contextId: 1,
    extents: [
      { length: 4 * MiB, flags: StateFlag.HOLE | StateFlag.ZERO },
      { length: 4 * MiB, flags: 0 },
      { length: 4 * MiB, flags: StateFlag.HOLE | StateFlag.ZERO },
    ],
  });
  const one = await c.request(Cmd.BLOCK_STATUS, 1000, 12 * MiB, CmdFlag.REQ_ONE);
  expect(
    (decodeChunkPayload(5, (one.parts[0] as { payload: Buffer }).payload) as { extents: unknown[] })
      .extents,
  )
    .toEqual([{ length: 4 * MiB - 1000, flags: 3 }]);
  expect((await c.request(Cmd.BLOCK_STATUS, DISK_SIZE - 1, 2)).error).toBe(22);
  // Errors on reads are structured error chunks.
  const bad = await c.request(Cmd.READ, DISK_SIZE, 1);
  expect(bad.parts.length).toBe(1);
  expect(bad.error).toBe(22);
  await c.disconnect();
});

test("block status without a negotiated context, unknown commands and bad flags get EINVAL", async () => {
  const c = await RawClient.open(port, "disk");
  expect((await c.request(Cmd.BLOCK_STATUS, 0, 4096)).error).toBe(22);
  expect((await c.request(77, 0, 0)).error).toBe(22);
  expect((await c.request(Cmd.CACHE, 0, 4096)).error).toBe(22);
  expect((await c.request(Cmd.READ, 0, 4096, CmdFlag.DF)).error).toBe(22); // DF needs structured replies
  expect((await c.request(Cmd.WRITE, 0, 1, 0x100, Buffer.from([1]))).error).toBe(22);
  // The connection is still in sync afterwards.
  expect((await c.request(Cmd.READ, 0, 4096)).error).toBe(0);
  await c.disconnect();
});

test("oversized and misaligned requests get EINVAL and the stream stays in sync", async () => {
  const c = await RawClient.open(port, "small"); // maxBlock 1 MiB, minBlock 512
  expect((await c.request(Cmd.READ, 0, 2 * MiB)).error).toBe(22);
  expect((await c.request(Cmd.WRITE, 0, 2 * MiB, 0, Buffer.alloc(2 * MiB, 3))).error).toBe(22);
  expect((await c.request(Cmd.WRITE, 1, 512, 0, Buffer.alloc(512, 3))).error).toBe(22);
  expect((await c.request(Cmd.READ, 0, 100)).error).toBe(22);
  expect((await c.request(Cmd.WRITE, 512, 512, 0, Buffer.alloc(512, 4))).error).toBe(0);
  const r = await c.request(Cmd.READ, 0, 1024);
  expect((r.parts[0] as { data: Buffer }).data.subarray(512).equals(Buffer.alloc(512, 4))).toBe(
    true,
  );
  await c.disconnect();
});

test("hostile input closes only that connection", async () => {
  // Bad request magic.
  let c = await RawClient.open(port, "disk");
  const bad = encodeRequest({ type: Cmd.READ, handle: 1n, offset: 0, length: 512 });
  bad.writeUInt32BE(0xdeadbeef, 0);
  c.sock.write(bad);
  await c.closed;
  // A write whose payload could never be accepted.
  c = await RawClient.open(port, "disk");
  c.sock.write(encodeRequest({ type: Cmd.WRITE, handle: 1n, offset: 0, length: 0xffffffff }));
  await c.closed;
  // Bad option magic during the handshake.
  c = await RawClient.connect(port);
  await c.greeting();
  const opt = encodeOption(Opt.LIST);
  opt[0] ^= 1;
  c.sock.write(opt);
  await c.closed;
  // Unknown client flags.
  c = await RawClient.connect(port);
  await c.greeting(0x80);
  await c.closed;
  // Random garbage straight away.
  c = await RawClient.connect(port);
  c.sock.write(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10)));
  await c.closed;
  await serverStillWorks();
  expect(logs.some((l) => l.includes("bad request magic"))).toBe(true);
});

test("handshake: unknown options, oversized options, INFO, LIST, ABORT", async () => {
  const c = await RawClient.connect(port);
  await c.greeting();
  expect((await c.option(0x4242, Buffer.from("whatever"))).type).toBe(Rep.ERR_UNSUP);
  expect((await c.option(Opt.STARTTLS)).type).toBe(Rep.ERR_UNSUP);
  expect((await c.option(Opt.LIST, Buffer.from("x"))).type).toBe(Rep.ERR_INVALID);
  expect((await c.option(Opt.GO, Buffer.from([0, 0, 0, 9, 1]))).type).toBe(Rep.ERR_INVALID);
  expect(
    (await c.option(Opt.SET_META_CONTEXT, encodeMetaContextRequest("disk", ["base:allocation"])))
      .type,
  )
    .toBe(Rep.ERR_INVALID); // structured replies first
  expect((await c.option(Opt.INFO, Buffer.alloc(1 << 20))).type).toBe(Rep.ERR_TOO_BIG);
  const info = await c.optionAll(
    Opt.INFO,
    encodeInfoRequest("disk", [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE]),
  );
  expect(info[info.length - 1].type).toBe(Rep.ACK);
  const byType = new Map(
    info.filter((r) => r.type === Rep.INFO).map((r) => [r.data.readUInt16BE(0), r.data]),
  );
  expect(byType.get(Info.NAME)!.toString("utf8", 2)).toBe("disk");
  expect(byType.get(Info.DESCRIPTION)!.toString("utf8", 2)).toBe("scratch disk");
  expect(byType.get(Info.BLOCK_SIZE)!.readUInt32BE(10)).toBe(32 * MiB);
  const unknown = await c.optionAll(Opt.GO, encodeInfoRequest("nope"));
  expect(unknown.map((r) => r.type)).toEqual([Rep.ERR_UNKNOWN]);
  const locked = await c.optionAll(Opt.GO, encodeInfoRequest("locked"));
  expect(locked[0].type).toBe(Rep.ERR_POLICY);
  expect(locked[0].data.toString()).toContain("locked");
  const list = await c.optionAll(Opt.LIST);
  expect(list.filter((r) => r.type === Rep.SERVER).length).toBe(4);
  expect((await c.option(Opt.ABORT)).type).toBe(Rep.ACK);
  await c.closed;
});

test("NBD_OPT_EXPORT_NAME enters transmission; an unknown name drops the connection", async () => {
  let c = await RawClient.connect(port);
  await c.greeting(ClientFlag.FIXED_NEWSTYLE); // without NO_ZEROES: 124 zero bytes follow
  c.sock.write(encodeOption(Opt.EXPORT_NAME, Buffer.from("disk")));
  const r = await c.readExact(8 + 2 + 124);
  expect(Number(r.readBigUInt64BE(0))).toBe(DISK_SIZE);
  expect(r.readUInt16BE(8) & TxFlag.HAS_FLAGS).toBeTruthy();
  expect(r.subarray(10).equals(Buffer.alloc(124))).toBe(true);
  c.startTransmission();
  expect((await c.request(Cmd.READ, 0, 512)).error).toBe(0);
  await c.disconnect();
  c = await RawClient.connect(port);
  await c.greeting();
  c.sock.write(encodeOption(Opt.EXPORT_NAME, Buffer.from("nope")));
  await c.closed;
});

test("requests are answered out of order; FLUSH waits for earlier writes", async () => {
  const slow = exports.get("slow")!;
  slow.readDelay = (off) => (off === 0 ? 300 : 0);
  slow.writeDelay = 200;
  slow.events = [];
  const c = await RawClient.open(port, "slow");
  const a = c.send(Cmd.READ, 0, 4096);
  const b = c.send(Cmd.READ, 1 * MiB, 4096);
  const order: bigint[] = [];
  await Promise.all([a, b].map(async (h) => {
    await c.reply(h);
    order.push(h);
  }));
  expect(order).toEqual([b, a]);

  const w = c.send(Cmd.WRITE, 4096, 4096, 0, Buffer.alloc(4096, 9));
  const f = c.send(Cmd.FLUSH, 0, 0);
  const done: bigint[] = [];
  await Promise.all([w, f].map(async (h) => {
    await c.reply(h);
    done.push(h);
  }));
  expect(done).toEqual([w, f]);
  expect(slow.events).toEqual(["write-start 4096", "write-done 4096", "flush"]);
  slow.readDelay = () => 0;
  slow.writeDelay = 0;
  await c.disconnect();
});

test("in-flight bytes stay bounded when the client does not read replies", async () => {
  const slow = exports.get("slow")!;
  slow.maxActiveReadBytes = 0;
  slow.readsStarted = 0;
  slow.readDelay = () => 20; // reads overlap, so the budget is what limits them
  const c = await RawClient.open(port, "slow");
  c.sock.pause(); // stop reading replies
  const handles: bigint[] = [];
  for (let i = 0; i < 200; i++) handles.push(c.send(Cmd.READ, (i % 8) * MiB, 1 * MiB));
  await sleep(500);
  // 4 MiB budget (+ one request) and the socket buffer: far fewer than 200 reads started.
  expect(slow.maxActiveReadBytes).toBeLessThanOrEqual(5 * MiB);
  expect(slow.readsStarted).toBeLessThan(60);
  c.sock.resume();
  for (const h of handles) expect((await c.reply(h))[0].kind).toBe("simple");
  expect(slow.readsStarted).toBe(200);
  expect(slow.maxActiveReadBytes).toBeLessThanOrEqual(5 * MiB);
  slow.readDelay = () => 0;
  await c.disconnect();
});

test("a stuck backend and a flood of payload-less requests keep memory bounded", async () => {
  const slow = exports.get("slow")!;
  let release!: () => void;
  slow.flushGate = new Promise((r) => (release = r));
  slow.maxActiveFlushes = 0;
  const c = await RawClient.open(port, "slow");
  const handles: bigint[] = [];
  for (let i = 0; i < 5000; i++) handles.push(c.send(Cmd.FLUSH, 0, 0));
  await sleep(300);
  expect(slow.maxActiveFlushes).toBeLessThanOrEqual(1024);
  expect(slow.maxActiveFlushes).toBeGreaterThan(0);
  release();
  slow.flushGate = null;
  for (const h of handles) {
    expect((await c.reply(h))[0]).toMatchObject({ kind: "simple", error: 0 });
  }
  await c.disconnect();
});

test("DISC answers outstanding requests, then closes; export.close() runs once per connection", async () => {
  const slow = exports.get("slow")!;
  slow.writeDelay = 100;
  const before = slow.closeCount;
  const opened = opens.get("slow")!;
  const c = await RawClient.open(port, "slow");
  const w = c.send(Cmd.WRITE, 0, 4096, CmdFlag.FUA, Buffer.alloc(4096, 5));
  c.sock.write(encodeRequest({ type: Cmd.DISC, handle: 99n, offset: 0, length: 0 }));
  const parts = await c.reply(w);
  expect((parts[0] as { error: number }).error).toBe(0);
  await c.closed;
  await until(() => slow.closeCount === before + 1);
  expect(opens.get("slow")).toBe(opened + 1);

  // A client that vanishes in the middle of a write payload.
  const v = await RawClient.open(port, "slow");
  v.sock.write(
    encodeRequest({ type: Cmd.WRITE, handle: 1n, offset: 0, length: 65536 }, Buffer.alloc(1000))
      .subarray(0, 1028),
  );
  v.send(Cmd.WRITE, 8192, 4096, 0, Buffer.alloc(10)); // garbage from the server's view: part of the payload
  await sleep(50);
  v.sock.destroy();
  await until(() => slow.closeCount === before + 2);
  await sleep(200);
  expect(slow.closeCount).toBe(before + 2);
  slow.writeDelay = 0;
  await serverStillWorks();
});

test("server close() lets in-flight requests finish; idle handshakes time out", async () => {
  const srv2 = await startNbdServer({
    host: "127.0.0.1",
    port: 0,
    provider,
    handshakeTimeoutMs: 200,
  });
  const port1 = port;
  port = srv2.port; // RawClient connects to `port`
  try {
    const idle = await RawClient.connect(port);
    await idle.readExact(18);
    const t0 = Date.now();
    await idle.closed;
    expect(Date.now() - t0).toBeLessThan(2000);

    const slow = exports.get("slow")!;
    slow.writeDelay = 300;
    const before = slow.closeCount;
    const c = await RawClient.open(port, "slow");
    const w = c.send(Cmd.WRITE, 0, 4096, 0, Buffer.alloc(4096, 6));
    await sleep(50);
    const closing = srv2.close();
    expect((await c.reply(w))[0]).toMatchObject({ kind: "simple", error: 0 });
    await c.closed;
    await closing;
    expect(slow.closeCount).toBe(before + 1);
    slow.writeDelay = 0;
    await expect(RawClient.connect(port)).rejects.toThrow();
  } finally {
    port = port1;
  }
});

test("every connection opened so far closed its export exactly once", async () => {
  await until(() => [...exports.values()].every((e) => e.closeCount === (opens.get(e.name) ?? 0)));
});
