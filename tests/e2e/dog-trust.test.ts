// Scripts can trust `dog`: a destructive command checks everything before it changes anything,
// every failure exits non-zero with a message on stderr, prompts without "yes" abort, and
// `node stat` counts what the sheep did. A 3-node cluster, copies=2.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { spawnSync } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { sheepCommand, TestCluster } from "../lib/cluster.ts";

const MiB = 1024 * 1024;
let c: TestCluster;
let tmp = "";

function pattern(seed: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i += 4) b.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  return b;
}

async function readAll(name: string, snap?: string): Promise<Buffer> {
  const r = await c.dog(["vdi", "read", ...(snap ? ["-s", snap] : []), name]);
  if (r.code !== 0) throw new Error(`vdi read ${name}: ${r.code} ${r.stderr}`);
  return r.stdout;
}

/** What the VDI family looks like: names, snapshot ids, sizes and every VDI's content hash. */
async function familyState(): Promise<string> {
  const list = (await c.dogOk(["vdi", "list", "-r"])).trim().split("\n").sort();
  const v = crypto.createHash("sha1").update(await readAll("v")).digest("hex");
  // creation times and vids are part of -r; they must not move either
  return JSON.stringify({ list, v });
}

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "dog-trust-"));
  c = await TestCluster.start(3, { format: { copies: 2 } });
  await c.dogOk(["vdi", "create", "v", "16M"]);
  await c.dogOk(["vdi", "write", "v"], { input: pattern(1, 16 * MiB) });
  await c.dogOk(["vdi", "snapshot", "-s", "s1", "v"]);
  await c.dogOk(["vdi", "write", "v", String(4 * MiB), String(2 * MiB)], {
    input: pattern(2, 2 * MiB),
  });
  await c.dogOk(["vdi", "snapshot", "-s", "s2", "v"]);
  // unsnapshotted changes in the working VDI
  await c.dogOk(["vdi", "write", "v", "1000", "5000"], { input: pattern(3, 5000) });
}, 180_000);

