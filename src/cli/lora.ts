// `ckpt lora convert|export|merge`: yargs command group over src/lora (registered by src/cli/main.ts).
import { resolve } from "node:path";
import type { Argv, CommandModule } from "yargs";
import { fmtBytes, table } from "../util/format.js";
import { makeReporter } from "./progress.js";
import { CkptError } from "../errors.js";

type Out = (s: string) => void;
type Args = Record<string, unknown> & { json?: boolean; quiet?: boolean };

function warner(a: Args): (m: string) => void {
  return (m) => process.stderr.write(a.json ? JSON.stringify({ event: "warning", message: m }) + "\n" : `ckpt: warning: ${m}\n`);
}

function numberOpt(a: Args, k: string): number | undefined {
  const v = a[k];
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw new CkptError("USAGE", `--${k} must be a positive number`);
  return v;
}

async function convertCmd(a: Args, out: Out): Promise<void> {
  const { loraConvert } = await import("../commands/lora-convert.js"); // loaded when the command runs (see cli/main.ts)
  const r = await loraConvert({
    adapter: String(a.adapter), out: String(a.out), base: String(a.base),
    format: a.format as "dcp" | "safetensors" | undefined, target: a.target as string | undefined, force: a.force as boolean | undefined,
    onWarning: warner(a),
  });
  if (a.json) { out(JSON.stringify({ event: "result", ...r })); return; }
  const m = r.metadata;
  out(`wrote ${r.out} (${r.format}, ${r.target}, ${r.tensors.length} tensors, ${r.tensors.filter((t) => t.permuted).length} permuted like q/k rows)`);
  out(`scale s = ${m.scale_formula} = ${m.alpha} / ${m.use_rslora ? `√${m.rank}` : m.rank} = ${m.scale}${m.use_dora ? "  (DoRA)" : ""}`);
  if (m.torchtitan) {
    out(`\nTorchTitan LoRAConverter: rank = ${m.torchtitan.rank}, alpha = ${m.torchtitan.alpha}, target_modules = ${JSON.stringify(m.torchtitan.target_modules)}`);
    if (m.torchtitan.note) out(`note: ${m.torchtitan.note}`);
  } else out("\nranks / alphas differ per module (rank_pattern / alpha_pattern): TorchTitan's one global rank/alpha cannot express this adapter; use `ckpt lora merge`");
}

async function exportCmd(a: Args, out: Out): Promise<void> {
  const { loraExport } = await import("../commands/lora-convert.js");
  const r = await loraExport({
    input: String(a.input), out: String(a.out), config: a.config as string | undefined,
    alpha: numberOpt(a, "alpha"), rslora: a.rslora as boolean | undefined, baseModel: a["base-model"] as string | undefined,
    force: a.force as boolean | undefined, onWarning: warner(a),
  });
  if (a.json) { out(JSON.stringify({ event: "result", ...r })); return; }
  const c = r.adapterConfig;
  out(`wrote ${r.out} (PEFT adapter: ${r.tensors.length} tensors; r = ${String(c.r)}, lora_alpha = ${String(c.lora_alpha)}, use_rslora = ${String(c.use_rslora)}, use_dora = ${String(c.use_dora)}, target_modules = ${JSON.stringify(c.target_modules)})`);
}

async function mergeCmd(a: Args, out: Out): Promise<void> {
  // yargs reads a lone "-" as an empty string (or true)
  const adapter = a.adapter === true ? "-" : String(a.adapter ?? "-");
  const inBase = adapter === "-" || adapter === "" || resolve(adapter) === resolve(String(a.base));
  const rep = makeReporter("merge", a);
  try {
    const { loraMerge } = await import("../commands/lora-merge.js");
    const r = await loraMerge({
      base: String(a.base), adapter: inBase ? undefined : adapter, out: String(a.out),
      dtype: a.dtype as string | undefined, config: a.config as string | undefined, format: a.format as "dcp" | "safetensors" | undefined,
      alpha: numberOpt(a, "alpha"), rslora: a.rslora as boolean | undefined, force: a.force as boolean | undefined,
      allowOverflow: a["allow-overflow"] as boolean | undefined, onWarning: warner(a),
      threads: a.threads as number | undefined, resume: a.resume as boolean | undefined, fsync: a.fsync as boolean | undefined, digest: a.digest as string | undefined,
      onProgress: (e) => rep.update(e.bytesDone, e.bytesTotal, { tensors: `${e.tensorsDone}/${e.tensorsTotal} tensors` }),
    });
    rep.stop();
    if (a.json) { out(JSON.stringify({ event: "result", ...r })); return; }
    out(`wrote ${r.out} (${r.layout === "hf" ? "HF" : `TorchTitan ${r.target}`} ${r.format}, ${r.tensors} tensors, ${fmtBytes(r.bytesWritten)}) in ${r.seconds.toFixed(2)} s`);
    out(table(["merged weight", "rank", "scale", "DoRA"], r.merged.map((m) => [m.weight, String(m.rank), String(m.scale), m.dora ? "yes" : ""]), [1, 2]));
  } finally {
    rep.stop();
  }
}

