// `dog vdi check` of an erasure-coded data object (upstream dog/vdi.c check_erasure_object):
// read every strip from the node at its position; with all strips present, re-encode and compare
// the parity; with up to p missing, rebuild them from the others and create them on their nodes;
// with more missing, say the object cannot be rebuilt.
import { Buffer } from "node:buffer";
import type { SdNode } from "../core/node.ts";
import { nodeHostPort } from "../core/node.ts";
import { ErasureCode } from "../core/ec.ts";
import { Flag, Header, Op, Res, strerror } from "../core/proto.ts";
import { oidHex } from "../core/oid.ts";

type Exec = (h: Header, data: Buffer | undefined, to: SdNode) => Promise<{
  hdr: Header;
  data: Buffer;
}>;

export interface EcCheckIo {
  exec: Exec;
  epoch: number;
  out(s: string): void;
  err(s: string): void;
}

/** Returns false when a strip could not be read (the caller stops, as upstream exits). */
export async function checkErasureObject(
  io: EcCheckIo,
  oid: bigint,
  policy: number,
  objectSize: number,
  placement: SdNode[],
): Promise<boolean> {
  const code = ErasureCode.forPolicy(policy);
  const len = objectSize / code.d;
  const strips: (Buffer | null)[] = new Array(code.n).fill(null);
  let failed = false;
  await Promise.all(
    placement.slice(0, code.n).map(async (node, i) => {
      const h = Header.req(Op.READ_PEER, { dataLength: len });
      h.oid = oid;
      h.ecIndex = i;
      h.epoch = io.epoch;
      h.tgtEpoch = io.epoch;
      const r = await io.exec(h, undefined, node);
      if (r.hdr.result === Res.SUCCESS && r.data.length === len) strips[i] = r.data;
      else if (r.hdr.result === Res.EIO) {
        // A stored checksum caught a corrupt strip there: rebuilt below like a missing one.
        io.err(`object ${oidHex(oid)} is inconsistent (strip ${i} on ${nodeHostPort(node)})`);
      } else if (r.hdr.result !== Res.NO_OBJ) {
        io.err(
          `failed to read ${oidHex(oid)} from ${nodeHostPort(node)}, ${strerror(r.hdr.result)}`,
        );
        failed = true;
      }
    }),
  );
  if (failed) return false;
  const missing = [...strips.keys()].filter((i) => !strips[i]);
  if (missing.length === 0) {
    const parity = code.encodeObject(code.join(strips.slice(0, code.d) as Buffer[]));
    for (let k = code.d; k < code.n; k++) {
      if (!parity[k].equals(strips[k]!)) {
        io.err(`object ${oidHex(oid)} is inconsistent`);
        return true;
      }
    }
    return true;
  }
  if (missing.length > code.p) {
    io.err(
      `failed to rebuild object ${
        oidHex(oid)
      }. ${missing.length} copies get lost, more than ${code.p}`,
    );
    return true;
  }
  code.reconstruct(strips, len, missing);
  for (const m of missing) {
    const h = Header.req(Op.CREATE_AND_WRITE_PEER, { flags: Flag.CMD_WRITE, dataLength: len });
    h.oid = oid;
    h.ecIndex = m;
    h.epoch = io.epoch;
    const r = await io.exec(h, Buffer.from(strips[m]!), placement[m]);
    if (r.hdr.result !== Res.SUCCESS) {
      io.err(`FATAL: failed to write ${oidHex(oid)}, ${strerror(r.hdr.result)}`);
      return false;
    }
    io.out(`fixed missing ${oidHex(oid)}, copy index ${m}\n`);
  }
  return true;
}
