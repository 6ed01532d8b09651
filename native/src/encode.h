// Requantization encoders: MXFP4 (OpenAI's quantizer's scale rule) and INT4 (compressed-tensors pack-quantized,
// symmetric), the inverses of mxfp4_decode / int4_decode. Byte-identical to src/kernels/requantize.ts (the
// reference; its header comment states the rules), including the bytes of groups it counts as bad.
#ifndef CKPT_ENCODE_H
#define CKPT_ENCODE_H

#include <stddef.h>
#include <stdint.h>

namespace ckpt {

struct EncodeCounts {
  // Groups with no exact encoding (after adopting the reference), the index of the first (-1: none), and the groups
  // taken from the reference.
  int64_t bad, firstBad, adopted;
};

// MXFP4 encode of rows x cols f32 values (cols a multiple of 32) into blocks [rows * cols/32 * 16] and E8M0
// scales [rows * cols/32]; badMask[g] = 1 for each group with no exact encoding. With a reference (ref_blocks and
// ref_scales of the same shapes, or both null), a group whose encoding differs from the reference's keeps the
// reference's when that decodes to the values in values_dtype (CKPT_F32 or CKPT_BF16). Outputs need not be zeroed.
EncodeCounts mxfp4_encode(const float* values, size_t rows, size_t cols, int values_dtype, const uint8_t* ref_blocks,
                          const uint8_t* ref_scales, uint8_t* blocks, uint8_t* scales, uint8_t* bad_mask);

// The scales alone of mxfp4_encode (equal for every group it encodes; a bad group gets the quantizer's byte, or 0).
void mxfp4_scales(const float* values, size_t rows, size_t cols, int values_dtype, const uint8_t* ref_blocks,
                  const uint8_t* ref_scales, uint8_t* scales);

// INT4 encode of rows x cols f32 values, groups of `group` along cols: packed words [rows * ceil(cols/8)] (8
// nibbles q + 8 per word, least significant first) and BF16 scale bits [rows * ceil(cols/group)]. The reference
// (ref_packed: little-endian words, ref_scales: little-endian BF16 bits, same shapes) is used only when group is a
// multiple of 8, as in the TypeScript encoder.
EncodeCounts int4_encode(const float* values, size_t rows, size_t cols, size_t group, int values_dtype,
                         const uint8_t* ref_packed, const uint8_t* ref_scales, uint32_t* packed, uint16_t* scales,
                         uint8_t* bad_mask);

}  // namespace ckpt

#endif
