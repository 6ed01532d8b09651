// LoRA tensor names on both sides and the module ⇄ module mapping, derived from the architecture mapping's
// base-weight rules (torchtitan-layout.md §2, §11): a PEFT module `<hf>` adapts `<hf>.weight`; its TorchTitan
// counterpart is the rule's TorchTitan name of that weight without `.weight`.
import { CkptError } from "../errors.js";
import { evalDimExpr, resolveDims } from "../mapping/load.js";
import { compilePattern, fillPattern, matchPattern, type CompiledPattern } from "../mapping/patterns.js";
import { splitStep, transformSteps, type Mapping, type Target, type TensorRule } from "../mapping/schema.js";

/** A = lora_A / lora_a, B = lora_B / lora_b, M = DoRA magnitude vector. */
export type LoraPart = "A" | "B" | "M";

export const PEFT_PREFIX = "base_model.model.";

/** PEFT state-dict key → module (prefix removed) and part; `unsupported` for LoRA-family keys ckpt cannot map. */
export function parsePeftName(name: string): { module: string; part: LoraPart } | { unsupported: string } | undefined {
  const n = name.startsWith(PEFT_PREFIX) ? name.slice(PEFT_PREFIX.length) : name;
  let m = /^(.+)\.lora_(A|B)(?:\.default)?\.weight$/.exec(n);
  if (m) return { module: m[1]!, part: m[2] as "A" | "B" };
  // saved form `…lora_magnitude_vector`; in-memory forms `…lora_magnitude_vector.default[.weight]`, `….weight`
  m = /^(.+)\.lora_magnitude_vector(?:\.default)?(?:\.weight)?$/.exec(n);
  if (m) return { module: m[1]!, part: "M" };
  if (/\.lora_embedding_[AB](\.|$)/.test(n)) return { unsupported: "LoRA on embeddings (lora_embedding_A/B)" };
  if (/\.lora_B(?:\.default)?\.bias$/.test(n)) return { unsupported: "a bias on lora_B (lora_bias)" };
  if (/\.modules_to_save\./.test(n)) return { unsupported: "modules_to_save copies" };
  if (/\.lora_[A-Za-z_]+/.test(n)) return { unsupported: "an unknown LoRA-family tensor" };
  return undefined;
}

export function peftName(module: string, part: LoraPart): string {
  return PEFT_PREFIX + module + (part === "A" ? ".lora_A.weight" : part === "B" ? ".lora_B.weight" : ".lora_magnitude_vector");
}

/** TorchTitan adapter key → module and part (`model.` prefix of some checkpoints tolerated). */
export function parseTtName(name: string): { module: string; part: LoraPart } | undefined {
  const n = name.startsWith("model.") ? name.slice("model.".length) : name;
  let m = /^(.+)\.lora_(a|b)\.weight$/.exec(n);
  if (m) return { module: m[1]!, part: m[2] === "a" ? "A" : "B" };
  m = /^(.+)\.magnitude$/.exec(n);
  if (m) return { module: m[1]!, part: "M" };
  return undefined;
}

export function ttName(module: string, part: LoraPart): string {
  return module + (part === "A" ? ".lora_a.weight" : part === "B" ? ".lora_b.weight" : ".magnitude");
}

/** Both names of one adapted linear, with what its base weight needs. */
export interface LoraModule {
  hf: string;
  tt: string;
  /** q/k RoPE row permutation of the base weight: lora_B rows and the DoRA magnitude follow it. */
  rope?: { heads: number; headDim: number };
  /** [out, in] of the base weight when the config defines it (of the TorchTitan part when `rowsOf` is set). */
  shape?: number[];
  /**
   * Resolved from TorchTitan: this Linear holds rows start … start + size of the HF weight's `total` rows (a rule that
   * splits the HF weight by rows, e.g. Qwen3.5's in_proj_qkv → in_proj_q / _k / _v). Its adapter is one row block of
   * the HF module's: ΔW rows = s · B[rows] · A.
   */
  rowsOf?: RowBlock;
  /** Resolved from HF: the TorchTitan Linears the rules split this weight's rows into, in row order. */
  splitInto?: (RowBlock & { tt: string })[];
}

export interface RowBlock { start: number; size: number; total: number }

interface Compiled { rule: TensorRule; hf: CompiledPattern; tt: CompiledPattern; ttSource: string }

export class ModuleResolver {
  readonly dims: Record<string, number>;
  private readonly rules: Compiled[];
  private readonly expertRules: { hf: CompiledPattern; tt?: CompiledPattern }[] = [];

