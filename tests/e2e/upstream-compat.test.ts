// Behaviour an operator's scripts rely on, as upstream C Sheepdog 1.0 shows it (issue 16). Each
// expected text below is what the C binaries in shared/reference/c-sheepdog print for the same
// command line.
import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { sheepCommand, TestCluster } from "../lib/cluster.ts";

function sheep(args: string[]) {
  const cmd = sheepCommand();
  const r = spawnSync(cmd[0], [...cmd.slice(1), "sheep", ...args], {
    encoding: "utf8",
    timeout: 30_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test("sheep option errors: upstream's messages on stderr, exit 1, nothing started", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-opts-"));
  const zone = (s: string) =>
    `Invalid zone id '${s}': must be an integer between 0 and 4294967295\n`;
  const cases: Array<[string[], string, string]> = [
    [["-p", "-1"], "Invalid port number '-1'\n", ""],
    [["--port=0"], "Invalid port number '0'\n", ""],
    [["-p65536"], "Invalid port number '65536'\n", ""],
    [["-z", "4294967296"], zone("4294967296"), ""],
    [["-f", "-z", "42a"], zone("42a"), ""],
    [["-V", "0"], "Invalid number of vnodes '0': must be an integer between 1 and 65535\n", ""],
    [["-g", "-V", "3"], "Options '-g' and '-V' can not be both specified\n", ""],
    [
      ["-c", "bogus"],
      "Invalid cluster driver 'bogus'\n",
      "\nSupported features:\n\tCluster drivers: zookeeper corosync local\n",
    ],
    [
      ["--bogus"],
      "sheep: unrecognized option '--bogus'\nTry 'sheep --help' for more information.\n",
      "",
    ],
    [
      ["--p", "5"],
      "sheep: option '--p' is ambiguous; possibilities: '--port' '--pidfile'\n" +
      "Try 'sheep --help' for more information.\n",
      "",
    ],
    [["-Q", "-h"], "sheep: invalid option -- 'Q'\nTry 'sheep --help' for more information.\n", ""],
    [["-l", "lev=info"], "invalid option lev=info\n", ""],
    [["-y", "bad"], "Invalid address: 'bad'\n", ""],
  ];
  try {
    for (const [args, err, out] of cases) {
      const r = sheep([...args, dir]);
      expect({ args, code: r.code, err: r.err, out: r.out }).toEqual({ args, code: 1, err, out });
    }
    // The option's own help when its argument is missing (the word after is PATH otherwise).
    const z = sheep([dir, "-fz"]);
    expect(z.code).toBe(1);
    expect(z.err).toBe("sheep: option requires an argument -- 'z'\n");
    expect(z.out).toBe(
      "Example:\n\t$ sheep -z 1 ...\n" +
        "This tries to set the zone ID of this sheep to 1 and sheepdog won't store\n" +
        "more than one copy of any object into this same zone\n",
    );
    // Nothing was created: every refusal came before the daemon touched its directory.
    expect(fs.readdirSync(dir)).toEqual([]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function latestEpoch(info: string): number {
  return Number(/^\S+ \S+\s+(\d+) \[/m.exec(info)?.[1] ?? 0);
}

test("epoch log: a sheep that missed epochs fetches them; cluster info is the same everywhere", async () => {
  const c = await TestCluster.start(3, { format: { copies: 2 } });
  try {
    // Each membership change is its own epoch: wait for it before the next one.
    const epochIs = (node: number, e: number) =>
      c.waitFor(async () => latestEpoch(await c.dogOk(["cluster", "info"], { node })) === e);
    await c.kill(0);
    await epochIs(2, 2);
    await c.kill(1);
    await epochIs(2, 3);
    await c.startNode(1);
    await epochIs(2, 4);
    const late = await c.addNode(); // joins at a later epoch: it never saw epochs 1..4
    await epochIs(2, 5);
    await c.startNode(0);
    await epochIs(2, 6);
    await c.waitRunning();
    const alive = [0, 1, 2, late];
    let infos: string[] = [];
    await c.waitFor(
      async () => {
        // Each sheep stamps the epochs it saw itself with its own clock (as upstream's do): the
        // seconds may differ; the history may not.
        infos = (await Promise.all(alive.map((i) => c.dogOk(["cluster", "info"], { node: i }))))
          .map((s) => s.replace(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/gm, "<time>"));
        return infos.every((s) => s === infos[0]);
      },
      30_000,
      "the same cluster info on every node",
    ).catch((e) => {
      throw new Error(`${(e as Error).message}\n${infos.join("\n")}`);
    });
    // Epochs 6 (node 0 back) down to 1 (format), each listed once, newest first.
    const epochs = infos[0].split("\n").map((l) => /^<time>\s+(\d+) \[/.exec(l)?.[1])
      .filter((x) => x !== undefined).map(Number);
    expect(epochs).toEqual([6, 5, 4, 3, 2, 1]);
    expect(infos[0]).toMatch(/ 3 \[127\.0\.0\.1:\d+:\d+\]\n/); // the epoch with node 2 alone
  } finally {
    await c.stop();
  }
});

/** `dog vdi list -r` as [name, vid, snapshot?] rows. */
async function vdiRows(c: TestCluster): Promise<Array<[string, number, boolean]>> {
  const out = await c.dogOk(["vdi", "list", "-r"]);
  return out.trim().split("\n").filter((l) => l).map((l) => {
    const f = l.split(" ");
    return [f[1], parseInt(f[7], 16), f[0] === "s"]; // the VID is %x
  });
}

test("VID recycling (format -R): deleting a whole family frees its ids, lowest first", async () => {
  const c = await TestCluster.start(3);
  try {
    await c.waitFor(async () =>
      (await c.dogOk(["node", "list", "-r"])).trim().split("\n").length === 3
    );
    await c.dogOk(["cluster", "format", "-c", "2", "-R"]);
    await c.waitRunning();
    await c.dogOk(["vdi", "create", "a", "4M"]);
    await c.dogOk(["vdi", "write", "a", "0", "4096"], { input: Buffer.alloc(4096, 7) });
    await c.dogOk(["vdi", "snapshot", "-s", "s1", "a"]);
    await c.dogOk(["vdi", "create", "b", "4M"]);
    await c.dogOk(["vdi", "clone", "-s", "s1", "a", "c"]);
    // As upstream: VIDs in creation order from 1, not at the name's hash.
    expect(await vdiRows(c)).toEqual([["a", 1, true], ["a", 2, false], ["b", 3, false], [
      "c",
      4,
      false,
    ]]);
    await c.dogOk(["vdi", "delete", "a"]);
    await c.dogOk(["vdi", "delete", "-s", "s1", "a"]);
    await c.dogOk(["vdi", "delete", "c"]); // the last of the family {1, 2, 4}
    expect(await vdiRows(c)).toEqual([["b", 3, false]]);
    await c.dogOk(["vdi", "create", "d", "4M"]);
    await c.dogOk(["vdi", "create", "a", "4M"]);
    expect(await vdiRows(c)).toEqual([["d", 1, false], ["a", 2, false], ["b", 3, false]]);
    // What upstream leaves on the disks: the three live inodes, nothing of the old family.
    const all = new Set(c.nodes.flatMap((_, i) => c.objectFiles(i)));
    expect([...all].sort()).toEqual(["8000000100000000", "8000000200000000", "8000000300000000"]);
    // A working VDI at a reused VID below its snapshot's stays writable (upstream: read-only).
    await c.dogOk(["vdi", "delete", "d"]);
    await c.dogOk(["vdi", "snapshot", "-s", "t", "b"]);
    expect(await vdiRows(c)).toEqual([["b", 1, false], ["a", 2, false], ["b", 3, true]]);
    await c.dogOk(["vdi", "write", "b", "0", "3"], { input: "hi\n" });
    expect(await c.dogOk(["vdi", "read", "b", "0", "3"])).toBe("hi\n");
  } finally {
    await c.stop();
  }
});

test("dog output details: %016x oids, store list order, set-throttle ranges and usage", async () => {
  const c = await TestCluster.start(3);
  try {
    await c.waitFor(async () =>
      (await c.dogOk(["node", "list", "-r"])).trim().split("\n").length === 3
    );
    const bad = await c.dog(["cluster", "format", "-b", "bogus"]);
    expect(bad.code).toBe(2);
    expect(bad.stdout.toString()).toBe(
      "using backend bogus store\nAvailable stores:\n---------------------------------------\ntree plain \n",
    );
    expect(bad.stderr).toBe("Format failed: Targeted backend store is not found\n");
    await c.dogOk(["cluster", "format", "-c", "2"]);
    await c.waitRunning();
    await c.dogOk(["vdi", "create", "a", "12M"]);
    await c.dogOk(["vdi", "write", "a", "4194304", "2"], { input: "x\n" });
    const vid = parseInt((await c.dogOk(["vdi", "list", "-r"])).split(" ")[7], 16); // %x
    const loc = await c.dogOk(["vdi", "object", "location", "-i", "1", "a"]);
    const oid = (BigInt(vid) << 32n | 1n).toString(16).padStart(16, "0");
    expect(loc).toStartWith(
      `Looking for the object ${oid} (vid 0x${
        Number(vid).toString(16)
      } idx 1, 2 copies) with 3 nodes\n`,
    );
    // `-i -1` is -i with "-1" (getopt), i.e. ~0: the inode object.
    const ino = await c.dogOk(["vdi", "object", "location", "-i", "-1", "a"]);
    expect(ino).toStartWith(
      `Looking for the inode object 0x${vid.toString(16)} with 3 nodes\n`,
    );

    const throttle = async (...args: string[]) => {
      const r = await c.dog(["node", "recovery", "set-throttle", ...args]);
      const g = await c.dog(["node", "recovery", "get-throttle"]); // upstream prints it on stderr
      return [r.code, r.stderr, g.stderr];
    };
    expect(await throttle("4294967295", "9223372036854775807")).toEqual([
      0,
      "",
      "max (4294967295), interval (9223372036854775807)\n",
    ]);
    expect(await throttle("4294967296", "1")).toEqual([
      64,
      "Invalid max (4294967296)\n",
      "max (4294967295), interval (9223372036854775807)\n",
    ]);
    expect((await throttle("1", "9223372036854775808")).slice(0, 2)).toEqual([
      64,
      "Invalid interval (9223372036854775808)\n",
    ]);
    expect(await throttle(" +7", " 8")).toEqual([0, "", "max (7), interval (8)\n"]);
    expect((await throttle("5x", "5")).slice(0, 2)).toEqual([64, "Invalid max (5x)\n"]);
    expect((await throttle("1", "0")).slice(0, 2)).toEqual([
      64,
      "Invalid interval max (1), interval (0)\n",
    ]);
    expect(await throttle("0", "0")).toEqual([0, "", "max (0), interval (0)\n"]);
    // Missing arguments: the nested subcommand's own usage, as upstream.
    const u = await c.dog(["node", "recovery", "set-throttle"]);
    expect(u.code).toBe(64);
    expect(u.stdout.toString()).toStartWith(
      "Usage: dog node recovery set-throttle [-a address] [-p port] [-h] [-P] [-r] [-T] <max> <interval>\nOptions:\n",
    );
  } finally {
    await c.stop();
  }
});

test("vdi write with less input than the length writes what was given; strict mode halts I/O", async () => {
  const c = await TestCluster.start(3);
  try {
    await c.waitFor(async () =>
      (await c.dogOk(["node", "list", "-r"])).trim().split("\n").length === 3
    );
    await c.dogOk(["cluster", "format", "-c", "2", "-t"]);
    await c.waitRunning();
    await c.dogOk(["vdi", "create", "a", "12M"]);
    const read = async (off: number, len: number) =>
      (await c.dog(["vdi", "read", "a", String(off), String(len)])).stdout;
    // As upstream: exit 0, the given bytes written, the rest of the range left as it was.
    const w1 = await c.dog(["vdi", "write", "a", "0", "100"], { input: "hello" });
    expect([w1.code, w1.stderr]).toEqual([0, ""]);
    expect(await read(0, 8)).toEqual(Buffer.from("hello\0\0\0"));
    const w2 = await c.dog(["vdi", "write", "a", "4194300", "10"], { input: "abc" });
    expect([w2.code, w2.stderr]).toEqual([0, ""]);
    expect(await read(4194300, 10)).toEqual(Buffer.from("abc\0\0\0\0\0\0\0"));
    const w3 = await c.dog(["vdi", "write", "a", "0", "10"], { input: "" });
    expect([w3.code, w3.stderr]).toEqual([0, ""]);
    const big = Buffer.alloc(5_000_000, "q");
    expect((await c.dog(["vdi", "write", "a", "0", "8388608"], { input: big })).code).toBe(0);
    expect(await read(4999998, 4)).toEqual(Buffer.from("qq\0\0"));

    // Strict (-t), copies 2: two zones alive still serve; one does not.
    await c.kill(2);
    await c.waitFor(async () =>
      (await c.dogOk(["node", "list", "-r"])).trim().split("\n").length === 2
    );
    expect((await c.dog(["vdi", "write", "a", "0", "3"], { input: "hi\n" })).code).toBe(0);
    await c.kill(1);
    await c.waitFor(async () =>
      (await c.dogOk(["node", "list", "-r"])).trim().split("\n").length === 1
    );
    const halted = await c.dog(["vdi", "write", "a", "0", "3"], { input: "no\n" });
    expect(halted.code).toBe(1);
    const vid = parseInt((await c.dogOk(["vdi", "list", "-r"])).split(" ")[7], 16);
    const oid = (BigInt(vid) << 32n).toString(16).padStart(16, "0");
    expect(halted.stderr).toBe(
      `Failed to write object ${oid}: IO has halted as there are not enough living nodes\nFailed to write VDI\n`,
    );
    expect(await read(0, 3)).toEqual(Buffer.from("hi\n")); // reads go on
    const cr = await c.dog(["vdi", "create", "c", "4M"]);
    expect([cr.code, cr.stderr]).toEqual([
      1,
      "Failed to create VDI c: Failed to write to requested VDI\n",
    ]);
    await c.startNode(1);
    await c.waitFor(async () =>
      (await c.dogOk(["node", "list", "-r"])).trim().split("\n").length === 2
    );
    await c.waitFor(async () =>
      (await c.dog(["vdi", "write", "a", "0", "3"], { input: "ok\n" })).code === 0
    );
    expect(await read(0, 3)).toEqual(Buffer.from("ok\n"));
  } finally {
    await c.stop();
  }
});

test("vdi write past the VDI's end or with short input, replicated and erasure-coded", async () => {
  const c = await TestCluster.start(3, { format: { copies: 2 } });
  try {
    const M4 = 4194304;
    for (const [name, extra] of [["r", []], ["e", ["-c", "2:1"]]] as const) {
      await c.dogOk(["vdi", "create", name, "12M", ...extra]);
      const end = 3 * M4;
      const write = async (off: number, len: number | null, input: Buffer | string) => {
        const args = ["vdi", "write", name, String(off), ...(len === null ? [] : [String(len)])];
        const r = await c.dog(args, { input });
        return [r.code, r.stderr];
      };
      const read = async (off: number, len: number) =>
        (await c.dog(["vdi", "read", name, String(off), String(len)])).stdout.toString("latin1");
      // A length past the end is cut at the end (at the end: nothing written), exit 0.
      expect(await write(end - 2, 10, "abcdefghij")).toEqual([0, ""]);
      expect(await write(end, 10, "abcdefghij")).toEqual([0, ""]);
      expect(await write(end + 8, 10, "abcdefghij")).toEqual([
        1,
        "Write offset is beyond the end of the VDI\n",
      ]);
      expect(await read(end - 4, 20)).toBe("\0\0ab"); // a read past the end is cut too
      // Short input with a length: the object where input ended is zero-filled to its end, and
      // nothing after it is touched.
      await write(M4, 6, "ZZZZZZ");
      expect(await write(M4 - 4, 10, "abc")).toEqual([0, ""]);
      expect(await read(M4 - 4, 10)).toBe("abc\0ZZZZZZ");
      // Input ending on an object boundary: the next object's part of the length is zeros.
      expect(await write(0, M4 + 10, Buffer.alloc(M4, "p"))).toEqual([0, ""]);
      expect(await read(M4 - 4, 10)).toBe("pppp\0\0\0\0\0\0");
      // No length: the last object is zero-filled to its end, the next one left alone.
      await write(M4, 6, "YYYYYY");
      expect(await write(M4 - 100, null, "xy")).toEqual([0, ""]);
      expect(await read(M4 - 4, 10)).toBe("\0\0\0\0YYYYYY");
      // ... and input ending on a boundary writes nothing more (upstream zeroes the next object).
      await write(2 * M4, 4, "WWWW");
      expect(await write(M4, null, Buffer.alloc(M4, "p"))).toEqual([0, ""]);
      expect(await read(2 * M4, 4)).toBe("WWWW");
    }
  } finally {
    await c.stop();
  }
}, 120_000);
