import { Res, strerror } from "./proto.ts";

/** An error that carries a Sheepdog result code (protocol.md §8) across layers. */
export class SdError extends Error {
  constructor(readonly code: number, message?: string) {
    super(message ?? strerror(code));
  }
}

/** A failed request on one object: dog names the object as upstream's does. */
export class ObjectError extends SdError {
  constructor(code: number, readonly oid: bigint) {
    super(code);
  }
}

/** Maps filesystem errno codes to result codes the way upstream's store does. */
export function errnoToRes(e: unknown): number {
  const code = (e as { code?: string })?.code;
  if (e instanceof SdError) return e.code;
  switch (code) {
    case "ENOENT":
      return Res.NO_OBJ;
    case "ENOSPC":
    case "EDQUOT":
      return Res.NO_SPACE;
    case "EMFILE":
    case "ENFILE":
    case "EINTR":
    case "EAGAIN":
      return Res.NETWORK_ERROR;
    default:
      return Res.EIO;
  }
}
