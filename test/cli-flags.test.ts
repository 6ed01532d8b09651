// The command line as users meet it, run through the built CLI (bin/ckpt.js) as a child process:
// - every option a command's --help lists is accepted (strict mode would say "Unknown argument") and described;
// - every negatable flag (--no-X: a boolean defaulting to true, or a --no-X the help text mentions) parses and has
//   its effect, each checked by an entry in NEGATED below, so a new one cannot ship untested;
// - the README's command summary names only commands and flags that exist.
// An option declared as `no-expert-bias` once showed in --help yet failed with "Unknown arguments: expert-bias,
// expertBias" (yargs reads --no-X as X = false): that is the class of bug this file exists for.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { tinyLlamaTensors, writeTinyLlama } from "../src/fixtures/tiny-llama.js";
import { tinyPeftAdapter, writePeftAdapter } from "../src/fixtures/tiny-lora.js";
import { writeTinyQwen3 } from "../src/fixtures/tiny-qwen3.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CLI = join(ROOT, "bin", "ckpt.js");
const tmp = mkdtempSync(join(tmpdir(), "ckpt-cli-flags-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

interface Run { status: number | null; stdout: string; stderr: string }

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, CKPT_NATIVE: process.env.CKPT_NATIVE ?? "" } });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}

/** Runs jobs a few at a time: each CLI start costs ~0.4 s, and there are dozens of probes. */
async function pool<T, R>(items: T[], width: number, job: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all([...Array(Math.min(width, items.length))].map(async () => {
    while (next < items.length) { const i = next++; out[i] = await job(items[i]!); }
  }));
  return out;
}

const MISSING = join(tmp, "does-not-exist");
/** Every command, with arguments that make it parse and then fail fast (or, for demo, run into tmp). */
const COMMANDS: { path: string[]; args: string[] }[] = [
  { path: ["inspect"], args: [MISSING] },
  { path: ["convert"], args: [MISSING, join(tmp, "probe-out")] },
  { path: ["shard"], args: [MISSING, join(tmp, "probe-out"), "--world-size", "2"] },
  { path: ["verify"], args: [MISSING] },
  { path: ["lora", "convert"], args: [MISSING, join(tmp, "probe-out"), "--base", MISSING] },
  { path: ["lora", "export"], args: [MISSING, join(tmp, "probe-out")] },
  { path: ["lora", "merge"], args: [MISSING, MISSING, join(tmp, "probe-out")] },
  { path: ["demo"], args: ["--out", join(tmp, "demo")] },
  { path: ["bench"], args: ["kernels"] },
];
const GLOBAL = new Set(["json", "debug", "quiet", "version", "help"]);
/** yargs' own messages for arguments it could not parse. */
const PARSE_FAILURE = /Unknown argument|Invalid values|Not enough non-option arguments|Missing required argument|Too many non-option arguments/;

interface HelpOption { name: string; text: string; description: string }

/** The options of a --help page: name, the whole entry (annotations included) and the description alone. */
function helpOptions(help: string): HelpOption[] {
  const section = help.split(/^Options:$/m)[1] ?? "";
  const entries: { name: string; lines: string[] }[] = [];
  for (const line of section.split("\n")) {
    const m = /^ {2}--([a-z0-9-]+)(.*)$/.exec(line);
    if (m) entries.push({ name: m[1]!, lines: [m[2]!] });
    else if (line.trim() && entries.length) entries.at(-1)!.lines.push(line);
  }
  return entries.map((e) => {
    const text = e.lines.join(" ").replace(/\s+/g, " ").trim();
    return { name: e.name, text, description: text.replace(/\[[^\]]*\]/g, "").trim() };
  });
}

/** The flags a help page makes negatable: booleans that default to true, and any --no-X its text mentions. */
function negatable(help: string, opts: HelpOption[]): string[] {
  const fromDefaults = opts.filter((o) => /\[boolean\]/.test(o.text) && /\[default: true\]/.test(o.text)).map((o) => o.name);
  const mentioned = [...help.matchAll(/--no-([a-z0-9-]+)/g)].map((m) => m[1]!);
  return [...new Set([...fromDefaults, ...mentioned])].sort();
}

/** A value of the option's type, so the probe tests the option's name, not its value. */
function probeArgs(o: HelpOption): string[] {
  if (/\[boolean\]/.test(o.text)) return [`--${o.name}`];
  const choice = /\[choices: "([^"]+)"/.exec(o.text);
  if (choice) return [`--${o.name}`, choice[1]!];
  return [`--${o.name}`, "1"];
}