afterAll(async () => {
  await c?.stop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe("restore never destroys the VDI on a bad stream", () => {
  let good: Buffer;
  beforeAll(async () => {
    const r = await c.dog(["vdi", "backup", "-F", "s1", "-s", "s2", "v"]);
    expect(r.code).toBe(0);
    good = r.stdout;
    expect(good.length).toBeGreaterThan(2 * MiB);
  });

  const flip = (b: Buffer, at: number) => {
    const x = Buffer.from(b);
    x[at] ^= 0x10;
    return x;
  };
  const cases: [string, () => Buffer][] = [
    ["junk text", () => Buffer.from("garbage\n")],
    ["100 random bytes", () => crypto.randomBytes(100)],
    ["empty input", () => Buffer.alloc(0)],
    ["truncated in the header", () => good.subarray(0, 5)],
    ["truncated in a record", () => good.subarray(0, Math.floor(good.length / 2))],
    ["truncated before the end marker", () => good.subarray(0, good.length - 32)],
    ["truncated in the trailer", () => good.subarray(0, good.length - 5)],
    ["a bit flipped in the data", () => flip(good, Math.floor(good.length / 3))],
    ["a bit flipped in the magic", () => flip(good, 5)],
    ["a bit flipped in a record header", () => flip(good, 8 + 4)],
    ["a bit flipped in the trailer", () => flip(good, good.length - 3)],
    ["trailing garbage", () => Buffer.concat([good, Buffer.from("x")])],
  ];
  for (const [what, make] of cases) {
    test(what, async () => {
      const before = await familyState();
      const r = await c.dog(["vdi", "restore", "-s", "s1", "v"], { input: make() });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("The backup file is corrupted");
      expect(await familyState()).toBe(before);
    });
  }

  test("a good stream restores (ours, and upstream's without the trailer)", async () => {
    const s2 = await readAll("v", "s2");
    for (const stream of [good, good.subarray(0, good.length - 16)]) {
      const before = (await c.dogOk(["vdi", "list", "-r", "v"])).trim().split("\n").length;
      const r = await c.dog(["vdi", "restore", "-s", "s1", "v"], { input: stream });
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const rows = (await c.dogOk(["vdi", "list", "-r", "v"])).trim().split("\n");
      expect(rows.length).toBe(before + 1);
      // the restored snapshot is the newest one: s1 + diff == s2
      const ids = rows.filter((l) => l.startsWith("s ")).map((l) => Number(l.split(" ")[2]));
      expect(await readAll("v", String(Math.max(...ids)))).toEqual(s2);
    }
  }, 60_000);
});

describe("exit codes", () => {
  test("vdi delete of a missing VDI or snapshot exits EXIT_MISSING (5)", async () => {
    const a = await c.dog(["vdi", "delete", "nosuch"]);
    expect(a.code).toBe(5);
    expect(a.stderr).toContain("No VDI found");
    const b = await c.dog(["vdi", "delete", "-s", "nosuch", "v"]);
    expect(b.code).toBe(5);
    expect(b.stderr.length).toBeGreaterThan(0);
    const d = await c.dog(["vdi", "delete", "-s", "42", "v"]);
    expect(d.code).toBe(5);
  });

  test("a prompt answered by end of input or 'no' aborts non-zero and changes nothing", async () => {
    const before = await familyState();
    for (const input of ["", "\n", "no\n", "y\n"]) {
      const r = await c.dog(["vdi", "rollback", "-s", "s1", "v"], { input });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("aborted");
      expect(await familyState()).toBe(before);
    }
    const f = await c.dog(["cluster", "format"], { input: "" });
    expect(f.code).toBe(1);
    expect(f.stderr).toContain("aborted");
    const dir = path.join(tmp, "md-extra");
    fs.mkdirSync(dir, { recursive: true });
    const p = await c.dog(["node", "md", "plug", dir], { input: "" });
    expect(p.code).toBe(1);
    expect(p.stderr).toContain("aborted");
    expect(await familyState()).toBe(before);
  });

  test("vdi create checks its size, copies and name", async () => {
    // `--` ends the options, so the address goes before it
    const addr = ["-a", "127.0.0.1", "-p", String(c.nodes[0].port)];
    const neg = await c.dog(["vdi", "create", ...addr, "neg", "--", "-5G"], { noAddress: true });
    expect(neg.code).toBe(64);
    expect(neg.stderr).toContain("Invalid size '-5G'");
    const zero = await c.dog(["vdi", "create", "zero", "0"]);
    expect(zero.code).toBe(64);
    expect(zero.stderr).toContain("VDI size must be larger than 0");
    const many = await c.dog(["vdi", "create", "-c", "5", "many", "1M"]);
    expect(many.code).toBe(1);
    expect(many.stderr).toContain("number of copies (5) is larger than number of zones (3)");
    for (const bad of ["a/b", "..", ".", "x@y", "tab\there"]) {
      const r = await c.dog(["vdi", "create", bad, "1M"]);
      expect(r.code).toBe(64);
      expect(r.stderr).toContain(`Invalid VDI name '${bad}'`);
    }
    const list = await c.dogOk(["vdi", "list", "-r"]);
    for (const n of ["neg", "zero", "many", "a/b", "x@y"]) expect(list).not.toContain(` ${n} `);
  });
});

test("vdi tree shows a clone under the snapshot it was cloned from", async () => {
  await c.dogOk(["vdi", "create", "base", "4M"]);
  await c.dogOk(["vdi", "snapshot", "-s", "t", "base"]);
  await c.dogOk(["vdi", "clone", "-s", "t", "base", "kid"]);
  const tree = await c.dogOk(["vdi", "tree"]);
  const lines = tree.split("\n");
  const baseAt = lines.findIndex((l) => l.startsWith("base"));
  expect(baseAt).toBeGreaterThanOrEqual(0);
  expect(lines.some((l) => l.startsWith("kid"))).toBe(false);
  expect(tree).toContain("kid: (you are here)");
  // kid is drawn below base's snapshot, in base's tree
  expect(lines[baseAt + 1]).toContain("kid: (you are here)");
});

test("node stat counts the requests the sheep served", async () => {
  const stat = async () => {
    const rows = (await c.dogOk(["node", "stat", "-r"])).trim().split("\n");
    const client = rows[0].split("\t").map((x) => Number(x));
    return { total: client[1], reads: client[3], writes: client[2], bytesIn: client[6] };
  };
  const a = await stat();
  await c.dogOk(["vdi", "write", "v", "0", String(2 * MiB)], { input: pattern(9, 2 * MiB) });
  await readAll("v");
  const b = await stat();
  expect(b.total).toBeGreaterThan(a.total);
  // upstream's columns: "Write" shows reads and "Read" writes (kept for scripts)
  expect(b.writes).toBeGreaterThan(a.writes);
  expect(b.reads).toBeGreaterThan(a.reads);
  expect(b.bytesIn - a.bytesIn).toBeGreaterThanOrEqual(2 * MiB);
});

describe("progress on a terminal only", () => {
  const hasScript = spawnSync("script", ["--version"]).status === 0;
  const dogCmd = () => [...sheepCommand(), "dog"].map((a) => `'${a}'`).join(" ");
  test("vdi write and read of 16 MiB draw a bar under script(1), not into a file", () => {
    if (!hasScript) throw new Error("script(1) is missing: install the Debian package bsdutils");
    const input = path.join(tmp, "in.bin");
    fs.writeFileSync(input, pattern(7, 16 * MiB));
    const addr = `-a 127.0.0.1 -p ${c.nodes[0].port}`;
    const tty = spawnSync("script", [
      "-qec",
      `${dogCmd()} vdi write v ${addr} < ${input} && ${dogCmd()} vdi read v ${addr} > /dev/null`,
      "/dev/null",
    ], { encoding: "utf8", timeout: 120_000 });
    expect(tty.status).toBe(0);
    expect(tty.stdout).toContain("100.0 % [");
    const errFile = path.join(tmp, "err.txt");
    const plain = spawnSync("sh", [
      "-c",
      `${dogCmd()} vdi write v ${addr} < ${input} 2> ${errFile}`,
    ], { encoding: "utf8", timeout: 120_000 });
    expect(plain.status).toBe(0);
    expect(fs.readFileSync(errFile, "utf8")).toBe("");
  }, 180_000);
});

// Every subcommand that names a VDI: with a VDI that does not exist, a snapshot that does not
// exist, and an option it does not take. Each must exit non-zero with a message on stderr.
describe("every subcommand fails loudly", () => {
  const withVdi: [string[], string[]][] = [
    // [command words, arguments after the VDI name]
    [["vdi", "check"], []],
    [["vdi", "snapshot"], []],
    [["vdi", "clone", "-s", "1"], ["clone-dst"]],
    [["vdi", "delete"], []],
    [["vdi", "rollback", "-f", "-s", "1"], []],
    [["vdi", "object", "location"], []],
    [["vdi", "object", "map"], []],
    [["vdi", "object", "dump-inode"], []],
    [["vdi", "track"], []],
    [["vdi", "setattr"], ["key", "value"]],
    [["vdi", "getattr"], ["key"]],
    [["vdi", "resize"], ["1G"]],
    [["vdi", "read"], []],
    [["vdi", "write"], ["0", "512"]],
    [["vdi", "backup", "-F", "1", "-s", "2"], []],
    [["vdi", "restore", "-s", "1"], []],
    [["vdi", "alter-copy", "-c", "2"], []],
    [["vdi", "lock", "unlock"], []],
  ];
  for (const [cmd, rest] of withVdi) {
    test(`${cmd.join(" ")} of a missing VDI`, async () => {
      const r = await c.dog([...cmd, "nosuch", ...rest], { input: Buffer.alloc(512) });
      expect(r.code).not.toBe(0);
      expect(r.stderr.trim().length).toBeGreaterThan(0);
    });
  }
  const withSnap: [string[], string[]][] = [
    [["vdi", "check", "-s", "99"], []],
    [["vdi", "clone", "-s", "99"], ["clone-dst"]],
    [["vdi", "delete", "-s", "99"], []],
    [["vdi", "delete", "-s", "nosnap"], []],
    [["vdi", "rollback", "-f", "-s", "99"], []],
    [["vdi", "object", "map", "-s", "99"], []],
    [["vdi", "track", "-s", "99"], []],
    [["vdi", "read", "-s", "99"], []],
    [["vdi", "read", "-s", "nosnap"], []],
    [["vdi", "backup", "-F", "99", "-s", "s2"], []],
    [["vdi", "backup", "-F", "s1", "-s", "99"], []],
    [["vdi", "restore", "-s", "99"], []],
  ];
  for (const [cmd, rest] of withSnap) {
    test(`${cmd.join(" ")} of a missing snapshot`, async () => {
      const before = await familyState();
      const r = await c.dog([...cmd, "v", ...rest], { input: Buffer.alloc(512) });
      expect(r.code).not.toBe(0);
      expect(r.stderr.trim().length).toBeGreaterThan(0);
      expect(await familyState()).toBe(before);
    });
  }
  const all: string[][] = [
    ...withVdi.map(([cmd]) => cmd),
    ["vdi", "create"],
    ["vdi", "list"],
    ["vdi", "tree"],
    ["vdi", "graph"],
    ["vdi", "lock", "list"],
    ["node", "list"],
    ["node", "info"],
    ["node", "kill"],
    ["node", "stat"],
    ["node", "recovery", "info"],
    ["node", "md", "info"],
    ["node", "md", "plug"],
    ["node", "log", "level", "get"],
    ["cluster", "info"],
    ["cluster", "format"],
    ["cluster", "check"],
    ["cluster", "shutdown"],
    ["cluster", "recover", "enable"],
    ["cluster", "alter-copy"],
  ];
  for (const cmd of all) {
    test(`${cmd.join(" ")} with a bad option`, async () => {
      const r = await c.dog([...cmd, "--no-such-option", "v"]);
      expect(r.code).toBe(64);
      expect(r.stderr.trim().length).toBeGreaterThan(0);
    });
  }
  test("node kill of a node that does not exist", async () => {
    const r = await c.dog(["node", "kill", "7"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("Invalid node id");
    expect(c.nodes.every((_, i) => c.isRunning(i))).toBe(true);
  });
});
