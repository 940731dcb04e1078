// Time as a dependency: code that waits or measures takes a Clock, so a simulation can run it on
// virtual time (SimClock) and the daemon on the real one (io/clock.ts). core/ never reads the
// system clock itself.
import { assert } from "./assert.ts";

/** Opaque timer handle of one Clock. */
export type TimerHandle = unknown;

export interface Clock {
  /** Milliseconds since some fixed origin (wall clock for the real one). */
  now(): number;
  /** Runs fn once after ms. A real clock does not keep the process alive for it. */
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(h: TimerHandle): void;
}

interface SimTimer {
  at: number;
  seq: number;
  fn: () => void;
}

/**
 * Virtual time: nothing fires until the owner advances it. Timers due at the same instant fire in
 * the order they were set, so a run is a pure function of its inputs.
 */
export class SimClock implements Clock {
  private t: number;
  private seq = 0;
  private timers = new Map<TimerHandle, SimTimer>();

  constructor(start = 0) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const h = {};
    this.timers.set(h, { at: this.t + Math.max(0, ms), seq: this.seq++, fn });
    return h;
  }

  clearTimeout(h: TimerHandle): void {
    this.timers.delete(h);
  }

  /** Number of timers not yet fired. */
  get pending(): number {
    return this.timers.size;
  }

  /** When the next timer is due, or null when none is set. */
  nextAt(): number | null {
    const t = this.next();
    return t ? t[1].at : null;
  }

  /** Moves time to the next timer and fires it; false when no timer is set. */
  fireNext(): boolean {
    const t = this.next();
    if (!t) return false;
    const [h, timer] = t;
    assert(timer.at >= this.t, "sim clock: timer due in the past");
    this.timers.delete(h);
    this.t = timer.at;
    timer.fn();
    return true;
  }

  /** Moves time forward by ms, firing every timer that falls due on the way, in order. */
  advance(ms: number): void {
    assert(ms >= 0, "sim clock: time does not go backwards");
    const end = this.t + ms;
    for (;;) {
      const at = this.nextAt();
      if (at === null || at > end) break;
      this.fireNext();
    }
    this.t = end;
  }

  private next(): [TimerHandle, SimTimer] | null {
    let best: [TimerHandle, SimTimer] | null = null;
    for (const e of this.timers) {
      if (!best || e[1].at < best[1].at || (e[1].at === best[1].at && e[1].seq < best[1].seq)) {
        best = e;
      }
    }
    return best;
  }
}
