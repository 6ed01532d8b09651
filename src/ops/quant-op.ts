// What a quantized op is made of. Each value-decoding op of the recipe vocabulary (FP8 block scales, MXFP4, INT4)
// is one module in this folder holding everything about it: the recipe it plans from a mapping rule or a stored
// tensor, the source tensors it consumes, how an output box resolves to its byte runs and when two runs merge,
// how a worker decodes a run (and names the byte that makes a value non-finite), its inverse (the encode op of
// `--to hf --requantize`, with the condition for exactness) and its behaviour under sharding. The generic code
// (convert-plan, runs, worker, recipe, verify, requantize) dispatches through this interface (ops/index.ts), so a
// new format is one module here plus its kernel. Modules here sit below the plan and the executor (they import
// neither, not even for types): recipes and runs are seen through OpRecipe / BaseRun.
import { CkptError } from "../errors.js";
import type { CastableDType, DType } from "../dtypes.js";
import type { CatalogTensor, StoredPiece } from "../catalog-types.js";
import type { Kernels } from "../kernels/index.js";
import type { CompiledPattern } from "../mapping/patterns.js";
import type { Mapping, TensorRule } from "../mapping/schema.js";

/** What a worker needs to know about each leaf tensor a recipe names (plan/recipe.ts). */
export interface LeafInfo {
  dtype: DType;
  shape: number[];
  pieces: StoredPiece[];
}

/**
 * A stored integer tensor whose values a recipe relies on (INT4 weight_shape = [out, in] of the decoded weight): they
 * are tensor bytes, not headers, so checkStoredShapes (plan/quant-checks.ts) reads them once the plan exists.
 */
export interface StoredShapeCheck {
  tensor: string;
  /** The packed tensor the shape describes. */
  of: string;
  expect: number[];
  dtype: DType;
  pieces: StoredPiece[];
}

/**
 * rows × cols elements landing at element offset `dst` of the output box buffer (dst rows are packed): plan/runs.ts's
 * `Run`, whose `decode` is one of the ops' side-info.
 */
export interface BaseRun {
  dst: number;
  rows: number;
  cols: number;
  /** Absent for zero-filled runs. */
  src?: {
    file: string;
    byteOffset: number;
    /** Elements between the starts of consecutive source rows. */
    stride: number;
    dtype: DType;
  };
  /** A quantized op's decode of the run: which op, and what it reads besides `src`. */
  decode?: OpRunInfo;
  /** Transposed source: output element (i, j) of the run is source element j·stride + i (from src.byteOffset). */
  transpose?: boolean;
}

/** The mapping's value transforms (`Transform` in mapping/schema.ts) that a quantized op plans. */
export type ValueTransform = "mxfp4" | "int4";

/** A decode recipe of one op: `op` names the module; the other fields are its own (plain JSON). */
export interface OpRecipe { op: string }
/** What a run of one op carries besides its values' bytes (`Run.decode`): `op` names the module. */
export interface OpRunInfo { op: string }

/** A mapping rule compiled for the planner (its HF pattern). */
export interface PlanRule { rule: TensorRule; hf?: CompiledPattern }

/** The recipe of a leaf the planner reads, with the shapes a transform gives it. */
export interface PlannedLeaf<R extends OpRecipe = OpRecipe> {
  recipe: R;
  /** Values computed (decoded), not stored: their dtype follows --dtype / the config's torch_dtype. */
  dequantized: boolean;
  /** The logical HF shape (what the mapping's `shape` describes). */
  hfShape: number[];
  /** The output shape. */
  shape: number[];
  /** The dtype written under --dtype keep (a decode whose exact values need it), with the note saying why. */
  keepDtype?: DType;
  /** A stored shape tensor whose values must match the decoded shape (checked once the plan exists). */
  shapeCheck?: StoredShapeCheck;
}

