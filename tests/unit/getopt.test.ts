// getopt_long as glibc: the expectations are what glibc's getopt_long and upstream's C sheep
// (shared/reference/c-sheepdog) print for the same command lines.
import { expect, test } from "bun:test";
import { getoptLong, type LongOption, strtolWhole } from "../../core/getopt.ts";
import { parseSheepArgs, type SheepOptions, UsageError } from "../../sheep/options.ts";

const LONG: LongOption[] = [
  { name: "port", hasArg: 1, val: "p" },
  { name: "pidfile", hasArg: 1, val: "P" },
  { name: "foreground", hasArg: 0, val: "f" },
  { name: "nosync", hasArg: 0, val: "n" },
  { name: "level", hasArg: 2, val: "L" },
];
const g = (argv: string[], opts = {}) => getoptLong(argv, "p:P:fnL::", LONG, "sheep", opts);

test("short options: clustered, attached and separate arguments", () => {
  expect(g(["-fn"]).items).toEqual([{ opt: "f" }, { opt: "n" }]);
  expect(g(["-p8000"]).items).toEqual([{ opt: "p", arg: "8000" }]);
  expect(g(["-p", "8000"]).items).toEqual([{ opt: "p", arg: "8000" }]);
  expect(g(["-fnp8000"]).items).toEqual([{ opt: "f" }, { opt: "n" }, { opt: "p", arg: "8000" }]);
  expect(g(["-fp", "8000"]).items).toEqual([{ opt: "f" }, { opt: "p", arg: "8000" }]);
  // The next word is the argument even when it looks like an option.
  expect(g(["-p", "-1"]).items).toEqual([{ opt: "p", arg: "-1" }]);
  expect(g(["-p", "--"]).items).toEqual([{ opt: "p", arg: "--" }]);
  expect(g(["-L"]).items).toEqual([{ opt: "L" }]);
  expect(g(["-L3"]).items).toEqual([{ opt: "L", arg: "3" }]);
});

test("long options: =value, next word, unambiguous prefixes", () => {
  expect(g(["--port=8000"]).items).toEqual([{ opt: "p", arg: "8000" }]);
  expect(g(["--port", "8000"]).items).toEqual([{ opt: "p", arg: "8000" }]);
  expect(g(["--port", "-1"]).items).toEqual([{ opt: "p", arg: "-1" }]);
  expect(g(["--po=1"]).items).toEqual([{ opt: "p", arg: "1" }]);
  expect(g(["--fore"]).items).toEqual([{ opt: "f" }]);
  expect(g(["--port="]).items).toEqual([{ opt: "p", arg: "" }]);
  expect(g(["--level"]).items).toEqual([{ opt: "L" }]);
  expect(g(["--level=2"]).items).toEqual([{ opt: "L", arg: "2" }]);
});

test("permutation, `--` and POSIXLY_CORRECT", () => {
  const r = g(["dir", "-f", "x", "-p", "1", "--", "-n", "y"]);
  expect(r.items).toEqual([{ opt: "f" }, { opt: "p", arg: "1" }]);
  expect(r.positionals).toEqual(["dir", "x", "-n", "y"]);
  expect(g(["-", "-f"]).positionals).toEqual(["-"]);
  const s = g(["dir", "-f"], { posixlyCorrect: true });
  expect(s.items).toEqual([]);
  expect(s.positionals).toEqual(["dir", "-f"]);
  expect(getoptLong(["a", "-f"], "+f", [], "sheep").positionals).toEqual(["a", "-f"]);
});

