// The Prometheus text writer (core/prom-text.ts), checked by an independent parser of the text
// format (tests/lib/prom-parse.ts, which tests/e2e/metrics.test.ts also runs on a real sheep).
import { describe, expect, test } from "bun:test";
import {
  escapeLabelValue,
  type Family,
  formatValue,
  Histogram,
  HistogramVec,
  render,
} from "../../core/prom-text.ts";
import { parseExposition } from "../lib/prom-parse.ts";

describe("prom-text writer", () => {
  test("counters and gauges with HELP/TYPE lines and escaped labels", () => {
    const text = render([
      {
        name: "sheep_requests_total",
        help: "Requests served.\nSecond line with a \\ backslash",
        type: "counter",
        samples: [
          { labels: { op: "read_obj" }, value: 3 },
          { labels: { op: 'we"ird\\name\nx' }, value: 12345678901234567890n },
        ],
      },
      { name: "sheep_epoch", help: "Epoch.", type: "gauge", samples: [{ value: 7 }] },
    ]);
    expect(text).toBe(
      [
        "# HELP sheep_requests_total Requests served.\\nSecond line with a \\\\ backslash",
        "# TYPE sheep_requests_total counter",
        'sheep_requests_total{op="read_obj"} 3',
        'sheep_requests_total{op="we\\"ird\\\\name\\nx"} 12345678901234567890',
        "# HELP sheep_epoch Epoch.",
        "# TYPE sheep_epoch gauge",
        "sheep_epoch 7",
        "",
      ].join("\n"),
    );
    const p = parseExposition(text);
    expect(p.get("sheep_requests_total")!.type).toBe("counter");
    expect(p.get("sheep_requests_total")!.help).toBe(
      "Requests served.\nSecond line with a \\ backslash",
    );
    expect(p.get("sheep_requests_total")!.samples[1].labels.op).toBe('we"ird\\name\nx');
    expect(p.get("sheep_epoch")!.samples[0].value).toBe(7);
  });

  test("histograms render cumulative buckets ending in +Inf, with _sum and _count", () => {
    const vec = new HistogramVec("op", [0.001, 0.01, 0.1]);
    for (const v of [0.0005, 0.0005, 0.005, 0.05, 5]) vec.get("read").observe(v);
    vec.get("write").observe(0.01); // on a bound: le is inclusive
    const text = render([{
      name: "sheep_request_duration_seconds",
      help: "Latency.",
      type: "histogram",
      series: vec.series(),
    }]);
    const lines = text.split("\n");
    expect(lines).toContain('sheep_request_duration_seconds_bucket{op="read",le="0.001"} 2');
    expect(lines).toContain('sheep_request_duration_seconds_bucket{op="read",le="0.01"} 3');
    expect(lines).toContain('sheep_request_duration_seconds_bucket{op="read",le="0.1"} 4');
    expect(lines).toContain('sheep_request_duration_seconds_bucket{op="read",le="+Inf"} 5');
    expect(lines).toContain('sheep_request_duration_seconds_count{op="read"} 5');
    expect(lines).toContain('sheep_request_duration_seconds_bucket{op="write",le="0.001"} 0');
    expect(lines).toContain('sheep_request_duration_seconds_bucket{op="write",le="0.01"} 1');
    const sum = lines.find((l) => l.startsWith('sheep_request_duration_seconds_sum{op="read"}'))!;
    expect(Number(sum.split(" ")[1])).toBeCloseTo(5.056, 9);
    const p = parseExposition(text).get("sheep_request_duration_seconds")!;
    expect(p.type).toBe("histogram");
    expect(p.samples.filter((s) => s.name.endsWith("_bucket")).length).toBe(8);
  });

  test("an empty histogram still has every bucket, zero sum and count", () => {
    const text = render([{
      name: "h",
      help: "x",
      type: "histogram",
      series: [{ hist: new Histogram([1, 2]) }],
    }]);
    expect(text).toContain('h_bucket{le="+Inf"} 0\nh_sum 0\nh_count 0\n');
    parseExposition(text);
  });

  test("special values and label escaping", () => {
    expect(formatValue(NaN)).toBe("NaN");
    expect(formatValue(Infinity)).toBe("+Inf");
    expect(formatValue(-Infinity)).toBe("-Inf");
    expect(formatValue(0.25)).toBe("0.25");
    expect(formatValue(2n ** 64n - 1n)).toBe("18446744073709551615");
    expect(escapeLabelValue('a"b\\c\nd')).toBe('a\\"b\\\\c\\nd');
  });

  test("rejects what Prometheus would reject", () => {
    const g = (name: string, labels?: Record<string, string>): Family => ({
      name,
      help: "",
      type: "gauge",
      samples: [{ labels, value: 1 }],
    });
    expect(() => render([g("bad-name")])).toThrow(/metric name/);
    expect(() => render([g("0x")])).toThrow(/metric name/);
    expect(() => render([g("ok", { "bad-label": "x" })])).toThrow(/label name/);
    expect(() => render([g("ok", { __reserved: "x" })])).toThrow(/label name/);
    expect(() => render([g("dup"), g("dup")])).toThrow(/twice/);
    expect(() => new Histogram([1, 1])).toThrow(/increase/);
    expect(() =>
      render([{
        name: "h",
        help: "",
        type: "histogram",
        series: [{ labels: { le: "1" }, hist: new Histogram([1]) }],
      }])
    ).toThrow(/reserved/);
  });
});

describe("the test's parser catches broken expositions", () => {
  test("non-cumulative buckets, missing +Inf, +Inf != count, stray samples, bad escapes", () => {
    const hist = (lines: string[]) => `# TYPE h histogram\n${lines.join("\n")}\n`;
    expect(() =>
      parseExposition(
        hist([
          'h_bucket{le="1"} 5',
          'h_bucket{le="2"} 3',
          'h_bucket{le="+Inf"} 5',
          "h_sum 1",
          "h_count 5",
        ]),
      )
    ).toThrow(/cumulative/);
    expect(() => parseExposition(hist(['h_bucket{le="1"} 1', "h_sum 1", "h_count 1"]))).toThrow(
      /\+Inf/,
    );
    expect(() => parseExposition(hist(['h_bucket{le="+Inf"} 2', "h_sum 1", "h_count 3"]))).toThrow(
      /_count/,
    );
    expect(() => parseExposition("x 1\n")).toThrow(/TYPE/);
    expect(() => parseExposition('# TYPE x gauge\nx{a="\\q"} 1\n')).toThrow(/escape/);
    expect(() => parseExposition("# TYPE x counter\nx -1\n")).toThrow(/negative/);
    expect(() => parseExposition("# TYPE x gauge\nx one\n")).toThrow(/value/);
    expect(() => parseExposition("# TYPE x gauge\nx 1")).toThrow(/newline/);
  });
});
