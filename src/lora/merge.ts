// `ckpt lora merge`: W' = W + s·(B @ A); DoRA: V = W + s·(B @ A), W'[i,:] = m_i / ‖V[i,:]‖₂ · V[i,:]
// (numerics.md §9), in f32 in the order of PEFT's merge on PyTorch's CPU (see mergeWeight), then cast to the output
// dtype with round-to-nearest-even by the kernels. The base streams one tensor at a
// time; the output is HF safetensors for an HF base, and DCP or safetensors for a TorchTitan base.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { buildCatalog } from "../catalog.js";
import type { Catalog, CatalogTensor } from "../catalog-types.js";
import { elementSize, isCastable, numelOf, type DType } from "../dtypes.js";
import { CkptError } from "../errors.js";
import { commitOutputDir, discardOutputDir, prepareOutputDir } from "../exec/output-dir.js";
import { DEFAULT_DCP_FILE } from "../formats/dcp/writer.js";
import { encodeDcpMetadata, type DcpMetadata } from "../formats/dcp/metadata.js";
import { encodeTensorBlob } from "../formats/torchsave/writer.js";
import { planShardedSafetensors, serializeIndex, type TensorSpec } from "../formats/safetensors/writer.js";
import { getKernels } from "../kernels/index.js";
import { selectMapping } from "../mapping/load.js";
import { DEFAULT_TARGET, type Target } from "../mapping/schema.js";
import { detectTarget, naturalCompare, normalizeTtName, parseDTypeChoice, sideOf } from "../plan/convert-plan.js";
import { openSource, type OpenSourceOptions } from "../sources/resolve.js";
import type { Source } from "../sources/types.js";
import { closeAdapter, loadBaseConfig, openAdapter, readEntry, type AdapterEntry, type BaseConfig, type Layout, type OpenedAdapter } from "./adapter.js";
import { ModuleResolver } from "./names.js";
import { aligned, castBytesTo, fromF32, readTensorBytes, toF32 } from "./tensors.js";
import { HF_ASSET_FILES } from "../sources/config.js";

export interface LoraMergeOptions extends OpenSourceOptions {
  /** HF checkpoint (folder / repo) or TorchTitan checkpoint (DCP folder or safetensors). */
  base: string;
  /** PEFT folder or TorchTitan-layout adapter; omitted: the LoRA weights stored inside a TorchTitan `base`. */
  adapter?: string;
  out: string;
  /** keep (default) | bf16 | f16 | f32. */
  dtype?: string;
  /** config.json source for a TorchTitan base without hf_assets/. */
  config?: string;
  /** TorchTitan output format (default: dcp for a DCP base, else safetensors). HF bases always give safetensors. */
  format?: "dcp" | "safetensors";
  /** TorchTitan adapters without ckpt metadata. */
  alpha?: number;
  rslora?: boolean;
  force?: boolean;
  allowOverflow?: boolean;
  maxShardBytes?: number;
  onWarning?: (msg: string) => void;
  onProgress?: (e: { bytesDone: number; bytesTotal: number; tensor: string }) => void;
}

export interface LoraMergeResult {
  out: string;
  layout: Layout;
  target?: Target;
  format: "dcp" | "safetensors";
  tensors: number;
  merged: { weight: string; scale: number; rank: number; dora: boolean; transposed: boolean }[];
  bytesWritten: number;
  seconds: number;
  f16Overflow: number;
}

/** Lanes of PyTorch's CPU f32 `linalg.norm(x, dim=-1)` fast path (`Vectorized<float>` accumulators). */
const NORM_LANES = 8;

/**
 * ‖v[off … off+n)‖₂ in PyTorch's CPU order for a contiguous f32 row: eight lane accumulators over whole blocks of
 * eight (lane l += x² for x at l mod 8, product and sum each rounded to f32), the lanes summed in order, then the
 * tail, then an f32 sqrt. Measured bit-identical to `torch.linalg.norm` on PyTorch 2.6 and 2.14 (test/interop/lora).
 */
function rowNormF32(v: Float32Array, off: number, n: number, lanes: Float32Array): number {
  const f = Math.fround;
  lanes.fill(0);
  const full = n - (n % NORM_LANES);
  for (let d = 0; d < full; d += NORM_LANES) {
    for (let l = 0; l < NORM_LANES; l++) {
      const x = v[off + d + l]!;
      lanes[l] = lanes[l]! + f(x * x);
    }
  }
  let acc = lanes[0]!;
  for (let l = 1; l < NORM_LANES; l++) acc = f(acc + lanes[l]!);
  for (let d = full; d < n; d++) {
    const x = v[off + d]!;
    acc = f(acc + f(x * x));
  }
  return f(Math.sqrt(acc));
}

