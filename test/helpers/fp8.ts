// FP8 E4M3 block dequantization computed independently of src/, from the format: the expected values of FP8 sources.
import type { FullTensor as Full } from "./read-folder.js";

// Independent FP8 E4M3 block dequant (torchtitan-layout.md §7.1): f32(fp8) × scale, one f32 rounding, then bf16 RNE.
function e4m3(b: number): number {
  const s = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 0xf;
  const m = b & 7;
  if (e === 0xf && m === 7) return NaN;
  return e === 0 ? s * (m / 8) * 2 ** -6 : s * (1 + m / 8) * 2 ** (e - 7);
}
export function dequantBf16(w: Full, scale: Full, block = 128): Buffer {
  const [R, C] = w.shape as [number, number];
  const sc = new Float32Array(scale.data.buffer.slice(scale.data.byteOffset, scale.data.byteOffset + scale.data.byteLength));
  const scols = scale.shape[1]!;
  const out = Buffer.alloc(R * C * 2);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let r = 0; r < R; r++) {
    for (let c = 0; c < C; c++) {
      f[0] = e4m3(w.data[r * C + c]!) * sc[Math.floor(r / block) * scols + Math.floor(c / block)]!;
      const bits = u[0]!;
      out.writeUInt16LE(((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff, (r * C + c) * 2);
    }
  }
  return out;
}
