// Local sources: a single file, a folder, or (through hf-cache.ts) an HF cache snapshot folder.
// Reads are positional (`FileHandle.read`) on handles opened once and kept until close().
import { promises as fsp, realpathSync, type Stats } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { CkptError } from "../errors.js";
import type { Source, SourceKind } from "./types.js";

/** Throws unless `name` is a plain relative name inside a source: no `..` segment, not absolute, no NUL. */
export function checkRelativeName(name: string): void {
  const norm = name.replace(/\\/g, "/");
  if (
    name.length === 0 ||
    name.includes("\0") ||
    isAbsolute(name) ||
    norm.startsWith("/") ||
    /^[a-zA-Z]:/.test(norm) ||
    norm.split("/").includes("..")
  ) {
    throw new CkptError("IO", `refusing file name '${name}': only relative names inside the source are allowed`, {
      file: name,
      hint: "names must not be absolute or contain '..'",
    });
  }
}

/** True when `child` is `parent` or lies under it (both absolute, already resolved). */
export function isInside(parent: string, child: string): boolean {
  const rel = relative(parent, child);
  return rel === "" || (!rel.startsWith(".." + sep) && rel !== ".." && !isAbsolute(rel));
}

/**
 * When `folder` is `<repoDir>/snapshots/<rev>` of an HF cache (repoDir named `models--…`, `datasets--…`, `spaces--…`),
 * returns repoDir: snapshot files are symlinks into `<repoDir>/blobs/`, which must be allowed.
 */
export function hfSnapshotRepoDir(folder: string): string | undefined {
  const abs = resolve(folder);
  const snapshots = dirname(abs);
  const repoDir = dirname(snapshots);
  if (basename(snapshots) === "snapshots" && /^(models|datasets|spaces)--.+/.test(basename(repoDir))) return repoDir;
  return undefined;
}

export interface FolderSourceOptions {
  id?: string;
  kind?: SourceKind;
  revision?: string;
  /** Symlink targets must resolve inside this folder (default: the folder itself). */
  allowedRoot?: string;
  /** Error for a file that is not there (default: NOT_FOUND naming it). */
  missing?: (file: string) => CkptError;
}

function errCode(e: unknown): string | undefined {
  return typeof e === "object" && e !== null && "code" in e ? String((e as { code: unknown }).code) : undefined;
}

function ioError(file: string, what: string, e: unknown): CkptError {
  const msg = e instanceof Error ? e.message : String(e);
  return new CkptError("IO", `${what}: ${msg}`, { file, cause: e });
}

async function listFilesRecursive(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, prefix: string): Promise<void> => {
    let entries;
    try {
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch (e) {
      throw ioError(prefix || root, "cannot list folder", e);
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const ent of entries) {
      // Hidden entries (.git, .cache/huggingface of local_dir downloads, .DS_Store) are never checkpoint files,
      // except DCP's own `.metadata`.
      if (ent.name.startsWith(".") && ent.name !== ".metadata") continue;
      const rel = prefix ? `${prefix}/${ent.name}` : ent.name;
      const full = join(dir, ent.name);
      if (ent.isDirectory()) {
        await walk(full, rel);
      } else if (ent.isFile()) {
        out.push(rel);
      } else if (ent.isSymbolicLink()) {
        // Follow symlinks to files (HF cache snapshots); never descend symlinked folders (loops, escapes).
        let st: Stats;
        try {
          st = await fsp.stat(full);
        } catch {
          continue; // dangling link: not a file the source offers
        }
        if (st.isFile()) out.push(rel);
      }
    }
  };
  await walk(root, "");
  return out;
}

class LocalSource implements Source {
  readonly id: string;
  readonly kind: SourceKind;
  readonly revision?: string;
  private readonly handles = new Map<string, Promise<FileHandle>>();
  private closed = false;

  constructor(
    private readonly root: string,
    private readonly realRoot: string,
    private readonly allowedRealRoot: string,
    private readonly names: string[],
    opts: { id: string; kind: SourceKind; revision?: string },
    private readonly single: boolean,
    private readonly missing: (file: string) => CkptError,
  ) {
    this.id = opts.id;
    this.kind = opts.kind;
    if (opts.revision !== undefined) this.revision = opts.revision;
  }

  files(): string[] {
    return [...this.names];
  }

  localPath(file: string): string {
    if (this.single) {
      if (file !== this.names[0]) throw this.missing(file);
      return this.realRoot;
    }
    checkRelativeName(file);
    const full = join(this.root, ...file.replace(/\\/g, "/").split("/"));
    let real: string;
    try {
      real = realpathSync(full);
    } catch (e) {
      if (errCode(e) === "ENOENT" || errCode(e) === "ENOTDIR") throw this.missing(file);
      throw ioError(file, "cannot resolve path", e);
    }
    if (!isInside(this.allowedRealRoot, real)) {
      throw new CkptError("IO", `refusing '${file}': it is a symlink that leads outside ${this.allowedRealRoot}`, {
        file,
        hint: "copy the file into the folder instead of linking to it",
      });
    }
    return real;
  }

