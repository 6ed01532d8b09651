// Hostile corpus of structurally valid checkpoints whose contents lie: FP8 block-quantized (DeepSeek-V3 layout),
// MXFP4 (gpt-oss), INT4 compressed-tensors (Kimi K2), MoE configs that contradict the expert tensors, EP/TP options
// the model cannot take, and PEFT adapters that do not fit their base. Every case is refused with one CkptError of
// an input code (never INTERNAL), one line naming the tensor, and nothing written: no <out>, no <out>.partial, the
// source untouched. Controls: each family's unedited checkpoint converts, and --allow-nonfinite writes a NaN scale's
// tile (recorded in the manifest). The same families built by torch are in test/interop/quant-refusal.test.ts.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { runConvert, type ConvertOptions } from "../src/commands/convert.js";
import { loraConvert } from "../src/commands/lora-convert.js";
import { CkptError, type ErrorCode } from "../src/errors.js";
import type { DType } from "../src/dtypes.js";
import { buildSafetensors } from "../src/formats/safetensors/index.js";
import { tinyDeepSeekTensors } from "../src/fixtures/tiny-deepseek.js";
import { tinyGptOssTensors } from "../src/fixtures/tiny-gpt-oss.js";
import { tinyKimiTensors } from "../src/fixtures/tiny-kimi.js";
import { tinyLlamaTensors, writeHfFolder, type GeneratedTensor } from "../src/fixtures/tiny-llama.js";
import { tinyPeftAdapter, writePeftAdapter } from "../src/fixtures/tiny-lora.js";
import { tinyQwen35Tensors } from "../src/fixtures/tiny-qwen3-5.js";
import { tree } from "./helpers/tree.js";

