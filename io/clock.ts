// The real Clock: system time and the runtime's timers. Timers are unref'd so a pending retry or
// idle reaper never keeps a process (dog, tests) alive on its own.
import type { Clock, TimerHandle } from "../core/clock.ts";
import { ctimeOf } from "../core/proto.ts";

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const t = setTimeout(fn, ms);
    (t as { unref?: () => void }).unref?.();
    return t as unknown as TimerHandle;
  },
  clearTimeout(h: TimerHandle): void {
    clearTimeout(h as unknown as ReturnType<typeof setTimeout>);
  },
};

/** ctime-style timestamp (seconds << 32 | nanoseconds) of now. */
export function ctimeNow(): bigint {
  return ctimeOf(Date.now());
}
