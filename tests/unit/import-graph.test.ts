// The house rules that the import graph shows: no import cycles between the project's modules,
// and source files small enough to hold in one's head.
import { expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";

const ROOT = path.join(import.meta.dir, "../..");
const DIRS = ["core", "io", "cli", "drivers", "sheep"];
const MAX_LINES = 800;

function sources(): string[] {
  const out: string[] = ["mod.ts"];
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(ROOT, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name);
      if (e.isDirectory()) walk(r);
      else if (e.name.endsWith(".ts")) out.push(r);
    }
  };
  for (const d of DIRS) walk(d);
  return out;
}

const transpiler = new Bun.Transpiler({ loader: "ts" });

/** Static imports only: a dynamic import (mod.ts loads sheep or dog lazily) is no cycle. */
function graph(): Map<string, string[]> {
  const g = new Map<string, string[]>();
  for (const f of sources()) {
    const src = fs.readFileSync(path.join(ROOT, f), "utf8");
    const deps = transpiler.scanImports(src)
      .filter((i) => i.kind === "import-statement" && i.path.startsWith("."))
      .map((i) => path.normalize(path.join(path.dirname(f), i.path)));
    g.set(f, deps);
  }
  return g;
}

export function findCycle(g: Map<string, string[]>): string[] | null {
  const state = new Map<string, 1 | 2>();
  const stack: string[] = [];
  const visit = (n: string): string[] | null => {
    state.set(n, 1);
    stack.push(n);
    for (const m of g.get(n) ?? []) {
      if (state.get(m) === 1) return [...stack.slice(stack.indexOf(m)), m];
      if (!state.has(m)) {
        const c = visit(m);
        if (c) return c;
      }
    }
    stack.pop();
    state.set(n, 2);
    return null;
  };
  for (const n of g.keys()) {
    if (!state.has(n)) {
      const c = visit(n);
      if (c) return c;
    }
  }
  return null;
}

test("the cycle finder finds a cycle", () => {
  const g = new Map([["a", ["b"]], ["b", ["c"]], ["c", ["a"]], ["d", []]]);
  expect(findCycle(g)).toEqual(["a", "b", "c", "a"]);
  expect(findCycle(new Map([["a", ["b"]], ["b", []]]))).toBeNull();
});

test("no import cycles", () => {
  expect(findCycle(graph())).toBeNull();
});

test(`cli/ files stay under ${MAX_LINES} lines`, () => {
  const big = sources()
    .filter((f) => f.startsWith("cli/"))
    .map((f) => [f, fs.readFileSync(path.join(ROOT, f), "utf8").split("\n").length] as const)
    .filter(([, n]) => n > MAX_LINES);
  expect(big).toEqual([]);
});
