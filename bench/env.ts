// What the sections of `make bench` share: the run's settings, the result table, the random
// source file, the disk reference, and two helpers.
import { TestCluster } from "../tests/lib/cluster.ts";
import { MB, type Results } from "./lib.ts";

export interface BenchEnv {
  results: Results;
  /** The run's temp dir. */
  work: string;
  /** The random file every section reads (fileSize bytes). */
  src: string;
  fileSize: number;
  full: boolean;
  fioRuntime: number;
  nbdkit: boolean;
  nbdSize: number;
  iters: number;
  creates: number;
  recSize: number;
  loadSize: number;
  preKillMs: number;
  /** Recovery throttle for the "I/O during recovery" runs: max, interval ms. */
  throttle: [string, string];
  /** cp + sync of the source on this disk, MB/s (measured once). */
  diskRef(): Promise<number>;
}

export function mbps(bytes: number, ms: number): number {
  return bytes / MB / (ms / 1000);
}

export async function withCluster<T>(
  c: TestCluster,
  f: (c: TestCluster) => Promise<T>,
): Promise<T> {
  try {
    return await f(c);
  } finally {
    await c.stop();
  }
}
