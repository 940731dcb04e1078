// getopt_long as glibc implements it, because upstream's sheep parses with it and operators'
// command lines rely on its rules: argument permutation, `--`, clustered short options, an
// option argument taken from the next word even when it starts with `-` (`-p -1`), unambiguous
// long-option prefixes, and glibc's exact diagnostics. Pure: messages are returned, not printed.

export interface LongOption {
  name: string;
  /** 0 = no argument, 1 = required, 2 = optional (only as `--name=value`). */
  hasArg: 0 | 1 | 2;
  /** What the option reports itself as (usually its short letter). */
  val: string;
}

export type GetoptItem =
  | { opt: string; arg?: string }
  /** glibc printed `message` and returned '?' (or ':'); optopt is the option concerned, "" if unknown. */
  | { error: string; optopt: string };

export interface GetoptResult {
  /** In command-line order; parsing stops after the first error, as a caller that exits would. */
  items: GetoptItem[];
  positionals: string[];
}

interface ShortSpec {
  hasArg: 0 | 1 | 2;
}

function parseShortSpec(optstring: string): { specs: Map<string, ShortSpec>; inOrder: boolean } {
  let s = optstring;
  let inOrder = false;
  // '+' (or POSIXLY_CORRECT, handled by the caller) stops at the first non-option.
  if (s.startsWith("+")) {
    inOrder = true;
    s = s.slice(1);
  }
  if (s.startsWith(":")) s = s.slice(1);
  const specs = new Map<string, ShortSpec>();
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === ":") continue;
    let hasArg: 0 | 1 | 2 = 0;
    if (s[i + 1] === ":") hasArg = s[i + 2] === ":" ? 2 : 1;
    specs.set(c, { hasArg });
  }
  return { specs, inOrder };
}

/**
 * Parses `argv` (without the program name). `prog` is what glibc prefixes its messages with
 * (argv[0]).
 */
export function getoptLong(
  argv: string[],
  optstring: string,
  longopts: LongOption[],
  prog: string,
  opts: { posixlyCorrect?: boolean } = {},
): GetoptResult {
  const { specs, inOrder: plus } = parseShortSpec(optstring);
  const inOrder = plus || !!opts.posixlyCorrect;
  const items: GetoptItem[] = [];
  const positionals: string[] = [];
  let i = 0;
  const fail = (error: string, optopt: string): GetoptResult => {
    items.push({ error, optopt });
    return { items, positionals };
  };
  while (i < argv.length) {
    const a = argv[i];
    if (a === "--") {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (a.length < 2 || a[0] !== "-") {
      if (inOrder) {
        positionals.push(...argv.slice(i));
        break;
      }
      positionals.push(a);
      i++;
      continue;
    }
    i++;
    if (a.startsWith("--")) {
      const body = a.slice(2);
      const eq = body.indexOf("=");
      const name = eq < 0 ? body : body.slice(0, eq);
      let found = longopts.find((o) => o.name === name);
      if (!found) {
        const cands = longopts.filter((o) => o.name.startsWith(name));
        // Prefixes naming options that behave identically are not ambiguous (glibc).
        const distinct = cands.filter((o, k) =>
          cands.findIndex((p) => p.hasArg === o.hasArg && p.val === o.val) === k
        );
        if (distinct.length > 1) {
          const poss = cands.map((o) => ` '--${o.name}'`).join("");
          return fail(`${prog}: option '${a}' is ambiguous; possibilities:${poss}`, "");
        }
        found = cands[0];
      }
      if (!found) return fail(`${prog}: unrecognized option '${a}'`, "");
      if (eq >= 0) {
        if (found.hasArg === 0) {
          return fail(
            `${prog}: option '--${found.name}' doesn't allow an argument`,
            found.val,
          );
        }
        items.push({ opt: found.val, arg: body.slice(eq + 1) });
      } else if (found.hasArg === 1) {
        if (i >= argv.length) {
          return fail(`${prog}: option '--${found.name}' requires an argument`, found.val);
        }
        items.push({ opt: found.val, arg: argv[i++] });
      } else {
        items.push({ opt: found.val });
      }
      continue;
    }
    // A cluster of short options: `-fn`, `-p8000`, `-fp 8000`.
    for (let k = 1; k < a.length; k++) {
      const c = a[k];
      const spec = c === ":" ? undefined : specs.get(c);
      if (!spec) return fail(`${prog}: invalid option -- '${c}'`, c);
      if (spec.hasArg === 0) {
        items.push({ opt: c });
        continue;
      }
      const rest = a.slice(k + 1);
      if (rest.length > 0) items.push({ opt: c, arg: rest });
      else if (spec.hasArg === 2) items.push({ opt: c });
      else if (i < argv.length) items.push({ opt: c, arg: argv[i++] });
      else return fail(`${prog}: option requires an argument -- '${c}'`, c);
      break;
    }
  }
  return { items, positionals };
}

/**
 * strtol(s, &end, 10) accepted only when it consumed something and reached the end, as
 * upstream's number options check: leading white space and a sign are allowed, nothing after.
 * Returns null when that fails; out-of-range values come back as they are (bigint).
 */
export function strtolWhole(s: string): bigint | null {
  const m = /^[ \t\n\v\f\r]*([+-]?\d+)$/.exec(s);
  return m ? BigInt(m[1]) : null;
}
