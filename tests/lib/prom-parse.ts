// A strict reader of the Prometheus text format (0.0.4), independent of core/prom-text.ts, so
// the writer's unit test and tests/e2e/metrics.test.ts check the output as a scraper would.
export interface ParsedSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface ParsedFamily {
  name: string;
  type: string;
  help: string;
  samples: ParsedSample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*/;

function parseValue(s: string, line: string): number {
  if (s === "+Inf") return Infinity;
  if (s === "-Inf") return -Infinity;
  if (s === "NaN") return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(s)) throw new Error(`bad value: ${line}`);
  return Number(s);
}

/** Parses the sample line's `{a="b",c="d"}` starting at s[0] === "{"; returns labels and rest. */
function parseLabels(s: string, line: string): { labels: Record<string, string>; rest: string } {
  const labels: Record<string, string> = {};
  let i = 1;
  for (;;) {
    if (s[i] === "}") return { labels, rest: s.slice(i + 1) };
    const m = LABEL.exec(s.slice(i));
    if (!m) throw new Error(`bad label name: ${line}`);
    i += m[0].length;
    if (s[i] !== "=" || s[i + 1] !== '"') throw new Error(`expected ="...": ${line}`);
    i += 2;
    let v = "";
    for (;;) {
      const ch = s[i++];
      if (ch === undefined) throw new Error(`unterminated label value: ${line}`);
      if (ch === '"') break;
      if (ch === "\\") {
        const e = s[i++];
        if (e === "n") v += "\n";
        else if (e === "\\" || e === '"') v += e;
        else throw new Error(`bad escape \\${e}: ${line}`);
      } else v += ch;
    }
    if (m[0] in labels) throw new Error(`label ${m[0]} twice: ${line}`);
    labels[m[0]] = v;
    if (s[i] === ",") i++;
    else if (s[i] !== "}") throw new Error(`expected , or }: ${line}`);
  }
}

/**
 * A strict reader of the text format (0.0.4): every sample must follow its family's TYPE line,
 * histograms must have ascending `le`, cumulative bucket counts, a `+Inf` bucket equal to
 * `_count`, and a `_sum`; counters must not be negative.
 */
export function parseExposition(text: string): Map<string, ParsedFamily> {
  if (!text.endsWith("\n")) throw new Error("exposition must end with a newline");
  const fams = new Map<string, ParsedFamily>();
  let cur: ParsedFamily | null = null;
  for (const line of text.slice(0, -1).split("\n")) {
    if (line === "") continue;
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) ([^ ]+) ?(.*)$/.exec(line);
      if (!m) continue; // a plain comment
      const [, kind, name, rest] = m;
      if (!NAME.test(name) || NAME.exec(name)![0] !== name) throw new Error(`bad name: ${line}`);
      let f = fams.get(name);
      if (!f) {
        f = { name, type: "untyped", help: "", samples: [] };
        fams.set(name, f);
      } else if (f !== cur) throw new Error(`family ${name} is split: ${line}`);
      if (kind === "TYPE") {
        if (!["counter", "gauge", "histogram", "summary", "untyped"].includes(rest)) {
          throw new Error(`bad type: ${line}`);
        }
        if (f.samples.length) throw new Error(`TYPE after samples: ${line}`);
        f.type = rest;
      } else f.help = rest.replace(/\\n/g, "\n").replace(/\\\\/g, "\\");
      cur = f;
      continue;
    }
    const nm = NAME.exec(line);
    if (!nm) throw new Error(`bad sample line: ${line}`);
    const name = nm[0];
    let rest = line.slice(name.length);
    let labels: Record<string, string> = {};
    if (rest.startsWith("{")) ({ labels, rest } = parseLabels(rest, line));
    const parts = rest.trim().split(/ +/);
    if (!rest.startsWith(" ") || parts.length < 1 || parts.length > 2) {
      throw new Error(`bad sample line: ${line}`);
    }
    const value = parseValue(parts[0], line);
    const base = cur && (name === cur.name ||
        (cur.type === "histogram" && /_(bucket|sum|count)$/.test(name) &&
          name.replace(/_(bucket|sum|count)$/, "") === cur.name))
      ? cur
      : null;
    if (!base) throw new Error(`sample outside its family (no TYPE line before it): ${line}`);
    if (base.type === "counter" && !(value >= 0)) throw new Error(`negative counter: ${line}`);
    base.samples.push({ name, labels, value });
  }
  for (const f of fams.values()) if (f.type === "histogram") checkHistogram(f);
  return fams;
}

function checkHistogram(f: ParsedFamily): void {
  const key = (l: Record<string, string>) =>
    JSON.stringify(Object.entries(l).filter(([k]) => k !== "le").sort());
  const groups = new Map<string, ParsedSample[]>();
  for (const s of f.samples) {
    const k = key(s.labels);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k)!.push(s);
  }
  for (const [k, ss] of groups) {
    const buckets = ss.filter((s) => s.name === `${f.name}_bucket`);
    const sum = ss.find((s) => s.name === `${f.name}_sum`);
    const count = ss.find((s) => s.name === `${f.name}_count`);
    if (!buckets.length || !sum || !count) throw new Error(`${f.name}${k}: incomplete histogram`);
    let prevLe = -Infinity, prevCount = 0;
    for (const b of buckets) {
      if (!("le" in b.labels)) throw new Error(`${f.name}${k}: bucket without le`);
      const le = parseValue(b.labels.le, b.labels.le);
      if (!(le > prevLe)) throw new Error(`${f.name}${k}: le not ascending`);
      if (b.value < prevCount) throw new Error(`${f.name}${k}: buckets not cumulative`);
      prevLe = le;
      prevCount = b.value;
    }
    if (prevLe !== Infinity) throw new Error(`${f.name}${k}: no +Inf bucket`);
    if (prevCount !== count.value) throw new Error(`${f.name}${k}: +Inf bucket != _count`);
  }
}
