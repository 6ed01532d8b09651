// TorchTitan main's Linear modules of one model — what its LoRAConverter adapts — read from the mapping's `linears`
// data and the base weights a conversion plan writes: name, in/out features, the base weight's TP placement, and for
// each module the HF modules (PEFT's names) whose rows it holds. A fused Linear (FusedQKVLinear's wqkv) holds, per
// group, the rows of each part in order; the checkpoint stores its base weight split (wq / wk / wv, by TorchTitan's
// state-dict hooks) but its adapters fused (the hooks split only `wqkv.weight` / `wqkv.bias`).
import { naturalCompare } from "../util/natural-compare.js";
import { CkptError } from "../errors.js";
import { compilePattern, fillPattern, matchPattern, type CompiledPattern } from "../mapping/patterns.js";
import type { Mapping, TpPlacement } from "../mapping/schema.js";
import { loraTarget } from "../mapping/targets.js";
import { lastSegment, ModuleResolver, type LoraModule } from "./names.js";

export interface LinearPart {
  /** TorchTitan module whose `.weight` the checkpoint stores (a fused Linear's split part, or the Linear itself). */
  tt: string;
  /** The HF module (PEFT's module name). */
  hf: string;
  /** Output rows of this part. */
  rows: number;
  /** q/k rows are stored RoPE-permuted (HF rotate-half → TorchTitan interleaved pairs); lora_B rows follow them. */
  rope?: { heads: number; headDim: number };
}

export interface TtLinear {
  /** TorchTitan module name, e.g. `layers.0.attention.qkv_linear.wqkv`; adapters are `<module>.lora_a.weight` / `.lora_b.weight`. */
  module: string;
  inFeatures: number;
  outFeatures: number;
  /** TP placement of the base weight (shard0 = colwise, shard1 = rowwise): the adapters' placements follow from it. */
  tp: TpPlacement;
  /** Row groups of a fused Linear (1 otherwise): output rows are, per group, rows/groups of each part in order. */
  groups: number;
  parts: LinearPart[];
}

interface BaseWeight { name: string; shape: number[]; policy: { tp: TpPlacement } }

/**
 * The Linears of the model whose base weights are `weights` (a torchtitan@main plan's tensors), in natural order.
 * Undefined when the mapping has no `linears` data.
 */
export function ttLinears(mapping: Mapping, config: Record<string, unknown>, weights: BaseWeight[], configFile = "config.json"): TtLinear[] | undefined {
  const spec = mapping.linears;
  if (!spec) return undefined;
  const resolver = new ModuleResolver(mapping, config, loraTarget(), configFile);
  const plain: CompiledPattern[] = spec.modules.map((m) => compilePattern(m + ".weight"));
  const fused = (spec.fused ?? []).map((f) => ({ f, parts: f.parts.map((p) => compilePattern(p + ".weight")) }));
  const out = new Map<string, TtLinear>();
  const partOf = (w: BaseWeight, tt: string, rows: number): LinearPart => {
    const m = resolver.fromTt(tt);
    if (!m) throw new CkptError("MAPPING", `no rule gives the HF name of ${w.name}`, { tensor: w.name });
    return { tt, hf: m.hf, rows, ...(m.rope ? { rope: m.rope } : {}) };
  };
  for (const w of weights) {
    if (w.shape.length !== 2) continue;
    const [rows, inF] = w.shape as [number, number];
    const tt = w.name.slice(0, -".weight".length);
    if (plain.some((p) => matchPattern(p, w.name))) {
      out.set(tt, { module: tt, inFeatures: inF, outFeatures: rows, tp: w.policy.tp, groups: 1, parts: [partOf(w, tt, rows)] });
      continue;
    }
    for (const { f, parts } of fused) {
      const i = parts.findIndex((p) => matchPattern(p, w.name));
      if (i < 0) continue;
      const module = fillPattern(f.module, matchPattern(parts[i]!, w.name)!);
      const groups = resolver.dims[f.groups];
      if (groups === undefined || rows % groups !== 0) throw new CkptError("CONFIG", `${w.name} has ${rows} rows, not a multiple of ${f.groups} = ${groups}`, { tensor: w.name });
      const lin = out.get(module) ?? { module, inFeatures: inF, outFeatures: 0, tp: w.policy.tp, groups, parts: new Array<LinearPart>(f.parts.length) };
      lin.parts[i] = partOf(w, tt, rows);
      lin.outFeatures += rows;
      out.set(module, lin);
      break;
    }
  }
  for (const lin of out.values()) {
    if (lin.parts.some((p) => p === undefined)) throw new CkptError("MISSING_TENSOR", `${lin.module} lacks one of its fused parts' weights`, { tensor: lin.module });
  }
  return [...out.values()].sort((a, b) => naturalCompare(a.module, b.module));
}

/** LoRAConverter's rule: a Linear is adapted when `targets` is null (every Linear) or lists its name's last segment. */
export function isLoraTarget(lin: TtLinear, targets: readonly string[] | null): boolean {
  return targets === null || targets.includes(lastSegment(lin.module));
}

/** The distinct last segments, for messages ("wqkv, wo, w1, …"). */
export function linearNames(linears: TtLinear[]): string[] {
  return [...new Set(linears.map((l) => lastSegment(l.module)))];
}

/**
 * A fused Linear's adapter read back (TorchTitan → PEFT, merge): `split(module)` gives each part's module and the rows
 * of the fused lora_b that are its own, in the fused layout's order (per group, the parts' rows in turn).
 */
export class FusedLinears {
  private readonly fused: { module: CompiledPattern; parts: string[]; groups: string }[];
  constructor(mapping: Mapping, private readonly resolver: ModuleResolver) {
    this.fused = (mapping.linears?.fused ?? []).map((f) => ({ module: compilePattern(f.module), parts: f.parts, groups: f.groups }));
  }

  split(module: string): { rows: number; parts: { module: LoraModule; rows: Int32Array }[] } | undefined {
    for (const f of this.fused) {
      const vals = matchPattern(f.module, module);
      if (!vals) continue;
      const G = this.resolver.dims[f.groups];
      const mods = f.parts.map((p) => this.resolver.fromTt(fillPattern(p, vals)));
      if (G === undefined || mods.some((m) => !m?.shape)) throw new CkptError("CONFIG", `cannot split ${module}: config.json lacks ${f.groups} or its parts' shapes`, { tensor: module });
      const per = mods.map((m) => m!.shape![0]! / G);
      const block = per.reduce((s, n) => s + n, 0);
      let off = 0;
      const parts = mods.map((m, i) => {
        const rows = new Int32Array(per[i]! * G);
        for (let g = 0; g < G; g++) for (let r = 0; r < per[i]!; r++) rows[g * per[i]! + r] = g * block + off + r;
        off += per[i]!;
        return { module: m!, rows };
      });
      return { rows: block * G, parts };
    }
    return undefined;
  }
}
