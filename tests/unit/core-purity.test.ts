// core/ is pure: no sockets, no files, no clock. Whatever needs them takes an interface (Clock,
// RecoveryStore, ...) and the real implementations live in io/. This scans every core/*.ts.
import { expect, test } from "bun:test";
import fs from "node:fs";
import { isIP } from "node:net";
import path from "node:path";
import { ipFamily } from "../../core/node.ts";

const CORE = path.join(import.meta.dir, "../../core");

/** Node modules that reach the outside world. */
const IO_MODULES = new Set(
  [
    "net",
    "fs",
    "fs/promises",
    "child_process",
    "dgram",
    "dns",
    "http",
    "https",
    "tls",
    "worker_threads",
  ].flatMap((m) => [m, `node:${m}`]),
);

/** Globals that read the clock or schedule on it. */
const CLOCK_GLOBALS = [
  "Date",
  "performance",
  "setTimeout",
  "setInterval",
  "setImmediate",
  "clearTimeout",
  "clearInterval",
  "clearImmediate",
];

const transpiler = new Bun.Transpiler({ loader: "ts", minifyWhitespace: true });

/** End of the parenthesized group starting at s[open] === "(". */
function closeParen(s: string, open: number): number {
  let depth = 0;
  for (let i = open; i < s.length; i++) {
    if (s[i] === "(") depth++;
    else if (s[i] === ")" && --depth === 0) return i;
  }
  return s.length;
}

/** What in `src` (TypeScript) breaks purity; `name` for the messages. */
export function impurities(name: string, src: string): string[] {
  const out: string[] = [];
  for (const imp of transpiler.scanImports(src)) {
    if (IO_MODULES.has(imp.path)) out.push(`${name} imports ${imp.path}`);
    if (imp.path.startsWith("../")) {
      out.push(`${name} imports ${imp.path} from outside core/`);
    }
  }
  // Types and comments are gone in the transpiled code; a method of that name (a Clock's
  // setTimeout) is a member access or a definition `name(...){`, neither is a global use.
  const js = transpiler.transformSync(src);
  for (const g of CLOCK_GLOBALS) {
    const re = new RegExp(`(?<![.\\w$#])${g}(?![\\w$])`, "g");
    for (const m of js.matchAll(re)) {
      const at = m.index + g.length;
      if (js[at] === "(" && js[closeParen(js, at) + 1] === "{") continue;
      if (js[at] === ":" && /[{,]$/.test(js.slice(0, m.index))) continue; // object key
      out.push(`${name} uses ${g}: …${js.slice(Math.max(0, m.index - 30), at + 20)}…`);
    }
  }
  return out;
}

test("nothing under core/ does I/O or reads the clock", () => {
  const files = fs.readdirSync(CORE).filter((f) => f.endsWith(".ts")).sort();
  expect(files.length).toBeGreaterThan(10);
  const bad = files.flatMap((f) =>
    impurities(`core/${f}`, fs.readFileSync(path.join(CORE, f), "utf8"))
  );
  expect(bad).toEqual([]);
});

test("the purity scan catches what it must and passes what it may", () => {
  const flagged = (src: string) => impurities("x.ts", src).length > 0;
  expect(flagged(`import * as net from "node:net";`)).toBe(true);
  expect(flagged(`import fs from "fs";`)).toBe(true);
  expect(flagged(`export { x } from "node:fs/promises";`)).toBe(true);
  expect(flagged(`import { realClock } from "../io/clock.ts";`)).toBe(true);
  expect(flagged(`export const t = Date.now();`)).toBe(true);
  expect(flagged(`export const d = new Date();`)).toBe(true);
  expect(flagged(`export const p = performance.now();`)).toBe(true);
  expect(flagged(`export function f() { setTimeout(() => {}, 5); }`)).toBe(true);
  expect(flagged(`export function f() { return setInterval(f, 5); }`)).toBe(true);
  expect(flagged(`export const g = globalThis.setTimeout;`)).toBe(false); // not a global read…
  expect(flagged(`export const g = [setTimeout];`)).toBe(true); // …but this is
  expect(flagged(`import { Buffer } from "node:buffer"; import { x } from "./oid.ts";`)).toBe(
    false,
  );
  expect(
    flagged(`// Date.now and setTimeout are read through the clock
      import type { Clock } from "./clock.ts";
      export interface C { setTimeout(fn: () => void, ms: number): unknown; now(): number }
      export class S { setTimeout(fn: () => void, ms: number): unknown { return ms; } }
      export function f(c: Clock) { c.setTimeout(() => {}, 1); return c.now(); }`),
  ).toBe(false);
});

test("core's ipFamily agrees with node:net isIP", () => {
  const cases = [
    "127.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "256.1.1.1",
    "1.2.3",
    "1.2.3.4.5",
    "01.2.3.4",
    "1.2.3.04",
    " 1.2.3.4",
    "",
    "::",
    "::1",
    "fe80::1:2",
    "fe80::1%eth0",
    "fe80::1%",
    "%eth0",
    "2001:db8:0:0:1:0:0:1",
    "2001:db8::1::1",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7::",
    "::ffff:10.0.0.1",
    "::10.0.0.1:1",
    "12345::1",
    "g::1",
    "1:2:3:4:5:6:1.2.3.4",
    "1:2:3:4:5:6:7:1.2.3.4",
    ":1:2:3:4:5:6:7",
    "localhost",
  ];
  for (const c of cases) expect(`${c} -> ${ipFamily(c)}`).toBe(`${c} -> ${isIP(c)}`);
});
