// Hugging Face Hub sources, through @huggingface/hub (which reads no environment variables itself: we map HF_TOKEN,
// HF_ENDPOINT, HF_HUB_OFFLINE and the cache root here).
//
// openHub: download what a checkpoint needs into the HF cache (same layout as Python huggingface_hub), then read it
//          from there (an hf-cache Source). Offline: cache only.
// openHubRanged: no download; every read() is one HTTP Range request.
// API calls go through @huggingface/hub with our retrying fetch; file bytes (downloads, ranged reads) through
// hub-http.ts directly, so a dropped body resumes where it broke off.
import { promises as fsp, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { CkptError, redactSecrets } from "../errors.js";
import { COMMIT_SHA_RE, checkRevisionName, hfCacheRoot, hfHome, openHfCache, repoCacheDir, writeRef } from "./hf-cache.js";
import { apiFetch, downloadRange, HubHttpError, readRange, retryPolicy, type RetryPolicy } from "./hub-http.js";
import { checkRelativeName } from "./local.js";
import type { Source } from "./types.js";

// @huggingface/hub (and the WASM hashers it pulls in) is loaded when a Hub source is first used, not by every
// local run: it was 30 of the ~230 modules a local convert loaded before its first byte.
let hubModule: Promise<typeof import("@huggingface/hub")> | undefined;
const hubLib = () => (hubModule ??= import("@huggingface/hub"));

export const DEFAULT_ENDPOINT = "https://huggingface.co";

type Env = Record<string, string | undefined>;

export interface HubOptions {
  /** Branch, tag or commit sha (default: the `@rev` of the spec, else "main"). */
  revision?: string;
  /** Access token (default `$HF_TOKEN`, else the `$HF_HOME/token` file). Must start with `hf_`. */
  token?: string;
  /** Hub base URL (default `$HF_ENDPOINT`, else https://huggingface.co). */
  endpoint?: string;
  /** No network at all (default: `$HF_HUB_OFFLINE` is 1/ON/YES/TRUE). */
  offline?: boolean;
  /** HF cache root (default: hfCacheRoot()). */
  cacheDir?: string;
  /** Glob patterns (`*`, `?`, `**`; `*` also matches "/", like huggingface_hub) replacing the default file choice. */
  allowPatterns?: string[];
  /** Files downloading at once (default 4). Requests in flight are bounded by `retry.concurrency` too. */
  concurrency?: number;
  /** Retries, timeouts and requests in flight (default: DEFAULT_RETRY, overridden by the CKPT_HUB_* variables of `env`). */
  retry?: Partial<RetryPolicy>;
  /** Called after each file is present in the cache. */
  onFile?: (ev: { file: string; size: number; done: number; total: number; cached: boolean }) => void;
  /** Receives informational lines (cache fallbacks; the library's "Downloading …" lines). */
  log?: (line: string) => void;
  /** Environment to read (default process.env); for tests. */
  env?: Env;
  /** Aborts Hub requests in flight and their retries (Ctrl-C). */
  signal?: AbortSignal;
}

export interface RepoSpec {
  repoId: string;
  revision?: string;
}

const NAME_PART = /^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$/;

/** True when `s` is a valid `org/name` repo id. */
export function isRepoId(s: string): boolean {
  if (s.length > 96 + 1 + 96) return false;
  const parts = s.split("/");
  return parts.length === 2 && parts.every((p) => NAME_PART.test(p) && !p.includes("--") && !p.includes(".."));
}

/** Parses `org/name[@rev]`; undefined when it does not look like a repo id. */
export function parseRepoSpec(spec: string): RepoSpec | undefined {
  const at = spec.indexOf("@");
  const repoId = at < 0 ? spec : spec.slice(0, at);
  const revision = at < 0 ? undefined : spec.slice(at + 1);
  if (!isRepoId(repoId)) return undefined;
  if (revision !== undefined && (revision === "" || /\s/.test(revision))) return undefined;
  return revision === undefined ? { repoId } : { repoId, revision };
}

export function isTruthyEnv(v: string | undefined): boolean {
  return v !== undefined && ["1", "ON", "YES", "TRUE"].includes(v.trim().toUpperCase());
}

export function hubOffline(env: Env = process.env): boolean {
  return isTruthyEnv(env.HF_HUB_OFFLINE);
}

export function hubEndpoint(env: Env = process.env): string {
  const e = env.HF_ENDPOINT && env.HF_ENDPOINT.trim() !== "" ? env.HF_ENDPOINT.trim() : DEFAULT_ENDPOINT;
  return e.replace(/\/+$/, "");
}

/** `$HF_TOKEN` (legacy `$HUGGING_FACE_HUB_TOKEN`), else the token file (`$HF_TOKEN_PATH`, else `$HF_HOME/token`). */
export function hubToken(env: Env = process.env): string | undefined {
  for (const v of [env.HF_TOKEN, env.HUGGING_FACE_HUB_TOKEN]) {
    if (v !== undefined && v.trim() !== "") return v.trim();
  }
  const file = env.HF_TOKEN_PATH && env.HF_TOKEN_PATH !== "" ? env.HF_TOKEN_PATH : join(hfHome(env), "token");
  try {
    const t = readFileSync(file, "utf8").trim();
    return t !== "" ? t : undefined;
  } catch {
    return undefined;
  }
}

/** fnmatch-style glob: `*` and `**` match any run of characters (including "/"), `?` one character. */
export function globToRegExp(glob: string): RegExp {
  let re = "";
  for (const ch of glob) {
    if (ch === "*") re += ".*";
    else if (ch === "?") re += ".";
    else re += ch.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re.replace(/(\.\*)+/g, ".*")}$`);
}

const TOKENIZER_FILES = new Set([
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "added_tokens.json",
  "tokenizer.model",
  "vocab.json",
  "vocab.txt",
  "merges.txt",
  "chat_template.json",
  "chat_template.jinja",
]);

/** The default choice: root-level config, generation config, tokenizer files, safetensors and their index. */
export function isCheckpointFile(path: string): boolean {
  if (path.includes("/")) return false;
  if (path === "config.json" || path === "generation_config.json" || path === "model.safetensors.index.json") return true;
  if (TOKENIZER_FILES.has(path)) return true;
  return path.endsWith(".safetensors");
}

interface ResolvedHubOptions {
  repoId: string;
  revision: string;
  id: string;
  token?: string;
  endpoint: string;
  offline: boolean;
  cacheDir: string;
  policy: RetryPolicy;
  signal?: AbortSignal;
}

function resolveOptions(spec: string, opts: HubOptions): ResolvedHubOptions {
  const parsed = parseRepoSpec(spec);
  if (!parsed) {
    throw new CkptError("USAGE", `'${spec}' is not a Hub repo id (expected org/name or org/name@revision)`);
  }
  if (parsed.revision !== undefined && opts.revision !== undefined && parsed.revision !== opts.revision) {
    throw new CkptError("USAGE", `two revisions given for ${parsed.repoId}: '${parsed.revision}' and '${opts.revision}'`);
  }
  const env = opts.env ?? process.env;
  const revision = opts.revision ?? parsed.revision ?? "main";
  checkRevisionName(revision);
  const token = opts.token ?? hubToken(env);
  const r: ResolvedHubOptions = {
    repoId: parsed.repoId,
    revision,
    id: revision === "main" ? parsed.repoId : `${parsed.repoId}@${revision}`,
    endpoint: (opts.endpoint ?? hubEndpoint(env)).replace(/\/+$/, ""),
    offline: opts.offline ?? hubOffline(env),
    cacheDir: opts.cacheDir ?? hfCacheRoot(env),
    policy: retryPolicy(env, opts.retry),
  };
  if (token !== undefined && token !== "") r.token = token;
  if (opts.signal) r.signal = opts.signal;
  return r;
}

function scrub(text: string, token: string | undefined): string {
  // The library appends "URL: <url>"; API URLs carry long `?expand=…` queries that only add noise.
  let t = text.replace(/(URL: [^\s?]+)\?\S*/g, "$1");
  if (token) t = t.split(token).join("***");
  return redactSecrets(t);
}

function isNetworkError(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  if (e instanceof HubHttpError) return e.unreachable;
  if ("statusCode" in e) return false; // HubApiError: the server answered
  const c = (e as { cause?: unknown }).cause as { code?: string } | undefined;
  return e.message === "fetch failed" || (c !== undefined && typeof c?.code === "string");
}

/** A failure another run might not meet: the Hub unreachable, or still failing transiently after the retries. */
function isTransientFailure(e: unknown): boolean {
  return isNetworkError(e) || (e instanceof HubHttpError && e.gaveUp !== undefined);
}

/** Maps anything the library or hub-http throws to a CkptError HUB whose text holds no secret. */
function hubError(e: unknown, what: string, r: ResolvedHubOptions, file?: string): CkptError {
  if (e instanceof CkptError) return e;
  const where = file !== undefined ? { file } : {};
  const raw = e instanceof Error ? e.message : String(e);
  const status = typeof e === "object" && e !== null && "statusCode" in e ? Number((e as { statusCode: unknown }).statusCode) : undefined;
  if (/access token must start with 'hf_'/.test(raw)) {
    return new CkptError("HUB", `${what}: the access token does not start with 'hf_'`, {
      hint: "check HF_TOKEN or the token file ($HF_HOME/token)",
    });
  }
  let msg = `${what}: ${scrub(raw, r.token)}`;
  let hint: string | undefined;
  if (e instanceof HubHttpError && e.unreachable) {
    msg = `${what}: cannot reach ${r.endpoint} (${e.gaveUp!.code ?? "connection failed"}; ${e.gaveUp!.tries} tries)`;
    hint = "check the network or HF_ENDPOINT; set HF_HUB_OFFLINE=1 to use the local HF cache only";
  } else if (status === 401 || status === 403) {
    hint = r.token
      ? "the token was refused or lacks access (gated repos need their terms accepted on the Hub)"
      : "the repo is private or gated: set HF_TOKEN or log in with `huggingface-cli login`";
  } else if (status === 404) {
    hint = `check the repo id and revision '${r.revision}'`;
  } else if (isNetworkError(e)) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    msg = `${what}: cannot reach ${r.endpoint}${cause?.code ? ` (${cause.code})` : cause?.message ? ` (${scrub(cause.message, r.token)})` : ""}`;
    hint = "check the network or HF_ENDPOINT; set HF_HUB_OFFLINE=1 to use the local HF cache only";
  } else if (e instanceof HubHttpError && e.gaveUp) {
    hint = "the Hub or the network kept failing: rerun later (multi-machine runs: the same --ranks with --resume), or allow more with CKPT_HUB_TRIES / CKPT_HUB_DEADLINE";
  }
  return new CkptError("HUB", msg, { ...where, ...(hint !== undefined ? { hint } : {}) });
}

function creds(r: ResolvedHubOptions): { hubUrl: string; accessToken?: string; fetch: typeof fetch } {
  const f = apiFetch(r.policy, r.signal);
  return r.token ? { hubUrl: r.endpoint, accessToken: r.token, fetch: f } : { hubUrl: r.endpoint, fetch: f };
}

/** The download URL of a file at a commit (the Hub redirects it to its CDN; Range is honoured there). */
function fileUrl(r: ResolvedHubOptions, sha: string, path: string): string {
  return `${r.endpoint}/${r.repoId}/resolve/${sha}/${path.split("/").map(encodeURIComponent).join("/")}`;
}

/** "bytes 100-199" (inclusive, as in HTTP Range). */
function byteRange(offset: number, length: number): string {
  return `bytes ${offset}-${offset + length - 1}`;
}

async function resolveCommit(r: ResolvedHubOptions): Promise<string> {
  if (COMMIT_SHA_RE.test(r.revision)) return r.revision;
  const { modelInfo } = await hubLib();
  const info = await modelInfo({ name: r.repoId, revision: r.revision, additionalFields: ["sha"], ...creds(r) });
  const sha = (info as { sha?: unknown }).sha;
  if (typeof sha !== "string" || !COMMIT_SHA_RE.test(sha)) {
    throw new CkptError("HUB", `the Hub did not return a commit sha for ${r.id}`);
  }
  return sha;
}

interface RemoteFile {
  path: string;
  size: number;
  etag: string;
}

async function listRemote(r: ResolvedHubOptions, sha: string): Promise<RemoteFile[]> {
  const out: RemoteFile[] = [];
  const { listFiles } = await hubLib();
  for await (const f of listFiles({ repo: r.repoId, revision: sha, recursive: true, ...creds(r) })) {
    if (f.type !== "file") continue;
    out.push({ path: f.path, size: f.lfs?.size ?? f.size, etag: f.lfs?.oid ?? f.xetHash ?? f.oid ?? f.path });
  }
  return out;
}

async function runLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const worker = async (): Promise<void> => {
    while (failed === undefined && next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (e) {
        if (failed === undefined) failed = e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failed !== undefined) throw failed;
}

async function pathExists(p: string): Promise<boolean> {
  try {
    await fsp.stat(p);
    return true;
  } catch {
    return false;
  }
}

/** Offline check: an index whose shards are not all cached is a miss naming HF_HUB_OFFLINE. */
async function checkOfflineComplete(src: Source): Promise<void> {
  const files = new Set(src.files());
  const miss = (file: string, what: string): CkptError =>
    new CkptError("OFFLINE", `${what} (HF_HUB_OFFLINE is set)`, {
      file,
      hint: "unset HF_HUB_OFFLINE to download it, or fill the cache first",
    });
  if (files.has("model.safetensors.index.json")) {
    const text = await src.readText("model.safetensors.index.json");
    let wm: unknown;
    try {
      wm = (JSON.parse(text ?? "") as { weight_map?: unknown }).weight_map;
    } catch {
      return; // a malformed index is the index reader's error to report
    }
    if (wm && typeof wm === "object") {
      for (const shard of new Set(Object.values(wm as Record<string, unknown>))) {
        if (typeof shard === "string" && !files.has(shard)) throw miss(shard, `${shard} of ${src.id} is not in the HF cache`);
      }
    }
  } else if (![...files].some((f) => f.endsWith(".safetensors"))) {
    throw miss("model.safetensors", `no .safetensors file of ${src.id} is in the HF cache`);
  }
}

function openCached(r: ResolvedHubOptions, revision: string, offline: boolean): Promise<Source> {
  return openHfCache(r.repoId, { revision, cacheDir: r.cacheDir, offline, id: r.id });
}

/** The cached snapshot of the revision when it holds every checkpoint file, else undefined. */
async function completeCachedSnapshot(r: ResolvedHubOptions): Promise<Source | undefined> {
  let src: Source;
  try {
    src = await openCached(r, r.revision, false);
  } catch {
    return undefined;
  }
  try {
    await checkOfflineComplete(src);
    return src;
  } catch {
    await src.close();
    return undefined;
  }
}

/**
 * One file into the HF cache, as huggingface_hub lays it out: `blobs/<etag>` (written as `<etag>.incomplete`, which
 * a later run resumes with a Range request) and the snapshot pointer `snapshots/<sha>/<path>` → `../../blobs/<etag>`.
 * Returns the pointer's path.
 */
async function downloadToCache(r: ResolvedHubOptions, sha: string, f: RemoteFile, log?: (line: string) => void): Promise<string> {
  checkRelativeName(f.path);
  const repoDir = repoCacheDir(r.cacheDir, r.repoId);
  const pointer = join(repoDir, "snapshots", sha, ...f.path.split("/"));
  if (await pathExists(pointer)) return pointer;
  const blob = join(repoDir, "blobs", f.etag);
  await fsp.mkdir(dirname(blob), { recursive: true });
  await fsp.mkdir(dirname(pointer), { recursive: true });
  if (!(await pathExists(blob))) {
    const incomplete = `${blob}.incomplete`;
    const fh = await fsp.open(incomplete, "r+").catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return fsp.open(incomplete, "w");
      throw e;
    });
    try {
      let have = (await fh.stat()).size;
      if (have > f.size) {
        await fh.truncate(0);
        have = 0;
      }
      log?.(`Downloading ${f.path} to ${incomplete}${have > 0 ? ` (resuming at byte ${have} of ${f.size})` : ""}`);
      await downloadRange({ url: fileUrl(r, sha, f.path), token: r.token, policy: r.policy, size: f.size, signal: r.signal }, fh, have);
    } finally {
      await fh.close();
    }
    await fsp.rename(incomplete, blob);
  }
  await fsp.rm(pointer, { force: true });
  try {
    await fsp.symlink(relative(dirname(pointer), blob), pointer);
  } catch {
    await fsp.copyFile(blob, pointer); // no symlinks here (like huggingface_hub on such file systems)
  }
  return pointer;
}

/**
 * Opens a Hub repo through the HF cache: downloads (online) the files a checkpoint needs that are not cached yet,
 * writes `refs/<revision>`, and returns the cached snapshot (kind "hf-cache", revision = commit sha).
 */
export async function openHub(spec: string, opts: HubOptions = {}): Promise<Source> {
  const r = resolveOptions(spec, opts);
  if (r.offline) {
    const src = await openCached(r, r.revision, true);
    try {
      await checkOfflineComplete(src);
    } catch (e) {
      await src.close();
      throw e;
    }
    return src;
  }

  // Like huggingface_hub: when the Hub cannot be reached, fall back to a complete cached snapshot. With one at hand
  // the metadata requests get a single try (falling back at once beats retrying for minutes); without one they are
  // retried like every other request.
  const cached = await completeCachedSnapshot(r);
  const meta: ResolvedHubOptions = cached ? { ...r, policy: { ...r.policy, tries: 1 } } : r;
  let sha: string;
  let remote: RemoteFile[];
  try {
    sha = await resolveCommit(meta);
    remote = await listRemote(meta, sha);
  } catch (e) {
    if (cached && isTransientFailure(e)) {
      opts.log?.(`ckpt: ${r.endpoint} unreachable, using the cached snapshot ${cached.revision} of ${r.id}`);
      return cached;
    }
    await cached?.close();
    throw hubError(e, `cannot open ${r.id}`, r);
  }
  await cached?.close();

  const byPath = new Map(remote.map((f) => [f.path, f]));
  let wanted: RemoteFile[];
  if (opts.allowPatterns && opts.allowPatterns.length > 0) {
    const res = opts.allowPatterns.map(globToRegExp);
    wanted = remote.filter((f) => res.some((re) => re.test(f.path)));
  } else {
    wanted = remote.filter((f) => isCheckpointFile(f.path));
  }
  if (wanted.length === 0) {
    throw new CkptError("HUB", `${r.id} has no files to download${opts.allowPatterns ? " matching the allow patterns" : " (no safetensors, config or index)"}`, {
      hint: "ckpt reads safetensors checkpoints; .bin/.pt/.gguf files are not downloaded",
    });
  }

  const repoDir = repoCacheDir(r.cacheDir, r.repoId);
  const snapshot = join(repoDir, "snapshots", sha);
  let done = 0;
  const fetchOne = async (f: RemoteFile): Promise<void> => {
    const pointer = join(snapshot, ...f.path.split("/"));
    const cached = await pathExists(pointer);
    let path: string;
    try {
      path = await downloadToCache(r, sha, f, opts.log);
    } catch (e) {
      throw hubError(e, `cannot download ${f.path} of ${r.id}`, r, f.path);
    }
    const st = await fsp.stat(path);
    if (st.size !== f.size) {
      // Never leave a bad blob behind: the next run would take it as cached.
      const real = await fsp.realpath(path).catch(() => undefined);
      await fsp.rm(path, { force: true });
      if (real) await fsp.rm(real, { force: true });
      throw new CkptError("HUB", `downloaded ${f.path} of ${r.id} has ${st.size} bytes, the Hub lists ${f.size}`, {
        file: f.path,
        hint: "run again to download it afresh",
      });
    }
    done++;
    opts.onFile?.({ file: f.path, size: f.size, done, total: wanted.length, cached });
  };
  // The index first: when present, only the shards it names are fetched (repos often also hold a
  // consolidated copy of the same weights).
  const index = wanted.find((f) => f.path === "model.safetensors.index.json");
  if (index && !opts.allowPatterns) {
    await fetchOne(index);
    const text = await fsp.readFile(join(snapshot, index.path), "utf8");
    let shards: Set<string> | undefined;
    try {
      const wm = (JSON.parse(text) as { weight_map?: unknown }).weight_map;
      if (wm && typeof wm === "object") shards = new Set(Object.values(wm as Record<string, unknown>).map(String));
    } catch {
      shards = undefined; // malformed: fetch every safetensors file; the index reader reports the problem
    }
    if (shards) {
      for (const s of shards) {
        if (!byPath.has(s)) {
          throw new CkptError("INDEX", `weight_map names ${s}, which is not in ${r.id}`, { file: index.path });
        }
      }
      wanted = wanted.filter((f) => f !== index && (!f.path.endsWith(".safetensors") || shards!.has(f.path)));
      for (const s of shards) if (!wanted.some((f) => f.path === s)) wanted.push(byPath.get(s)!);
    } else {
      wanted = wanted.filter((f) => f !== index);
    }
    done = 0;
  }
  // Files sharing a blob must not download concurrently (same `<etag>.incomplete`): one group per etag.
  const groups = new Map<string, RemoteFile[]>();
  for (const f of wanted) groups.set(f.etag, [...(groups.get(f.etag) ?? []), f]);
  await runLimited([...groups.values()], opts.concurrency ?? 4, async (g) => {
    for (const f of g) await fetchOne(f);
  });
  await writeRef(repoDir, r.revision, sha);
  return openHfCache(r.repoId, {
    revision: sha,
    cacheDir: r.cacheDir,
    id: r.id,
    missing: (file) =>
      new CkptError("NOT_FOUND", `no file '${file}' in ${r.id} (not in the repo, or not among the downloaded files)`, {
        file,
        hint: "files other than config, tokenizer and safetensors are only downloaded when allowPatterns names them",
      }),
  });
}

class RangedHubSource implements Source {
  readonly kind = "hub" as const;
  /** Reads in flight by file/offset/length: the same bytes asked for twice at once are fetched once. */
  private readonly inFlight = new Map<string, Promise<Buffer>>();
  private readonly texts = new Map<string, Promise<string>>();
  constructor(
    readonly id: string,
    readonly revision: string,
    private readonly r: ResolvedHubOptions,
    private readonly remote: Map<string, RemoteFile>,
  ) {}

  files(): string[] {
    return [...this.remote.keys()];
  }

  localPath(): undefined {
    return undefined;
  }

  private entry(file: string): RemoteFile {
    const f = this.remote.get(file);
    if (!f) throw new CkptError("NOT_FOUND", `no file '${file}' in ${this.id}`, { file });
    return f;
  }

  async size(file: string): Promise<number> {
    return this.entry(file).size; // from the tree listing: no request
  }

  async read(file: string, offset: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new CkptError("INTERNAL", `bad read range offset=${offset} length=${length}`, { file });
    }
    const f = this.entry(file);
    if (offset + length > f.size) {
      throw new CkptError("IO", `short read: wanted ${length} bytes at offset ${offset}, the file has ${f.size}`, { file });
    }
    if (length === 0) return Buffer.alloc(0);
    const key = `${file}\0${offset}\0${length}`;
    let p = this.inFlight.get(key);
    if (!p) {
      p = readRange({ url: fileUrl(this.r, this.revision, file), token: this.r.token, policy: this.r.policy, size: f.size, signal: this.r.signal }, offset, length).catch((e: unknown) => {
        throw hubError(e, `ranged read of ${file} (${byteRange(offset, length)}) of ${this.id} failed`, this.r, file);
      });
      const done = p.finally(() => this.inFlight.delete(key));
      done.catch(() => undefined);
      this.inFlight.set(key, p);
    }
    return p;
  }

  async readText(file: string): Promise<string | undefined> {
    if (!this.remote.has(file)) return undefined;
    let t = this.texts.get(file);
    if (!t) {
      t = this.read(file, 0, this.entry(file).size).then((b) => b.toString("utf8"));
      t.catch(() => this.texts.delete(file));
      this.texts.set(file, t);
    }
    return t;
  }

  async close(): Promise<void> {
    this.texts.clear();
  }
}

/**
 * A Hub repo read in place: `read()` is an HTTP Range request (nothing lands on disk, localPath is undefined).
 * Used to cut one rank's shard out of a remote checkpoint.
 */
export async function openHubRanged(spec: string, opts: HubOptions = {}): Promise<Source> {
  const r = resolveOptions(spec, opts);
  if (r.offline) {
    throw new CkptError("OFFLINE", `ranged reads of ${r.id} need the network, and HF_HUB_OFFLINE is set`, {
      hint: "unset HF_HUB_OFFLINE, or download the repo first and read it from the HF cache",
    });
  }
  let sha: string;
  let remote: RemoteFile[];
  try {
    sha = await resolveCommit(r);
    remote = await listRemote(r, sha);
  } catch (e) {
    throw hubError(e, `cannot open ${r.id}`, r);
  }
  return new RangedHubSource(r.id, sha, r, new Map(remote.map((f) => [f.path, f])));
}
