// dog command/option tables and GNU-style option parsing (dog-cli.md §1, §3).
import { getoptLong, type LongOption } from "../core/getopt.ts";

export interface OptDef {
  ch: string;
  long: string;
  hasArg: boolean;
  desc: string;
}

/** Handler names are resolved by cli/dog.ts. */
export interface SubDef {
  name: string;
  arg?: string;
  /** Option letters accepted, in usage order (null for nested entries: the parent's apply). */
  opts?: string;
  desc: string;
  needNodeList?: boolean;
  needArg?: boolean;
  sub?: SubDef[];
}

export interface CmdDef {
  name: string;
  subs: SubDef[];
  options: OptDef[];
}

const o = (ch: string, long: string, hasArg: boolean, desc: string): OptDef => ({
  ch,
  long,
  hasArg,
  desc,
});

export const DOG_OPTIONS: OptDef[] = [
  o("a", "address", true, "specify the daemon address (default: localhost)"),
  o("p", "port", true, "specify the daemon port"),
  o(
    "r",
    "raw",
    false,
    "raw output mode: omit headers, separate fields with\n                          single spaces and print all sizes in decimal bytes",
  ),
  o("v", "verbose", false, "print more information than default"),
  o("h", "help", false, "display this help and exit"),
  o("T", "time", false, "show elapsed time"),
  o("j", "json", false, "machine-readable output (JSON)"),
];

export const VDI_OPTIONS: OptDef[] = [
  o("P", "prealloc", false, "preallocate all the data objects"),
  o("n", "no-share", false, "share nothing with its parent"),
  o("i", "index", true, "specify the index of data objects"),
  o("s", "snapshot", true, "specify a snapshot id or tag name"),
  o("x", "exclusive", false, "write in an exclusive mode"),
  o("d", "delete", false, "delete a key"),
  o("w", "writeback", false, "use writeback mode"),
  o("c", "copies", true, "specify the data redundancy level"),
  o("F", "from", true, "create a differential backup from the snapshot"),
  o("f", "force", false, "do operation forcibly"),
  o("y", "hyper", false, "create a hyper volume"),
  o("o", "oid", true, "specify the object id of the tracking object"),
  o(
    "e",
    "exist",
    false,
    "only check objects exist or not,\n                          neither comparing nor repairing",
  ),
  o("z", "block_size_shift", true, "specify the bit shift num for data object size"),
  o(
    "R",
    "reduce-identical-snapshots",
    false,
    "do not create snapshot if working VDI doesn't have its own objects",
  ),
];

export const NODE_OPTIONS: OptDef[] = [
  o("A", "all", false, "show md information of all the nodes"),
  o("P", "progress", false, "show progress of recovery in the node"),
  o("w", "watch", false, "watch the stat every second"),
  o("l", "local", false, "issue request to local node"),
  o("f", "force", false, "ignore the confirmation"),
];

export const CLUSTER_OPTIONS: OptDef[] = [
  o("b", "store", true, "specify backend store"),
  o("c", "copies", true, "specify the default data redundancy (number of copies)"),
  o("f", "force", false, "do not prompt for confirmation"),
  o("F", "avoid-diskfull", false, "skip recovery if recovery process can cause disk full"),
  o("l", "lock", false, "Lock vdi to exclude multiple users"),
  o("m", "multithread", false, "use multi-thread for 'cluster snapshot save'"),
  o("R", "recyclevid", false, "enable recycling of VID"),
  o("t", "strict", false, "do not serve write request if number of nodes is not sufficient"),
  o("z", "block_size_shift", true, "specify the shift num of default data object size"),
  o("V", "fixedvnodes", false, "disable automatic vnodes calculation"),
  o("d", "diff", false, "just output the changes between the two adjacent epochesfor cluster info"),
];

