// Where checkpoint bytes come from. Every source resolves to files that can be read by positional reads;
// local kinds also expose a filesystem path so worker threads can pread them directly.

export type SourceKind = "file" | "folder" | "hf-cache" | "hub";

export interface Source {
  /** What the user named (path, or `org/name@rev`), safe to print (never holds a token). */
  readonly id: string;
  readonly kind: SourceKind;
  /** Resolved revision (commit sha) for Hub / HF-cache sources. */
  readonly revision?: string;
  /** Files the source offers, relative names with `/` separators (e.g. `model-00001-of-00002.safetensors`). */
  files(): string[];
  /** Absolute local path of a file, when the bytes are on local disk (always for file/folder/hf-cache). */
  localPath(file: string): string | undefined;
  size(file: string): Promise<number>;
  /** Exactly `length` bytes at `offset`; short reads are an IO error naming the file. */
  read(file: string, offset: number, length: number): Promise<Buffer>;
  /** Whole small file as text (config.json, index), or undefined when the source has no such file. */
  readText(file: string): Promise<string | undefined>;
  close(): Promise<void>;
}