/**
 * The merged weight, in W's storage orientation. W: [out, in] (or [in, out] when `transposed`), A: [r, in],
 * B: [out, r], m: [out]; all f32 (bf16/f16/fp8 adapters widen exactly).
 *
 * The arithmetic is f32 in the order PEFT's merge runs on PyTorch's CPU, so merged weights equal what users get from
 * `merge_and_unload()`: (B @ A)[i, j] summed over k = 0 … r−1 in order with each product and sum rounded to f32 (no
 * FMA, like the reference BLAS sgemm), × f32(s), + W; DoRA: n_i by `rowNormF32`, f32(m_i / n_i) × V[i, :]. Every f64
 * operation on f32 operands followed by `Math.fround` is the correctly rounded f32 operation (53 ≥ 2·24 + 2).
 * Other BLAS libraries or GPUs may order the r-term sum differently: differences of about 1 ulp (numerics.md §9).
 * Storage orientation does not change the order (PEFT's fan_in_fan_out norm runs on a strided view; within 1–2 ulp).
 *
 * Runs the native kernel (`Kernels.loraMerge`, bit-identical, test/lora.test.ts) when getKernels() has it; the
 * TypeScript below is the reference and the fallback (CKPT_NATIVE=0, addon not built).
 */
export function mergeWeight(W: Float32Array, out: number, inn: number, A: Float32Array, B: Float32Array, r: number, s: number, m?: Float32Array, transposed = false): Float32Array {
  const res = new Float32Array(out * inn);
  const kernels = getKernels();
  if (kernels.loraMerge) {
    kernels.loraMerge(W, out, inn, A, B, r, s, m, transposed, res);
    return res;
  }
  const f = Math.fround;
  const sf = f(s);
  // A transposed to [in, r]: each (B @ A)[i, j] is a contiguous run of r products
  const At = new Float32Array(inn * r);
  for (let k = 0; k < r; k++) for (let j = 0; j < inn; j++) At[j * r + k] = A[k * inn + j]!;
  const v = new Float32Array(inn);
  const b = new Float32Array(r);
  const lanes = new Float32Array(NORM_LANES);
  for (let i = 0; i < out; i++) {
    for (let k = 0; k < r; k++) b[k] = B[i * r + k]!;
    for (let j = 0; j < inn; j++) {
      const o = j * r;
      let acc = 0;
      for (let k = 0; k < r; k++) acc = f(acc + f(b[k]! * At[o + k]!));
      v[j] = (transposed ? W[j * out + i]! : W[i * inn + j]!) + f(acc * sf);
    }
    if (m) {
      const factor = f(m[i]! / rowNormF32(v, 0, inn, lanes));
      for (let j = 0; j < inn; j++) v[j] = factor * v[j]!;
    }
    if (transposed) for (let j = 0; j < inn; j++) res[j * out + i] = v[j]!;
    else res.set(v, i * inn);
  }
  return res;
}

const TORCH_DTYPE_NAME: Partial<Record<DType, string>> = { F32: "float32", BF16: "bfloat16", F16: "float16" };

// ---- output sinks ------------------------------------------------------------------------------------------------

interface Sink {
  write(name: string, data: Uint8Array): Promise<void>;
  finish(): Promise<void>;
  abort(): Promise<void>;
}

async function writeAll(fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  const step = 1 << 30;
  for (let off = 0; off < data.byteLength; off += step) {
    const len = Math.min(step, data.byteLength - off);
    let done = 0;
    while (done < len) {
      const { bytesWritten } = await fh.write(data, off + done, len - done, position + off + done);
      if (bytesWritten <= 0) throw new CkptError("IO", "short write");
      done += bytesWritten;
    }
  }
}

