// The adapters of TorchTitan's LoRA model (torchtitan/components/lora.py: LoRAConverter turns every targeted Linear
// into a LoRALinear with lora_a [rank, in] and lora_b [out, rank], output = base + alpha/rank · lora_b(lora_a(x)))
// as extra entries of a conversion plan, so `convert|shard --lora` write base + adapters through the one executor in
// one checkpoint that TorchTitan's strict initial load fills completely. See docs/lora.md.
//
// From a PEFT adapter (exact, no arithmetic): PEFT's per-module adapters of one TorchTitan Linear are stacked — the
// A matrices one under another (rank = sum of ranks), each B in its rows of the Linear's output and its own
// columns — and every adapted Linear is zero-padded to the one global rank R (zero rows of A, zero columns of B add
// nothing). alpha = s·R gives TorchTitan's alpha/rank = PEFT's s (alpha/r, rsLoRA alpha/√r). Adapters whose modules
// have different scales (rank_pattern / alpha_pattern) are refused: one global alpha cannot express them without
// rescaling B, which would change what training does. Linears that TorchTitan adapts (by the last segment of
// their name) but the PEFT adapter does not cover start as LoRALinear starts them: lora_a kaiming-uniform, lora_b 0.
import type { CatalogTensor, StoredPiece } from "../catalog-types.js";
import type { DType } from "../dtypes.js";
import { CkptError, isCkptError } from "../errors.js";
import type { ConversionPlan, TensorPlan } from "../plan/convert-plan.js";
import { mappingByName } from "../mapping/load.js";
import type { LeafInfo, Recipe } from "../plan/recipe.js";
import type { ShardPolicy } from "../plan/sharding.js";
import type { Source } from "../sources/types.js";
import { closeAdapter, openAdapter, type AdapterEntry, type BaseConfig } from "./adapter.js";
import { lastSegment } from "./names.js";
import { baseTensors, validateAdapterAgainstBase } from "./validate.js";
import type { Target } from "../mapping/schema.js";
import { loraTarget, targetSpec } from "../mapping/targets.js";
import { isLoraTarget, linearNames, ttLinears, type TtLinear } from "./tt-linears.js";

/** TorchTitan's LoRAConverter.Config fields that build this model (target_modules null = every Linear). */
export interface LoraSettings {
  rank: number;
  alpha: number;
  target_modules: string[] | null;
}

export interface LoraModelOptions {
  /** PEFT adapter folder (or Hub repo). Without it: fresh adapters of `rank`. */
  adapter?: string;
  rank?: number;
  /** Fresh adapters: LoRAConverter alpha (default 16.0, TorchTitan's default). */
  alpha?: number;
  /** Fresh adapters: last name segments (TorchTitan's target_modules); default every Linear. */
  targets?: string[];
  /** Seed of the lora_a initialisation (default 0). */
  seed?: number;
  base: BaseConfig;
  onWarning?: (msg: string) => void;
}

export interface LoraModelSummary {
  torchtitan: LoraSettings;
  /** The PEFT adapter's scale s, equal to alpha / rank. */
  scale: number;
  adapter: string | null;
  seed: number;
  /** Adapted Linears: where each one's adapter came from. */
  modules: { module: string; from: string[]; rank: number; init: "peft" | "fresh" }[];
}

const PEFT_FILES = "@peft-adapter/";
const INIT_FILE = "@lora-init/lora_a.f32";
const HELP_MERGE = "merge it into the base weights (`ckpt lora merge <base> <adapter> <out>`, or PEFT's merge_and_unload), then convert the merged model";

