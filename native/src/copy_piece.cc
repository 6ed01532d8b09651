// copyPiece: one output piece made of dense source runs (and zeros), computed and written entirely on a libuv pool
// thread: pread → cast (when the dtypes differ) → CRC-32 + XXH3-128 → pwrite, window by window, O_DIRECT for the
// piece's block-aligned middle. This is the same byte stream the TypeScript worker (src/exec/worker.ts, streamPiece
// + PieceSink) produces; doing it here costs no V8 isolate, no JS per window and no message copies, which on a
// bf16-kept conversion was most of the CPU that was not the unavoidable copy out of the page cache.
//
// The spec is a Float64Array (numbers only: it crosses no thread boundary as a JS object):
//   [0] outFd  [1] directFd (-1: none)  [2] align (direct-I/O block; 0: no direct I/O)  [3] outOffset
//   [4] outDtype code (-1: not castable)  [5] out element size  [6] flags (1: XXH3-128 digest, 2: count F16 overflow)
//   [7] segment count, then 5 numbers per segment in output order:
//       srcFd (-1: zeros)  srcByteOffset  outBytes  srcDtype code (-1: same dtype as the output)  src element size
// Resolves to { crc, bytes, f16Overflow, digest?, directRefused }.
#include <napi.h>

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <string>
#include <vector>

#include "aligned_memory.h"
#include "checksum.h"
#include "ckpt_convert.h"
#include "kernels.h"

