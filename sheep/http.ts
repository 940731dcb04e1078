// `sheep --http [ADDR:]PORT`: /metrics (Prometheus), /healthz (load balancers, systemd) and the
// dashboard (/, its assets, /api/state). node:http, so it runs on Bun and Deno and in the
// compiled binary; the dashboard's files are string constants (no files read at runtime).
import * as http from "node:http";
import { Buffer } from "node:buffer";
import type { Socket } from "node:net";
import { Status } from "../core/proto.ts";
import { CONTENT_TYPE } from "../core/prom-text.ts";
import type { Sheep } from "./daemon.ts";
import { SheepMetrics, STATUS_NAMES } from "./metrics.ts";
import { DashboardState } from "./dashboard/state.ts";
import { DASHBOARD_CSS, DASHBOARD_HTML, DASHBOARD_JS } from "./dashboard/assets.ts";

export interface HttpServer {
  port: number;
  close(): Promise<void>;
}

/** The daemon builds its recovery manager once the membership driver is up. */
function started(sheep: Sheep): boolean {
  return (sheep as { recovery?: unknown }).recovery !== undefined;
}

/** 200 and a one-line reason when this sheep serves I/O, else 503 and why not. */
export function health(sheep: Sheep, nodes: number): { code: number; body: string } {
  if (!started(sheep)) return { code: 503, body: "unavailable: starting" };
  const st = sheep.state;
  if (st.ctime === 0n) return { code: 503, body: "unavailable: cluster not formatted" };
  if (st.status !== Status.OK) {
    return {
      code: 503,
      body: `unavailable: cluster status ${STATUS_NAMES[st.status] ?? st.status}`,
    };
  }
  return {
    code: 200,
    body: `ok: serving, epoch ${st.epoch}, ${nodes} node${nodes === 1 ? "" : "s"}`,
  };
}

const STATIC: Record<string, { type: string; body: Buffer }> = {
  "/": { type: "text/html; charset=utf-8", body: Buffer.from(DASHBOARD_HTML) },
  "/dashboard.js": { type: "text/javascript; charset=utf-8", body: Buffer.from(DASHBOARD_JS) },
  "/dashboard.css": { type: "text/css; charset=utf-8", body: Buffer.from(DASHBOARD_CSS) },
};

export async function startHttp(sheep: Sheep): Promise<HttpServer> {
  const { host, port } = sheep.opts.http!;
  const metrics = new SheepMetrics(sheep, () => performance.now());
  sheep.requestHook = metrics.onRequest;
  sheep.nbdHook = metrics.onNbdCommand;
  const dash = new DashboardState(sheep, metrics);
  // The recovery rate needs samples between scrapes too.
  const sampler = setInterval(() => started(sheep) && metrics.sampleRecovery(), 1000);
  (sampler as { unref?: () => void }).unref?.();

  const send = (
    res: http.ServerResponse,
    code: number,
    type: string,
    body: string | Buffer,
    head: boolean,
  ) => {
    const b = typeof body === "string" ? Buffer.from(body) : body;
    res.writeHead(code, {
      "content-type": type,
      "content-length": b.length,
      "cache-control": "no-store",
    });
    res.end(head ? undefined : b);
  };

  const server = http.createServer((req, res) => {
    const url = (req.url ?? "/").split("?")[0];
    const head = req.method === "HEAD";
    if (req.method !== "GET" && !head) {
      res.setHeader("allow", "GET, HEAD");
      return send(res, 405, "text/plain", "method not allowed\n", head);
    }
    try {
      if (url === "/metrics" || url === "/api/state") {
        if (!started(sheep)) return send(res, 503, "text/plain", "starting\n", head);
      }
      if (url === "/metrics") return send(res, 200, CONTENT_TYPE, metrics.render(), head);
      if (url === "/healthz") {
        const h = health(sheep, metrics.clusterNodes().length);
        return send(res, h.code, "text/plain; charset=utf-8", h.body + "\n", head);
      }
      if (url === "/api/state") {
        dash.get().then(
          (s) => send(res, 200, "application/json", JSON.stringify(s), head),
          (e) => send(res, 500, "text/plain", `${(e as Error).message}\n`, head),
        );
        return;
      }
      const asset = STATIC[url];
      if (asset) return send(res, 200, asset.type, asset.body, head);
      return send(res, 404, "text/plain", "not found\n", head);
    } catch (e) {
      sheep.log.err(`http ${url}: ${(e as Error).stack ?? e}`);
      return send(res, 500, "text/plain", `${(e as Error).message}\n`, head);
    }
  });
  const sockets = new Set<Socket>();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once(
      "error",
      (e) => reject(new Error(`cannot listen on ${host}:${port} (--http): ${e.message}`)),
    );
    server.listen(port, host, () => resolve());
  });
  server.on("error", (e) => sheep.log.warn(`http: ${e.message}`));
  sheep.log.info(`HTTP (metrics, dashboard) listening on ${host}:${port}`);
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        clearInterval(sampler);
        sheep.requestHook = null;
        server.close(() => resolve());
        // Keep-alive connections (a scraper, a dashboard) would hold close() open.
        for (const s of sockets) s.destroy();
      }),
  };
}