export const COMMANDS: CmdDef[] = [
  {
    name: "vdi",
    options: VDI_OPTIONS,
    subs: [
      {
        name: "check",
        arg: "<vdiname>",
        opts: "seaphT",
        desc: "check and repair image's consistency",
        needNodeList: true,
        needArg: true,
      },
      {
        name: "create",
        arg: "<vdiname> <size>",
        opts: "PycaphrvzT",
        desc: "create an image",
        needNodeList: true,
        needArg: true,
      },
      {
        name: "snapshot",
        arg: "<vdiname>",
        opts: "saphrvTR",
        desc: "create a snapshot",
        needArg: true,
      },
      {
        name: "clone",
        arg: "<src vdi> <dst vdi>",
        opts: "sPnaphrvT",
        desc: "clone an image",
        needArg: true,
      },
      { name: "delete", arg: "<vdiname>", opts: "saphT", desc: "delete an image", needArg: true },
      {
        name: "rollback",
        arg: "<vdiname>",
        opts: "saphfrvT",
        desc: "rollback to a snapshot",
        needArg: true,
      },
      { name: "list", arg: "[vdiname]", opts: "aprhoTj", desc: "list images" },
      { name: "tree", opts: "aphTj", desc: "show images in tree view format" },
      { name: "graph", opts: "aphT", desc: "show images in Graphviz dot format" },
      {
        name: "object",
        arg: "<vdiname>",
        opts: "isaphT",
        desc: "show object information in the image",
        needArg: true,
        sub: [
          {
            name: "location",
            desc: "show object location information",
            needNodeList: true,
            needArg: true,
          },
          { name: "map", desc: "show object map information", needArg: true },
          { name: "dump-inode", desc: "dump inode information", needArg: true },
        ],
      },
      {
        name: "track",
        arg: "<vdiname>",
        opts: "isaphoT",
        desc: "show the object epoch trace in the image",
        needNodeList: true,
        needArg: true,
      },
      {
        name: "setattr",
        arg: "<vdiname> <key> [value]",
        opts: "dxaphT",
        desc: "set a VDI attribute",
        needArg: true,
      },
      {
        name: "getattr",
        arg: "<vdiname> <key>",
        opts: "aphT",
        desc: "get a VDI attribute",
        needArg: true,
      },
      {
        name: "resize",
        arg: "<vdiname> <new size>",
        opts: "aphT",
        desc: "resize an image",
        needArg: true,
      },
      {
        name: "read",
        arg: "<vdiname> [<offset> [<len>]]",
        opts: "saphT",
        desc: "read data from an image",
        needArg: true,
      },
      {
        name: "write",
        arg: "<vdiname> [<offset> [<len>]]",
        opts: "apwhT",
        desc: "write data to an image",
        needArg: true,
      },
      {
        name: "backup",
        arg: "<vdiname>",
        opts: "sFaphT",
        desc: "create an incremental backup between two snapshots",
        needNodeList: true,
        needArg: true,
      },
      {
        name: "restore",
        arg: "<vdiname>",
        opts: "saphT",
        desc: "restore snapshot images from a backup",
        needNodeList: true,
        needArg: true,
      },
      {
        name: "alter-copy",
        arg: "<vdiname>",
        opts: "caphTf",
        desc: "set the vdi's redundancy level",
        needNodeList: true,
        needArg: true,
      },
      {
        name: "lock",
        opts: "aphT",
        desc: "See 'dog vdi lock' for more information",
        needArg: true,
        sub: [
          { name: "list", desc: "list locked VDIs" },
          { name: "unlock", arg: "<vdiname>", desc: "unlock locked VDI forcibly", needArg: true },
        ],
      },
      {
        name: "cache",
        arg: "<vdiname>",
        opts: "saphT",
        desc: "Run 'dog vdi cache' for more information",
        needArg: true,
        sub: [
          { name: "flush", desc: "flush the cache of the vdi specified.", needArg: true },
          {
            name: "delete",
            desc: "delete the cache of the vdi specified in all nodes.",
            needArg: true,
          },
          { name: "info", desc: "show usage of the cache" },
          { name: "purge", desc: "purge the cache of all vdi (no flush)" },
        ],
      },
    ],
  },
  {
    name: "node",
    options: NODE_OPTIONS,
    subs: [
      { name: "kill", arg: "<node id>", opts: "aprhlT", desc: "kill node", needNodeList: true },
      { name: "list", opts: "aprhTj", desc: "list nodes", needNodeList: true },
      {
        name: "info",
        opts: "aprhTj",
        desc: "show information about each node",
        needNodeList: true,
      },
      {
        name: "recovery",
        arg: "<max> <interval>",
        opts: "aphPrT",
        desc: "show recovery information or set/get recovery speed throttling of nodes",
        sub: [
          {
            name: "info",
            desc: "show recovery information of nodes (default)",
            needNodeList: true,
          },
          {
            name: "set-throttle",
            arg: "<max> <interval>",
            desc: "set new throttling",
            needNodeList: true,
            needArg: true,
          },
          { name: "get-throttle", desc: "get current throttling", needNodeList: true },
        ],
      },
      {
        name: "md",
        arg: "[disks]",
        opts: "aprAfhTj",
        desc: "See 'dog node md' for more information",
        needArg: true,
        sub: [
          { name: "info", desc: "show multi-disk information", needNodeList: true },
          { name: "plug", desc: "plug more disk(s) into node", needArg: true },
          { name: "unplug", desc: "unplug disk(s) from node", needArg: true },
        ],
      },
      {
        name: "scrub",
        arg: "<subcommand>",
        opts: "aprAh",
        desc: "start or show the background scrub (checksums and replica hashes)",
        needArg: true,
        sub: [
          { name: "start", desc: "start a scrub pass now (-A: on every node)", needNodeList: true },
          { name: "status", desc: "show the scrub of every node", needNodeList: true },
        ],
      },
      { name: "stat", opts: "aprwhT", desc: "show stat information about the node" },
      {
        name: "log",
        opts: "aphT",
        desc: "show or set log level of the node",
        needArg: true,
        sub: [
          {
            name: "level",
            arg: "<subcommand>",
            desc: "manipulate loglevel",
            needArg: true,
            sub: [
              { name: "set", arg: "<log level>", desc: "set new loglevel", needArg: true },
              { name: "get", desc: "get current loglevel" },
              { name: "list", desc: "list available loglevels" },
            ],
          },
        ],
      },
      {
        name: "vnodes",
        arg: "<num of vnodes>",
        opts: "aph",
        desc: "set new vnodes",
        needArg: true,
        sub: [{ name: "set", arg: "<num of vnodes>", desc: "set new vnodes", needArg: true }],
      },
    ],
  },
  {
    name: "cluster",
    options: CLUSTER_OPTIONS,
    subs: [
      { name: "info", opts: "aprhvTdj", desc: "show cluster information", needNodeList: true },
      {
        name: "format",
        opts: "bcltaphzTVRfF",
        desc: "create a Sheepdog store",
        needNodeList: true,
      },
      { name: "shutdown", opts: "aphT", desc: "stop Sheepdog" },
      {
        name: "snapshot",
        arg: "<tag|idx> <path> [vdi1] [vdi2] ...",
        opts: "aphTmf",
        desc: "snapshot/restore the cluster",
        needArg: true,
        sub: [
          { name: "save", desc: "save snapshot to localpath" },
          { name: "list", desc: "list snapshot of localpath" },
          { name: "load", desc: "load snapshot from localpath" },
          { name: "show", desc: "show vdi list from snapshot" },
        ],
      },
      {
        name: "recover",
        opts: "afphT",
        desc: "See 'dog cluster recover' for more information",
        needArg: true,
        sub: [
          { name: "force", desc: "force recover cluster immediately" },
          { name: "enable", desc: "enable automatic recovery and run once recover if necessary" },
          { name: "disable", desc: "disable automatic recovery" },
        ],
      },
      { name: "reweight", opts: "aphT", desc: "reweight the cluster" },
      { name: "check", opts: "aphT", desc: "check and repair cluster", needNodeList: true },
      {
        name: "alter-copy",
        opts: "aphTcf",
        desc: "set the cluster's redundancy level",
        needNodeList: true,
      },
    ],
  },
];

