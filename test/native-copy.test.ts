// The native lane (exec/native-copy.ts → the addon's copyPiece) against the TypeScript worker (runTask) on the same
// pieces: byte-identical output files, equal CRC-32 / XXH3-128 / F16-overflow counts. Independently of both, the
// output bytes are reassembled from the source (same-dtype runs: the source bytes; zero runs: zeros), the CRC is
// zlib's and the digest hash-wasm's over the bytes read back. Shapes cover what the write path meets: outputs at
// offsets off every block and element boundary (DCP blobs after a torch.save header), pieces across several 4 MiB
// windows, casts whose elements straddle a window edge, pieces too short for direct I/O, and direct I/O off.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { crc32 as zlibCrc32 } from "node:zlib";
import runTask, { type PieceTask, type WorkerTask } from "../src/exec/worker.js";
import { copyPiecesNative, nativeCopier, nativeEligible, NativeFiles } from "../src/exec/native-copy.js";
import { fallbackChecksums } from "../src/kernels/checksum.js";
import type { Run } from "../src/plan/runs.js";
import type { DType } from "../src/dtypes.js";

const copy = nativeCopier();
const skip = copy ? false : "native addon without copyPiece (not built, or CKPT_NATIVE=0)";
const MiB = 1 << 20;

/** Deterministic pseudo-random bytes (xorshift32). */
function bytes(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = x & 255;
  }
  return b;
}

/** F32 values spread over ±2^20 (so some overflow F16's ±65504), deterministic. */
function f32Values(n: number, seed: number): Buffer {
  const r = bytes(n * 4, seed);
  const f = new Float32Array(n);
  for (let i = 0; i < n; i++) f[i] = ((r.readUInt32LE(i * 4) / 2 ** 32) * 2 - 1) * 2 ** (i % 21);
  return Buffer.from(f.buffer);
}

interface Case { name: string; outDtype: DType; outOffset: number; runs: Run[]; elems: number; countF16Overflow?: boolean }

const ES: Record<string, number> = { BF16: 2, F16: 2, F32: 4, U8: 1, I64: 8 };

/** Runs tiling `parts` (each: elements, and a source dtype + element offset, or zeros). */
function tile(parts: { n: number; src?: { file: string; dtype: DType; at: number } }[]): { runs: Run[]; elems: number } {
  const runs: Run[] = [];
  let dst = 0;
  for (const p of parts) {
    runs.push({ dst, rows: 1, cols: p.n, ...(p.src ? { src: { file: p.src.file, byteOffset: p.src.at * ES[p.src.dtype]!, stride: p.n, dtype: p.src.dtype } } : {}) });
    dst += p.n;
  }
  return { runs, elems: dst };
}

function cases(): Case[] {
  const b = (n: number, at: number) => ({ n, src: { file: "bf16", dtype: "BF16" as DType, at } });
  const f = (n: number, at: number) => ({ n, src: { file: "f32", dtype: "F32" as DType, at } });
  return [
    { name: "bf16 kept, 9 MiB at a block boundary", outDtype: "BF16", outOffset: 1 << 20, ...tile([b(9 * MiB / 2, 0)]) },
    { name: "bf16 kept, odd offset, runs + zeros across windows", outDtype: "BF16", outOffset: 4096 * 3 + 777, ...tile([b(1000, 5), { n: 3 * MiB }, b(2 * MiB + 3, 77_000), b(1, 9)]) },
    { name: "bf16 kept, shorter than two blocks", outDtype: "BF16", outOffset: 100, ...tile([b(3000, 11)]) },
    { name: "f32 -> bf16 cast, odd offset", outDtype: "BF16", outOffset: 4096 + 1, ...tile([f(3 * MiB + 5, 1), { n: 17 }, f(4099, 3 * MiB)]) },
    { name: "f32 -> f16 with overflow counting, elements straddling windows", outDtype: "F16", outOffset: 8191, countF16Overflow: true, ...tile([f(5 * MiB / 2 + 1, 0), f(33, 100)]) },
    { name: "bf16 -> f32 widening, offset 2 mod 4", outDtype: "F32", outOffset: 4096 * 5 + 2, ...tile([b(3 * MiB, 123), b(5, 0)]) },
    { name: "u8 raw bytes (not castable), odd lengths", outDtype: "U8", outOffset: 3, ...tile([{ n: 5 * MiB + 1, src: { file: "bf16", dtype: "U8", at: 17 } }]) },
    { name: "zeros only", outDtype: "BF16", outOffset: 4096, ...tile([{ n: 5 * MiB / 2 }]) },
  ];
}

