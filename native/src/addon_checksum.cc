// N-API surface of checksum.h: crc32(buf, crc), xxh3 streaming states, tier switches for tests and benchmarks.
#include <napi.h>

#include <string>

#include "checksum.h"

namespace {

bool bytesArg(const Napi::CallbackInfo& info, size_t i, const uint8_t*& p, size_t& n) {
  if (info.Length() <= i || !info[i].IsTypedArray()) {
    Napi::TypeError::New(info.Env(), "ckpt_native: argument " + std::to_string(i) + " must be a Uint8Array").ThrowAsJavaScriptException();
    return false;
  }
  Napi::TypedArray t = info[i].As<Napi::TypedArray>();
  p = static_cast<const uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
  n = t.ByteLength();
  return true;
}

Napi::Value Crc32(const Napi::CallbackInfo& info) {
  const uint8_t* p;
  size_t n;
  if (!bytesArg(info, 0, p, n)) return info.Env().Undefined();
  uint32_t crc = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 0;
  return Napi::Number::New(info.Env(), ckpt::crc32(crc, p, n));
}

Napi::Value CrcTier(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), ckpt::crc_tier()); }

Napi::Value SetCrcTier(const Napi::CallbackInfo& info) {
  std::string name = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "auto";
  return Napi::String::New(info.Env(), ckpt::set_crc_tier(name.c_str()));
}

/** A streaming XXH3-128 state owned by a JS External; freed by xxh3Digest or by the garbage collector. */
struct Xxh3Handle {
  const ckpt::Xxh3Ops* ops;
  void* state;
};

void finalizeXxh3(Napi::Env, Xxh3Handle* h) {
  if (h->state) h->ops->destroy(h->state);
  delete h;
}

Napi::Value Xxh3New(const Napi::CallbackInfo& info) {
  const ckpt::Xxh3Ops& ops = ckpt::xxh3();
  void* s = ops.create();
  if (!s) return Napi::Error::New(info.Env(), "ckpt_native: out of memory (xxh3 state)").ThrowAsJavaScriptException(), info.Env().Undefined();
  return Napi::External<Xxh3Handle>::New(info.Env(), new Xxh3Handle{&ops, s}, finalizeXxh3);
}

Xxh3Handle* handleArg(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    Napi::TypeError::New(info.Env(), "ckpt_native: expected an xxh3 state").ThrowAsJavaScriptException();
    return nullptr;
  }
  Xxh3Handle* h = info[0].As<Napi::External<Xxh3Handle>>().Data();
  if (!h->state) {
    Napi::Error::New(info.Env(), "ckpt_native: xxh3 state used after its digest").ThrowAsJavaScriptException();
    return nullptr;
  }
  return h;
}

Napi::Value Xxh3Update(const Napi::CallbackInfo& info) {
  Xxh3Handle* h = handleArg(info);
  const uint8_t* p;
  size_t n;
  if (!h || !bytesArg(info, 1, p, n)) return info.Env().Undefined();
  h->ops->update(h->state, p, n);
  return info.Env().Undefined();
}

Napi::Value Xxh3Digest(const Napi::CallbackInfo& info) {
  Xxh3Handle* h = handleArg(info);
  if (!h) return info.Env().Undefined();
  uint8_t d[16];
  h->ops->digest(h->state, d);
  h->ops->destroy(h->state);
  h->state = nullptr;
  static const char* hex = "0123456789abcdef";
  std::string s(32, '0');
  for (int i = 0; i < 16; i++) { s[2 * i] = hex[d[i] >> 4]; s[2 * i + 1] = hex[d[i] & 15]; }
  return Napi::String::New(info.Env(), s);
}

Napi::Value Xxh3Tier(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), ckpt::xxh3().name); }

Napi::Value SetXxh3Tier(const Napi::CallbackInfo& info) {
  std::string name = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "auto";
  return Napi::String::New(info.Env(), ckpt::set_xxh3_tier(name.c_str()));
}

}  // namespace

void RegisterChecksum(Napi::Env env, Napi::Object exports) {
  exports.Set("crc32", Napi::Function::New(env, Crc32, "crc32"));
  exports.Set("crcTier", Napi::Function::New(env, CrcTier, "crcTier"));
  exports.Set("setCrcTier", Napi::Function::New(env, SetCrcTier, "setCrcTier"));
  exports.Set("xxh3New", Napi::Function::New(env, Xxh3New, "xxh3New"));
  exports.Set("xxh3Update", Napi::Function::New(env, Xxh3Update, "xxh3Update"));
  exports.Set("xxh3Digest", Napi::Function::New(env, Xxh3Digest, "xxh3Digest"));
  exports.Set("xxh3Tier", Napi::Function::New(env, Xxh3Tier, "xxh3Tier"));
  exports.Set("setXxh3Tier", Napi::Function::New(env, SetXxh3Tier, "setXxh3Tier"));
}
