// `openSource(spec)`: what the user typed → a Source. An existing local path wins; otherwise `org/name[@rev]` is a
// Hub repo (offline-aware: HF_HUB_OFFLINE reads the HF cache only).
import { promises as fsp } from "node:fs";
import { homedir } from "node:os";
import { basename, join } from "node:path";
import { CkptError } from "../errors.js";
import { openHfCache } from "./hf-cache.js";
import { openHub, openHubRanged, parseRepoSpec, type HubOptions } from "./hub.js";
import { openLocal } from "./local.js";
import type { Source } from "./types.js";
import { diffusersTransformer } from "./diffusers.js";

export interface OpenSourceOptions extends HubOptions {
  /** Hub repos only: read in place with HTTP Range requests instead of downloading into the cache. */
  ranged?: boolean;
}

function expandHome(p: string): string {
  return p === "~" ? homedir() : p.startsWith("~/") ? join(homedir(), p.slice(2)) : p;
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.stat(p);
    return true;
  } catch {
    return false;
  }
}

/** `…/models--org--name` (a repo folder of the HF cache, not a snapshot): its `refs/main` snapshot. */
async function openCacheRepoFolder(path: string, opts: OpenSourceOptions): Promise<Source | undefined> {
  const m = /^models--(.+)$/.exec(basename(path));
  if (!m || !(await exists(join(path, "snapshots")))) return undefined;
  const parts = m[1]!.split("--");
  if (parts.length !== 2) return undefined;
  return openHfCache(parts.join("/"), {
    cacheDir: join(path, ".."),
    revision: opts.revision ?? "main",
    id: path,
  });
}

/** What the user named as a Source; a diffusers pipeline root is read through its `transformer/` component. */
export async function openSource(spec: string, opts: OpenSourceOptions = {}): Promise<Source> {
  return diffusersTransformer(await openAny(spec, opts));
}

async function openAny(spec: string, opts: OpenSourceOptions): Promise<Source> {
  if (spec.trim() === "") throw new CkptError("USAGE", "empty source: give a file, a folder or org/name");
  const path = expandHome(spec);
  if (await exists(path)) {
    const st = await fsp.stat(path);
    if (st.isDirectory()) {
      const repo = await openCacheRepoFolder(path, opts);
      if (repo) return repo;
    }
    return openLocal(path, { id: spec });
  }
  const looksLikePath = spec.startsWith(".") || spec.startsWith("/") || spec.startsWith("~") || spec.includes("\\");
  const repo = looksLikePath ? undefined : parseRepoSpec(spec);
  if (!repo) {
    throw new CkptError("NOT_FOUND", `no such file or folder: ${spec}`, {
      file: spec,
      hint: "give a .safetensors file, a checkpoint folder, or a Hub repo id org/name[@revision]",
    });
  }
  return opts.ranged ? openHubRanged(spec, opts) : openHub(spec, opts);
}
