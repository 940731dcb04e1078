// The VDI model and helpers of the VDI lifecycle tests (vdi-lifecycle, vdi-hyper): expected
// content comes from a model of every VDI, never from "it did not fail".
import { expect } from "bun:test";
import { Buffer } from "node:buffer";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { type DogResult, TestCluster } from "./cluster.ts";
import { testWith } from "./components.ts";
import { oidHex, vidToDataOid } from "../../core/oid.ts";

export const MiB = 1024 * 1024;
export const OBJ = 4 * MiB;
export const SIZE = 24 * MiB;
export const TiB = 1024 * 1024 * MiB;

// ---------------------------------------------------------------------------------------------
// model

export interface MVdi {
  /** Model identity; a VID in the cluster. */
  key: string;
  name: string;
  tag: string;
  snapshot: boolean;
  /** Model key of the VDI owning each data slot (null = unallocated). */
  owners: (string | null)[];
  data: Buffer;
}

export class Model {
  vdis: MVdi[] = [];
  private n = 0;

  private fresh(name: string, from?: MVdi, size = SIZE): MVdi {
    const v: MVdi = {
      key: `${name}#${this.n++}`,
      name,
      tag: "",
      snapshot: false,
      owners: from ? [...from.owners] : new Array(Math.ceil(size / OBJ)).fill(null),
      data: from ? Buffer.from(from.data) : Buffer.alloc(size),
    };
    this.vdis.push(v);
    return v;
  }

  working(name: string): MVdi {
    const v = this.vdis.find((x) => x.name === name && !x.snapshot);
    if (!v) throw new Error(`model: no working VDI ${name}`);
    return v;
  }

  snap(name: string, tag: string): MVdi {
    const v = this.vdis.find((x) => x.name === name && x.snapshot && x.tag === tag);
    if (!v) throw new Error(`model: no snapshot ${name}@${tag}`);
    return v;
  }

  create(name: string, size = SIZE): MVdi {
    return this.fresh(name, undefined, size);
  }

  write(name: string, off: number, buf: Buffer): void {
    const v = this.working(name);
    buf.copy(v.data, off);
    for (let i = Math.floor(off / OBJ); i * OBJ < off + buf.length; i++) v.owners[i] = v.key;
  }

  /** The working VDI keeps its VID and becomes the snapshot; the new working VDI shares everything. */
  snapshot(name: string, tag: string): void {
    const w = this.working(name);
    w.snapshot = true;
    w.tag = tag;
    this.fresh(name, w);
  }

  clone(src: string, tag: string, dst: string): void {
    this.fresh(dst, this.snap(src, tag));
  }

  rollback(name: string, tag: string): void {
    this.remove(this.working(name));
    this.fresh(name, this.snap(name, tag));
  }

  remove(v: MVdi): void {
    this.vdis = this.vdis.filter((x) => x !== v);
  }

  /** upstream's Used/Shared: slots owned by this VDI / by other VDIs, times the object size. */
  usage(v: MVdi): { used: number; shared: number } {
    let used = 0, shared = 0;
    for (const o of v.owners) {
      if (o === v.key) used += OBJ;
      else if (o !== null) shared += OBJ;
    }
    return { used, shared };
  }
}

// ---------------------------------------------------------------------------------------------
// helpers

export interface Row {
  marker: string;
  name: string;
  snapid: number;
  size: number;
  used: number;
  shared: number;
  vid: number;
  copies: string;
  tag: string;
}

export async function listRows(c: TestCluster): Promise<Row[]> {
  const out = await c.dogOk(["vdi", "list", "-r"]);
  return out.split("\n").filter((l) => l).map((l) => {
    const f = l.split(" ");
    return {
      marker: f[0],
      name: f[1],
      snapid: Number(f[2]),
      size: Number(f[3]),
      used: Number(f[4]),
      shared: Number(f[5]),
      vid: parseInt(f[7], 16),
      copies: f[8],
      tag: f[9],
    };
  });
}