/** The `lora` command group. */
export function loraCommand(out: Out): CommandModule<object, object> {
  return {
    command: "lora <command>",
    describe: "LoRA / DoRA adapters: PEFT ⇄ TorchTitan (convert, export) and merge into base weights",
    builder: (y: Argv<object>) => y
      .command("convert <adapter> <out>", "PEFT adapter → TorchTitan names (lora_B / magnitude rows permuted like q/k)", (c) => c
        .positional("adapter", { type: "string", demandOption: true, describe: "PEFT folder (adapter_config.json + adapter_model.safetensors)" })
        .positional("out", { type: "string", demandOption: true, describe: "output folder (or a .safetensors file with --format safetensors)" })
        .option("base", { type: "string", demandOption: true, describe: "base model: HF folder, config.json, or repo id (heads / head_dim)" })
        .option("format", { choices: ["dcp", "safetensors"] as const, default: "dcp" as const, describe: "output format" })
        .option("target", { type: "string", describe: "torchtitan@main (default) or torchtitan@0.2" })
        .option("force", { type: "boolean", describe: "replace an existing output" }),
      (a) => convertCmd(a as Args, out))
      .command("export <input> <out>", "TorchTitan-layout adapter → PEFT folder", (c) => c
        .positional("input", { type: "string", demandOption: true, describe: "TorchTitan adapter: DCP folder or safetensors, or a checkpoint holding lora_a/lora_b (a TorchTitan step checkpoint: optimizer / train state ignored, fused wqkv split into q/k/v)" })
        .positional("out", { type: "string", demandOption: true, describe: "PEFT adapter folder to write" })
        .option("config", { type: "string", describe: "base model's HF folder / config.json / repo id (default: the input's hf_assets/)" })
        .option("alpha", { type: "number", describe: "adapters without ckpt metadata (TorchTitan checkpoints): the LoRAConverter alpha (scale alpha / rank)" })
        .option("rslora", { type: "boolean", describe: "…and that alpha is an rsLoRA alpha (scale alpha / √r)" })
        .option("base-model", { type: "string", describe: "base_model_name_or_path to record" })
        .option("force", { type: "boolean", describe: "replace an existing output" }),
      (a) => exportCmd(a as Args, out))
      .command("merge <base> <adapter> <out>", "W' = W + s·B·A (DoRA: row-renormalised), f32 math, RNE cast; HF or TorchTitan", (c) => c
        .positional("base", { type: "string", demandOption: true, describe: "HF checkpoint, or TorchTitan DCP / safetensors" })
        .positional("adapter", { type: "string", demandOption: true, describe: "PEFT or TorchTitan adapter; `-` = the LoRA weights stored in <base>" })
        .positional("out", { type: "string", demandOption: true })
        .option("dtype", { type: "string", default: "keep", describe: "keep | bf16 | f16 | f32" })
        .option("config", { type: "string", describe: "config.json source for a TorchTitan base without hf_assets/" })
        .option("format", { choices: ["dcp", "safetensors"] as const, describe: "TorchTitan output format (default: the base's)" })
        .option("alpha", { type: "number", describe: "TorchTitan adapters without ckpt metadata: alpha" })
        .option("rslora", { type: "boolean", describe: "…as an rsLoRA alpha" })
        .option("allow-overflow", { type: "boolean", describe: "accept ±inf with --dtype f16" })
        .option("force", { type: "boolean", describe: "replace an existing output" })
        .option("resume", { type: "boolean", describe: "continue an interrupted merge from <out>.partial; journaled pieces are re-hashed, then skipped" })
        .option("fsync", { type: "boolean", default: true, describe: "fsync files and folder before the atomic rename (--no-fsync: page cache only, like cp)" })
        .option("digest", { choices: ["xxh128", "sha256"] as const, default: "xxh128" as const, describe: "content digest of every output piece in ckpt-manifest.json" })
        .option("threads", { type: "number", describe: "worker threads (default: CPU count; 0 = in-process)" }),
      (a) => mergeCmd(a as Args, out))
      .demandCommand(1, "give a lora command: convert, export, merge"),
    handler: () => {},
  };
}
