// The local membership driver, driven in-process: members see the same totally ordered events,
// a leave reaches the others, and the event queue does not grow without bound.
import { afterAll, expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { LocalDriver } from "../../drivers/local.ts";
import type { DriverHandlers } from "../../drivers/driver.ts";
import { makeNode, nodeHostPort, type SdNode } from "../../core/node.ts";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sheepdog-localdrv-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

interface Member {
  drv: LocalDriver;
  node: SdNode;
  log: string[];
  members: string[];
}

function handlers(m: Omit<Member, "drv">): DriverHandlers {
  return {
    join: (_j, _ms, opaque) => ({ accept: true, opaque }),
    accept: (j, ms) => {
      m.members = ms.map(nodeHostPort);
      m.log.push(`accept ${nodeHostPort(j)}`);
    },
    rejected: () => {},
    leave: (l, ms) => {
      m.members = ms.map(nodeHostPort);
      m.log.push(`leave ${nodeHostPort(l)}`);
    },
    notify: (s, msg) => {
      m.log.push(`${nodeHostPort(s)} ${msg.toString()}`);
    },
    block: () => false,
    updateNode: () => {},
    fatal: (r) => {
      throw new Error(r);
    },
  };
}

async function until(cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 10));
  }
}

test("total order, leave, bounded queue", async () => {
  const ms: Member[] = [];
  for (let i = 0; i < 3; i++) {
    const node = makeNode("127.0.0.1", 7500 + i, { zone: i });
    const m = { node, log: [] as string[], members: [] as string[] } as Member;
    m.drv = new LocalDriver(dir);
    await m.drv.init(handlers(m));
    await m.drv.join(node, Buffer.from("hello"));
    await until(() => m.members.includes(nodeHostPort(node)));
    ms.push(m);
  }
  await until(() => ms.every((m) => m.members.length === 3));
  // 3 x 700 interleaved broadcasts: far more than the queue keeps
  const N = 700;
  for (let k = 0; k < N; k++) for (const m of ms) await m.drv.notify(Buffer.from(`m${k}`));
  await until(
    () => ms.every((m) => m.log.filter((l) => / m\d+$/.test(l)).length === 3 * N),
    60_000,
  );
  const seqs = ms.map((m) => m.log.filter((l) => / m\d+$/.test(l)));
  expect(seqs[1]).toEqual(seqs[0]);
  expect(seqs[2]).toEqual(seqs[0]);
  const queued = fs.readdirSync(path.join(dir, "queue")).length;
  expect(queued).toBeLessThan(3 * N);
  expect(queued).toBeLessThanOrEqual(1024 + 256 + 3 * 64 + 16);
  // a member that goes away is seen leaving by the others
  await ms[2].drv.close();
  await until(() => ms[0].members.length === 2 && ms[1].members.length === 2);
  expect(ms[0].log.at(-1)).toBe("leave 127.0.0.1:7502");
  for (const m of ms.slice(0, 2)) await m.drv.close();
}, 120_000);
