// The protocol client's pure part (protocol.md §2): replies, network errors and their C texts.
// The sockets and the connection pool live in io/client.ts.
import type { Buffer } from "node:buffer";
import { SdError } from "./errors.ts";
import { type Header, Res } from "./proto.ts";

export interface Reply {
  hdr: Header;
  data: Buffer;
  /**
   * The payload in the pieces it arrived in, when the client kept them as views (no copy);
   * `data` then joins them on first use. Absent: use `data`.
   */
  readonly parts?: readonly Buffer[];
}

/** C strerror() texts for the socket errors a client typically sees. */
const ERRNO_TEXT: Record<string, string> = {
  ECONNREFUSED: "Connection refused",
  ECONNRESET: "Connection reset by peer",
  ETIMEDOUT: "Connection timed out",
  EHOSTUNREACH: "No route to host",
  ENETUNREACH: "Network is unreachable",
  EADDRNOTAVAIL: "Cannot assign requested address",
  EPIPE: "Broken pipe",
  ENOTFOUND: "Name or service not known",
  EAI_AGAIN: "Temporary failure in name resolution",
  EACCES: "Permission denied",
  EINVAL: "Invalid argument",
};

export function errnoText(e: unknown): string {
  const code = (e as { code?: string })?.code;
  if (code && ERRNO_TEXT[code]) return ERRNO_TEXT[code];
  return (e as Error)?.message ?? String(e);
}

/** Network failure talking to a sheep. `code` is always Res.NETWORK_ERROR. */
export class NetworkError extends SdError {
  constructor(
    readonly host: string,
    readonly port: number,
    readonly errno: string | undefined,
    detail: string,
    readonly connectFailed = false,
  ) {
    super(Res.NETWORK_ERROR, detail);
  }
}

export interface ClientPoolOptions {
  connectTimeoutMs?: number;
  /** Connections without outstanding requests for this long are closed (0 = never). */
  idleMs?: number;
}
