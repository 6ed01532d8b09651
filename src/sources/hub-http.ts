// Every HTTP request ckpt makes to the Hub goes through here (API calls through @huggingface/hub's `fetch` option,
// ranged reads and downloads directly): a bounded number in flight per process, transient failures (connection
// reset or refused, timeouts, 408/429/5xx, a body cut short) retried with exponential backoff and jitter, a stall
// timeout, and every body checked for its length. A dropped body is retried for the bytes still missing; a short
// body is never accepted. See docs/multi-machine.md "Network faults" for the settings.
import type { FileHandle } from "node:fs/promises";
import { CkptError } from "../errors.js";

type Env = Record<string, string | undefined>;

export interface RetryPolicy {
  /** Attempts in a row that bring no new byte before a request fails. */
  tries: number;
  /** A request fails once it has gone this long without a new byte, waits included. */
  deadlineMs: number;
  /** First backoff delay; doubled after each failed attempt, up to maxBackoffMs; each delay is jittered down by ≤ 50%. */
  backoffMs: number;
  maxBackoffMs: number;
  /** An attempt that waits this long for its headers or for the next body bytes is aborted and retried. */
  stallMs: number;
  /** Hub requests in flight at once in this process. */
  concurrency: number;
}

export const DEFAULT_RETRY: RetryPolicy = { tries: 10, deadlineMs: 600_000, backoffMs: 500, maxBackoffMs: 30_000, stallMs: 60_000, concurrency: 8 };

/** The environment variables that override DEFAULT_RETRY (times in seconds). */
export const RETRY_ENV = {
  tries: "CKPT_HUB_TRIES",
  deadlineMs: "CKPT_HUB_DEADLINE",
  backoffMs: "CKPT_HUB_BACKOFF",
  maxBackoffMs: "CKPT_HUB_BACKOFF_MAX",
  stallMs: "CKPT_HUB_TIMEOUT",
  concurrency: "CKPT_HUB_CONCURRENCY",
} as const satisfies Record<keyof RetryPolicy, string>;

/** DEFAULT_RETRY, then the CKPT_HUB_* variables of `env`, then `overrides`. A malformed variable is a USAGE error naming it. */
export function retryPolicy(env: Env, overrides: Partial<RetryPolicy> = {}): RetryPolicy {
  const p: RetryPolicy = { ...DEFAULT_RETRY };
  for (const [key, name] of Object.entries(RETRY_ENV) as [keyof RetryPolicy, string][]) {
    const raw = env[name]?.trim();
    if (raw === undefined || raw === "") continue;
    const count = key === "tries" || key === "concurrency";
    const v = Number(raw);
    if (!Number.isFinite(v) || (count ? !Number.isInteger(v) || v < 1 : v < 0)) {
      throw new CkptError("USAGE", `${name}=${raw}: expected ${count ? "a positive integer" : "a number of seconds ≥ 0"}`);
    }
    p[key] = count ? v : Math.round(v * 1000);
  }
  return { ...p, ...overrides };
}

/** What this process's Hub requests did, for the closing note of a run. */
export interface HubStats {
  /** HTTP requests sent (every attempt counts). */
  requests: number;
  /** Attempts that failed transiently and were tried again. */
  retried: number;
  /** Bodies that ended early or broke off mid-transfer. */
  dropped: number;
  /** Connections reset or refused before an answer. */
  resets: number;
  /** 429 answers. */
  throttled: number;
  /** 408 and 5xx answers. */
  serverErrors: number;
  /** Attempts aborted for waiting longer than the stall timeout. */
  timeouts: number;
  /** Requests that failed for good. */
  failed: number;
  /** Body bytes received. */
  bytes: number;
}

const emptyStats = (): HubStats => ({ requests: 0, retried: 0, dropped: 0, resets: 0, throttled: 0, serverErrors: 0, timeouts: 0, failed: 0, bytes: 0 });
let stats = emptyStats();

export function hubStats(): HubStats {
  return { ...stats };
}

export function resetHubStats(): void {
  stats = emptyStats();
}

/** "123 requests (7 retried: 3 dropped mid-body, 2 × 429, 2 × 5xx), 4.1 MB received" */
export function describeHubStats(s: HubStats): string {
  const causes = [
    s.dropped && `${s.dropped} dropped mid-body`,
    s.resets && `${s.resets} reset/refused`,
    s.throttled && `${s.throttled} × 429`,
    s.serverErrors && `${s.serverErrors} × 5xx/408`,
    s.timeouts && `${s.timeouts} timed out`,
  ].filter(Boolean);
  return `${s.requests} request(s) (${s.retried} retried${causes.length ? `: ${causes.join(", ")}` : ""}${s.failed ? `; ${s.failed} failed` : ""}), ${s.bytes} bytes received`;
}

