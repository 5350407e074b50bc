// thread_cache.cpp: per-thread caches of small blocks (local mode).
//
// Taking the heap lock for every small allocation makes two busy threads
// bounce the lock's cache lines between cores. So, as in mimalloc and Metall,
// each thread keeps, per open heap, a few free blocks of each size up to
// kCacheMax (64 of each small size, 4 of each larger bin, 8 MiB at most) and
// allocates and frees them without the lock.
//
// Crash safety: a block in a cache is marked kCached in the file, its
// header's `tag` names the session (the process's open heap) whose thread
// holds it, and it is listed in the cache's ledger (format::CacheLedger), a
// block of the heap that only this thread writes. Whoever next finds that
// session dead (the next locker after its death, the next process to open
// the heap) frees what its ledgers list (recovery.cpp), so a process killed
// with full caches loses nothing and nobody walks the heap to find out.
//
// The rules that keep this sound without the lock: while a block is kCached,
// only the thread whose cache holds it changes its header; `tag` is written
// before the block becomes kCached; and the ledger lists every kCached block
// of its cache at every instant: a block is listed before it turns kCached
// and unlisted only after it turns kUsed, and travels as the ledger's
// in_flight in between. Every store to a ledger is a release store, so a
// kill at any instant leaves them in this order. Moving blocks between a
// cache and the heap happens under the lock, one Operation per block.
//
// Network mode has no caches: nothing may be written outside the lock there.
#include <algorithm>
#include <cstring>

#include "impl.hpp"
#include "posix.hpp"