  constructor(readonly mapping: Mapping, config: Record<string, unknown>, readonly target: Target, private readonly configFile = "config.json") {
    this.dims = resolveDims(mapping, config, configFile);
    this.rules = [];
    for (const rule of mapping.tensors) {
      if (rule.drop || !rule.hf || !rule.tt) continue;
      const tt = typeof rule.tt === "string" ? rule.tt : rule.tt[target];
      if (rule.experts) {
        this.expertRules.push({ hf: compilePattern(rule.hf), tt: tt ? compilePattern(tt) : undefined });
        continue;
      }
      if (!tt || !rule.hf.endsWith(".weight") || !tt.endsWith(".weight")) continue;
      this.rules.push({ rule, hf: compilePattern(rule.hf), tt: compilePattern(tt), ttSource: tt });
    }
  }

  /** The row block of the HF weight a rule's TorchTitan tensor is, when the rule only splits a matrix by rows. */
  private rowBlock(c: Compiled, shape: number[] | undefined): RowBlock | undefined {
    const step = splitStep(c.rule);
    if (!step || step.dim !== 0 || transformSteps(c.rule).length !== 1 || shape?.length !== 2) return undefined;
    const total = shape[0]!;
    const sizes = (step.op === "split" ? step.sizes.map((e) => evalDimExpr(e, this.dims)) : new Array<number>(step.chunks).fill(total / step.chunks)) as number[];
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    if (sizes.some((x) => x === undefined || !Number.isInteger(x)) || sum(sizes) !== total) {
      throw new CkptError("CONFIG", `cannot split the rows of ${c.rule.hf}: its parts' sizes do not add up to ${total} with this config`, { file: this.configFile });
    }
    return { start: sum(sizes.slice(0, step.index)), size: sizes[step.index]!, total };
  }

  private build(c: Compiled, vals: Record<string, number>, side: "hf" | "tt"): LoraModule {
    const hf = fillPattern(c.rule.hf!, vals).slice(0, -".weight".length);
    const tt = fillPattern(c.ttSource, vals).slice(0, -".weight".length);
    const dims = c.rule.shape?.map((e) => evalDimExpr(e, this.dims));
    const shape = dims && dims.every((x) => x !== undefined) ? (dims as number[]) : undefined;
    const out: LoraModule = { hf, tt, shape };
    const block = this.rowBlock(c, shape);
    if (block && side === "tt") {
      out.rowsOf = block;
      out.shape = [block.size, shape![1]!];
    } else if (block) {
      out.splitInto = this.rules
        .filter((o) => o.rule.hf === c.rule.hf && this.rowBlock(o, shape))
        .map((o) => ({ tt: fillPattern(o.ttSource, vals).slice(0, -".weight".length), ...this.rowBlock(o, shape)! }))
        .sort((x, y) => x.start - y.start);
    }
    if (c.rule.rope) {
      const heads = this.dims[c.rule.rope.heads];
      const headDim = this.dims[c.rule.rope.head_dim ?? "head_dim"];
      if (heads === undefined || headDim === undefined) {
        throw new CkptError("CONFIG", `cannot permute lora_B rows of ${hf}: config lacks ${c.rule.rope.heads} or head_dim`, { file: this.configFile });
      }
      if (headDim % 2 !== 0) throw new CkptError("CONFIG", `head_dim ${headDim} is odd; the RoPE row permutation needs an even head size`, { file: this.configFile });
      out.rope = { heads, headDim };
    }
    return out;
  }

  /** HF module path (e.g. model.layers.0.self_attn.q_proj) → both names, or undefined when no rule knows it. */
  fromHf(module: string): LoraModule | undefined {
    for (const c of this.rules) {
      const v = matchPattern(c.hf, module + ".weight");
      if (v) return this.build(c, v, "hf");
    }
    if (this.expertRules.some((r) => matchPattern(r.hf, module + ".weight"))) throw expertsError(module);
    return undefined;
  }

  /** TorchTitan module (e.g. layers.0.attention.qkv_linear.wq) → both names. */
  fromTt(module: string): LoraModule | undefined {
    for (const c of this.rules) {
      const v = matchPattern(c.tt, module + ".weight");
      if (v) return this.build(c, v, "tt");
    }
    if (this.expertRules.some((r) => r.tt && matchPattern(r.tt, module + ".weight"))) throw expertsError(module);
    return undefined;
  }
}

function expertsError(module: string): CkptError {
  return new CkptError("UNMAPPED", `LoRA on routed MoE experts ('${module}') is not supported: TorchTitan stacks experts into one tensor, which has no per-expert adapter`, {
    hint: "restrict target_modules to attention / dense MLP projections, or merge with PEFT first",
  });
}

/** The TorchTitan LoRAConverter `target_modules` entry for a module: its last name segment. */
export function lastSegment(module: string): string {
  const i = module.lastIndexOf(".");
  return i < 0 ? module : module.slice(i + 1);
}
