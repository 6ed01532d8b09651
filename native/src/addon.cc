// N-API binding (node-addon-api) of the CPU kernels, plus a loader for the optional CUDA library.
// All kernels run synchronously on the caller's buffers (zero copy); bounds are checked here, once per call,
// so the kernels themselves never see an out-of-range index.
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#ifndef NAPI_DISABLE_CPP_EXCEPTIONS
#define NAPI_DISABLE_CPP_EXCEPTIONS
#endif
#include <napi.h>

#include <dlfcn.h>
#include <string.h>
#include <sys/mman.h>

#include <mutex>
#include <string>
#include <vector>

#include "aligned_memory.h"
#include "ckpt_convert.h"
#include "encode.h"
#include "kernels.h"

void RegisterChecksum(Napi::Env env, Napi::Object exports);  // addon_checksum.cc
void RegisterCopyPiece(Napi::Env env, Napi::Object exports);  // copy_piece.cc

namespace {

struct Bytes {
  uint8_t* p = nullptr;
  size_t len = 0;
};

bool fail(Napi::Env env, const std::string& msg, bool range = true) {
  if (range) Napi::RangeError::New(env, "ckpt_native: " + msg).ThrowAsJavaScriptException();
  else Napi::TypeError::New(env, "ckpt_native: " + msg).ThrowAsJavaScriptException();
  return false;
}

bool getBytes(const Napi::CallbackInfo& info, size_t i, const char* what, Bytes& out) {
  if (info.Length() <= i || !info[i].IsTypedArray()) return fail(info.Env(), std::string(what) + " must be a typed array", false);
  Napi::TypedArray ta = info[i].As<Napi::TypedArray>();
  Napi::ArrayBuffer ab = ta.ArrayBuffer();
  out.p = static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset();
  out.len = ta.ByteLength();
  return true;
}

bool getSize(const Napi::CallbackInfo& info, size_t i, const char* what, size_t& out) {
  if (info.Length() <= i || !info[i].IsNumber()) return fail(info.Env(), std::string(what) + " must be a number", false);
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v > 9007199254740991.0 || v != (double)(uint64_t)v)
    return fail(info.Env(), std::string(what) + " must be a non-negative integer");
  out = (size_t)v;
  return true;
}

bool getDtype(const Napi::CallbackInfo& info, size_t i, const char* what, int& out) {
  size_t v;
  if (!getSize(info, i, what, v)) return false;
  if (v > 4) return fail(info.Env(), std::string(what) + ": unknown dtype code");
  out = (int)v;
  return true;
}

// Overflow-safe a * b <= limit.
bool fits(size_t a, size_t b, size_t limit) { return b == 0 || a <= limit / b; }

// ---- CPU kernels ----

Napi::Value Cast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes src, dst;
  int s = 0, d = 0;
  size_t n = 0;
  if (!getBytes(info, 0, "src", src) || !getDtype(info, 1, "srcDtype", s) || !getBytes(info, 2, "dst", dst) ||
      !getDtype(info, 3, "dstDtype", d) || !getSize(info, 4, "n", n))
    return env.Undefined();
  if (!fits(n, (size_t)ckpt_dtype_size(s), src.len)) return fail(env, "src too small for n elements"), env.Undefined();
  if (!fits(n, (size_t)ckpt_dtype_size(d), dst.len)) return fail(env, "dst too small for n elements"), env.Undefined();
  ckpt::cast(src.p, s, dst.p, d, n);
  return env.Undefined();
}