/** What a planner knows when it plans a leaf. */
export interface PlanContext {
  mapping: Mapping;
  dims: Record<string, number>;
  config: Record<string, unknown>;
  file: string;
  /** Rule-spelled name → stored name (prefix normalisation). */
  stored: Map<string, string>;
}

/** A source's tensors (rule-spelled names) with what their checks need. */
export interface SourceContext {
  tensors: Map<string, CatalogTensor>;
  mapping: Mapping;
  config: Record<string, unknown>;
  rules: PlanRule[];
  file: string;
  stored: Map<string, string>;
}

/** What a worker gives an op to decode one run. */
export interface DecodeContext {
  k: Kernels;
  /** The run's staged source bytes: one array per range of `runRanges(run)` (its values first). */
  src: Uint8Array[];
  /** The run's output window. */
  dst: Uint8Array;
  outDtype: CastableDType;
  piece: { tensor?: string; outPath: string; outDtype: DType };
  /** A tensor the op reads whole (FP8 block scales), read once per worker; `check` runs on its first read unless --allow-nonfinite. */
  whole(name: string, check: (bytes: Uint8Array, at: WholeTensor) => void): { bytes: Uint8Array; at: WholeTensor };
  /** Refuses NaN/inf in `dst` (or counts them, --allow-nonfinite); `why` builds the error naming where they came from. */
  finite(why: () => Error): void;
}

/** Where a tensor read whole lies (a single stored piece). */
export interface WholeTensor { file: string; byteOffset: number; byteLength: number; cols: number }

/** A run a quantized op decodes: its values' bytes (`src`) and its op's side-info (`decode`). */
export type DecodingRun<I extends OpRunInfo = OpRunInfo> = BaseRun & { src: NonNullable<BaseRun["src"]>; decode: I };

/** A byte range of a source file. */
export interface SourceRange { file: string; start: number; end: number }

/**
 * One value-decoding op. `R` is its recipe, `I` its run side-info (`Run.decode`). The dispatch (ops/index.ts) hands
 * each method only its own recipes and runs.
 */
export interface QuantOp<R extends OpRecipe = OpRecipe, I extends OpRunInfo = OpRunInfo> {
  /** The recipe op and `Run.decode.op`. */
  op: R["op"] & I["op"];
  /** The format's name in messages ("MXFP4"). */
  label: string;
  /** How `ckpt verify` says the values were compared. */
  compared: string;

  // --- sources
  /** Refuses tensors and a config that contradict each other (docs/quantized-sources.md), before anything is planned. */
  checkSources(s: SourceContext): void;
  /** Companion tensors present in the source (scales, shapes) that are read with the value tensor, not converted alone. */
  companions(s: { tensors: Map<string, CatalogTensor>; mapping: Mapping; rules: PlanRule[] }): Set<string>;
  /** The mapping transform (`valueOp`) that plans this op from a rule, if it is one. */
  transform?: ValueTransform;
  /** The leaf a rule with `transform` plans (the transform's decode of stored tensor `name`). */
  planRule?(rule: TensorRule, name: string, vals: Record<string, number>, catalog: { tensors: Map<string, CatalogTensor> }, ctx: PlanContext): PlannedLeaf<R>;
  /** The leaf any stored tensor plans to when it carries this op's companion (FP8 with its block scale), else undefined. */
  planStored?(name: string, catalog: { tensors: Map<string, CatalogTensor> }, mapping: Mapping): Pick<PlannedLeaf<R>, "recipe" | "dequantized"> | undefined;
  /** The warning for `count` outputs written in `keepDtype` under --dtype keep. */
  keepNote?(count: number): string;

  // --- recipe
  /** Stored tensors the recipe reads. */
  leaves(r: R): string[];
  /** Short description for --dry-run tables. */
  describe(r: R): string;

