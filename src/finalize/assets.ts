// The small non-tensor files an output carries (config.json, tokenizer, chat template): copied from a source into
// the output folder being written, before its commit.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { HF_ASSET_FILES } from "../sources/config.js";
import type { Source } from "../sources/types.js";

/**
 * Copies `files` of `from` (default: the HF asset files it has) into `dir`, under their own relative names. With
 * `torchDtype`, a model config.json gets that torch_dtype (the weights were cast). Returns the files copied.
 */
export function copyAssets(from: Source, dir: string, opts: { files?: string[]; torchDtype?: string } = {}): string[] {
  const copied: string[] = [];
  for (const f of opts.files ?? HF_ASSET_FILES.filter((x) => from.files().includes(x))) {
    const p = from.localPath(f);
    if (!p || !existsSync(p)) continue;
    const dst = join(dir, f);
    mkdirSync(dirname(dst), { recursive: true });
    if (opts.torchDtype && basename(f) === "config.json") {
      const cfg = JSON.parse(readFileSync(p, "utf8")) as Record<string, unknown>;
      cfg.torch_dtype = opts.torchDtype;
      writeFileSync(dst, JSON.stringify(cfg, null, 2) + "\n");
    } else copyFileSync(p, dst);
    copied.push(f);
  }
  return copied;
}
