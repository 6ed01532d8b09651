// Requantization encoders (the inverses of the mxfp4 / int4 decode ops, for `--to hf --requantize`): the TypeScript
// tier and the reference of the native one (native/src/encode.cc, byte-identical on every output byte, bad groups'
// bytes and counts included; test/encode-native.test.ts), picked like every kernel by kernels/index.ts getKernels()
// (CKPT_NATIVE=0 or a missing addon: these). Each group's scale is recovered by the rule the source's own quantizer
// uses, so a checkpoint whose values still hold only quantized values comes back byte-identical; a group no scale
// of that rule can express exactly is counted, never rounded.
//
// MXFP4 (transformers' quantize_to_mxfp4 → triton_kernels downcast_to_mxfp_torch, the OpenAI quantizer): per 32
// values, amax/6 rounded UP to a power of two (f32 bits (x + 0x7FFFFF) & 0x7F800000), byte = its biased exponent:
// so amax / 2^(byte−127) ∈ (3, 6] and byte ≥ 1 for any non-zero group (an f32-subnormal amax/6 rounds to 2^−126);
// an all-zero group (±0 only) gets byte 0. Sources with other scales over such groups (e.g. 252–254 over ±0, or byte
// 0 over non-zero values) cannot be told apart from the values: they are refused, counted.
//
// INT4 (compressed-tensors 0.17.1 calculate_qparams, symmetric minmax): scale = amax / 7.5 in BF16, q = round(w/s)
// clamped to [−8, 7]; a zero group gets BF16 eps (2^−7, 0x3C00). Recovery: the positive BF16 s with the largest
// |q| (8 down to 1, −8 only for a negative amax value) such that every w / s is an integer in [−8, 7]; with F32
// ckpt output (the exact products) any group compressed-tensors wrote is recovered. Negative or zero source scales
// over non-zero values (which that quantizer never writes), −0 and NaN values are refused.

const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
/** Code of an E2M1 magnitude by twice its value (0, 1, 2, 3, 4, 6, 8, 12 → 0 … 7), −1 for the others. */
const CODE_OF_DOUBLE = Int8Array.from({ length: 13 }, (_, i) => [0, 1, 2, 3, 4, 6, 8, 12].indexOf(i));

/** Nibble of an exact E2M1 value x (sign from the value's sign bit, so −0 → 8), or −1. */
function e2m1Nibble(x: number): number {
  const d = (x < 0 ? -x : x) * 2;
  if (!(d <= 12) || (d | 0) !== d) return -1;
  const c = CODE_OF_DOUBLE[d]!;
  if (c < 0) return -1;
  return x < 0 || (x === 0 && 1 / x < 0) ? c | 8 : c;
}

/** Values as the encoders read them: exact f32 / f64 numbers. */
type Values = Float32Array | Float64Array;

/**
 * The E8M0 scale byte OpenAI's quantizer gives the 32 values at `base`: amax/6 rounded up to a power of two (byte ≥ 1
 * for any non-zero group), 0 for an all-zero group; −1 when no scale can (an infinite amax, or one past 2^127).
 */
function mxfp4ScaleByte(values: Values, base: number): number {
  let amax = 0;
  for (let i = 0; i < 32; i++) amax = Math.max(amax, Math.abs(values[base + i]!));
  if (!(amax > 0)) return 0; // ±0 (or NaN: the nibbles refuse it)
  if (!Number.isFinite(amax)) return -1;
  let e = Math.ceil(Math.log2(amax / 6));
  while (2 ** e < amax / 6) e++;
  while (2 ** (e - 1) >= amax / 6) e--;
  const byte = Math.max(1, e + 127);
  return byte > 254 ? -1 : byte;
}

/**
 * MXFP4 encode of values [rows, cols] (cols a multiple of 32, row-major) into blocks [rows, cols/32, 16] (low nibble
 * first) and E8M0 scales [rows, cols/32]. `bad` counts the groups with no exact encoding under the quantizer's scale.
 */
