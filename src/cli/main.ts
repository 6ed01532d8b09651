// The `ckpt` command line: yargs commands over the programmatic API. Errors print one line (stack with --debug).
import yargs, { type Argv } from "yargs";
import { hideBin } from "yargs/helpers";
import { CkptError, isCkptError, redactSecrets } from "../errors.js";
// Command implementations are imported when their command runs (`await import(...)` in the handlers): loading
// every command's modules up front cost ~0.1 CPU-s on each start, a third of a small convert's CPU time.
import type { InspectResult } from "../commands/inspect.js";
import type { ConvertOptions, ConvertResult } from "../commands/convert.js";
import { fmtBytes, fmtNum, table } from "../util/format.js";
import { makeReporter } from "./progress.js";
import { VERSION } from "../version.js";
import { loraCommand } from "./lora.js";
import { OMITTABLE } from "../mapping/schema.js";

interface GlobalArgs { json?: boolean; debug?: boolean; quiet?: boolean }

function out(s: string): void {
  process.stdout.write(s.endsWith("\n") ? s : s + "\n");
}

function printInspect(r: InspectResult, stats: boolean): void {
  out(`${r.source}${r.revision ? ` @ ${r.revision}` : ""}  (${r.format}, ${r.tensors.length} tensors, ${fmtBytes(r.totalBytes)}, ${r.totalParams.toLocaleString("en-US")} params)`);
  if (r.config) {
    const c = r.config;
    out(`config: ${c.architecture ?? c.modelType ?? "?"}  layers=${c.layers ?? "?"} hidden=${c.hidden ?? "?"} heads=${c.heads ?? "?"} kv_heads=${c.kvHeads ?? "?"} head_dim=${c.headDim ?? "?"} vocab=${c.vocab ?? "?"} tied_embeddings=${c.tiedEmbeddings ?? "?"}${c.torchDtype ? ` torch_dtype=${c.torchDtype}` : ""}`);
  }
  out("");
  const head = ["name", "dtype", "shape", "size", "file"];
  const statHead = ["min", "max", "mean", "std", "nan", "inf", ">f16"];
  const rows = r.tensors.map((t) => {
    const base = [t.name, t.dtype, `[${t.shape.join(", ")}]`, fmtBytes(t.bytes), t.file];
    if (!stats) return base;
    const s = t.stats;
    return [...base, fmtNum(s?.min), fmtNum(s?.max), fmtNum(s?.mean), fmtNum(s?.std), String(s?.nan ?? "-"), String(s?.inf ?? "-"), String(s?.f16Overflow ?? "-")];
  });
  out(table(stats ? [...head, ...statHead] : head, rows, stats ? [3, 5, 6, 7, 8, 9, 10, 11] : [3]));
  out("");
  out(table(["dtype", "tensors", "params", "size"], r.totals.map((t) => [t.dtype, String(t.tensors), t.params.toLocaleString("en-US"), fmtBytes(t.bytes)]), [1, 2, 3]));
}

function printPlan(r: ConvertResult): void {
  const p = r.plan;
  out(`plan: ${p.direction === "hf_to_tt" ? "HF → TorchTitan" : "TorchTitan → HF"} (${p.mapping}, ${p.target}), format ${p.format}, mesh fsdp=${p.mesh.fsdp} tp=${p.mesh.tp}${(p.mesh.ep ?? 1) > 1 ? ` ep=${p.mesh.ep} (experts: efsdp=${(p.mesh.fsdp * p.mesh.tp) / p.mesh.ep!})` : ""}`);
  out(table(["output tensor", "dtype", "shape", "size", "from"], p.tensors.map((t) => [t.name, t.dtype, `[${t.shape.join(", ")}]`, fmtBytes(t.bytes), t.recipe]), [3]));
  if (p.skipped.length) out(`\nskipped ${p.skipped.length}: ${p.skipped.slice(0, 6).map((s) => `${s.name} (${s.why})`).join("; ")}${p.skipped.length > 6 ? "; …" : ""}`);
  if (p.perRank) printRankTable(r);
  out(`\nfiles: ${p.files.length}, ${fmtBytes(p.files.reduce((s, f) => s + f.size, 0))}`);
}

