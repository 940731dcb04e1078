// sheep --scrub (sheep/options.ts): on by default (daily, 4 MB/s), `off`, units, bad values.
import { expect, test } from "bun:test";
import { parseSheepArgs, type SheepOptions, UsageError } from "../../sheep/options.ts";

const parse = (...a: string[]) => parseSheepArgs(a) as SheepOptions;

test("--scrub: default, off, interval units, rate", () => {
  expect(parse("/tmp/x").scrub).toEqual({ intervalS: 86400, rateMBs: 4 });
  expect(parse("--scrub", "off", "/tmp/x").scrub).toBeNull();
  expect(parse("--scrub", "interval=90").scrub).toEqual({ intervalS: 90, rateMBs: 4 });
  expect(parse("--scrub", "interval=2h,rate=50").scrub).toEqual({ intervalS: 7200, rateMBs: 50 });
  expect(parse("--scrub", "rate=1,interval=1d").scrub).toEqual({ intervalS: 86400, rateMBs: 1 });
  for (const bad of ["rate=0", "interval=0", "interval=5x", "speed=3", "interval=-1"]) {
    expect(() => parse("--scrub", bad)).toThrow(UsageError);
  }
  expect(() => parse("--scrub", "rate=0")).toThrow("Invalid scrub rate '0'");
});
