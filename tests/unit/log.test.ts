// sheep/log.ts: reopen() (what SIGHUP does) continues in a new file after logrotate renamed it.
import { afterAll, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Logger } from "../../sheep/log.ts";
import { parseSheepArgs } from "../../sheep/options.ts";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sheep-log-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

test("reopen after a rename writes to a new file at the same path", () => {
  const file = path.join(dir, "sheep.log");
  const log = new Logger("file", file);
  log.info("before rotation");
  fs.renameSync(file, file + ".1");
  log.info("still the old file");
  log.reopen();
  log.info("after rotation");
  const old = fs.readFileSync(file + ".1", "utf8");
  const now = fs.readFileSync(file, "utf8");
  expect(old).toMatch(/INFO \[main\] before rotation\n.*INFO \[main\] still the old file\n$/);
  expect(old).not.toContain("after rotation");
  expect(now).toMatch(/^.* NOTICE \[main\] log file reopened\n.* INFO \[main\] after rotation\n$/);
});

test("reopen recreates a removed log directory; without a file it does nothing", () => {
  const sub = path.join(dir, "gone");
  const file = path.join(sub, "sheep.log");
  const log = new Logger("file", file);
  fs.rmSync(sub, { recursive: true });
  log.reopen();
  log.info("back");
  expect(fs.readFileSync(file, "utf8")).toContain("INFO [main] back");
  const quiet = new Logger("stderr");
  quiet.level = -1; // nothing reaches stderr during the test
  quiet.reopen();
});

test("-l format= : server (default), default (message only) and json lines", () => {
  const l = new Logger("stderr");
  const d = new Date(2026, 11, 6, 9, 5, 7, 250);
  expect(l.line(6, "hello", d)).toBe("Dec  6 09:05:07   INFO [main] hello\n");
  l.format = "default";
  expect(l.line(3, "hello", d)).toBe("hello\n");
  l.format = "json";
  l.port = 7001;
  const j = JSON.parse(l.line(4, "disk full", d));
  expect(j.user_info).toEqual({ program_name: "sheep", port: 7001 });
  expect(j.body).toMatchObject({
    second: Math.floor(d.getTime() / 1000),
    usecond: 250_000,
    msg: "disk full",
    level: "warning",
  });
  const o = parseSheepArgs(["-l", "format=json", "/tmp/x"]);
  expect(o !== "help" && o !== "version" && o.logFormat).toBe("json");
  const o2 = parseSheepArgs(["/tmp/x"]);
  expect(o2 !== "help" && o2 !== "version" && o2.logFormat).toBe("server");
});
