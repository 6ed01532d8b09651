// LoRA tensor names on both sides and the module ⇄ module mapping, derived from the architecture mapping's
// base-weight rules (torchtitan-layout.md §2, §11): a PEFT module `<hf>` adapts `<hf>.weight`; its TorchTitan
// counterpart is the rule's TorchTitan name of that weight without `.weight`.
import { CkptError } from "../errors.js";
import { evalDimExpr, resolveDims } from "../mapping/load.js";
import { compilePattern, fillPattern, matchPattern, type CompiledPattern } from "../mapping/patterns.js";
import type { Mapping, Target, TensorRule } from "../mapping/schema.js";

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
  /** [out, in] of the base weight when the config defines it. */
  shape?: number[];
}

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

  private build(c: Compiled, vals: Record<string, number>): LoraModule {
    const hf = fillPattern(c.rule.hf!, vals).slice(0, -".weight".length);
    const tt = fillPattern(c.ttSource, vals).slice(0, -".weight".length);
    const shape = c.rule.shape?.map((e) => evalDimExpr(e, this.dims));
    const out: LoraModule = { hf, tt, shape: shape && shape.every((x) => x !== undefined) ? (shape as number[]) : undefined };
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
      if (v) return this.build(c, v);
    }
    if (this.expertRules.some((r) => matchPattern(r.hf, module + ".weight"))) throw expertsError(module);
    return undefined;
  }

  /** TorchTitan module (e.g. layers.0.attention.qkv_linear.wq) → both names. */
  fromTt(module: string): LoraModule | undefined {
    for (const c of this.rules) {
      const v = matchPattern(c.tt, module + ".weight");
      if (v) return this.build(c, v);
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
