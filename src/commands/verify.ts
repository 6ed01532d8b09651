// verify: `ckpt verify <out>` re-hashes an output against its ckpt-manifest.json (first differing chunk, piece,
// tensor rows and file byte range); `ckpt verify <a> <b>` compares two checkpoints of any supported format and
// layout through the mapping (HF vs TorchTitan, sharded vs unsharded), streaming, and reports the first
// differing tensor, element index and both values.
import { naturalCompare } from "../util/natural-compare.js";
import { existsSync, readFileSync, statSync } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { DIGESTS, digestOf, type DigestAlgorithm } from "../exec/digest.js";
import { crc32 } from "../kernels/checksum.js";
import { join, resolve } from "node:path";
import { buildCatalog } from "../catalog.js";
import type { Catalog, CatalogTensor } from "../catalog-types.js";
import { elementSize, isCastable, numelOf, type DType } from "../dtypes.js";
import { CkptError } from "../errors.js";
import { getKernels, type Kernels } from "../kernels/index.js";
import { selectMapping } from "../mapping/load.js";
import { DEFAULT_TARGET } from "../mapping/schema.js";
import { detectTarget, hfLayoutOf, planConversion, sideOf, type ConversionPlan, type Direction, type TensorPlan } from "../plan/convert-plan.js";
import { normalizeTtName } from "../plan/source-names.js";
import type { LeafInfo, Recipe } from "../plan/recipe.js";
import { quantOp } from "../ops/index.js";
import { runsForBox, type Box, type Run } from "../plan/runs.js";
import { fetchRunSpans, sourceAccess } from "../exec/executor.js";
import { valuesOfRuns } from "../exec/worker.js";
import { openSource, type OpenSourceOptions } from "../sources/resolve.js";
import type { Source } from "../sources/types.js";
import { findEntry, readSafetensorsHeader, readSafetensorsHeaderFrom, type SafetensorsHeader } from "../formats/safetensors/index.js";
import { openDcp, type DcpStoredChunk } from "../formats/dcp/reader.js";
import { isPlainFileName } from "../formats/dcp/metadata.js";

export const MANIFEST_FILE = "ckpt-manifest.json";
const MiB = 1024 * 1024;

export interface VerifyOptions extends OpenSourceOptions {
  /** HF folder or repo id giving config.json, when neither checkpoint carries one (compare mode). */
  config?: string;
  /** Output bytes compared per step (default 16 MiB). */
  sliceBytes?: number;
  onProgress?: (e: { bytesDone: number; bytesTotal: number }) => void;
  signal?: AbortSignal;
}

export interface VerifyDifference {
  tensor?: string;
  /** Checkpoint file holding the differing bytes (`b`'s in compare mode). */
  file?: string;
  /** Compare mode: global index of the first differing element, and both values. */
  index?: number[];
  a?: string;
  b?: string;
  /** Manifest mode: the stored chunk, the piece inside it, the global rows and the file byte range it covers. */
  chunk?: { offsets: number[]; sizes: number[] };
  piece?: number;
  rows?: [number, number];
  byteRange?: [number, number];
  message: string;
}

export interface VerifyResult {
  ok: boolean;
  mode: "manifest" | "compare";
  a: string;
  b?: string;
  /** Tensors fully checked (up to the first difference). */
  tensors: number;
  bytes: number;
  difference?: VerifyDifference;
  notes: string[];
}

export async function runVerify(a: string, b?: string, opts: VerifyOptions = {}): Promise<VerifyResult> {
  return b === undefined ? verifyManifest(a, opts) : verifyCompare(a, b, opts);
}

function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) throw new CkptError("INTERRUPTED", "interrupted");
}

// ---------------------------------------------------------------------------------------------------------------
// manifest mode

