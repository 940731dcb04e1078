import { afterAll, beforeAll, expect, test } from "bun:test";
import { TestCluster } from "/work/main/tests/lib/cluster.ts";
import { startZookeeper, type ZookeeperServer } from "/work/main/tests/lib/zookeeper.ts";
let zk: ZookeeperServer; let c: TestCluster;
beforeAll(async () => { zk = await startZookeeper(); });
afterAll(async () => { await c?.stop(); await zk?.stop(); });
test("basic", async () => {
  const t0 = Date.now();
  c = await TestCluster.start(3, { driver: `zookeeper:${zk.hosts},timeout=5000`, format: { copies: 3 } });
  console.log("started", Date.now() - t0);
  console.log(await c.dogOk(["node", "list"]));
  await c.dogOk(["vdi", "create", "a", "100M"]);
  console.log(await c.dogOk(["vdi", "list"], { node: 2 }));
  console.log(await c.dogOk(["cluster", "info"], { node: 1 }));
}, 120000);
