// Anonymous memory on a 2 MiB boundary, backed by transparent huge pages where the kernel allows them
// (MADV_HUGEPAGE; THP is usually "madvise"-only). For O_DIRECT buffers: with 4 KiB pages every direct write pins 512
// pages per 2 MiB and a copy into the buffer takes a TLB miss per page; one huge page makes both per-2-MiB. The
// mapping is over-allocated by 2 MiB and trimmed so that a huge page can back it at all.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

namespace ckpt {

constexpr size_t kHugePage = 2u << 20;

/** `len` rounded up to whole huge pages (at least one). */
inline size_t huge_rounded(size_t len) { return len == 0 ? kHugePage : (len + kHugePage - 1) / kHugePage * kHugePage; }

/** huge_rounded(len) bytes, 2 MiB-aligned; nullptr when mmap fails. Free with munmap(p, huge_rounded(len)). */
inline uint8_t* huge_aligned_alloc(size_t len) {
  len = huge_rounded(len);
  void* raw = mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  uintptr_t base = ((uintptr_t)raw + kHugePage - 1) & ~(uintptr_t)(kHugePage - 1);
  if (base > (uintptr_t)raw) munmap(raw, base - (uintptr_t)raw);
  uintptr_t end = (uintptr_t)raw + len + kHugePage;
  if (end > base + len) munmap((void*)(base + len), end - (base + len));
#ifdef MADV_HUGEPAGE
  madvise((void*)base, len, MADV_HUGEPAGE);
#endif
  return (uint8_t*)base;
}

}  // namespace ckpt
