// Epoch log entries this sheep does not have, fetched from a member (upstream's
// epoch_log_read_remote): the first member that has it answers.
import { Header, Op, Res } from "../core/proto.ts";
import { nodeEqual, type SdNode } from "../core/node.ts";
import { decodeEpochFile } from "../io/config-file.ts";
import type { Reply } from "./ops/reply.ts";

export async function fetchEpoch(
  epoch: number,
  from: readonly SdNode[],
  me: SdNode,
  sendTo: (n: SdNode, h: Header) => Promise<Reply>,
  onError: (n: SdNode, e: Error) => void = () => {},
): Promise<{ nodes: SdNode[]; time: bigint } | null> {
  for (const n of from) {
    if (nodeEqual(n, me)) continue;
    try {
      const h = Header.req(Op.GET_EPOCH, { dataLength: 6144 * 80 + 8 });
      h.tgtEpoch = epoch;
      const r = await sendTo(n, h);
      if (r.hdr.result === Res.SUCCESS) return decodeEpochFile(r.data);
    } catch (e) {
      onError(n, e as Error);
    }
  }
  return null;
}
