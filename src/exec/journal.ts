// Resume journal: `<out>.partial/.ckpt-journal`, an append-only text file (O_APPEND) recording every output
// piece the executor has finished writing, so `--resume` can skip it after a crash or `kill -9`.
//
//   ckpt-journal v1 plan=<sha256 of the plan> pieces=<count>
//   <piece index> <crc32 hex> <bytes> <f16 overflow count> <digest hex (xxh128 or sha256, as planned) | ->
//
// A record is appended only after the piece's pwrite returned, so after a process kill every journaled piece is
// in the page cache. The journal is fsynced at most once a second (not per piece) and the data files are not
// fsynced until commit, so after a power loss a journaled piece may be missing: that is why a resumed run
// re-reads and re-hashes every journaled piece from disk before trusting it (see executor.ts), and redoes any
// piece whose bytes do not match. A torn last line (kill during the append) is ignored.
import { closeSync, existsSync, fsyncSync, ftruncateSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeSync } from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";

export const JOURNAL_FILE = ".ckpt-journal";
const MAGIC = "ckpt-journal v1";
const SYNC_INTERVAL_MS = 1000;

export interface JournalRecord {
  piece: number;
  crc: number;
  bytes: number;
  f16Overflow: number;
  /** Hex digest of the piece (the algorithm is part of the plan fingerprint). */
  digest?: string;
}

/** sha256 of a canonical JSON rendering (object keys sorted), for plan fingerprints. */
export function fingerprint(value: unknown): string {
  const canon = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(canon);
    if (v instanceof Map) return [...v.entries()].map(([k, x]) => [canon(k), canon(x)]);
    if (Buffer.isBuffer(v) || v instanceof Uint8Array) return { $sha256: createHash("sha256").update(v).digest("hex") };
    if (v && typeof v === "object") {
      const o = v as Record<string, unknown>;
      return Object.fromEntries(Object.keys(o).sort().filter((k) => o[k] !== undefined && typeof o[k] !== "function").map((k) => [k, canon(o[k])]));
    }
    return v;
  };
  return createHash("sha256").update(JSON.stringify(canon(value))).digest("hex");
}

const RECORD = /^(\d+) ([0-9a-f]{8}) (\d+) (\d+) ([0-9a-f]{32}|[0-9a-f]{64}|-)$/;

/** Parses journal text; undefined when the header is missing or names another plan. Torn/garbled lines are skipped. */
export function parseJournal(text: string, plan: string, pieceCount: number): { records: Map<number, JournalRecord>; validLength: number } | undefined {
  const nl = text.indexOf("\n");
  if (nl < 0) return undefined;
  if (text.slice(0, nl) !== `${MAGIC} plan=${plan} pieces=${pieceCount}`) return undefined;
  const records = new Map<number, JournalRecord>();
  let pos = nl + 1;
  for (;;) {
    const end = text.indexOf("\n", pos);
    if (end < 0) break; // torn tail
    const m = RECORD.exec(text.slice(pos, end));
    pos = end + 1;
    if (!m) continue;
    const piece = Number(m[1]);
    if (!Number.isSafeInteger(piece) || piece >= pieceCount) continue;
    records.set(piece, { piece, crc: parseInt(m[2]!, 16) >>> 0, bytes: Number(m[3]), f16Overflow: Number(m[4]), digest: m[5] === "-" ? undefined : m[5] });
  }
  return { records, validLength: Buffer.byteLength(text.slice(0, pos)) };
}

export class Journal {
  private lastSync = Date.now();
  private dirty = false;
  private constructor(
    readonly path: string,
    private fd: number | undefined,
    /** Records found in an earlier run's journal (empty for a fresh one). */
    readonly previous: Map<number, JournalRecord>,
    /** True when an earlier journal for the same plan was found and continued. */
    readonly resumed: boolean,
  ) {}