type FaultKind = "dropped" | "reset" | "throttled" | "server" | "timeout";

/** A failure worth another attempt. */
class Transient extends Error {
  constructor(message: string, readonly kind: FaultKind, readonly retryAfterMs?: number, readonly statusCode?: number) {
    super(message);
  }
}

/** An error of our own side while a body streams in (a full disk): never retried. */
class NotRetryable extends Error {
  constructor(readonly inner: unknown) {
    super("not retryable");
  }
}

/**
 * A request that failed: an answer that is not worth retrying (`statusCode` set, as on @huggingface/hub's
 * HubApiError), or transient failures until the policy's tries or deadline ran out (`gaveUp`).
 */
export class HubHttpError extends Error {
  constructor(message: string, readonly statusCode?: number, readonly gaveUp?: { tries: number; seconds: number; kind: FaultKind; code?: string }) {
    super(message);
    this.name = "HubHttpError";
  }

  /** True when no attempt ever got an answer from the server (DNS, refused, reset before headers). */
  get unreachable(): boolean {
    return this.gaveUp?.kind === "reset" && this.statusCode === undefined;
  }
}

/** Codes of connection failures that a later attempt may not meet. ENOTFOUND (a wrong host name) is not one. */
const TRANSIENT_CODES = new Set([
  "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN", "EAI_AGAIN",
  "UND_ERR_SOCKET", "UND_ERR_CONNECT_TIMEOUT", "UND_ERR_HEADERS_TIMEOUT", "UND_ERR_BODY_TIMEOUT", "UND_ERR_CLOSED", "UND_ERR_ABORTED",
]);

function errorCode(e: unknown): string | undefined {
  for (let x: unknown = e, i = 0; x && typeof x === "object" && i < 4; x = (x as { cause?: unknown }).cause, i++) {
    const c = (x as { code?: unknown }).code;
    if (typeof c === "string") return c;
  }
  return undefined;
}

export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status !== 501 && status !== 505);
}

/** Retry-After as milliseconds (delay-seconds or an HTTP date), undefined when absent or unreadable. */
export function parseRetryAfter(v: string | null, now = Date.now()): number | undefined {
  if (v === null || v.trim() === "") return undefined;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - now);
}

async function errorText(res: Response): Promise<string> {
  const header = res.headers.get("x-error-message");
  let body = "";
  try {
    body = (await res.text()).slice(0, 300);
  } catch {
    /* the status says enough */
  }
  // the JSON body's `error` first (what @huggingface/hub reports), else the header, else the body as it is
  let detail = "";
  try {
    const j = JSON.parse(body) as { error?: unknown };
    if (typeof j.error === "string") detail = j.error;
  } catch {
    /* not JSON */
  }
  detail ||= header ?? body;
  return `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ""}${detail ? `: ${detail.replace(/\s+/g, " ").trim()}` : ""}`;
}

async function transientOf(res: Response): Promise<Transient> {
  const kind = res.status === 429 ? "throttled" : "server";
  return new Transient(await errorText(res), kind, parseRetryAfter(res.headers.get("retry-after")), res.status);
}

// One gate for the whole process: every Hub request of every source waits for a slot.
const gate = { limit: DEFAULT_RETRY.concurrency, active: 0, queue: [] as (() => void)[] };

function pump(): void {
  while (gate.active < gate.limit && gate.queue.length > 0) {
    gate.active++;
    gate.queue.shift()!();
  }
}

async function acquire(limit: number): Promise<void> {
  gate.limit = limit;
  if (gate.active < gate.limit && gate.queue.length === 0) {
    gate.active++;
    return;
  }
  await new Promise<void>((resolve) => {
    gate.queue.push(resolve);
    pump();
  });
}

function release(): void {
  gate.active--;
  pump();
}

/** One attempt's abort signal and stall timer; `touch()` after each received chunk. */
class Attempt {
  readonly controller = new AbortController();
  stalled = false;
  progressed = false;
  private timer: NodeJS.Timeout | undefined;
  constructor(private readonly stallMs: number, outer?: AbortSignal | null) {
    if (outer) {
      if (outer.aborted) this.controller.abort(outer.reason);
      else outer.addEventListener("abort", () => this.controller.abort(outer.reason), { once: true });
    }
    this.touch();
  }
  get signal(): AbortSignal {
    return this.controller.signal;
  }
  touch(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.stalled = true;
      this.controller.abort(new Error("stalled"));
    }, this.stallMs);
    this.timer.unref();
  }
  done(): void {
    clearTimeout(this.timer);
  }
}