export const BENCHMARK_OPTIONS: OptDef[] = [
  o("w", "workqueue", true, "specify workqueue type"),
  o("f", "force", false, "do not prompt for confirmation"),
  o("t", "total", true, "a number of total operation (e.g. I/O request)"),
  o("n", "threads", true, "requests in flight for 'dynamic' and 'fixed'"),
];

COMMANDS.push({
  name: "benchmark",
  options: BENCHMARK_OPTIONS,
  subs: [{
    name: "io",
    arg: "<vdiname>",
    opts: "aprhTfwtn",
    desc: "benchmark I/O performance",
    needNodeList: true,
    needArg: true,
  }],
});

export function findCommand(name: string | undefined): CmdDef | undefined {
  return COMMANDS.find((c) => c.name === name);
}

export function findSub(cmd: CmdDef, name: string | undefined): SubDef | undefined {
  return cmd.subs.find((s) => s.name === name);
}

function findOpt(cmd: CmdDef, ch: string): OptDef {
  const d = DOG_OPTIONS.find((x) => x.ch === ch) ?? cmd.options.find((x) => x.ch === ch);
  if (!d) throw new Error(`internal error: unknown option letter ${ch}`);
  return d;
}

/** Option definitions of a subcommand, in option-string order. */
export function subOptions(cmd: CmdDef, sub: SubDef): OptDef[] {
  return [...(sub.opts ?? "")].map((ch) => findOpt(cmd, ch));
}