async function safetensorsSink(dir: string, specs: TensorSpec[], maxShardBytes: number): Promise<Sink> {
  const plan = planShardedSafetensors(specs, { maxShardBytes, metadata: { format: "pt" } });
  const where = new Map<string, { file: number; offset: number; byteLength: number }>();
  plan.files.forEach((f, i) => f.tensors.forEach((t) => where.set(t.name, { file: i, offset: t.offset, byteLength: t.byteLength })));
  const handles: FileHandle[] = [];
  for (const f of plan.files) {
    const fh = await open(join(dir, f.fileName), "w");
    handles.push(fh);
    await writeAll(fh, f.header, 0);
    await fh.truncate(f.totalSize);
  }
  const written = new Set<string>();
  const closeAll = async () => { for (const h of handles.splice(0)) await h.close(); };
  return {
    async write(name, data) {
      const w = where.get(name);
      if (!w || written.has(name)) throw new CkptError("INTERNAL", "unexpected or repeated output tensor", { tensor: name });
      if (data.byteLength !== w.byteLength) throw new CkptError("INTERNAL", `output is ${data.byteLength} bytes, planned ${w.byteLength}`, { tensor: name });
      await writeAll(handles[w.file]!, data, w.offset);
      written.add(name);
    },
    async finish() {
      await closeAll();
      if (written.size !== where.size) throw new CkptError("INTERNAL", `wrote ${written.size} of ${where.size} tensors`);
      if (plan.index) writeFileSync(join(dir, "model.safetensors.index.json"), serializeIndex(plan.index));
    },
    abort: closeAll,
  };
}

async function dcpSink(dir: string, specs: TensorSpec[]): Promise<Sink> {
  const fh = await open(join(dir, DEFAULT_DCP_FILE), "w");
  let pos = 0;
  const stored = new Map<string, { offset: number; length: number }>();
  const byName = new Map(specs.map((s) => [s.name, s]));
  let closed = false;
  return {
    async write(name, data) {
      const s = byName.get(name);
      if (!s || stored.has(name)) throw new CkptError("INTERNAL", "unexpected or repeated output tensor", { tensor: name });
      const blob = encodeTensorBlob(s.dtype, s.shape, data);
      await writeAll(fh, blob, pos);
      stored.set(name, { offset: pos, length: blob.length });
      pos += blob.length;
    },
    async finish() {
      await fh.close(); closed = true;
      const md: DcpMetadata = { tensors: new Map(), bytes: new Set(), plannerData: new Map(), storage: [] };
      for (const s of specs) {
        const st = stored.get(s.name);
        if (!st) throw new CkptError("INTERNAL", "tensor was not written", { tensor: s.name });
        const zeros = s.shape.map(() => 0);
        md.tensors.set(s.name, { dtype: s.dtype, size: [...s.shape], chunks: [{ offsets: zeros, sizes: [...s.shape] }] });
        md.plannerData.set(s.name, [s.name]);
        md.storage.push({ fqn: s.name, offsets: zeros, index: 0, file: DEFAULT_DCP_FILE, offset: st.offset, length: st.length });
      }
      writeFileSync(join(dir, ".metadata"), encodeDcpMetadata(md));
    },
    async abort() { if (!closed) await fh.close(); },
  };
}

// ---- merge -------------------------------------------------------------------------------------------------------

interface BaseInfo {
  source: Source;
  catalog: Catalog;
  config: BaseConfig;
  layout: Layout;
  target?: Target;
}

async function openBase(opts: LoraMergeOptions): Promise<BaseInfo> {
  const source = await openSource(opts.base, opts);
  try {
    const catalog = await buildCatalog(source);
    let config: BaseConfig | undefined;
    if (opts.config) config = await loadBaseConfig(opts.config, opts);
    else if (catalog.config) config = { config: catalog.config, file: `${source.id}/config.json`, source };
    else {
      const text = await source.readText("hf_assets/config.json");
      if (text !== undefined) config = { config: JSON.parse(text) as Record<string, unknown>, file: `${source.id}/hf_assets/config.json` };
    }
    if (!config) throw new CkptError("CONFIG", "no config.json for the base model", { file: source.id, hint: "pass --config <hf-folder-or-config.json>" });
    const mapping = selectMapping(config.config, config.file);
    const names = [...catalog.tensors.keys()];
    const layout: Layout = sideOf(mapping, names, DEFAULT_TARGET) === "tt" ? "tt" : "hf";
    const target = layout === "tt" ? detectTarget(mapping, names.map((n) => normalizeTtName(n).name ?? n)) : undefined;
    return { source, catalog, config, layout, target };
  } catch (e) {
    await source.close();
    throw e;
  }
}

interface Job { entry: AdapterEntry; transposed: boolean }