const helps = new Map<string, { help: string; options: HelpOption[] }>();
let rootHelp = "";

before(async () => {
  rootHelp = (await cli(["--help"])).stdout;
  const pages = await pool(COMMANDS, 4, (c) => cli([...c.path, "--help"]));
  COMMANDS.forEach((c, i) => {
    const r = pages[i]!;
    assert.equal(r.status, 0, `${c.path.join(" ")} --help: ${r.stderr}`);
    helps.set(c.path.join(" "), { help: r.stdout, options: helpOptions(r.stdout) });
  });
});

describe("--help lists what each command accepts", () => {
  test("the root help lists every command, and the no-command message names them all", async () => {
    const listed = [...rootHelp.matchAll(/^ {2}ckpt ([a-z]+)/gm)].map((m) => m[1]!);
    assert.deepEqual([...new Set(listed)].sort(), [...new Set(COMMANDS.map((c) => c.path[0]!))].sort());
    const none = await cli([]);
    assert.equal(none.status, 1);
    for (const c of listed) assert.match(none.stderr, new RegExp(`give a command:.*\\b${c}\\b`), `'${c}' missing from: ${none.stderr}`);
  });

  test("every listed option has a description", () => {
    for (const [cmd, { options }] of helps) {
      assert.ok(options.length >= GLOBAL.size, `${cmd}: parsed ${options.length} options from its help`);
      for (const o of options) assert.ok(o.description.length > 0, `${cmd} --${o.name} has no description in --help`);
    }
  });

  test("every listed option parses (no 'Unknown argument'), with a value of its type", async () => {
    const probes = COMMANDS.flatMap((c) => {
      const given = new Set(c.args.filter((a) => a.startsWith("--")).map((a) => a.slice(2)));
      return helps.get(c.path.join(" "))!.options
        .filter((o) => !GLOBAL.has(o.name) && !given.has(o.name))
        .map((o) => ({ c, o, args: [...c.path, ...c.args, ...probeArgs(o), "--quiet"] }));
    });
    // globals once, on a command that fails fast
    for (const g of ["json", "debug", "quiet"]) probes.push({ c: COMMANDS[0]!, o: { name: g, text: "[boolean]", description: "" }, args: ["inspect", MISSING, `--${g}`] });
    assert.ok(probes.length > 40, `only ${probes.length} probes: did the help parsing break?`);
    const runs = await pool(probes, 4, (p) => cli(p.args));
    probes.forEach((p, i) => {
      const r = runs[i]!;
      assert.doesNotMatch(r.stderr, PARSE_FAILURE, `${p.args.join(" ")}: ${r.stderr}`);
    });
  });

  test("an option a command does not declare is refused (strict parsing), naming it", async () => {
    for (const c of COMMANDS.filter((x) => x.path[0] !== "demo" && x.path[0] !== "bench")) {
      const r = await cli([...c.path, ...c.args, "--bogus-option"]);
      assert.equal(r.status, 1, c.path.join(" "));
      assert.match(r.stderr, /Unknown argument.*bogus-option/, `${c.path.join(" ")}: ${r.stderr}`);
    }
  });

  test("the README's command summary names only commands and flags that exist", () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    const block = /## Commands\s+```bash\n([\s\S]*?)```/.exec(readme)?.[1];
    assert.ok(block, "README has a ## Commands bash block");
    const byCommand = new Map<string, string[]>();
    let current = "";
    for (const line of block.split("\n")) {
      const m = /^ckpt\s+([a-z]+)/.exec(line);
      if (m) current = m[1]!;
      else if (!/^\s/.test(line)) continue;
      const flags = [...line.replace(/#.*$/, "").matchAll(/--([a-z0-9-]+)/g)].map((f) => f[1]!);
      byCommand.set(current, [...(byCommand.get(current) ?? []), ...flags]);
    }
    assert.deepEqual([...byCommand.keys()].sort(), [...new Set(COMMANDS.map((c) => c.path[0]!))].sort());
    for (const [cmd, flags] of byCommand) {
      // `ckpt lora …` stands for its subcommands
      const pages = COMMANDS.filter((c) => c.path[0] === cmd).map((c) => helps.get(c.path.join(" "))!);
      const accepted = new Set(pages.flatMap((p) => [...p.options.map((o) => o.name), ...negatable(p.help, p.options).map((n) => `no-${n}`)]));
      for (const f of flags) assert.ok(accepted.has(f), `README: ckpt ${cmd} --${f}, but \`ckpt ${cmd} --help\` has no such option`);
    }
  });
});

// ---- negatable flags: each one a command offers must have an effect check here ----

let llama = "";
let moe = "";

/** The plan of a --dry-run --json run: its output tensor names. */
async function planNames(args: string[]): Promise<string[]> {
  const r = await cli([...args, "--dry-run", "--json"]);
  assert.equal(r.status, 0, `${args.join(" ")}: ${r.stderr}`);
  const result = JSON.parse(r.stdout.trim().split("\n").at(-1)!) as { event: string; dryRun: boolean; plan: { tensors: { name: string }[] } };
  assert.equal(result.event, "result");
  assert.equal(result.dryRun, true);
  return result.plan.tensors.map((t) => t.name);
}

/** Every file of a folder with its bytes (hidden files too). */
function folderBytes(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name), rel + e.name + "/");
      else out.set(rel + e.name, readFileSync(join(d, e.name)));
    }
  };
  walk(dir, "");
  return out;
}

