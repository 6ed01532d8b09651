// CPU kernels of the addon: cast, row gather, FP8 block dequant, stats, LoRA merge. Every path (scalar, AVX2, AVX-512) is
// bit-exact with native/include/ckpt_convert.h; the dispatcher picks the best one the CPU supports.
#ifndef CKPT_KERNELS_H
#define CKPT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

namespace ckpt {

enum Isa { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

typedef void (*CastFn)(const uint8_t* src, uint8_t* dst, size_t n);

struct Stats {
  double count, min, max, sum, sumSq, nan, inf, f16Overflow, f16Underflow, zeros;
};

// Best ISA this CPU supports.
int detect_isa();
// Currently used ISA (defaults to detect_isa()); set_isa clamps to what the CPU supports and returns the result.
int current_isa();
int set_isa(int isa);
const char* isa_name(int isa);

// The cast loop for (src, dst) dtypes under the current ISA; identity is memcpy.
CastFn cast_fn(int srcDtype, int dstDtype);

void cast(const uint8_t* src, int srcDtype, uint8_t* dst, int dstDtype, size_t n);

// Caller has validated bounds.
void gather_rows(const uint8_t* src, int srcDtype, size_t srcRowElems, const int32_t* rowIndex, size_t nRows,
                 size_t colStart, size_t cols, uint8_t* dst, int dstDtype);

void dequant_block(const uint8_t* w, int wDtype, size_t rows, size_t cols, size_t rowStart, size_t colStart,
                   const float* scaleInv, size_t scaleCols, size_t block, uint8_t* dst, int dstDtype);

// MXFP4: rows x cols values; row r's packed bytes at blocks + r * blockStride (low nibble first, starting at a
// 32-value group), its E8M0 scales at scales + r * scaleStride; the box starts skip (< 32) values into the first
// group. Returns -1, or the index r * cols + c of the first non-finite value (NaN scale, overflow).
int64_t mxfp4_decode(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t cols, size_t skip, size_t blockStride,
                     size_t scaleStride, uint8_t* dst, int dstDtype);

// INT4 pack-quantized (compressed-tensors, symmetric): rows x cols values (nibble - 8) * scale; row r's packed bytes
// (little-endian I32 words, low nibble first) at packed + r * packedStride on a group boundary, its BF16 scales at
// scales + r * scaleStride (bytes), one per `group` values; the box starts skip (< group) values into the first
// group. Returns -1, or the index r * cols + c of the first non-finite value.
int64_t int4_decode(const uint8_t* packed, const uint8_t* scales, size_t rows, size_t cols, size_t skip, size_t group,
                    size_t packedStride, size_t scaleStride, uint8_t* dst, int dstDtype);

Stats stats(const uint8_t* src, int dtype, size_t n);

// LoRA/DoRA merge, bit-identical to mergeWeight in src/lora/merge.ts: W [out, inn] ([inn, out] when transposed),
// A [r, inn], B [out, r], m [out] or null (plain LoRA), sf = f32(scale); res like W, not overlapping any input.
void lora_merge(const float* W, size_t out, size_t inn, const float* A, const float* B, size_t r, float sf,
                const float* m, bool transposed, float* res);

}  // namespace ckpt

#endif
