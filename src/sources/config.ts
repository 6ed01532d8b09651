// config.json: parsed leniently (unknown keys kept), checked strictly for the fields a caller needs.
import { CkptError } from "../errors.js";
import type { Source } from "./types.js";

export const CONFIG_FILE = "config.json";

/** The parsed config.json of a source, or undefined when it has none. Invalid JSON / a non-object is CONFIG. */
/** Files of an HF model folder that travel with converted weights (config, generation config, tokenizer). */
export const HF_ASSET_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja"];

/** `file` of the source parsed as a JSON object; `label` names it in errors (default: `file`). */
export async function readConfig(source: Source, file: string = CONFIG_FILE, label: string = file): Promise<Record<string, unknown> | undefined> {
  const text = await source.readText(file);
  if (text === undefined) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new CkptError("CONFIG", `invalid ${file.split("/").pop()}: ${e instanceof Error ? e.message : String(e)}`, { file: label, cause: e });
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw new CkptError("CONFIG", `expected a JSON object, found ${v === null ? "null" : Array.isArray(v) ? "an array" : typeof v}`, { file: label });
  }
  return v as Record<string, unknown>;
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (typeof v === "string") return JSON.stringify(v.length > 20 ? v.slice(0, 20) + "…" : v);
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return Array.isArray(v) ? "an array" : typeof v;
}

/**
 * Checks that every `required` field is present and a positive integer, and that every `optional` field is either
 * absent/null or a positive integer. Returns the valid values; throws CONFIG listing every bad field otherwise.
 */
export function validateConfigFields(
  config: Record<string, unknown>,
  required: string[],
  file: string = CONFIG_FILE,
  optional: string[] = [],
): Record<string, number> {
  const out: Record<string, number> = {};
  const bad: string[] = [];
  const check = (name: string, isRequired: boolean): void => {
    const v = config[name];
    if (v === undefined || v === null) {
      if (isRequired) bad.push(`${name} (missing)`);
      return;
    }
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
      bad.push(`${name} (expected a positive integer, found ${describe(v)})`);
      return;
    }
    out[name] = v;
  };
  for (const n of required) check(n, true);
  for (const n of optional) if (!required.includes(n)) check(n, false);
  if (bad.length > 0) {
    throw new CkptError("CONFIG", `bad field${bad.length > 1 ? "s" : ""}: ${bad.join(", ")}`, { file });
  }
  return out;
}
