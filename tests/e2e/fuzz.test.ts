// Fuzzing a real 3-node cluster on its sheep and NBD ports (tests/lib/fuzz.ts): after N seeded
// frames per port over many connections (slow senders, idle ones left open, connections cut
// mid-frame) every sheep is alive, its RSS within 2x of the start, a VDI written before reads back
// identical, and a normal NBD client works. SHEEPDOG_LONG=1: 10^6 frames per port. SEED=n replays.
import { afterAll, beforeAll, expect } from "bun:test";
import { Buffer } from "node:buffer";
import { spawnSync } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import process from "node:process";
import { TestCluster } from "../lib/cluster.ts";
import { testWith } from "../lib/components.ts";
import { fuzzSeed, nbdStream, Rng, sanitizeSheepStream, sheepFrame } from "../lib/fuzz.ts";

const LONG = process.env.SHEEPDOG_LONG === "1";
const FRAMES = LONG ? 1_000_000 : 20_000;
const SEED = fuzzSeed();
const test = testWith("nbd-clients");
const MiB = 1024 * 1024;

let c: TestCluster;
const known = crypto.randomBytes(8 * MiB);
const idle: net.Socket[] = [];

beforeAll(async () => {
  c = await TestCluster.start(3, { nbd: true, format: { copies: 3 } });
  await c.dogOk(["vdi", "create", "known", "8M"]);
  await c.dogOk(["vdi", "write", "known"], { input: known });
  await c.dogOk(["vdi", "create", "fuzz", "64M"]);
}, 120_000);

afterAll(async () => {
  for (const s of idle) s.destroy();
  await c?.stop();
}, 60_000);

function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) * 1024 : 0;
}

/** Sends bytes on one connection (dribbled when slow, cut short when cut) and waits for close. */
function send(port: number, bytes: Buffer, rng: Rng): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.on("error", () => {});
    s.on("data", () => {});
    const done = () => (clearTimeout(t), resolve());
    const t = setTimeout(() => s.destroy(), 10_000);
    s.on("close", done);
    const mode = rng.int(10);
    const cut = mode === 0 ? rng.int(bytes.length) : bytes.length;
    const body = bytes.subarray(0, cut);
    s.on("connect", async () => {
      if (mode === 1) {
        // slow sender: a few bytes at a time
        for (let pos = 0; pos < Math.min(body.length, 400) && !s.destroyed; pos += 7) {
          s.write(body.subarray(pos, pos + 7));
          await new Promise((r) => setTimeout(r, 5));
        }
        s.write(body.subarray(400));
      } else s.write(body);
      if (mode === 0) s.destroy();
      else s.end();
    });
  });
}

async function fuzzPort(
  port: number,
  rng: Rng,
  gen: (r: Rng) => { bytes: Buffer; frames: number },
) {
  let frames = 0;
  const conc = 32;
  const worker = async () => {
    while (frames < FRAMES) {
      const r = rng.fork();
      const g = gen(r);
      frames += g.frames;
      await send(port, g.bytes, r);
    }
  };
  await Promise.all(Array.from({ length: conc }, worker));
  return frames;
}

test(
  "sheep and NBD ports survive fuzz frames; data intact; RSS bounded; clients work",
  async () => {
    console.log(`fuzz: SEED=${SEED} frames per port=${FRAMES}`);
    const pids = c.nodes.map((n) => n.proc!.pid!);
    const rss0 = pids.map(rss);
    const protectedVids = new Set<number>();
    const info = await c.dogOk(["vdi", "list", "-r"]);
    for (const line of info.trim().split("\n")) {
      const f = line.split(" ");
      if (f[1] === "known") protectedVids.add(parseInt(f[5], 16));
    }
    expect(protectedVids.size).toBe(1);
    // Idle connections opened and left open across the run, some with a partial header.
    for (let i = 0; i < 100; i++) {
      const n = c.nodes[i % 3];
      const s = net.connect(i % 2 ? n.port : n.nbdPort!, "127.0.0.1");
      s.on("error", () => {});
      if (i % 4 === 0) s.write(Buffer.alloc(5, 2));
      idle.push(s);
    }
    const rng = new Rng(SEED);
    const sheepGen = (r: Rng) => {
      const parts: Buffer[] = [];
      for (let i = r.range(1, 40); i > 0; i--) parts.push(sheepFrame(r));
      const bytes = Buffer.concat(parts);
      return { bytes, frames: sanitizeSheepStream(bytes, protectedVids) };
    };
    const nbdGen = (r: Rng) =>
      nbdStream(r, { exportName: "fuzz", exportSize: 64 * MiB }, r.range(1, 60));
    const counts: number[] = [];
    // Peak RSS per node while a port is fuzzed, sampled: printed to say which port costs memory.
    let peak = pids.map(rss);
    const sampler = setInterval(() => (peak = pids.map((p, i) => Math.max(peak[i], rss(p)))), 100);
    const mib = (xs: number[]) => xs.map((x) => (x / MiB).toFixed(0)).join(",");
    for (let i = 0; i < 3; i++) {
      for (
        const [name, port, gen] of [
          ["sheep", c.nodes[i].port, sheepGen],
          ["nbd", c.nodes[i].nbdPort!, nbdGen],
        ] as const
      ) {
        peak = pids.map(rss);
        counts.push(await fuzzPort(port, rng.fork(), gen));
        console.log(
          `fuzz: node ${i} ${name} port: peak RSS MiB ${mib(peak)}, now ${mib(pids.map(rss))}`,
        );
      }
    }
    clearInterval(sampler);
    // Let replies drain and the collector run before judging memory.
    await new Promise((r) => setTimeout(r, 10_000));
    const rss1 = pids.map(rss);
    console.log(
      `fuzz: frames sent ${counts.join(",")}; RSS MiB before ${
        rss0.map((x) => (x / MiB).toFixed(0))
      } after ${rss1.map((x) => (x / MiB).toFixed(0))}`,
    );
    for (const n of c.nodes) {
      expect(n.proc!.exitCode).toBeNull();
    }
    for (let i = 0; i < 3; i++) expect(rss1[i]).toBeLessThan(2 * rss0[i]);
    const back = await c.dog(["vdi", "read", "known"]);
    expect(back.code).toBe(0);
    expect(back.stdout.equals(known)).toBe(true);
    for (let i = 0; i < 3; i++) {
      const r = spawnSync("nbdinfo", ["--size", `nbd://127.0.0.1:${c.nodes[i].nbdPort}/known`], {
        encoding: "utf8",
        timeout: 30_000,
      });
      expect(r.stdout.trim()).toBe(String(8 * MiB));
    }
  },
  LONG ? 3_600_000 : 300_000,
);
