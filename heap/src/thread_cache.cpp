// thread_cache.cpp: per-thread caches of small blocks (local mode).
//
// Taking the heap lock for every small allocation makes two busy threads
// bounce the lock's cache lines between cores. So, as in mimalloc and Metall,
// each thread keeps, per open heap, a few free blocks of each size up to
// kCacheMax (64 of each small size, 4 of each larger bin, 8 MiB at most) and
// allocates and frees them without the lock.
//
// Crash safety: a block in a cache is marked kCached in the file, and its
// header's `tag` word names the session (the process's open heap) whose
// thread holds it. The chain walk counts such blocks as allocated. Whoever
// next finds that session dead (recovery, or the next process to open the
// heap and find its slot stale) frees every kCached block it owned, so a
// process killed with full caches loses nothing.
//
// The rule that keeps this sound without the lock: while a block is kCached,
// only the thread whose cache holds it changes its header, and `tag` is
// written before the block becomes kCached and left alone while it is. Moving
// a block between the cache and its user is one publish() (kCached <-> kUsed).
//
// Network mode has no caches: nothing may be written outside the lock there.
#include <algorithm>

#include "impl.hpp"

namespace sheaf {
namespace {

using namespace format;

constexpr std::size_t kSmallDepth = 64;     // small blocks of one size a thread may keep
constexpr std::size_t kLargeDepth = 4;      // larger blocks of one bin a thread may keep
constexpr std::size_t kRefill = 16;         // small blocks taken from the heap at a time
constexpr std::uint64_t kBudget = 8 << 20;  // bytes one thread may keep from one heap

// This thread's caches, one per heap it has used. A cache whose heap closed
// has heap == nullptr and is dropped at the next lookup.
struct ThreadCaches {
  std::vector<std::unique_ptr<ThreadCache>> caches;
  ~ThreadCaches() {
    for (auto& cache : caches) {
      // The weak reference keeps the Impl alive if the heap is being closed
      // right now; retire_cache() then finds the cache already retired.
      if (std::shared_ptr<Heap::Impl> heap = cache->owner.lock()) heap->retire_cache(cache.get());
    }
  }
};
thread_local ThreadCaches this_thread_caches;

}  // namespace

// Lock order, everywhere: caches_mutex, then the heap lock. The caches are
// never used inside a locked section (allocate_in() in heap.cpp), so no
// thread takes caches_mutex while it holds the heap lock.
ThreadCache* Heap::Impl::thread_cache() {
  auto& caches = this_thread_caches.caches;
  for (auto& cache : caches) {
    if (cache->heap.load(std::memory_order_acquire) == this) return cache.get();
  }
  std::erase_if(caches, [](const auto& cache) { return cache->heap.load() == nullptr; });
  auto cache = std::make_unique<ThreadCache>();
  cache->heap.store(this);
  cache->owner = weak_from_this();
  {
    std::lock_guard guard(caches_mutex);
    all_caches.push_back(cache.get());
  }
  caches.push_back(std::move(cache));
  return caches.back().get();
}

std::uint64_t Heap::Impl::cached_allocate(std::uint64_t size) {
  ThreadCache* cache = thread_cache();
  std::vector<std::uint64_t>& blocks = cache->blocks[bin_of(size)];
  // Small bins hold one size; a larger bin holds a range, so look for a fit.
  auto fit = blocks.end();
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    if (block(*it)->size() >= size) {
      fit = std::prev(it.base());
      break;
    }
  }
  if (fit == blocks.end()) {
    LockScope lock(*this, true);
    const std::size_t count = size <= kSmallMax ? kRefill : 1;
    for (std::size_t i = 0; i < count; ++i) {
      std::uint64_t offset = 0;
      try {
        offset = allocate_block(size - kBlockHeaderBytes, kAlign, kCached);
      } catch (const Error& e) {
        if (e.code() != Errc::kOutOfSpace || blocks.empty()) throw;
        break;  // near the size limit: one block is enough
      }
      // A kill before this store leaves a kCached block owned by session 0,
      // which no live session is: it is reclaimed like any dead one's.
      std::atomic_ref<std::uint64_t>(block(offset)->tag).store(session_id);
      blocks.push_back(offset);
      cache->bytes += block(offset)->size();
    }
    fit = blocks.end() - 1;
  }
  const std::uint64_t offset = *fit;
  *fit = blocks.back();
  blocks.pop_back();
  // The block may be a little larger than asked (a tail too small to split
  // stays with it): keep its own size.
  const std::uint64_t actual = block(offset)->size();
  cache->bytes -= actual;
  publish(block(offset)->size_and_state, actual | kUsed);
  return offset;
}

void Heap::Impl::cached_free(std::uint64_t offset) {
  ThreadCache* cache = thread_cache();
  BlockHeader* header = block(offset);
  const std::uint64_t size = header->size();
  std::vector<std::uint64_t>& blocks = cache->blocks[bin_of(size)];
  std::atomic_ref<std::uint64_t>(header->tag).store(session_id);
  publish(header->size_and_state, size | kCached);
  blocks.push_back(offset);
  cache->bytes += size;
  const std::size_t depth = size <= kSmallMax ? kSmallDepth : kLargeDepth;
  if (blocks.size() > depth || cache->bytes > kBudget) {
    // Give the older half of this bin back to the heap (at least one block).
    LockScope lock(*this, true);
    const auto give = static_cast<std::ptrdiff_t>(std::max<std::size_t>(1, blocks.size() / 2));
    for (auto it = blocks.begin(); it != blocks.begin() + give; ++it) {
      cache->bytes -= block(*it)->size();
      free_block(*it);
    }
    blocks.erase(blocks.begin(), blocks.begin() + give);
  }
}

void Heap::Impl::empty_cache(ThreadCache* cache) {
  for (auto& blocks : cache->blocks) {
    for (std::uint64_t offset : blocks) free_block(offset);
    blocks.clear();
  }
  cache->bytes = 0;
}

// Thread caches exist only in local mode, where releasing the lock cannot
// fail (there is no flush), so these two lose no error by being noexcept.
void Heap::Impl::retire_cache(ThreadCache* cache) noexcept {
  if (forked()) return;  // the parent's blocks: its own threads retire them
  std::lock_guard guard(caches_mutex);
  if (cache->heap.load() == nullptr) return;  // the heap was closed first
  std::erase(all_caches, cache);
  try {
    LockScope lock(*this, true);
    empty_cache(cache);
    lock.release();
  } catch (...) {
    // The blocks stay kCached; the next process to find this session gone frees them.
  }
  cache->heap.store(nullptr);
}

void Heap::Impl::retire_all_caches() noexcept {
  std::lock_guard guard(caches_mutex);
  if (all_caches.empty()) return;
  try {
    LockScope lock(*this, true);
    for (ThreadCache* cache : all_caches) empty_cache(cache);
    lock.release();
  } catch (...) {
  }
  for (ThreadCache* cache : all_caches) cache->heap.store(nullptr);
  all_caches.clear();
}

}  // namespace sheaf
