// Daemon logging in upstream's formats (-l format=): "server" (the default,
// `%b %2d %H:%M:%S  LEVEL [main] message`), "default" (the message only) and "json" (one object
// per line: user_info {program_name, port}, body {second, usecond, worker_name, worker_idx,
// func, line, msg}).
// SIGHUP reopens the file (sheep/main.ts), for logrotate (packaging/logrotate/sheepdog).
import * as fs from "node:fs";
import * as path from "node:path";

export const LOG_LEVELS = [
  "emerg",
  "alert",
  "crit",
  "err",
  "warning",
  "notice",
  "info",
  "debug",
] as const;
const LEVEL_TAG = ["EMERG", "ALERT", "CRIT", "ERROR", "WARN", "NOTICE", "INFO", "DEBUG"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

export type LogFormat = "default" | "server" | "json";

export class Logger {
  level = 6;
  private fd: number | null = null;
  format: LogFormat = "server";
  /** The sheep's port, for json lines' user_info. */
  port = 0;
  constructor(private readonly dst: "file" | "stdout" | "stderr", private readonly file?: string) {
    if (dst === "file" && file) {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      this.fd = fs.openSync(file, "a");
    }
  }
  /**
   * SIGHUP (logrotate): the file may have been renamed away; continue in a new one at the same
   * path. The old descriptor is closed only once the new one is open, so no line is lost.
   */
  reopen(): void {
    if (this.fd === null || !this.file) return;
    let fd: number;
    try {
      fs.mkdirSync(path.dirname(this.file), { recursive: true });
      fd = fs.openSync(this.file, "a");
    } catch (e) {
      this.err(`cannot reopen ${this.file}: ${(e as Error).message}`);
      return;
    }
    const old = this.fd;
    this.fd = fd;
    try {
      fs.closeSync(old);
    } catch { /* already gone */ }
    this.notice("log file reopened");
  }

  private write(lvl: number, msg: string): void {
    if (lvl > this.level) return;
    const line = this.line(lvl, msg, new Date());
    try {
      if (this.fd !== null) fs.writeSync(this.fd, line);
      else fs.writeSync(this.dst === "stdout" ? 1 : 2, line);
    } catch {
      // logging must never take the daemon down (full disk, closed stdout)
    }
  }
  /** One log line in the configured format (exported for the unit test). */
  line(lvl: number, msg: string, d: Date): string {
    if (this.format === "default") return msg + "\n";
    if (this.format === "json") {
      const ms = d.getTime();
      return JSON.stringify({
        user_info: { program_name: "sheep", port: this.port },
        body: {
          second: Math.floor(ms / 1000),
          usecond: (ms % 1000) * 1000,
          worker_name: "main",
          worker_idx: 0,
          func: "",
          line: 0,
          level: LOG_LEVELS[lvl],
          msg,
        },
      }) + "\n";
    }
    const p2 = (n: number) => String(n).padStart(2, "0");
    return `${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2)} ${p2(d.getHours())}:${
      p2(d.getMinutes())
    }:${p2(d.getSeconds())} ${LEVEL_TAG[lvl].padStart(6)} [main] ${msg}\n`;
  }

  emerg(m: string) {
    this.write(0, m);
  }
  err(m: string) {
    this.write(3, m);
  }
  warn(m: string) {
    this.write(4, m);
  }
  notice(m: string) {
    this.write(5, m);
  }
  info(m: string) {
    this.write(6, m);
  }
  debug(m: string) {
    this.write(7, m);
  }
}