Napi::Value GatherRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes src, dst;
  int s = 0, d = 0;
  size_t rowElems, colStart, cols;
  if (!getBytes(info, 0, "src", src) || !getDtype(info, 1, "srcDtype", s) || !getSize(info, 2, "srcRowElems", rowElems))
    return env.Undefined();
  if (info.Length() < 4 || !info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    return fail(env, "rowIndex must be an Int32Array", false), env.Undefined();
  Napi::Int32Array idx = info[3].As<Napi::Int32Array>();
  if (!getSize(info, 4, "colStart", colStart) || !getSize(info, 5, "cols", cols) || !getBytes(info, 6, "dst", dst) ||
      !getDtype(info, 7, "dstDtype", d))
    return env.Undefined();
  if (colStart > rowElems || cols > rowElems - colStart) return fail(env, "column window outside the source rows"), env.Undefined();
  const size_t ss = (size_t)ckpt_dtype_size(s), ds = (size_t)ckpt_dtype_size(d);
  const size_t nRows = idx.ElementLength();
  const size_t srcRows = rowElems == 0 ? 0 : src.len / ss / rowElems;
  if (!fits(nRows, cols * ds, dst.len)) return fail(env, "dst too small for the gathered rows"), env.Undefined();
  const int32_t* ri = idx.Data();
  if (cols > 0) {
    for (size_t i = 0; i < nRows; i++)
      if (ri[i] < 0 || (size_t)ri[i] >= srcRows)
        return fail(env, "row index " + std::to_string(ri[i]) + " outside source of " + std::to_string(srcRows) + " rows"),
               env.Undefined();
  }
  ckpt::gather_rows(src.p, s, rowElems, ri, nRows, colStart, cols, dst.p, d);
  return env.Undefined();
}

struct DequantArgs {
  Bytes w, scale, dst;
  int wd = 0, d = 0;
  size_t rows = 0, cols = 0, rowStart = 0, colStart = 0, scaleCols = 0, block = 0;
  std::vector<float> scaleCopy;
  const float* scaleF = nullptr;
};

bool getDequantArgs(const Napi::CallbackInfo& info, DequantArgs& a) {
  Napi::Env env = info.Env();
  if (!getBytes(info, 0, "w", a.w) || !getDtype(info, 1, "wDtype", a.wd) || !getSize(info, 2, "rows", a.rows) ||
      !getSize(info, 3, "cols", a.cols) || !getSize(info, 4, "rowStart", a.rowStart) ||
      !getSize(info, 5, "colStart", a.colStart) || !getBytes(info, 6, "scaleInv", a.scale) ||
      !getSize(info, 7, "scaleCols", a.scaleCols) || !getSize(info, 8, "block", a.block) ||
      !getBytes(info, 9, "dst", a.dst) || !getDtype(info, 10, "dstDtype", a.d))
    return false;
  if (a.wd != CKPT_F8_E4M3 && a.wd != CKPT_F8_E5M2) return fail(env, "wDtype must be F8_E4M3 or F8_E5M2");
  if (a.block == 0) return fail(env, "block must be positive");
  if (!fits(a.rows, a.cols, a.w.len)) return fail(env, "w too small for rows x cols");
  if (!fits(a.rows, a.cols, (size_t)-1) || !fits(a.rows * a.cols, (size_t)ckpt_dtype_size(a.d), a.dst.len))
    return fail(env, "dst too small for rows x cols");
  if (a.rows > 0 && a.cols > 0) {
    size_t lastR = (a.rowStart + a.rows - 1) / a.block, lastC = (a.colStart + a.cols - 1) / a.block;
    if (lastC >= a.scaleCols) return fail(env, "scale_inv has too few columns for this block");
    if ((lastR * a.scaleCols + lastC + 1) * 4 > a.scale.len) return fail(env, "scale_inv too small for this block");
  }
  if (((uintptr_t)a.scale.p & 3u) == 0) {
    a.scaleF = reinterpret_cast<const float*>(a.scale.p);
  } else {
    a.scaleCopy.resize(a.scale.len / 4);
    memcpy(a.scaleCopy.data(), a.scale.p, a.scaleCopy.size() * 4);
    a.scaleF = a.scaleCopy.data();
  }
  return true;
}

Napi::Value DequantBlock(const Napi::CallbackInfo& info) {
  DequantArgs a;
  if (!getDequantArgs(info, a)) return info.Env().Undefined();
  ckpt::dequant_block(a.w.p, a.wd, a.rows, a.cols, a.rowStart, a.colStart, a.scaleF, a.scaleCols, a.block, a.dst.p, a.d);
  return info.Env().Undefined();
}