interface ManifestChunk { file: string; offsets: number[]; sizes: number[]; bytes: number; crc32: number; hash: string; piece_hashes?: string[] }
interface Manifest {
  /** Absent in manifests of ckpt 0.1.0 and earlier, which used SHA-256 under the field names sha256 / piece_sha256. */
  digest: DigestAlgorithm;
  piece_bytes: number;
  files?: Record<string, { size: number; hash?: string }>;
  tensors: Record<string, { dtype: DType; shape: number[]; chunks: ManifestChunk[] }>;
}

function loadManifest(dir: string): Manifest {
  const path = join(dir, MANIFEST_FILE);
  if (!existsSync(path)) {
    throw new CkptError("NOT_FOUND", `no ${MANIFEST_FILE} here: only outputs of ckpt convert/shard carry one`, { file: dir, hint: "compare against another checkpoint instead: ckpt verify <a> <b>" });
  }
  let m: unknown;
  try {
    m = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new CkptError("VERIFY", `manifest is not valid JSON: ${(e as Error).message}`, { file: path });
  }
  const bad = (why: string): never => { throw new CkptError("VERIFY", `malformed manifest: ${why}`, { file: path }); };
  if (!m || typeof m !== "object") bad("not an object");
  const mm = m as Partial<Manifest>;
  if (!Number.isSafeInteger(mm.piece_bytes) || mm.piece_bytes! <= 0) bad("piece_bytes is not a positive integer");
  if (mm.digest === undefined) legacySha256(mm);
  if (!(DIGESTS as readonly string[]).includes(mm.digest!)) bad(`unknown digest '${String(mm.digest)}' (expected ${DIGESTS.join(" or ")})`);
  if (!mm.tensors || typeof mm.tensors !== "object") bad("no tensors");
  for (const [name, t] of Object.entries(mm.tensors!)) {
    if (!t || !Array.isArray(t.shape) || typeof t.dtype !== "string" || !Array.isArray(t.chunks)) bad(`tensor '${name}' lacks dtype/shape/chunks`);
    for (const c of t.chunks) {
      if (!c || typeof c.file !== "string" || !isPlainFileName(c.file) || !Array.isArray(c.offsets) || !Array.isArray(c.sizes) || typeof c.hash !== "string") bad(`tensor '${name}': malformed chunk`);
    }
  }
  return mm as Manifest;
}

/** Manifests of ckpt 0.1.0: SHA-256 digests under the field names sha256 / piece_sha256. */
function legacySha256(m: Partial<Manifest>): void {
  type Legacy = { sha256?: string; piece_sha256?: string[] };
  m.digest = "sha256";
  for (const f of Object.values(m.files ?? {})) f.hash ??= (f as Legacy).sha256;
  for (const t of Object.values(m.tensors ?? {})) {
    for (const c of Array.isArray(t?.chunks) ? t.chunks : []) {
      c.hash ??= (c as Legacy).sha256 as string;
      c.piece_hashes ??= (c as Legacy).piece_sha256;
    }
  }
}

