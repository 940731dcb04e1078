// The test-only power-loss shim (io/powerloss-store.ts) against the real file store: what the
// store synced survives a cut, what it did not sync (nosync store, unsynced renames) is dropped.
import { afterEach, describe, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { openStore } from "../../io/store.ts";
import { PowerLossLog } from "../../io/powerloss-store.ts";

const OBJ = 4 * 1024 * 1024;
let shim: PowerLossLog | null = null;
const dirs: string[] = [];

function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-powerloss-"));
  dirs.push(d);
  fs.mkdirSync(path.join(d, "obj"));
  return d;
}

afterEach(() => {
  shim?.uninstall();
  shim = null;
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

describe("power-loss shim", () => {
  test("synced creates and writes survive a cut; the reopened store serves them", async () => {
    const d = tempDir();
    shim = new PowerLossLog([d]);
    shim.install();
    const s = openStore("plain", [path.join(d, "obj")]);
    await s.init();
    const a = randomBytes(OBJ);
    await s.createAndWrite(1n, 0, a, OBJ);
    const b = randomBytes(65536);
    await s.write(1n, 4096, b, undefined);
    a.set(b, 4096);
    // Both syncs (file, then directory) completed: nothing of the object is left to drop (the
    // store's .md.size capacity note is written without a sync, so it may be; the side file is
    // flushed lazily, its name durably dirty in .csum-intent, io/csum-intent.ts).
    expect(shim.describe().filter((l) => /[0-9a-f]{16}(?!\.csum)/.test(l))).toEqual([]);
    shim.undoAll();
    shim.uninstall();
    const s2 = openStore("plain", [path.join(d, "obj")]);
    await s2.init();
    expect(Buffer.compare(await s2.read(1n, 0, OBJ), a)).toBe(0);
  });

  test("writes of a store that never syncs are dropped by the cut", async () => {
    const d = tempDir();
    shim = new PowerLossLog([d]);
    shim.install();
    const synced = openStore("plain", [path.join(d, "obj")]);
    await synced.init();
    const a = randomBytes(OBJ);
    await synced.createAndWrite(2n, 0, a, OBJ);
    const careless = openStore("plain", [path.join(d, "obj")], { nosync: true });
    await careless.init();
    await careless.write(2n, 0, randomBytes(8192), undefined);
    await careless.createAndWrite(3n, 0, randomBytes(OBJ), OBJ);
    expect(shim.pending).toBeGreaterThan(0);
    shim.undoAll();
    shim.uninstall();
    const s2 = openStore("plain", [path.join(d, "obj")]);
    await s2.init();
    // The unsynced overwrite is gone, the synced content is back, the unsynced create vanished.
    expect(Buffer.compare(await s2.read(2n, 0, OBJ), a)).toBe(0);
    expect(s2.exists(3n)).toBe(false);
  });

  test("an unsynced rename over an existing file is undone (the old file comes back)", () => {
    const d = tempDir();
    const f = path.join(d, "obj", "x");
    fs.writeFileSync(f, "old");
    shim = new PowerLossLog([d]);
    shim.install();
    fs.writeFileSync(f + ".new", "new");
    fs.renameSync(f + ".new", f);
    fs.unlinkSync(path.join(d, "obj", "x"));
    expect(fs.existsSync(f)).toBe(false);
    expect(shim.undoAll()).toBeGreaterThan(0);
    expect(fs.readFileSync(f, "utf8")).toBe("old");
    expect(fs.existsSync(f + ".new")).toBe(false);
  });
});
