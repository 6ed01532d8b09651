// convert / shard: Source → Catalog → Plan → Execute → Finalize. The CLI is a thin layer over this.
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { buildCatalog } from "../catalog.js";
import type { Catalog } from "../catalog-types.js";
import { CkptError } from "../errors.js";
import { openSource, type OpenSourceOptions } from "../sources/resolve.js";
import { readConfig } from "../sources/config.js";
import { describeRecipe } from "../plan/recipe.js";
import type { Source } from "../sources/types.js";
import { selectMapping } from "../mapping/load.js";
import { DEFAULT_TARGET, type Mapping, type Target } from "../mapping/schema.js";
import { detectTarget, sideOf, planConversion, type ConversionPlan, type Direction, type PlanFeature } from "../plan/convert-plan.js";
import { layoutDcp, layoutRankSafetensors, layoutSafetensors, type OutputLayout } from "../plan/output-layout.js";
import { hfNamedTensors } from "../plan/hf-names.js";
import { checkStoredShapes } from "../plan/quant-checks.js";
import { headerBytes, rankIo } from "../plan/rank-io.js";
import { checkExpertMesh, worldSize, type Mesh } from "../plan/sharding.js";
import { executeLayout, type ProgressEvent } from "../exec/executor.js";
import { describeFsError, fsyncPath, isDiskFull } from "../exec/output-dir.js";
import { parseDigest } from "../exec/digest.js";
import { unthrottledDirtyBytes } from "../exec/page-cache.js";
import { stampFiles, type SourceStamp } from "../exec/journal.js";
import { elementSize, numelOf } from "../dtypes.js";
import { VERSION } from "../version.js";
import { loraRequested, withLoraModel, type LoraModelSummary } from "../lora/tt-model.js";
import { copyAssets } from "../finalize/assets.js";
import { finalizeHfConfig } from "../finalize/hf-config.js";
import { finalizeRanks, RANK_DIGEST_PREFIX } from "../finalize/ranks.js";
import { torchtitanConfigLines } from "../finalize/torchtitan-config.js";
import { warnNonfinite, warnResumed, withKeptHint, writeOutput } from "../finalize/write-output.js";
import { checkRequantizable, checkRequantized, planRequantize } from "../plan/requantize.js";
import { effectiveConfig, normalizedName, normalizeTtName } from "../plan/source-names.js";
import { checkConvertFlags, type ConvertFlags } from "./convert-options.js";
import { withPrefixedSource } from "../sources/overlay.js";
import type { CatalogTensor } from "../catalog-types.js";

export interface ConvertOptions extends OpenSourceOptions, ConvertFlags {
  source: string | Source;
  out: string;
  /** HF folder or repo id giving config.json (required for --to hf unless the checkpoint carries hf_assets/). */
  config?: string;
  dryRun?: boolean;
  allowUnmapped?: boolean;
  allowOverflow?: boolean;
  /** Write NaN/inf produced by decoding quantized sources (recorded in the manifest's options) instead of refusing. */
  allowNonfinite?: boolean;
  force?: boolean;
  omit?: string[];
  /** Opt-in conversions: "mtp" (DeepSeek MTP layers → mtp_layers), "text-only" (skip a vision tower the target cannot take). */
  features?: PlanFeature[];
  /**
   * fsync every file and the folder before the atomic rename (default true). `false` leaves the output in the page
   * cache like `cp` does: complete and renamed into place when the call returns, but a power loss before the kernel
   * writes it back can leave it truncated (`ckpt verify <out>` tells).
   */
  fsync?: boolean;
  onProgress?: (e: ProgressEvent) => void;
  onWarning?: (msg: string) => void;
  signal?: AbortSignal;
}

export interface PlanSummary {
  direction: Direction;
  mapping: string;
  target: Target;
  mesh: Mesh;
  format: "dcp" | "safetensors";
  tensors: { name: string; dtype: string; shape: number[]; recipe: string; bytes: number }[];
  files: { name: string; size: number; rank?: number }[];
  skipped: { name: string; why: string }[];
  warnings: string[];
  /**
   * Sharded outputs: per rank, the bytes of the chunks it holds; dry runs add what a machine running that rank alone
   * writes (its files) and downloads with --ranged (source bytes read, headers included).
   */
  perRank?: { rank: number; bytes: number; chunks: number; write?: number; download?: number }[];
}

