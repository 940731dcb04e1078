// dog cluster: info, format, shutdown, recover, reweight, check, alter-copy (upstream
// dog/cluster.c).
import { clusterInfoJson, toJson } from "./json.ts";
import { CLUSTER_INFO_SIZE, decodeClusterInfo, SD_MAX_NODES } from "../core/payloads.ts";
import { Buffer } from "node:buffer";
import { ClusterFlag, Flag, Header, Op, readFixedString, Res, strerror } from "../core/proto.ts";
import { banner, clusterInfoText } from "./format.ts";
import {
  Ctx,
  err,
  EXIT_FAILURE,
  EXIT_SUCCESS,
  EXIT_SYSFAIL,
  EXIT_USAGE,
  genericSubcommand,
  out,
  SD_NODE_SIZE,
  VDI_BITMAP_SIZE,
} from "./common.ts";
import { statCluster } from "./vdi-view.ts";
import { isSnap, parseVdi } from "./vdi-common.ts";
import { doVdiCheck } from "./vdi-check.ts";
import { scrubReport } from "./node.ts";

// ---------------------------------------------------------------------------------------------
// cluster commands

export async function clusterInfo(c: Ctx): Promise<number> {
  const st = await statCluster(c, c.nodes.length);
  if (c.json) {
    out(toJson(clusterInfoJson(st.result, st.logs)));
    return EXIT_SUCCESS;
  }
  out(clusterInfoText({
    result: st.result,
    logs: st.logs,
    hasData: st.hasData,
    verbose: c.verbose,
    raw: c.raw,
    diff: c.cluster.diff,
  }));
  return EXIT_SUCCESS;
}

async function listStore(c: Ctx): Promise<number> {
  const rsp = await c.exec(Header.req(Op.GET_STORE_LIST, { dataLength: 512 }));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`Restore failed: ${strerror(rsp.hdr.result)}`);
    return EXIT_FAILURE;
  }
  out("Available stores:\n---------------------------------------\n");
  out(readFixedString(rsp.data, 0, rsp.data.length) + "\n");
  return EXIT_SYSFAIL;
}

export async function clusterFormat(c: Ctx): Promise<number> {
  const d = c.cluster;
  for (const n of c.nodes) {
    const rsp = await c.exec(
      Header.req(Op.CLUSTER_INFO, { dataLength: CLUSTER_INFO_SIZE }),
      undefined,
      n,
    );
    if (rsp.hdr.result !== Res.SUCCESS) {
      err(strerror(rsp.hdr.result));
      return EXIT_FAILURE;
    }
    const flags = decodeClusterInfo(rsp.data).flags;
    if (n.nrVnodes !== 0) {
      if (flags & ClusterFlag.AUTO_VNODES && d.fixedVnodes) {
        err(
          "Can not apply the option of '-V', because there are vnode strategy of sheep is auto in the cluster",
        );
        return EXIT_FAILURE;
      } else if (!(flags & ClusterFlag.AUTO_VNODES) && !d.fixedVnodes) {
        err(
          "Need to specify the option of '-V', because there are vnode strategy of sheep is fixed in the cluster",
        );
        return EXIT_FAILURE;
      }
    }
  }
  if (d.copies > c.zones) {
    await c.confirm(
      `Number of copies (${d.copies}) is larger than number of zones (${c.zones}).\n` +
        "Are you sure you want to continue? [yes/no]: ",
    );
  }
  const rv = await c.exec(Header.req(Op.READ_VDIS, { dataLength: VDI_BITMAP_SIZE }));
  if (rv.hdr.result !== Res.SUCCESS) {
    err(strerror(rv.hdr.result));
    return EXIT_FAILURE;
  }
  const empty = !rv.data.some((b) => b !== 0);
  if (!empty && !d.force) await c.confirm(banner("Caution! The cluster is not empty."));
  const storeName = d.name || "plain";
  const payload = Buffer.concat([Buffer.from(storeName, "utf8"), Buffer.alloc(1)]);
  const h = Header.req(Op.MAKE_FS, { flags: Flag.CMD_WRITE });
  h.clusterCopies = d.copies;
  h.clusterCopyPolicy = d.copyPolicy;
  h.clusterBlockSizeShift = d.blockSizeShift;
  const now = Date.now();
  h.clusterCtime = (BigInt(Math.floor(now / 1000)) << 32n) | BigInt((now % 1000) * 1_000_000);
  let flags = 0;
  if (d.strict) flags |= ClusterFlag.STRICT;
  if (d.useLock) flags |= ClusterFlag.USE_LOCK;
  if (d.recycleVid) flags |= ClusterFlag.RECYCLE_VID;
  if (!d.fixedVnodes) flags |= ClusterFlag.AUTO_VNODES;
  if (d.avoidDiskfull) flags |= ClusterFlag.AVOID_DISKFULL;
  h.clusterFlags = flags;
  out(`using backend ${storeName} store\n`);
  const rsp = await c.exec(h, payload);
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`Format failed: ${strerror(rsp.hdr.result)}`);
    if (rsp.hdr.result === Res.NO_STORE) return listStore(c);
    return EXIT_SYSFAIL;
  }
  return EXIT_SUCCESS;
}