export async function loraMerge(opts: LoraMergeOptions): Promise<LoraMergeResult> {
  const started = performance.now();
  const warn = (m: string) => opts.onWarning?.(m);
  const base = await openBase(opts);
  let ad: OpenedAdapter | undefined;
  const adapterInBase = opts.adapter === undefined;
  try {
    ad = adapterInBase
      ? await openAdapter(base.source, { ...opts, base: base.config, alpha: opts.alpha, rslora: opts.rslora })
      : await openAdapter(opts.adapter!, { ...opts, base: base.config, target: base.target, alpha: opts.alpha, rslora: opts.rslora });
    for (const w of ad.warnings) warn(w);
    const dtypeChoice = parseDTypeChoice(opts.dtype);
    const format = base.layout === "hf" ? "safetensors" : opts.format ?? (base.catalog.format === "dcp" ? "dcp" : "safetensors");
    if (base.layout === "hf" && opts.format === "dcp") throw new CkptError("USAGE", "an HF base merges into HF safetensors; convert the result for DCP");

    // output tensors: base tensors (TorchTitan names normalised), LoRA tensors of a combined checkpoint left out
    const skip = new Set<string>(adapterInBase ? ad.entries.flatMap((e) => [e.a.name, e.b.name, ...(e.m ? [e.m.name] : [])]) : []);
    const outputs: { name: string; tensor: CatalogTensor; dtype: DType }[] = [];
    const leftOut: string[] = [];
    for (const t of base.catalog.tensors.values()) {
      if (skip.has(t.name)) continue;
      let name = t.name;
      if (base.layout === "tt") {
        const n = normalizeTtName(t.name);
        if (!n.name) { leftOut.push(`${t.name}: ${n.why}`); continue; }
        name = n.name;
      }
      const dtype = dtypeChoice !== "keep" && isCastable(t.dtype) ? dtypeChoice : t.dtype;
      outputs.push({ name, tensor: t, dtype });
    }
    // a TorchTitan step checkpoint holds optimizer / lr_scheduler / dataloader / train_state beside the model: one line
    if (leftOut.length) warn(`${leftOut.length} tensor(s) left out of the merged checkpoint (e.g. ${leftOut[0]})`);
    outputs.sort((x, y) => naturalCompare(x.name, y.name));
    const byName = new Map(outputs.map((o) => [o.name, o]));

    // adapter module → base weight
    const baseResolver = base.layout === "tt" ? new ModuleResolver(ad.mapping, base.config.config, base.target!, base.config.file) : undefined;
    const jobs = new Map<string, Job>();
    for (const e of ad.entries) {
      const weight = (base.layout === "hf" ? e.module.hf : baseResolver!.fromHf(e.module.hf)?.tt) + ".weight";
      const o = byName.get(weight);
      if (!o) throw new CkptError("MISSING_TENSOR", `the adapter adapts ${weight}, which the base does not have`, { file: base.source.id, tensor: weight, hint: "is this the adapter's base model (and layout)?" });
      const [out, inn] = [e.b.shape[0]!, e.a.shape[1]!];
      const sh = o.tensor.shape;
      let transposed = false;
      if (sh.length === 2 && sh[0] === out && sh[1] === inn) transposed = false;
      else if (ad.fanInFanOut && sh.length === 2 && sh[0] === inn && sh[1] === out) transposed = true;
      else throw new CkptError("SHAPE", `base weight is [${sh.join(", ")}], the adapter's update is [${out}, ${inn}]`, { tensor: weight });
      if (!isCastable(o.tensor.dtype) && o.tensor.dtype !== "F64") throw new CkptError("DTYPE", `cannot merge into a ${o.tensor.dtype} weight`, { tensor: weight, hint: "dequantize the base first" });
      if (jobs.has(o.name)) throw new CkptError("MAPPING", "two adapter modules adapt the same weight", { tensor: o.name });
      jobs.set(o.name, { entry: e, transposed });
    }

    const outAbs = resolve(opts.out);
    const dir = prepareOutputDir(outAbs, { force: opts.force });
    const specs: TensorSpec[] = outputs.map((o) => ({ name: o.name, dtype: o.dtype, shape: [...o.tensor.shape] }));
    let sink: Sink | undefined;
    try {
      sink = format === "dcp" ? await dcpSink(dir.partial, specs) : await safetensorsSink(dir.partial, specs, opts.maxShardBytes ?? 5 * 1024 ** 3);
      const kernels = getKernels();
      const bytesTotal = specs.reduce((s, t) => s + numelOf(t.shape) * elementSize(t.dtype), 0);
      let bytesDone = 0;
      let f16Overflow = 0;
      let bytesWritten = 0;
      const merged: LoraMergeResult["merged"] = [];
      for (const o of outputs) {
        const n = numelOf(o.tensor.shape);
        const raw = await readTensorBytes(base.source, o.tensor);
        const job = jobs.get(o.name);
        let data: Uint8Array;
        let overflow = 0;
        if (job) {
          const e = job.entry;
          const { a, b, m } = await readEntry(ad, e, base.layout);
          const [out, r, inn] = [e.b.shape[0]!, e.a.shape[0]!, e.a.shape[1]!];
          const W = toF32(raw, o.tensor.dtype, n);
          const res = mergeWeight(W, out, inn, toF32(a, e.a.dtype, r * inn), toF32(b, e.b.dtype, out * r), r, e.scale,
            m ? toF32(m, e.m!.dtype, out) : undefined, job.transposed);
          if (o.dtype === "F16") overflow = kernels.stats(new Uint8Array(res.buffer), "F32", n).f16Overflow;
          data = fromF32(res, o.dtype);
          merged.push({ weight: o.name, scale: e.scale, rank: r, dora: !!m, transposed: job.transposed });
        } else {
          if (o.dtype === "F16" && o.tensor.dtype !== "F16" && isCastable(o.tensor.dtype)) overflow = kernels.stats(aligned(raw), o.tensor.dtype, n).f16Overflow;
          data = castBytesTo(raw, o.tensor.dtype, o.dtype, n);
        }
        if (overflow > 0) {
          f16Overflow += overflow;
          if (!opts.allowOverflow) throw new CkptError("OVERFLOW", `${overflow} value(s) exceed the fp16 range and would become ±inf`, { tensor: o.name, hint: "use --dtype bf16, or --allow-overflow" });
        }
        await sink.write(o.name, data);
        bytesWritten += data.byteLength;
        bytesDone += data.byteLength;
        opts.onProgress?.({ bytesDone, bytesTotal, tensor: o.name });
      }
      await sink.finish();
      if (f16Overflow > 0) warn(`${f16Overflow} value(s) overflowed to ±inf in fp16 (--allow-overflow)`);
      copyAssets(base, opts, dir.partial, dtypeChoice === "keep" ? undefined : dtypeChoice);
      commitOutputDir(dir, { force: opts.force });
      return {
        out: outAbs, layout: base.layout, target: base.target, format, tensors: outputs.length, merged, bytesWritten,
        seconds: (performance.now() - started) / 1000, f16Overflow,
      };
    } catch (e) {
      await sink?.abort();
      discardOutputDir(dir);
      throw e;
    }
  } finally {
    if (ad && !adapterInBase) await closeAdapter(ad);
    if (base.config.source && base.config.source !== base.source) await base.config.source.close();
    await base.source.close();
  }
}