/** Adds the LoRA model's adapter tensors to `plan` (torchtitan@main, HF → TorchTitan); returns the source the executor reads. */
export async function addLoraModel(plan: ConversionPlan, base: Source, opts: LoraModelOptions): Promise<{ source: Source; summary: LoraModelSummary; close: () => Promise<void> }> {
  loraRequested({ loraRank: 1 }, plan.direction, plan.target);
  const mapping = mappingByName(plan.mapping);
  const linears = ttLinears(mapping, opts.base.config, plan.tensors, opts.base.file);
  if (!linears || linears.length === 0) throw new CkptError("UNMAPPED", `ckpt has no TorchTitan Linear list for ${plan.mapping}: it cannot build its LoRA model`);
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0) throw new CkptError("USAGE", `--seed ${seed}: expected a non-negative integer`);
  const init = new InitFile(seed);
  const b = new PlanBuilder(plan);
  let summary: LoraModelSummary;
  let adapterSource: Source | undefined;
  const names = linearNames(linears);
  if (opts.adapter !== undefined) {
    const r = await fromPeft(opts.adapter, linears, b, init, opts, base);
    summary = { ...r.summary, seed };
    adapterSource = r.source;
  } else {
    const rank = opts.rank;
    if (rank === undefined || !Number.isInteger(rank) || rank <= 0) throw new CkptError("USAGE", `--lora-rank ${rank}: expected a positive integer`);
    const alpha = opts.alpha ?? 16;
    if (!Number.isFinite(alpha) || alpha <= 0) throw new CkptError("USAGE", `--lora-alpha ${alpha}: expected a positive number`);
    const targets = opts.targets ? [...new Set(opts.targets)].sort() : null;
    for (const t of targets ?? []) {
      if (!names.includes(t)) throw new CkptError("USAGE", `--lora-targets ${t}: no Linear of TorchTitan's ${plan.mapping} is named so (its Linears: ${names.join(", ")})`);
    }
    const modules: LoraModelSummary["modules"] = [];
    for (const lin of linears.filter((l) => isLoraTarget(l, targets))) {
      b.fresh(lin, rank, init);
      modules.push({ module: lin.module, from: [], rank, init: "fresh" });
    }
    summary = { torchtitan: { rank, alpha, target_modules: targets }, scale: alpha / rank, adapter: null, seed, modules };
  }
  return { source: new LoraSource(base, adapterSource, init), summary, close: async () => { await adapterSource?.close(); } };
}