async function verifyManifest(aPath: string, opts: VerifyOptions): Promise<VerifyResult> {
  const dir = resolve(aPath);
  const manifest = loadManifest(dir);
  const result: VerifyResult = { ok: true, mode: "manifest", a: aPath, tensors: 0, bytes: 0, notes: [] };
  const fail = (d: VerifyDifference): VerifyResult => ({ ...result, ok: false, difference: d });

  // whole files: data file sizes, small extras (.metadata, index, sharding.json) by hash
  for (const [name, f] of Object.entries(manifest.files ?? {})) {
    const path = join(dir, name);
    if (!isPlainFileName(name) || !existsSync(path)) return fail({ file: path, message: `file ${name} listed in the manifest is missing` });
    const size = statSync(path).size;
    if (size !== f.size) return fail({ file: path, message: `file ${name} is ${size} bytes, the manifest says ${f.size}` });
    if (f.hash && (await digestOf(manifest.digest, readFileSync(path))) !== f.hash) return fail({ file: path, message: `file ${name} does not match its ${manifest.digest} digest in the manifest` });
  }

  const headers = new Map<string, SafetensorsHeader>();
  let dcp: Map<string, DcpStoredChunk> | undefined;
  const handles = new Map<string, FileHandle>();
  const bytesTotal = Object.values(manifest.tensors).reduce((s, t) => s + t.chunks.reduce((x, c) => x + c.bytes, 0), 0);
  const pieceBytes = manifest.piece_bytes;
  try {
    for (const [name, t] of Object.entries(manifest.tensors)) {
      for (const c of t.chunks) {
        checkAbort(opts.signal);
        const path = join(dir, c.file);
        if (!existsSync(path)) return fail({ tensor: name, file: path, chunk: { offsets: c.offsets, sizes: c.sizes }, message: `file ${c.file} is missing` });
        // where the chunk's bytes are
        let dataOffset: number;
        if (c.file.endsWith(".safetensors")) {
          let h = headers.get(c.file);
          if (!h) headers.set(c.file, (h = await readSafetensorsHeader(path)));
          const e = findEntry(h, name);
          if (!e) return fail({ tensor: name, file: path, message: `tensor is not in ${c.file}` });
          if (e.dtype !== t.dtype || e.shape.join() !== c.sizes.join()) return fail({ tensor: name, file: path, message: `${c.file} holds ${e.dtype} [${e.shape}], the manifest says ${t.dtype} [${c.sizes}]` });
          dataOffset = h.dataStart + e.begin;
        } else {
          if (!dcp) {
            const opened = await openDcp(dir);
            dcp = new Map(opened.chunks.map((x) => [JSON.stringify([x.fqn, x.offsets, x.file]), x]));
          }
          const s = dcp.get(JSON.stringify([name, c.offsets, c.file]));
          if (!s) return fail({ tensor: name, file: path, chunk: { offsets: c.offsets, sizes: c.sizes }, message: `no stored chunk at offsets [${c.offsets}] in ${c.file}` });
          if (s.dtype !== t.dtype || s.sizes.join() !== c.sizes.join() || !s.contiguous) return fail({ tensor: name, file: path, message: `stored chunk is ${s.dtype} [${s.sizes}], the manifest says ${t.dtype} [${c.sizes}]` });
          dataOffset = s.dataOffset;
        }
        // pieces exactly as the executor cut them: whole rows of the first dim, ≤ piece_bytes each
        const es = elementSize(t.dtype);
        const rowBytes = c.sizes.slice(1).reduce((x, y) => x * y, 1) * es;
        const rows = c.sizes.length === 0 ? 1 : c.sizes[0]!;
        const rowsPer = c.sizes.length === 0 ? 1 : Math.max(1, Math.floor(pieceBytes / rowBytes));
        let fh = handles.get(c.file);
        if (!fh) handles.set(c.file, (fh = await open(path, "r")));
        const hashes: string[] = [];
        let crc = 0;
        let pi = 0;
        if (c.bytes > 0) {
          for (let r = 0; r < rows; r += rowsPer, pi++) {
            const n = Math.min(rowsPer, rows - r);
            const len = c.sizes.length === 0 ? c.bytes : n * rowBytes;
            const at = dataOffset + r * rowBytes;
            const buf = Buffer.allocUnsafe(len);
            const { bytesRead } = await fh.read(buf, 0, len, at);
            const hash = await digestOf(manifest.digest, buf.subarray(0, bytesRead));
            crc = crc32(buf.subarray(0, bytesRead), crc);
            hashes.push(hash);
            const want = c.piece_hashes?.[pi];
            if (bytesRead !== len || (want !== undefined && want !== hash)) {
              const r0 = (c.offsets[0] ?? 0) + r;
              return fail({
                tensor: name, file: path, chunk: { offsets: c.offsets, sizes: c.sizes }, piece: pi, rows: [r0, r0 + n], byteRange: [at, at + len],
                message: `tensor '${name}': bytes differ from the manifest in ${c.file} bytes [${at}, ${at + len}) (chunk at [${c.offsets}], piece ${pi}: rows ${r0}..${r0 + n - 1}${c.sizes.length > 1 ? ` × [${c.sizes.slice(1)}]` : ""})`,
              });
            }
            result.bytes += len;
            opts.onProgress?.({ bytesDone: result.bytes, bytesTotal });
          }
        }
        const chunkHash = await digestOf(manifest.digest, Buffer.from(hashes.join("")));
        if (chunkHash !== c.hash || (c.bytes > 0 && (crc >>> 0) !== c.crc32 >>> 0)) {
          return fail({ tensor: name, file: path, chunk: { offsets: c.offsets, sizes: c.sizes }, message: `tensor '${name}': chunk at [${c.offsets}] in ${c.file} does not match its manifest hash` });
        }
      }
      result.tensors++;
    }
  } finally {
    for (const h of handles.values()) await h.close();
  }
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// compare mode

async function configOf(cat: Catalog): Promise<{ config: Record<string, unknown>; file: string } | undefined> {
  if (cat.config) return { config: cat.config, file: `${cat.source.id}/config.json` };
  if (cat.source.files().includes("hf_assets/config.json")) {
    const text = await cat.source.readText("hf_assets/config.json");
    try {
      return { config: JSON.parse(text!) as Record<string, unknown>, file: `${cat.source.id}/hf_assets/config.json` };
    } catch (e) {
      throw new CkptError("CONFIG", `invalid config.json: ${(e as Error).message}`, { file: `${cat.source.id}/hf_assets/config.json` });
    }
  }
  return undefined;
}

/**
 * Per-rank safetensors written by `shard --format safetensors` (`sharding.json` + `rank-*.safetensors` whose
 * `__metadata__.DCP_SHARDING_INFO` gives each box's global offsets): one catalog whose tensors are tiled by the
 * ranks' boxes. buildCatalog refuses these (one name in several files), so verify reads them itself.
 */
async function rankSafetensorsCatalog(source: Source): Promise<Catalog | undefined> {
  const text = await source.readText("sharding.json");
  if (text === undefined) return undefined;
  let manifest: { format?: string; files?: unknown; tensors?: Record<string, { dtype: DType; shape: number[] }> };
  try {
    manifest = JSON.parse(text) as typeof manifest;
  } catch (e) {
    throw new CkptError("VERIFY", `sharding.json is not valid JSON: ${(e as Error).message}`, { file: `${source.id}/sharding.json` });
  }
  if (manifest.format !== "ckpt-rank-safetensors" || !Array.isArray(manifest.files) || !manifest.tensors) return undefined;
  const tensors = new Map<string, CatalogTensor>();
  for (const [name, t] of Object.entries(manifest.tensors)) tensors.set(name, { name, dtype: t.dtype, shape: t.shape, pieces: [] });
  for (const file of manifest.files as string[]) {
    if (typeof file !== "string" || !isPlainFileName(file)) throw new CkptError("VERIFY", `sharding.json lists a bad file name ${JSON.stringify(file)}`, { file: `${source.id}/sharding.json` });
    const h = await readSafetensorsHeaderFrom((o, l) => source.read(file, o, l), await source.size(file), `${source.id}/${file}`);
    let info: Record<string, { saved_offsets: number[] }>;
    try {
      info = JSON.parse(h.metadata.DCP_SHARDING_INFO ?? "{}") as typeof info;
    } catch {
      throw new CkptError("VERIFY", "DCP_SHARDING_INFO is not valid JSON", { file: `${source.id}/${file}` });
    }
    for (const e of h.entries) {
      const t = tensors.get(e.name);
      const off = info[e.name]?.saved_offsets;
      if (!t || !Array.isArray(off) || off.length !== e.shape.length || e.dtype !== t.dtype) throw new CkptError("VERIFY", "tensor is not described by sharding.json / DCP_SHARDING_INFO", { file: `${source.id}/${file}`, tensor: e.name });
      t.pieces.push({ offsets: off, sizes: e.shape, file, byteOffset: h.dataStart + e.begin, byteLength: e.end - e.begin });
    }
  }
  return { source, format: "safetensors", tensors, fileMetadata: new Map() };
}

async function catalogOf(source: Source): Promise<Catalog> {
  try {
    return await buildCatalog(source);
  } catch (e) {
    if (e instanceof CkptError && e.code === "INDEX" && source.files().includes("sharding.json")) {
      const c = await rankSafetensorsCatalog(source);
      if (c) return c;
    }
    throw e;
  }
}

/** Identity plan (same naming on both sides, HF vs HF): every tensor as itself. */
function identityPlan(cat: Catalog): ConversionPlan {
  const tensors: TensorPlan[] = [...cat.tensors.values()].sort((x, y) => naturalCompare(x.name, y.name))
    .map((t) => ({ name: t.name, dtype: t.dtype, shape: [...t.shape], recipe: { op: "source", tensor: t.name } as Recipe, policy: { tp: "replicate" } }));
  const leaves: Record<string, LeafInfo> = {};
  for (const t of cat.tensors.values()) leaves[t.name] = { dtype: t.dtype, shape: t.shape, pieces: t.pieces };
  return { direction: "tt_to_tt", mapping: "identity", target: DEFAULT_TARGET, tensors, leaves, unmapped: [], skipped: [], warnings: [], dims: {} };
}

function fmtValue(bytes: Buffer, dtype: DType, k: Kernels): string {
  const hex = Buffer.from(bytes).reverse().toString("hex");
  let v: number | bigint | boolean;
  switch (dtype) {
    case "F32": v = bytes.readFloatLE(0); break;
    case "F64": v = bytes.readDoubleLE(0); break;
    case "I8": v = bytes.readInt8(0); break;
    case "U8": v = bytes.readUInt8(0); break;
    case "I16": v = bytes.readInt16LE(0); break;
    case "U16": v = bytes.readUInt16LE(0); break;
    case "I32": v = bytes.readInt32LE(0); break;
    case "U32": v = bytes.readUInt32LE(0); break;
    case "I64": v = bytes.readBigInt64LE(0); break;
    case "U64": v = bytes.readBigUInt64LE(0); break;
    case "BOOL": v = bytes[0] !== 0; break;
    default: {
      if (!isCastable(dtype)) return `0x${hex}`;
      const f = new Uint8Array(4);
      k.cast(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length), dtype, f, "F32", 1);
      v = Buffer.from(f).readFloatLE(0);
    }
  }
  return `${String(v)} (0x${hex})`;
}

