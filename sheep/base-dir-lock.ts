// One daemon per base directory: an exclusive lock file holding the daemon's pid. A lock left by
// a dead process (or a zombie) is taken over.
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";

export function lockBaseDir(baseDir: string): void {
  const lock = path.join(baseDir, "lock");
  for (let i = 0; i < 2; i++) {
    try {
      const fd = fs.openSync(lock, "wx");
      fs.writeSync(fd, `${process.pid}\n`);
      fs.closeSync(fd);
      return;
    } catch (e) {
      if ((e as { code?: string }).code !== "EEXIST") throw e;
      const pid = Number(fs.readFileSync(lock, "utf8").trim());
      if (pid && pid !== process.pid && processAlive(pid)) {
        throw new Error(`another sheep daemon is using ${baseDir}`);
      }
      fs.rmSync(lock, { force: true });
    }
  }
  throw new Error(`cannot lock ${baseDir}`);
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    // A zombie still answers kill(0); /proc tells the truth.
    const st = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/^\d+ \(.*\) Z/.test(st);
  } catch {
    return false;
  }
}