namespace {

constexpr size_t kWindow = 4u << 20;  // bytes per output window, as DIRECT_WINDOW in worker.ts
constexpr size_t kCachedChunk = 1u << 20;  // bytes per page-cache write (see writeCached)

struct Segment {
  int srcFd;
  uint64_t srcOffset;
  uint64_t outBytes;
  int srcCode;
  int srcSize;
};

/** A per-thread buffer on huge-page-backed memory (aligned_memory.h), grown on demand, never freed. */
struct ThreadBuffer {
  uint8_t* p = nullptr;
  size_t cap = 0;
  uint8_t* get(size_t n) {
    if (n <= cap) return p;
    if (p) munmap(p, cap);
    p = ckpt::huge_aligned_alloc(n);
    cap = p ? ckpt::huge_rounded(n) : 0;
    return p;
  }
};
thread_local ThreadBuffer t_out, t_stage;

// Page-cache writes of one file are serialised here. The kernel serialises them anyway (the inode's i_rwsem), but a
// writer waiting for it spins while the owner copies a window: on tmpfs a quarter of a conversion's CPU went to
// rwsem_spin_on_owner. Waiting on this mutex sleeps instead. Direct writes are not serialised: their time is the
// device's, and the file system takes the lock shared where it can.
std::mutex g_locksMu;
std::unordered_map<int, std::unique_ptr<std::mutex>> g_locks;
std::mutex& fileLock(int fd) {
  std::lock_guard<std::mutex> g(g_locksMu);
  std::unique_ptr<std::mutex>& m = g_locks[fd];
  if (!m) m.reset(new std::mutex());
  return *m;
}

class CopyPiece : public Napi::AsyncWorker {
 public:
  CopyPiece(Napi::Env env, std::vector<double> spec)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), spec_(std::move(spec)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  bool Parse(std::string& err) {
    const std::vector<double>& s = spec_;
    if (s.size() < 8) return err = "spec too short", false;
    outFd_ = (int)s[0];
    directFd_ = (int)s[1];
    align_ = (size_t)s[2];
    pos_ = (uint64_t)s[3];
    outCode_ = (int)s[4];
    outSize_ = (int)s[5];
    flags_ = (int)s[6];
    size_t n = (size_t)s[7];
    if (s.size() != 8 + 5 * n) return err = "spec length does not match its segment count", false;
    if (outSize_ <= 0 || outSize_ > 16) return err = "bad output element size", false;
    if (align_ != 0 && (align_ & (align_ - 1)) != 0) return err = "alignment must be a power of two", false;
    if (align_ > kWindow) return err = "alignment above the window size", false;
    for (size_t i = 0; i < n; i++) {
      const double* g = &s[8 + 5 * i];
      Segment seg{(int)g[0], (uint64_t)g[1], (uint64_t)g[2], (int)g[3], (int)g[4]};
      const bool cast = seg.srcFd >= 0 && seg.srcCode >= 0 && seg.srcCode != outCode_;
      if (cast && (seg.srcCode > 4 || outCode_ < 0 || outCode_ > 4)) return err = "cast between non-castable dtypes", false;
      if (cast && seg.srcSize != ckpt_dtype_size(seg.srcCode)) return err = "source element size does not match its dtype", false;
      if (seg.outBytes % (uint64_t)outSize_ != 0) return err = "segment is not whole elements", false;
      total_ += seg.outBytes;
      segs_.push_back(seg);
    }
    // Pieces shorter than two blocks gain nothing from direct I/O (worker.ts uses the same rule).
    if (directFd_ < 0 || align_ == 0 || total_ < 2 * align_) align_ = 0;
    return true;
  }

 protected:
  void Execute() override {
    void* xs = nullptr;
    const ckpt::Xxh3Ops& ops = ckpt::xxh3();
    if (flags_ & 1) {
      xs = ops.create();
      if (!xs) return SetError("out of memory (xxh3 state)");
    }
    std::string e = Run(ops, xs);
    if (xs) {
      if (e.empty()) {
        uint8_t d[16];
        ops.digest(xs, d);
        static const char* hex = "0123456789abcdef";
        digest_.assign(32, '0');
        for (int i = 0; i < 16; i++) { digest_[2 * i] = hex[d[i] >> 4]; digest_[2 * i + 1] = hex[d[i] & 15]; }
      }
      ops.destroy(xs);
    }
    if (!e.empty()) SetError(e);
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("crc", Napi::Number::New(env, crc_));
    o.Set("bytes", Napi::Number::New(env, (double)total_));
    o.Set("f16Overflow", Napi::Number::New(env, overflow_));
    if (flags_ & 1) o.Set("digest", Napi::String::New(env, digest_));
    o.Set("directRefused", Napi::Boolean::New(env, directRefused_));
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  // "ENOSPC: No space left on device, write fd 12": the errno name first, as Node's fs errors put it (the executor
  // recognises disk-full and permission errors by it), and the descriptor, which the TypeScript side names.
  static std::string sysErr(const char* what, int err, int fd) {
    const char* name = strerrorname_np(err);
    return std::string(name ? name : "EIO") + ": " + strerror(err) + ", " + what + " fd " + std::to_string(fd);
  }

  std::string readAll(int fd, uint8_t* dst, size_t n, uint64_t at) {
    size_t done = 0;
    while (done < n) {
      ssize_t r = pread(fd, dst + done, n - done, (off_t)(at + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        return sysErr("read", errno, fd);
      }
      if (r == 0) return "short read: fd " + std::to_string(fd) + " ends before byte " + std::to_string(at + n) + " (file truncated or changed during the run?)";
      done += (size_t)r;
    }
    return "";
  }

  /** A write through the page cache, under the file's lock. */
  std::string writeCached(const uint8_t* src, size_t n, uint64_t at) {
    // In 1 MiB writes, each under the lock: page-cache writes of ~1 MiB cost less kernel time than larger ones
    // (measured in worker.ts's WINDOW), and the other lane gets the file between them.
    const size_t chunk = kCachedChunk;
    for (size_t o = 0; o < n; o += chunk) {
      std::lock_guard<std::mutex> g(*outLock_);
      std::string e = writeAll(outFd_, src + o, std::min(chunk, n - o), at + o);
      if (!e.empty()) return e;
    }
    return "";
  }

  static std::string writeAll(int fd, const uint8_t* src, size_t n, uint64_t at, int* errOut = nullptr) {
    size_t done = 0;
    while (done < n) {
      ssize_t r = pwrite(fd, src + done, n - done, (off_t)(at + done));
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errOut) *errOut = errno;
        return sysErr("write", errno, fd);
      }
      done += (size_t)r;
    }
    return "";
  }

  /** Output bytes [off, off + n) of the piece into dst. Cast segments are computed element-wise; a window edge that
   * splits an element casts that element into a small temporary and copies the needed bytes. */
  std::string Produce(uint8_t* dst, uint64_t off, size_t n) {
    uint64_t segStart = 0;
    for (const Segment& g : segs_) {
      const uint64_t segEnd = segStart + g.outBytes;
      if (n == 0) break;
      if (off >= segEnd) { segStart = segEnd; continue; }
      const uint64_t in = off - segStart;  // byte offset inside the segment's output
      const size_t m = (size_t)std::min<uint64_t>(n, segEnd - off);
      if (g.srcFd < 0) {
        memset(dst, 0, m);
      } else if (g.srcCode < 0 || g.srcCode == outCode_) {
        std::string e = readAll(g.srcFd, dst, m, g.srcOffset + in);
        if (!e.empty()) return e;
      } else {
        std::string e = CastInto(g, dst, in, m);
        if (!e.empty()) return e;
      }
      dst += m;
      off += m;
      n -= m;
      segStart = segEnd;
    }
    return n == 0 ? "" : "internal: window past the piece's segments";
  }

  std::string CastInto(const Segment& g, uint8_t* dst, uint64_t in, size_t m) {
    const uint64_t os = (uint64_t)outSize_, ss = (uint64_t)g.srcSize;
    const uint64_t e0 = in / os, e1 = (in + m + os - 1) / os;  // elements touched
    const size_t ne = (size_t)(e1 - e0);
    uint8_t* stage = t_stage.get(ne * ss);
    if (!stage) return "out of memory (staging buffer)";
    std::string e = readAll(g.srcFd, stage, ne * ss, g.srcOffset + e0 * ss);
    if (!e.empty()) return e;
    if (flags_ & 2) {
      // Count each element once: the one whose first output byte lies in this window.
      const uint64_t c0 = (in + os - 1) / os, c1 = (in + m + os - 1) / os;
      if (c1 > c0) overflow_ += ckpt::stats(stage + (c0 - e0) * ss, g.srcCode, (size_t)(c1 - c0)).f16Overflow;
    }
    const size_t head = (size_t)(in % os);
    size_t done = 0;
    uint64_t el = e0;
    if (head != 0) {  // the window starts inside an element
      uint8_t tmp[16];
      ckpt::cast(stage, g.srcCode, tmp, outCode_, 1);
      done = std::min<size_t>(m, os - head);
      memcpy(dst, tmp + head, done);
      el++;
    }
    const size_t whole = (m - done) / os;
    if (whole > 0) ckpt::cast(stage + (el - e0) * ss, g.srcCode, dst + done, outCode_, whole);
    done += whole * os;
    el += whole;
    if (done < m) {  // the window ends inside an element
      uint8_t tmp[16];
      ckpt::cast(stage + (el - e0) * ss, g.srcCode, tmp, outCode_, 1);
      memcpy(dst + done, tmp, m - done);
    }
    return "";
  }

  std::string Run(const ckpt::Xxh3Ops& ops, void* xs) {
    outLock_ = &fileLock(outFd_);
    uint8_t* buf = t_out.get(kWindow);
    if (!buf) return "out of memory (output buffer)";
    uint64_t done = 0;
    uint64_t pos = pos_;
    while (done < total_) {
      // The buffer's byte 0 sits at file offset `base`, a block boundary: only the piece's first window starts `lead`
      // bytes in; every later window starts on a block (the previous one ended on the buffer's end).
      const size_t a = align_;
      const size_t lead = a ? (size_t)(pos % a) : 0;
      const uint64_t base = pos - lead;
      const size_t m = (size_t)std::min<uint64_t>(total_ - done, kWindow - lead);
      uint8_t* w = buf + lead;
      std::string e = Produce(w, done, m);
      if (!e.empty()) return e;
      crc_ = ckpt::crc32(crc_, w, m);
      if (xs) ops.update(xs, w, m);
      const size_t end = lead + m;
      const size_t a0 = a == 0 ? 0 : (lead == 0 ? 0 : a);  // first whole block of the buffer
      const size_t a1 = a == 0 ? 0 : end / a * a;          // end of the last whole block
      if (a != 0 && a1 > a0) {
        // Partial blocks through the page cache, whole blocks directly: no block is written both ways.
        if (lead != 0) { e = writeCached(w, a0 - lead, pos); if (!e.empty()) return e; }
        int werr = 0;
        e = writeAll(directFd_, buf + a0, a1 - a0, base + a0, &werr);
        if (!e.empty()) {
          if (werr != EINVAL) return e;
          // Alignment rules stricter than the block size: this and the rest of the piece through the page cache.
          directRefused_ = true;
          align_ = 0;
          e = writeCached(buf + a0, a1 - a0, base + a0);
          if (!e.empty()) return e;
        }
        if (end > a1) { e = writeCached(buf + a1, end - a1, base + a1); if (!e.empty()) return e; }
      } else {
        e = writeCached(w, m, pos);
        if (!e.empty()) return e;
      }
      done += m;
      pos += m;
    }
    return "";
  }

  Napi::Promise::Deferred deferred_;
  std::vector<double> spec_;
  std::vector<Segment> segs_;
  int outFd_ = -1, directFd_ = -1, outCode_ = -1, outSize_ = 1, flags_ = 0;
  size_t align_ = 0;
  std::mutex* outLock_ = nullptr;
  uint64_t pos_ = 0, total_ = 0;
  uint32_t crc_ = 0;
  double overflow_ = 0;
  std::string digest_;
  bool directRefused_ = false;
};

Napi::Value CopyPieceJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    Napi::TypeError::New(env, "ckpt_native: copyPiece(spec) needs a Float64Array").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Float64Array a = info[0].As<Napi::Float64Array>();
  std::vector<double> spec(a.Data(), a.Data() + a.ElementLength());
  auto* w = new CopyPiece(env, std::move(spec));
  std::string err;
  if (!w->Parse(err)) {
    delete w;
    Napi::RangeError::New(env, "ckpt_native: copyPiece: " + err).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

void RegisterCopyPiece(Napi::Env env, Napi::Object exports) {
  exports.Set("copyPiece", Napi::Function::New(env, CopyPieceJs, "copyPiece"));
}
