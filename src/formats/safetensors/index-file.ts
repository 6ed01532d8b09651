// model.safetensors.index.json: parsing (strict) and cross-checks against the shards' headers
// (docs/safetensors.md §5).
import { CkptError } from "../../errors.js";
import { findEntry, quote, type SafetensorsHeader } from "./header.js";
import { isJsonObject, jsonKind, JsonSyntaxError, parseStrictJson, safeUint, type JsonValue } from "./json-strict.js";

export interface SafetensorsIndexFile {
  totalSize?: number;
  /** Tensor name → shard file name (relative to the index, `/` separators). */
  weightMap: Map<string, string>;
}

function indexError(file: string, message: string, tensor?: string, hint?: string): CkptError {
  const where = tensor !== undefined ? `tensor ${quote(tensor)}: ` : "";
  return new CkptError("INDEX", `safetensors index: ${where}${message}`, { file, tensor, hint });
}

/** Why a weight_map file name is unsafe or not a shard, or undefined when it is fine. */
export function shardNameProblem(name: string): string | undefined {
  if (name.length === 0) return "file name is empty";
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(name)) return "file name contains control characters";
  if (name.includes("\\")) return "file name contains a backslash (rule: relative names with '/' separators)";
  if (name.startsWith("/") || /^[A-Za-z]:/.test(name)) return "file name is an absolute path (rule: names are relative to the index)";
  const segs = name.split("/");
  if (segs.some((s) => s === "..")) return "file name contains '..' (rule: shards stay inside the checkpoint folder)";
  if (segs.some((s) => s === "" || s === ".")) return "file name has an empty or '.' path segment";
  if (!name.endsWith(".safetensors") || segs[segs.length - 1] === ".safetensors") return "file name does not end in .safetensors (rule: shards are safetensors files)";
  return undefined;
}

export async function readIndex(json: string, file: string): Promise<SafetensorsIndexFile> {
  return parseIndex(json, file);
}

/** Synchronous form of readIndex. */
export function parseIndex(json: string, file: string): SafetensorsIndexFile {
  let root: JsonValue;
  try {
    root = parseStrictJson(json.charCodeAt(0) === 0xfeff ? json.slice(1) : json);
  } catch (e) {
    if (e instanceof JsonSyntaxError && e.duplicateKey !== undefined) {
      throw indexError(file, `duplicate key ${quote(e.duplicateKey)} (rule: keys are unique)`);
    }
    throw indexError(file, `not valid JSON: ${(e as Error).message} (rule: the index is valid JSON)`);
  }
  if (!isJsonObject(root)) throw indexError(file, `the index is ${jsonKind(root)}, not a JSON object`);
  let totalSize: number | undefined;
  const md = root.get("metadata");
  if (md !== undefined && md !== null) {
    if (!isJsonObject(md)) throw indexError(file, `metadata is ${jsonKind(md)}, not an object`);
    const ts = md.get("total_size");
    if (ts !== undefined && ts !== null) {
      const v = safeUint(ts);
      if (typeof v === "string") throw indexError(file, `metadata.total_size: ${v} (rule: total_size is a non-negative integer)`);
      totalSize = v;
    }
  }
  const wm = root.get("weight_map");
  if (!isJsonObject(wm)) throw indexError(file, `weight_map is ${jsonKind(wm)}, not an object (rule: the index maps tensor names to files)`);
  const weightMap = new Map<string, string>();
  for (const [name, shard] of wm) {
    if (name.length === 0) throw indexError(file, "weight_map has an empty tensor name");
    if (typeof shard !== "string") throw indexError(file, `weight_map value is ${jsonKind(shard)}, not a file name`, name);
    const p = shardNameProblem(shard);
    if (p) throw indexError(file, `weight_map file ${JSON.stringify(shard)}: ${p}`, name);
    weightMap.set(name, shard);
  }
  return { totalSize, weightMap };
}

export interface IndexCheckResult {
  /** Fatal inconsistencies. */
  errors: CkptError[];
  /** Tensors present in a shard but absent from weight_map (reported, not fatal). */
  unmapped: { tensor: string; file: string }[];
  /** Non-fatal observations (total_size mismatch: real checkpoints often carry a slightly wrong one). */
  warnings: string[];
  /** Sum of the data bytes of the mapped tensors. */
  totalSize: number;
}

/**
 * Cross-checks of spec §5: every mapped file has a header, every mapped tensor is in its file, a name in two
 * shards is an error, tensors missing from weight_map are reported, total_size (when given) matches.
 * `headers` maps each shard file name (as in weight_map) to its parsed header.
 */
export function checkIndex(
  index: SafetensorsIndexFile,
  headers: Map<string, SafetensorsHeader>,
  indexFile: string,
): IndexCheckResult {
  const errors: CkptError[] = [];
  const unmapped: { tensor: string; file: string }[] = [];
  const where = new Map<string, string>();
  for (const [shard, h] of headers) {
    for (const e of h.entries) {
      const other = where.get(e.name);
      if (other !== undefined) {
        errors.push(indexError(indexFile, `present in both ${JSON.stringify(other)} and ${JSON.stringify(shard)} (rule: a name is in one shard)`, e.name));
      } else where.set(e.name, shard);
    }
  }
  const files = new Set(index.weightMap.values());
  for (const f of files) {
    if (!headers.has(f)) errors.push(indexError(indexFile, `weight_map names ${JSON.stringify(f)}, which does not exist (rule: every mapped file exists)`));
  }
  let total = 0;
  for (const [name, shard] of index.weightMap) {
    const h = headers.get(shard);
    if (!h) continue;
    const e = findEntry(h, name);
    if (e === undefined) {
      const actual = where.get(name);
      const extra = actual !== undefined ? `; it is in ${JSON.stringify(actual)}` : "";
      errors.push(indexError(indexFile, `mapped to ${JSON.stringify(shard)} but not in that file's header${extra} (rule: every mapped tensor is in its file)`, name));
      continue;
    }
    total += e.end - e.begin;
  }
  for (const [name, shard] of where) {
    if (!index.weightMap.has(name)) unmapped.push({ tensor: name, file: shard });
  }
  const warnings: string[] = [];
  if (index.totalSize !== undefined && errors.length === 0 && index.totalSize !== total) {
    warnings.push(`${indexFile}: metadata.total_size is ${index.totalSize} but the mapped tensors hold ${total} bytes`);
  }
  return { errors, unmapped, warnings, totalSize: total };
}
