// How a mapping reads a source's names and config before its rules apply (docs/torchtitan-layout.md §7, §7.2): prefix normalisation
// (`language_model.model.layers.` / `language_model.layers.` → `model.layers.`), a nested text config of a multimodal
// wrapper, towers the target cannot take (refused, or skipped with --text-only), and layers beyond the main stack
// (DeepSeek MTP: HF layer L ≥ n → TorchTitan `mtp_layers.{L − n}` with --mtp); a TorchTitan checkpoint's keys that are
// model weights (normalizeTtName).
import { CkptError } from "../errors.js";
import type { CatalogTensor } from "../catalog-types.js";
import { textOnlyArchitectures } from "../mapping/hf-config.js";
import { type Mapping, type TowerOption, type Target, type TensorRule } from "../mapping/schema.js";

/** The config the mapping's dims and checks read: the nested config's fields over the top level's. */
/** How the user asks for a tower option, as messages spell it (the CLI's flag). */
export const towerFlag = (o: TowerOption): string => (o.startsWith("drop:") ? `--drop ${o.slice(5)}` : `--${o}`);

export function effectiveConfig(mapping: Mapping, config: Record<string, unknown>): Record<string, unknown> {
  const key = mapping.nested_config;
  const inner = key ? config[key] : undefined;
  if (!inner || typeof inner !== "object" || Array.isArray(inner)) return config;
  return { ...config, ...(inner as Record<string, unknown>) };
}

/** `name` as the mapping's rules spell it (first matching prefix rewritten), or itself. */
export function normalizedName(mapping: Mapping, name: string): string {
  for (const p of mapping.prefixes ?? []) if (name.startsWith(p.from)) return p.to + name.slice(p.from.length);
  return name;
}

export interface SourceView {
  tensors: Map<string, CatalogTensor>;
  /** Normalised name → the name stored in the source. */
  stored: Map<string, string>;
  skipped: { name: string; why: string }[];
}

/**
 * The catalog under normalised names (pieces unchanged: execution reads bytes by file and offset, not by name),
 * with tower tensors taken out: refused unless the user passed the tower's option.
 */
export function sourceView(mapping: Mapping, catalog: { tensors: Map<string, CatalogTensor> }, options: string[] = []): SourceView {
  if (!mapping.prefixes?.length && !mapping.towers?.length) return { tensors: catalog.tensors, stored: new Map(), skipped: [] };
  const tensors = new Map<string, CatalogTensor>();
  const stored = new Map<string, string>();
  const skipped: { name: string; why: string }[] = [];
  const refused = new Map<string, string[]>();
  for (const [name, t] of catalog.tensors) {
    const tower = mapping.towers?.find((x) => x.prefixes.some((p) => name.startsWith(p)));
    // a tower the mapping converts (rules of its own) goes through them unless the user's option skips it
    if (tower && !(tower.convert && !(tower.option && options.includes(tower.option)))) {
      if (!tower.option) skipped.push({ name, why: tower.why });
      else if (options.includes(tower.option)) skipped.push({ name, why: `${tower.why} (${towerFlag(tower.option)})` });
      else refused.set(tower.why, [...(refused.get(tower.why) ?? []), name]);
      continue;
    }
    const n = normalizedName(mapping, name);
    const prev = stored.get(n);
    if (prev !== undefined) throw new CkptError("MAPPING", `${name} and ${prev} are the same tensor under two spellings`, { tensor: name });
    tensors.set(n, t);
    stored.set(n, name);
  }
  for (const [why, names] of refused) {
    const option = mapping.towers!.find((x) => x.why === why)!.option;
    if (option !== "text-only") {
      throw new CkptError("UNSUPPORTED", `${names.length} source tensor(s) ${mapping.architecture} cannot convert (${names.slice(0, 4).join(", ")}${names.length > 4 ? ", …" : ""}): ${why}`, {
        tensor: names[0], hint: `pass ${towerFlag(option!)} to convert without them (recorded in the output's manifest)`,
      });
    }
    throw new CkptError("CONFIG", `${names.length} tensor(s) of a tower ${mapping.architecture} does not convert (${names.slice(0, 3).join(", ")}${names.length > 3 ? ", …" : ""}): ${why}`, {
      tensor: names[0], hint: `pass --${option} to convert the language model alone (the tower is skipped and reported)`,
    });
  }
  return { tensors, stored, skipped };
}

/**
 * For an HF layer index at or above the mapping's extra_layers bound: the TorchTitan-name rewrite (`layers.{L}.` →
 * `{prefix}.{L − n}.`) when the target has it and the user asked for it, else why it is skipped.
 */
export function extraLayer(mapping: Mapping, target: Target, L: number, dims: Record<string, number>, options: string[]):
  { rename: (tt: string) => string } | { skip: string } | undefined {
  const x = mapping.extra_layers;
  if (!x) return undefined;
  const n = dims[x.from];
  if (n === undefined || L < n) return undefined;
  const prefix = x.tt_prefix?.[target];
  if (prefix && x.option && options.includes(x.option)) {
    const from = `layers.${L}.`, to = `${prefix}.${L - n}.`;
    return { rename: (tt) => (tt.startsWith(from) ? to + tt.slice(from.length) : tt) };
  }
  if (!x.skip_for?.includes(target) && !prefix) return undefined;
  const how = prefix && x.option ? `; pass --${x.option} to convert it to ${prefix}.${L - n}` : "";
  return { skip: `${x.note ?? `layer ${L} has no ${target} counterpart`}${how}` };
}