function classify(e: unknown, a: Attempt, stallMs: number, midBody: boolean): Transient | undefined {
  if (e instanceof Transient) return e;
  if (a.stalled) return new Transient(`no data for ${stallMs / 1000} s`, "timeout");
  if (e instanceof HubHttpError || e instanceof CkptError) return undefined;
  const code = errorCode(e);
  const msg = e instanceof Error ? e.message : String(e);
  if (midBody) return new Transient(`connection dropped mid-body${code ? ` (${code})` : `: ${msg}`}`, "dropped");
  if (code !== undefined && TRANSIENT_CODES.has(code)) {
    const t = new Transient(`connection failed (${code})`, "reset");
    (t as { code?: string }).code = code;
    return t;
  }
  return undefined;
}

function backoff(p: RetryPolicy, failures: number): number {
  const d = Math.min(p.maxBackoffMs, p.backoffMs * 2 ** (failures - 1));
  return d / 2 + Math.random() * (d / 2);
}

/** Waits `ms`, or rejects as soon as `signal` aborts (Ctrl-C must not wait out a backoff). */
function sleep(ms: number, signal: AbortSignal | null | undefined): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Runs `attempt` until it succeeds, fails for good, or the policy runs out. `attempt` marks `a.progressed` when
 * it received new bytes (which restarts the count of tries and the deadline) and reports where it failed.
 */
async function retrying<T>(p: RetryPolicy, outer: AbortSignal | null | undefined, attempt: (a: Attempt, state: { midBody: boolean }) => Promise<T>): Promise<T> {
  let failures = 0;
  let since = Date.now();
  for (;;) {
    if (outer?.aborted) throw outer.reason;
    await acquire(p.concurrency);
    const a = new Attempt(p.stallMs, outer);
    const state = { midBody: false };
    let t: Transient | undefined;
    try {
      stats.requests++;
      return await attempt(a, state);
    } catch (e) {
      if (e instanceof NotRetryable) {
        stats.failed++;
        throw e.inner;
      }
      if (outer?.aborted) throw e;
      t = classify(e, a, p.stallMs, state.midBody);
      if (!t) {
        stats.failed++;
        throw e;
      }
    } finally {
      a.done();
      release();
    }
    if (a.progressed) {
      failures = 0;
      since = Date.now();
    }
    failures++;
    if (t.kind === "dropped") stats.dropped++;
    else if (t.kind === "reset") stats.resets++;
    else if (t.kind === "throttled") stats.throttled++;
    else if (t.kind === "server") stats.serverErrors++;
    else stats.timeouts++;
    const delay = t.retryAfterMs ?? backoff(p, failures);
    const waited = Date.now() - since;
    if (failures >= p.tries || waited + delay > p.deadlineMs) {
      stats.failed++;
      const why = failures >= p.tries ? `${failures} tries` : `${(waited / 1000).toFixed(1)} s without progress${t.retryAfterMs !== undefined ? ` (the server asked to wait ${t.retryAfterMs / 1000} s more)` : ""}`;
      throw new HubHttpError(`gave up after ${why}: ${t.message}`, t.statusCode, { tries: failures, seconds: waited / 1000, kind: t.kind, code: (t as { code?: string }).code });
    }
    stats.retried++;
    await sleep(delay, outer);
  }
}

/** A non-retryable answer as an error carrying its status (401/403/404 get hints from the caller). */
async function fatal(res: Response): Promise<HubHttpError> {
  return new HubHttpError(await errorText(res), res.status);
}

/** Reads a body into `sink`, touching the stall timer per chunk; returns the byte count. */
async function drain(res: Response, a: Attempt, state: { midBody: boolean }, sink: (chunk: Uint8Array) => Promise<void> | void): Promise<number> {
  if (!res.body) return 0;
  const reader = res.body.getReader();
  let n = 0;
  state.midBody = true;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      a.touch();
      n += value.byteLength;
      stats.bytes += value.byteLength;
      try {
        await sink(value);
      } catch (e) {
        throw new NotRetryable(e);
      }
    }
  } finally {
    reader.releaseLock();
  }
  state.midBody = false;
  return n;
}