  /**
   * Opens the journal in `dir`. With `resume`, an existing journal written for the same plan is continued (its
   * records returned in `previous`); anything else (no journal, another plan, unreadable) starts a fresh one and
   * says why in `note` when there was something to resume.
   */
  static open(dir: string, plan: string, pieceCount: number, resume: boolean): { journal: Journal; note?: string } {
    const path = join(dir, JOURNAL_FILE);
    let note: string | undefined;
    if (resume && existsSync(path)) {
      let text: string | undefined;
      try {
        text = readFileSync(path, "latin1");
      } catch {
        text = undefined;
      }
      const parsed = text !== undefined ? parseJournal(text, plan, pieceCount) : undefined;
      if (parsed) {
        const fd = openSync(path, "r+");
        try {
          ftruncateSync(fd, parsed.validLength); // drop a torn last line before appending
        } finally {
          closeSync(fd);
        }
        return { journal: new Journal(path, openSync(path, "a"), parsed.records, true) };
      }
      note = "the partial output was written for a different plan (source, options or tool version changed); starting over";
    } else if (resume) {
      note = existsSync(dir) && readdirSync(dir).length > 0 ? "no resume journal in the partial output; starting over" : undefined;
    }
    const fd = openSync(path, "w");
    writeSync(fd, `${MAGIC} plan=${plan} pieces=${pieceCount}\n`);
    fsyncSync(fd);
    closeSync(fd);
    return { journal: new Journal(path, openSync(path, "a"), new Map(), false), note };
  }

  /** Appends records (one write call: O_APPEND keeps lines whole); fsyncs at most once a second. */
  append(recs: JournalRecord[]): void {
    if (this.fd === undefined || recs.length === 0) return;
    const text = recs.map((r) => `${r.piece} ${(r.crc >>> 0).toString(16).padStart(8, "0")} ${r.bytes} ${r.f16Overflow} ${r.digest ?? "-"}\n`).join("");
    writeSync(this.fd, text);
    this.dirty = true;
    if (Date.now() - this.lastSync >= SYNC_INTERVAL_MS) this.sync();
  }

  sync(): void {
    if (this.fd === undefined || !this.dirty) return;
    fsyncSync(this.fd);
    this.dirty = false;
    this.lastSync = Date.now();
  }

  close(): void {
    if (this.fd === undefined) return;
    try {
      this.sync();
    } finally {
      closeSync(this.fd);
      this.fd = undefined;
    }
  }

  /** Closes and deletes the journal (the run is complete; the journal must not ship with the output). */
  remove(): void {
    try {
      this.close();
    } catch {
      // closing a journal about to be deleted: nothing worth reporting
    }
    rmSync(this.path, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Source stamps: size and modification time of every local source file, taken before the run and compared after
// it (a file replaced or rewritten mid-run would make the output a mix of two checkpoints). They also go into the
// plan fingerprint, so a journal never resumes over a source that changed between the runs.

export interface SourceStamp {
  size: number;
  mtimeMs: number;
  ino: number;
}

export function stampFiles(files: Iterable<string>, localPath: (f: string) => string | undefined): Map<string, SourceStamp> {
  const out = new Map<string, SourceStamp>();
  for (const f of files) {
    try {
      const p = localPath(f);
      if (!p) continue;
      const st = statSync(p);
      out.set(f, { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino });
    } catch {
      // unreadable or refused files are reported by whoever reads them
    }
  }
  return out;
}

/** First difference between two stamp sets, as a sentence, or undefined when none changed. */
export function stampChange(before: Map<string, SourceStamp>, localPath: (f: string) => string | undefined): { file: string; why: string } | undefined {
  for (const [f, a] of before) {
    let b: SourceStamp | undefined;
    try {
      const p = localPath(f);
      if (p) {
        const st = statSync(p);
        b = { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino };
      }
    } catch {
      b = undefined;
    }
    if (!b) return { file: f, why: "was deleted during the run" };
    if (b.size !== a.size) return { file: f, why: `changed size during the run (${a.size} → ${b.size} bytes)` };
    if (b.mtimeMs !== a.mtimeMs || b.ino !== a.ino) return { file: f, why: `was modified during the run (mtime ${new Date(a.mtimeMs).toISOString()} → ${new Date(b.mtimeMs).toISOString()})` };
  }
  return undefined;
}