/** A TorchTitan name of an extra layer (`mtp_layers.k.…`) as the main-stack name the rules match (`layers.{n + k}.…`). */
export function mainStackName(mapping: Mapping, target: Target, name: string, dims: Record<string, number>): string {
  const x = mapping.extra_layers;
  const prefix = x?.tt_prefix?.[target];
  const n = x ? dims[x.from] : undefined;
  if (!prefix || n === undefined || !name.startsWith(prefix + ".")) return name;
  const m = /^(\d+)\.(.*)$/.exec(name.slice(prefix.length + 1));
  return m ? `layers.${n + Number(m[1])}.${m[2]}` : name;
}

/**
 * The source layout a mapping with `layouts` reads these (normalised) names in: the layout whose own rules match the
 * most names (FLUX: diffusers `transformer_blocks.*` vs BFL `double_blocks.*`); undefined for single-layout mappings.
 */
export function detectLayout(mapping: Mapping, names: Iterable<string>, matches: (rule: TensorRule, name: string) => boolean): string | undefined {
  if (!mapping.layouts) return undefined;
  const list = [...names];
  let best = mapping.layouts[0]!, hits = -1;
  for (const layout of mapping.layouts) {
    const rules = mapping.tensors.filter((r) => r.layout === layout && r.hf);
    const n = list.filter((name) => rules.some((r) => matches(r, name))).length;
    if (n > hits) { best = layout; hits = n; }
  }
  return best;
}

/** The mapping as one layout reads it: its rules plus the rules every layout shares. */
export function inLayout(mapping: Mapping, layout: string | undefined): Mapping {
  if (!mapping.layouts) return mapping;
  if (layout === undefined || !mapping.layouts.includes(layout)) {
    throw new CkptError("USAGE", `--hf-layout ${layout}: ${mapping.architecture} has layouts ${mapping.layouts.join(", ")}`);
  }
  return { ...mapping, tensors: mapping.tensors.filter((r) => r.layout === undefined || r.layout === layout) };
}

/**
 * How --to hf writes a checkpoint back (the mapping's `hf_output`): a multimodal wrapper's checkpoint with its tower
 * comes back as the wrapper (the language model's names under the wrapper's prefix); without the tower (a --text-only
 * conversion) as the text-only model, whose config.json the caller writes (`textOnly`). A tower with a config.json
 * that has no place for it, or a wrapper with no text-only model ckpt knows, is refused: what is written must load.
 */
export function hfOutputLayout(mapping: Mapping, rawConfig: Record<string, unknown>, ttNames: string[], file: string): { rename: (hf: string) => string; textOnly: boolean } {
  const out = mapping.hf_output;
  const same = { rename: (n: string) => n, textOnly: false };
  if (!out) return same;
  const nested = rawConfig[mapping.nested_config!];
  const wrapped = !!nested && typeof nested === "object" && !Array.isArray(nested);
  const tower = ttNames.find((n) => n.startsWith(out.tower));
  const archs = Array.isArray(rawConfig.architectures) ? (rawConfig.architectures as string[]) : [];
  if (!wrapped) {
    if (tower) throw new CkptError("CONFIG", `the checkpoint has a tower (${tower}) but config.json describes a text-only model (${archs.join(", ") || "no architectures"})`, { file, tensor: tower, hint: "pass --config <the multimodal checkpoint's folder or repo>" });
    return same;
  }
  if (!tower) {
    const textOnly = textOnlyArchitectures(mapping);
    if (!archs.length || !archs.every((a) => textOnly[a])) {
      throw new CkptError("UNSUPPORTED", `the checkpoint has no ${out.tower}* tensors (a --text-only conversion), and ckpt knows no text-only model for ${archs.join(", ") || "a config without architectures"}`, { file, hint: `text-only counterparts known: ${Object.keys(textOnly).join(", ")}` });
    }
    return { rename: same.rename, textOnly: true };
  }
  const towers = (mapping.towers ?? []).flatMap((t) => t.prefixes);
  const { from, to } = out.prefix;
  return { rename: (n) => (n.startsWith(to) && !towers.some((p) => n.startsWith(p)) ? from + n.slice(to.length) : n), textOnly: false };
}

/** Keys of a TorchTitan checkpoint that are model weights: strips the historical `model.` prefix, skips the rest. */
export function normalizeTtName(name: string): { name?: string; why?: string } {
  if (/^(optimizer|lr_scheduler|dataloader|train_state|lr_schedulers)(\.|$)/.test(name)) return { why: "training state, not model weights" };
  const n = name.startsWith("model.") ? name.slice("model.".length) : name;
  if (n === "freqs_cis" || n.endsWith(".freqs_cis")) return { why: "RoPE cache buffer (pre-0.2 checkpoints)" };
  return { name: n };
}