async function fromPeft(spec: string, linears: TtLinear[], b: PlanBuilder, init: InitFile, opts: LoraModelOptions, baseSource: Source): Promise<{ summary: Omit<LoraModelSummary, "seed">; source: Source }> {
  let ad;
  try {
    ad = await openAdapter(spec, { base: opts.base, target: loraTarget() });
  } catch (e) {
    // what PEFT can hold and TorchTitan's LoRALinear cannot (embeddings, lora bias, modules_to_save, routed experts)
    if (isCkptError(e) && (e.code === "UNMAPPED" || e.code === "CONFIG") && /not supported|experts|embedding|bias|modules_to_save/i.test(e.message)) {
      throw new CkptError(e.code, `TorchTitan's LoRA model cannot hold this adapter: ${e.message}`, { file: e.file, tensor: e.tensor, hint: HELP_MERGE });
    }
    throw e;
  }
  let ok = false;
  try {
    for (const w of ad.warnings) opts.onWarning?.(w);
    // the adapter must fit the checkpoint being converted: same rule (and message) as `ckpt lora convert`
    validateAdapterAgainstBase(ad.entries, { mapping: ad.mapping, config: opts.base.config, file: opts.base.file, tensors: await baseTensors(baseSource, ad.mapping) }, { file: ad.source.id, fanInFanOut: ad.fanInFanOut });
    if (ad.peft.use_dora) {
      throw new CkptError("UNMAPPED", "DoRA (use_dora: lora_magnitude_vector) is not expressible in TorchTitan's LoRA model, which has no magnitude vectors", { file: `${ad.source.id}/adapter_config.json`, hint: HELP_MERGE });
    }
    const byPart = new Map<string, { lin: TtLinear; part: number }>();
    for (const lin of linears) lin.parts.forEach((p, i) => byPart.set(p.tt, { lin, part: i }));
    const covered = new Map<TtLinear, (Adapted | undefined)[]>();
    for (const e of ad.entries) {
      // A PEFT module whose HF weight TorchTitan splits by rows (the mapping's split rules, e.g. Qwen3.5's in_proj_qkv
      // → in_proj_q / _k / _v): ΔW = s·B·A, so row block i of ΔW is s·B[block i]·A, and each part's LoRALinear gets
      // the same A and its rows of B.
      const blocks = e.module.splitInto ?? [{ tt: e.module.tt, start: 0, size: e.b.shape[0]!, total: e.b.shape[0]! }];
      for (const blk of blocks) {
        const at = byPart.get(blk.tt);
        if (!at) throw new CkptError("UNMAPPED", `PEFT module ${e.module.hf} adapts ${blk.tt}, which is not a Linear of TorchTitan's model`, { file: ad.source.id, tensor: e.a.name, hint: HELP_MERGE });
        const part = at.lin.parts[at.part]!;
        if (e.b.shape[0] !== blk.total || blk.size !== part.rows || e.a.shape[1] !== at.lin.inFeatures) {
          throw new CkptError("UNMAPPED", `PEFT module ${e.module.hf} updates a [${e.b.shape[0]}, ${e.a.shape[1]}] weight, but TorchTitan's ${part.tt} is [${part.rows}, ${at.lin.inFeatures}] and no split rule of the mapping relates them: its adapter has no LoRALinear to go to`, {
            file: ad.source.id, tensor: e.b.name, hint: HELP_MERGE,
          });
        }
        const list = covered.get(at.lin) ?? new Array<Adapted | undefined>(at.lin.parts.length).fill(undefined);
        list[at.part] = { e, rows: blk.size === blk.total ? undefined : { start: blk.start, size: blk.size } };
        covered.set(at.lin, list);
      }
    }
    const scales = new Map(ad.entries.map((e) => [e.scale, e]));
    if (scales.size > 1) {
      const [x, y] = [...scales.values()];
      throw new CkptError("CONFIG", `rank_pattern / alpha_pattern give modules different scales (${x!.module.hf}: ${x!.scale}, ${y!.module.hf}: ${y!.scale}); TorchTitan's LoRAConverter has one alpha / rank for every Linear`, {
        file: `${ad.source.id}/adapter_config.json`, hint: HELP_MERGE,
      });
    }
    const scale = ad.entries[0]!.scale;
    const rankOf = (parts: (Adapted | undefined)[]) => parts.reduce((s, p) => s + (p?.e.rank ?? 0), 0);
    const R = Math.max(...[...covered.values()].map(rankOf));
    const targets = [...new Set([...covered.keys()].map((l) => lastSegment(l.module)))].sort();
    const leafOf = (t: CatalogTensor) => b.leaf("peft:" + t.name, t.dtype, t.shape, t.pieces.map((p) => ({ ...p, file: PEFT_FILES + p.file })));
    const modules: LoraModelSummary["modules"] = [];
    for (const lin of linears.filter((l) => isLoraTarget(l, targets))) {
      const parts = covered.get(lin);
      if (!parts) {
        b.fresh(lin, R, init);
        modules.push({ module: lin.module, from: [], rank: R, init: "fresh" });
        continue;
      }
      b.stacked(lin, R, parts.map((p) => {
        if (!p) return undefined;
        const whole: Recipe = { op: "source", tensor: leafOf(p.e.b) };
        return { a: leafOf(p.e.a), b: p.rows ? { op: "slice", dim: 0, start: p.rows.start, size: p.rows.size, input: whole } : whole, rank: p.e.rank, dtype: p.e.a.dtype };
      }));
      modules.push({ module: lin.module, from: parts.filter((p) => p).map((p) => p!.e.module.hf), rank: rankOf(parts), init: "peft" });
    }
    if (modules.some((m) => m.init === "fresh")) {
      const fresh = modules.filter((m) => m.init === "fresh");
      opts.onWarning?.(`TorchTitan's target_modules ${JSON.stringify(targets)} also adapt ${fresh.length} Linear(s) the PEFT adapter does not cover (e.g. ${fresh[0]!.module}): they start as LoRALinear starts them (lora_a kaiming-uniform, lora_b zeros), which leaves the model's output unchanged`);
    }
    ok = true;
    return { summary: { torchtitan: { rank: R, alpha: scale * R, target_modules: targets }, scale, adapter: ad.source.id, modules }, source: ad.source };
  } finally {
    if (!ok) await closeAdapter(ad);
  }
}

/** A PEFT module's adapter given to one part of a TorchTitan Linear: all of B, or its rows of a row-split HF weight. */
interface Adapted { e: AdapterEntry; rows?: { start: number; size: number } }

/** Appends adapter tensors and their leaves to a plan. */
class PlanBuilder {
  constructor(private readonly plan: ConversionPlan) {}

