// sheep/log.ts: reopen() (what SIGHUP does) continues in a new file after logrotate renamed it.
import { afterAll, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Logger } from "../../sheep/log.ts";

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