  // --- runs (sharding: any box of the output; these give the byte ranges of its source rows)
  /**
   * Runs for columns [colStart, colStart + cols) of the output row at `coords`, landing at `dst`. `stored` gives the
   * plain runs of a stored tensor's row window (one per stored piece it crosses).
   */
  runs(r: R, coords: number[], colStart: number, cols: number, dst: number, leaves: Record<string, LeafInfo>, stored: (tensor: string) => BaseRun[]): BaseRun[];
  /** Whether run b (the next output rows) continues run a, whose values' bytes already continue: their side-info must too. */
  continues(a: I, b: I, rowsOfA: number): boolean;
  /** The byte ranges a run reads, values first, when they are not the plain rows of `src`. */
  ranges?(r: DecodingRun<I>): SourceRange[];
  /** Tensors a run reads whole (FP8 block scales). */
  wholeTensors?(d: I): string[];
  /** Decodes the run into `ctx.dst` in `ctx.outDtype`, refusing non-finite values with where they came from. */
  decode(r: DecodingRun<I>, ctx: DecodeContext): void;

  /** The inverse (`--to hf --requantize`), when the format is written back. */
  encode?: EncodeOp;
}

/** An encode recipe: one packed part of the encoding of `values` (the decode's output shape), computed from `input`. */
export interface OpEncodeRecipe {
  op: string;
  part: string;
  values: number[];
  valuesDtype: "BF16" | "F32";
  /** The values' recipe (a plan/recipe.ts `Recipe`). */
  input: unknown;
  reference?: Record<string, string>;
}

/** One slab's encoded part, and for the counting part its groups with no exact encoding. */
export interface EncodedSlab {
  bytes: Uint8Array;
  count?: { badMask: Uint8Array; adopted: number; firstBad: number; groupsPerRow: number };
}

/** A packed tensor the requantize plan writes in place of a decoded one. */
export interface EncodedPart<E extends OpEncodeRecipe = OpEncodeRecipe> { name: string; dtype: DType; recipe: E }

/** What the planner gives an encode op to plan one decoded output tensor. */
export interface RequantizeTarget {
  /** The decoded output tensor (name, dtype BF16/F32, shape, value recipe). */
  tensor: { name: string; dtype: "BF16" | "F32"; shape: number[]; recipe: OpRecipe };
  /** The value recipe with its last two dims swapped (a transpose undone rather than stacked). */
  transposed(r: OpRecipe): OpRecipe;
  /** The rule that wrote it (the decoded layout) and the rule it inverts (the packed layout). */
  plain: TensorRule;
  packed: TensorRule;
  vals: Record<string, number>;
  config: Record<string, unknown>;
  /** dtype of stored shape tensors (INT4 weight_shape). */
  shapeDtype: "I32" | "I64";
  /** The source checkpoint's tensor of this name, dtype and shape, as a reference leaf name (kept where it decodes exactly). */
  reference(name: string, dtype: DType, shape: number[]): string | undefined;
}

/**
 * The inverse of a decode: the encode op writing the packed tensors from values. Exact when every group of values
 * is one the format represents (`exactWhen`); pieces must hold whole groups (boxes span the trailing dims).
 */
