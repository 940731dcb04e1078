// packaging/dog.bash-completion: generated from cli/options.ts, up to date, and it completes
// every command, subcommand and option of COMMANDS when bash runs it.
import { expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { COMMANDS, type SubDef } from "../../cli/options.ts";
import { bashCompletion, completionPaths } from "../../packaging/completion.ts";

const FILE = path.join(import.meta.dir, "../../packaging/dog.bash-completion");

/** COMPREPLY for each line of words (the last word is the one being completed). */
function complete(lines: string[][]): string[][] {
  const script = [
    `source ${JSON.stringify(FILE)}`,
    't() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); _dog; echo "${COMPREPLY[*]}"; }',
    ...lines.map((ws) => `t ${ws.map((w) => JSON.stringify(w)).join(" ")}`),
  ].join("\n");
  const r = spawnSync("bash", ["--norc", "--noprofile", "-c", script], { encoding: "utf8" });
  expect(r.stderr).toBe("");
  expect(r.status).toBe(0);
  return r.stdout.split("\n").slice(0, lines.length).map((l) => l.split(" ").filter(Boolean));
}

test("the committed completion is what packaging/completion.ts generates now", () => {
  // Regenerate: node_modules/.bin/bun packaging/completion.ts > packaging/dog.bash-completion
  expect(fs.readFileSync(FILE, "utf8")).toBe(bashCompletion());
});

test("every command and subcommand in COMMANDS is offered where it belongs", () => {
  const cases: Array<{ words: string[]; want: string[] }> = [
    { words: ["dog", ""], want: COMMANDS.map((c) => c.name) },
  ];
  const walk = (prefix: string[], subs: SubDef[]) => {
    cases.push({ words: ["dog", ...prefix, ""], want: subs.map((s) => s.name) });
    for (const s of subs) if (s.sub) walk([...prefix, s.name], s.sub);
  };
  for (const c of COMMANDS) walk([c.name], c.subs);
  const got = complete(cases.map((c) => c.words));
  cases.forEach((c, i) => expect(got[i].sort(), c.words.join(" ")).toEqual([...c.want].sort()));
  const names = COMMANDS.flatMap((c) => [c.name, ...c.subs.map((s) => s.name)]);
  const text = fs.readFileSync(FILE, "utf8");
  for (const n of names) expect(text).toContain(n);
});

test("options per subcommand; option arguments are skipped", () => {
  const [create, objLoc, afterArg, argValue, prefix, leaf] = complete([
    ["dog", "vdi", "create", "-"],
    ["dog", "vdi", "object", "location", "--"],
    ["dog", "-p", "7000", "vdi", "sn"],
    ["dog", "vdi", "create", "-c", ""],
    ["dog", "cluster", "re"],
    ["dog", "vdi", "create", "-c", "2", "disk", ""],
  ]);
  expect(create).toContain("--copies");
  expect(create).toContain("-P");
  expect(create).not.toContain("--snapshot");
  // Nested entries take their parent's options (`vdi object` has -i).
  expect(objLoc).toContain("--index");
  expect(objLoc.every((o) => o.startsWith("--"))).toBe(true);
  expect(afterArg).toEqual(["snapshot"]);
  expect(argValue).toEqual([]);
  expect(prefix.sort()).toEqual(["recover", "reweight"]);
  expect(leaf).toEqual([]);
  // Every path the generator knows has an entry in the script.
  for (const p of completionPaths()) {
    expect(fs.readFileSync(FILE, "utf8")).toContain(`"${p.path}")`);
  }
});