export function rowOf(rows: Row[], v: { name: string; tag: string; snapshot: boolean }): Row {
  const r = rows.find((x) =>
    x.name === v.name && (v.snapshot ? x.marker === "s" && x.tag === v.tag : x.marker !== "s")
  );
  if (!r) {
    throw new Error(
      `no list row for ${v.name}${v.snapshot ? "@" + v.tag : ""}: ${JSON.stringify(rows)}`,
    );
  }
  return r;
}

export async function vidOf(c: TestCluster, name: string, tag = ""): Promise<number> {
  return rowOf(await listRows(c), { name, tag, snapshot: tag !== "" }).vid;
}

export async function readVdi(
  c: TestCluster,
  name: string,
  tag = "",
  off?: number,
  len?: number,
): Promise<Buffer> {
  const args = ["vdi", "read", name];
  if (off !== undefined) args.push(String(off));
  if (len !== undefined) args.push(String(len));
  if (tag) args.push("-s", tag);
  const r = await c.dog(args);
  if (r.code !== 0) throw new Error(`dog ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

export async function writeVdi(
  c: TestCluster,
  name: string,
  off: number,
  data: Buffer,
): Promise<void> {
  await c.dogOk(["vdi", "write", name, String(off), String(data.length)], { input: data });
}

export function sha(b: Buffer): string {
  return createHash("sha1").update(b).digest("hex");
}

/** Path of the object file `name` on node i (plain store: <dir>/obj/<name>), or null. */
export function objectPath(c: TestCluster, i: number, name: string): string | null {
  const find = (d: string): string | null => {
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return null;
    }
    for (const e of ents) {
      if (e.isDirectory()) {
        if (e.name === ".stale") continue;
        const r = find(path.join(d, e.name));
        if (r) return r;
      } else if (e.name === name) return path.join(d, e.name);
    }
    return null;
  };
  return find(path.join(c.nodes[i].dir, "obj"));
}

/** Content hash of every replica file of the VDI's data objects: "node:oid" -> sha1. */
export function dataFileHashes(c: TestCluster, vid: number): Map<string, string> {
  const m = new Map<string, string>();
  const prefix = oidHex(vidToDataOid(vid, 0)).slice(0, 8);
  for (let i = 0; i < c.nodes.length; i++) {
    for (const f of c.objectFiles(i)) {
      if (!f.startsWith(prefix)) continue;
      m.set(`${i}:${f}`, sha(fs.readFileSync(objectPath(c, i, f)!)));
    }
  }
  return m;
}

/** Object file contents padded to `size` (a store may keep trailing zeros sparse or trimmed). */
export function replicaContent(
  c: TestCluster,
  i: number,
  oid: bigint,
  size: number,
): Buffer | null {
  const p = objectPath(c, i, oidHex(oid));
  if (!p) return null;
  const b = fs.readFileSync(p);
  if (b.length >= size) return b;
  return Buffer.concat([b, Buffer.alloc(size - b.length)]);
}

export function allOids(c: TestCluster): { node: number; oid: bigint; name: string }[] {
  const out: { node: number; oid: bigint; name: string }[] = [];
  for (let i = 0; i < c.nodes.length; i++) {
    for (const f of c.objectFiles(i)) {
      out.push({ node: i, oid: BigInt("0x" + f.slice(0, 16)), name: f });
    }
  }
  return out;
}

export function hexs(n: number | bigint): string {
  return BigInt.asUintN(64, BigInt(n)).toString(16);
}

export function run(
  cmd: string,
  args: string[],
  timeoutMs = 60_000,
): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => out.push(d));
    p.stderr.on("data", (d) => (stderr += d));
    const t = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    p.on("error", reject);
    p.on("close", (code) => {
      clearTimeout(t);
      resolve({ code, stdout: Buffer.concat(out), stderr });
    });
  });
}

export function json(b: Buffer): any {
  const s = b.toString();
  return JSON.parse(s.slice(s.search(/[{[]/)));
}

/** Tests that drive the Debian NBD clients. */
export const clientTest = testWith("nbd-clients");
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function expectFail(r: DogResult, code: number, msg: RegExp): void {
  expect({ code: r.code, stderr: r.stderr }).toMatchObject({
    code,
    stderr: expect.stringMatching(msg),
  });
}

// ---------------------------------------------------------------------------------------------
// 3 nodes, copies 3, NBD on every node
