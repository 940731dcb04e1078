// Behaviour an operator's scripts rely on, as upstream C Sheepdog 1.0 shows it (issue 16). Each
// expected text below is what the C binaries in shared/reference/c-sheepdog print for the same
// command line.
import { expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { sheepCommand } from "../lib/cluster.ts";

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