export interface ConvertResult {
  out: string;
  dryRun: boolean;
  plan: PlanSummary;
  bytesWritten: number;
  seconds: number;
  f16Overflow: number;
  /** TorchTitan config lines that load this output. */
  torchtitanConfig?: string;
  /** --lora / --lora-rank: the LoRAConverter settings and where each adapter came from. */
  lora?: LoraModelSummary;
}


async function openConfigSource(spec: string, opts: OpenSourceOptions): Promise<{ config: Record<string, unknown>; source: Source; file: string }> {
  const s = await openSource(spec, opts);
  const file = `${s.id}/config.json`;
  const config = await readConfig(s, "config.json", file);
  if (!config) throw new CkptError("CONFIG", "no config.json there", { file: s.id });
  return { config, source: s, file };
}

function summarize(plan: ConversionPlan, layout: OutputLayout): PlanSummary {
  const perRank = new Map<number, { bytes: number; chunks: number }>();
  for (const f of layout.files) if (f.rank !== undefined) perRank.set(f.rank, { bytes: 0, chunks: 0 });
  for (const c of layout.chunks) {
    for (const r of c.ranks) {
      const e = perRank.get(r);
      if (e) { e.bytes += c.byteLength; e.chunks++; }
    }
  }
  return {
    direction: plan.direction,
    mapping: plan.mapping,
    target: plan.target,
    mesh: layout.mesh,
    format: layout.format,
    tensors: plan.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, recipe: describeRecipe(t.recipe), bytes: numelOf(t.shape) * elementSize(t.dtype) })),
    files: layout.files.map((f) => ({ name: f.name, size: f.size, rank: f.rank })),
    skipped: plan.skipped,
    warnings: plan.warnings,
    perRank: worldSize(layout.mesh) > 1 ? [...perRank.entries()].map(([rank, v]) => ({ rank, ...v })) : undefined,
  };
}

/**
 * The source checkpoint of --to hf --requantize (the --config folder, when it holds safetensors): its tensors by
 * mapping-normalised name, their files under REFERENCE_FILES of the executed source. Headers only.
 */
async function referenceTensors(assetSource: Source | undefined, source: Source, mapping: Mapping, onWarning?: (msg: string) => void): Promise<Map<string, CatalogTensor> | undefined> {
  if (!assetSource || assetSource === source || !assetSource.files().some((f) => f.endsWith(".safetensors") && !f.includes("/"))) return undefined;
  let cat: Catalog;
  try {
    cat = await buildCatalog(assetSource);
  } catch (e) {
    onWarning?.(`--requantize: the source checkpoint's tensors in ${assetSource.id} are not used (${(e as Error).message}); every group is encoded from its values`);
    return undefined;
  }
  const out = new Map<string, CatalogTensor>();
  for (const t of cat.tensors.values()) out.set(normalizedName(mapping, t.name), { ...t, pieces: t.pieces.map((p) => ({ ...p, file: REFERENCE_FILES + p.file })) });
  return out;
}

const REFERENCE_FILES = "reference:";

/** dtype of the source's INT4 weight_shape tensors (compressed-tensors writes I64; some releases I32), I64 when unknown. */
function shapeDtypeOf(reference: Map<string, CatalogTensor> | undefined): "I32" | "I64" {
  for (const [k, t] of reference ?? []) if (k.endsWith(".weight_shape") && (t.dtype === "I32" || t.dtype === "I64")) return t.dtype;
  return "I64";
}