Napi::Value Mxfp4Decode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes blocks, scales, dst;
  size_t rows, cols, skip, blockStride, scaleStride;
  int d = 0;
  if (!getBytes(info, 0, "blocks", blocks) || !getBytes(info, 1, "scales", scales) || !getSize(info, 2, "rows", rows) ||
      !getSize(info, 3, "cols", cols) || !getSize(info, 4, "skip", skip) || !getSize(info, 5, "blockStride", blockStride) ||
      !getSize(info, 6, "scaleStride", scaleStride) || !getBytes(info, 7, "dst", dst) || !getDtype(info, 8, "dstDtype", d))
    return env.Undefined();
  if (skip >= 32) return fail(env, "skip must be below 32"), env.Undefined();
  if (rows > 0 && cols > 0) {
    const size_t groups = (skip + cols + 31) / 32;
    if (!fits(rows - 1, blockStride, (size_t)-1) || (rows - 1) * blockStride + groups * 16 > blocks.len)
      return fail(env, "blocks too small for rows x cols"), env.Undefined();
    if (!fits(rows - 1, scaleStride, (size_t)-1) || (rows - 1) * scaleStride + groups > scales.len)
      return fail(env, "scales too small for rows x cols"), env.Undefined();
  }
  if (!fits(rows, cols, (size_t)-1) || !fits(rows * cols, (size_t)ckpt_dtype_size(d), dst.len))
    return fail(env, "dst too small for rows x cols"), env.Undefined();
  int64_t bad = ckpt::mxfp4_decode(blocks.p, scales.p, rows, cols, skip, blockStride, scaleStride, dst.p, d);
  return Napi::Number::New(env, (double)bad);
}

Napi::Value Int4Decode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes packed, scales, dst;
  size_t rows, cols, skip, group, packedStride, scaleStride;
  int d = 0;
  if (!getBytes(info, 0, "packed", packed) || !getBytes(info, 1, "scales", scales) || !getSize(info, 2, "rows", rows) ||
      !getSize(info, 3, "cols", cols) || !getSize(info, 4, "skip", skip) || !getSize(info, 5, "group", group) ||
      !getSize(info, 6, "packedStride", packedStride) || !getSize(info, 7, "scaleStride", scaleStride) ||
      !getBytes(info, 8, "dst", dst) || !getDtype(info, 9, "dstDtype", d))
    return env.Undefined();
  if (group == 0 || (group & 1)) return fail(env, "group must be a positive even number"), env.Undefined();
  if (skip >= group) return fail(env, "skip must be below group"), env.Undefined();
  if (rows > 0 && cols > 0) {
    const size_t groups = (skip + cols + group - 1) / group;
    if (!fits(rows - 1, packedStride, (size_t)-1) || (rows - 1) * packedStride + (skip + cols + 1) / 2 > packed.len)
      return fail(env, "packed too small for rows x cols"), env.Undefined();
    if (!fits(rows - 1, scaleStride, (size_t)-1) || (rows - 1) * scaleStride + groups * 2 > scales.len)
      return fail(env, "scales too small for rows x cols"), env.Undefined();
  }
  if (!fits(rows, cols, (size_t)-1) || !fits(rows * cols, (size_t)ckpt_dtype_size(d), dst.len))
    return fail(env, "dst too small for rows x cols"), env.Undefined();
  int64_t bad = ckpt::int4_decode(packed.p, scales.p, rows, cols, skip, group, packedStride, scaleStride, dst.p, d);
  return Napi::Number::New(env, (double)bad);
}

Napi::Value StatsFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes src;
  int d = 0;
  size_t n = 0;
  if (!getBytes(info, 0, "src", src) || !getDtype(info, 1, "dtype", d) || !getSize(info, 2, "n", n)) return env.Undefined();
  if (!fits(n, (size_t)ckpt_dtype_size(d), src.len)) return fail(env, "src too small for n elements"), env.Undefined();
  ckpt::Stats st = ckpt::stats(src.p, d, n);
  Napi::Object o = Napi::Object::New(env);
  o.Set("count", st.count);
  o.Set("min", st.min);
  o.Set("max", st.max);
  o.Set("sum", st.sum);
  o.Set("sumSq", st.sumSq);
  o.Set("nan", st.nan);
  o.Set("inf", st.inf);
  o.Set("f16Overflow", st.f16Overflow);
  o.Set("f16Underflow", st.f16Underflow);
  o.Set("zeros", st.zeros);
  return o;
}

