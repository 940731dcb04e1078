// Bad input gets upstream's message (or an equally clear one) and upstream's exit code; nothing is
// written; the daemon survives garbage on its socket and keeps serving other clients.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import * as net from "node:net";
import { freePort, runDog, TestCluster } from "../lib/cluster.ts";

describe("bad input", () => {
  let c: TestCluster;
  beforeAll(async () => {
    c = await TestCluster.start(2, { format: { copies: 2 } });
    await c.dogOk(["vdi", "create", "small", "8M"]);
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  test("unknown command and subcommand exit 64", async () => {
    const a = await c.dog(["frobnicate"]);
    expect(a.code).toBe(64);
    expect(a.stderr).toContain("Invalid command 'frobnicate'");
    const b = await c.dog(["vdi", "frobnicate"]);
    expect(b.code).toBe(64);
    expect(b.stderr).toContain("Invalid command 'vdi frobnicate'");
  });

  test("missing VDI exits 1 with upstream's message", async () => {
    const r = await c.dog(["vdi", "read", "nope"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      "Failed to open VDI nope (snapshot id: 0 snapshot tag: ): No VDI found",
    );
  });

  test("write at an offset past the VDI size fails and writes nothing; a length past it is cut", async () => {
    const before = c.objectFiles(0).length + c.objectFiles(1).length;
    const r2 = await c.dog(["vdi", "write", "small", String(9 * 1024 * 1024)], {
      input: Buffer.alloc(20, 1),
    });
    expect(r2.code).toBe(1);
    expect(r2.stderr).toContain("Write offset is beyond the end of the VDI");
    expect(c.objectFiles(0).length + c.objectFiles(1).length).toBe(before);
    // As upstream (issue 16): what fits before the end is written, exit 0.
    const end = 8 * 1024 * 1024;
    const r = await c.dog(["vdi", "write", "small", String(end - 10), "20"], {
      input: Buffer.alloc(20, 1),
    });
    expect([r.code, r.stderr]).toEqual([0, ""]);
    const back = await c.dog(["vdi", "read", "small", String(end - 12), "20"]);
    expect(back.stdout).toEqual(Buffer.concat([Buffer.alloc(2), Buffer.alloc(10, 1)]));
  });

  test("a VDI name too long is refused", async () => {
    const r = await c.dog(["vdi", "create", "x".repeat(300), "1M"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr.toLowerCase()).toContain("too long");
    const list = await c.dogOk(["vdi", "list", "-r"]);
    expect(list).not.toContain("xxxx");
  });

  test("format twice with VDIs present asks and does nothing without 'yes'", async () => {
    const r = await c.dog(["cluster", "format"], { input: "no\n" });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("aborted");
    const list = await c.dogOk(["vdi", "list", "-r"]);
    expect(list).toContain(" small ");
  });

  test("bad size argument", async () => {
    const r = await c.dog(["vdi", "create", "sz", "12Q"]);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain("Invalid size '12Q'");
  });

  test("garbage on the socket closes that connection; other clients are served", async () => {
    for (
      const junk of [
        Buffer.alloc(48, 0xff),
        Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4)),
        Buffer.alloc(7, 1),
      ]
    ) {
      await new Promise<void>((resolve) => {
        const s = net.connect(c.nodes[0].port, "127.0.0.1", () => s.end(junk));
        s.on("error", () => resolve());
        s.on("close", () => resolve());
        s.resume();
        setTimeout(() => {
          s.destroy();
          resolve();
        }, 2000);
      });
    }
    const out = await c.dogOk(["node", "list", "-r"]);
    expect(out.split("\n").filter(Boolean).length).toBe(2);
    expect(c.isRunning(0)).toBe(true);
  });
});

test("dog with no daemon listening exits 2", async () => {
  const port = await freePort();
  const r = await runDog(["dog", "node", "list", "-p", String(port)], { noAddress: true });
  expect(r.code).toBe(2);
  expect(r.stderr.toLowerCase()).toContain("connect");
});
