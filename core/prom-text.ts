// Prometheus text exposition format 0.0.4 (what `/metrics` serves): a small writer and histogram.
// Written here rather than taken from prom-client because the project allows no npm dependencies
// beyond hash-wasm, cbor-x and node-zookeeper-client, and the format is a page of rules: HELP and
// TYPE lines, escaped label values, cumulative `_bucket{le=...}` lines ending in `+Inf`, `_sum`
// and `_count`. Pure: values come in, text goes out (the caller owns the clock).

export type Labels = Record<string, string>;

export interface Sample {
  labels?: Labels;
  value: number | bigint;
}

export interface HistogramSeries {
  labels?: Labels;
  hist: Histogram;
}

export type Family =
  | { name: string; help: string; type: "counter" | "gauge"; samples: Sample[] }
  | { name: string; help: string; type: "histogram"; series: HistogramSeries[] };

export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Latency buckets in seconds: 50 us (a cached 4k read) to 10 s (a write stuck behind recovery). */
export const LATENCY_BUCKETS = [
  0.00005,
  0.0001,
  0.00025,
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  10,
];

/** Fixed-bucket histogram; counts are per bucket here and made cumulative when rendered. */
export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(readonly bounds: readonly number[] = LATENCY_BUCKETS) {
    for (let i = 1; i < bounds.length; i++) {
      if (!(bounds[i] > bounds[i - 1])) throw new Error("histogram bounds must increase");
    }
    this.counts = new Array(bounds.length + 1).fill(0);
  }

  observe(v: number): void {
    // Linear scan: 16 bounds, and most observations land in the first few.
    let i = 0;
    while (i < this.bounds.length && v > this.bounds[i]) i++;
    this.counts[i]++;
    this.sum += v;
    this.count++;
  }
}

/** Keeps one histogram per label value (an opcode, an NBD command), created on first use. */
export class HistogramVec {
  private readonly byKey = new Map<string, Histogram>();
  constructor(readonly label: string, readonly bounds: readonly number[] = LATENCY_BUCKETS) {}

  get(value: string): Histogram {
    let h = this.byKey.get(value);
    if (!h) this.byKey.set(value, h = new Histogram(this.bounds));
    return h;
  }

  series(): HistogramSeries[] {
    return [...this.byKey].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map((
      [v, hist],
    ) => ({ labels: { [this.label]: v }, hist }));
  }
}

export function formatValue(v: number | bigint): string {
  if (typeof v === "bigint") return v.toString();
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

export function escapeLabelValue(s: string): string {
  return s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function escapeHelp(s: string): string {
  return s.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function labelText(labels: Labels | undefined, extra?: [string, string]): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(labels ?? {})) {
    if (!LABEL_NAME.test(k) || k.startsWith("__")) throw new Error(`bad label name ${k}`);
    parts.push(`${k}="${escapeLabelValue(v)}"`);
  }
  if (extra) parts.push(`${extra[0]}="${escapeLabelValue(extra[1])}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

/** The whole exposition: one HELP and one TYPE line per family, then its samples. */
export function render(families: Family[]): string {
  const out: string[] = [];
  const seen = new Set<string>();
  for (const f of families) {
    if (!METRIC_NAME.test(f.name)) throw new Error(`bad metric name ${f.name}`);
    if (seen.has(f.name)) throw new Error(`metric ${f.name} defined twice`);
    seen.add(f.name);
    out.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
    if (f.type !== "histogram") {
      for (const s of f.samples) {
        out.push(`${f.name}${labelText(s.labels)} ${formatValue(s.value)}`);
      }
      continue;
    }
    for (const { labels, hist } of f.series) {
      if (labels && "le" in labels) throw new Error("histogram label le is reserved");
      let cum = 0;
      hist.bounds.forEach((b, i) => {
        cum += hist.counts[i];
        out.push(`${f.name}_bucket${labelText(labels, ["le", formatValue(b)])} ${cum}`);
      });
      out.push(`${f.name}_bucket${labelText(labels, ["le", "+Inf"])} ${hist.count}`);
      out.push(`${f.name}_sum${labelText(labels)} ${formatValue(hist.sum)}`);
      out.push(`${f.name}_count${labelText(labels)} ${hist.count}`);
    }
  }
  return out.join("\n") + "\n";
}
