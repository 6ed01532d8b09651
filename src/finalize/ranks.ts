// `--finalize` of a multi-machine run: every rank file written by `--ranks` runs is checked, their digests joined in
// plan order, and the checkpoint-level files written (`.metadata`, the manifest, hf_assets/). Byte-identical to
// what one whole run writes.
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Catalog } from "../catalog-types.js";
import { CkptError } from "../errors.js";
import type { ConversionPlan } from "../plan/convert-plan.js";
import type { OutputLayout } from "../plan/output-layout.js";
import type { Source } from "../sources/types.js";
import { writeExtras, type ExecResult } from "../exec/executor.js";
import type { DigestAlgorithm } from "../exec/digest.js";
import { copyAssets } from "./assets.js";
import { MANIFEST, manifestOf, sourceIdentity } from "./manifest.js";

/** The digest files each `--ranks a-b` run leaves in the output folder, removed once finalized. */
export const RANK_DIGEST_PREFIX = ".ckpt-digest-";

export async function finalizeRanks(out: string, catalog: Catalog, plan: ConversionPlan, layout: OutputLayout, o: { optionsRecord: Record<string, unknown>; digest: DigestAlgorithm; assetSource?: Source }): Promise<void> {
  for (const f of layout.files) {
    const p = join(out, f.name);
    if (!existsSync(p) || statSync(p).size !== f.size) throw new CkptError("MISSING_TENSOR", `rank file ${f.name} is missing or has the wrong size; run the remaining --ranks first`, { file: p });
  }
  const digests = readdirSync(out).filter((f) => f.startsWith(RANK_DIGEST_PREFIX)).flatMap((f) => JSON.parse(readFileSync(join(out, f), "utf8")) as ExecResult["chunks"]);
  const order = new Map(layout.chunks.map((c, i) => [`${c.tensor}|${c.box.offsets.join(",")}|${c.file}`, i]));
  digests.sort((a, b) => order.get(`${a.tensor}|${a.offsets.join(",")}|${a.file}`)! - order.get(`${b.tensor}|${b.offsets.join(",")}|${b.file}`)!);
  const unique = digests.filter((d, i) => i === 0 || `${d.tensor}|${d.offsets}|${d.file}` !== `${digests[i - 1]!.tensor}|${digests[i - 1]!.offsets}|${digests[i - 1]!.file}`);
  if (unique.length !== layout.chunks.length) throw new CkptError("MISSING_TENSOR", `digests cover ${unique.length} of ${layout.chunks.length} chunks; run every rank range first`, { file: out });
  writeExtras(layout, out);
  const exec: ExecResult = { bytesWritten: 0, files: [], chunks: unique, f16Overflow: 0, threads: 0 };
  writeFileSync(join(out, MANIFEST), await manifestOf(catalog, plan, layout, exec, await sourceIdentity(catalog), o.optionsRecord, o.digest));
  if (o.assetSource) copyAssets(o.assetSource, join(out, "hf_assets"));
  for (const f of readdirSync(out).filter((f) => f.startsWith(RANK_DIGEST_PREFIX))) rmSync(join(out, f));
}