// Float32Array argument (element type checked, so the data is 4-byte aligned); optional: undefined/null -> null.
bool getF32(const Napi::CallbackInfo& info, size_t i, const char* what, float*& p, size_t& n, bool optional = false) {
  p = nullptr;
  n = 0;
  if (optional && (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull())) return true;
  if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    return fail(info.Env(), std::string(what) + " must be a Float32Array", false);
  Napi::Float32Array a = info[i].As<Napi::Float32Array>();
  p = a.Data();
  n = a.ElementLength();
  return true;
}

bool overlaps(const float* a, size_t an, const float* b, size_t bn) {
  const uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
  return an > 0 && bn > 0 && x < y + bn * 4 && y < x + an * 4;
}

// loraMerge(W, out, inn, A, B, r, s, m | undefined, transposed, res): res = the merged W (see lora_merge).
Napi::Value LoraMerge(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  float *W, *A, *B, *m, *res;
  size_t nW, nA, nB, nm, nres, out, inn, r;
  if (!getF32(info, 0, "W", W, nW) || !getSize(info, 1, "out", out) || !getSize(info, 2, "inn", inn) ||
      !getF32(info, 3, "A", A, nA) || !getF32(info, 4, "B", B, nB) || !getSize(info, 5, "r", r))
    return env.Undefined();
  if (info.Length() <= 6 || !info[6].IsNumber()) return fail(env, "s must be a number", false), env.Undefined();
  const float sf = (float)info[6].As<Napi::Number>().DoubleValue();  // round once, as Math.fround(s)
  if (!getF32(info, 7, "m", m, nm, true)) return env.Undefined();
  const bool dora = info[7].IsTypedArray();
  if (info.Length() <= 8 || !info[8].IsBoolean()) return fail(env, "transposed must be a boolean", false), env.Undefined();
  const bool transposed = info[8].As<Napi::Boolean>().Value();
  if (!getF32(info, 9, "res", res, nres)) return env.Undefined();
  const size_t lim = (size_t)1 << 52;
  if (!fits(out, inn, lim) || !fits(r, inn, lim) || !fits(out, r, lim)) return fail(env, "shape too large"), env.Undefined();
  if (nW != out * inn) return fail(env, "W must have out * inn elements"), env.Undefined();
  if (nres != out * inn) return fail(env, "res must have out * inn elements"), env.Undefined();
  if (nA != r * inn) return fail(env, "A must have r * inn elements"), env.Undefined();
  if (nB != out * r) return fail(env, "B must have out * r elements"), env.Undefined();
  if (dora && nm != out) return fail(env, "m must have out elements"), env.Undefined();
  if (overlaps(res, nres, W, nW) || overlaps(res, nres, A, nA) || overlaps(res, nres, B, nB) ||
      overlaps(res, nres, m, nm))
    return fail(env, "res must not overlap an input"), env.Undefined();
  static float none;  // an empty m may have no data pointer; lora_merge takes null as "no DoRA"
  ckpt::lora_merge(W, out, inn, A, B, r, sf, dora ? (m ? m : &none) : nullptr, transposed, res);
  return env.Undefined();
}

// ---- Requantization encoders (encode.h) ----

// A typed array of one element type (so its data is aligned for that type).
bool getTyped(const Napi::CallbackInfo& info, size_t i, const char* what, napi_typedarray_type type, Bytes& out) {
  if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != type)
    return fail(info.Env(), std::string(what) + " has the wrong typed array type", false);
  return getBytes(info, i, what, out);
}

