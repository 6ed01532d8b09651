// Atomic output folders: everything is written into `<out>.partial/` and renamed at the end, so an output
// either exists complete or not at all. An existing `<out>` is only replaced with --force.
import { existsSync, mkdirSync, rmSync, renameSync, openSync, fsyncSync, closeSync, readdirSync, statSync } from "node:fs";
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
  mkdirSync(partial, { recursive: true });
  return { final, partial };
}

export function fsyncPath(path: string): void {
  const fd = openSync(path, "r");
  try { fsyncSync(fd); } finally { closeSync(fd); }
}

/** fsyncs every file and the folder, then swaps the partial folder into place. */
export function commitOutputDir(dir: OutputDir, opts: { force?: boolean }): void {
  for (const name of readdirSync(dir.partial)) {
    const p = `${dir.partial}/${name}`;
    if (statSync(p).isFile()) fsyncPath(p);
  }
  fsyncPath(dir.partial);
  if (existsSync(dir.final)) {
    if (!opts.force) throw new CkptError("OUTPUT_EXISTS", "output appeared during the run", { file: dir.final });
    rmSync(dir.final, { recursive: true, force: true });
  }
  renameSync(dir.partial, dir.final);
  fsyncPath(dirname(dir.final));
}

export function discardOutputDir(dir: OutputDir): void {
  rmSync(dir.partial, { recursive: true, force: true });
}