const tmp = mkdtempSync(join(tmpdir(), "ckpt-qcorpus-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

type Family = "fp8" | "mxfp4" | "int4" | "other-quant" | "moe" | "ep-tp" | "adapter";
type Model = { config: Record<string, unknown>; tensors: GeneratedTensor[] };

interface Case {
  family: Family;
  name: string;
  /** The checkpoint (edited in memory) or, for adapters, the base and the adapter. */
  base: "deepseek" | "gptoss" | "kimi" | "llama" | "qwen35";
  edit?: (m: Model) => void;
  options?: Partial<ConvertOptions>;
  /** Adapter cases: the adapter's model (default the base) and edits of the base folder / adapter. */
  adapter?: { on?: (base: Model) => Model; editBase?: (m: Model) => void; targets?: string[]; dtypeB?: DType };
  code: ErrorCode;
  message: RegExp;
  /** Must appear in oneLine(). */
  where: RegExp[];
}

const DS = "model.layers.1.self_attn.q_a_proj.weight";
const DS_S = DS + "_scale_inv";
const OSS = "model.layers.1.mlp.experts.down_proj";
const KIMI = "model.layers.1.mlp.experts.0.down_proj";
const tensorIs = (t: string) => new RegExp(`tensor '${t.replace(/\./g, "\\.")}'`);

const get = (m: Model, name: string) => m.tensors.find((t) => t.name === name) ?? assert.fail(`fixture lacks ${name}`);
const drop = (m: Model, name: string) => { get(m, name); m.tensors = m.tensors.filter((t) => t.name !== name); };
const dv = (t: GeneratedTensor) => new DataView(t.data.buffer, t.data.byteOffset, t.data.byteLength);
const quant = (m: Model) => m.config.quantization_config as Record<string, unknown>;
/** Replaces a tensor's data (a fresh buffer: fixtures may share theirs). */
const setData = (t: GeneratedTensor, f: (d: DataView) => void) => { t.data = new Uint8Array(t.data); f(dv(t)); };

const CASES: Case[] = [
  // ---- FP8 block-quantized (DeepSeek-V3 / Kimi K2 base layout)
  { family: "fp8", name: "FP8 weight without its weight_scale_inv", base: "deepseek", edit: (m) => drop(m, DS_S),
    code: "MISSING_TENSOR", message: new RegExp(`FP8 weight without its block scale ${DS_S.replace(/\./g, "\\.")}`), where: [tensorIs(DS)] },
  { family: "fp8", name: "weight_scale_inv without its FP8 weight", base: "deepseek", edit: (m) => drop(m, DS),
    code: "MISSING_TENSOR", message: /FP8 block scale without its weight/, where: [tensorIs(DS_S)] },
  { family: "fp8", name: "block scale NaN", base: "deepseek", edit: (m) => setData(get(m, DS_S), (d) => d.setFloat32(4, NaN, true)),
    code: "VALUE", message: /FP8 block scale \[0, 1\] of .* is NaN .*at byte \d+ of model\.safetensors/, where: [tensorIs(DS_S), /model\.safetensors/] },
  { family: "fp8", name: "block scale +inf", base: "deepseek", edit: (m) => setData(get(m, DS_S), (d) => d.setFloat32(0, Infinity, true)),
    code: "VALUE", message: /FP8 block scale \[0, 0\] of .* is Infinity/, where: [tensorIs(DS_S)] },
  { family: "fp8", name: "FP8 value byte 0x7F (NaN) in a weight", base: "deepseek", edit: (m) => setData(get(m, DS), (d) => d.setUint8(201, 0x7f)),
    code: "VALUE", message: /FP8 dequantization gives a non-finite BF16 value at weight element \[1, 1\] \(block \[0, 0\], fp8 byte 0x7f at offset \d+ of model\.safetensors/, where: [tensorIs(DS)] },
  { family: "fp8", name: "scale × value overflows f16 (--dtype f16)", base: "deepseek", options: { dtype: "f16" }, edit: (m) => setData(get(m, DS_S), (d) => d.setFloat32(0, 1e30, true)),
    code: "VALUE", message: /non-finite F16 value .*value × scale overflows F16/, where: [/q_a_proj/] },
  { family: "fp8", name: "scale × value overflows float32", base: "deepseek", edit: (m) => setData(get(m, DS_S), (d) => d.setFloat32(0, 3e38, true)),
    code: "VALUE", message: /non-finite BF16 value/, where: [/q_a_proj/] },
  { family: "fp8", name: "scale stored BF16", base: "deepseek", edit: (m) => { const s = get(m, DS_S); s.dtype = "BF16"; s.data = s.data.subarray(0, s.data.length / 2); },
    code: "SHAPE", message: /scale must be F32 \[3,2\] .* got BF16 \[3,2\]/, where: [tensorIs(DS_S)] },
  { family: "fp8", name: "scale of the wrong shape", base: "deepseek", edit: (m) => { const s = get(m, DS_S); s.shape = [2, 3]; },
    code: "SHAPE", message: /scale must be F32 \[3,2\] for a \[300,200\] weight with 128×128 blocks, got F32 \[2,3\]/, where: [tensorIs(DS_S)] },
  { family: "fp8", name: "FP8 weights but no quantization_config", base: "deepseek", edit: (m) => { delete m.config.quantization_config; },
    code: "CONFIG", message: /FP8 block-quantized weight\(s\), but config\.json's quantization_config is absent/, where: [/config\.json/] },
  { family: "fp8", name: "weight_block_size contradicts the scales", base: "deepseek", edit: (m) => { quant(m).weight_block_size = [64, 64]; },
    code: "CONFIG", message: /weight_block_size is \[64,64\], but the deepseek_v3 FP8 scales are per 128×128 block/, where: [/config\.json/] },
  { family: "fp8", name: "fmt e5m2 but E4M3 weights", base: "deepseek", edit: (m) => { quant(m).fmt = "e5m2"; },
    code: "DTYPE", message: /quantization_config\.fmt is e5m2, but the weight is F8_E4M3/, where: [/config\.json/] },
  { family: "fp8", name: "modules_to_not_convert lists an FP8 module", base: "deepseek", edit: (m) => { quant(m).modules_to_not_convert = ["model.layers.*.self_attn"]; },
    code: "CONFIG", message: /modules_to_not_convert lists model\.layers\.\*\.self_attn, but the weight is stored FP8/, where: [/self_attn/] },
  { family: "fp8", name: "scale beside a BF16 weight", base: "deepseek", edit: (m) => { const w = get(m, DS); w.dtype = "BF16"; w.data = new Uint8Array(w.data.length * 2); },
    code: "DTYPE", message: /has a _scale_inv companion but dtype BF16, not FP8/, where: [tensorIs(DS)] },
  // ---- MXFP4 (gpt-oss)
  { family: "mxfp4", name: "MXFP4 scale byte 0xFF (E8M0 NaN)", base: "gptoss", edit: (m) => setData(get(m, OSS + "_scales"), (d) => d.setUint8(3, 0xff)),
    code: "VALUE", message: /MXFP4 value is not finite: scale 0xFF is the E8M0 NaN \(scale byte at offset \d+ of model\.safetensors/, where: [tensorIs(OSS + "_scales")] },
  { family: "mxfp4", name: "MXFP4 scale overflowing float32 (254)", base: "gptoss", edit: (m) => setData(get(m, OSS + "_scales"), (d) => { for (let i = 0; i < 8; i++) d.setUint8(i, 254); }),
    code: "VALUE", message: /MXFP4 value is not finite: E2M1 nibble 0x[0-9a-f] x 2\^\(254 - 127\) overflows float32/, where: [tensorIs(OSS + "_scales")] },
  { family: "mxfp4", name: "MXFP4 value beyond f16 (--dtype f16)", base: "gptoss", options: { dtype: "f16" }, edit: (m) => setData(get(m, OSS + "_scales"), (d) => { for (let i = 0; i < 64; i++) d.setUint8(i, 150); }),
    code: "VALUE", message: /MXFP4 decoding gives a value F16 cannot hold/, where: [tensorIs(OSS + "_blocks")] },
  { family: "mxfp4", name: "MXFP4 blocks without their scales", base: "gptoss", edit: (m) => drop(m, OSS + "_scales"),
    code: "MISSING_TENSOR", message: /MXFP4 blocks without their scales model\.layers\.1\.mlp\.experts\.down_proj_scales/, where: [tensorIs(OSS + "_blocks")] },
  { family: "mxfp4", name: "MXFP4 scales without their blocks", base: "gptoss", edit: (m) => drop(m, OSS + "_blocks"),
    code: "MISSING_TENSOR", message: /MXFP4 scales without their blocks model\.layers\.1\.mlp\.experts\.down_proj_blocks/, where: [tensorIs(OSS + "_scales")] },
  { family: "mxfp4", name: "MXFP4 scales of the wrong shape", base: "gptoss", edit: (m) => { const s = get(m, OSS + "_scales"); s.shape = [4, 128, 1]; },
    code: "SHAPE", message: /MXFP4 scales must be U8 \[4,64,2\]/, where: [tensorIs(OSS + "_scales")] },
  { family: "mxfp4", name: "MXFP4 blocks not U8", base: "gptoss", edit: (m) => { const b = get(m, OSS + "_blocks"); b.dtype = "I8"; },
    code: "SHAPE", message: /MXFP4 blocks must be U8 \[\.\.\., G, 16\], got I8/, where: [tensorIs(OSS + "_blocks")] },
  { family: "mxfp4", name: "MXFP4 blocks but no quantization_config", base: "gptoss", edit: (m) => { delete m.config.quantization_config; },
    code: "CONFIG", message: /MXFP4 packed tensor\(s\), but config\.json's quantization_config is absent, not mxfp4/, where: [/config\.json/] },
  { family: "mxfp4", name: "modules_to_not_convert lists the MXFP4 experts", base: "gptoss", edit: (m) => { (quant(m).modules_to_not_convert as string[]).push("model.layers.*.mlp.experts"); },
    code: "CONFIG", message: /modules_to_not_convert lists model\.layers\.\*\.mlp\.experts, but the tensor is stored MXFP4/, where: [/_blocks/] },
  { family: "mxfp4", name: "quantization_config mxfp4 over BF16 experts", base: "gptoss", edit: (m) => { const b = tinyGptOssTensors({ layout: "bf16" }); m.tensors = b.tensors; },
    code: "CONFIG", message: /quantization_config \(mxfp4\) quantizes this tensor, but it is stored unquantized \(BF16\)/, where: [/gate_up_proj|down_proj/] },
  // ---- INT4 compressed-tensors (Kimi K2 Thinking layout)
  { family: "int4", name: "INT4 weight_shape 32 columns wider than weight_packed", base: "kimi", edit: (m) => setData(get(m, KIMI + ".weight_shape"), (d) => d.setBigInt64(8, d.getBigInt64(8, true) + 32n, true)),
    code: "VALUE", message: /weight_shape is \[224,128\], but model\.layers\.1\.mlp\.experts\.0\.down_proj\.weight_packed and its scales hold a \[224,96\] weight \(32 columns wider than the packed data\)/, where: [tensorIs(KIMI + ".weight_shape"), /model\.safetensors/] },
  { family: "int4", name: "INT4 weight_shape with fewer rows", base: "kimi", edit: (m) => setData(get(m, KIMI + ".weight_shape"), (d) => d.setBigInt64(0, 100n, true)),
    code: "VALUE", message: /weight_shape is \[100,96\], but .* hold a \[224,96\] weight/, where: [tensorIs(KIMI + ".weight_shape")] },
  { family: "int4", name: "INT4 weight_packed without weight_shape", base: "kimi", edit: (m) => drop(m, KIMI + ".weight_shape"),
    code: "MISSING_TENSOR", message: /INT4 weight_packed without its weight_shape model\.layers\.1\.mlp\.experts\.0\.down_proj\.weight_shape/, where: [tensorIs(KIMI + ".weight_packed")] },
  { family: "int4", name: "INT4 weight_packed without weight_scale", base: "kimi", edit: (m) => drop(m, KIMI + ".weight_scale"),
    code: "MISSING_TENSOR", message: /INT4 weight_packed without its scale model\.layers\.1\.mlp\.experts\.0\.down_proj\.weight_scale/, where: [tensorIs(KIMI + ".weight_packed")] },
  { family: "int4", name: "INT4 scale and shape without weight_packed", base: "kimi", edit: (m) => drop(m, KIMI + ".weight_packed"),
    code: "MISSING_TENSOR", message: /INT4 weight_(scale|shape) without its weight_packed/, where: [/down_proj\.weight_(scale|shape)/] },
  { family: "int4", name: "INT4 BF16 scale NaN", base: "kimi", edit: (m) => setData(get(m, KIMI + ".weight_scale"), (d) => d.setUint16(2, 0x7fc0, true)),
    code: "VALUE", message: /INT4 value is not finite: BF16 scale 0x7fc0 \(at byte \d+ of model\.safetensors: row 0, group 1 of the run/, where: [tensorIs(KIMI + ".weight_scale")] },
  { family: "int4", name: "INT4 BF16 scale +inf", base: "kimi", edit: (m) => setData(get(m, KIMI + ".weight_scale"), (d) => d.setUint16(0, 0x7f80, true)),
    code: "VALUE", message: /INT4 value is not finite: BF16 scale 0x7f80/, where: [tensorIs(KIMI + ".weight_scale")] },
  { family: "int4", name: "INT4 weight_shape stored F32", base: "kimi", edit: (m) => { const s = get(m, KIMI + ".weight_shape"); s.dtype = "F32"; s.shape = [4]; },
    code: "DTYPE", message: /weight_shape must be I32 or I64, got F32/, where: [tensorIs(KIMI + ".weight_shape")] },
  { family: "int4", name: "config group_size contradicts the scales", base: "kimi", edit: (m) => { ((quant(m).config_groups as Record<string, { weights: Record<string, unknown> }>).group_0!.weights).group_size = 64; },
    code: "SHAPE", message: /INT4 weight_scale must be BF16 \[\d+,\d+\] \(one scale per 64 inputs/, where: [/weight_scale/] },
  { family: "int4", name: "asymmetric INT4 config", base: "kimi", edit: (m) => { ((quant(m).config_groups as Record<string, { weights: Record<string, unknown> }>).group_0!.weights).symmetric = false; },
    code: "CONFIG", message: /symmetric is false \(zero points are not implemented\)/, where: [/config\.json/] },
  { family: "int4", name: "INT4 packed but quant_method fp8", base: "kimi", edit: (m) => { m.config.quantization_config = { quant_method: "fp8", weight_block_size: [128, 128] }; },
    code: "CONFIG", message: /INT4 weight_packed tensor\(s\), but config\.json's quantization_config has quant_method "fp8", not compressed-tensors/, where: [/config\.json/] },
  { family: "int4", name: "compressed-tensors config over a BF16 expert not in ignore", base: "kimi", edit: (m) => {
    for (const s of [".weight_packed", ".weight_scale", ".weight_shape"]) drop(m, KIMI + s);
    m.tensors.push({ name: KIMI + ".weight", dtype: "BF16", shape: [224, 64], data: new Uint8Array(224 * 64 * 2) });
  }, code: "CONFIG", message: /quantizes module model\.layers\.1\.mlp\.experts\.0\.down_proj, which is not in its ignore list, but it is stored unquantized \(BF16\)/, where: [tensorIs(KIMI + ".weight")] },
  { family: "int4", name: "ignored module stored packed", base: "kimi", edit: (m) => { (quant(m).ignore as string[]).push("re:.*experts.*"); },
    code: "CONFIG", message: /is in quantization_config\.ignore but stored packed/, where: [/weight_packed/] },
  // ---- weights stored in a quantized dtype ckpt has no decoder (or scale) for
  { family: "other-quant", name: "an int8 weight (bitsandbytes-style, no SCB)", base: "llama", edit: (m) => { const t = get(m, "model.layers.0.mlp.gate_proj.weight"); t.dtype = "I8"; t.data = new Uint8Array(t.data.length / 4); },
    code: "DTYPE", message: /stored as I8, which is not a float dtype a model weight can hold/, where: [tensorIs("model.layers.0.mlp.gate_proj.weight")] },
  { family: "other-quant", name: "a raw F4 (sub-byte) weight", base: "llama", edit: (m) => { const t = get(m, "model.layers.0.mlp.up_proj.weight"); t.dtype = "F4"; t.data = new Uint8Array(t.data.length / 8); },
    code: "DTYPE", message: /stored as F4/, where: [tensorIs("model.layers.0.mlp.up_proj.weight")] },
  { family: "other-quant", name: "an E8M0 (scale dtype) weight", base: "llama", edit: (m) => { const t = get(m, "model.layers.0.self_attn.o_proj.weight"); t.dtype = "F8_E8M0"; t.data = new Uint8Array(t.data.length / 4); },
    code: "DTYPE", message: /stored as F8_E8M0/, where: [tensorIs("model.layers.0.self_attn.o_proj.weight")] },
  { family: "other-quant", name: "FP8 weights on an architecture without block dequantization", base: "llama", edit: (m) => {
    const t = get(m, "model.layers.0.mlp.down_proj.weight"); t.dtype = "F8_E4M3"; t.data = new Uint8Array(t.data.length / 4);
    m.config.quantization_config = { quant_method: "fp8", weight_block_size: [128, 128] };
  }, code: "UNSUPPORTED", message: /config\.json says quant_method fp8, but the llama3 mapping has no FP8 block dequantization/, where: [tensorIs("model.layers.0.mlp.down_proj.weight")] },
  // ---- MoE configs that contradict the expert tensors
  { family: "moe", name: "n_routed_experts larger than the experts stored", base: "deepseek", edit: (m) => { m.config.n_routed_experts = 16; },
    code: "SHAPE", message: /shape \[8\] fits no known layout: the layout ckpt knows for it is \[experts\] = \[16\] \(experts = n_routed_experts = 16\)/, where: [/config\.json/, /e_score_correction_bias/] },
  { family: "moe", name: "n_routed_experts smaller than the experts stored", base: "deepseek", edit: (m) => { m.config.n_routed_experts = 4; },
    code: "SHAPE", message: /shape \[8\] fits no known layout: .*\[experts\] = \[4\] \(experts = n_routed_experts = 4\)/, where: [/config\.json/] },
  { family: "moe", name: "an expert id beyond n_routed_experts", base: "deepseek", edit: (m) => {
    for (const t of m.tensors.filter((x) => x.name.startsWith("model.layers.2.mlp.experts.7."))) m.tensors.push({ ...t, name: t.name.replace("experts.7.", "experts.8.") });
  }, code: "MISSING_TENSOR", message: /expert stack .* is incomplete: missing expert ids \(extra ids beyond 8\)/, where: [/experts/] },
  { family: "moe", name: "an expert missing from the middle", base: "deepseek", edit: (m) => { for (const p of ["gate", "up", "down"]) { drop(m, `model.layers.2.mlp.experts.5.${p}_proj.weight`); drop(m, `model.layers.2.mlp.experts.5.${p}_proj.weight_scale_inv`); } },
    code: "MISSING_TENSOR", message: /missing expert ids 5/, where: [/experts/] },
  { family: "moe", name: "an expert of another shape", base: "kimi", edit: (m) => { get(m, "model.layers.1.mlp.experts.3.down_proj.weight_packed").shape = [112, 24]; },
    code: "SHAPE", message: /experts of .* differ: model\.layers\.1\.mlp\.experts\.3\.down_proj\.weight_packed is I32 \[112,24\]/, where: [/experts\.3/] },
  { family: "moe", name: "gpt-oss num_local_experts contradicts the stacked experts", base: "gptoss", edit: (m) => { m.config.num_local_experts = 8; },
    code: "SHAPE", message: /shape \[4,64\] fits no known layout: .*\(experts = num_local_experts = 8/, where: [/experts/] },
  { family: "moe", name: "moe_intermediate_size contradicts the experts", base: "deepseek", edit: (m) => { m.config.moe_intermediate_size = 32; },
    code: "SHAPE", message: /fits no known layout: .*moe_ffn = moe_intermediate_size = 32/, where: [/experts/] },
  // ---- expert / tensor parallel options the model cannot take
  { family: "ep-tp", name: "--ep not dividing the experts", base: "deepseek", options: { worldSize: 3, ep: 3 },
    code: "USAGE", message: /num_experts 8 is not divisible by --ep 3/, where: [/experts/] },
  { family: "ep-tp", name: "--ep not dividing world · tp", base: "deepseek", options: { worldSize: 4, ep: 8 },
    code: "USAGE", message: /--ep 8 must divide dp_shard · tp = 4/, where: [] },
  { family: "ep-tp", name: "--ep on a dense model", base: "llama", options: { worldSize: 2, ep: 2 },
    code: "USAGE", message: /has no routed-expert tensors/, where: [] },
  { family: "ep-tp", name: "--tp not dividing --world-size", base: "gptoss", options: { worldSize: 4, tp: 3 },
    code: "USAGE", message: /--tp 3 must divide --world-size 4/, where: [] },
  { family: "ep-tp", name: "--ep 0", base: "gptoss", options: { worldSize: 2, ep: 0 },
    code: "USAGE", message: /--ep 0: expected a positive integer/, where: [] },
  // ---- PEFT adapters that do not fit their base
  { family: "adapter", name: "PEFT modules for layers the base lacks", base: "llama", adapter: { on: () => tinyLlamaTensors({ ...LLAMA, layers: 4 }) },
    code: "MISSING_TENSOR", message: /LoRA module model\.layers\.2\.self_attn\.(q|k|v|o)_proj adapts layer 2, but the base model has 2 layers \(0…1\)/, where: [/lora_A/] },
  { family: "adapter", name: "PEFT module whose base weight the checkpoint lacks", base: "llama", adapter: { editBase: (m) => drop(m, "model.layers.1.self_attn.v_proj.weight") },
    code: "MISSING_TENSOR", message: /LoRA module model\.layers\.1\.self_attn\.v_proj adapts model\.layers\.1\.self_attn\.v_proj\.weight, which the base checkpoint does not have/, where: [/v_proj\.lora_A/] },
  { family: "adapter", name: "PEFT A/B imply another base shape than the checkpoint's", base: "llama", adapter: { editBase: (m) => { const t = get(m, "model.layers.0.self_attn.o_proj.weight"); t.shape = [16, 64]; t.data = new Uint8Array(16 * 64 * 4); } },
    code: "SHAPE", message: /LoRA module model\.layers\.0\.self_attn\.o_proj: lora_B × lora_A is \[32, 32\], but the base weight .* is \[16,64\]/, where: [/o_proj\.lora_A/] },
  { family: "adapter", name: "PEFT adapter for a wider model", base: "llama", adapter: { on: () => tinyLlamaTensors({ ...LLAMA, hidden: 64, heads: 8, kvHeads: 4 }) },
    code: "SHAPE", message: /adapter implies a \[\d+, 64\] base weight, but config\.json gives \[\d+, 32\]/, where: [/lora_B/] },
  { family: "adapter", name: "PEFT attention module in a linear-attention layer (layer_types)", base: "qwen35",
    adapter: { on: (b) => ({ ...b, tensors: [...b.tensors, { ...get(b, "model.layers.1.self_attn.q_proj.weight"), name: "model.layers.0.self_attn.q_proj.weight" }] }), targets: ["q_proj"] },
    code: "MISSING_TENSOR", message: /LoRA module model\.layers\.0\.self_attn\.q_proj adapts a full_attention layer, but layer_types\[0\] of the base model is "linear_attention"/, where: [/layers\.0\.self_attn\.q_proj\.lora_A/] },
  { family: "adapter", name: "PEFT lora_B stored int8", base: "llama", adapter: { dtypeB: "I8" },
    code: "DTYPE", message: /LoRA weights are floats \(F32, BF16, F16, F64\), not I8/, where: [/lora_B/] },
  { family: "adapter", name: "PEFT lora_B stored F4 (sub-byte)", base: "llama", adapter: { dtypeB: "F4" },
    code: "DTYPE", message: /not F4/, where: [/lora_B/] },
  { family: "adapter", name: "PEFT module no rule knows", base: "llama", adapter: { on: (b) => ({ ...b, tensors: [...b.tensors, { name: "model.layers.0.self_attn.rotary.weight", dtype: "F32", shape: [4, 4], data: new Uint8Array(64) }] }), targets: ["rotary"] },
    code: "UNMAPPED", message: /LoRA module 'model\.layers\.0\.self_attn\.rotary' adapts no llama3 weight ckpt knows/, where: [/rotary/] },
];

const LLAMA = { vocab: 64, hidden: 32, heads: 4, kvHeads: 2, headDim: 8, ffn: 48, layers: 2, dtype: "F32" as const };

function fixture(base: Case["base"]): Model {
  const g = base === "deepseek" ? tinyDeepSeekTensors({ layers: 3, mtp: 0 })
    : base === "gptoss" ? tinyGptOssTensors({ layout: "mxfp4" })
    : base === "kimi" ? tinyKimiTensors({ layout: "k2" })
    : base === "qwen35" ? tinyQwen35Tensors({})
    : tinyLlamaTensors(LLAMA);
  return { config: structuredClone(g.config), tensors: g.tensors.map((t) => ({ ...t, shape: [...t.shape] })) };
}

/** Every file below dir with its content hash: the source must come out of a refusal untouched. */
const listTree = (dir: string) => [...tree(dir)].sort();

/** Builds the case's input folders; returns the call that should be refused. */
function build(c: Case, dir: string, out: string): () => Promise<unknown> {
  const m = fixture(c.base);
  if (c.adapter) {
    c.adapter.editBase?.(m);
    writeHfFolder(join(dir, "base"), m.config, m.tensors);
    const on = c.adapter.on ? c.adapter.on(fixture(c.base)) : fixture(c.base);
    const a = tinyPeftAdapter(on.tensors, { targets: c.adapter.targets });
    const dtypeB = c.adapter.dtypeB;
    if (dtypeB) for (const t of a.tensors.filter((x) => x.name.includes("lora_B"))) { t.dtype = dtypeB; t.data = new Uint8Array(t.data.length / (dtypeB === "F4" ? 8 : 4)); }
    writePeftAdapter(join(dir, "peft"), a);
    return () => loraConvert({ adapter: join(dir, "peft"), out, base: join(dir, "base") });
  }
  c.edit?.(m);
  writeHfFolder(join(dir, "hf"), m.config, m.tensors);
  return () => runConvert({ source: join(dir, "hf"), out, threads: 0, ...c.options });
}

function check(err: unknown, c: Case): CkptError {
  assert.ok(err instanceof CkptError, `${c.name}: expected a CkptError, got ${err instanceof Error ? err.stack : String(err)}`);
  const line = err.oneLine();
  assert.notEqual(err.code, "INTERNAL", `${c.name}: bad input must not be reported as INTERNAL: ${line}`);
  assert.equal(err.code, c.code, `${c.name}: code; ${line}`);
  assert.match(err.message, c.message, `${c.name}: message; ${line}`);
  assert.doesNotMatch(line, /\n/, "one line");
  for (const w of c.where) assert.match(line, w, `${c.name}: oneLine names ${w}: ${line}`);
  return err;
}

/** The corpus size by family (reported by the test names and used by the closing note). */
export function corpusFamilies(): Record<Family, number> {
  const n = {} as Record<Family, number>;
  for (const c of CASES) n[c.family] = (n[c.family] ?? 0) + 1;
  return n;
}

describe("quantized / MoE / adapter hostile corpus", () => {
  before(() => mkdirSync(join(tmp, "cases"), { recursive: true }));

  test(`corpus size by family: ${JSON.stringify(corpusFamilies())}`, () => {
    assert.equal(new Set(CASES.map((c) => c.name)).size, CASES.length);
    for (const f of ["fp8", "mxfp4", "int4", "other-quant", "moe", "ep-tp", "adapter"] as const) assert.ok((corpusFamilies()[f] ?? 0) >= 3, f);
  });

  let n = 0;
  for (const c of CASES) {
    test(`refused [${c.family}]: ${c.name}`, async () => {
      const dir = join(tmp, "cases", `case-${n++}`);
      const outRoot = join(dir, "out");
      mkdirSync(outRoot, { recursive: true });
      const out = join(outRoot, "converted");
      const run = build(c, dir, out);
      const before = listTree(dir);
      let err: unknown;
      try {
        await run();
      } catch (e) {
        err = e;
      }
      check(err, c);
      assert.deepEqual(readdirSync(outRoot), [], "nothing written: no output, no .partial");
      assert.deepEqual(listTree(dir), before, "the source is left untouched");
    });
  }

  // controls: the unedited checkpoints convert (so each refusal above is the edit's doing)
  for (const base of ["deepseek", "gptoss", "kimi"] as const) {
    test(`control: unedited ${base} converts`, async () => {
      const dir = join(tmp, `control-${base}`);
      const m = fixture(base);
      writeHfFolder(join(dir, "hf"), m.config, m.tensors);
      await runConvert({ source: join(dir, "hf"), out: join(dir, "out"), threads: 0 });
      assert.ok(existsSync(join(dir, "out", ".metadata")));
    });
  }
  test("control: the unedited adapter converts on its base", async () => {
    const dir = join(tmp, "control-adapter");
    const m = fixture("llama");
    writeHfFolder(join(dir, "base"), m.config, m.tensors);
    writePeftAdapter(join(dir, "peft"), tinyPeftAdapter(m.tensors));
    await loraConvert({ adapter: join(dir, "peft"), out: join(dir, "out"), base: join(dir, "base") });
    assert.ok(existsSync(join(dir, "out")));
  });

  test("a sub-byte (F4) tensor in a TorchTitan source is refused on --to hf and on reshard (DTYPE, not INTERNAL)", async () => {
    const dir = join(tmp, "tt-f4");
    const m = fixture("llama");
    writeHfFolder(join(dir, "hf"), m.config, m.tensors);
    await runConvert({ source: join(dir, "hf"), out: join(dir, "tt"), format: "safetensors", threads: 0 });
    const file = readdirSync(join(dir, "tt")).find((f) => f.endsWith(".safetensors"))!;
    const b = readFileSync(join(dir, "tt", file));
    const n = Number(b.readBigUInt64LE(0));
    const { __metadata__: meta, ...h } = JSON.parse(b.subarray(8, 8 + n).toString("utf8")) as { __metadata__?: Record<string, string> } & Record<string, { dtype: DType; shape: number[]; data_offsets: [number, number] }>;
    const key = Object.keys(h).find((k) => k.includes("feed_forward.w1"))!;
    const tensors = Object.entries(h as Record<string, { dtype: DType; shape: number[]; data_offsets: [number, number] }>).map(([name, v]) => {
      const data = b.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]);
      return name === key ? { name, dtype: "F4" as DType, shape: v.shape, data: data.subarray(0, data.length / 8) } : { name, dtype: v.dtype, shape: v.shape, data };
    });
    writeFileSync(join(dir, "tt", file), buildSafetensors(tensors, meta));
    mkdirSync(join(dir, "out"));
    for (const opts of [{ to: "hf" as const, config: join(dir, "hf") }, { worldSize: 2 }]) {
      await assert.rejects(runConvert({ source: join(dir, "tt"), out: join(dir, "out", "x"), threads: 0, ...opts }), (e: unknown) => e instanceof CkptError && e.code === "DTYPE" && /stored as F4 \(4 bits per value\)/.test(e.message) && e.tensor === key);
      assert.deepEqual(readdirSync(join(dir, "out")), []);
    }
  });

  test("--allow-nonfinite writes a NaN scale's tile, counts it and records it in the manifest", async () => {
    const dir = join(tmp, "allow-nonfinite");
    const m = fixture("deepseek");
    setData(get(m, DS_S), (d) => d.setFloat32(4, NaN, true));
    writeHfFolder(join(dir, "hf"), m.config, m.tensors);
    const warnings: string[] = [];
    await runConvert({ source: join(dir, "hf"), out: join(dir, "out"), threads: 0, allowNonfinite: true, onWarning: (w) => warnings.push(w) });
    // block [0, 1] of a [300, 200] weight: rows 0…127, columns 128…199 = 128 × 72 values
    assert.ok(warnings.some((w) => /^9216 decoded value\(s\) are NaN\/±inf and were written \(--allow-nonfinite/.test(w)), warnings.join("\n"));
    const manifest = readFileSync(join(dir, "out", readdirSync(join(dir, "out")).find((f) => f.includes("manifest"))!), "utf8");
    assert.match(manifest, /"allow_nonfinite": ?true/);
  });

  test("worker threads keep the input code (VALUE, not INTERNAL)", async () => {
    const dir = join(tmp, "threads");
    const m = fixture("deepseek");
    setData(get(m, DS_S), (d) => d.setFloat32(0, NaN, true));
    writeHfFolder(join(dir, "hf"), m.config, m.tensors);
    mkdirSync(join(dir, "out"));
    await assert.rejects(runConvert({ source: join(dir, "hf"), out: join(dir, "out", "x"), threads: 2 }), (e: unknown) => e instanceof CkptError && e.code === "VALUE" && /FP8 block scale \[0, 0\] of .* is NaN/.test(e.message) && e.tensor === DS_S);
    assert.deepEqual(readdirSync(join(dir, "out")), []);
  });
});

// The five inputs through the CLI as a user runs it: one line on stderr, a non-zero exit, no <out> and no
// <out>.partial, with the native kernels and with the TypeScript ones (CKPT_NATIVE=0), through worker threads.
const CLI = fileURLToPath(new URL("../../bin/ckpt.js", import.meta.url));
const FIVE: { name: string; code: ErrorCode; message: RegExp }[] = [
  { name: "FP8 weight without its weight_scale_inv", code: "MISSING_TENSOR", message: /FP8 weight without its block scale/ },
  { name: "block scale NaN", code: "VALUE", message: /tensor 'model\.layers\.1\.self_attn\.q_a_proj\.weight_scale_inv': FP8 block scale \[0, 1\] of .* is NaN/ },
  { name: "INT4 weight_shape 32 columns wider than weight_packed", code: "VALUE", message: /32 columns wider than the packed data/ },
  { name: "MXFP4 scale byte 0xFF (E8M0 NaN)", code: "VALUE", message: /scale 0xFF is the E8M0 NaN/ },
  { name: "PEFT modules for layers the base lacks", code: "MISSING_TENSOR", message: /adapts layer 2, but the base model has 2 layers/ },
];

describe("the issue's five inputs through the CLI", () => {
  for (const tier of ["native", "typescript"] as const) {
    for (const f of FIVE) {
      test(`${tier}: ${f.name}`, () => {
        const c = CASES.find((x) => x.name === f.name)!;
        const dir = join(tmp, "cli", tier, f.name.replace(/\W+/g, "-"));
        const out = join(dir, "out", "converted");
        mkdirSync(join(dir, "out"), { recursive: true });
        build(c, dir, out);
        const args = c.adapter ? ["lora", "convert", join(dir, "peft"), out, "--base", join(dir, "base")] : ["convert", join(dir, "hf"), out, "--threads", "2"];
        const r = spawnSync(process.execPath, [CLI, ...args, "--quiet"], { encoding: "utf8", env: { ...process.env, ...(tier === "typescript" ? { CKPT_NATIVE: "0" } : {}) } });
        assert.notEqual(r.status, 0, r.stderr);
        const lines = r.stderr.split("\n").filter((l) => l.length > 0);
        assert.equal(lines.length, 1, `one line on stderr: ${r.stderr}`);
        assert.match(lines[0]!, new RegExp(`^ckpt: ${f.code}: `));
        assert.match(lines[0]!, f.message);
        assert.ok(!existsSync(out) && !existsSync(out + ".partial"), "no <out>, no <out>.partial");
        assert.deepEqual(readdirSync(join(dir, "out")), []);
      });
    }
  }
  // the same adapter offered to `convert --lora` (TorchTitan's LoRA model) is refused by the same rule
  test("convert --lora: PEFT modules for layers the base lacks", () => {
    const c = CASES.find((x) => x.name === "PEFT modules for layers the base lacks")!;
    const dir = join(tmp, "cli", "convert-lora");
    const out = join(dir, "out", "converted");
    mkdirSync(join(dir, "out"), { recursive: true });
    build(c, dir, out);
    const r = spawnSync(process.execPath, [CLI, "convert", join(dir, "base"), out, "--lora", join(dir, "peft"), "--quiet"], { encoding: "utf8" });
    assert.notEqual(r.status, 0, r.stderr);
    const lines = r.stderr.split("\n").filter((l) => l.length > 0);
    assert.equal(lines.length, 1, `one line on stderr: ${r.stderr}`);
    assert.match(lines[0]!, /^ckpt: MISSING_TENSOR: .*adapts layer 2, but the base model has 2 layers/);
    assert.ok(!existsSync(out) && !existsSync(out + ".partial"), "no <out>, no <out>.partial");
  });
});