export async function runConvert(opts: ConvertOptions): Promise<ConvertResult> {
  const started = performance.now();
  const flags = checkConvertFlags(opts); // every option on its own, before a source is opened
  let direction: Direction = opts.to === "hf" ? "tt_to_hf" : "hf_to_tt";
  const source = typeof opts.source === "string" ? await openSource(opts.source, opts) : opts.source;
  let lora: Awaited<ReturnType<typeof withLoraModel>>;
  /** The --config (or hf_assets/) source when it is not `source`: closed with it. */
  let assetSource: Source | undefined;
  try {
    // size + mtime of every local source file, compared after the run (SOURCE_CHANGED) and part of the resume plan
    const stamps = stampFiles(source.files(), (f) => source.localPath(f));
    const catalog = await buildCatalog(source);
    // config.json: --config, else the source's own, else our own hf_assets/ beside TorchTitan weights
    let config = catalog.config;
    let configFile = `${source.id}/config.json`;
    assetSource = config ? source : undefined;
    if (opts.config) {
      const c = await openConfigSource(opts.config, opts);
      config = c.config; configFile = c.file; assetSource = c.source;
    } else if (!config && source.files().includes("hf_assets/config.json")) {
      configFile = `${source.id}/hf_assets/config.json`;
      config = await readConfig(source, "hf_assets/config.json", configFile);
      const assets = source.localPath("hf_assets/config.json");
      if (assets) assetSource = await openSource(dirname(assets));
    }
    if (!config) throw new CkptError("CONFIG", "no config.json found", { file: source.id, hint: direction === "tt_to_hf" ? "pass --config <hf-folder-or-repo>" : "the source needs an HF config.json (or pass --config)" });
    const mapping = selectMapping(config, configFile);
    if (opts.requantize && direction === "tt_to_hf") checkRequantizable(mapping, opts.requantize);
    let target = flags.target;
    // A TorchTitan source asked to become TorchTitan again is an offline reshard.
    if (direction === "hf_to_tt" && sideOf(mapping, [...catalog.tensors.keys()], target ?? DEFAULT_TARGET) === "tt") direction = "tt_to_tt";
    if (direction !== "hf_to_tt" && !target) target = detectTarget(mapping, [...catalog.tensors.keys()].map((n) => normalizeTtName(n).name ?? n));
    loraRequested(opts, direction, target);
    const plan = planConversion(catalog, { mapping, config, direction, target: target ?? DEFAULT_TARGET, dtype: flags.dtype, allowUnmapped: opts.allowUnmapped, omit: opts.omit, configFile, features: opts.features, hfLayout: opts.hfLayout });
    // weight_shape values are data, not headers: a dry run plans from headers alone (a Hub source would need one
    // request per tensor), so they are checked when the run is real, still before the output folder exists
    if (plan.storedShapes && !opts.dryRun) await checkStoredShapes(plan.storedShapes, catalog.source);
    for (const w of plan.warnings) opts.onWarning?.(w);
    // --lora / --lora-rank: the LoRA model's adapters join the plan; the executor reads them through execSource
    lora = await withLoraModel(plan, source, opts, { config, file: configFile });
    let execSource = lora?.source ?? source;
    // --requantize: the decoded experts become encode ops writing the packed tensors; the source checkpoint (when
    // --config holds it) is read through the same executor for the groups whose encoding it decides
    let reference: Map<string, CatalogTensor> | undefined;
    if (opts.requantize && direction === "tt_to_hf") {
      reference = await referenceTensors(assetSource, source, mapping, opts.onWarning);
      planRequantize(plan, mapping, opts.requantize, { config: effectiveConfig(mapping, config), shapeDtype: shapeDtypeOf(reference), reference });
      if (reference && assetSource) {
        execSource = withPrefixedSource(execSource, REFERENCE_FILES, assetSource);
        // the reference's bytes decide groups of the output: its files are stamped like the source's
        for (const [f, st] of stampFiles(assetSource.files(), (x) => assetSource!.localPath(x))) stamps.set(REFERENCE_FILES + f, st);
      }
    }

    const { world, tp, ep, mesh, format, filesPerRank } = flags;
    checkExpertMesh(mesh, plan.tensors.filter((t) => t.policy.experts));
    if (opts.hfNames) plan.tensors = hfNamedTensors(plan);
    const ttKind = format === "dcp" ? "dcp" as const : opts.hfNames ? "hf-safetensors" as const : "tt-safetensors" as const;
    const layout = format === "dcp" ? layoutDcp(plan.tensors, mesh, filesPerRank)
      : world > 1 ? layoutRankSafetensors(plan.tensors, mesh)
      : layoutSafetensors(plan.tensors, { maxShardBytes: opts.maxShardBytes ?? 5 * 1024 ** 3, prefix: direction === "tt_to_hf" && plan.layout ? mapping.hf_file_prefix?.[plan.layout] : undefined });
    const summary = summarize(plan, layout);
    if (opts.dryRun && summary.perRank) {
      // what a --ranged machine would download is worked out only for --ranged (it resolves every chunk's reads)
      const io = new Map(rankIo(layout, plan, opts.ranged ? headerBytes(catalog.tensors.values()) : undefined).map((x) => [x.rank, x]));
      for (const r of summary.perRank) Object.assign(r, { write: io.get(r.rank)?.write ?? 0, ...(opts.ranged ? { download: io.get(r.rank)?.download ?? 0 } : {}) });
    }
    const outAbs = resolve(opts.out);
    if (opts.dryRun) {
      return { out: outAbs, dryRun: true, plan: summary, bytesWritten: 0, seconds: (performance.now() - started) / 1000, f16Overflow: 0, ...(lora ? { lora: lora.summary } : {}) };
    }

    const ranks = flags.ranks;
    const pieceBytes = 16 * 1024 * 1024;
    const digest = flags.digest;
    const fsync = opts.fsync ?? true;
    const drops = (opts.features ?? []).filter((f) => f.startsWith("drop:")).map((f) => f.slice("drop:".length));
    const optionsRecord = { to: opts.to ?? "torchtitan", target: plan.target, format, dtype: opts.dtype ?? "keep", world_size: world, tp, ...(format === "dcp" ? { files_per_rank: filesPerRank } : {}), ...(ep > 1 ? { ep } : {}), ...(plan.layout ? { layout: plan.layout } : {}), ...(drops.length ? { drop: drops } : {}), pieceBytes, digest, ...(lora ? { lora: lora.record } : {}), ...(opts.allowNonfinite ? { allow_nonfinite: true } : {}) };
    // Without fsync the output should land in the page cache like cp's (O_DIRECT would make the run wait for the
    // disk), as long as it fits under the kernel's unthrottled dirty-page ceiling (see exec/page-cache.ts).
    const directIo = fsync || layout.files.reduce((s, f) => s + f.size, 0) > unthrottledDirtyBytes();
    const execOpts = { threads: opts.threads, maxMemory: opts.maxMemory, pieceBytes, digest, directIo, allowOverflow: opts.allowOverflow, allowNonfinite: opts.allowNonfinite, onProgress: opts.onProgress, signal: opts.signal };

    const journalPlan = JSON.stringify({ version: VERSION, options: optionsRecord, source: sourceStampsOf(stamps, plan) });
    if (ranks || opts.finalize) return await runPartial(catalog, plan, layout, summary, { ...opts, outAbs, rankList: ranks, execOpts, optionsRecord, journalPlan, assetSource, started, execSource, loraConfig: lora?.config(outAbs) });

    let hfAssets = false;
    const exec = await writeOutput({
      out: outAbs, plan, layout, catalog, source: execSource, stamps, execOpts, journalPlan, optionsRecord, digest,
      force: opts.force, resume: opts.resume, fsync, allowOverflow: opts.allowOverflow, onWarning: opts.onWarning,
      checkResult: (e) => { if (opts.requantize) checkRequantized(opts.requantize, e.requantize, assetSource?.id, opts.onWarning); },
      addFiles: (partial) => {
        if (!assetSource) return;
        const assets = copyAssets(assetSource, direction !== "tt_to_hf" ? join(partial, "hf_assets") : partial);
        hfAssets = direction !== "tt_to_hf" && assets.length > 0;
        if (direction === "tt_to_hf" && assets.includes("config.json")) finalizeHfConfig(join(partial, "config.json"), mapping, plan, { requantized: !!opts.requantize });
      },
    });
    return {
      out: outAbs, dryRun: false, plan: summary, bytesWritten: exec.bytesWritten, seconds: (performance.now() - started) / 1000, f16Overflow: exec.f16Overflow,
      torchtitanConfig: lora && format === "dcp" ? lora.config(outAbs) : direction !== "tt_to_hf" && (format === "dcp" || world > 1) ? torchtitanConfigLines(outAbs, plan.target, hfAssets, ttKind) : undefined,
      ...(lora ? { lora: lora.summary } : {}),
    };
  } finally {
    await lora?.close();
    if (assetSource && assetSource !== source) await assetSource.close();
    if (typeof opts.source === "string") await source.close();
  }
}

