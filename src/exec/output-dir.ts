// Atomic output folders: everything is written into `<out>.partial/` and renamed at the end, so an output
// either exists complete or not at all. An existing `<out>` is only replaced with --force.
import { existsSync, mkdirSync, rmSync, renameSync, openSync, fsyncSync, closeSync, readdirSync, statSync, statfsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { CkptError } from "../errors.js";

export interface OutputDir {
  final: string;
  partial: string;
}

export function prepareOutputDir(out: string, opts: { force?: boolean; resume?: boolean }): OutputDir {
  const final = resolve(out);
  const partial = final + ".partial";
  if (existsSync(final) && !opts.force) {
    throw new CkptError("OUTPUT_EXISTS", "output already exists", { file: final, hint: "pass --force to replace it, or choose another path" });
  }
  if (!existsSync(dirname(final))) mkdirSync(dirname(final), { recursive: true });
  if (existsSync(partial) && !opts.resume) rmSync(partial, { recursive: true, force: true });
  // not recursive: a recursive mkdir reports EROFS/EACCES as ENOENT
  if (!existsSync(partial)) mkdirSync(partial);
  return { final, partial };
}

export function fsyncPath(path: string): void {
  const fd = openSync(path, "r");
  try { fsyncSync(fd); } finally { closeSync(fd); }
}

/** fsyncs every file and folder under `dir`, then `dir` itself (children first, so the entries point at data on disk). */
function fsyncTree(dir: string): void {
  for (const name of readdirSync(dir)) {
    const p = `${dir}/${name}`;
    const st = statSync(p);
    if (st.isDirectory()) fsyncTree(p);
    else if (st.isFile()) fsyncPath(p);
  }
  fsyncPath(dir);
}

/** fsyncs every file and folder (unless `fsync: false`; hf_assets/ included), then swaps the partial folder into place. */
export function commitOutputDir(dir: OutputDir, opts: { force?: boolean; fsync?: boolean }): void {
  const sync = opts.fsync !== false;
  if (sync) fsyncTree(dir.partial);
  if (existsSync(dir.final)) {
    if (!opts.force) throw new CkptError("OUTPUT_EXISTS", "output appeared during the run", { file: dir.final });
    rmSync(dir.final, { recursive: true, force: true });
  }
  renameSync(dir.partial, dir.final);
  if (sync) fsyncPath(dirname(dir.final));
}

export function discardOutputDir(dir: OutputDir): void {
  rmSync(dir.partial, { recursive: true, force: true });
}

const FS_ERRORS: Record<string, { what: string; hint: string; diskFull?: boolean }> = {
  ENOSPC: { what: "disk full (no space left on device)", hint: "free some space, then rerun with --resume to continue", diskFull: true },
  EDQUOT: { what: "disk quota exceeded", hint: "free some space or raise the quota, then rerun with --resume to continue", diskFull: true },
  EFBIG: { what: "file too large for this file system", hint: "write to a file system that allows large files" },
  EACCES: { what: "permission denied", hint: "check the permissions of the output folder, or choose another output path" },
  EPERM: { what: "operation not permitted", hint: "check the permissions of the output folder, or choose another output path" },
  EROFS: { what: "read-only file system", hint: "choose an output path on a writable file system" },
  EIO: { what: "I/O error from the storage device", hint: "check the disk (dmesg)" },
};

/** The errno code of a file-system error, also when it crossed a worker thread (the code is lost, the message kept). */
export function fsErrorCode(e: unknown): string | undefined {
  if (e instanceof CkptError) return undefined;
  const code = typeof e === "object" && e !== null && "code" in e ? String((e as { code: unknown }).code) : undefined;
  if (code && code in FS_ERRORS) return code;
  const m = /^(E[A-Z]+):/.exec(e instanceof Error ? e.message : String(e));
  return m && m[1]! in FS_ERRORS ? m[1] : undefined;
}

/**
 * Disk full, quota, permission and read-only errors as one CkptError naming the path (from the error when it
 * names one, else `where`); anything else comes back unchanged.
 */
export function describeFsError(e: unknown, where: string): unknown {
  const code = fsErrorCode(e);
  if (!code) return e;
  const info = FS_ERRORS[code]!;
  const named = typeof e === "object" && e !== null && "path" in e && typeof (e as { path: unknown }).path === "string" ? (e as { path: string }).path : /'([^']+)'/.exec((e as Error)?.message ?? "")?.[1];
  const path = named ?? where;
  return new CkptError("IO", `${info.what} while writing ${path}`, { file: path, hint: info.hint, cause: e });
}

export function isDiskFull(e: unknown): boolean {
  return e instanceof CkptError && e.code === "IO" && /^(disk full|disk quota exceeded)/.test(e.message);
}

/** Fails early when the file system holding `dir` has fewer than `bytes` bytes free (files are written sparse). */
export function checkFreeSpace(dir: string, bytes: number): void {
  let free: number;
  try {
    const s = statfsSync(dir);
    free = Number(s.bavail) * Number(s.bsize);
  } catch {
    return; // statfs unsupported here: the writes themselves will report ENOSPC
  }
  if (free < bytes) {
    throw new CkptError("IO", `disk full: the output needs ${bytes} more bytes but only ${free} are free on the file system of ${dir}`, {
      file: dir,
      hint: "free some space or choose another output path",
    });
  }
}

/** Bytes already allocated on disk for the files in `dir` (a resumed run needs only the rest). */
export function allocatedBytes(dir: string): number {
  let total = 0;
  try {
    for (const name of readdirSync(dir)) {
      const st = statSync(`${dir}/${name}`);
      if (st.isFile()) total += Math.min(st.size, st.blocks * 512);
    }
  } catch {
    return 0;
  }
  return total;
}