/**
 * A `fetch` for @huggingface/hub's API calls (model info, tree listing): retried like the rest, and the whole body
 * read here (API bodies are small), so a body that breaks off is retried instead of failing the library's JSON parse.
 */
export function apiFetch(p: RetryPolicy, signal?: AbortSignal): typeof fetch {
  return (input, init) => retrying(p, init?.signal ?? signal, async (a, state) => {
    const res = await fetch(input, { ...init, signal: a.signal });
    if (isRetryableStatus(res.status)) throw await transientOf(res);
    const parts: Uint8Array[] = [];
    await drain(res, a, state, (c) => void parts.push(c));
    const expect = res.headers.get("content-length");
    const body = Buffer.concat(parts);
    if (expect !== null && res.headers.get("content-encoding") === null && body.length !== Number(expect)) {
      throw new Transient(`body ended after ${body.length} of ${expect} bytes`, "dropped");
    }
    const empty = res.status === 204 || res.status === 205 || res.status === 304;
    return new Response(empty ? null : body, { status: res.status, statusText: res.statusText, headers: res.headers });
  });
}

function authHeaders(token: string | undefined): Record<string, string> {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Checks a 206 answer covers exactly bytes [from, to]; anything else is an error (never silently misplaced bytes). */
async function checkRange(res: Response, from: number, to: number, size: number | undefined): Promise<void> {
  if (res.status === 200 && from === 0 && size !== undefined && to === size - 1) return; // whole file asked, whole file sent
  if (res.status !== 206) {
    if (res.ok) throw new HubHttpError(`asked for bytes ${from}-${to}, the server answered HTTP ${res.status} without a range`, res.status);
    throw await fatal(res);
  }
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
  if (!m || Number(m[1]) !== from || Number(m[2]) !== to) {
    throw new HubHttpError(`asked for bytes ${from}-${to}, the server sent Content-Range '${res.headers.get("content-range") ?? ""}'`, res.status);
  }
}

export interface RangeRequest {
  url: string;
  token?: string;
  policy: RetryPolicy;
  /** Size of the whole file, when known (lets a whole-file request accept a 200). */
  size?: number;
  /** Aborts the request, its retries and their waits. */
  signal?: AbortSignal;
}

/** Bytes [start, start + length) of `url`, retried until every byte arrived (resuming after what a dropped body brought). */
export async function readRange(req: RangeRequest, start: number, length: number): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  if (length === 0) return out;
  let got = 0;
  await retrying(req.policy, req.signal, async (a, state) => {
    const from = start + got;
    const to = start + length - 1;
    const res = await fetch(req.url, { headers: { ...authHeaders(req.token), Range: `bytes=${from}-${to}`, "Accept-Encoding": "identity" }, signal: a.signal });
    if (isRetryableStatus(res.status)) throw await transientOf(res);
    await checkRange(res, from, to, req.size);
    await drain(res, a, state, (c) => {
      if (got + c.byteLength > length) throw new HubHttpError(`asked for ${length} bytes at offset ${start}, the server sent more`);
      out.set(c, got);
      got += c.byteLength;
      a.progressed = true;
    });
    if (got < length) throw new Transient(`body ended after ${got} of ${length} bytes`, "dropped");
  });
  return out;
}

/**
 * Writes all `size` bytes of `url` into `file`, continuing after the `have` bytes it already holds (a partial
 * download of an earlier run, or of an earlier attempt) with a Range request. Returns when the file is complete.
 */
export async function downloadRange(req: RangeRequest & { size: number }, file: FileHandle, have: number, onBytes?: (n: number) => void): Promise<void> {
  let pos = have;
  if (pos >= req.size) return;
  await retrying(req.policy, req.signal, async (a, state) => {
    const from = pos;
    const to = req.size - 1;
    const res = await fetch(req.url, { headers: { ...authHeaders(req.token), Range: `bytes=${from}-${to}`, "Accept-Encoding": "identity" }, signal: a.signal });
    if (isRetryableStatus(res.status)) throw await transientOf(res);
    await checkRange(res, from, to, req.size);
    await drain(res, a, state, async (c) => {
      if (pos + c.byteLength > req.size) throw new HubHttpError(`the server sent more than the ${req.size} bytes the Hub lists`);
      await file.write(c, 0, c.byteLength, pos);
      pos += c.byteLength;
      a.progressed = true;
      onBytes?.(c.byteLength);
    });
    if (pos < req.size) throw new Transient(`body ended at byte ${pos} of ${req.size}`, "dropped");
  });
}