  leaf(name: string, dtype: DType, shape: number[], pieces: StoredPiece[]): string {
    this.plan.leaves[name] ??= { dtype, shape: [...shape], pieces } satisfies LeafInfo;
    return name;
  }

  /** Adapters keep their values exactly (PEFT's dtype; f32 when fresh) whatever --dtype does to the base weights. */
  private add(name: string, shape: number[], dtype: DType, recipe: Recipe, tp: ShardPolicy["tp"]): void {
    this.plan.tensors.push({ name, dtype, shape, recipe, policy: { tp } } satisfies TensorPlan);
  }

  /** LoRALinear's adapter placements (_lora_adapter_sharding): colwise base → A replicated, B Shard(0); rowwise → A Shard(1), B replicated. */
  private placements(lin: TtLinear): [ShardPolicy["tp"], ShardPolicy["tp"]] {
    if (lin.tp === "shard0") return ["replicate", "shard0"];
    if (lin.tp === "shard1") return ["shard1", "replicate"];
    return ["replicate", "replicate"];
  }

  /** lora_a from the seeded kaiming-uniform init, lora_b zeros: LoRALinear's own initialisation. */
  fresh(lin: TtLinear, rank: number, init: InitFile): void {
    const [ta, tb] = this.placements(lin);
    const a = this.leaf(`init:${lin.module}.lora_a.weight`, "F32", [rank, lin.inFeatures], [init.add(lin.module, rank, lin.inFeatures)]);
    this.add(`${lin.module}.lora_a.weight`, [rank, lin.inFeatures], "F32", { op: "source", tensor: a }, ta);
    this.add(`${lin.module}.lora_b.weight`, [lin.outFeatures, rank], "F32", { op: "zeros" }, tb);
  }

  /**
   * PEFT adapters of the parts of `lin` stacked: A = [A_0; A_1; …; 0] (rank R), B's rows per group g and part p =
   * rows g·rows_p/G … of [0 | B_p | 0] with B_p in columns off_p … off_p + r_p (RoPE-permuted like its base rows).
   * B_p is a recipe: PEFT's lora_B, or the rows of it that are this Linear's.
   */
  stacked(lin: TtLinear, R: number, parts: ({ a: string; b: Recipe; rank: number; dtype: DType } | undefined)[]): void {
    const [ta, tb] = this.placements(lin);
    const dtype = parts.find((p) => p)!.dtype;
    const aIn: Recipe[] = [], aSizes: number[] = [];
    const cols: Recipe[] = [];
    let off = 0;
    parts.forEach((p, i) => {
      const part = lin.parts[i]!;
      if (!p) { cols.push({ op: "zeros" }); return; }
      aIn.push({ op: "source", tensor: p.a }); aSizes.push(p.rank);
      const src: Recipe = part.rope ? { op: "rope", heads: part.rope.heads, headDim: part.rope.headDim, direction: "hf_to_tt", input: p.b } : p.b;
      cols.push(columns([off, p.rank, R - off - p.rank], [{ op: "zeros" }, src, { op: "zeros" }]));
      off += p.rank;
    });
    if (off < R) { aIn.push({ op: "zeros" }); aSizes.push(R - off); }
    this.add(`${lin.module}.lora_a.weight`, [R, lin.inFeatures], dtype, aIn.length === 1 ? aIn[0]! : { op: "concat", dim: 0, sizes: aSizes, inputs: aIn }, ta);
    let bRecipe: Recipe;
    if (lin.groups === 1 && lin.parts.length === 1) bRecipe = cols[0]!;
    else {
      const rowsIn: Recipe[] = [], rowSizes: number[] = [];
      for (let g = 0; g < lin.groups; g++) {
        lin.parts.forEach((part, i) => {
          const n = part.rows / lin.groups;
          rowsIn.push({ op: "slice", dim: 0, start: g * n, size: n, input: cols[i]! });
          rowSizes.push(n);
        });
      }
      bRecipe = { op: "concat", dim: 0, sizes: rowSizes, inputs: rowsIn };
    }
    this.add(`${lin.module}.lora_b.weight`, [lin.outFeatures, R], dtype, bRecipe, tb);
  }
}