function printLora(l: NonNullable<ConvertResult["lora"]>): void {
  const t = l.torchtitan;
  out(`\nLoRA: ${l.modules.length} Linear(s) adapted, LoRAConverter rank = ${t.rank}, alpha = ${t.alpha} (alpha / rank = ${l.scale}), target_modules = ${t.target_modules === null ? "None (every Linear)" : JSON.stringify(t.target_modules)}`);
  const rank = (r: number) => (r < t.rank ? `${r} (+${t.rank - r} zero)` : String(r));
  out(table(["TorchTitan Linear", "rank", "adapter"], l.modules.map((m) => [m.module, rank(m.rank), m.init === "fresh" ? `fresh (kaiming-uniform A, seed ${l.seed}; B = 0)` : `PEFT ${m.from.join(" + ")}`]), [1]));
}

function printRankTable(r: ConvertResult): void {
  const ranks = r.plan.perRank ?? [];
  if (!ranks.length) return;
  const max = Math.max(...ranks.map((x) => x.bytes));
  const mean = ranks.reduce((s, x) => s + x.bytes, 0) / ranks.length;
  const io = ranks.every((x) => x.write !== undefined);
  const dl = io && ranks.every((x) => x.download !== undefined);
  const total = Math.max(1, ranks.reduce((s, y) => s + y.bytes, 0));
  const rows = ranks.map((x) => [String(x.rank), String(x.chunks), fmtBytes(x.bytes), `${((x.bytes / total) * 100).toFixed(1)}%`, ...(io ? [fmtBytes(x.write!)] : []), ...(dl ? [fmtBytes(x.download!)] : [])]);
  const head = ["rank", "chunks", "bytes", "share", ...(io ? ["writes"] : []), ...(dl ? ["downloads (--ranged)"] : [])];
  out("");
  out(table(head, rows, head.map((_, i) => i)));
  out(`imbalance (max/mean): ${(max / Math.max(1, mean)).toFixed(3)}`);
  if (io) {
    const stat = (xs: number[]) => {
      const m = xs.reduce((s, x) => s + x, 0) / xs.length;
      return `max ${fmtBytes(Math.max(...xs))}, mean ${fmtBytes(m)} (max/mean ${(Math.max(...xs) / Math.max(1, m)).toFixed(3)})`;
    };
    out(`per machine running one rank: writes ${stat(ranks.map((x) => x.write!))}` + (dl ? `; downloads with --ranged ${stat(ranks.map((x) => x.download!))}` : " (add --ranged for what each machine downloads)"));
  }
}

function convertOptionsFrom(a: Record<string, unknown>): Omit<ConvertOptions, "source" | "out"> {
  return {
    to: a.to as "torchtitan" | "hf" | undefined,
    target: a.target as string | undefined,
    format: a.format as "dcp" | "safetensors" | undefined,
    dtype: a.dtype as string | undefined,
    config: a.config as string | undefined,
    dryRun: a["dry-run"] as boolean | undefined,
    allowUnmapped: a["allow-unmapped"] as boolean | undefined,
    allowOverflow: a["allow-overflow"] as boolean | undefined,
    allowNonfinite: a["allow-nonfinite"] as boolean | undefined,
    force: a.force as boolean | undefined,
    resume: a.resume as boolean | undefined,
    fsync: a.fsync as boolean | undefined,
    digest: a.digest as string | undefined,
    threads: a.threads as number | undefined,
    filesPerRank: a["files-per-rank"] as number | undefined,
    maxMemory: a["max-memory"] !== undefined ? parseSize(String(a["max-memory"])) : undefined,
    // `--no-X` reaches us as X = false (yargs' boolean negation)
    omit: omitted(a),
    features: [...(a.mtp ? ["mtp" as const] : []), ...(a["text-only"] ? ["text-only" as const] : []), ...dropped(a)],
    hfLayout: a["hf-layout"] as string | undefined,
    ranged: a.ranged as boolean | undefined,
    requantize: a.requantize as "mxfp4" | "int4" | undefined,
    lora: a.lora as string | undefined,
    loraRank: a["lora-rank"] as number | undefined,
    loraAlpha: a["lora-alpha"] as number | undefined,
    loraTargets: a["lora-targets"] !== undefined ? String(a["lora-targets"]).split(",").map((x) => x.trim()).filter((x) => x) : undefined,
    seed: a.seed as number | undefined,
  };
}