test("glibc's diagnostics", () => {
  const err = (argv: string[]) => g(argv).items.at(-1);
  expect(err(["-x"])).toEqual({ error: "sheep: invalid option -- 'x'", optopt: "x" });
  expect(err(["-fx"])).toEqual({ error: "sheep: invalid option -- 'x'", optopt: "x" });
  expect(err(["-p"])).toEqual({ error: "sheep: option requires an argument -- 'p'", optopt: "p" });
  expect(err(["-fp"])).toEqual({
    error: "sheep: option requires an argument -- 'p'",
    optopt: "p",
  });
  expect(err(["--po"])).toEqual({
    error: "sheep: option '--port' requires an argument",
    optopt: "p",
  });
  expect(err(["--bogus=3"])).toEqual({
    error: "sheep: unrecognized option '--bogus=3'",
    optopt: "",
  });
  expect(err(["--fore=1"])).toEqual({
    error: "sheep: option '--foreground' doesn't allow an argument",
    optopt: "f",
  });
  expect(err(["--p=5"])).toEqual({
    error: "sheep: option '--p=5' is ambiguous; possibilities: '--port' '--pidfile'",
    optopt: "",
  });
  // Parsing stops at the first error: a later option is not reported.
  expect(g(["-x", "-f"]).items).toEqual([{ error: "sheep: invalid option -- 'x'", optopt: "x" }]);
});

test("strtolWhole: whole word, leading blanks and sign, nothing after", () => {
  expect(strtolWhole("12")).toBe(12n);
  expect(strtolWhole(" +12")).toBe(12n);
  expect(strtolWhole("-0")).toBe(0n);
  expect(strtolWhole("010")).toBe(10n);
  for (const bad of ["", "12 ", "8a", "0x10", "+", " "]) expect(strtolWhole(bad)).toBeNull();
});

function refused(argv: string[]): { err: string; out: string } {
  try {
    parseSheepArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) return { err: e.message, out: e.stdout };
    throw e;
  }
  throw new Error(`accepted: ${argv.join(" ")}`);
}

test("sheep: upstream's value messages", () => {
  expect(refused(["-p", "-1"]).err).toBe("Invalid port number '-1'");
  expect(refused(["--port=65536"]).err).toBe("Invalid port number '65536'");
  expect(refused(["-p8a"]).err).toBe("Invalid port number '8a'");
  const zone = (s: string) => `Invalid zone id '${s}': must be an integer between 0 and 4294967295`;
  expect(refused(["-z", "4294967296"]).err).toBe(zone("4294967296"));
  expect(refused(["-z", "42a"]).err).toBe(zone("42a"));
  expect(refused(["-V", "0"]).err).toBe(
    "Invalid number of vnodes '0': must be an integer between 1 and 65535",
  );
  expect(refused(["-g", "-V", "3"]).err).toBe("Options '-g' and '-V' can not be both specified");
  expect(refused(["-c", "bogus"])).toEqual({
    err: "Invalid cluster driver 'bogus'",
    out: "\nSupported features:\n\tCluster drivers: zookeeper corosync local\n",
  });
  expect(refused(["-l", "level=7"]).err).toBe("Invalid log level '7'");
  expect(refused(["-l", "lev=info"]).err).toBe("invalid option lev=info");
  expect(refused(["-b", "localhost"]).err).toBe("Bad address 'localhost'");
  expect(refused(["-y", "bad"]).err).toBe("Invalid address: 'bad'");
});

test("sheep: a missing argument prints the option's help, or the --help hint", () => {
  const z = refused(["-f", "-z"]);
  expect(z.err).toBe("sheep: option requires an argument -- 'z'");
  expect(z.out).toStartWith("Example:\n\t$ sheep -z 1 ...\n");
  expect(refused(["-p"])).toEqual({
    err: "sheep: option requires an argument -- 'p'\nTry 'sheep --help' for more information.",
    out: "",
  });
});

test("sheep: options act in order; PATH is the first word left", () => {
  expect(parseSheepArgs(["-h", "-Q"])).toBe("help");
  expect(refused(["-Q", "-h"]).err).toStartWith("sheep: invalid option -- 'Q'");
  expect(refused(["-p", "0", "-h"]).err).toBe("Invalid port number '0'");
  const o = parseSheepArgs(["/d,/e", "-fnp", "8000", "--zone= 5", "x"]) as SheepOptions;
  expect([o.port, o.zone, o.foreground, o.nosync, o.baseDir, o.objDirs]).toEqual([
    8000,
    5,
    true,
    true,
    "/d",
    ["/e"],
  ]);
});
