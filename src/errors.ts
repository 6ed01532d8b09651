// One closed set of error codes. Every failure the user can cause ends up as a CkptError: the CLI prints its
// message on one line and exits non-zero (stack only with --debug).

export const ERROR_CODES = {
  USAGE: "invalid command-line usage",
  NOT_FOUND: "file or folder not found",
  OUTPUT_EXISTS: "output already exists",
  IO: "I/O error",
  SAFETENSORS_HEADER: "malformed safetensors header",
  SAFETENSORS_DATA: "malformed safetensors data",
  INDEX: "malformed model.safetensors.index.json",
  CONFIG: "invalid or inconsistent config.json",
  PICKLE: "unsupported or malformed pickle",
  ZIP: "malformed torch.save archive",
  DCP: "malformed DCP checkpoint",
  MAPPING: "mapping error",
  UNSUPPORTED: "the target cannot express this model",
  UNMAPPED: "tensors without a mapping",
  MISSING_TENSOR: "expected tensor missing",
  SHAPE: "tensor shape mismatch",
  DTYPE: "unsupported dtype conversion",
  OVERFLOW: "values out of range for the target dtype",
  VALUE: "stored values contradict the format (non-finite scales, decoded NaN/inf, a shape tensor that lies)",
  REQUANTIZE: "values not exactly representable in the requested quantized layout",
  HUB: "Hugging Face Hub error",
  OFFLINE: "offline mode: file not in cache",
  VERIFY: "verification failed",
  HEALTH: "health check found problems",
  NATIVE: "native addon error",
  INTERRUPTED: "interrupted",
  SOURCE_CHANGED: "source changed during the run",
  INTERNAL: "internal error",
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class CkptError extends Error {
  readonly code: ErrorCode;
  readonly file?: string;
  readonly tensor?: string;
  readonly hint?: string;
  constructor(code: ErrorCode, message: string, opts: { file?: string; tensor?: string; hint?: string; cause?: unknown } = {}) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = "CkptError";
    this.code = code;
    this.file = opts.file;
    this.tensor = opts.tensor;
    this.hint = opts.hint;
  }

  /** The single line the CLI prints: code, where, what, and what to do. */
  oneLine(): string {
    const where = [this.file, this.tensor ? `tensor '${this.tensor}'` : undefined].filter(Boolean).join(": ");
    const hint = this.hint ? ` (${this.hint})` : "";
    return `ckpt: ${this.code}: ${where ? where + ": " : ""}${this.message}${hint}`;
  }
}

// Worker threads hand errors back through structured clone, which keeps an Error's message and drops everything
// else: an input error raised there travels as "[ckpt:CODE file@offset] message" and becomes a CkptError again in
// the executor, which names the source tensor holding that byte.
const WORKER_CODE = /^\[ckpt:([A-Z_]+)(?: (.+)@(\d+))?\] ([^]*)$/;

/** An input error raised where only plain Errors can travel (worker threads); `at`: the source byte it is about. */
export function workerInputError(code: ErrorCode, message: string, at?: { file: string; offset: number }): Error {
  return new Error(`[ckpt:${code}${at ? ` ${at.file}@${at.offset}` : ""}] ${message}`);
}

/** The CkptError a worker meant (workerInputError), or the error itself; `tensorAt` names the tensor holding a byte. */
export function fromWorkerError(e: unknown, tensorAt?: (file: string, offset: number) => string | undefined): unknown {
  if (e instanceof CkptError || !(e instanceof Error)) return e;
  const m = WORKER_CODE.exec(e.message);
  if (!m || !(m[1]! in ERROR_CODES)) return e;
  const tensor = m[2] !== undefined ? tensorAt?.(m[2], Number(m[3])) : undefined;
  return new CkptError(m[1] as ErrorCode, m[4]!, { cause: e, file: m[2], tensor });
}

export function isCkptError(e: unknown): e is CkptError {
  return e instanceof CkptError;
}

/** Removes things that look like Hugging Face tokens from any text about to be printed or stored. */
export function redactSecrets(text: string): string {
  return text.replace(/hf_[A-Za-z0-9]{6,}/g, "hf_***");
}