/** `--drop <name>` (repeatable): towers the user leaves out on purpose (FLUX.1-dev's guidance_embedder). */
function dropped(a: Record<string, unknown>): `drop:${string}`[] {
  const v = a.drop;
  const names = v === undefined ? [] : (Array.isArray(v) ? v : [v]).map(String);
  for (const n of names) if (!/^[a-z0-9_]+$/.test(n)) throw new CkptError("USAGE", `--drop ${n}: expected a part name such as guidance_embedder`);
  return names.map((n) => `drop:${n}` as const);
}

/** The OMITTABLE groups whose negatable flag (`expert_bias` → `--expert-bias`, `--no-expert-bias`) the user turned off. */
function omitted(a: Record<string, unknown>): string[] | undefined {
  const off = OMITTABLE.filter((o) => a[o.replace(/_/g, "-")] === false);
  return off.length ? off : undefined;
}

function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(s.trim());
  if (!m) throw new CkptError("USAGE", `size '${s}': expected e.g. 512M, 2G`);
  const mult = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase() as "" | "k" | "m" | "g" | "t"];
  return Math.round(Number(m[1]) * mult);
}

async function doConvert(a: Record<string, unknown> & GlobalArgs, extra: Partial<ConvertOptions>): Promise<void> {
  const controller = new AbortController();
  const onSig = () => controller.abort();
  process.once("SIGINT", onSig);
  process.once("SIGTERM", onSig);
  const rep = makeReporter(extra.worldSize ? "shard" : "convert", a);
  try {
    const { runConvert } = await import("../commands/convert.js");
    const r = await runConvert({
      source: String(a.src), out: String(a.out), ...convertOptionsFrom(a), ...extra,
      signal: controller.signal,
      onProgress: (e) => rep.update(e.bytesDone, e.bytesTotal, { tensors: `${e.tensorsDone}/${e.tensorsTotal} tensors` }),
      onWarning: (w) => process.stderr.write(a.json ? JSON.stringify({ event: "warning", message: w }) + "\n" : `ckpt: warning: ${w}\n`),
    });
    rep.stop();
    // The Hub's share of the run: requests made, retried (and why), bytes received. On stderr, even with --quiet.
    const { describeHubStats, hubStats } = await import("../sources/hub-http.js");
    const hub = hubStats();
    if (a.json) { out(JSON.stringify({ event: "result", ...r, ...(hub.requests > 0 ? { hub } : {}) })); return; }
    if (hub.requests > 0) process.stderr.write(`ckpt: hub: ${describeHubStats(hub)}\n`);
    if (r.dryRun) { printPlan(r); if (r.lora) printLora(r.lora); return; }
    out(`wrote ${r.out} (${r.plan.files.length} file(s), ${fmtBytes(r.bytesWritten)}, ${r.plan.tensors.length} tensors) in ${r.seconds.toFixed(2)} s`);
    if (r.plan.perRank) printRankTable(r);
    if (r.lora) printLora(r.lora);
    if (r.torchtitanConfig) out(`\nTorchTitan config to load it:\n${r.torchtitanConfig}`);
  } finally {
    rep.stop();
    process.off("SIGINT", onSig);
    process.off("SIGTERM", onSig);
  }
}

