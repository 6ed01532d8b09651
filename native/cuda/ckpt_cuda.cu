// CUDA cast and FP8 block dequant, built by scripts/build-native.js into native/build/Release/libckpt_cuda.so
// (only where nvcc exists and CKPT_CUDA != 0) and dlopened by the addon. Element conversions come from the same
// header as the CPU kernels (ckpt_convert.h, CKPT_HD = __host__ __device__), so results are bit-identical.
// Host API: synchronous, host buffers in and out (H2D, kernel, D2H); returns 0 on success.
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include "ckpt_convert.h"

static thread_local char g_err[512];

static int set_err(const char* what, cudaError_t e) {
  snprintf(g_err, sizeof g_err, "%s: %s", what, cudaGetErrorString(e));
  return 1;
}

#define CK(call)                                            \
  do {                                                      \
    cudaError_t e_ = (call);                                \
    if (e_ != cudaSuccess) { rc = set_err(#call, e_); goto done; } \
  } while (0)

template <int S, int D>
__global__ void cast_kernel(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst, size_t n) {
  const int ss = ckpt_dtype_size(S), ds = ckpt_dtype_size(D);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    ckpt_convert_one(S, src + i * ss, D, dst + i * ds);
}

template <int S>
static void launch_cast_d(int d, const uint8_t* src, uint8_t* dst, size_t n, int grid, cudaStream_t st) {
  switch (d) {
    case CKPT_F32: cast_kernel<S, CKPT_F32><<<grid, 256, 0, st>>>(src, dst, n); break;
    case CKPT_BF16: cast_kernel<S, CKPT_BF16><<<grid, 256, 0, st>>>(src, dst, n); break;
    case CKPT_F16: cast_kernel<S, CKPT_F16><<<grid, 256, 0, st>>>(src, dst, n); break;
    case CKPT_F8_E4M3: cast_kernel<S, CKPT_F8_E4M3><<<grid, 256, 0, st>>>(src, dst, n); break;
    default: cast_kernel<S, CKPT_F8_E5M2><<<grid, 256, 0, st>>>(src, dst, n); break;
  }
}

static void launch_cast(int s, int d, const uint8_t* src, uint8_t* dst, size_t n, cudaStream_t st) {
  size_t blocks = (n + 255) / 256;
  int grid = (int)(blocks > 65535 * 8 ? 65535 * 8 : (blocks == 0 ? 1 : blocks));
  switch (s) {
    case CKPT_F32: launch_cast_d<CKPT_F32>(d, src, dst, n, grid, st); break;
    case CKPT_BF16: launch_cast_d<CKPT_BF16>(d, src, dst, n, grid, st); break;
    case CKPT_F16: launch_cast_d<CKPT_F16>(d, src, dst, n, grid, st); break;
    case CKPT_F8_E4M3: launch_cast_d<CKPT_F8_E4M3>(d, src, dst, n, grid, st); break;
    default: launch_cast_d<CKPT_F8_E5M2>(d, src, dst, n, grid, st); break;
  }
}

// out[r, c] = f32(f32(w[r, c]) * scale[(rowStart + r) / block][(colStart + c) / block]) -> dst dtype.
// The product is ckpt_mul_f32 (__fmul_rn: IEEE RNE, never contracted into an FMA; NaNs as on the CPU); the f32
// result is narrowed as an f32-source value (bf16 NaN = 0xFFFF), like PyTorch's .to() of the f32 product.
__global__ void dequant_kernel(const uint8_t* __restrict__ w, int wd, size_t rows, size_t cols, size_t rowStart,
                               size_t colStart, const float* __restrict__ scale, size_t scaleCols, size_t block,
                               uint8_t* __restrict__ dst, int d) {
  const size_t n = rows * cols;
  const int ds = ckpt_dtype_size(d);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / cols, c = i - r * cols;
    uint32_t wb = wd == CKPT_F8_E4M3 ? ckpt_e4m3_to_f32(w[i]) : ckpt_e5m2_to_f32(w[i]);
    float s = scale[((rowStart + r) / block) * scaleCols + (colStart + c) / block];
    ckpt_store_from_f32(CKPT_F32, d, ckpt_mul_f32(wb, __float_as_uint(s)), dst + i * ds);
  }
}

extern "C" {

__attribute__((visibility("default"))) const char* ckpt_cuda_last_error(void) { return g_err; }

__attribute__((visibility("default"))) int ckpt_cuda_device_count(void) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) { set_err("cudaGetDeviceCount", e); return -1; }
  return n;
}

__attribute__((visibility("default"))) int ckpt_cuda_cast(const void* src, int s, void* dst, int d, size_t n) {
  int rc = 0;
  uint8_t *dsrc = nullptr, *ddst = nullptr;
  size_t sb = n * ckpt_dtype_size(s), db = n * ckpt_dtype_size(d);
  if (n == 0) return 0;
  CK(cudaMalloc(&dsrc, sb));
  CK(cudaMalloc(&ddst, db));
  CK(cudaMemcpy(dsrc, src, sb, cudaMemcpyHostToDevice));
  launch_cast(s, d, dsrc, ddst, n, 0);
  CK(cudaGetLastError());
  CK(cudaMemcpy(dst, ddst, db, cudaMemcpyDeviceToHost));
done:
  if (dsrc) cudaFree(dsrc);
  if (ddst) cudaFree(ddst);
  return rc;
}

__attribute__((visibility("default"))) int ckpt_cuda_dequant(const void* w, int wd, size_t rows, size_t cols,
                                                              size_t rowStart, size_t colStart, const float* scale,
                                                              size_t scaleRows, size_t scaleCols, size_t block,
                                                              void* dst, int d) {
  int rc = 0;
  uint8_t *dw = nullptr, *ddst = nullptr;
  float* dscale = nullptr;
  size_t n = rows * cols, db = n * ckpt_dtype_size(d), scb = scaleRows * scaleCols * sizeof(float);
  size_t blocks = (n + 255) / 256;
  int grid = (int)(blocks > 65535 * 8 ? 65535 * 8 : (blocks == 0 ? 1 : blocks));
  if (n == 0) return 0;
  CK(cudaMalloc(&dw, n));
  CK(cudaMalloc(&ddst, db));
  CK(cudaMalloc(&dscale, scb));
  CK(cudaMemcpy(dw, w, n, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dscale, scale, scb, cudaMemcpyHostToDevice));
  dequant_kernel<<<grid, 256>>>(dw, wd, rows, cols, rowStart, colStart, dscale, scaleCols, block, ddst, d);
  CK(cudaGetLastError());
  CK(cudaMemcpy(dst, ddst, db, cudaMemcpyDeviceToHost));
done:
  if (dw) cudaFree(dw);
  if (ddst) cudaFree(ddst);
  if (dscale) cudaFree(dscale);
  return rc;
}

}  // extern "C"