export async function clusterShutdown(c: Ctx): Promise<number> {
  if (!await c.light(Header.req(Op.SHUTDOWN))) {
    err("failed to execute request");
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

const RECOVER_PRINT = "Caution! Please try starting all the cluster nodes normally before\n" +
  "running this command.\n\n" +
  "The cluster may need to be force recovered if:\n" +
  "  - the master node fails to start because of epoch mismatch; or\n" +
  "  - some nodes fail to start after a cluster shutdown.\n\n" +
  "Are you sure you want to continue? [yes/no]: ";

async function clusterForceRecover(c: Ctx): Promise<number> {
  if (!c.cluster.force) await c.confirm(RECOVER_PRINT);
  const rsp = await c.exec(
    Header.req(Op.FORCE_RECOVER, { dataLength: SD_NODE_SIZE * SD_MAX_NODES }),
  );
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`failed to execute request, ${strerror(rsp.hdr.result)}`);
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

async function clusterRecoverToggle(c: Ctx, enable: boolean): Promise<number> {
  if (!await c.light(Header.req(enable ? Op.ENABLE_RECOVER : Op.DISABLE_RECOVER))) {
    return EXIT_FAILURE;
  }
  out(`Cluster recovery: ${enable ? "enable" : "disable"}\n`);
  return EXIT_SUCCESS;
}

export function clusterRecover(c: Ctx): Promise<number> {
  return genericSubcommand(c, c.sub.sub!, {
    force: clusterForceRecover,
    enable: (cc) => clusterRecoverToggle(cc, true),
    disable: (cc) => clusterRecoverToggle(cc, false),
  });
}

export async function clusterReweight(c: Ctx): Promise<number> {
  return await c.light(Header.req(Op.REWEIGHT)) ? EXIT_SUCCESS : EXIT_FAILURE;
}

export async function clusterCheck(c: Ctx): Promise<number> {
  const list = await parseVdi(c, true);
  if (!list) return EXIT_SYSFAIL;
  for (const v of list) {
    if (isSnap(v.header)) out(`fix snapshot ${v.name} (id: ${v.snapid}, tag: "${v.tag}")\n`);
    else out(`fix vdi ${v.name}\n`);
    const r = await doVdiCheck(c, v.header, v.slots!);
    if (r !== EXIT_SUCCESS) return r;
  }
  // Beyond upstream: what the background scrub (sheep/scrub.ts) last found on each node.
  out("Last scrub:\n");
  return await scrubReport(c, true);
}

export async function clusterAlterCopy(c: Ctx): Promise<number> {
  const d = c.cluster;
  if (d.copyPolicy !== 0) {
    err("Changing redundancy level of erasure coded vdi is not supported yet.");
    return EXIT_USAGE;
  }
  if (!d.copies) {
    d.copies = 3;
    out("The cluster's redundancy level is not specified, use 3 as default.\n");
  }
  if (!d.force && d.copies > c.nodes.length) {
    await c.confirm(
      `Number of copies (${d.copies}) is larger than number of nodes (${c.nodes.length}).\n` +
        "Are you sure you want to continue? [yes/no]: ",
    );
  }
  const rsp = await c.exec(Header.req(Op.CLUSTER_INFO, { dataLength: CLUSTER_INFO_SIZE }));
  if (rsp.hdr.result !== Res.SUCCESS) {
    err(`Response's result: ${strerror(rsp.hdr.result)}`);
    return EXIT_FAILURE;
  }
  const ci = decodeClusterInfo(rsp.data);
  if (ci.copyPolicy) {
    err("The cluster's copy policy is erasure code, changing it is not supported yet.");
    return EXIT_FAILURE;
  }
  const old = ci.copies;
  if (old === d.copies) {
    err(`The cluster's redundancy level is already set to ${d.copies}, nothing changed.`);
    return EXIT_FAILURE;
  }
  if (!d.force) {
    await c.confirm(
      banner(
        "Caution! Changing cluster's redundancy level will affect",
        "all the VDIs to be created later.",
      ),
    );
  }
  const h = Header.req(Op.ALTER_CLUSTER_COPY);
  h.clusterCopies = d.copies;
  h.clusterCopyPolicy = d.copyPolicy;
  if (!await c.light(h)) {
    err("Changing the cluster's redundancy level failure.");
    return EXIT_FAILURE;
  }
  err(`The cluster's redundancy level is set to ${d.copies}, the old one was ${old}.`);
  return EXIT_SUCCESS;
}