export function mxfp4Encode(values: Values, rows: number, cols: number): { blocks: Uint8Array; scales: Uint8Array; bad: number; firstBad: number; badMask: Uint8Array } {
  if (cols % 32 !== 0) throw new Error(`mxfp4 encode: ${cols} columns is not a multiple of 32`);
  const G = cols / 32;
  const blocks = new Uint8Array(rows * G * 16);
  const scales = new Uint8Array(rows * G);
  const badMask = new Uint8Array(rows * G);
  let bad = 0, firstBad = -1;
  for (let g = 0; g < rows * G; g++) {
    const base = g * 32;
    const byte = mxfp4ScaleByte(values, base);
    if (byte < 0) { bad++; badMask[g] = 1; if (firstBad < 0) firstBad = g; continue; }
    scales[g] = byte;
    const inv = 2 ** (127 - byte);
    let ok = true;
    for (let i = 0; i < 32 && ok; i += 2) {
      const lo = e2m1Nibble(values[base + i]! * inv), hi = e2m1Nibble(values[base + i + 1]! * inv);
      if (lo < 0 || hi < 0) ok = false;
      else blocks[g * 16 + (i >> 1)] = lo | (hi << 4);
    }
    if (!ok) { bad++; badMask[g] = 1; if (firstBad < 0) firstBad = g; }
  }
  return { blocks, scales, bad, firstBad, badMask };
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** BF16 bits of x when x is exactly a BF16 value, else −1. */
function exactBf16(x: number): number {
  f32Scratch[0] = x;
  if (f32Scratch[0] !== x) return -1;
  const u = u32Scratch[0]!;
  return (u & 0xffff) === 0 ? u >>> 16 : -1;
}

const BF16_EPS = 0x3c00;

/**
 * INT4 (compressed-tensors pack-quantized, symmetric) encode of values [rows, cols] with groups of `group` along
 * cols: weight_packed I32 [rows, ceil(cols/8)] (8 nibbles per word, least significant first, nibble = q + 8) and
 * BF16 weight_scale bits [rows, ceil(cols/group)]. `bad` counts groups with no exact (q, s).
 */
export function int4Encode(values: Values, rows: number, cols: number, group: number): { packed: Uint8Array; scales: Uint16Array; bad: number; firstBad: number; badMask: Uint8Array } {
  const words = Math.ceil(cols / 8), S = Math.ceil(cols / group);
  const packed = new Uint32Array(rows * words);
  const scales = new Uint16Array(rows * S);
  const q = new Int8Array(group);
  const badMask = new Uint8Array(rows * S);
  let bad = 0, firstBad = -1;
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < S; g++) {
      const c0 = g * group, n = Math.min(group, cols - c0), base = r * cols + c0;
      let amax = 0, at = 0;
      for (let i = 0; i < n; i++) { const a = Math.abs(values[base + i]!); if (a > amax) { amax = a; at = i; } }
      let sBits = -1;
      // q·s never makes −0, and a NaN has no q (and must not pass for an all-zero group: amax skips it)
      let refused = false;
      for (let i = 0; i < n; i++) if (Object.is(values[base + i], -0) || Number.isNaN(values[base + i])) refused = true;
      if (refused) { /* refused below (or taken from the source) */ } else if (amax === 0) {
        sBits = BF16_EPS;
        for (let i = 0; i < n; i++) q[i] = 0;
      } else if (Number.isFinite(amax)) {
        const neg = values[base + at]! < 0;
        for (let k = neg ? 8 : 7; k >= 1 && sBits < 0; k--) {
          const s = amax / k;
          const bits = exactBf16(s);
          if (bits < 0 || !(s > 0)) continue;
          let ok = true;
          for (let i = 0; i < n && ok; i++) {
            const v = values[base + i]! / s;
            if (!Number.isInteger(v) || v < -8 || v > 7 || values[base + i]! !== Math.fround(v * s)) ok = false;
            else q[i] = v;
          }
          if (ok) sBits = bits;
        }
      }
      if (sBits < 0) { bad++; badMask[r * S + g] = 1; if (firstBad < 0) firstBad = r * S + g; continue; }
      scales[r * S + g] = sBits;
      for (let i = 0; i < n; i++) {
        const c = c0 + i;
        packed[r * words + (c >> 3)]! |= ((q[i]! + 8) & 15) << (4 * (c & 7));
      }
    }
  }
  return { packed: new Uint8Array(packed.buffer), scales, bad, firstBad, badMask };
}

/** f64 → the output dtype's value (F32: fround; BF16: round-to-nearest-even of the f32). */
export function roundTo(x: number, dtype: "F32" | "BF16"): number {
  const f = Math.fround(x);
  if (dtype === "F32" || !Number.isFinite(f)) return f;
  f32Scratch[0] = f;
  const u = u32Scratch[0]!;
  u32Scratch[0] = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16;
  return f32Scratch[0]!;
}

const same = (a: number, b: number) => a === b && Object.is(a, -0) === Object.is(b, -0);

/** Whether MXFP4 group `g` of (blocks, scales) decodes to values[g·32 ..] in `dtype`. */
export function mxfp4GroupDecodesTo(blocks: Uint8Array, scales: Uint8Array, g: number, values: Values, dtype: "F32" | "BF16"): boolean {
  const s = scales[g]!;
  if (s === 255) return false;
  for (let i = 0; i < 32; i++) {
    const nib = (blocks[g * 16 + (i >> 1)]! >> (4 * (i & 1))) & 15;
    const v = (nib & 8 ? -1 : 1) * E2M1[nib & 7]! * 2 ** (s - 127);
    if (!same(roundTo(v, dtype), values[g * 32 + i]!)) return false;
  }
  return true;
}

