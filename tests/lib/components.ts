// Real components the e2e tests drive (corosync, ZooKeeper, the Debian NBD clients). A test that
// needs one that is missing fails with the Debian package to install; it is skipped (and counted
// as skipped by tests/run.sh) only when the user opts out by name:
//
//   SHEEPDOG_SKIP=corosync,zookeeper make test
//
// `make test` installs every package listed here (Makefile APT_PKGS) before it runs the tests.
import { describe, test } from "bun:test";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

/** One thing a component needs, and the Debian package that provides it. */
interface Requirement {
  what: string;
  pkg: string;
  present(): boolean;
  /** What to do after installing the package, when installing alone is not enough. */
  then?: string;
}

const commandExists = (cmd: string): boolean =>
  spawnSync("sh", ["-c", `command -v "$1"`, "sh", cmd], { stdio: "ignore" }).status === 0;

const executable = (file: string): boolean => {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
};

const command = (cmd: string, pkg: string): Requirement => ({
  what: `\`${cmd}\``,
  pkg,
  present: () => commandExists(cmd),
});

/** Where the corosync driver finds its helper when the tests run ./sheepdog or mod.ts. */
export const CPG_BRIDGE = process.env.SHEEPDOG_CPG_BRIDGE || path.join(ROOT, "drivers/cpg-bridge");

const COMPONENTS = {
  corosync: [
    command("corosync", "corosync"),
    command("corosync-cpgtool", "corosync"),
    {
      what: CPG_BRIDGE.startsWith(ROOT + "/") ? path.relative(ROOT, CPG_BRIDGE) : CPG_BRIDGE,
      pkg: "libcpg-dev",
      then: "run `make build` to compile it",
      present: () => executable(CPG_BRIDGE),
    },
  ],
  zookeeper: [
    command("java", "default-jre-headless"),
    {
      what: "/usr/share/java/zookeeper.jar",
      pkg: "zookeeper",
      present: () => fs.existsSync("/usr/share/java/zookeeper.jar"),
    },
  ],
  "nbd-clients": [
    command("nbdinfo", "libnbd-bin"),
    command("nbdcopy", "libnbd-bin"),
    command("qemu-img", "qemu-utils"),
    command("qemu-io", "qemu-utils"),
    command("fio", "fio"),
    command("cmp", "diffutils"),
  ],
  // The partition test puts ZooKeeper and each sheep in a network namespace of its own
  // (tests/e2e/chaos-partition.test.ts, tests/lib/chaos-netns.ts).
  "zookeeper-netns": [
    command("java", "default-jre-headless"),
    {
      what: "/usr/share/java/zookeeper.jar",
      pkg: "zookeeper",
      present: () => fs.existsSync("/usr/share/java/zookeeper.jar"),
    },
    command("ip", "iproute2"),
  ],
  // The dashboard test loads the page in headless Chromium (tests/e2e/metrics.test.ts).
  chromium: [command("chromium", "chromium")],
  // `systemd-analyze verify` of the units in packaging/ (tests/unit/packaging.test.ts).
  systemd: [command("systemd-analyze", "systemd")],
  // `dog ... --json | jq` (tests/e2e/dog-json.test.ts).
  jq: [command("jq", "jq")],
} satisfies Record<string, Requirement[]>;

export type Component = keyof typeof COMPONENTS;

/** Components named in SHEEPDOG_SKIP (comma or space separated). Unknown names are an error. */
function optedOut(): Set<Component> {
  const names = (process.env.SHEEPDOG_SKIP ?? "").split(/[\s,]+/).filter(Boolean);
  const known = Object.keys(COMPONENTS);
  const bad = names.filter((n) => !known.includes(n));
  if (bad.length) {
    throw new Error(
      `SHEEPDOG_SKIP: unknown component ${bad.join(", ")} (known: ${known.join(", ")})`,
    );
  }
  return new Set(names as Component[]);
}
const OPTED_OUT = optedOut();

const checked = new Map<Component, string | null>();

/** Why `name` cannot be used (naming the Debian packages to install), or null when it can. */
export function componentMissing(name: Component): string | null {
  if (checked.has(name)) return checked.get(name)!;
  const missing = COMPONENTS[name].filter((r) => !r.present());
  let msg: string | null = null;
  if (missing.length) {
    const pkgs = [...new Set(missing.map((r) => r.pkg))];
    const then = [...new Set(missing.flatMap((r) => (r.then ? [r.then] : [])))];
    msg = `the ${name} tests need ${missing.map((r) => r.what).join(", ")}: ` +
      `install the Debian package${pkgs.length > 1 ? "s" : ""} ${pkgs.join(" ")} ` +
      `(\`make apt-deps\`, or \`apt-get install ${pkgs.join(" ")}\`)` +
      (then.length ? ` and ${then.join(", ")}` : "") +
      `; or set SHEEPDOG_SKIP=${name} to skip these tests`;
  }
  checked.set(name, msg);
  return msg;
}

type Mode = "run" | "skip" | "fail";
const noted = new Set<Component>();

function mode(name: Component): Mode {
  if (OPTED_OUT.has(name)) {
    if (!noted.has(name)) {
      noted.add(name);
      console.error(`SHEEPDOG_SKIP=${process.env.SHEEPDOG_SKIP}: the ${name} tests are not run`);
    }
    return "skip";
  }
  return componentMissing(name) === null ? "run" : "fail";
}

/**
 * describe() for a suite that needs `name`. Present: the suite runs. Opted out: its tests are
 * skipped. Missing: the suite is replaced by one failing test that names the packages, so nothing
 * in it (beforeAll included) runs against a half-installed system.
 */
export function describeWith(name: Component, title: string, body: () => void): void {
  const m = mode(name);
  if (m === "run") describe(title, body);
  else if (m === "skip") describe.skip(title, body);
  else {
    const msg = componentMissing(name)!;
    describe(title, () => {
      test(`${name} is installed`, () => {
        throw new Error(msg);
      });
    });
  }
}

type TestBody = () => void | Promise<unknown>;

/** test() for a test that needs `name`; same rules as describeWith, per test. */
export function testWith(
  name: Component,
): (title: string, body: TestBody, timeoutMs?: number) => void {
  return (title, body, timeoutMs) => {
    const m = mode(name);
    if (m === "run") test(title, body, timeoutMs);
    else if (m === "skip") test.skip(title, body, timeoutMs);
    else {
      const msg = componentMissing(name)!;
      test(title, () => {
        throw new Error(msg);
      });
    }
  };
}