const expertBias = async (cmd: string[]) => {
  const out = join(tmp, `eb-${cmd[0]}`);
  const args = [cmd[0]!, moe, out, ...cmd.slice(1)];
  const withBias = await planNames(args);
  const without = await planNames([...args, "--no-expert-bias"]);
  const explicit = await planNames([...args, "--expert-bias"]);
  const bias = withBias.filter((n) => /\.moe\.expert_bias(_E)?$/.test(n));
  assert.deepEqual(bias, ["layers.1.moe.expert_bias_E", "layers.2.moe.expert_bias_E"], "default: one zero bias per MoE layer");
  assert.deepEqual(without, withBias.filter((n) => !bias.includes(n)), "--no-expert-bias drops exactly the bias buffers");
  assert.deepEqual(explicit, withBias);
  assert.equal(existsSync(out), false, "--dry-run writes nothing");
};

/** `cmd` writes `out` (its arguments before the output folder: the command's own, then the source). */
const noFsync = async (cmd: string[], before: string[] = [cmd[0]!, llama]) => {
  const synced = join(tmp, `fs-${cmd[0]}-default`);
  const unsynced = join(tmp, `fs-${cmd[0]}-nofsync`);
  for (const [out, extra] of [[synced, []], [unsynced, ["--no-fsync"]]] as const) {
    const r = await cli([...before, out, ...cmd.slice(1), ...extra, "--threads", "0", "--quiet"]);
    assert.equal(r.status, 0, `${cmd[0]} ${extra.join(" ")}: ${r.stderr}`);
    // (a machine without the native addon prints one line about the TypeScript kernels)
    assert.deepEqual(r.stderr.split("\n").filter((l) => l && !/native kernels unavailable/.test(l)), [], "no warning or error");
    assert.equal(existsSync(out + ".partial"), false, "renamed into place");
  }
  const v = await cli(["verify", unsynced]);
  assert.equal(v.status, 0, `verify: ${v.stdout}${v.stderr}`);
  // fsync only decides when the bytes reach the disk, never which bytes
  const a = folderBytes(synced);
  const b = folderBytes(unsynced);
  assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
  for (const [name, bytes] of a) if (name !== "ckpt-manifest.json") assert.ok(bytes.equals(b.get(name)!), `${name} differs with --no-fsync`);
};

/** command → negatable flag → its effect check (the command's own extra arguments first). */
const NEGATED: Record<string, Record<string, () => Promise<void>>> = {
  convert: { "expert-bias": () => expertBias(["convert"]), fsync: () => noFsync(["convert"]) },
  shard: { "expert-bias": () => expertBias(["shard", "--world-size", "2"]), fsync: () => noFsync(["shard", "--world-size", "2"]) },
  "lora merge": {
    fsync: () => {
      const adapter = join(tmp, "peft");
      writePeftAdapter(adapter, tinyPeftAdapter(tinyLlamaTensors({ layers: 2 }).tensors));
      return noFsync(["lora-merge"], ["lora", "merge", llama, adapter]);
    },
  },
};

