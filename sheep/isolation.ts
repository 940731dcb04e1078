// Fencing of a sheep cut off from its membership engine (ZooKeeper unreachable): the others may
// have expelled it and moved on, so its replicas may be stale. While isolated it serves no client
// I/O; a request waits a little for the link to come back (a brief blip costs no errors), then
// fails with HALT, so a partitioned minority never returns data the majority has overwritten.
import type { Logger } from "./log.ts";

/** How long client I/O waits for the link to come back before it fails. */
const WAIT_MS = 10_000;

export class Isolation {
  private since: number | null = null;
  private waiters: Array<() => void> = [];
  constructor(private readonly log: Logger) {}

  get isolated(): boolean {
    return this.since !== null;
  }

  set(on: boolean): void {
    if (on && this.since === null) {
      this.since = Date.now();
      this.log.warn("lost the membership engine: client I/O is held until it is back");
    } else if (!on && this.since !== null) {
      this.log.info(`membership engine back after ${Date.now() - this.since} ms: serving I/O`);
      this.since = null;
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    }
  }

  /** True when client I/O may go on now or within the wait; false: refuse it (HALT). */
  async passable(ms = WAIT_MS): Promise<boolean> {
    if (this.since === null) return true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const back = await new Promise<boolean>((resolve) => {
      const f = () => resolve(true);
      this.waiters.push(f);
      timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== f);
        resolve(false);
      }, ms);
    });
    clearTimeout(timer);
    return back;
  }
}
