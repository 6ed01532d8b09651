// The one write path of every command that writes tensors (convert, shard, --to hf, --requantize, lora merge): a
// planned layout executed into `<out>.partial` (resume journal, progress, O_DIRECT), then the extras, the manifest
// and the command's own files, and an fsync'd atomic rename. On failure nothing half-written survives, except a
// partial folder kept for --resume (a --resume run, or a full disk).
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Catalog } from "../catalog-types.js";
import { CkptError } from "../errors.js";
import type { ConversionPlan } from "../plan/convert-plan.js";
import type { OutputLayout } from "../plan/output-layout.js";
import type { Source } from "../sources/types.js";
import { executeLayout, writeExtras, type ExecOptions, type ExecResult } from "../exec/executor.js";
import { allocatedBytes, checkFreeSpace, commitOutputDir, describeFsError, discardOutputDir, isDiskFull, prepareOutputDir } from "../exec/output-dir.js";
import type { DigestAlgorithm } from "../exec/digest.js";
import { stampChange, type SourceStamp } from "../exec/journal.js";
import { MANIFEST, manifestOf, sourceIdentity } from "./manifest.js";

export interface WriteOutputOptions {
  /** Absolute output folder. */
  out: string;
  plan: ConversionPlan;
  layout: OutputLayout;
  /** Catalog of the source (manifest: its identity and format). */
  catalog: Catalog;
  /** Where the plan's leaves are read from (the catalog's source, or one that also reads a second checkpoint). */
  source: Source;
  /** size + mtime of the local files `source` reads, compared after the run. */
  stamps: Map<string, SourceStamp>;
  execOpts: Omit<ExecOptions, "dir" | "journal" | "onWarning">;
  /** Identity of the run for the resume journal (options, tool version, source stamps). */
  journalPlan: string;
  optionsRecord: Record<string, unknown>;
  digest: DigestAlgorithm;
  force?: boolean;
  resume?: boolean;
  fsync?: boolean;
  allowOverflow?: boolean;
  onWarning?: (msg: string) => void;
  /** Refuses the written data (throws) before anything else is added: e.g. --requantize's unrepresentable groups. */
  checkResult?: (exec: ExecResult) => void;
  /** The command's own files (configs, tokenizer, hf_assets/), written into the partial folder before the commit. */
  addFiles?: (partial: string) => void;
}

export async function writeOutput(o: WriteOutputOptions): Promise<ExecResult> {
  if (!o.resume && existsSync(o.out + ".partial")) o.onWarning?.(`removing the partial output of an earlier run in ${o.out}.partial (pass --resume to continue it instead)`);
  let dir: ReturnType<typeof prepareOutputDir>;
  try {
    dir = prepareOutputDir(o.out, { force: o.force, resume: o.resume });
  } catch (e) {
    throw describeFsError(e, o.out + ".partial");
  }
  let writing = false;
  try {
    checkFreeSpace(dir.partial, Math.max(0, o.layout.files.reduce((s, f) => s + f.size, 0) - (o.resume ? allocatedBytes(dir.partial) : 0)));
    writing = true;
    const exec = await executeLayout(o.layout, o.plan, o.source, { ...o.execOpts, dir: dir.partial, journal: { plan: o.journalPlan, resume: !!o.resume }, onWarning: o.onWarning });
    warnResumed(exec, o.onWarning);
    o.checkResult?.(exec);
    if (exec.f16Overflow > 0 && !o.allowOverflow) {
      throw new CkptError("OVERFLOW", `${exec.f16Overflow} value(s) exceed the fp16 range (|x| > 65504) and would become ±inf`, { hint: "use --dtype bf16, or --allow-overflow to accept inf" });
    }
    if (exec.f16Overflow > 0) o.onWarning?.(`${exec.f16Overflow} value(s) overflowed to ±inf in fp16 (--allow-overflow)`);
    warnNonfinite(exec, o.onWarning);
    checkSourceUnchanged(o.source, o.stamps);
    writeExtras(o.layout, dir.partial);
    writeFileSync(join(dir.partial, MANIFEST), await manifestOf(o.catalog, o.plan, o.layout, exec, await sourceIdentity(o.catalog), o.optionsRecord, o.digest));
    o.addFiles?.(dir.partial);
    if (exec.journalPath) rmSync(exec.journalPath, { force: true });
    commitOutputDir(dir, { force: o.force, fsync: o.fsync ?? true });
    return exec;
  } catch (e) {
    let err = describeFsError(e, dir.partial);
    if (!(err instanceof CkptError && err.code === "SOURCE_CHANGED")) {
      // a source file rewritten mid-run surfaces as short reads or odd errors: name the real cause
      try { checkSourceUnchanged(o.source, o.stamps); } catch (changed) { err = changed; }
    }
    const code = err instanceof CkptError ? err.code : undefined;
    // The partial folder is kept only for --resume: when the run was started with --resume (so Ctrl-C of a
    // resumable run keeps it), or when the disk filled up (the one failure whose fix is "free space, resume").
    // A plain Ctrl-C leaves nothing behind. kill -9 cannot clean up, and --resume picks that up too. Refused data
    // (unrepresentable --requantize groups) is never kept: resuming would not change it.
    const keep = code !== "SOURCE_CHANGED" && code !== "REQUANTIZE" && ((writing && isDiskFull(err)) || !!o.resume);
    if (!keep) {
      discardOutputDir(dir);
      if (err instanceof CkptError && code === "INTERRUPTED") {
        err = new CkptError(err.code, err.message, { file: err.file, hint: "nothing was left behind; start a long run with --resume to be able to continue it after Ctrl-C", cause: err.cause ?? e });
      }
    } else if (err instanceof CkptError && existsSync(dir.partial)) {
      err = withKeptHint(err, dir.partial, e);
    }
    throw err;
  }
}

export function warnNonfinite(exec: ExecResult, onWarning?: (msg: string) => void): void {
  if (exec.nonfinite) onWarning?.(`${exec.nonfinite} decoded value(s) are NaN/±inf and were written (--allow-nonfinite, recorded in the manifest)`);
}

export function warnResumed(exec: ExecResult, onWarning?: (msg: string) => void): void {
  if (exec.resumedPieces) onWarning?.(`resumed: ${exec.resumedPieces} piece(s), ${exec.resumedBytes} bytes of an earlier run re-hashed and kept`);
}

/** The error, telling where the kept partial output is and how to continue it. */
export function withKeptHint(err: CkptError, partial: string, cause: unknown): CkptError {
  return new CkptError(err.code, err.message, { file: err.file, tensor: err.tensor, hint: `${err.hint ? err.hint + "; " : ""}partial output kept in ${partial}: rerun with --resume to continue`, cause: err.cause ?? cause });
}

export function checkSourceUnchanged(source: Source, stamps: Map<string, SourceStamp>): void {
  const c = stampChange(stamps, (f) => source.localPath(f));
  if (c) throw new CkptError("SOURCE_CHANGED", `source file ${c.why}; the output would mix two versions and was not written`, { file: `${source.id}/${c.file}`, hint: "rerun once the source is stable" });
}