// An optional pair of reference byte arrays (both given or both undefined) of at least aBytes and bBytes.
bool getReference(const Napi::CallbackInfo& info, size_t i, size_t aBytes, size_t bBytes, Bytes& a, Bytes& b) {
  const bool given = info.Length() > i && !info[i].IsUndefined() && !info[i].IsNull();
  if (!given) return true;
  if (!getBytes(info, i, "reference", a) || !getBytes(info, i + 1, "reference", b)) return false;
  if (a.len < aBytes || b.len < bBytes) return fail(info.Env(), "reference too small for rows x cols");
  return true;
}

// Values (Float32Array of rows x cols), their dtype code (F32 or BF16): the arguments every encoder starts with.
bool getEncodeValues(const Napi::CallbackInfo& info, float*& v, size_t& rows, size_t& cols, int& d) {
  size_t n;
  if (!getF32(info, 0, "values", v, n) || !getSize(info, 1, "rows", rows) || !getSize(info, 2, "cols", cols)) return false;
  if (!fits(rows, cols, n)) return fail(info.Env(), "values too small for rows x cols");
  if (!getDtype(info, 3, "valuesDtype", d)) return false;
  if (d != CKPT_F32 && d != CKPT_BF16) return fail(info.Env(), "valuesDtype must be F32 or BF16");
  return true;
}

Napi::Object encodeCounts(Napi::Env env, const ckpt::EncodeCounts& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("bad", (double)c.bad);
  o.Set("firstBad", (double)c.firstBad);
  o.Set("adopted", (double)c.adopted);
  return o;
}

// mxfp4Encode(values, rows, cols, valuesDtype, refBlocks?, refScales?, blocks, scales, badMask) -> counts
Napi::Value Mxfp4Encode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  float* v;
  size_t rows, cols;
  int d;
  Bytes rb, rs, blocks, scales, mask;
  if (!getEncodeValues(info, v, rows, cols, d)) return env.Undefined();
  if (cols % 32) return fail(env, "cols must be a multiple of 32"), env.Undefined();
  const size_t groups = rows * (cols / 32);
  if (!getReference(info, 4, groups * 16, groups, rb, rs) || !getBytes(info, 6, "blocks", blocks) ||
      !getBytes(info, 7, "scales", scales) || !getBytes(info, 8, "badMask", mask))
    return env.Undefined();
  if (blocks.len < groups * 16 || scales.len < groups || mask.len < groups) return fail(env, "outputs too small for rows x cols"), env.Undefined();
  return encodeCounts(env, ckpt::mxfp4_encode(v, rows, cols, d, rb.p, rs.p, blocks.p, scales.p, mask.p));
}

// mxfp4Scales(values, rows, cols, valuesDtype, refBlocks?, refScales?, scales)
Napi::Value Mxfp4Scales(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  float* v;
  size_t rows, cols;
  int d;
  Bytes rb, rs, scales;
  if (!getEncodeValues(info, v, rows, cols, d)) return env.Undefined();
  if (cols % 32) return fail(env, "cols must be a multiple of 32"), env.Undefined();
  const size_t groups = rows * (cols / 32);
  if (!getReference(info, 4, groups * 16, groups, rb, rs) || !getBytes(info, 6, "scales", scales)) return env.Undefined();
  if (scales.len < groups) return fail(env, "scales too small for rows x cols"), env.Undefined();
  ckpt::mxfp4_scales(v, rows, cols, d, rb.p, rs.p, scales.p);
  return env.Undefined();
}

// int4Encode(values, rows, cols, valuesDtype, group, refPacked?, refScales?, packed: Uint32Array, scales:
// Uint16Array, badMask) -> counts
Napi::Value Int4Encode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  float* v;
  size_t rows, cols, group;
  int d;
  Bytes rp, rs, packed, scales, mask;
  if (!getEncodeValues(info, v, rows, cols, d) || !getSize(info, 4, "group", group)) return env.Undefined();
  if (group == 0) return fail(env, "group must be positive"), env.Undefined();
  const size_t words = rows * ((cols + 7) / 8), groups = rows * ((cols + group - 1) / group);
  if (!getReference(info, 5, words * 4, groups * 2, rp, rs) || !getTyped(info, 7, "packed", napi_uint32_array, packed) ||
      !getTyped(info, 8, "scales", napi_uint16_array, scales) || !getBytes(info, 9, "badMask", mask))
    return env.Undefined();
  if (packed.len < words * 4 || scales.len < groups * 2 || mask.len < groups) return fail(env, "outputs too small for rows x cols"), env.Undefined();
  return encodeCounts(env, ckpt::int4_encode(v, rows, cols, group, d, rp.p, rs.p, reinterpret_cast<uint32_t*>(packed.p),
                                             reinterpret_cast<uint16_t*>(scales.p), mask.p));
}