export interface EncodeOp<E extends OpEncodeRecipe = OpEncodeRecipe> {
  /** The encode recipe op. */
  op: E["op"];
  /** The --requantize name: the transform of the decode it inverts. */
  kind: ValueTransform;
  /** The groups that are exact, for the refusal: "N <exactWhen>". */
  exactWhen: string;
  /** The decoded-layout rule `packed` is the inverse of, in the mapping. */
  plainSibling(mapping: Mapping, packed: TensorRule): TensorRule | undefined;
  /** The packed parts replacing one decoded output tensor. */
  plan(t: RequantizeTarget): EncodedPart<E>[];
  /** Short description for --dry-run tables; `input` describes the values' recipe. */
  describe(r: E, input: string): string;
  /** Shape of the part written. */
  shape(r: E): number[];
  /** Values per group (the unit encoded, and kept from the reference). */
  group(r: E): number;
  /** The reference's two packed tensors (leaf names), in the order `encodeSlab` takes them. */
  references(r: E): [string, string] | undefined;
  /** Whether this part has values to read (a stored shape part has none). */
  readsValues(r: { part: string }): boolean;
  /** Whether this part counts the groups with no exact encoding (one part per tensor does). */
  counts(r: E): boolean;
  /**
   * Encodes one slab of `rows` rows of values into this part with the kernels' encoder, keeping the reference's
   * encoding where it decodes exactly.
   */
  encodeSlab(k: Kernels, e: { part: string; group: number; valuesDtype: "BF16" | "F32" }, values: Float32Array, rows: number, cols: number, ref?: [Uint8Array, Uint8Array]): EncodedSlab;
  /** The bytes of a part with no values to read (a stored shape). */
  constant?(e: { part: string; values: number[] }, outDtype: DType, elems: number): Uint8Array;
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers the op modules share.

/** The leaf's only stored piece when it holds the whole tensor (as safetensors stores it), else undefined. */
export function soleWholePiece(leaf: LeafInfo): LeafInfo["pieces"][number] | undefined {
  const p = leaf.pieces[0];
  if (leaf.pieces.length !== 1 || !p || p.offsets.some((o) => o !== 0) || p.sizes.some((n, d) => n !== leaf.shape[d])) return undefined;
  return p;
}

/** The one stored piece of a tensor that must be read whole-tensor-addressed (safetensors sources). */
export function wholePiece(name: string, leaves: Record<string, LeafInfo>, why: string): { file: string; byteOffset: number; shape: number[] } {
  const leaf = leaves[name];
  if (!leaf) throw new CkptError("INTERNAL", `recipe names unknown tensor ${name}`);
  const p = soleWholePiece(leaf);
  if (!p) throw new CkptError("SHAPE", `${why} needs the tensor stored whole (one piece), as safetensors stores it`, { tensor: name });
  return { file: p.file, byteOffset: p.byteOffset, shape: leaf.shape };
}

/** Row-major index of `coords` over `dims`. */
export function rowIndex(coords: readonly number[], dims: readonly number[]): number {
  let lin = 0;
  coords.forEach((c, d) => (lin = lin * dims[d]! + c));
  return lin;
}

/** config.json's quantization_config, when it is an object. */
function quantConfig(config: Record<string, unknown>): Record<string, unknown> | undefined {
  const q = config.quantization_config;
  return q && typeof q === "object" && !Array.isArray(q) ? (q as Record<string, unknown>) : undefined;
}

/** config.json's quantization_config and whether its quant_method is `method`. */
export function quantMethod(config: Record<string, unknown>, method: string): { q: Record<string, unknown> | undefined; configured: boolean } {
  const q = quantConfig(config);
  return { q, configured: q?.quant_method === method };
}

/** `modules_to_not_convert` of transformers' FP8 / MXFP4 configs: module names, `*` matching one or more characters. */
export function notConverted(q: Record<string, unknown> | undefined, name: string): string | undefined {
  const list = Array.isArray(q?.modules_to_not_convert) ? (q!.modules_to_not_convert as unknown[]).filter((x): x is string => typeof x === "string") : [];
  return list.find((m) => {
    const re = new RegExp(`^${m.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".+")}(\\.|$)`);
    return re.test(name);
  });
}

/** The refusal of a checkpoint whose packed tensors the config does not describe. */
export function unconfiguredError(count: number, what: string, q: Record<string, unknown> | undefined, method: string, file: string, tensor?: string): CkptError {
  return new CkptError("CONFIG", `the checkpoint holds ${count} ${what}, but config.json's quantization_config ${q ? `has quant_method ${JSON.stringify(q.quant_method)}` : "is absent"}, not ${method}`, { file, tensor, hint: "the checkpoint and its config.json disagree" });
}