function withFiles(body: (dir: string, paths: Record<string, string>) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), "ckpt-native-copy-"));
    try {
      const paths = { bf16: join(dir, "src-bf16.bin"), f32: join(dir, "src-f32.bin") };
      writeFileSync(paths.bf16, bytes(12 * MiB, 7));
      writeFileSync(paths.f32, f32Values(4 * MiB, 9));
      await body(dir, paths);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

function pieceFor(c: Case, outPath: string, digest: boolean): PieceTask {
  return { outPath, outOffset: c.outOffset, outDtype: c.outDtype, elems: c.elems, runs: c.runs, countF16Overflow: c.countF16Overflow ?? false, ...(digest ? { digest: "xxh128" as const } : {}) };
}

/** The output bytes reassembled from the source files: only for pieces without casts. */
function expectedBytes(c: Case, paths: Record<string, string>): Buffer | undefined {
  const oes = ES[c.outDtype]!;
  const out = Buffer.alloc(c.elems * oes);
  for (const r of c.runs) {
    if (!r.src) continue;
    if (r.src.dtype !== c.outDtype) return undefined;
    readFileSync(paths[r.src.file]!).copy(out, r.dst * oes, r.src.byteOffset, r.src.byteOffset + r.cols * oes);
  }
  return out;
}

for (const directIo of [true, false]) {
  for (const c of cases()) {
    test(`native copyPiece = worker: ${c.name}${directIo ? "" : " (direct I/O off)"}`, { skip }, withFiles(async (dir, paths) => {
      const size = c.outOffset + c.elems * ES[c.outDtype]! + 5000;
      const outs = { worker: join(dir, "out-worker.bin"), native: join(dir, "out-native.bin") };
      for (const o of Object.values(outs)) { writeFileSync(o, ""); truncateSync(o, size); }
      const digest = !c.name.startsWith("zeros");
      const wp = pieceFor(c, outs.worker, digest), np = pieceFor(c, outs.native, digest);
      assert.ok(nativeEligible(np, paths), "the case must be one the native lane takes");
      const task: WorkerTask = { pieces: [wp], paths, scales: {}, directIo };
      const [w] = await runTask(task);
      const files = new NativeFiles(directIo);
      const [n] = await copyPiecesNative(copy!, [np], paths, files).finally(() => files.close());
      const wb = readFileSync(outs.worker), nb = readFileSync(outs.native);
      assert.ok(wb.equals(nb), "output files differ");
      const piece = nb.subarray(c.outOffset, c.outOffset + c.elems * ES[c.outDtype]!);
      assert.ok(nb.subarray(0, c.outOffset).every((x) => x === 0) && nb.subarray(c.outOffset + piece.length).every((x) => x === 0), "bytes outside the piece were written");
      const exp = expectedBytes(c, paths);
      if (exp) assert.ok(piece.equals(exp), "output differs from the source bytes it should copy");
      assert.equal(n!.crc >>> 0, zlibCrc32(piece) >>> 0);
      assert.equal(n!.crc >>> 0, w!.crc >>> 0);
      assert.equal(n!.bytes, piece.length);
      assert.equal(n!.f16Overflow, w!.f16Overflow);
      if (c.countF16Overflow) assert.ok(n!.f16Overflow > 0, "the case must contain values beyond the F16 range");
      if (digest) {
        assert.equal(n!.digest, await fallbackChecksums.xxh128Hex([piece]));
        assert.equal(n!.digest, w!.digest);
      } else assert.equal(n!.digest, undefined);
    }));
  }
}

test("native copyPiece: a truncated source fails with the source's path, and every piece has stopped writing", { skip }, withFiles(async (dir, paths) => {
  const out = join(dir, "out.bin");
  writeFileSync(out, "");
  truncateSync(out, 64 * MiB);
  truncateSync(paths.bf16, 3 * MiB);
  const ok = pieceFor({ name: "ok", outDtype: "F32", outOffset: 0, ...tile([{ n: MiB, src: { file: "f32", dtype: "F32", at: 0 } }]) }, out, true);
  const bad = pieceFor({ name: "bad", outDtype: "BF16", outOffset: 8 * MiB, ...tile([{ n: 2 * MiB, src: { file: "bf16", dtype: "BF16", at: 0 } }]) }, out, true);
  const files = new NativeFiles(true);
  try {
    await assert.rejects(copyPiecesNative(copy!, [ok, bad], paths, files), (e: Error) => {
      assert.match(e.message, /short read/);
      assert.ok(e.message.includes(paths.bf16), e.message);
      return true;
    });
  } finally {
    files.close();
  }
}));

test("native lane declines what it does not compute (transposes, column windows, dequant, remote files, sha256)", () => {
  const paths = { a: "/x/a" };
  const base: PieceTask = { outPath: "/x/o", outOffset: 0, outDtype: "BF16", elems: 4, countF16Overflow: false, runs: [{ dst: 0, rows: 2, cols: 2, src: { file: "a", byteOffset: 0, stride: 2, dtype: "BF16" } }] };
  assert.equal(nativeEligible(base, paths), true);
  const run0 = base.runs[0]!;
  assert.equal(nativeEligible({ ...base, runs: [{ ...run0, transpose: true }] }, paths), false);
  assert.equal(nativeEligible({ ...base, runs: [{ ...run0, src: { ...run0.src!, stride: 3 } }] }, paths), false);
  assert.equal(nativeEligible({ ...base, runs: [{ ...run0, decode: { op: "dequant", scale: "s", rowStart: 0, colStart: 0, block: 128 } }] }, paths), false);
  assert.equal(nativeEligible(base, {}), false);
  assert.equal(nativeEligible({ ...base, digest: "sha256" }, paths), false);
  assert.equal(nativeEligible({ ...base, runs: [{ ...run0, src: { ...run0.src!, dtype: "I64" } }] }, paths), false);
});
