// One executable: `sheepdog sheep ...` (daemon), `sheepdog dog ...` (admin CLI); invoked through a
// link named `sheep` or `dog` it behaves as that command.
import * as path from "node:path";
import process from "node:process";
import { VERSION } from "./core/version.ts";

declare const Deno: { args: string[]; execPath(): string; mainModule?: string } | undefined;

function selfCommand(): string[] {
  // How to start this program again (for daemonizing): the compiled binary, or runtime + script.
  const exe = process.execPath;
  const base = path.basename(exe);
  if (base === "bun" || base === "deno" || base === "node") {
    const script = new URL(import.meta.url).pathname;
    return base === "deno" ? [exe, "run", "-A", script] : [exe, script];
  }
  return [exe];
}

async function main(): Promise<number> {
  const args = typeof Deno !== "undefined" ? Deno.args : process.argv.slice(2);
  const invoked = path.basename(process.argv[1] ?? process.argv0 ?? "");
  const argv0 = path.basename(process.argv0 ?? "");
  let cmd: string | undefined;
  let rest = args;
  if (invoked === "sheep" || argv0 === "sheep") cmd = "sheep";
  else if (invoked === "dog" || argv0 === "dog") cmd = "dog";
  else {
    cmd = args[0];
    rest = args.slice(1);
  }
  switch (cmd) {
    case "sheep": {
      const { sheepMain } = await import("./sheep/main.ts");
      return await sheepMain(rest, selfCommand());
    }
    case "dog": {
      const { dogMain } = await import("./cli/dog.ts");
      return await dogMain(rest);
    }
    case "--version":
    case "-v":
    case "version":
      process.stdout.write(`sheepdog ${VERSION}\n`);
      return 0;
    default:
      process.stdout.write(
        `sheepdog ${VERSION}: distributed block storage for virtual machines\n\n` +
          "Usage: sheepdog sheep [options] DIR   run the daemon (see 'sheepdog sheep --help')\n" +
          "       sheepdog dog <command> ...     administer the cluster (see 'sheepdog dog --help')\n" +
          "       sheepdog --version\n",
      );
      return cmd === undefined || cmd === "--help" || cmd === "-h" || cmd === "help" ? 0 : 64;
  }
}

main().then(
  // sheepMain resolves only when the daemon has stopped, so exiting here is always right.
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`sheepdog: ${(e as Error).stack ?? e}\n`);
    process.exit(2);
  },
);
