// Loads mappings/*.json, picks the one matching a config.json, and evaluates its named dimensions.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { CkptError } from "../errors.js";
import { packageRoot } from "../util/package-root.js";
import { resolveExtends } from "./extends.js";
import { validateMapping, type Mapping } from "./schema.js";

export function mappingsDir(): string {
  return process.env.CKPT_MAPPINGS_DIR ?? join(packageRoot(), "mappings");
}

let cache: Mapping[] | undefined;

/** Every mapping file of the folder, `extends` resolved, validated; each error names its file and field. */
export function loadMappings(): Mapping[] {
  if (cache) return cache;
  const dir = mappingsDir();
  // mapping.schema.json / target.schema.json are the JSON Schemas editors validate against, not mappings
  const files = readdirSync(dir).filter((f) => f.endsWith(".json") && !f.endsWith(".schema.json")).sort();
  const raws = files.map((f) => {
    const path = join(dir, f);
    try {
      return { path, raw: JSON.parse(readFileSync(path, "utf8")) as unknown };
    } catch (e) {
      throw new CkptError("MAPPING", `invalid JSON: ${(e as Error).message}`, { file: path });
    }
  });
  cache = resolveExtends(raws).map(({ path, raw }) => validateMapping(raw, path));
  return cache;
}

export function mappingByName(name: string): Mapping {
  const m = loadMappings().find((x) => x.architecture === name);
  if (!m) throw new CkptError("MAPPING", `no mapping named '${name}' (have: ${loadMappings().map((x) => x.architecture).join(", ")})`);
  return m;
}

/** The mapping whose `match` fits config.json's `architectures` (first) or `model_type`. */
export function selectMapping(config: Record<string, unknown> | undefined, file = "config.json"): Mapping {
  if (!config) throw new CkptError("CONFIG", "no config.json: cannot tell the architecture", { file, hint: "pass --config <hf-folder>" });
  const archs = Array.isArray(config.architectures) ? (config.architectures as unknown[]).map(String) : [];
  const modelType = typeof config.model_type === "string" ? config.model_type : undefined;
  // a diffusers model config names its class in `_class_name` (FluxTransformer2DModel) and has no architectures
  const className = typeof config._class_name === "string" ? config._class_name : undefined;
  const all = loadMappings();
  const hit = all.find((m) => archs.some((a) => m.match.architectures?.includes(a))) ?? all.find((m) => modelType !== undefined && m.match.model_type?.includes(modelType))
    ?? all.find((m) => className !== undefined && m.match.class_name?.includes(className));
  if (!hit) {
    throw new CkptError("CONFIG", `unsupported architecture ${JSON.stringify(archs)} / model_type ${JSON.stringify(modelType)}${className ? ` / _class_name ${JSON.stringify(className)}` : ""}`, {
      file,
      hint: `supported: ${all.map((m) => m.architecture).join(", ")}; add a mappings/*.json file`,
    });
  }
  return hit;
}

/** A number of config.json: `field`, or `nested.field` inside a nested config (e.g. `vision_config.hidden_size`). */
function configNumber(config: Record<string, unknown>, key: string): number | undefined {
  let v: unknown = config;
  for (const k of key.split(".")) v = v && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>)[k] : undefined;
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

/** Evaluates `dims`: each alternative is `field` or `a / b`; the first whose fields exist wins. */
export function resolveDims(mapping: Mapping, config: Record<string, unknown>, file = "config.json"): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, alts] of Object.entries(mapping.dims)) {
    for (const alt of alts) {
      const parts = alt.split("/").map((s) => s.trim());
      const vals = parts.map((p) => configNumber(config, p));
      if (vals.some((v) => v === undefined || v === null)) continue;
      let v = vals[0]!;
      if (parts.length === 2) {
        if (vals[1] === 0 || v % vals[1]! !== 0) throw new CkptError("CONFIG", `${alt} is not a whole number (${v} / ${vals[1]})`, { file });
        v = v / vals[1]!;
      }
      if (!Number.isInteger(v) || v < 0) throw new CkptError("CONFIG", `${parts[0]} must be a non-negative integer, got ${v}`, { file });
      out[name] = v;
      break;
    }
  }
  return out;
}

/** For each dims name, the config.json alternative it was read from (what resolveDims picked): named in shape errors. */
export function dimFields(mapping: Mapping, config: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, alts] of Object.entries(mapping.dims)) {
    const alt = alts.find((a) => a.split("/").every((p) => configNumber(config, p.trim()) !== undefined));
    out[name] = alt ?? alts.join(" | ");
  }
  return out;
}

/** Evaluates a shape expression: a dims name, an integer, a product `a * b`, or a sum of those (`2 * kd + vd`). */
export function evalDimExpr(expr: string, dims: Record<string, number>): number | undefined {
  let sum = 0;
  for (const term of expr.split("+")) {
    let v = 1;
    for (const part of term.split("*").map((s) => s.trim())) {
      if (/^\d+$/.test(part)) v *= Number(part);
      else if (part in dims) v *= dims[part]!;
      else return undefined;
    }
    sum += v;
  }
  return sum;
}
