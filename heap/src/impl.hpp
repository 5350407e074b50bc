// impl.hpp: Heap::Impl, what one process knows about one open heap. Internal.
//
// The work is split by concern, one file each:
//   heap_file.cpp  creating, validating, mapping and closing the file
//   heap_lock.cpp  the heap lock (local and network modes) and sessions
//   allocator.cpp  blocks: bins, split, merge, growth
//   names.cpp      named objects and the name table
//   holds.cpp      held blocks: holds per session, released for the dead
//   recovery.cpp   walking the block chain: rebuild after a crash, check
//   heap.cpp       the public Heap class, gluing the above together
//   registry.cpp   the heaps this process has open; fork detection
//   posix.cpp      every system call on files, locks and clocks (faults injectable)
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "format.hpp"
#include "posix.hpp"
#include "sheaf/heap.hpp"
#include "thread_annotations.hpp"

namespace sheaf {

namespace registry {
extern std::atomic<std::uint64_t> fork_epoch_counter;  // registry.hpp: raised in a forked child
}  // namespace registry

// The one way block headers and State::size change: a single aligned store
// that a process killed at any instant has either made or not, and that
// (release) no earlier store of this thread can be reordered after.
template <class Word>
inline void publish(Word& word, std::type_identity_t<Word> value) {
  std::atomic_ref<Word>(word).store(value, std::memory_order_release);
}

// xxHash wrappers, so xxhash.h stays out of every other file.
std::uint64_t hash_name(std::string_view name);

// memcmp(a, b, n) == 0, without a call for the lengths names and type names
// mostly have (4 to 16 bytes: two overlapping loads from each side). Every
// find and destroy compares a name and a type name.
inline bool same_bytes(const char* a, const char* b, std::size_t n) {
  const auto load8 = [](const char* p) {
    std::uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  const auto load4 = [](const char* p) {
    std::uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  if (n >= 8 && n <= 16) {
    return ((load8(a) ^ load8(b)) | (load8(a + n - 8) ^ load8(b + n - 8))) == 0;
  }
  if (n >= 4 && n < 8) {
    return ((load4(a) ^ load4(b)) | (load4(a + n - 4) ^ load4(b + n - 4))) == 0;
  }
  return std::memcmp(a, b, n) == 0;
}

using format::kCacheMax;  // blocks up to this size (header included) go through thread caches

// One thread's cache of free blocks of one heap (thread_cache.cpp). The
// blocks themselves are listed in the file, in the cache's ledger block
// (format::CacheLedger), so that a process killed with full caches is
// reclaimed without a walk.
struct ThreadCache {
  // For lookup by this thread; nullptr once retired (by this thread at its
  // exit, or by the thread that closes the heap: hence atomic).
  std::atomic<Heap::Impl*> heap{nullptr};
  std::weak_ptr<Heap::Impl> owner;  // keeps a closing heap's Impl alive while we retire
  std::uint64_t ledger_block = 0;   // block offset of the ledger
  format::CacheLedger* ledger = nullptr;
  std::uint64_t bytes = 0;  // in all of its bins
};

// The heap lock, as Clang's thread-safety analysis sees it: a name for
// "this thread is inside a section of this heap" (Heap::LockScope), which
// functions that change the heap or its undo log require (REQUIRES) and the
// process-local state of a section is guarded by (GUARDED_BY). The lock
// itself (a mutex in the file, or a byte-range lock) is taken in
// heap_lock.cpp; code that took it says so with held_lock().
class CAPABILITY("heap lock") HeapLock {};

struct Heap::Impl : std::enable_shared_from_this<Heap::Impl> {
  Impl() = default;
  HeapLock heap_lock;
  // Tells the analysis this thread holds the heap lock (after a LockScope).
  void held_lock() const ASSERT_CAPABILITY(heap_lock) {}
  ~Impl();  // unmaps and closes whatever close_file() did not
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  // --- set at open, constant afterwards ---
  std::string path;
  int fd = -1;
  std::uint8_t* base = nullptr;  // the mapping: `reserve` bytes, the file under it
  std::uint64_t reserve = 0;
  LockMode mode = LockMode::kLocal;
  std::int64_t lock_timeout_ns = -1;  // OpenOptions::lock_timeout; < 0: none
  std::uint64_t session_id = 0;
  int session_slot = -1;
  std::uint64_t fork_epoch = 0;  // registry::fork_epoch() when opened
  // OpenOptions::read_only: the mapping is PROT_READ and nothing is written.
  bool read_only = false;
  // Read-only in local mode, where the lock is a mutex in the file: a
  // writable mapping of the page that holds it, when the file is writable.
  std::uint8_t* lock_page = nullptr;
  // Read-only in local mode without write permission: no lock can be taken,
  // so reads are retried until no writer ran meanwhile (heap.cpp).
  bool lockless = false;

  // The key of kUsed blocks' check words (format::used_tag), from the UUID.
  std::uint64_t used_key = 0;
  std::uint64_t used_tag(std::uint64_t block_offset) const {
    return format::used_tag(block_offset, used_key);
  }

  format::Header* header() const { return reinterpret_cast<format::Header*>(base); }
  format::State& state() const { return header()->state; }
  // Local mode's lock (through lock_page when the heap is mapped read-only).
  pthread_mutex_t* mutex() const {
    if (lock_page == nullptr) return &state().mutex;
    return reinterpret_cast<pthread_mutex_t*>(lock_page + offsetof(format::Header, state) +
                                              offsetof(format::State, mutex));
  }
  // State::size read atomically: growth publishes it while others read.
  std::uint64_t full_size() const { return __atomic_load_n(&state().size, __ATOMIC_ACQUIRE); }
  // The part of the heap this process can reach: all of it, unless another
  // process grew it past this one's reservation. Every bounds check of a
  // read uses this, so such a process keeps reading what it mapped; what
  // lies beyond is refused by throw_outgrown(), and so is every change.
  std::uint64_t heap_size() const { return std::min(full_size(), reserve); }
  bool outgrown() const { return full_size() > reserve; }
  // Offsets up to `end` lie in the heap but past this process's mapping.
  bool beyond_mapping(std::uint64_t end) const { return end > reserve && end <= full_size(); }
  [[noreturn]] void throw_outgrown(const char* what) const;
  // True in a child process forked after this heap was opened: nothing of
  // the parent's lock state, sessions or caches is ours to touch there.
  bool forked() const {  // inline: every public call checks
    return fork_epoch != registry::fork_epoch_counter.load(std::memory_order_relaxed);
  }

  template <class T = void>
  T* at(std::uint64_t offset) const {
    return reinterpret_cast<T*>(base + offset);
  }
  format::BlockHeader* block(std::uint64_t offset) const { return at<format::BlockHeader>(offset); }
  std::uint64_t offset_of(const void* p) const {
    return static_cast<std::uint64_t>(static_cast<const std::uint8_t*>(p) - base);
  }

  // --- heap_file.cpp ---
  static void create_file(const std::string& path, const CreateOptions& options);  // never opens it
  static std::shared_ptr<Impl> open_file(const std::string& path, const OpenOptions& options);
  int close_file() noexcept;  // 0, or the errno of a failed flush
  std::uint64_t growth_limit() const;
  void finish_identity_update() REQUIRES(heap_lock);  // see State::staged_identity
  bool upgrade() REQUIRES(heap_lock);                 // Heap::upgrade, under the exclusive lock
  bool has_feature(format::Feature feature) const {
    const format::Identity& id = header()->identity;
    return ((id.compat_features | id.ro_compat_features | id.incompat_features) & feature) != 0;
  }

  // --- heap_lock.cpp ---
  // Outermost acquire takes the process-shared lock and makes the heap
  // current (network mode: invalidates what other hosts changed), repairing
  // it first if the previous holder died; nested acquires only count depth.
  // Waits at most timeout_ns (< 0: for ever), then throws kTimedOut naming
  // the holder. Only Heap::LockScope calls these two.
  void acquire(bool exclusive, std::int64_t timeout_ns);
  int release() noexcept;  // 0, or the errno of a failed flush (network mode)
  int lock_local_mutex(std::int64_t timeout_ns);  // local mode: spin briefly, then sleep
  void lock_network(bool exclusive, std::int64_t timeout_ns);
  [[noreturn]] void throw_timed_out(std::int64_t timeout_ns) const;
  std::string describe_holder() const;  // "pid 12 on host h" or what is known
  std::uint64_t holder_token() const { return session_id ? session_id : ~std::uint64_t{0}; }
  // lock_holder after a repair that failed: no session's token, so the next
  // locker repairs again (and, with no log of that token, walks).
  static constexpr std::uint64_t kFailedRepair = ~std::uint64_t{0} - 1;
  // Inside a section of this heap: the exclusive one, or a shared one that
  // took the mutex, or (counted readers) any shared one of this thread.
  bool held_by_this_thread() const { return sections_held != 0 && holds_a_section(); }
  bool holds_a_section() const;  // held_by_this_thread() in a thread inside some section
  // How many sections (of any heap) this thread is inside: 0 almost always,
  // and then held_by_this_thread() answers from this one word, inline.
  // Raised where owner_tid is set or a counted section begins, lowered
  // where they end (heap_lock.cpp).
  static constinit thread_local int sections_held;
  bool exclusive_by_this_thread() const;  // inside an exclusive section of this heap

  // Counted readers (format::kFeatureSharedReaders, local mode): a reader
  // adds itself to its session's count in State::readers instead of taking
  // the mutex; whoever takes the mutex to write bars new readers and waits
  // for the counted ones. True when the heap has the feature (writers then
  // wait); readers count only once this process has a session.
  bool counted_readers = false;
  bool reads_counted() const { return counted_readers && session_slot >= 0 && !read_only; }
  bool enter_counted();           // true: in; false: a writer is in, go through the mutex
  void leave_counted() noexcept;  // wakes a writer waiting for us
  void bar_readers(std::int64_t timeout_ns) REQUIRES(heap_lock);  // under the mutex, before writing
  void wait_for_readers(std::uint32_t first, std::uint32_t slots, std::int64_t timeout_ns)
      REQUIRES(heap_lock);
  // `holder_died`: the robust mutex said its owner died (proof of death;
  // lock_holder alone may be left by a live process whose repair failed).
  void recover_after_death(bool holder_died) REQUIRES(heap_lock);
  void refresh_from_server();  // network mode: see what other hosts wrote
  void refresh_range(std::uint64_t offset, std::uint64_t length);
  int flush_to_server() noexcept;  // network mode: msync + fdatasync
  void unmap_pages() noexcept;     // network mode: drop our page mappings
  void require_exclusive() const;  // throws unless inside an exclusive section
  void claim_mode();               // at open, before anything else
  void check_reservation() const;  // the heap has not outgrown our mapping
  void register_session(bool walked)
      REQUIRES(heap_lock);  // under the lock, at open; `walked`: the caller just did
  void unregister_session() noexcept REQUIRES(heap_lock);
  bool session_alive(int slot) const;
  // session_alive(), but false for known_dead_session (the holder recovery found dead).
  bool session_survives(int slot) const REQUIRES(heap_lock);
  std::uint64_t known_dead_session GUARDED_BY(heap_lock) = 0;
  std::uint32_t live_sessions() const;

  // --- allocator.cpp (all under the exclusive lock) ---
  // The size of the block that holds payload_bytes (header included).
  static std::uint64_t block_size_for(std::uint64_t payload_bytes);  // inline, below
  // Returns the offset of a block whose header says `state` and whose
  // payload (at offset + 16) holds payload_bytes at `alignment`.
  std::uint64_t allocate_block(std::uint64_t payload_bytes, std::uint64_t alignment,
                               format::BlockState state = format::kUsed) REQUIRES(heap_lock);
  void grow(std::uint64_t bytes) REQUIRES(heap_lock);
  void free_block(std::uint64_t block_offset) REQUIRES(heap_lock);
  bool resize_in_place(std::uint64_t block_offset, std::uint64_t payload_bytes) REQUIRES(heap_lock);
  std::uint64_t take_fit(std::uint64_t block_size) REQUIRES(heap_lock);
  // Into its bin; its header already says kFree. `fresh`: its payload was
  // reachable by nobody before this operation (a split's tail, growth).
  void push_free(std::uint64_t block_offset, bool fresh = false) REQUIRES(heap_lock);
  void unlink_free(std::uint64_t block_offset) REQUIRES(heap_lock);
  void reset_bins() REQUIRES(heap_lock);
  std::uint64_t largest_free() const;

  // --- holds.cpp (under the exclusive lock, inside an Operation) ---
  // The session's hold ledger (slot `slot`), made if `create`; nullptr if none.
  format::HoldLedger* hold_ledger(int slot, std::uint64_t session, bool create) REQUIRES(heap_lock);
  format::HoldLedger* find_hold_ledger(int slot) REQUIRES_SHARED(heap_lock);  // nullptr: none
  void add_hold(int slot, std::uint64_t session, std::uint64_t block_offset) REQUIRES(heap_lock);
  bool drop_hold(int slot, std::uint64_t block_offset)
      REQUIRES(heap_lock);  // false if it has none on it
  bool holds_one(int slot, std::uint64_t block_offset)
      REQUIRES_SHARED(heap_lock);  // its ledger lists the block
  // Heap::held_block's answer; also read without the lock (holds.cpp).
  Heap::HeldBlock held_block(const void* p) NO_THREAD_SAFETY_ANALYSIS;
  void count_off_hold(std::uint64_t block_offset)
      REQUIRES(heap_lock);                                      // one hold fewer; the last frees it
  int live_slot_of(std::uint64_t session) REQUIRES(heap_lock);  // -1 unless open and alive
  // Sessions live_slot_of() probed alive, and when (monotonic ns): a probe
  // is a system call, which a hand-over per message should not pay each time.
  struct SeenAlive {
    std::uint64_t session = 0;
    std::uint64_t at_ns = 0;
  };
  std::array<SeenAlive, format::kMaxSessions> seen_alive GUARDED_BY(heap_lock){};
  // Releases every hold a dead session's hold ledger lists, one operation
  // each; false if the ledger or an entry is unreadable (then walk).
  bool release_holds_of(std::uint64_t ledger_block) REQUIRES(heap_lock);

  // --- thread_cache.cpp (local mode; no lock needed) ---
  bool thread_caching() const { return mode == LockMode::kLocal && !read_only; }
  std::uint64_t cached_allocate(std::uint64_t block_size);  // a block <= kCacheMax
  std::uint64_t allocate_past_the_cache(std::uint64_t block_size);
  void cached_free(std::uint64_t block_offset);
  void free_past_the_cache(std::uint64_t block_offset);
  void give_back_half(ThreadCache& cache, int bin);  // takes the lock
  // This thread's cache of this heap (made if none; so never under the
  // lock: see caches_mutex). Inline: the search and the creation of a cache
  // are not, so that its callers stay small.
  // `make`: false finds one but makes none (nullptr then).
  ThreadCache* thread_cache(bool make = true) {
    // (A retired cache says nullptr, so a heap opened where a closed one's
    // Impl was never takes the closed one's cache.)
    if (last_used_cache != nullptr && last_used_cache->heap.load(std::memory_order_acquire) == this)
        [[likely]] {
      return last_used_cache;
    }
    return find_thread_cache(make);
  }
  ThreadCache* find_thread_cache(bool make);  // thread_cache()'s slow path
  // The cache this thread used last, checked before the list is searched: a
  // thread mostly uses one heap. constinit, so reading it needs no TLS guard.
  static constinit thread_local ThreadCache* last_used_cache;
  // Named blocks through the cache, inside the caller's operation: a block
  // of at least `block_size` bytes taken from it and made kPending (0 if it
  // has none), and a named block's offset kept in it (false if it may not
  // keep more).
  std::uint64_t take_cached_for_named(ThreadCache& cache, std::uint64_t block_size)
      REQUIRES(heap_lock);
  // `last_step`: nothing after it in the operation can fail (see there).
  bool keep_in_cache(ThreadCache& cache, std::uint64_t block_offset, bool last_step)
      REQUIRES(heap_lock);
  std::uint32_t refill_cache(ThreadCache& cache, int bin, std::uint64_t block_size);
  void give_back(ThreadCache& cache, int bin, std::uint32_t index)
      REQUIRES(heap_lock);                                   // under the lock
  void empty_cache(ThreadCache* cache) REQUIRES(heap_lock);  // under the exclusive lock
  void retire_cache(ThreadCache* cache) noexcept;            // at thread exit
  void retire_all_caches() noexcept;                         // at close

  // --- names.cpp ---
  format::NamedRecord* record(std::uint64_t block_offset) const {
    return at<format::NamedRecord>(block_offset + format::kBlockHeaderBytes);
  }
  // The named block's offset, or 0; `hash` is hash_name(name).
  std::uint64_t lookup(std::string_view name, std::uint64_t hash) const;
  std::uint64_t lookup(std::string_view name) const { return lookup(name, hash_name(name)); }
  // lookup() for a writer, under the exclusive lock: checks the table only
  // when it moved or grew since the last.
  std::uint64_t lookup_exclusive(std::string_view name, std::uint64_t hash) REQUIRES(heap_lock);
  std::uint64_t lookup_exclusive(std::string_view name) REQUIRES(heap_lock) {
    return lookup_exclusive(name, hash_name(name));
  }
  std::uint64_t checked_table_at GUARDED_BY(heap_lock) = 0;  // the table lookup_exclusive checked
  std::uint64_t checked_table_capacity GUARDED_BY(heap_lock) = 0;
  // The probe of a table that name_table() checked.
  std::uint64_t probe(const format::NameTable& table, std::uint64_t capacity, std::string_view name,
                      std::uint64_t hash) const;
  // Bounds-checked; nullptr if none. `capacity`: its capacity as checked
  // (read once; a reader without the lock uses this, not the table's).
  const format::NameTable* name_table(std::uint64_t* capacity = nullptr) const;
  const format::NameTable* checked_name_table(std::uint64_t* capacity) const;  // names.cpp's
  // Why the table at `at` is refused: it lies outside the heap, or (with
  // `capacity` read) it is malformed; either may be past our mapping.
  [[noreturn]] void refuse_name_table(std::uint64_t at, bool outside,
                                      std::uint64_t capacity = 0) const;
  // Throws unless a record of `name_bytes` name bytes at `slot` lies inside
  // the heap and this process's mapping of it. Inline: every probe of a
  // lookup checks one.
  void require_record_inside(std::uint64_t slot, std::uint64_t name_bytes) const {
    const std::uint64_t need = format::kBlockHeaderBytes + sizeof(format::NamedRecord) + name_bytes;
    const std::uint64_t size = heap_size();
    if (slot >= format::kHeaderBytes && slot % format::kAlign == 0 && slot < size &&
        size - slot >= need) [[likely]] {
      return;
    }
    refuse_record_at(slot, need);
  }
  [[noreturn]] void refuse_record_at(std::uint64_t slot, std::uint64_t need) const;
  const char* record_problem(std::uint64_t block_offset, std::uint64_t size, bool check_hash,
                             const format::NamedRecord* copy = nullptr) const;
  // The name's bytes (then the type's) of the record in the block.
  const char* record_names(std::uint64_t block_offset) const {
    return at<const char>(block_offset + format::kBlockHeaderBytes + sizeof(format::NamedRecord));
  }
  // A copy of the named record of the block, checked to lie inside it and
  // the heap; throws kCorrupted if not. What readers without the lock use.
  format::NamedRecord checked_record(std::uint64_t block_offset) const;
  void insert_name(std::uint64_t block_offset) REQUIRES(heap_lock);
  void remove_name(std::uint64_t block_offset) REQUIRES(heap_lock);
  void build_name_table(std::uint64_t named_count) REQUIRES(heap_lock);
  ObjectInfo describe(std::uint64_t block_offset) const;  // throws kCorrupted if unsound
  HeapInfo info() const;                                  // under the lock
  static std::string uuid_text(const std::uint8_t (&uuid)[16]);

  // --- recovery.cpp: operations, the undo log, reclaiming dead sessions ---
  // While an Operation lives, every word the allocator changes is saved in
  // State's undo log first (local mode), so a process killed inside it is
  // undone by the next locker, proportionally to what it was doing; when the
  // outermost one ends, the log empties. Operations nest (construct() runs
  // the object's constructor, and what it allocates, inside its own).
  class Operation;
  // The one way to change a word that others may reach, under the lock:
  // saved first, then published (a release store: ordered after the save).
  void store(std::uint64_t& word, std::uint64_t value) REQUIRES(heap_lock) {
    save(&word);
    publish(word, value);
  }
  void save(const std::uint64_t* word) REQUIRES(heap_lock);  // into the undo log, if one is kept
  // The next serial (State::next_serial) for a named or held block. Not
  // saved in the undo log: an undone operation leaves it taken, so that no
  // serial is ever handed out twice.
  std::uint64_t take_serial() REQUIRES(heap_lock) {
    format::State& s = state();
    const std::uint64_t serial = s.next_serial == 0 ? 1 : s.next_serial;
    publish(s.next_serial, serial + 1);
    return serial;
  }
  void save_past_the_end() REQUIRES(heap_lock);  // save()'s rare case: no log, or a full one
  // A counter of State's (used_bytes .. small_freed): saved once per
  // operation, since the undo needs only its value before the operation.
  void store_counter(std::uint64_t& counter, std::uint64_t value) REQUIRES(heap_lock) {
    const auto bit = 1u << (&counter - &state().used_bytes);
    if (!(counters_saved & bit)) {
      save(&counter);
      counters_saved |= bit;
    }
    publish(counter, value);
  }
  std::uint32_t counters_saved GUARDED_BY(heap_lock) = 0;  // cleared with the log
  void save_range(const void* start, std::size_t bytes) REQUIRES(heap_lock);  // every word of it
  // What follows is too big to log: a death here needs the walk.
  void mark_unlogged() REQUIRES(heap_lock);
  // At the start of an exclusive section (heap_lock.cpp); `walk`: the
  // section begins by walking the heap, and the log says so from the start.
  void begin_undo_log(bool walk = false) REQUIRES(heap_lock);
  void end_undo_log() REQUIRES(heap_lock);     // at its end, before lock_holder is cleared
  void disown_undo_log() REQUIRES(heap_lock);  // after lock_holder is cleared
  // An outermost operation that did not commit: what it changed, undone
  // from the log. Unless the log overflowed: then what it changed stands
  // (each step left the heap whole; blocks a failed constructor allocated
  // stay allocated, a leak that nothing can tell from live allocations).
  void roll_back() REQUIRES(heap_lock);
  // The log emptied at the end of an outermost operation or of a section
  // (then `next` is kNotLogging).
  void empty_undo_log(std::uint64_t next) REQUIRES(heap_lock);
  // The dead holder's operation undone from the log; false if the log cannot
  // tell (not its own, overflowed, or not trustworthy), so the walk must run.
  bool replay_undo_log(std::uint64_t dead_holder) REQUIRES(heap_lock);
  // Frees every block a dead session's thread caches held, from its ledgers;
  // false if a ledger is unreadable (then only the walk can find them).
  bool reclaim_session(int slot) REQUIRES(heap_lock);
  // Reclaims every session that is gone and frees its slot; walks the heap
  // if it must (and has not `walked` already). Returns whether it walked.
  bool reclaim_dead_sessions(bool walked = false) REQUIRES(heap_lock);
  // The undo log's next free entry, mirrored here so that save() reads no
  // more of the file than it writes; kNotLogging outside exclusive sections
  // (and in network mode), kOverflowed once an operation outgrew the log.
  static constexpr std::uint64_t kNotLogging = ~std::uint64_t{0};
  static constexpr std::uint64_t kOverflowed = format::kUndoEntries + 1;
  std::uint64_t undo_next GUARDED_BY(heap_lock) = kNotLogging;
  // Set by a first opener that will walk the heap in its first section
  // (heap_file.cpp), so that section's log says "walk" from the start.
  bool walk_in_first_section = false;
  bool undo_active() const REQUIRES(heap_lock) { return undo_next != kNotLogging; }
  // False while a first opener that must walk opens: a log on a machine that
  // restarted may not be what was written.
  bool trust_undo_log = true;
  // What a first opener checks instead of walking: the bins' heads and the
  // name table's place. The first problem, or "".
  std::string quick_check() const;
  int operation_depth GUARDED_BY(heap_lock) = 0;

  enum class Rebuild { kSweep, kRecover };
  // Walks the chain and rebuilds every cache. kSweep merges free neighbours
  // to avoid growing; kRecover also frees what a dead holder left half done.
  void rebuild(Rebuild kind) REQUIRES(heap_lock);
  // Verifies the file. `full` also follows every free list and name-table
  // slot (memory proportional to the number of blocks). `chain_sound` tells
  // whether the block chain itself is intact (else nothing may be written).
  CheckReport check(bool full, bool* chain_sound = nullptr) const;

  Mutex caches_mutex;  // taken before the heap lock, never under it
  std::vector<ThreadCache*> all_caches GUARDED_BY(caches_mutex);

  // --- process-local lock state ---
  std::mutex network_mutex;                // network mode: threads of this process
  std::atomic<std::int64_t> owner_tid{0};  // thread inside the lock, 0 if none
  int depth = 0;
  bool outer_exclusive = false;
  std::uint64_t seen_generation = 0;  // network mode: what our page cache reflects
  std::uint64_t known_file_size = 0;  // network mode: the size our kernel knows
  int direct_fd = -1;                 // network mode: the file opened O_DIRECT, or -1
  struct FreeBuffer {
    void operator()(std::uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<std::uint8_t, FreeBuffer> bounce;  // page-aligned, for O_DIRECT reads
  // Network mode: the file's first `bytes` (a multiple of the page size) as
  // the server has them, not as our possibly stale mapping shows them;
  // through O_DIRECT where the filesystem allows it. Needs no lock.
  std::unique_ptr<std::uint8_t, FreeBuffer> read_from_server(std::size_t bytes) const;
};

// Heap::LockScope as the thread-safety analysis sees it: every section
// inside the library is one of these two.
class SCOPED_CAPABILITY ExclusiveSection {
 public:
  explicit ExclusiveSection(Heap::Impl& impl,
                            std::chrono::nanoseconds timeout = std::chrono::nanoseconds(-1))
      ACQUIRE(impl.heap_lock)
      : scope_(impl, true, timeout) {}
  ~ExclusiveSection() noexcept(false) RELEASE() {}
  int release() noexcept RELEASE() { return scope_.release(); }  // see LockScope::release

 private:
  Heap::LockScope scope_;
};

class SCOPED_CAPABILITY SharedSection {
 public:
  explicit SharedSection(Heap::Impl& impl) ACQUIRE_SHARED(impl.heap_lock) : scope_(impl, false) {}
  ~SharedSection() noexcept(false) RELEASE() {}

 private:
  Heap::LockScope scope_;
};

class Heap::Impl::Operation {
 public:
  explicit Operation(Impl& impl) REQUIRES(impl.heap_lock) : impl_(impl) {
    if (impl_.operation_depth++ == 0) impl_.counters_saved = 0;
#ifndef NDEBUG
    exceptions_ = std::uncaught_exceptions();
#endif
  }
  // What the operation changed stands. Every path that finishes an
  // operation says so; one left by an exception does not, and the outermost
  // operation then undoes what it changed (from the log, as recovery would),
  // so that a failure halfway (out of space, say) leaves nothing half done
  // either. (Explicit rather than std::uncaught_exceptions() in the
  // destructor: that is a call into libstdc++ and a TLS lookup, twice per
  // operation. Debug builds, which the tests use, stop at a path that
  // forgot to commit.)
  void commit() noexcept {
    committed_ = true;
  }
  template <typename T>
  T commit(T result) noexcept {
    committed_ = true;
    return result;
  }
  ~Operation();  // inline, below
  Operation(const Operation&) = delete;
  Operation& operator=(const Operation&) = delete;

 private:
  [[noreturn]] static void abort_uncommitted();

  Impl& impl_;
  bool committed_ = false;
#ifndef NDEBUG
  int exceptions_ = 0;
#endif
};

// Inline, with the three below: every locked call passes here.
inline Heap::Impl::Operation::~Operation() {
  // In a child forked inside the operation (by a constructor, say), the log
  // and the heap are the parent's, still in the middle of it.
  if (impl_.forked()) return;
#ifndef NDEBUG
  if (!committed_ && std::uncaught_exceptions() <= exceptions_) abort_uncommitted();
#endif
  if (--impl_.operation_depth == 0 && impl_.undo_active()) {
    if (!committed_) [[unlikely]]
      impl_.roll_back();
    impl_.empty_undo_log(0);
  }
}

inline void Heap::Impl::empty_undo_log(std::uint64_t next) {
  format::State& s = state();
  if (undo_next != 0) publish(s.undo_count, 0);
  if (undo_next == kOverflowed) publish(s.undo_overflow, 0);
  undo_next = next;
  counters_saved = 0;
}

inline void Heap::Impl::begin_undo_log(bool walk) {
  if (mode != LockMode::kLocal || read_only) return;
  format::State& s = state();
  // `walk`: this section begins by walking the heap (recovery, or a first
  // opener that does not trust it), so the log must say "walk" from its
  // first instant: overflow is set before anything else changes, and the
  // dead holder's overflow (if any) is never momentarily absent.
  if (walk) publish(s.undo_overflow, 1);
  // Empty already, unless the previous holder died (and then recovery,
  // which runs before this, has dealt with it).
  if (s.undo_count != 0) publish(s.undo_count, 0);
  if (!walk && s.undo_overflow != 0) publish(s.undo_overflow, 0);
  publish(s.undo_owner, s.lock_holder);
  undo_next = walk ? kOverflowed : 0;
  counters_saved = 0;
}

// The log stays ours (undo_owner) until lock_holder is cleared: a death in
// between leaves an empty log that names the dead holder, so the next locker
// replays nothing and walks nothing. (Cleared first, it would leave a log
// that is nobody's, and a walk.) The owner is cleared after lock_holder by
// the caller (disown_undo_log).
inline void Heap::Impl::end_undo_log() {
  if (undo_active()) empty_undo_log(kNotLogging);
}

inline void Heap::Impl::disown_undo_log() {
  if (mode != LockMode::kLocal || read_only) return;
  // So that no later death can take this log for its own.
  if (state().undo_owner != 0) publish(state().undo_owner, 0);
}

std::uint64_t checksum_identity(const format::Identity& identity);

inline std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}

inline std::uint64_t Heap::Impl::block_size_for(std::uint64_t payload) {
  return std::max(format::kMinBlock, align_up(payload + format::kBlockHeaderBytes, format::kAlign));
}

// Inline: an operation saves tens of words. No fence here: store() follows
// with a release store, which no earlier store (the entry, its count) may
// pass; code that writes plain bytes after saving fences itself
// (save_range(), unlink_free()).
inline void Heap::Impl::save(const std::uint64_t* word) {
  // Read once, into locals: the stores below could alias undo_next as far
  // as the compiler knows, which would make it load it again after each.
  const std::uint64_t next = undo_next;
  if (next >= format::kUndoEntries) [[unlikely]]
    return save_past_the_end();
  posix::crash_point();
  format::State& s = state();
  const std::uint64_t old_value = *word;
  undo_next = next + 1;
  s.undo[next].offset = offset_of(word);
  s.undo[next].old_value = old_value;
  publish(s.undo_count, next + 1);  // release: the entry is whole before it counts
}

}  // namespace sheaf
