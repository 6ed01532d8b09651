// The Hugging Face cache (`<root>/models--org--name/{blobs,snapshots,refs}`), same layout as Python huggingface_hub.
import { promises as fsp } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { CkptError } from "../errors.js";
import { checkRelativeName, openFolder } from "./local.js";
import type { Source } from "./types.js";

export const COMMIT_SHA_RE = /^[0-9a-f]{40}$/;

type Env = Record<string, string | undefined>;

function nonEmpty(v: string | undefined): string | undefined {
  return v !== undefined && v !== "" ? v : undefined;
}

/** `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`. */
export function hfHome(env: Env = process.env): string {
  return (
    nonEmpty(env.HF_HOME) ?? join(nonEmpty(env.XDG_CACHE_HOME) ?? join(homedir(), ".cache"), "huggingface")
  );
}

/** `$HF_HUB_CACHE` → `$HUGGINGFACE_HUB_CACHE` → `$HF_HOME/hub` → `$XDG_CACHE_HOME/huggingface/hub` → `~/.cache/huggingface/hub`. */
export function hfCacheRoot(env: Env = process.env): string {
  return nonEmpty(env.HF_HUB_CACHE) ?? nonEmpty(env.HUGGINGFACE_HUB_CACHE) ?? join(hfHome(env), "hub");
}

export type RepoType = "model" | "dataset" | "space";

/** `<root>/models--org--name` ("/" in the id becomes "--"). */
export function repoCacheDir(root: string, repoId: string, type: RepoType = "model"): string {
  return join(root, `${type}s--${repoId.split("/").join("--")}`);
}

/** Throws unless `revision` is usable as a path under `refs/` (branch names may hold "/", as in `refs/pr/1`). */
export function checkRevisionName(revision: string): void {
  if (revision.length === 0 || revision.includes("\0") || revision.startsWith("/") || revision.split("/").includes("..")) {
    throw new CkptError("USAGE", `invalid revision '${revision}'`);
  }
}

/**
 * The commit sha `revision` names in the cache: a 40-hex sha is itself, anything else is read from `refs/<revision>`.
 * Undefined when the ref is not cached.
 */
export async function resolveCachedRevision(repoDir: string, revision: string): Promise<string | undefined> {
  if (COMMIT_SHA_RE.test(revision)) return revision;
  checkRevisionName(revision);
  let text: string;
  try {
    text = await fsp.readFile(join(repoDir, "refs", ...revision.split("/")), "utf8");
  } catch {
    return undefined;
  }
  const sha = text.trim();
  return COMMIT_SHA_RE.test(sha) ? sha : undefined;
}

/** Writes `refs/<revision>` = sha (skipped when revision already is the sha). */
export async function writeRef(repoDir: string, revision: string, sha: string): Promise<void> {
  if (revision === sha) return;
  checkRevisionName(revision);
  const parts = revision.split("/");
  const dir = join(repoDir, "refs", ...parts.slice(0, -1));
  await fsp.mkdir(dir, { recursive: true });
  const target = join(dir, parts[parts.length - 1]!);
  const tmp = `${target}.${process.pid}.tmp`;
  await fsp.writeFile(tmp, sha);
  await fsp.rename(tmp, target);
}

export interface HfCacheOptions {
  revision?: string;
  /** Cache root; default from the environment (hfCacheRoot). */
  cacheDir?: string;
  /** Offline mode: misses are OFFLINE errors naming HF_HUB_OFFLINE instead of NOT_FOUND. */
  offline?: boolean;
  /** What the user named, for messages (default `repoId` or `repoId@revision`). */
  id?: string;
  /** Error for a file the snapshot lacks (default: NOT_FOUND, or OFFLINE when offline). */
  missing?: (file: string) => CkptError;
}

function offlineHint(): string {
  return "unset HF_HUB_OFFLINE to download it, or fill the cache first";
}

/** Opens `snapshots/<sha>/` of a cached repo as a Source (kind "hf-cache", revision = sha). */
export async function openHfCache(repoId: string, opts: HfCacheOptions = {}): Promise<Source> {
  const revision = opts.revision ?? "main";
  const root = opts.cacheDir ?? hfCacheRoot();
  const repoDir = repoCacheDir(root, repoId);
  const id = opts.id ?? (revision === "main" ? repoId : `${repoId}@${revision}`);
  const miss = (what: string, file?: string): CkptError =>
    opts.offline
      ? new CkptError("OFFLINE", `${what} (HF_HUB_OFFLINE is set)`, { file, hint: offlineHint() })
      : new CkptError("NOT_FOUND", what, { file });

  try {
    await fsp.stat(repoDir);
  } catch {
    throw miss(`${repoId} is not in the HF cache at ${root}`);
  }
  const sha = await resolveCachedRevision(repoDir, revision);
  if (sha === undefined) throw miss(`revision '${revision}' of ${repoId} is not in the HF cache at ${root} (no refs/${revision})`);
  const snapshot = join(repoDir, "snapshots", sha);
  try {
    if (!(await fsp.stat(snapshot)).isDirectory()) throw new Error("not a folder");
  } catch {
    throw miss(`snapshot ${sha} of ${repoId} is not in the HF cache`);
  }
  return openFolder(snapshot, {
    id,
    kind: "hf-cache",
    revision: sha,
    allowedRoot: repoDir,
    missing: (file) => {
      checkRelativeName(file);
      return opts.missing ? opts.missing(file) : miss(`${file} of ${id} is not in the HF cache`, file);
    },
  });
}
