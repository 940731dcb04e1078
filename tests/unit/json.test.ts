// dog's JSON writer: 64-bit values print as exact numbers; strings are never rewritten.
import { expect, test } from "bun:test";
import { toJson } from "../../cli/json.ts";

test("bigints are exact JSON numbers, strings stay strings", () => {
  const s = toJson({ size: 2n ** 60n + 1n, neg: -5n, name: "@@abc:1@@", list: [1n, "x"] });
  expect(s).toContain('"size": 1152921504606846977');
  expect(s).toContain('"neg": -5');
  expect(s).toContain('"name": "@@abc:1@@"');
  const back = JSON.parse(s);
  expect(back.list).toEqual([1, "x"]);
  expect(s.endsWith("}\n")).toBe(true);
});