Napi::Value IsaFn(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), ckpt::isa_name(ckpt::current_isa()));
}

Napi::Value BestIsa(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), ckpt::isa_name(ckpt::detect_isa()));
}

// setIsa("scalar" | "avx2" | "avx512" | "auto"): for tests and benchmarks; clamps to what the CPU supports.
Napi::Value SetIsa(const Napi::CallbackInfo& info) {
  std::string name = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "auto";
  int want = name == "scalar" ? ckpt::ISA_SCALAR : name == "avx2" ? ckpt::ISA_AVX2 : name == "avx512" ? ckpt::ISA_AVX512 : -1;
  return Napi::String::New(info.Env(), ckpt::isa_name(ckpt::set_isa(want)));
}

// ---- CUDA (optional shared library built by nvcc, loaded on demand) ----

typedef int (*CudaCountFn)(void);
typedef const char* (*CudaErrFn)(void);
typedef int (*CudaCastFn)(const void*, int, void*, int, size_t);
typedef int (*CudaDequantFn)(const void*, int, size_t, size_t, size_t, size_t, const float*, size_t, size_t, size_t, void*, int);

struct Cuda {
  std::mutex mu;
  void* handle = nullptr;
  CudaCountFn count = nullptr;
  CudaErrFn err = nullptr;
  CudaCastFn cast = nullptr;
  CudaDequantFn dequant = nullptr;
} g_cuda;

// cudaLoad(path): "" when loaded (or already loaded), else the reason.
Napi::Value CudaLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) return fail(env, "path must be a string", false), env.Undefined();
  std::lock_guard<std::mutex> lock(g_cuda.mu);
  if (g_cuda.handle) return Napi::String::New(env, "");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) return Napi::String::New(env, std::string("dlopen failed: ") + dlerror());
  g_cuda.count = (CudaCountFn)dlsym(h, "ckpt_cuda_device_count");
  g_cuda.err = (CudaErrFn)dlsym(h, "ckpt_cuda_last_error");
  g_cuda.cast = (CudaCastFn)dlsym(h, "ckpt_cuda_cast");
  g_cuda.dequant = (CudaDequantFn)dlsym(h, "ckpt_cuda_dequant");
  if (!g_cuda.count || !g_cuda.err || !g_cuda.cast || !g_cuda.dequant) {
    dlclose(h);
    return Napi::String::New(env, "missing symbols in " + path);
  }
  g_cuda.handle = h;
  return Napi::String::New(env, "");
}

Napi::Value CudaDeviceCount(const Napi::CallbackInfo& info) {
  if (!g_cuda.handle) return Napi::Number::New(info.Env(), -1);
  return Napi::Number::New(info.Env(), g_cuda.count());
}

Napi::Value CudaLastError(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), g_cuda.handle ? g_cuda.err() : "CUDA library not loaded");
}

Napi::Value CudaCastJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!g_cuda.handle) return fail(env, "CUDA library not loaded", false), env.Undefined();
  Bytes src, dst;
  int s = 0, d = 0;
  size_t n = 0;
  if (!getBytes(info, 0, "src", src) || !getDtype(info, 1, "srcDtype", s) || !getBytes(info, 2, "dst", dst) ||
      !getDtype(info, 3, "dstDtype", d) || !getSize(info, 4, "n", n))
    return env.Undefined();
  if (!fits(n, (size_t)ckpt_dtype_size(s), src.len) || !fits(n, (size_t)ckpt_dtype_size(d), dst.len))
    return fail(env, "buffers too small for n elements"), env.Undefined();
  if (g_cuda.cast(src.p, s, dst.p, d, n) != 0)
    return Napi::Error::New(env, std::string("ckpt_native: CUDA cast failed: ") + g_cuda.err()).ThrowAsJavaScriptException(), env.Undefined();
  return env.Undefined();
}

