// `extends`: a mapping written as another mapping plus its differences (Kimi K2 = DeepSeek-V3 + a wrapper's
// prefixes, towers and config rewrite). Resolution works on the parsed JSON, before validation, so the merged
// mapping is validated as a whole and every error names the extending file.
//
// The rules (docs/adding-a-model.md "Extending a mapping"):
// - `extends` names the `architecture` of another mapping file in the same folder; chains are allowed, cycles refused.
// - Never inherited (each file has its own, or none): `architecture`, `description`, `match` (two files matching the
//   same configs would be ambiguous), `$schema`, `fixture` (the file's own test checkpoint), `extends` itself.
// - `dims`, `hf_file_prefix`: merged key by key, the extending file's entry winning.
// - `tensors`: edits of the base's rules, keyed by `hf` pattern (a synth rule, which has no `hf`, by its `tt`). An
//   entry whose key names base rules replaces all of them (several rules may share one `hf`: split parts, alternative
//   layouts) at the place of the first; `{ "hf": …, "remove": true }` removes them; entries with a new key are appended
//   in order. Rule order matters (the first matching layout wins), hence replacement in place.
// - `hf_config`: the extending file's rewrites, then the base's (a wrapper's config is unwrapped first, then fixed
//   as the base's would be).
// - Any other field: the extending file's value replaces the base's whole; `null` removes it.
import { CkptError } from "../errors.js";

type Json = Record<string, unknown>;

const NOT_INHERITED = new Set(["architecture", "description", "match", "$schema", "fixture", "extends"]);
const MERGED_BY_KEY = new Set(["dims", "hf_file_prefix"]);

/** The key a tensors[] entry is edited by: its `hf` pattern, or `tt` for a synth rule. */
export function ruleKey(rule: Json): string | undefined {
  if (typeof rule.hf === "string") return `hf:${rule.hf}`;
  if (typeof rule.tt === "string") return `tt:${rule.tt}`;
  return undefined;
}

/**
 * Every mapping with its `extends` resolved. `raws` are the parsed files by path; the result keeps their order.
 * A file that is not an object is passed through for the validator to refuse.
 */
export function resolveExtends(raws: { path: string; raw: unknown }[]): { path: string; raw: unknown }[] {
  const byArch = new Map<string, { path: string; raw: Json }>();
  for (const r of raws) {
    const o = r.raw as Json | undefined;
    if (o && typeof o === "object" && !Array.isArray(o) && typeof o.architecture === "string") byArch.set(o.architecture, { path: r.path, raw: o });
  }
  const done = new Map<string, Json>();
  const resolve = (path: string, raw: Json, seen: string[]): Json => {
    if (raw.extends === undefined) return raw;
    const arch = String(raw.architecture);
    const cached = done.get(arch);
    if (cached) return cached;
    if (typeof raw.extends !== "string" || raw.extends.length === 0) throw new CkptError("MAPPING", "$.extends: must name the architecture of another mapping file", { file: path });
    if (seen.includes(raw.extends)) throw new CkptError("MAPPING", `$.extends: cycle ${[...seen, raw.extends].join(" → ")}`, { file: path });
    const base = byArch.get(raw.extends);
    if (!base) throw new CkptError("MAPPING", `$.extends: no mapping named '${raw.extends}' (have: ${[...byArch.keys()].join(", ")})`, { file: path });
    const merged = mergeMapping(resolve(base.path, base.raw, [...seen, raw.extends]), raw, path);
    done.set(arch, merged);
    return merged;
  };
  return raws.map((r) => {
    const o = r.raw as Json | undefined;
    if (!o || typeof o !== "object" || Array.isArray(o)) return r;
    return { path: r.path, raw: resolve(r.path, o, [String(o.architecture)]) };
  });
}

/** `child` applied over the resolved `base` (see the rules at the top of this file). */
export function mergeMapping(base: Json, child: Json, file: string): Json {
  const out: Json = {};
  for (const [k, v] of Object.entries(base)) if (!NOT_INHERITED.has(k)) out[k] = v;
  for (const [k, v] of Object.entries(child)) {
    if (k === "extends") continue;
    if (v === null) { delete out[k]; continue; }
    if (MERGED_BY_KEY.has(k) && isObject(v) && isObject(out[k])) out[k] = { ...(out[k] as Json), ...v };
    else if (k === "tensors" && Array.isArray(v) && Array.isArray(out[k])) out[k] = mergeRules(out[k] as Json[], v as unknown[], file);
    else if (k === "hf_config" && Array.isArray(v) && Array.isArray(out[k])) out[k] = [...v, ...(out[k] as unknown[])];
    else out[k] = v;
  }
  return out;
}

function mergeRules(base: Json[], edits: unknown[], file: string): Json[] {
  // the extending file's entries grouped by key, in order: each group replaces (or removes) the base's rules of its key
  const groups = new Map<string, Json[]>();
  edits.forEach((e, i) => {
    const at = `$.tensors[${i}]`;
    if (!isObject(e)) throw new CkptError("MAPPING", `${at}: must be an object`, { file });
    const key = ruleKey(e);
    if (!key) throw new CkptError("MAPPING", `${at}: an extending mapping's rule needs hf (or, for a synth rule, tt as a string) to say which base rules it edits`, { file });
    if (e.remove !== undefined) {
      if (e.remove !== true || Object.keys(e).some((k) => k !== "hf" && k !== "tt" && k !== "remove")) throw new CkptError("MAPPING", `${at}: a removal is exactly { "hf": <pattern>, "remove": true }`, { file });
      if (!base.some((r) => ruleKey(r) === key)) throw new CkptError("MAPPING", `${at}: removes ${key.slice(3)}, which the base mapping has no rule for`, { file });
      if (groups.has(key)) throw new CkptError("MAPPING", `${at}: removes ${key.slice(3)}, which this file also lists`, { file });
    } else if (groups.get(key)?.some((r) => r.remove === true)) throw new CkptError("MAPPING", `${at}: lists ${key.slice(3)}, which this file also removes`, { file });
    groups.set(key, [...(groups.get(key) ?? []), e]);
  });
  const out: Json[] = [];
  const placed = new Set<string>();
  for (const r of base) {
    const key = ruleKey(r);
    const g = key !== undefined ? groups.get(key) : undefined;
    if (!g) { out.push(r); continue; }
    if (placed.has(key!)) continue;
    placed.add(key!);
    out.push(...g.filter((x) => x.remove !== true));
  }
  for (const [key, g] of groups) if (!placed.has(key)) out.push(...g);
  return out;
}

const isObject = (v: unknown): v is Json => !!v && typeof v === "object" && !Array.isArray(v);
