// Kernel throughput next to memcpy (Buffer.copy) of the same traffic, measured in the same run.
// Throughput counts bytes read + bytes written per second; memcpy of k bytes moves 2k. ratio = kernel / memcpy.
// Kernels over values (the requantization encoders) also report CPU ns per value encoded (best run).

import type { CastableDType } from "../dtypes.js";
import { referenceKernels, ropeRowIndex, type Kernels } from "./index.js";
import { loadNative, nativeKernelsFrom } from "./native.js";
import { CAST_SIZE } from "./reference.js";

export interface BenchRow {
  kernel: string;
  impl: string;
  gbps: number;
  memcpyGbps: number;
  ratio: number;
  /** CPU nanoseconds per value (best run), for kernels measured per value (the encoders). */
  nsPerValue?: number;
}

export interface BenchOptions {
  /** Approximate size of the largest buffer per kernel (default 64 MiB). */
  bytes?: number;
  /** Time budget per measurement (default 0.4 s). */
  seconds?: number;
  /** Implementations to measure (default: native when built, and typescript). */
  impls?: ("native" | "typescript")[];
}

interface Case {
  kernel: string;
  /** Bytes read + written by one run. */
  traffic: number;
  /** Values one run processes, when ns per value is reported. */
  values?: number;
  run(k: Kernels): void;
}

function fillRandom(buf: Uint8Array, seed: number): void {
  let x = seed >>> 0 || 1;
  const n4 = buf.byteLength >>> 2;
  const u32 = buf.byteOffset % 4 === 0 ? new Uint32Array(buf.buffer, buf.byteOffset, n4) : undefined;
  if (u32) {
    for (let i = 0; i < n4; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; u32[i] = x >>> 0; }
    for (let i = n4 * 4; i < buf.byteLength; i++) buf[i] = i & 0xff;
  } else {
    for (let i = 0; i < buf.byteLength; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; buf[i] = x & 0xff; }
  }
}

/** Finite random values of dtype d (bit patterns that are NaN/inf are replaced), so paths are realistic. */
function randomTensor(d: CastableDType, n: number, seed: number): Uint8Array {
  const buf = new Uint8Array(n * CAST_SIZE[d]);
  if (d === "F32") {
    const f = new Float32Array(buf.buffer);
    let x = seed;
    for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) >>> 0; f[i] = ((x / 4294967296) - 0.5) * 4; }
  } else if (d === "BF16" || d === "F16") {
    fillRandom(buf, seed);
    const u = new Uint16Array(buf.buffer);
    const expMask = d === "BF16" ? 0x7f80 : 0x7c00;
    for (let i = 0; i < n; i++) if ((u[i]! & expMask) === expMask) u[i] = u[i]! & ~0x4000;
  } else {
    fillRandom(buf, seed);
    for (let i = 0; i < n; i++) if ((buf[i]! & 0x7f) >= 0x7c) buf[i] = buf[i]! & 0xbf;
  }
  return buf;
}

/** Best wall seconds of one run, and best CPU seconds (this process; the kernels are single-threaded). */
function timeBestCpu(fn: () => void, seconds: number, minIters = 3): { wall: number; cpu: number } {
  fn(); // warm-up: page faults, lazy tables
  let best = Infinity, bestCpu = Infinity;
  const deadline = performance.now() + seconds * 1000;
  let iters = 0;
  do {
    const t0 = performance.now(), c0 = process.cpuUsage();
    fn();
    const dt = (performance.now() - t0) / 1000, c = process.cpuUsage(c0);
    if (dt < best) best = dt;
    bestCpu = Math.min(bestCpu, (c.user + c.system) / 1e6);
    iters++;
  } while (performance.now() < deadline || iters < minIters);
  return { wall: best, cpu: bestCpu };
}

function timeBest(fn: () => void, seconds: number, minIters = 3): number {
  return timeBestCpu(fn, seconds, minIters).wall;
}

function castCase(s: CastableDType, d: CastableDType, bytes: number): Case {
  const n = Math.floor(bytes / Math.max(CAST_SIZE[s], CAST_SIZE[d]));
  const src = randomTensor(s, n, 7);
  const dst = new Uint8Array(n * CAST_SIZE[d]).fill(1);
  const name = (x: CastableDType) => x.toLowerCase();
  return {
    kernel: `cast ${name(s)}->${name(d)}`,
    traffic: src.byteLength + dst.byteLength,
    run: (k) => k.cast(src, s, dst, d, n),
  };
}