function commonConvertOptions<T>(y: Argv<T>) {
  return y
    .option("target", { type: "string", describe: "TorchTitan layout version: torchtitan@main (default) or torchtitan@0.2" })
    .option("format", { choices: ["dcp", "safetensors"] as const, describe: "output format (default dcp)" })
    .option("dtype", { type: "string", default: "keep", describe: "keep | bf16 | f16 | f32 (round-to-nearest-even, bit-exact with PyTorch)" })
    .option("config", { type: "string", describe: "HF folder or repo id providing config.json (and tokenizer files)" })
    .option("dry-run", { type: "boolean", describe: "print the plan, write nothing" })
    .option("allow-unmapped", { type: "boolean", describe: "skip source tensors the mapping does not know (with a warning)" })
    .option("allow-overflow", { type: "boolean", describe: "accept fp16 overflow to ±inf with --dtype f16" })
    .option("allow-nonfinite", { type: "boolean", describe: "write NaN/±inf that decoding FP8 / MXFP4 / INT4 produces (corrupt scales, products the output dtype cannot hold) instead of refusing them; counted, and recorded in the manifest" })
    // Declared as `expert-bias` (default true), not `no-expert-bias`: yargs reads `--no-X` as X = false, so an option
    // named `no-…` could never be passed.
    .option("expert-bias", { type: "boolean", default: true, describe: "MoE: write the zero expert-bias buffers TorchTitan's MoE keeps but these HF checkpoints lack (Qwen3-MoE, GPT-OSS); --no-expert-bias leaves them out, like TorchTitan's convert_from_hf.py" })
    .option("mtp", { type: "boolean", describe: "DeepSeek-V3 / Kimi: convert the MTP layers (HF layers ≥ num_hidden_layers) into TorchTitan's mtp_layers (torchtitan@main); without it they are skipped and reported. Qwen3.5/3.6's MTP head (mtp.*) has no TorchTitan module and is always skipped and reported" })
    .option("text-only", { type: "boolean", describe: "multimodal checkpoints (Qwen3.5/3.6 VLMs, Kimi K2.5 / Kimi-VL, Muse Glimmer): convert the language model alone, skipping (and reporting) the vision tower and projector; --to hf of such a conversion writes the text-only CausalLM (Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM, DeepseekV3ForCausalLM) with the text config" })
    .option("drop", { type: "string", array: true, describe: "leave out a part the TorchTitan model has no module for, recorded in the manifest: guidance_embedder (FLUX.1-dev's guidance embedder; refused without it)" })
    .option("force", { type: "boolean", describe: "replace an existing output" })
    .option("resume", { type: "boolean", describe: "continue an interrupted run from <out>.partial (with --ranks a-b: <out>/.ckpt-ranks-a-b.partial); journaled pieces are re-hashed, then skipped" })
    .option("fsync", { type: "boolean", default: true, describe: "fsync files and folder before the atomic rename; --no-fsync leaves the output in the page cache like cp (faster; a power loss soon after can truncate it: ckpt verify <out> tells)" })
    .option("digest", { choices: ["xxh128", "sha256"] as const, default: "xxh128" as const, describe: "content digest of every output piece in ckpt-manifest.json" })
    .option("threads", { type: "number", describe: "worker threads (default: CPU count; 0 = in-process)" })
    .option("files-per-rank", { type: "number", describe: "DCP: data files per rank, __{rank}_{k}.distcp, written in parallel (default 2 unsharded, 1 sharded)" })
    .option("max-memory", { type: "string", describe: "bound on bytes in flight, e.g. 512M (default)" })
    .option("ranged", { type: "boolean", describe: "Hub source: fetch only the byte ranges this run needs (HTTP Range), no full download (a local source is always read by ranges, so it changes nothing there). Hub requests retry resets, timeouts, 429 and 5xx: tune with CKPT_HUB_TRIES, CKPT_HUB_DEADLINE, CKPT_HUB_TIMEOUT, CKPT_HUB_BACKOFF, CKPT_HUB_CONCURRENCY (docs/multi-machine.md)" })
    .option("lora", { type: "string", describe: "TorchTitan's LoRA model: base + this PEFT adapter's weights under the names and shapes of its LoRAConverter model (q/k/v stacked into the fused wqkv adapter), one checkpoint for a strict initial load; prints the LoRAConverter settings" })
    .option("lora-rank", { type: "number", describe: "TorchTitan's LoRA model with fresh adapters of this rank (lora_a kaiming-uniform, lora_b zeros, as LoRALinear initialises them)" })
    .option("lora-alpha", { type: "number", describe: "with --lora-rank: LoRAConverter alpha (default 16.0; scale alpha / rank)" })
    .option("lora-targets", { type: "string", describe: "with --lora-rank: LoRAConverter target_modules, last name segments, e.g. wqkv,wo (default: every Linear)" })
    .option("seed", { type: "number", describe: "with --lora-rank (and Linears --lora does not cover): seed of the lora_a initialisation (default 0)" });
}