/** Whether INT4 group (r, g) of (packed words, BF16 scale bits) decodes to values[r, g·group ..] in `dtype`. */
export function int4GroupDecodesTo(packed: Uint32Array, scales: Uint16Array, r: number, g: number, rows: number, cols: number, group: number, values: Values, dtype: "F32" | "BF16"): boolean {
  const words = Math.ceil(cols / 8), S = Math.ceil(cols / group);
  u32Scratch[0] = scales[r * S + g]! << 16;
  const sc = f32Scratch[0]!;
  for (let c = g * group; c < Math.min(cols, (g + 1) * group); c++) {
    const q = ((packed[r * words + (c >> 3)]! >>> (4 * (c & 7))) & 15) - 8;
    if (!same(roundTo(q * sc, dtype), values[r * cols + c]!)) return false;
  }
  return true;
}

/**
 * MXFP4 encode of values [rows, cols] whose groups, when several encodings decode to the same values (an all-zero
 * group takes any scale), keep the reference's encoding (the source checkpoint's blocks and scales of the same rows)
 * when it decodes to them in `dtype`. `adopted` counts the groups taken from the reference.
 */
export function mxfp4EncodeKeeping(values: Values, rows: number, cols: number, dtype: "F32" | "BF16", ref?: { blocks: Uint8Array; scales: Uint8Array }):
  ReturnType<typeof mxfp4Encode> & { adopted: number } {
  const enc = mxfp4Encode(values, rows, cols);
  let adopted = 0;
  if (ref) {
    const { blocks: sb, scales: ss } = ref;
    for (let g = 0; g < rows * (cols / 32); g++) {
      const differs = enc.badMask[g] || ss[g] !== enc.scales[g] || sb.subarray(g * 16, g * 16 + 16).some((b, i) => b !== enc.blocks[g * 16 + i]);
      if (differs && mxfp4GroupDecodesTo(sb, ss, g, values, dtype)) {
        enc.blocks.set(sb.subarray(g * 16, g * 16 + 16), g * 16);
        enc.scales[g] = ss[g]!;
        if (enc.badMask[g]) { enc.badMask[g] = 0; enc.bad--; }
        adopted++;
      }
    }
    enc.firstBad = enc.badMask.indexOf(1);
  }
  return { ...enc, adopted };
}

/**
 * The scales alone of mxfp4EncodeKeeping (the same bytes for every group it encodes; a group it cannot encode gets
 * some byte, and the blocks' encode refuses the output): the scale depends only on the group's amax, so the nibbles
 * are computed only where the reference's scale differs and might be kept.
 */
export function mxfp4ScalesKeeping(values: Values, rows: number, cols: number, dtype: "F32" | "BF16", ref?: { blocks: Uint8Array; scales: Uint8Array }): Uint8Array {
  const G = cols / 32;
  const scales = new Uint8Array(rows * G);
  for (let g = 0; g < rows * G; g++) {
    const byte = mxfp4ScaleByte(values, g * 32);
    scales[g] = ref && ref.scales[g] !== byte && mxfp4GroupDecodesTo(ref.blocks, ref.scales, g, values, dtype) ? ref.scales[g]! : Math.max(0, byte);
  }
  return scales;
}

/** INT4 encode of values [rows, cols] keeping the reference's encoding where it decodes exactly (see mxfp4EncodeKeeping). */
export function int4EncodeKeeping(values: Values, rows: number, cols: number, group: number, dtype: "F32" | "BF16", ref?: { packed: Uint8Array; scale: Uint8Array }):
  ReturnType<typeof int4Encode> & { adopted: number } {
  const enc = int4Encode(values, rows, cols, group);
  let adopted = 0;
  if (ref && group % 8 === 0) {
    const S = Math.ceil(cols / group), W = Math.ceil(cols / 8);
    const sw = new Uint32Array(ref.packed.buffer.slice(ref.packed.byteOffset, ref.packed.byteOffset + rows * W * 4));
    const sc = new Uint16Array(ref.scale.buffer.slice(ref.scale.byteOffset, ref.scale.byteOffset + rows * S * 2));
    const ew = new Uint32Array(enc.packed.buffer, enc.packed.byteOffset, rows * W);
    for (let r = 0; r < rows; r++) for (let g = 0; g < S; g++) {
      const w0 = r * W + (g * group) / 8, w1 = r * W + Math.min(W, ((g + 1) * group) / 8);
      let differs = !!enc.badMask[r * S + g] || sc[r * S + g] !== enc.scales[r * S + g];
      for (let w = w0; w < w1 && !differs; w++) differs = sw[w] !== ew[w];
      if (differs && int4GroupDecodesTo(sw, sc, r, g, rows, cols, group, values, dtype)) {
        for (let w = w0; w < w1; w++) ew[w] = sw[w]!;
        enc.scales[r * S + g] = sc[r * S + g]!;
        if (enc.badMask[r * S + g]) { enc.badMask[r * S + g] = 0; enc.bad--; }
        adopted++;
      }
    }
    enc.firstBad = enc.badMask.indexOf(1);
  }
  return { ...enc, adopted };
}