function cases(bytes: number): Case[] {
  // Matrix kernels use their realistic shapes at the default 64 MiB and shrink their row count with `bytes`.
  const rowsFor = (full: number) => Math.max(128, Math.min(full, Math.round((full * bytes) / (64 * 1024 * 1024) / 128) * 128));
  const out: Case[] = [
    castCase("BF16", "F32", bytes),
    castCase("F32", "BF16", bytes),
    castCase("F16", "F32", bytes),
    castCase("F32", "F16", bytes),
    castCase("BF16", "F16", bytes),
    castCase("F32", "F8_E4M3", bytes),
    castCase("F8_E4M3", "BF16", bytes),
  ];
  {
    // q/k RoPE permutation of a [4096 x 2048] bf16 matrix (32 heads of head_dim 128).
    const rows = rowsFor(4096), cols = 2048;
    const src = randomTensor("BF16", rows * cols, 3);
    const dst = new Uint8Array(src.byteLength).fill(1);
    const idx = ropeRowIndex(rows / 128, 128, "hf_to_tt");
    out.push({ kernel: `rope permute bf16 [${rows}x${cols}]`, traffic: 2 * src.byteLength, run: (k) => k.gatherRows(src, "BF16", cols, idx, 0, cols, dst, "BF16") });
    const dst32 = new Uint8Array(src.byteLength * 2).fill(1);
    out.push({ kernel: "rope permute bf16->f32", traffic: src.byteLength + dst32.byteLength, run: (k) => k.gatherRows(src, "BF16", cols, idx, 0, cols, dst32, "F32") });
  }
  {
    // Shard(1) slice: columns [1024, 3072) of a [4096 x 4096] bf16 matrix (tp = 2, rank 1 of a 4-way split).
    const rows = rowsFor(4096), cols = 4096, c0 = 1024, cw = 2048;
    const src = randomTensor("BF16", rows * cols, 5);
    const dst = new Uint8Array(rows * cw * 2).fill(1);
    const idx = new Int32Array(rows).map((_, i) => i);
    out.push({ kernel: `slice2d bf16 cols [${rows}x${cols}]->[${rows}x${cw}]`, traffic: 2 * dst.byteLength, run: (k) => k.gatherRows(src, "BF16", cols, idx, c0, cw, dst, "BF16") });
  }
  {
    // DeepSeek-V3 style FP8 block dequant of a [4096 x 4096] e4m3 weight to bf16, block 128.
    const rows = rowsFor(4096), cols = 4096, block = 128;
    const w = randomTensor("F8_E4M3", rows * cols, 9);
    const sc = new Float32Array((rows / block) * (cols / block)).map((_, i) => 1 / (1 + (i % 97)));
    const scale = new Uint8Array(sc.buffer);
    const dst = new Uint8Array(rows * cols * 2).fill(1);
    out.push({ kernel: `dequant e4m3->bf16 [${rows}x${cols}]`, traffic: w.byteLength + dst.byteLength, run: (k) => k.dequantBlock(w, "F8_E4M3", rows, cols, 0, 0, scale, cols / block, block, dst, "BF16") });
  }
  {
    const n = Math.floor(bytes / 2);
    const src = randomTensor("BF16", n, 11);
    out.push({ kernel: "stats bf16", traffic: src.byteLength, run: (k) => void k.stats(src, "BF16", n) });
    const n32 = Math.floor(bytes / 4);
    const src32 = randomTensor("F32", n32, 13);
    out.push({ kernel: "stats f32", traffic: src32.byteLength, run: (k) => void k.stats(src32, "F32", n32) });
  }
  out.push(...encodeCases(bytes));
  return out;
}

/**
 * The requantization encoders on f32 values that hold only quantized values (the `--requantize` case: every group
 * encodes), `bytes` of values each: gpt-oss expert rows (2880 wide) in MXFP4, Kimi K2 rows (7168 wide, group 32) in
 * INT4; each also with the source's encoding as the reference (compared group by group, nothing to adopt).
 */