describe("--no-* flags parse and have their effect", () => {
  before(() => {
    llama = join(tmp, "llama");
    moe = join(tmp, "qwen3-moe");
    writeTinyLlama(llama, { layers: 2 });
    writeTinyQwen3(moe, { experts: 4, layers: 3, mlpOnlyLayers: [0] });
  });

  test("every negatable flag any --help offers has an effect check below", () => {
    for (const c of COMMANDS) {
      const key = c.path.join(" ");
      const { help, options } = helps.get(key)!;
      assert.deepEqual(negatable(help, options), Object.keys(NEGATED[key] ?? {}).sort(), `negatable flags of ckpt ${key}`);
    }
  });

  for (const [cmd, flags] of Object.entries(NEGATED)) {
    for (const [flag, check] of Object.entries(flags)) test(`ckpt ${cmd} --no-${flag}`, check);
  }
});

// ---- options are checked on their own, before a source is opened ----

describe("bad options fail fast with one USAGE line, before the source is opened", () => {
  // The source does not exist: an option checked after opening it would fail with SOURCE_NOT_FOUND instead.
  const convert = ["convert", MISSING, join(tmp, "never")];
  const shard = ["shard", MISSING, join(tmp, "never")];
  const CASES: { args: string[]; says: RegExp }[] = [
    { args: [...shard, "--world-size", "4", "--tp", "3"], says: /--tp 3 must divide --world-size 4/ },
    { args: [...shard, "--world-size", "4", "--ep", "3"], says: /--ep 3 must divide dp_shard · tp = 4/ },
    { args: [...shard, "--world-size", "0"], says: /--world-size 0: expected a positive integer/ },
    { args: [...shard, "--world-size", "4", "--ranks", "2-5"], says: /--ranks '2-5': ranks must lie in 0-3/ },
    { args: [...shard, "--world-size", "2", "--hf-names"], says: /--hf-names writes per-rank safetensors/ },
    { args: [...shard, "--world-size", "2", "--format", "safetensors", "--files-per-rank", "2"], says: /--files-per-rank applies to DCP output/ },
    { args: [...shard, "--world-size", "2", "--resume", "--finalize"], says: /--resume with --finalize/ },
    { args: [...convert, "--dtype", "q4"], says: /--dtype q4: expected keep, bf16, f16 or f32/ },
    { args: [...convert, "--target", "torchtitan@9"], says: /--target torchtitan@9: expected one of/ },
    { args: [...convert, "--requantize", "int4"], says: /--requantize re-encodes --to hf output; it needs --to hf/ },
    { args: [...convert, "--hf-layout", "bfl"], says: /--hf-layout bfl picks the HF layout --to hf writes/ },
    { args: [...convert, "--to", "hf", "--format", "dcp"], says: /--to hf writes HF safetensors; drop --format dcp/ },
    { args: [...convert, "--to", "hf", "--lora-rank", "8"], says: /--lora \/ --lora-rank build TorchTitan's LoRA model from an HF checkpoint/ },
    { args: [...convert, "--lora-alpha", "4"], says: /--lora-alpha, --lora-targets and --seed go with --lora-rank/ },
    { args: [...convert, "--threads", "-1"], says: /--threads -1: expected a non-negative integer/ },
    { args: ["lora", "merge", MISSING, MISSING, join(tmp, "never"), "--dtype", "q4"], says: /--dtype q4: expected keep, bf16, f16 or f32/ },
    { args: ["inspect", MISSING, "--f16"], says: /--f16 goes with --health/ },
    { args: ["inspect", MISSING, "--stats", "--health"], says: /--health runs its own statistics pass/ },
  ];
  test("each bad option or combination is named on one line, exit 1, nothing written", async () => {
    const runs = await pool(CASES, 4, (c) => cli([...c.args, "--quiet"]));
    CASES.forEach((c, i) => {
      const r = runs[i]!;
      const where = `${c.args.slice(3).join(" ")}: ${r.stderr}`;
      assert.equal(r.status, 1, where);
      const lines = r.stderr.split("\n").filter((l) => l && !/native kernels unavailable|run `ckpt --help`/.test(l));
      assert.equal(lines.length, 1, where);
      assert.match(lines[0]!, /USAGE/, where);
      assert.match(lines[0]!, c.says, where);
      assert.doesNotMatch(r.stderr, /SOURCE_NOT_FOUND|no such file/i, where);
    });
    assert.equal(existsSync(join(tmp, "never")), false);
  });

  test("control: the same source with valid options fails on the source", async () => {
    const r = await cli([...shard, "--world-size", "4", "--tp", "2", "--quiet"]);
    assert.equal(r.status, 1);
    assert.doesNotMatch(r.stderr, /USAGE/, r.stderr);
  });
});

// ---- removed options: refused by yargs, naming the option ----

describe("removed options are refused, naming them", () => {
  test("shard --requantize and shard --hf-layout (--to hf options; shard writes TorchTitan shards)", async () => {
    for (const flag of [["--requantize", "int4"], ["--hf-layout", "bfl"]]) {
      const r = await cli(["shard", MISSING, join(tmp, "never"), "--world-size", "2", ...flag]);
      assert.equal(r.status, 1, flag.join(" "));
      assert.match(r.stderr, new RegExp(`Unknown argument.*${flag[0]!.slice(2)}`), r.stderr);
    }
    // still offered where they apply
    const help = helps.get("convert")!.options.map((o) => o.name);
    for (const f of ["requantize", "hf-layout"]) assert.ok(help.includes(f), `convert --${f}`);
    for (const f of ["requantize", "hf-layout"]) assert.ok(!helps.get("shard")!.options.some((o) => o.name === f), `shard --${f}`);
  });

  test("--text-only's help says what it does for Qwen3.5 and for Kimi", () => {
    const o = helps.get("convert")!.options.find((x) => x.name === "text-only")!;
    assert.match(o.description, /Qwen3\.5/);
    assert.match(o.description, /Kimi/);
    assert.match(o.description, /Qwen3_5ForCausalLM/);
    assert.match(o.description, /DeepseekV3ForCausalLM/);
  });
});

describe("demo --json", () => {
  test("prints one result with each step's checked figures, and no text", async () => {
    const r = await cli(["demo", "--json"]);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assert.equal(lines.length, 1, r.stdout);
    const res = JSON.parse(lines[0]!) as { event: string; ok: boolean; dir?: string; steps: { step: number; figures: Record<string, unknown> }[] };
    assert.equal(res.event, "result");
    assert.equal(res.ok, true);
    assert.equal(res.dir, undefined, "a temp folder is removed, so not named");
    assert.deepEqual(res.steps.map((s) => s.step), [1, 2, 3, 4, 5, 6]);
    const [gen, conv, back, sh, round, mx] = res.steps.map((s) => s.figures);
    // the tiny Llama 3: 2 layers × 9 tensors + embeddings, norm, head
    assert.equal(gen!.tensors, 21);
    assert.equal(conv!.tensors, 21);
    assert.equal(back!.bitExact, 21);
    assert.deepEqual([back!.heads, back!.kvHeads, back!.headDim], [4, 2, 16]);
    assert.equal((sh!.perRank as unknown[]).length, 8);
    assert.deepEqual([round!.identical, round!.tensors], [21, 21]);
    assert.equal((mx!.perRankBytes as number[]).length, 4);
    assert.ok((mx!.values as number) > 0);
  });
});

describe("options an input makes moot are said to be ignored", () => {
  test("lora merge --alpha / --rslora with a PEFT adapter (adapter_config.json gives lora_alpha): a warning, same output", async () => {
    const base = join(tmp, "moot-llama");
    const adapter = join(tmp, "moot-peft");
    writeTinyLlama(base, { layers: 2 });
    writePeftAdapter(adapter, tinyPeftAdapter(tinyLlamaTensors({ layers: 2 }).tensors));
    const plain = await cli(["lora", "merge", base, adapter, join(tmp, "moot-plain"), "--threads", "0", "--quiet"]);
    const moot = await cli(["lora", "merge", base, adapter, join(tmp, "moot-alpha"), "--alpha", "3", "--rslora", "--threads", "0", "--quiet"]);
    assert.equal(plain.status, 0, plain.stderr);
    assert.equal(moot.status, 0, moot.stderr);
    assert.doesNotMatch(plain.stderr, /ignored/, "control: no warning without the options");
    assert.match(moot.stderr, /warning: --alpha \/ --rslora ignored: .*adapter_config\.json gives this PEFT adapter's lora_alpha and use_rslora/);
    const a = folderBytes(join(tmp, "moot-plain"));
    const b = folderBytes(join(tmp, "moot-alpha"));
    const weights = [...a.keys()].filter((n) => n.endsWith(".safetensors"));
    assert.ok(weights.length > 0, "the merge wrote safetensors");
    for (const name of weights) assert.ok(a.get(name)!.equals(b.get(name)!), `${name} differs`);
  });
});
