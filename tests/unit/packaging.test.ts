// packaging/: the systemd units pass `systemd-analyze verify` without a word (one sheep, and
// the template instantiated by port and by name), and the logrotate snippet covers the log
// files the units' sheep write and signals them the way sheep reopens its log (SIGHUP).
import { afterAll, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { testWith } from "../lib/components.ts";

const PKG = path.join(import.meta.dir, "../../packaging");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-units-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The unit as `make install` writes it, with ExecStart pointing at an executable that exists. */
function installed(unit: string, as: string): string {
  const text = fs.readFileSync(path.join(PKG, unit), "utf8")
    .replaceAll("/usr/local/bin/sheepdog", process.execPath);
  const file = path.join(tmp, as);
  fs.writeFileSync(file, text);
  return file;
}

testWith("systemd")("systemd-analyze verify is clean for every unit", () => {
  const files = [
    installed("sheepdog.service", "sheepdog.service"),
    installed("sheepdog@.service", "sheepdog@7000.service"),
    installed("sheepdog@.service", "sheepdog@disk2.service"),
  ];
  for (const f of files) {
    const r = spawnSync("systemd-analyze", ["verify", "--man=no", f], { encoding: "utf8" });
    expect(`${r.stdout}${r.stderr}`, f).toBe("");
    expect(r.status, f).toBe(0);
  }
  // The check can fail: an unknown key is reported.
  const bad = path.join(tmp, "bad@1.service");
  fs.writeFileSync(
    bad,
    fs.readFileSync(files[1], "utf8").replace("[Service]", "[Service]\nBogus=1"),
  );
  const r = spawnSync("systemd-analyze", ["verify", "--man=no", bad], { encoding: "utf8" });
  expect(r.stderr).toContain("Unknown key 'Bogus'");
});

test("the template takes its port from the instance and reloads with SIGHUP", () => {
  const t = fs.readFileSync(path.join(PKG, "sheepdog@.service"), "utf8");
  expect(t).toContain("Environment=SHEEP_PORT=%i");
  expect(t).toContain("Environment=SHEEP_DIR=/var/lib/sheepdog/%i");
  expect(t).toMatch(/^ExecStart=\/usr\/local\/bin\/sheepdog sheep -f .*-p \$\{SHEEP_PORT\}/m);
  expect(t).toContain("EnvironmentFile=-/etc/default/sheepdog-%i");
  for (const u of ["sheepdog.service", "sheepdog@.service"]) {
    expect(fs.readFileSync(path.join(PKG, u), "utf8")).toContain(
      "ExecReload=/bin/kill -HUP $MAINPID",
    );
  }
  const lr = fs.readFileSync(path.join(PKG, "logrotate/sheepdog"), "utf8");
  expect(lr).toContain("/var/lib/sheepdog/sheep.log /var/lib/sheepdog/*/sheep.log {");
  expect(lr).toContain("reload sheepdog.service 'sheepdog@*.service'");
});