function pad24(s: string): string {
  return s.length >= 24 ? s : s + " ".repeat(24 - s.length);
}

/** `dog`, `dog --help`: the main usage text (stdout). */
export function mainUsage(version: string): string {
  let s = `Sheepdog administrator utility (version ${version})\n`;
  s += "Usage: dog <command> <subcommand> [options]\n\nAvailable commands:\n";
  for (const c of COMMANDS) {
    for (const sub of c.subs) s += `  ${pad24(`${c.name} ${sub.name}`)}${sub.desc}\n`;
  }
  s += "\nFor more information, run 'dog <command> <subcommand> --help'.\n";
  return s;
}

/** subcommand_usage(): `Usage: dog <cmd> <sub> ...` + options (stdout). */
export function subcommandUsage(cmd: CmdDef, sub: SubDef, chosen?: string): string {
  let s = `Usage: dog ${cmd.name} ${sub.name}`;
  const subsub = chosen === undefined ? sub.sub : undefined;
  if (chosen !== undefined) s += ` ${chosen}`;
  else if (subsub && subsub.length === 1) s += ` ${subsub[0].name}`;
  else if (subsub && subsub.length > 1) s += ` {${subsub.map((x) => x.name).join("|")}}`;
  const opts = subOptions(cmd, sub);
  for (const d of opts) s += d.hasArg ? ` [-${d.ch} ${d.long}]` : ` [-${d.ch}]`;
  if (sub.arg) s += ` ${sub.arg}`;
  s += "\n";
  if (subsub) {
    s += "Available subcommands:\n";
    for (const x of subsub) s += `  ${pad24(x.name)}${x.desc}\n`;
  }
  s += "Options:\n";
  for (const d of opts) s += `  ${pad24(`-${d.ch}, --${d.long}`)}${d.desc}\n`;
  return s;
}

/** stderr text for an unknown / missing subcommand. */
export function invalidSubcommand(cmd: CmdDef, sub: string | undefined): string {
  let s = "";
  if (sub !== undefined && sub !== "help" && sub !== "--help" && sub !== "-h") {
    s += `Invalid command '${cmd.name} ${sub}'\n`;
  }
  s += `Available ${cmd.name} commands:\n`;
  for (const x of cmd.subs) s += `  ${cmd.name} ${x.name}\n`;
  return s;
}

export interface ParsedOpt {
  ch: string;
  value: string | true;
}

export type ParseResult =
  | { ok: true; opts: ParsedOpt[]; positionals: string[] }
  | { ok: false; message: string };

/** Parses the arguments after `<cmd> <sub>` with the subcommand's option letters. */
export function parseSubArgs(cmd: CmdDef, sub: SubDef, args: string[]): ParseResult {
  const defs = subOptions(cmd, sub);
  // Upstream's dog parses with getopt_long: `-i -1` is -i with argument "-1", prefixes of long
  // names work, and its diagnostics are glibc's.
  const shorts = defs.map((d) => d.ch + (d.hasArg ? ":" : "")).join("");
  const longs: LongOption[] = defs.map((d) => ({
    name: d.long,
    hasArg: d.hasArg ? 1 : 0,
    val: d.ch,
  }));
  const r = getoptLong(args, shorts, longs, "dog");
  const opts: ParsedOpt[] = [];
  for (const it of r.items) {
    if ("error" in it) return { ok: false, message: it.error };
    opts.push({ ch: it.opt, value: it.arg ?? true });
  }
  return { ok: true, opts, positionals: r.positionals };
}