/** HF output: the base's config/tokenizer files (torch_dtype updated on a dtype change); TorchTitan: hf_assets/. */
function copyAssets(base: BaseInfo, opts: LoraMergeOptions, dir: string, dtype: DType | undefined): void {
  const copyFrom = (src: Source, files: string[], toDir: string, rename: (f: string) => string) => {
    for (const f of files) {
      const p = src.localPath(f);
      if (!p || !existsSync(p)) continue;
      const dst = join(toDir, rename(f));
      mkdirSync(dirname(dst), { recursive: true });
      if (f.endsWith("config.json") && !f.endsWith("tokenizer_config.json") && !f.endsWith("generation_config.json") && dtype && TORCH_DTYPE_NAME[dtype]) {
        const cfg = JSON.parse(readFileSync(p, "utf8")) as Record<string, unknown>;
        cfg.torch_dtype = TORCH_DTYPE_NAME[dtype];
        writeFileSync(dst, JSON.stringify(cfg, null, 2) + "\n");
      } else copyFileSync(p, dst);
    }
  };
  if (base.layout === "hf") {
    const src = base.config.source ?? base.source;
    copyFrom(src, HF_ASSET_FILES.filter((f) => src.files().includes(f)), dir, (f) => f);
    return;
  }
  const inBase = base.source.files().filter((f) => f.startsWith("hf_assets/"));
  if (inBase.length > 0) copyFrom(base.source, inBase, dir, (f) => f);
  else if (base.config.source && !opts.config?.endsWith(".json")) {
    const src = base.config.source;
    copyFrom(src, HF_ASSET_FILES.filter((f) => src.files().includes(f)), join(dir, "hf_assets"), (f) => f);
  }
}
