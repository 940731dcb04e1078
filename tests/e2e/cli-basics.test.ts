// The one executable: --version, help texts, and behaving as `sheep` / `dog` through links.
import { expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { sheepCommand } from "../lib/cluster.ts";

function run(cmd: string[], args: string[]) {
  const r = spawnSync(cmd[0], [...cmd.slice(1), ...args], { encoding: "utf8", timeout: 30_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test("--version, dog --help, sheep --help", () => {
  const cmd = sheepCommand();
  const v = run(cmd, ["--version"]);
  expect(v.code).toBe(0);
  expect(v.out).toMatch(/^sheepdog \d+\.\d+\.\d+/);
  const d = run(cmd, ["dog", "--help"]);
  expect(d.code).toBe(0);
  expect(d.out).toContain("Sheepdog administrator utility");
  expect(d.out).toContain("Usage: dog <command> <subcommand> [options]");
  const s = run(cmd, ["sheep", "--help"]);
  expect(s.code).toBe(0);
  expect(s.out).toContain("Usage: sheep [OPTION]... [PATH]");
  expect(s.out).toContain("--nbd");
  const bad = run(cmd, ["sheep", "--no-such-option"]);
  expect(bad.code).not.toBe(0);
  const badc = run(cmd, ["sheep", "-c", "nosuchdriver", "/tmp/x"]);
  expect(badc.code).toBe(1);
  expect(badc.err).toContain("Invalid cluster driver 'nosuchdriver'");
});

// Links need the compiled binary: skipped (and counted so) when SHEEPDOG_RUNTIME runs mod.ts.
const fromSource = ["bun", "deno"].includes(process.env.SHEEPDOG_RUNTIME ?? "");

test.skipIf(fromSource)("links named sheep and dog behave as those commands", () => {
  const cmd = sheepCommand();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-links-"));
  try {
    fs.symlinkSync(cmd[0], path.join(dir, "dog"));
    fs.symlinkSync(cmd[0], path.join(dir, "sheep"));
    const d = run([path.join(dir, "dog")], ["--help"]);
    expect(d.code).toBe(0);
    expect(d.out).toContain("Sheepdog administrator utility");
    const s = run([path.join(dir, "sheep")], ["--version"]);
    expect(s.code).toBe(0);
    expect(s.out).toContain("Sheepdog daemon version");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
