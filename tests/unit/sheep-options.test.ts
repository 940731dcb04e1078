// sheep --http [ADDR:]PORT (sheep/options.ts): off by default, loopback unless an address is given.
import { expect, test } from "bun:test";
import { helpText, parseSheepArgs, type SheepOptions, UsageError } from "../../sheep/options.ts";

const parse = (...a: string[]) => parseSheepArgs(a) as SheepOptions;

test("--http: off by default, PORT alone binds 127.0.0.1, ADDR:PORT as given", () => {
  expect(parse("/tmp/x").http).toBeNull();
  expect(parse("--http", "9100", "/tmp/x").http).toEqual({ host: "127.0.0.1", port: 9100 });
  expect(parse("--http", "0.0.0.0:9100").http).toEqual({ host: "0.0.0.0", port: 9100 });
  expect(parse("--http", "[::1]:9100").http).toEqual({ host: "::1", port: 9100 });
  expect(parse("--http=10.0.0.5:80").http).toEqual({ host: "10.0.0.5", port: 80 });
});

test("--http rejects bad ports and is in --help", () => {
  for (const bad of ["0", "65536", "x", "127.0.0.1:", ":9100", "9100a"]) {
    expect(() => parseSheepArgs(["--http", bad]), bad).toThrow(UsageError);
  }
  expect(() => parseSheepArgs(["--http"])).toThrow(UsageError);
  expect(helpText()).toContain(
    "      --http              serve metrics and a dashboard on [ADDR:]PORT (127.0.0.1)\n",
  );
});