function encodeCases(bytes: number): Case[] {
  const rand = (seed: number) => () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const out: Case[] = [];
  {
    const cols = 2880, rows = Math.max(1, Math.floor(bytes / 4 / cols)), G = rows * (cols / 32), r = rand(17);
    const blocks = new Uint8Array(G * 16).map(() => Math.floor(r() * 256)), scales = new Uint8Array(G).map(() => 110 + Math.floor(r() * 20));
    const v = new Float32Array(rows * cols);
    referenceKernels.mxfp4Decode(blocks, scales, rows, cols, 0, cols / 2, cols / 32, new Uint8Array(v.buffer), "F32");
    const traffic = v.byteLength + G * 17;
    out.push({ kernel: `mxfp4 encode f32 [${rows}x${cols}]`, traffic, values: v.length, run: (k) => void k.mxfp4Encode(v, rows, cols, "F32") });
    out.push({ kernel: "mxfp4 encode f32, reference", traffic: traffic + G * 17, values: v.length, run: (k) => void k.mxfp4Encode(v, rows, cols, "F32", { blocks, scales }) });
  }
  {
    const cols = 7168, group = 32, rows = Math.max(1, Math.floor(bytes / 4 / cols)), W = cols / 8, S = cols / group, r = rand(19);
    const words = new Uint32Array(rows * W).map(() => Math.floor(r() * 2 ** 32));
    const sc = new Uint16Array(rows * S).map(() => ((118 + Math.floor(r() * 8)) << 7) | Math.floor(r() * 128));
    const sf = new Float32Array(new Uint32Array(sc).map((b) => b << 16).buffer); // the BF16 scales as f32
    const v = new Float32Array(rows * cols);
    for (let i = 0; i < v.length; i++) {
      const row = Math.floor(i / cols), c = i % cols;
      v[i] = (((words[row * W + (c >> 3)]! >>> (4 * (c & 7))) & 15) - 8) * sf[row * S + Math.floor(c / group)]!;
    }
    const ref = { packed: new Uint8Array(words.buffer), scale: new Uint8Array(sc.buffer) };
    const traffic = v.byteLength + rows * (W * 4 + S * 3);
    out.push({ kernel: `int4 encode f32 [${rows}x${cols}] g${group}`, traffic, values: v.length, run: (k) => void k.int4Encode(v, rows, cols, group, "F32") });
    out.push({ kernel: "int4 encode f32, reference", traffic: traffic + rows * (W * 4 + S * 2), values: v.length, run: (k) => void k.int4Encode(v, rows, cols, group, "F32", ref) });
  }
  return out;
}

/** Measures every kernel for each implementation; memcpy is measured right before each row with equal traffic. */
export async function benchKernels(opts: BenchOptions = {}): Promise<BenchRow[]> {
  const bytes = opts.bytes ?? 64 * 1024 * 1024;
  const seconds = opts.seconds ?? 0.4;
  const impls: { label: string; k: Kernels }[] = [];
  const addon = loadNative();
  const want = opts.impls ?? ["native", "typescript"];
  if (want.includes("native") && addon) impls.push({ label: `native(${addon.isa()})`, k: nativeKernelsFrom(addon) });
  if (want.includes("typescript")) impls.push({ label: "typescript", k: referenceKernels });

  const memcpyCache = new Map<number, number>();
  const memcpyGbps = (traffic: number): number => {
    // Reads traffic/2 bytes and writes traffic/2 bytes, like a kernel of equal traffic.
    const half = Math.max(1, Math.floor(traffic / 2));
    const cached = memcpyCache.get(half);
    if (cached !== undefined) return cached;
    const a = Buffer.alloc(half, 3), b = Buffer.alloc(half, 1);
    const t = timeBest(() => { a.copy(b, 0, 0, half); }, seconds);
    const g = (2 * half) / t / 1e9;
    memcpyCache.set(half, g);
    return g;
  };

  const rows: BenchRow[] = [];
  for (const c of cases(bytes)) {
    const mc = memcpyGbps(c.traffic);
    for (const { label, k } of impls) {
      // The TypeScript kernels are slow; one short measurement is enough for a ratio.
      const { wall: t, cpu } = k.name === "typescript" ? timeBestCpu(() => c.run(k), Math.min(seconds, 0.2), 1) : timeBestCpu(() => c.run(k), seconds);
      const gbps = c.traffic / t / 1e9;
      // per value in CPU time: on a shared machine the wall time of a run also counts the time it waits for a core
      rows.push({ kernel: c.kernel, impl: label, gbps, memcpyGbps: mc, ratio: gbps / mc, ...(c.values ? { nsPerValue: (cpu * 1e9) / c.values } : {}) });
    }
    await new Promise((r) => setImmediate(r)); // let the event loop breathe between kernels
  }
  return rows;
}

export function formatBenchTable(rows: BenchRow[]): string {
  const head = ["kernel", "impl", "GB/s", "memcpy GB/s", "ratio", "CPU ns/value"];
  const body = rows.map((r) => [r.kernel, r.impl, r.gbps.toFixed(2), r.memcpyGbps.toFixed(2), `${(r.ratio * 100).toFixed(0)}%`, r.nsPerValue !== undefined ? r.nsPerValue.toFixed(2) : ""]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i >= 2 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join("  ");
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...body.map(line)].join("\n");
}