Napi::Value CudaDequantJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!g_cuda.handle) return fail(env, "CUDA library not loaded", false), env.Undefined();
  DequantArgs a;
  if (!getDequantArgs(info, a)) return env.Undefined();
  size_t scaleRows = a.scaleCols ? a.scale.len / 4 / a.scaleCols : 0;
  if (g_cuda.dequant(a.w.p, a.wd, a.rows, a.cols, a.rowStart, a.colStart, a.scaleF, scaleRows, a.scaleCols, a.block, a.dst.p, a.d) != 0)
    return Napi::Error::New(env, std::string("ckpt_native: CUDA dequant failed: ") + g_cuda.err()).ThrowAsJavaScriptException(), env.Undefined();
  return env.Undefined();
}


// Page-aligned I/O buffer for O_DIRECT writes, on transparent huge pages where allowed (aligned_memory.h).
Napi::Value AlignedBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t n = 0;
  if (!getSize(info, 0, "bytes", n)) return env.Undefined();
  uint8_t* base = ckpt::huge_aligned_alloc(n);
  if (!base) return Napi::Error::New(env, "ckpt_native: mmap of an I/O buffer failed").ThrowAsJavaScriptException(), env.Undefined();
  size_t* cookie = new size_t(ckpt::huge_rounded(n));
  return Napi::Buffer<uint8_t>::New(env, base, n, [](Napi::Env, uint8_t* p, size_t* l) { munmap(p, *l); delete l; }, cookie);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ::RegisterChecksum(env, exports);
  ::RegisterCopyPiece(env, exports);
  exports.Set("cast", Napi::Function::New(env, Cast, "cast"));
  exports.Set("gatherRows", Napi::Function::New(env, GatherRows, "gatherRows"));
  exports.Set("dequantBlock", Napi::Function::New(env, DequantBlock, "dequantBlock"));
  exports.Set("stats", Napi::Function::New(env, StatsFn, "stats"));
  exports.Set("mxfp4Decode", Napi::Function::New(env, Mxfp4Decode, "mxfp4Decode"));
  exports.Set("int4Decode", Napi::Function::New(env, Int4Decode, "int4Decode"));
  exports.Set("mxfp4Encode", Napi::Function::New(env, Mxfp4Encode, "mxfp4Encode"));
  exports.Set("mxfp4Scales", Napi::Function::New(env, Mxfp4Scales, "mxfp4Scales"));
  exports.Set("int4Encode", Napi::Function::New(env, Int4Encode, "int4Encode"));
  exports.Set("loraMerge", Napi::Function::New(env, LoraMerge, "loraMerge"));
  exports.Set("isa", Napi::Function::New(env, IsaFn, "isa"));
  exports.Set("bestIsa", Napi::Function::New(env, BestIsa, "bestIsa"));
  exports.Set("setIsa", Napi::Function::New(env, SetIsa, "setIsa"));
  exports.Set("alignedBuffer", Napi::Function::New(env, AlignedBuffer, "alignedBuffer"));
  exports.Set("cudaLoad", Napi::Function::New(env, CudaLoad, "cudaLoad"));
  exports.Set("cudaDeviceCount", Napi::Function::New(env, CudaDeviceCount, "cudaDeviceCount"));
  exports.Set("cudaLastError", Napi::Function::New(env, CudaLastError, "cudaLastError"));
  exports.Set("cudaCast", Napi::Function::New(env, CudaCastJs, "cudaCast"));
  exports.Set("cudaDequant", Napi::Function::New(env, CudaDequantJs, "cudaDequant"));
  return exports;
}

}  // namespace

NODE_API_MODULE(ckpt_native, Init)