function unravel(k: number, box: Box): number[] {
  const idx = new Array<number>(box.sizes.length);
  for (let d = box.sizes.length - 1; d >= 0; d--) {
    const s = box.sizes[d]!;
    idx[d] = box.offsets[d]! + (k % s);
    k = Math.floor(k / s);
  }
  return idx;
}

/**
 * Computes a box of a planned tensor from the source, in `outDtype`: the bytes a conversion would write, by the
 * executor's own run computation (exec/worker.ts), so FP8 block scales, MXFP4 and INT4 are decoded exactly as convert
 * decodes them. Reads only the box's source ranges (fetched first for files without a local path).
 */
async function materialize(src: Source, access: ReturnType<typeof sourceAccess>, t: TensorPlan, box: Box, leaves: Record<string, LeafInfo>, outDtype: DType): Promise<Buffer> {
  const runs: Run[] = runsForBox(t.recipe, t.shape, box, leaves);
  const spans = access.remote.size ? await fetchRunSpans(runs, access.scales, access.remote, src) : undefined;
  for (const r of runs) {
    if (r.src && !r.decode && r.src.dtype !== outDtype && !(isCastable(r.src.dtype) && isCastable(outDtype))) {
      throw new CkptError("DTYPE", `cannot compare ${r.src.dtype} with ${outDtype}`, { tensor: t.name });
    }
  }
  try {
    return valuesOfRuns({ paths: access.paths, scales: access.scales, spans }, runs, numelOf(box.sizes), outDtype);
  } catch (e) {
    if (e instanceof CkptError) throw e;
    throw new CkptError("DTYPE", (e as Error).message, { tensor: t.name, cause: e });
  }
}