/** Columns joined (dim 1), empty ones left out. */
function columns(sizes: number[], inputs: Recipe[]): Recipe {
  const keep = sizes.map((s, i) => ({ s, r: inputs[i]! })).filter((x) => x.s > 0);
  return keep.length === 1 ? keep[0]!.r : { op: "concat", dim: 1, sizes: keep.map((x) => x.s), inputs: keep.map((x) => x.r) };
}

/**
 * lora_a initial values, f32, generated when the executor reads them (never all held at once): nn.init.kaiming_uniform_(w,
 * a=√5) draws U(−1/√in, 1/√in) for a [rank, in] weight (gain √(2/(1+a²)) = √(1/3), bound gain·√(3/in)). The generator is
 * mulberry32 seeded from (seed, module name), so a module's values do not depend on which others are written; they
 * are not PyTorch's random stream (nothing needs them to be).
 */
class InitFile {
  private readonly modules: { module: string; inFeatures: number; byteOffset: number; byteLength: number }[] = [];
  private length = 0;
  constructor(private readonly seed: number) {}

  add(module: string, rank: number, inFeatures: number): StoredPiece {
    const byteLength = rank * inFeatures * 4;
    const piece: StoredPiece = { offsets: [0, 0], sizes: [rank, inFeatures], file: INIT_FILE, byteOffset: this.length, byteLength };
    this.modules.push({ module, inFeatures, byteOffset: this.length, byteLength });
    this.length += byteLength;
    return piece;
  }

  get size(): number {
    return this.length;
  }

  /** Bytes [offset, offset + length) of the file: each module's values generated from its start up to what is asked. */
  read(offset: number, length: number): Buffer {
    if (offset < 0 || offset + length > this.length) throw new CkptError("INTERNAL", `read past the end of ${INIT_FILE}`);
    const out = Buffer.alloc(length);
    for (const m of this.modules) {
      const a = Math.max(offset, m.byteOffset), b = Math.min(offset + length, m.byteOffset + m.byteLength);
      if (a >= b) continue;
      const v = new Float32Array((b - m.byteOffset) / 4);
      const bound = 1 / Math.sqrt(m.inFeatures);
      const next = mulberry32(hash32(`${this.seed}:${m.module}`));
      for (let i = 0; i < v.length; i++) v[i] = Math.fround((2 * (next() / 2 ** 32) - 1) * bound);
      Buffer.from(v.buffer, a - m.byteOffset, b - a).copy(out, a - offset);
    }
    return out;
  }
}