  private handle(file: string): Promise<FileHandle> {
    if (this.closed) return Promise.reject(new CkptError("INTERNAL", `source ${this.id} is closed`, { file }));
    let h = this.handles.get(file);
    if (!h) {
      const path = this.localPath(file);
      h = fsp.open(path, "r").catch((e: unknown) => {
        this.handles.delete(file);
        if (errCode(e) === "ENOENT") throw this.missing(file);
        throw ioError(file, "cannot open", e);
      });
      this.handles.set(file, h);
    }
    return h;
  }

  async size(file: string): Promise<number> {
    const path = this.localPath(file);
    try {
      return (await fsp.stat(path)).size;
    } catch (e) {
      if (errCode(e) === "ENOENT") throw this.missing(file);
      throw ioError(file, "cannot stat", e);
    }
  }

  async read(file: string, offset: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new CkptError("INTERNAL", `bad read range offset=${offset} length=${length}`, { file });
    }
    const buf = Buffer.allocUnsafe(length);
    if (length === 0) return buf;
    const fh = await this.handle(file);
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        ({ bytesRead: n } = await fh.read(buf, done, length - done, offset + done));
      } catch (e) {
        throw ioError(file, `read of ${length} bytes at offset ${offset} failed`, e);
      }
      if (n === 0) {
        throw new CkptError(
          "IO",
          `short read: wanted ${length} bytes at offset ${offset}, got ${done} (file truncated or changed?)`,
          { file },
        );
      }
      done += n;
    }
    return buf;
  }

  async readText(file: string): Promise<string | undefined> {
    if (this.single && file !== this.names[0]) return undefined;
    let path: string;
    try {
      path = this.localPath(file);
    } catch (e) {
      if (e instanceof CkptError && (e.code === "NOT_FOUND" || e.code === "OFFLINE")) return undefined;
      throw e;
    }
    try {
      return await fsp.readFile(path, "utf8");
    } catch (e) {
      if (errCode(e) === "ENOENT") return undefined;
      throw ioError(file, "cannot read", e);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    const hs = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(hs.map((p) => p.then((h) => h.close()).catch(() => undefined)));
  }
}

/** Opens `folder` as a Source. Used for plain folders and HF cache snapshots. */
export async function openFolder(folder: string, opts: FolderSourceOptions = {}): Promise<Source> {
  const root = resolve(folder);
  let realRoot: string;
  try {
    realRoot = await fsp.realpath(root);
  } catch (e) {
    if (errCode(e) === "ENOENT") throw new CkptError("NOT_FOUND", `no such folder: ${folder}`, { file: folder });
    throw ioError(folder, "cannot open folder", e);
  }
  let allowed = realRoot;
  const allowedRoot = opts.allowedRoot ?? hfSnapshotRepoDir(root);
  if (allowedRoot !== undefined) {
    try {
      allowed = await fsp.realpath(allowedRoot);
    } catch {
      allowed = realRoot;
    }
  }
  const names = await listFilesRecursive(root);
  const missing =
    opts.missing ??
    ((file: string) => new CkptError("NOT_FOUND", `no file '${file}' in ${opts.id ?? folder}`, { file }));
  const src = new LocalSource(
    root,
    realRoot,
    allowed,
    names,
    { id: opts.id ?? folder, kind: opts.kind ?? "folder", revision: opts.revision },
    false,
    missing,
  );
  return src;
}

/** A single file (kind "file", files() = [basename]) or a folder (kind "folder"). */
export async function openLocal(path: string, opts: { id?: string } = {}): Promise<Source> {
  let st: Stats;
  try {
    st = await fsp.stat(path);
  } catch (e) {
    if (errCode(e) === "ENOENT" || errCode(e) === "ENOTDIR") {
      throw new CkptError("NOT_FOUND", `no such file or folder: ${path}`, { file: path });
    }
    throw ioError(path, "cannot open", e);
  }
  if (st.isDirectory()) return openFolder(path, { id: opts.id ?? path });
  if (!st.isFile()) throw new CkptError("IO", `not a regular file or folder: ${path}`, { file: path });
  const abs = resolve(path);
  const real = await fsp.realpath(abs);
  const name = basename(abs);
  return new LocalSource(
    dirname(abs),
    real,
    real,
    [name],
    { id: opts.id ?? path, kind: "file" },
    true,
    (file) => new CkptError("NOT_FOUND", `no file '${file}' in ${opts.id ?? path} (a single-file source)`, { file }),
  );
}
