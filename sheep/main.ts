// `sheep` entry point: option parsing, daemonizing, signals.
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import { helpText, parseSheepArgs, UsageError, versionText } from "./options.ts";
import type { SheepOptions } from "./options.ts";

export async function sheepMain(argv: string[], selfCommand: string[]): Promise<number> {
  let opts: SheepOptions | "help" | "version";
  try {
    opts = parseSheepArgs(argv, "sheep", process.env);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`${e.message}\n`);
      process.stdout.write(e.stdout);
      return 1;
    }
    throw e;
  }
  if (opts === "help") {
    process.stdout.write(helpText());
    return 0;
  }
  if (opts === "version") {
    process.stdout.write(versionText());
    return 0;
  }
  if (!opts.foreground) {
    // Daemonize: re-run ourselves in the foreground, detached, and report whether it came up.
    fs.mkdirSync(opts.baseDir, { recursive: true });
    const child = spawn(selfCommand[0], [...selfCommand.slice(1), "sheep", "-f", ...argv], {
      detached: true,
      stdio: ["ignore", "ignore", "pipe"],
    });
    let err = "";
    child.stderr!.on("data", (d) => (err += d.toString()));
    const code = await new Promise<number>((resolve) => {
      const t = setTimeout(() => resolve(0), 3000);
      child.on("exit", (c) => {
        clearTimeout(t);
        resolve(c ?? 1);
      });
    });
    if (code !== 0) {
      process.stderr.write(err);
      return code;
    }
    child.stderr!.destroy();
    child.unref();
    return 0;
  }
  const { Sheep } = await import("./daemon.ts");
  const sheep = new Sheep(opts);
  let exitCode: number | null = null;
  const exited = new Promise<number>((resolve) => {
    sheep.onExit = (code) => {
      exitCode = code;
      resolve(code);
    };
  });
  process.on("SIGTERM", () => sheep.shutdown(0, true));
  process.on("SIGINT", () => sheep.shutdown(0, true));
  process.on("SIGPIPE", () => {});
  process.on("SIGHUP", () => sheep.log.reopen());
  try {
    await sheep.start();
  } catch (e) {
    process.stderr.write(`sheep: ${(e as Error).message}\n`);
    sheep.log.err((e as Error).stack ?? String(e));
    await sheep.shutdown(1).catch(() => {});
    return exitCode ?? 1;
  }
  return await exited;
}