export async function main(argv = hideBin(process.argv)): Promise<number> {
  let debug = argv.includes("--debug");
  const parser = yargs(argv)
    .scriptName("ckpt")
    .usage("$0 <command> [options]\n\nHuggingFace ⇄ TorchTitan checkpoints: convert, shard for FSDP2/TP, inspect, verify.")
    .option("json", { type: "boolean", describe: "machine-readable output (line-delimited JSON events on stderr, result on stdout)" })
    .option("debug", { type: "boolean", describe: "show stack traces" })
    .option("quiet", { type: "boolean", describe: "no progress bars" })
    .command("inspect <src>", "list tensors, dtypes, shapes, sizes and the model config", (y) => y
      .positional("src", { type: "string", demandOption: true, describe: "folder, .safetensors file, HF cache folder, or org/name[@rev]" })
      .option("stats", { type: "boolean", describe: "min, max, mean, std, NaN/Inf and fp16-overflow counts per tensor" })
      .option("health", { type: "boolean", describe: "check NaN/Inf, fp16 range, LoRA pairs, layer norm growth, mixed dtypes; exit 1 on problems" })
      .option("f16", { type: "boolean", describe: "with --health: consider an fp16 target (overflow is an error)" }),
    async (a) => {
      if (a.f16 && !a.health) throw new CkptError("USAGE", "--f16 goes with --health (it makes fp16 overflow an error of the health check); --stats counts values beyond the fp16 range");
      if (a.stats && a.health) throw new CkptError("USAGE", "--health runs its own statistics pass and prints no --stats table; drop --stats (or run inspect --stats on its own)");
      if (a.health) { const { healthCommand } = await import("./health.js"); await healthCommand(a, out); return; }
      const { runInspect } = await import("../commands/inspect.js");
      const rep = makeReporter("stats", a);
      const r = await runInspect(String(a.src), { stats: a.stats, onProgress: (e) => rep.update(e.bytesDone, e.bytesTotal) });
      rep.stop();
      if (a.json) out(JSON.stringify(r, null, 1));
      else printInspect(r, !!a.stats);
    })
    .command("convert <src> <out>", "HF → TorchTitan (DCP or safetensors), or TorchTitan → HF with --to hf", (y) => commonConvertOptions(y
      .positional("src", { type: "string", demandOption: true })
      .positional("out", { type: "string", demandOption: true })
      .option("to", { choices: ["torchtitan", "hf"] as const, default: "torchtitan" as const, describe: "direction" })
      // --to hf only: shard writes TorchTitan shards, so it does not offer them
      .option("hf-layout", { type: "string", describe: "--to hf of a model with several HF layouts: FLUX diffusers (default: the transformer/ folder's names) or bfl (Black Forest Labs' single-file names)" })
      .option("requantize", { choices: ["mxfp4", "int4"] as const, describe: "--to hf: write the experts in the source's packed layout (gpt-oss MXFP4 *_blocks/*_scales, Kimi compressed-tensors INT4 weight_packed/weight_scale/weight_shape) with its quantization_config; byte-identical when the values still hold only quantized values, refused with a count otherwise" })),

    (a) => doConvert(a as Record<string, unknown>, {}))
    .command("shard <src> <out>", "write per-rank FSDP2 (× TP) shards that PyTorch DCP loads without resharding", (y) => commonConvertOptions(y
      .positional("src", { type: "string", demandOption: true, describe: "HF checkpoint, or a TorchTitan/DCP checkpoint to reshard" })
      .positional("out", { type: "string", demandOption: true })
      .option("world-size", { type: "number", demandOption: true, describe: "total ranks (FSDP × TP)" })
      .option("tp", { type: "number", default: 1, describe: "tensor-parallel degree (innermost mesh dim)" })
      .option("ep", { type: "number", default: 1, describe: "expert-parallel degree for MoE routed experts (TorchTitan's (efsdp, ep) mesh, efsdp = world / ep; see docs/expert-parallel.md)" })
      .option("ranks", { type: "string", describe: "write only these ranks' files, e.g. 0-3 (multi-machine); then run --finalize" })
      .option("finalize", { type: "boolean", describe: "after all --ranks runs: check the rank files and write .metadata + manifest" })
      .option("hf-names", { type: "boolean", describe: "with --format safetensors: HF names and row order per rank, for TorchTitan's initial_load_in_hf = true" })),
    (a) => doConvert(a as Record<string, unknown>, { worldSize: a["world-size"] as number, tp: a.tp as number, ep: a.ep as number, ranks: a.ranks as string | undefined, finalize: a.finalize as boolean | undefined, hfNames: a["hf-names"] as boolean | undefined }))
    .command("verify <a> [b]", "re-hash an output against its ckpt-manifest.json, or compare two checkpoints (any format/layout) through the mapping", (y) => y
      .positional("a", { type: "string", demandOption: true, describe: "checkpoint (with one argument: an output of convert/shard)" })
      .positional("b", { type: "string", describe: "second checkpoint to compare element by element" })
      .option("config", { type: "string", describe: "HF folder or repo id providing config.json when neither checkpoint has one" }),
    async (a) => {
      const { formatVerify, runVerify } = await import("../commands/verify.js");
      const rep = makeReporter("verify", a);
      const controller = new AbortController();
      const onSig = () => controller.abort();
      process.once("SIGINT", onSig);
      try {
        const r = await runVerify(String(a.a), a.b !== undefined ? String(a.b) : undefined, { config: a.config, signal: controller.signal, onProgress: (e) => rep.update(e.bytesDone, e.bytesTotal) });
        rep.stop();
        out(a.json ? JSON.stringify(r) : formatVerify(r));
        if (!r.ok) throw new CkptError("VERIFY", r.difference!.message, { file: r.difference!.file });
      } finally {
        rep.stop();
        process.off("SIGINT", onSig);
      }
    })
    .command(loraCommand(out))
    .command("demo", "run the whole pipeline on a bundled tiny Llama 3 (no network); --json: each step's checked figures", (y) => y
      .option("out", { type: "string", describe: "folder for the demo files (default: a temp folder)" })
      .option("keep", { type: "boolean", describe: "keep the demo files in the temp folder (files under --out are always kept)" }),
    async (a) => {
      const { runDemo } = await import("./demo.js");
      const r = await runDemo({ out: a.out, keep: a.keep, log: a.json ? () => {} : out });
      if (a.json) out(JSON.stringify({ event: "result", ...r }));
    })
    .command("bench <what>", "benchmarks: `ckpt bench kernels` (GB/s vs memcpy)", (y) => y
      .positional("what", { choices: ["kernels"] as const, demandOption: true }),
    async (a) => {
      const { benchKernels, formatBenchTable } = await import("../kernels/bench.js");
      const rows = await benchKernels();
      if (a.json) out(JSON.stringify(rows, null, 1));
      else out(formatBenchTable(rows));
    })
    .epilogue([
      "LoRA round trip with TorchTitan (docs/lora.md):",
      "  ckpt convert <hf> <out> --lora <peft-adapter>  # prints the LoRAConverter",
      "  torchrun … -m torchtitan.train --module <m> --config <yours> \\",
      "      --checkpoint.enable --checkpoint.initial_load_path <out>",
      "  ckpt inspect --health <step-checkpoint>  # untrained / exploding adapters",
      "  ckpt lora export <step-checkpoint> <peft-out> --config <hf> --alpha <A>",
    ].join("\n"))
    .demandCommand(1, "give a command: inspect, convert, shard, verify, lora, demo, bench")
    .strict()
    .version(VERSION)
    .help()
    .fail((msg, err) => {
      if (err) throw err;
      throw new CkptError("USAGE", msg);
    });
  // yargs renders the whole help text once a command's handler starts (cacheHelpMessage), ~50 ms of the start-up
  // every run pays before its first byte. Our fail() never prints the cached text (it points at `ckpt --help`).
  const usage = (parser as unknown as { getInternalMethods?: () => { getUsageInstance?: () => { cacheHelpMessage?: () => void } } }).getInternalMethods?.().getUsageInstance?.();
  if (usage && typeof usage.cacheHelpMessage === "function") usage.cacheHelpMessage = () => {};
  try {
    await parser.parseAsync();
    return 0;
  } catch (e) {
    debug ||= process.env.CKPT_DEBUG === "1";
    const err = isCkptError(e) ? e : new CkptError("INTERNAL", (e as Error)?.message ?? String(e), { cause: e });
    process.stderr.write(redactSecrets(err.oneLine()) + "\n");
    if (err.code === "USAGE") process.stderr.write("ckpt: run `ckpt --help` for usage\n");
    if (debug) process.stderr.write(redactSecrets(String((e as Error)?.stack ?? e)) + "\n");
    return err.code === "INTERRUPTED" ? 130 : 1;
  }
}