/** The stamps of the files the plan reads, for the resume fingerprint. */
function sourceStampsOf(stamps: Map<string, SourceStamp>, plan: ConversionPlan): Record<string, SourceStamp | null> {
  const files = new Set(Object.values(plan.leaves).flatMap((l) => l.pieces.map((p) => p.file)));
  return Object.fromEntries([...files].sort().map((f) => [f, stamps.get(f) ?? null]));
}

interface PartialCtx extends ConvertOptions {
  outAbs: string;
  rankList?: number[];
  execOpts: Record<string, unknown>;
  optionsRecord: Record<string, unknown>;
  /** Identity of the run for the resume journal (options, tool version, source stamps). */
  journalPlan: string;
  assetSource?: Source;
  started: number;
  /** What the executor reads: the source, plus LoRA adapters with --lora / --lora-rank. */
  execSource: Source;
  loraConfig?: string;
}

/**
 * Multi-machine sharding: `--ranks a-b` writes only those ranks' files straight into <out> (each through a
 * private temp folder, then renamed), plus a digest of what it wrote; `--finalize` checks every rank file is
 * there and writes `.metadata`, the manifest and hf_assets. The result is byte-identical to one run.
 */
async function runPartial(catalog: Catalog, plan: ConversionPlan, layout: OutputLayout, summary: PlanSummary, ctx: PartialCtx): Promise<ConvertResult> {
  const out = ctx.outAbs;
  mkdirSync(out, { recursive: true });
  let bytesWritten = 0;
  let overflow = 0;
  if (ctx.rankList) {
    const rl = ctx.rankList;
    const wanted = new Set(layout.files.filter((f) => f.rank !== undefined && rl.includes(f.rank)).map((f) => f.name));
    for (const f of wanted) if (existsSync(join(out, f)) && !ctx.force) throw new CkptError("OUTPUT_EXISTS", "rank file already exists", { file: join(out, f), hint: "pass --force to rewrite it" });
    // Like a whole run's <out>.partial: journaled, kept for --resume after kill -9, Ctrl-C of a --resume run or a
    // full disk, removed otherwise.
    const tmp = join(out, `.ckpt-ranks-${rl[0]}-${rl[rl.length - 1]}.partial`);
    if (!ctx.resume && existsSync(tmp)) {
      ctx.onWarning?.(`removing the partial output of an earlier run in ${tmp} (pass --resume to continue it instead)`);
      rmSync(tmp, { recursive: true, force: true });
    }
    mkdirSync(tmp, { recursive: true });
    let keep = false;
    try {
      const exec = await executeLayout(layout, plan, ctx.execSource, { ...(ctx.execOpts as object), dir: tmp, onlyFiles: wanted, journal: { plan: ctx.journalPlan, resume: !!ctx.resume }, onWarning: ctx.onWarning });
      warnResumed(exec, ctx.onWarning);
      overflow = exec.f16Overflow;
      warnNonfinite(exec, ctx.onWarning);
      if (overflow > 0 && !ctx.allowOverflow) throw new CkptError("OVERFLOW", `${overflow} value(s) exceed the fp16 range`, { hint: "use --dtype bf16, or --allow-overflow" });
      if (ctx.fsync !== false) for (const f of wanted) fsyncPath(join(tmp, f));
      for (const f of wanted) renameSync(join(tmp, f), join(out, f));
      if (ctx.fsync !== false) fsyncPath(out);
      writeFileSync(join(out, `${RANK_DIGEST_PREFIX}${rl[0]}-${rl[rl.length - 1]}.json`), JSON.stringify(exec.chunks));
      bytesWritten = exec.bytesWritten;
    } catch (e) {
      let err = describeFsError(e, tmp);
      // as for <out>.partial: a changed source cannot be resumed
      keep = !(err instanceof CkptError && err.code === "SOURCE_CHANGED") && (!!ctx.resume || isDiskFull(err));
      if (keep && err instanceof CkptError) err = withKeptHint(err, tmp, e);
      throw err;
    } finally {
      if (!keep) rmSync(tmp, { recursive: true, force: true });
    }
  }
  if (ctx.finalize) await finalizeRanks(out, catalog, plan, layout, { optionsRecord: ctx.optionsRecord, digest: parseDigest(ctx.digest), assetSource: ctx.assetSource });

  return {
    out, dryRun: false, plan: summary, bytesWritten, seconds: (performance.now() - ctx.started) / 1000, f16Overflow: overflow,
    torchtitanConfig: ctx.finalize && ctx.loraConfig && layout.format === "dcp" ? ctx.loraConfig : ctx.finalize ? torchtitanConfigLines(out, plan.target, !!ctx.assetSource, layout.format === "dcp" ? "dcp" : ctx.hfNames ? "hf-safetensors" : "tt-safetensors") : undefined,
  };
}