/** How a planned tensor's values are compared: decoded (and from what), cast, or byte for byte. */
function comparedHow(r: Recipe, dtype: DType, other: DType): string {
  const decoded = (x: Recipe): string | undefined =>
    quantOp(x.op)?.compared ?? ("input" in x ? decoded(x.input) : "inputs" in x ? x.inputs.map(decoded).find((d) => d) : undefined);
  const how = decoded(r);
  if (how) return how;
  return dtype === other ? "compared byte for byte" : `cast ${dtype} → ${other}, then compared byte for byte`;
}

/** True when the plan decodes quantized tensors (FP8 block scales, MXFP4, INT4); false when it cannot be made. */
function decodesQuantized(plan: () => ConversionPlan): boolean {
  try {
    return plan().tensors.some((t) => !comparedHow(t.recipe, "F32", "F32").startsWith("compared"));
  } catch {
    return false; // not a complete HF checkpoint of the mapping: compared the usual way, which reports what differs
  }
}

/**
 * Compares `y` with what converting `x` would write, tensor by tensor (`label`s name them in messages). Called with
 * the two swapped when x is a TorchTitan checkpoint and y a quantized HF one (`swapped`).
 */
async function compareCatalogs(x: { src: Source; cat: Catalog; label: string }, y: { src: Source; cat: Catalog; label: string },
  cfg: { config: Record<string, unknown>; file: string } | undefined, result: VerifyResult, opts: VerifyOptions, swapped = false): Promise<VerifyResult> {
  const [sa, ca, sb, cb] = [x.src, x.cat, y.src, y.cat];
  const [A, B] = [x.label, y.label];
  const fail = (d: VerifyDifference): VerifyResult => ({ ...result, ok: false, difference: swapped ? { ...d, a: d.b, b: d.a } : d });
  const namesA = [...ca.tensors.keys()];
  const namesB = [...cb.tensors.keys()];
  let plan: ConversionPlan;
  let sideB: "hf" | "tt" = "hf";
  if (!cfg) {
    plan = identityPlan(ca);
    result.notes.push("no config.json in either checkpoint: comparing tensors by name");
  } else {
    const mapping = selectMapping(cfg.config, cfg.file);
    const sideA = sideOf(mapping, namesA, DEFAULT_TARGET);
    sideB = sideOf(mapping, namesB, DEFAULT_TARGET);
    const ttNames = (names: string[]) => names.map((n) => normalizeTtName(n).name ?? n);
    if (sideA === "hf" && sideB === "hf") plan = identityPlan(ca);
    else if (sideA === "tt" && sideB === "hf" && !swapped && decodesQuantized(() => planConversion(cb, { mapping, config: cfg.config, direction: "hf_to_tt", target: detectTarget(mapping, ttNames(namesA)), dtype: "keep", allowUnmapped: true, configFile: cfg.file, targetChecks: "warn" }))) {
      // b holds quantized tensors (FP8 block scales, MXFP4, INT4): its values are decoded as convert decodes them
      // and compared with a's, rather than a's values re-encoded
      result.notes.push(`${y.label} holds quantized tensors: its values are decoded as convert decodes them and compared with ${x.label}'s`);
      return compareCatalogs(y, x, cfg, result, opts, true);
    } else {
      const direction: Direction = sideA === "hf" ? "hf_to_tt" : sideB === "hf" ? "tt_to_hf" : "tt_to_tt";
      const target = detectTarget(mapping, ttNames(sideB === "tt" ? namesB : namesA));
      // the checkpoints exist already: what their target cannot express is a note (those warnings start with the
      // target and architecture), not a reason not to compare
      // an HF side in one of several layouts (FLUX diffusers / BFL) is compared in its own
      const hfLayout = direction === "tt_to_hf" ? hfLayoutOf(mapping, namesB) : undefined;
      plan = planConversion(ca, { mapping, config: cfg.config, direction, target, dtype: "keep", allowUnmapped: true, configFile: cfg.file, targetChecks: "warn", hfLayout });
      result.notes.push(...plan.warnings.filter((w) => w.startsWith(`${target} ${mapping.architecture}`)));
      if (plan.unmapped.length) result.notes.push(`${plan.unmapped.length} tensor(s) of ${A} have no mapping and were not compared: ${plan.unmapped.slice(0, 4).join(", ")}`);
    }
  }

  // b's tensors by output name
  const bByName = new Map<string, CatalogTensor>();
  for (const t of cb.tensors.values()) {
    const n = sideB === "tt" && plan.mapping !== "identity" ? normalizeTtName(t.name).name : t.name;
    if (n !== undefined) bByName.set(n, t);
  }
  const planned = new Set(plan.tensors.map((t) => t.name));
  for (const t of plan.tensors) {
    if (!bByName.has(t.name)) return fail({ tensor: t.name, message: `tensor '${t.name}' (from ${A}) is missing in ${B}` });
  }
  // a base (HF) against TorchTitan's LoRA model (convert --lora): the base weights are compared, the adapters are b's own
  const adapters = [...bByName.keys()].filter((n) => !planned.has(n) && sideB === "tt" && /\.lora_[ab]\.weight$/.test(n));
  for (const n of adapters) bByName.delete(n);
  if (adapters.length) result.notes.push(`${adapters.length} LoRA adapter tensor(s) of ${B} have no counterpart in ${A} and were not compared (e.g. ${adapters[0]})`);
  for (const n of [...bByName.keys()].sort(naturalCompare)) {
    if (!planned.has(n)) return fail({ tensor: n, message: `tensor '${n}' of ${B} has no counterpart in ${A}` });
  }

  const k = getKernels();
  const slice = opts.sliceBytes ?? 16 * MiB;
  const bytesTotal = plan.tensors.reduce((s, t) => s + numelOf(bByName.get(t.name)!.shape) * elementSize(bByName.get(t.name)!.dtype), 0);
  const access = sourceAccess(plan.leaves, sa);
  for (const t of plan.tensors) {
    const tb = bByName.get(t.name)!;
    if (tb.shape.join() !== t.shape.join() || tb.shape.length !== t.shape.length) {
      return fail({ tensor: t.name, file: tb.pieces[0]?.file, message: `tensor '${t.name}': shape [${t.shape}] in ${A}, [${tb.shape}] in ${B}` });
    }
    if (tb.dtype !== t.dtype) {
      if (!(isCastable(tb.dtype) && isCastable(t.dtype))) return fail({ tensor: t.name, message: `tensor '${t.name}': dtype ${t.dtype} in ${A}, ${tb.dtype} in ${B}` });
      if (!result.notes.some((n) => n.startsWith("dtypes differ"))) result.notes.push(`dtypes differ (e.g. '${t.name}': ${t.dtype} in ${A}, ${tb.dtype} in ${B}): ${A}'s values are cast to ${B}'s dtype (round-to-nearest-even) before comparing`);
    }
    const es = elementSize(tb.dtype);
    const pieces = [...tb.pieces].sort((x, y) => {
      for (let d = 0; d < x.offsets.length; d++) if (x.offsets[d] !== y.offsets[d]) return x.offsets[d]! - y.offsets[d]!;
      return 0;
    });
    for (const p of pieces) {
      if (p.sizes.some((s) => s === 0)) continue;
      const nd = p.sizes.length;
      const rowElems = p.sizes.slice(1).reduce((x, y) => x * y, 1);
      const rows = nd === 0 ? 1 : p.sizes[0]!;
      const rowsPer = nd === 0 ? 1 : Math.max(1, Math.floor(slice / (rowElems * es)));
      for (let r = 0; r < rows; r += rowsPer) {
        checkAbort(opts.signal);
        const n = Math.min(rowsPer, rows - r);
        const box: Box = nd === 0 ? { offsets: [], sizes: [] } : { offsets: [p.offsets[0]! + r, ...p.offsets.slice(1)], sizes: [n, ...p.sizes.slice(1)] };
        const bBytes = await sb.read(p.file, p.byteOffset + r * rowElems * es, n * rowElems * es);
        const aBytes = await materialize(sa, access, t, box, plan.leaves, tb.dtype);
        if (!aBytes.equals(bBytes)) {
          let e = 0;
          while (e * es < bBytes.length && aBytes.subarray(e * es, (e + 1) * es).equals(bBytes.subarray(e * es, (e + 1) * es))) e++;
          const index = nd === 0 ? [] : unravel(e, box);
          const av = fmtValue(aBytes.subarray(e * es, (e + 1) * es), tb.dtype, k);
          const bv = fmtValue(bBytes.subarray(e * es, (e + 1) * es), tb.dtype, k);
          const at = p.byteOffset + r * rowElems * es + e * es;
          return fail({
            tensor: t.name, file: `${sb.id}/${p.file}`, index, a: av, b: bv, byteRange: [at, at + es],
            message: `tensor '${t.name}' differs at index [${index.join(", ")}]: ${A} = ${av}, ${B} = ${bv} (${B}: ${p.file} byte ${at})`,
          });
        }
        result.bytes += bBytes.length;
        opts.onProgress?.({ bytesDone: result.bytes, bytesTotal });
      }
    }
    result.tensors++;
  }
  const how = new Map<string, { n: number; first: string }>();
  for (const t of plan.tensors) {
    const h = comparedHow(t.recipe, t.dtype, bByName.get(t.name)!.dtype);
    const e = how.get(h);
    if (e) e.n++; else how.set(h, { n: 1, first: t.name });
  }
  for (const [h, e] of how) result.notes.push(`${h}: ${e.n} tensor(s), e.g. ${e.first}`);
  return result;
}