namespace sheaf {
namespace {

using namespace format;

constexpr std::size_t kRefill = 16;         // small blocks taken from the heap at a time
constexpr std::uint64_t kBudget = 8 << 20;  // bytes one thread may keep from one heap

// How many blocks of a bin a cache keeps at rest (one more slot holds a
// block being added before the cache gives half back).
constexpr std::uint32_t depth_of(int bin) {
  return cache_slots(bin) - 1;
}

// This thread's caches, one per heap it has used. A cache whose heap closed
// has heap == nullptr and is dropped at the next lookup.
struct ThreadCaches {
  std::vector<std::unique_ptr<ThreadCache>> caches;
  ~ThreadCaches() {
    Heap::Impl::last_used_cache = nullptr;
    for (auto& cache : caches) {
      // The weak reference keeps the Impl alive if the heap is being closed
      // right now; retire_cache() then finds the cache already retired.
      if (std::shared_ptr<Heap::Impl> heap = cache->owner.lock()) heap->retire_cache(cache.get());
    }
  }
};
thread_local ThreadCaches this_thread_caches;

// A store to a ledger or to a cached block's header: a release store, at
// which a test may kill us (posix::inject_crash).
template <class Word>
void ledger_store(Word& word, std::type_identity_t<Word> value) {
  posix::crash_point();
  publish(word, value);
}

std::uint64_t* slots_of(CacheLedger& ledger, int bin) {
  return ledger.slots + cache_slot_base(bin);
}

// The slot of a block in the cache's bin of `size` that is at least `size`
// bytes, or the bin's count if none: small bins hold one size, a larger bin
// a range.
std::uint32_t fitting_slot(const Heap::Impl& impl, const CacheLedger& ledger, int bin,
                           std::uint64_t size) {
  const std::uint64_t* slots = ledger.slots + cache_slot_base(bin);
  const std::uint32_t count = ledger.counts[bin];
  for (std::uint32_t i = count; i-- > 0;) {
    if (impl.block(slots[i])->size() >= size) return i;
  }
  return count;
}

// Under the lock, inside an operation: a ledger count changed and saved.
// The counts are 32-bit, two to the 64-bit word the undo log saves.
void store_count(Heap::Impl& impl, CacheLedger& ledger, int bin, std::uint32_t value)
    REQUIRES(impl.heap_lock) {
  static_assert(offsetof(CacheLedger, counts) % sizeof(std::uint64_t) == 0);
  impl.save(reinterpret_cast<const std::uint64_t*>(&ledger.counts[bin & ~1]));
  publish(ledger.counts[bin], value);
}

}  // namespace

constinit thread_local ThreadCache* Heap::Impl::last_used_cache = nullptr;

// Lock order, everywhere: caches_mutex, then the heap lock. The caches are
// never used inside a locked section (allocate_in() in heap.cpp), so no
// thread takes caches_mutex while it holds the heap lock.
ThreadCache* Heap::Impl::find_thread_cache(bool make) {
  auto& caches = this_thread_caches.caches;
  for (auto& cache : caches) {
    if (cache->heap.load(std::memory_order_acquire) == this) return last_used_cache = cache.get();
  }
  if (!make) return nullptr;
  last_used_cache = nullptr;  // it may be one of those erased now
  std::erase_if(caches, [](const auto& cache) { return cache->heap.load() == nullptr; });
  auto cache = std::make_unique<ThreadCache>();
  {
    // Its ledger, chained to the session's, in one operation. A heap too
    // full (or too small) for one leaves this thread without a cache.
    ExclusiveSection lock(*this);
    Operation op(*this);
    State& s = state();
    try {
      const std::uint64_t ledger_block = allocate_block(sizeof(CacheLedger), kAlign);
      auto* ledger = at<CacheLedger>(ledger_block + kBlockHeaderBytes);
      // The payload of a block this operation took: nothing to save.
      std::memset(static_cast<void*>(ledger), 0, sizeof(CacheLedger));
      ledger->magic = kLedgerMagic;
      ledger->session = session_id;
      ledger->next = s.session_ledgers[session_slot];
      store(s.session_ledgers[session_slot], ledger_block);
      cache->ledger_block = ledger_block;
      cache->ledger = ledger;
    } catch (const Error& e) {
      if (e.code() != Errc::kOutOfSpace) throw;
    }
    op.commit();  // with a ledger, or none (out of space)
  }
  cache->heap.store(this);
  cache->owner = weak_from_this();
  {
    MutexLock guard(caches_mutex);
    all_caches.push_back(cache.get());
  }
  caches.push_back(std::move(cache));
  return last_used_cache = caches.back().get();
}

// A block from the heap itself, for a thread without a cache or a bin with
// no room. Out of line, so that cached_allocate's fast path stays small.
[[gnu::noinline]] std::uint64_t Heap::Impl::allocate_past_the_cache(std::uint64_t size) {
  ExclusiveSection lock(*this);
  Operation op(*this);
  return op.commit(allocate_block(size - kBlockHeaderBytes, kAlign));
}

std::uint64_t Heap::Impl::cached_allocate(std::uint64_t size) {
  ThreadCache* cache = thread_cache();
  if (cache->ledger == nullptr) return allocate_past_the_cache(size);
  CacheLedger& ledger = *cache->ledger;
  const int bin = bin_of(size);
  std::uint64_t* slots = slots_of(ledger, bin);
  std::uint32_t count = ledger.counts[bin];
  std::uint32_t fit = fitting_slot(*this, ledger, bin, size);
  if (fit == count) {
    const std::uint32_t before = count;
    count = refill_cache(*cache, bin, size);
    if (count == before) return allocate_past_the_cache(size);  // no room in the bin
    fit = count - 1;
  }
  const std::uint64_t offset = slots[fit];
  // The block may be a little larger than asked (a tail too small to split
  // stays with it): keep its own size.
  const std::uint64_t actual = block(offset)->size();
  ledger_store(ledger.in_flight, offset);
  ledger_store(slots[fit], slots[count - 1]);
  ledger_store(ledger.counts[bin], count - 1);
  // kUsed first, while the tag still names our session (a walk by another
  // process meanwhile must see a kCached block as ours, alive); then its
  // check word. A death in between leaves a kUsed block in flight, freed by
  // whoever reclaims the session.
  ledger_store(block(offset)->size_and_state, actual | kUsed);
  ledger_store(block(offset)->tag, used_tag(offset));
  ledger_store(ledger.in_flight, std::uint64_t{0});  // from here on the block is the caller's
  cache->bytes -= actual;
  return offset;
}

// Takes blocks of `size` bytes from the heap into the cache's bin (whose
// blocks all fail to fit); returns the bin's new count.
std::uint32_t Heap::Impl::refill_cache(ThreadCache& cache, int bin, std::uint64_t size) {
  CacheLedger& ledger = *cache.ledger;
  std::uint64_t* slots = slots_of(ledger, bin);
  ExclusiveSection lock(*this);
  std::uint32_t count = ledger.counts[bin];
  const std::uint32_t wanted = size <= kSmallMax ? kRefill : 1;
  for (std::uint32_t taken = 0; taken < wanted && count < cache_slots(bin); ++taken) {
    Operation op(*this);
    std::uint64_t offset = 0;
    try {
      offset = allocate_block(size - kBlockHeaderBytes, kAlign, kCached);
    } catch (const Error& e) {
      if (e.code() != Errc::kOutOfSpace || taken == 0) throw;
      op.commit();
      break;  // near the size limit: one block is enough
    }
    // Until the operation ends, a death undoes all of this, and the
    // recovery that undoes it skips the (then free) block we listed.
    publish(block(offset)->tag, session_id);  // a block this operation took: not saved
    ledger_store(slots[count], offset);
    ledger_store(ledger.counts[bin], ++count);
    cache.bytes += block(offset)->size();
    op.commit();
  }
  return count;
}

// Under the lock: the block in slot `index` of the bin goes back to the heap.
void Heap::Impl::give_back(ThreadCache& cache, int bin, std::uint32_t index) {
  CacheLedger& ledger = *cache.ledger;
  std::uint64_t* slots = slots_of(ledger, bin);
  const std::uint32_t count = ledger.counts[bin];
  const std::uint64_t offset = slots[index];
  ledger_store(ledger.in_flight, offset);
  Operation op(*this);
  ledger_store(slots[index], slots[count - 1]);
  ledger_store(ledger.counts[bin], count - 1);
  cache.bytes -= block(offset)->size();
  free_block(offset);
  // In the same operation, saved: undone, the block is kCached and in
  // flight again; done, no stale offset is left to name a block that
  // someone else may own by the time a dead session is reclaimed.
  store(ledger.in_flight, 0);
  op.commit();
}

// cached_free's slow paths, out of line like allocate_past_the_cache.
[[gnu::noinline]] void Heap::Impl::free_past_the_cache(std::uint64_t offset) {
  ExclusiveSection lock(*this);
  Operation op(*this);
  free_block(offset);
  op.commit();
}

[[gnu::noinline]] void Heap::Impl::give_back_half(ThreadCache& cache, int bin) {
  ExclusiveSection lock(*this);
  const std::uint32_t give = std::max<std::uint32_t>(1, cache.ledger->counts[bin] / 2);
  for (std::uint32_t i = 0; i < give; ++i) give_back(cache, bin, 0);
}

void Heap::Impl::cached_free(std::uint64_t offset) {
  ThreadCache* cache = thread_cache();
  if (cache->ledger == nullptr) return free_past_the_cache(offset);
  CacheLedger& ledger = *cache->ledger;
  BlockHeader* header = block(offset);
  const std::uint64_t size = header->size();
  const int bin = bin_of(size);
  std::uint64_t* slots = slots_of(ledger, bin);
  if (ledger.counts[bin] > 0 &&
      (ledger.counts[bin] >= depth_of(bin) || cache->bytes + size > kBudget)) {
    // Give half of this bin back to the heap first (at least one block), so
    // that a failure to take the lock leaves the cache as it was and the
    // bin never holds more than its depth.
    give_back_half(*cache, bin);
  }
  const std::uint32_t count = ledger.counts[bin];
  ledger_store(ledger.in_flight, offset);
  ledger_store(slots[count], offset);
  ledger_store(ledger.counts[bin], count + 1);
  ledger_store(header->tag, session_id);
  ledger_store(header->size_and_state, size | kCached);
  ledger_store(ledger.in_flight, std::uint64_t{0});
  cache->bytes += size;
}

// Named blocks: a destroyed object's block stays in the destroying thread's
// cache, where the next construct of a name of that size finds it. Both
// moves happen inside the caller's operation, and every word they change,
// the ledger's included (but for destroy's listing: keep_in_cache()), is
// saved in the undo log: a death (or an exception) anywhere in that
// operation puts the block back where it was, named or cached, and the
// ledger with it. (The stores come in the order the thread caches' rules
// ask, for a death that the log cannot undo because it overflowed.) The
// bins, their links and the counters are not touched: a construct+destroy
// pair saves four words each way instead of a dozen.
//
// Small blocks only (the exact-size bins, up to kSmallMax): a larger one
// would wait for a construct of its size by this thread alone, its space
// out of reach of every other size, thread and process (up to the cache's
// 8 MiB; a heap with a max_size ran out of space that way).
std::uint64_t Heap::Impl::take_cached_for_named(ThreadCache& cache, std::uint64_t size) {
  if (cache.ledger == nullptr || size > kSmallMax) return 0;
  CacheLedger& ledger = *cache.ledger;
  const int bin = bin_of(size);
  const std::uint32_t count = ledger.counts[bin];
  if (count == 0) return 0;
  // A small bin holds one size (a block a little larger, whose tail was too
  // small to split, sits in its own size's bin): the last block fits.
  const std::uint64_t offset = slots_of(ledger, bin)[count - 1];
  BlockHeader* header = block(offset);
  const std::uint64_t actual = header->size();
  if (actual < size) return 0;  // (a ledger damaged in our own process)
  // Pending first, then unlisted; the caller writes the tag (a serial), so
  // save it here, while it still names our session.
  store(header->size_and_state, actual | kPending);
  save(&header->tag);
  store_count(*this, ledger, bin, count - 1);
  cache.bytes -= actual;
  return offset;
}

bool Heap::Impl::keep_in_cache(ThreadCache& cache, std::uint64_t offset, bool last_step) {
  if (cache.ledger == nullptr) return false;
  CacheLedger& ledger = *cache.ledger;
  BlockHeader* header = block(offset);
  const std::uint64_t size = header->size();
  if (size > kSmallMax) return false;  // (see above)
  const int bin = bin_of(size);
  const std::uint32_t count = ledger.counts[bin];
  if (count >= depth_of(bin) || cache.bytes + size > kBudget) return false;
  // Listed first, then ours, then cached. As the operation's last step
  // (destroy), the listing need not be saved: nothing after it can fail, so
  // only a death undoes the rest, and that leaves the block named again and
  // listed in the dead session's ledger, which recovery then skips (it
  // frees only what is kCached and ours, or in flight).
  if (last_step) {
    ledger_store(slots_of(ledger, bin)[count], offset);
    ledger_store(ledger.counts[bin], count + 1);
  } else {
    store(slots_of(ledger, bin)[count], offset);
    store_count(*this, ledger, bin, count + 1);
  }
  store(header->tag, session_id);
  store(header->size_and_state, size | kCached);
  cache.bytes += size;
  return true;
}

void Heap::Impl::empty_cache(ThreadCache* cache) {
  if (cache->ledger == nullptr) return;
  CacheLedger& ledger = *cache->ledger;
  for (int bin = 0; bin < kCacheBins; ++bin) {
    while (ledger.counts[bin] > 0) give_back(*cache, bin, ledger.counts[bin] - 1);
  }
  // Unchain the ledger from its session's and free it, in one operation.
  Operation op(*this);
  std::uint64_t* link = &state().session_ledgers[session_slot];
  for (int guard = 0; *link != 0 && *link != cache->ledger_block && guard < 100000; ++guard) {
    link = &at<CacheLedger>(*link + kBlockHeaderBytes)->next;
  }
  if (*link == cache->ledger_block) store(*link, ledger.next);
  free_block(cache->ledger_block);
  op.commit();
  cache->ledger = nullptr;
  cache->ledger_block = 0;
  cache->bytes = 0;
}
// Thread caches exist only in local mode, where releasing the lock cannot
// fail (there is no flush), so these two lose no error by being noexcept.
void Heap::Impl::retire_cache(ThreadCache* cache) noexcept {
  if (forked()) return;  // the parent's blocks: its own threads retire them
  MutexLock guard(caches_mutex);
  if (cache->heap.load() == nullptr) return;  // the heap was closed first
  std::erase(all_caches, cache);
  try {
    ExclusiveSection lock(*this);
    empty_cache(cache);
    lock.release();
  } catch (...) {
    // The blocks stay kCached; the next process to find this session gone frees them.
  }
  cache->heap.store(nullptr);
}

void Heap::Impl::retire_all_caches() noexcept {
  MutexLock guard(caches_mutex);
  if (all_caches.empty()) return;
  try {
    ExclusiveSection lock(*this);
    for (ThreadCache* cache : all_caches) empty_cache(cache);
    lock.release();
  } catch (...) {
  }
  for (ThreadCache* cache : all_caches) cache->heap.store(nullptr);
  all_caches.clear();
}

}  // namespace sheaf
