// `ckpt shard --format safetensors --hf-names`: per-rank safetensors that TorchTitan's own
// `initial_load_in_hf = true` path loads (HuggingFaceStorageReader through the model's state_dict_adapter, then
// `from_hf`). The tensors keep their HF names and HF row order (no q/k RoPE permutation: TorchTitan's `from_hf`
// reverse-permutes after the load), while the boxes are the TorchTitan placements' (the TorchTitan tensor's policy),
// so each rank's file holds that rank's FSDP box and DCP_SHARDING_INFO tells the reader where it sits.
import { CkptError } from "../errors.js";
import type { ConversionPlan, TensorPlan } from "./convert-plan.js";
import type { Recipe } from "./recipe.js";

/** HF-named tensors of an HF → TorchTitan plan whose every tensor is an HF tensor renamed (q/k permuted at most). */
export function hfNamedTensors(plan: ConversionPlan): TensorPlan[] {
  if (plan.direction !== "hf_to_tt") throw new CkptError("USAGE", "--hf-names needs an HF source (it keeps the HF names and row order for TorchTitan's initial_load_in_hf)");
  const out: TensorPlan[] = [];
  const seen = new Set<string>();
  for (const t of plan.tensors) {
    let r: Recipe = t.recipe;
    if (r.op === "rope" && r.direction === "hf_to_tt") r = r.input;
    if (r.op !== "source") {
      throw new CkptError("USAGE", `--hf-names: ${t.name} is not an HF tensor renamed (recipe ${r.op}); TorchTitan's from_hf for ${plan.mapping} would need its own conversion`, { tensor: t.name, hint: "drop --hf-names (DCP output loads with initial_load_in_hf = false)" });
    }
    // a tied output head is a second TorchTitan name for the HF embedding: TorchTitan's to_hf drops it and from_hf
    // copies the embedding back, so the HF tensor is written once
    if (seen.has(r.tensor)) continue;
    seen.add(r.tensor);
    out.push({ ...t, name: r.tensor, recipe: r });
  }
  return out;
}