async function verifyCompare(aSpec: string, bSpec: string, opts: VerifyOptions): Promise<VerifyResult> {
  const sa = await openSource(aSpec, opts);
  let sb: Source | undefined;
  try {
    sb = await openSource(bSpec, opts);
    const ca = await catalogOf(sa);
    const cb = await catalogOf(sb);
    const result: VerifyResult = { ok: true, mode: "compare", a: aSpec, b: bSpec, tensors: 0, bytes: 0, notes: [] };
    // which way the names go
    let cfg = await configOf(ca) ?? await configOf(cb);
    if (opts.config) {
      const s = await openSource(opts.config, opts);
      try {
        const text = await s.readText("config.json");
        if (text === undefined) throw new CkptError("CONFIG", "no config.json there", { file: s.id });
        cfg = { config: JSON.parse(text) as Record<string, unknown>, file: `${s.id}/config.json` };
      } finally {
        await s.close();
      }
    }
    return await compareCatalogs({ src: sa, cat: ca, label: "a" }, { src: sb, cat: cb, label: "b" }, cfg, result, opts);
  } finally {
    await sa.close();
    await sb?.close();
  }
}

/** A one-paragraph human report of a verify result. */
export function formatVerify(r: VerifyResult): string {
  const what = r.mode === "manifest" ? `${r.a} against its ${MANIFEST_FILE}` : `${r.a} against ${r.b}`;
  const lines: string[] = [];
  if (r.ok) lines.push(`OK: ${what}: ${r.tensors} tensor(s), ${r.bytes} bytes identical`);
  else {
    const d = r.difference!;
    lines.push(`DIFFERENT: ${what}`, `  ${d.message}`);
    if (d.tensor) lines.push(`  tensor: ${d.tensor}`);
    if (d.index) lines.push(`  index:  [${d.index.join(", ")}]`, `  a:      ${d.a}`, `  b:      ${d.b}`);
    if (d.file) lines.push(`  file:   ${d.file}`);
    if (d.byteRange) lines.push(`  bytes:  [${d.byteRange[0]}, ${d.byteRange[1]})`);
    lines.push(`  (${r.tensors} tensor(s), ${r.bytes} bytes matched before it)`);
  }
  for (const n of r.notes) lines.push(`note: ${n}`);
  return lines.join("\n");
}

