// `make chaos`: chaos runs (tests/lib/chaos.ts) over several seeds; SEED=n replays one.
// Env: SEED (one seed), SEEDS (how many seeds from 1, default 3), CHAOS_EVENTS (events per seed,
// default 17: 51 over the three seeds). Ends with "chaos: N events, M seeds, V violations".
import process from "node:process";
import { runChaos } from "./chaos.ts";

const perSeed = Number(process.env.CHAOS_EVENTS ?? 17);
const seeds = process.env.SEED
  ? [Number(process.env.SEED)]
  : Array.from({ length: Number(process.env.SEEDS ?? 3) }, (_, i) => i + 1);
let events = 0;
let violations = 0;
for (const seed of seeds) {
  console.log(`chaos: seed ${seed}, ${perSeed} events (replay: SEED=${seed} make chaos)`);
  const r = await runChaos({ seed, events: perSeed }).catch((e) => {
    console.log(`chaos: seed ${seed}: the run failed: ${(e as Error).stack ?? e}`);
    process.exit(2);
  });
  events += perSeed;
  violations += r.violations.length;
  console.log(
    `chaos: seed ${seed}: ${r.acked.length} acknowledged writes, ${r.flushes} flushes,` +
      ` ${r.reads} checked reads, ${r.failedOps} failed requests`,
  );
  if (r.unexpectedExits.length) console.log(`chaos: seed ${seed}: ${r.unexpectedExits.join("; ")}`);
  console.log(`chaos: seed ${seed} event log:\n  ${r.events.join("\n  ")}`);
  if (r.violations.length) console.log(`chaos: seed ${seed}: FIRST VIOLATION: ${r.violations[0]}`);
}
console.log(`chaos: ${events} events, ${seeds.length} seeds, ${violations} violations`);
process.exit(violations === 0 ? 0 : 1);
