// Export to PEFT (`ckpt lora export`): the adapter entries of a TorchTitan-layout adapter made into what PEFT can
// hold on transformers' modules. Linears PEFT cannot adapt are left out when untrained and refused otherwise; the
// TorchTitan Linears that split one HF weight by rows become that weight's one adapter.
import { naturalCompare } from "../util/natural-compare.js";
import { CkptError } from "../errors.js";
import { compilePattern, matchPattern } from "../mapping/patterns.js";
import type { AdapterEntry, OpenedAdapter } from "./adapter.js";
import { readTensorBytes, toF32 } from "./tensors.js";

/**
 * Export to PEFT: adapters on Linears PEFT cannot adapt on transformers' side (the mapping's `peft_unsupported`, e.g.
 * routers transformers implements as their own module types) are left out when their lora_b is all zero (an
 * untrained adapter changes nothing), and refused otherwise.
 */
const HELP_MERGE_TT = "merge the adapters into the base instead: ckpt lora merge <checkpoint> - <out>";

export async function withoutPeftUnsupported(ad: OpenedAdapter, onWarning?: (m: string) => void): Promise<AdapterEntry[]> {
  const pats = (ad.mapping.linears?.peft_unsupported ?? []).map((m) => compilePattern(m));
  const keep: AdapterEntry[] = [];
  const dropped: string[] = [];
  for (const e of ad.entries) {
    if (!pats.some((p) => matchPattern(p, e.module.tt))) { keep.push(e); continue; }
    const t = e.fused?.b ?? e.b;
    const b = toF32(await readTensorBytes(ad.source, t), t.dtype, t.shape.reduce((x, y) => x * y, 1));
    if (b.some((x) => x !== 0)) {
      throw new CkptError("UNMAPPED", `${e.module.tt} has a trained adapter, but PEFT cannot adapt ${e.module.hf} (transformers does not implement it as nn.Linear)`, {
        file: ad.source.id, tensor: t.name, hint: HELP_MERGE_TT,
      });
    }
    dropped.push(e.module.tt);
  }
  if (dropped.length) onWarning?.(`${dropped.length} untrained adapter(s) (lora_b = 0) on Linears PEFT cannot adapt were left out (e.g. ${dropped[0]})`);
  return keep;
}


/**
 * Export to PEFT: TorchTitan Linears that hold row blocks of one HF weight (the mapping's row-split rules, e.g.
 * Qwen3.5's in_proj_q / _k / _v of in_proj_qkv) become that HF module's one PEFT adapter, lora_B = their lora_b
 * stacked by rows (zeros for a part without adapter): s·[B_q; B_k; B_v]·A is their three updates only when they share
 * one lora_a (and scale), so adapters with different lora_a (what training makes of equal ones) are refused.
 */
export async function joinRowSplits(ad: OpenedAdapter): Promise<AdapterEntry[]> {
  const keep: AdapterEntry[] = [];
  const byHf = new Map<string, AdapterEntry[]>();
  for (const e of ad.entries) {
    if (e.module.rowsOf) byHf.set(e.module.hf, [...(byHf.get(e.module.hf) ?? []), e]);
    else keep.push(e);
  }
  for (const [hf, parts] of byHf) {
    parts.sort((x, y) => x.module.rowsOf!.start - y.module.rowsOf!.start);
    const first = parts[0]!;
    const a0 = await readTensorBytes(ad.source, first.a);
    for (const p of parts) {
      if (p.m) throw new CkptError("UNMAPPED", `${p.module.tt} has a DoRA magnitude, which PEFT's ${hf} cannot hold split by rows`, { file: ad.source.id, tensor: p.m.name, hint: HELP_MERGE_TT });
      const same = p === first || (p.a.dtype === first.a.dtype && p.b.dtype === first.b.dtype && p.scale === first.scale
        && p.a.shape.join() === first.a.shape.join() && Buffer.from(a0).equals(Buffer.from(await readTensorBytes(ad.source, p.a))));
      if (!same) {
        throw new CkptError("UNMAPPED", `${parts.map((x) => x.module.tt).join(", ")} split PEFT's ${hf} by rows but carry different lora_a (or dtypes / scales), so no one PEFT adapter (one lora_A) holds them`, {
          file: ad.source.id, tensor: p.a.name, hint: HELP_MERGE_TT,
        });
      }
    }
    const module = ad.resolver.fromHf(hf);
    if (!module) throw new CkptError("MAPPING", `no rule maps ${hf} back`, { tensor: first.a.name });
    const total = first.module.rowsOf!.total;
    const rowBlocks: NonNullable<AdapterEntry["rowBlocks"]> = [];
    let at = 0;
    for (const p of parts) {
      const { start, size } = p.module.rowsOf!;
      if (start > at) rowBlocks.push({ b: null, rows: start - at });
      rowBlocks.push({ b: p.b, rows: size });
      at = start + size;
    }
    if (at < total) rowBlocks.push({ b: null, rows: total - at });
    keep.push({ module, a: first.a, b: { ...first.b, shape: [total, first.b.shape[1]!] }, rowBlocks, rank: first.rank, alpha: first.alpha, scale: first.scale });
  }
  return keep.sort((x, y) => naturalCompare(x.module.hf, y.module.hf));
}