function hash32(s: string): number {
  let h = 2166136261; // FNV-1a
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/**
 * The base checkpoint's files, the PEFT adapter's under `@peft-adapter/`, and the generated lora_a init as
 * `@lora-init/…` (no local path: the executor fetches its byte ranges through read(), as it does for Hub files).
 */
class LoraSource implements Source {
  readonly id: string;
  readonly kind: Source["kind"];
  readonly revision?: string;
  constructor(private readonly base: Source, private readonly adapter: Source | undefined, private readonly init: InitFile) {
    this.id = base.id; this.kind = base.kind; this.revision = base.revision;
  }
  private route(file: string): { s?: Source; f: string } {
    if (file.startsWith(PEFT_FILES)) return { s: this.adapter, f: file.slice(PEFT_FILES.length) };
    if (file === INIT_FILE) return { f: file };
    return { s: this.base, f: file };
  }
  files(): string[] {
    return [...this.base.files(), ...(this.adapter?.files().map((f) => PEFT_FILES + f) ?? []), INIT_FILE];
  }
  localPath(file: string): string | undefined {
    const r = this.route(file);
    return r.s?.localPath(r.f);
  }
  async size(file: string): Promise<number> {
    const r = this.route(file);
    return r.s ? r.s.size(r.f) : this.init.size;
  }
  async read(file: string, offset: number, length: number): Promise<Buffer> {
    const r = this.route(file);
    return r.s ? r.s.read(r.f, offset, length) : this.init.read(offset, length);
  }
  async readText(file: string): Promise<string | undefined> {
    const r = this.route(file);
    return r.s?.readText(r.f);
  }
  async close(): Promise<void> { /* the parts are closed by their owners */ }
}

/**
 * How to run TorchTitan main with this checkpoint. Its model converters (LoRAConverter) are set in Python — a
 * config_registry function that passes them to `model_registry(flavor, converters=[…])`; `model_spec` is not a CLI
 * field and TorchTitan main has no TOML config — and the checkpoint path by CLI.
 */
export function torchtitanLoraConfig(out: string, module: string, s: LoraSettings): string {
  const targets = s.target_modules === null ? "None" : `[${s.target_modules.map((t) => JSON.stringify(t)).join(", ")}]`;
  return [
    `# TorchTitan main: a config_registry function (e.g. in torchtitan/models/${module}/config_registry.py)`,
    "from torchtitan.components.lora import LoRAConverter",
    "",
    `def ${module}_lora() -> Trainer.Config:`,
    `    config = ${module}_<your_config>()  # the config whose flavor matches this checkpoint's config.json`,
    `    config.model_spec = model_registry("<flavor>", converters=[`,
    `        LoRAConverter.Config(rank=${s.rank}, alpha=${pyFloat(s.alpha)}, target_modules=${targets}),`,
    "    ])",
    "    config.checkpoint.enable = True",
    `    config.checkpoint.initial_load_path = ${JSON.stringify(out)}`,
    "    config.checkpoint.initial_load_model_only = True",
    "    return config",
    "",
    `# CLI: torchrun … -m torchtitan.train --module ${module} --config ${module}_lora --checkpoint.enable --checkpoint.initial_load_path ${out}`,
  ].join("\n");
}

function pyFloat(x: number): string {
  return Number.isInteger(x) ? `${x}.0` : String(x);
}

export interface LoraOptionsLike {
  lora?: string;
  loraRank?: number;
  loraAlpha?: number;
  loraTargets?: string[];
  seed?: number;
  hfNames?: boolean;
  onWarning?: (msg: string) => void;
}

/** Checks the LoRA options before anything is planned; true when TorchTitan's LoRA model was asked for. */
export function loraRequested(o: LoraOptionsLike, direction: string, target: Target | undefined): boolean {
  if (o.lora === undefined && o.loraRank === undefined) {
    if (o.loraAlpha !== undefined || o.loraTargets !== undefined || o.seed !== undefined) throw new CkptError("USAGE", "--lora-alpha, --lora-targets and --seed go with --lora-rank");
    return false;
  }
  if (o.lora !== undefined && o.loraRank !== undefined) throw new CkptError("USAGE", "--lora takes the PEFT adapter's ranks; drop --lora-rank (or drop --lora for fresh adapters)");
  if (o.lora !== undefined && (o.loraAlpha !== undefined || o.loraTargets !== undefined)) throw new CkptError("USAGE", "--lora-alpha / --lora-targets are for fresh adapters (--lora-rank); --lora takes the PEFT adapter's");
  if (o.hfNames) throw new CkptError("USAGE", "--hf-names has no HF names for TorchTitan's fused adapters; write DCP (the default) with --lora / --lora-rank");
  if (direction !== "hf_to_tt") throw new CkptError("USAGE", "--lora / --lora-rank build TorchTitan's LoRA model from an HF checkpoint");
  if (target !== undefined && !targetSpec(target).lora_converter) throw new CkptError("USAGE", `--lora / --lora-rank: TorchTitan's LoRAConverter is in ${loraTarget()}, not ${target}`);
  return true;
}

/** `convert|shard --lora / --lora-rank`: the plan extended with the LoRA model's adapters, or undefined without those options. */
export async function withLoraModel(plan: ConversionPlan, source: Source, o: LoraOptionsLike, base: BaseConfig): Promise<{
  source: Source; summary: LoraModelSummary; record: Record<string, unknown>; config: (out: string) => string; close: () => Promise<void>;
} | undefined> {
  if (!loraRequested(o, plan.direction, plan.target)) return undefined;
  const r = await addLoraModel(plan, source, { adapter: o.lora, rank: o.loraRank, alpha: o.loraAlpha, targets: o.loraTargets, seed: o.seed, base, onWarning: o.onWarning });
  const mapping = mappingByName(plan.mapping);
  const module = mapping.linears?.torchtitan_module ?? mapping.architecture;
  return {
    ...r,
    record: { adapter: r.summary.adapter, seed: r.summary.seed, ...r.summary.torchtitan },
    config: (out) => torchtitanLoraConfig(out, module, r.summary.torchtitan),
  };
}
