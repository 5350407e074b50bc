// heap_lock.cpp: the heap lock, in its two modes, and sessions.
//
// Local mode (one host): a robust process-shared pthread mutex inside the
// file. When its holder dies, the kernel marks it, and the next locker gets
// EOWNERDEAD and repairs the heap. Cost: one uncontended futex operation.
//
// Network mode (several hosts, REFERENCE.md §4): a byte-range OFD lock on a
// page-aligned range. On acquire, drop our cached pages (madvise, then
// posix_fadvise) so we read what the last holder on any host wrote; on
// release, msync and fdatasync so the server has our writes before the next
// holder reads. State::generation tells an acquirer whether anyone wrote
// since its last section, so an unchanged heap costs one page of invalidation.
//
// In both modes, State::lock_holder is set for the length of an exclusive
// section; a locker that finds it set knows the holder died inside and runs
// recovery before it goes on.
//
// Sessions: every open heap claims a slot in State::sessions and holds an OFD
// lock on that slot's byte for as long as it is open, so any process on any
// host can tell whether a session is alive without trusting pids.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "impl.hpp"
#include "posix.hpp"

namespace sheaf {
namespace {

using namespace format;

// constinit, set on first use: no TLS guard on every call.
constinit thread_local std::int64_t cached_thread_id = 0;
std::int64_t this_thread_id() {
  if (cached_thread_id == 0) [[unlikely]]
    cached_thread_id = gettid();
  return cached_thread_id;
}

// This thread's counted shared sections (one entry per heap, with its
// nesting depth). Empty almost always, so the common check costs one load.
struct CountedSection {
  const Heap::Impl* heap;
  int depth;
};
thread_local std::vector<CountedSection> counted_sections;

CountedSection* counted_section(const Heap::Impl* heap) {
  for (CountedSection& section : counted_sections) {
    if (section.heap == heap) return &section;
  }
  return nullptr;
}

}  // namespace

constinit thread_local int Heap::Impl::sections_held = 0;

bool Heap::Impl::holds_a_section() const {
  return owner_tid.load(std::memory_order_relaxed) == this_thread_id() ||
         (!counted_sections.empty() && counted_section(this) != nullptr);
}

bool Heap::Impl::exclusive_by_this_thread() const {
  return owner_tid.load(std::memory_order_relaxed) == this_thread_id() && outer_exclusive;
}

void Heap::Impl::require_exclusive() const {
  if (!exclusive_by_this_thread()) {
    throw Error(Errc::kInvalidArgument,
                "heap " + path + ": this changes the heap, so it cannot run inside shared()");
  }
}

// --- Counted readers ---
//
// The reader's side and the writer's side each store, then load the other's
// word, both sequentially consistent (Dekker): either the reader sees the
// bar and steps back, or the writer sees the count and waits for it. A
// reader that steps back waits for the writer on the mutex, which also
// repairs the heap if the writer died; then counts itself in under the
// mutex and lets it go (acquire()). A reader that dies inside leaves its
// count; a waiting writer resets the counts of sessions that are gone.

bool Heap::Impl::enter_counted() {
  State& s = state();
  __atomic_add_fetch(&s.readers[session_slot], 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&s.readers_barred, __ATOMIC_SEQ_CST) == 0 &&
      __atomic_load_n(&s.lock_holder, __ATOMIC_ACQUIRE) == 0) {
    return true;
  }
  leave_counted();
  return false;
}

// Wakes a writer only if one said it sleeps on our count: a reader that
// found the bar up (as every reader after a write does) would otherwise pay
// a system call here each time.
void Heap::Impl::leave_counted() noexcept {
  State& s = state();
  const std::uint32_t left = __atomic_sub_fetch(&s.readers[session_slot], 1, __ATOMIC_SEQ_CST);
  if ((left & kReaderWaiter) != 0) posix::futex_wake(&s.readers[session_slot]);
}

// The bar stays up after the writer leaves: the first reader to come next
// finds it, counts itself in under the mutex, and lifts it there (release()).
// So a run of writes with no reader between pays for the bar once, and the
// writers after the first skip the store. That skip is sound: the bar was
// stored before our mutex was taken (sequenced through the mutex), so a
// reader whose increment we do not see below loads the bar after it and
// finds it up (the sequentially consistent order: bar < our load < its
// increment < its load; only a holder of the mutex, we now, could lift it).
void Heap::Impl::bar_readers(std::int64_t timeout_ns) {
  State& s = state();
  if (__atomic_load_n(&s.readers_barred, __ATOMIC_RELAXED) == 0) {
    __atomic_store_n(&s.readers_barred, 1, __ATOMIC_SEQ_CST);
  }
  const std::uint32_t slots =
      std::min<std::uint32_t>(__atomic_load_n(&s.reader_slots, __ATOMIC_ACQUIRE), kMaxSessions);
  // Usually no reader is inside (nor says it sleeps): one load per slot.
  for (std::uint32_t i = 0; i < slots; ++i) {
    if (__atomic_load_n(&s.readers[i], __ATOMIC_SEQ_CST) != 0) [[unlikely]] {
      return wait_for_readers(i, slots, timeout_ns);
    }
  }
}

// bar_readers()'s slow path: from slot `first` on, waits until no reader is
// inside (spinning, then on the count's futex), resetting the counts of
// readers that died inside.
void Heap::Impl::wait_for_readers(std::uint32_t first, std::uint32_t slots,
                                  std::int64_t timeout_ns) {
  State& s = state();
  std::uint64_t started = 0;
  for (std::uint32_t i = first; i < slots; ++i) {
    for (int spin = 0;; ++spin) {
      std::uint32_t count = __atomic_load_n(&s.readers[i], __ATOMIC_SEQ_CST);
      if ((count & ~kReaderWaiter) == 0) {
        if (count != 0) __atomic_fetch_and(&s.readers[i], ~kReaderWaiter, __ATOMIC_SEQ_CST);
        break;
      }
      if (spin < 200) {  // shared sections are usually short
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        continue;
      }
      if (started == 0) started = posix::monotonic_ns();
      if (static_cast<int>(i) != session_slot && !session_alive(static_cast<int>(i))) {
        __atomic_store_n(&s.readers[i], 0, __ATOMIC_SEQ_CST);  // died reading
        break;
      }
      if (timeout_ns >= 0 &&
          posix::monotonic_ns() - started >= static_cast<std::uint64_t>(timeout_ns)) {
        // No one sleeps on the count any more: readers need not wake anyone.
        __atomic_fetch_and(&s.readers[i], ~kReaderWaiter, __ATOMIC_SEQ_CST);
        const Session& reader = s.sessions[i];
        throw Error(Errc::kTimedOut,
                    "heap " + path + ": waited " + std::to_string(timeout_ns / 1000000) +
                        " ms for the lock: pid " + std::to_string(reader.pid) + " on host " +
                        std::string(reader.host, strnlen(reader.host, sizeof(reader.host))) +
                        " is inside a shared section",
                    ETIMEDOUT);
      }
      // Say we sleep (the readers' leave_counted() then wakes us), and sleep
      // unless the count moved meanwhile; at most 1 ms, then look again
      // (and at liveness).
      if ((count & kReaderWaiter) == 0) {
        if (!__atomic_compare_exchange_n(&s.readers[i], &count, count | kReaderWaiter, false,
                                         __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
          continue;
        }
        count |= kReaderWaiter;
      }
      posix::futex_wait(&s.readers[i], count, 1000000);
    }
  }
}

// Sections are short (tens of nanoseconds), so a contended lock is usually
// free again within a few hundred cycles: spin a little before sleeping in the
// kernel, which costs microseconds per hand-off.
int Heap::Impl::lock_local_mutex(std::int64_t timeout_ns) {
  constexpr int kSpins = 200;
  for (int spin = 0; spin < kSpins; ++spin) {
    const int rc = pthread_mutex_trylock(mutex());
    if (rc != EBUSY) return rc;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  if (timeout_ns < 0) return pthread_mutex_lock(mutex());
  // pthread_mutex_timedlock takes a CLOCK_REALTIME deadline, which a step of
  // the wall clock moves; pthread_mutex_clocklock would take a monotonic one,
  // but ThreadSanitizer does not see it lock. So the wait is measured on the
  // monotonic clock and resumed for what is left when the wall clock ended
  // it early (a step forward; a step back still stretches it). A CI run saw
  // a 300 ms wait end 0.9 ms short.
  const std::uint64_t started = posix::monotonic_ns();
  const auto timeout = static_cast<std::uint64_t>(timeout_ns);
  for (;;) {
    const std::uint64_t waited = posix::monotonic_ns() - started;
    if (waited >= timeout) return ETIMEDOUT;
    const std::uint64_t deadline = posix::realtime_ns() + (timeout - waited);
    const timespec until{static_cast<time_t>(deadline / 1000000000u),
                         static_cast<long>(deadline % 1000000000u)};
    const int rc = pthread_mutex_timedlock(mutex(), &until);
    if (rc != ETIMEDOUT) return rc;
  }
}

// Network mode. The server's lock is only ever asked for without blocking,
// with backed-off retries (posix::lock_range): a blocking F_OFD_SETLKW on
// GlusterFS was seen to wait 12-20 s for a lock long free, until a signal
// made it ask again (a wake-up lost in the lock server). A try costs one
// round trip; the back-off caps the cost of a lost wake-up at 5 ms.
void Heap::Impl::lock_network(bool exclusive, std::int64_t timeout_ns) {
  const std::uint64_t started = posix::monotonic_ns();
  if (timeout_ns < 0) {
    network_mutex.lock();
  } else {
    // Another thread of this process holds the heap: wait for it in short
    // naps (a section on a network filesystem lasts milliseconds).
    for (auto nap = std::chrono::microseconds(20); !network_mutex.try_lock();
         nap = std::min(nap * 2, std::chrono::microseconds(2000))) {
      if (posix::monotonic_ns() - started >= static_cast<std::uint64_t>(timeout_ns)) {
        throw_timed_out(timeout_ns);
      }
      std::this_thread::sleep_for(nap);
    }
  }
  try {
    std::int64_t left = -1;
    if (timeout_ns >= 0) {
      const auto spent = static_cast<std::int64_t>(posix::monotonic_ns() - started);
      left = std::max<std::int64_t>(0, timeout_ns - spent);
    }
    if (!posix::lock_range(fd, exclusive ? F_WRLCK : F_RDLCK, kHeapLock, kHeapLockLength, left,
                           "heap " + path)) {
      throw_timed_out(timeout_ns);
    }
    try {
      refresh_from_server();
    } catch (...) {
      posix::unlock_range(fd, kHeapLock, kHeapLockLength);
      throw;
    }
  } catch (...) {
    network_mutex.unlock();
    throw;
  }
}

void Heap::Impl::acquire(bool exclusive, std::int64_t timeout_ns) {
  // Nested: only a thread inside some section can be.
  if (sections_held != 0) {
    if (owner_tid.load(std::memory_order_relaxed) == this_thread_id()) {
      if (exclusive && !outer_exclusive) require_exclusive();
      ++depth;
      return;
    }
    if (CountedSection* section = counted_section(this)) {
      if (exclusive) require_exclusive();  // throws: a shared section cannot write
      ++section->depth;
      return;
    }
  }
  if (read_only && exclusive) {
    throw Error(Errc::kInvalidArgument,
                "heap " + path + ": opened read-only, and this call would change it");
  }
  if (lockless) {
    throw Error(Errc::kUnsupported,
                "heap " + path +
                    ": opened read-only on a file this process cannot write, in local mode, "
                    "where the lock is a mutex inside the file: only info(), objects(), "
                    "object(), copy_object() and check() work (they retry instead of locking)");
  }
  if (timeout_ns < 0) timeout_ns = lock_timeout_ns;
  if (!exclusive && reads_counted()) {
    counted_sections.reserve(counted_sections.size() + 1);  // no bad_alloc after counting in
    if (enter_counted()) {
      counted_sections.push_back({this, 1});
      ++sections_held;
      return;
    }
  }
  bool holder_died = false;
  if (mode == LockMode::kLocal) {
    int rc = pthread_mutex_trylock(mutex());  // usually free: no call to the spin below
    if (rc == EBUSY) rc = lock_local_mutex(timeout_ns);
    if (rc == EOWNERDEAD) {
      if (const int consistent = pthread_mutex_consistent(mutex()); consistent != 0) {
        pthread_mutex_unlock(mutex());
        throw Error::from_errno(consistent, "heap " + path +
                                                ": lock: cannot take over the "
                                                "lock of a process that died");
      }
      holder_died = true;
    } else if (rc == ETIMEDOUT) {
      throw_timed_out(timeout_ns);
    } else if (rc != 0) {
      throw Error::from_errno(rc, "heap " + path + ": lock");
    }
  } else {
    lock_network(exclusive, timeout_ns);
  }
  owner_tid.store(this_thread_id(), std::memory_order_relaxed);
  ++sections_held;
  depth = 1;
  outer_exclusive = exclusive;
  held_lock();  // from here on this thread is inside (the analysis: see impl.hpp)

  try {
    // A reader that may not write leaves the repair to the next writer,
    // which finds lock_holder still set.
    const bool repair = !read_only && (holder_died || state().lock_holder != 0);
    // Changes, and repairs, need the whole heap mapped; reads only what they read.
    if (exclusive || repair) check_reservation();
    if ((exclusive || repair) && counted_readers && mode == LockMode::kLocal) {
      bar_readers(timeout_ns);
    }
    if (repair) recover_after_death(holder_died);
  } catch (...) {
    // Leave lock_holder set: if the repair failed, the next locker must try
    // again. But not to our own token: we live, and a locker that finds the
    // lock's holder dead must not take us for that holder (and reclaim our
    // session). What the repair wrote is a walkable chain; on a network
    // filesystem it must reach the server before the lock goes.
    if (!read_only && state().lock_holder == holder_token()) {
      publish(state().lock_holder, kFailedRepair);
    }
    if (mode == LockMode::kNetwork) flush_to_server();
    outer_exclusive = false;
    release();
    throw;
  }
  if (exclusive) {
    publish(state().lock_holder, holder_token());
    // Lock-free readers (heap.cpp's seqlock) must see lock_holder before
    // any of this section's stores.
#if !defined(__SANITIZE_THREAD__)  // (ThreadSanitizer refuses fences)
    std::atomic_thread_fence(std::memory_order_release);
#endif
    begin_undo_log(std::exchange(walk_in_first_section, false));
  } else if (reads_counted()) {
    // A reader that waited on the mutex for a writer (or repaired after a
    // dead one): counted in while no writer can be, then the mutex goes.
    counted_sections.reserve(counted_sections.size() + 1);
    __atomic_add_fetch(&state().readers[session_slot], 1, __ATOMIC_SEQ_CST);
    release();
    counted_sections.push_back({this, 1});
    ++sections_held;
  }
}

// Who holds the lock, as far as State tells without taking it. Only for
// messages: the answer may be out of date by the time it is read.
std::unique_ptr<std::uint8_t, Heap::Impl::FreeBuffer> Heap::Impl::read_from_server(
    std::size_t bytes) const {
  std::unique_ptr<std::uint8_t, FreeBuffer> buffer(
      static_cast<std::uint8_t*>(std::aligned_alloc(kPageSize, bytes)));
  if (!buffer) throw Error(Errc::kOutOfSpace, "heap " + path + ": no memory to read its header");
  posix::pread_all(direct_fd >= 0 ? direct_fd : fd,
                   std::as_writable_bytes(std::span(buffer.get(), bytes)), 0, "heap " + path);
  return buffer;
}

std::string Heap::Impl::describe_holder() const {
  auto copy = std::make_unique<State>();
  if (mode == LockMode::kNetwork) {
    // Our mapping may be stale, and nothing may be written outside the lock:
    // read the server's copy, bypassing this host's cache where we can.
    std::unique_ptr<std::uint8_t, FreeBuffer> header;
    try {
      header = read_from_server(kHeaderBytes);
    } catch (const Error&) {
      return "an unknown process (the heap's header cannot be read)";
    }
    std::memcpy(static_cast<void*>(copy.get()), header.get() + offsetof(Header, state),
                sizeof(State));
  } else {
    std::memcpy(static_cast<void*>(copy.get()), &state(), sizeof(State));
  }
  const auto who = [](const Session& s) {
    return "pid " + std::to_string(s.pid) + " on host " +
           std::string(s.host, strnlen(s.host, sizeof(s.host)));
  };
  const std::uint64_t holder = copy->lock_holder;
  std::string others;
  for (int i = 0; i < kMaxSessions; ++i) {
    const Session& s = copy->sessions[i];
    if (s.id == 0 || i == session_slot) continue;
    if (holder != 0 && s.id == holder) return who(s) + " (in an exclusive section)";
    if (session_alive(i)) others += (others.empty() ? "" : ", ") + who(s);
  }
  if (others.empty()) return "no other open session (a process between opening and registering)";
  return "a reader or a process between sections; the heap is open in " + others;
}

void Heap::Impl::throw_timed_out(std::int64_t timeout_ns) const {
  throw Error(Errc::kTimedOut,
              "heap " + path + ": lock not granted within " + std::to_string(timeout_ns / 1000000) +
                  " ms; held by " + describe_holder(),
              ETIMEDOUT);
}

// Another process may have grown the heap beyond what this one mapped.
void Heap::Impl::check_reservation() const {
  if (outgrown()) throw_outgrown("changing it");
}

void Heap::Impl::throw_outgrown(const char* what) const {
  throw Error(Errc::kOutOfSpace,
              "heap " + path + " has grown to " + std::to_string(full_size()) +
                  " bytes, beyond the " + std::to_string(reserve) +
                  " this process reserved for it: " + what +
                  " needs all of it; reads of what lies in the first " + std::to_string(reserve) +
                  " bytes still work. Open it again with a larger OpenOptions::reserve");
}

// The previous holder died inside the lock: repair, as an exclusive section
// of our own, then carry on in the mode we were asked for.
void Heap::Impl::recover_after_death(bool holder_died) {
  const bool upgrade = mode == LockMode::kNetwork && !outer_exclusive;
  if (upgrade) {  // a read lock may not write: trade it for a write lock
    posix::unlock_range(fd, kHeapLock, kHeapLockLength);
    posix::lock_range(fd, F_WRLCK, kHeapLock, kHeapLockLength, -1, "heap " + path);
    refresh_from_server();
  }
  if (mode == LockMode::kNetwork) {
    // The dead holder's writes reached the server without a generation bump,
    // so our cached data pages may be older than them: refresh them all.
    const State& s = state();
    refresh_range(kHeaderBytes, s.size - kHeaderBytes);
  }
  if (mode == LockMode::kLocal || state().lock_holder != 0) {  // someone may have beaten us to it
    State& s = state();
    // Local mode: undo the dead holder's operation from its log (a holder
    // that died between operations, or after clearing lock_holder, left
    // nothing to undo), then reclaim its thread caches from their ledgers.
    // Anything else gets the walk. See recovery.cpp.
    const std::uint64_t dead = s.lock_holder;
    const bool replayed =
        mode == LockMode::kLocal && trust_undo_log && (dead == 0 || replay_undo_log(dead));
    publish(s.lock_holder, holder_token());
    bool walked = !replayed;
    // The log we begin is ours, and says "walk" until the walk is done: a
    // death of ours before the walk writes anything must not leave a log
    // that says "nothing to undo" over a heap still half changed.
    begin_undo_log(walked);
    // The dead holder's session is reclaimed now, even if its session lock
    // still looks held (the kernel frees a dead process's robust mutex
    // before it closes its files): only now can its ledger list a block its
    // undone operation freed, or one it had just given back.
    known_dead_session = holder_died ? dead : 0;
    try {
      if (walked) rebuild(Rebuild::kRecover);
      walked = reclaim_dead_sessions(walked) || walked;
    } catch (...) {
      known_dead_session = 0;
      throw;
    }
    known_dead_session = 0;
    ++s.recoveries;
    if (walked) ++s.walked_recoveries;
    ++s.generation;
    end_undo_log();
    publish(s.lock_holder, 0);
    disown_undo_log();
    if (mode == LockMode::kNetwork) {
      if (const int error = flush_to_server(); error != 0) {
        throw Error::from_errno(error, "heap " + path + ": cannot write the repaired heap");
      }
    }
  }
  if (upgrade) posix::lock_range(fd, F_RDLCK, kHeapLock, kHeapLockLength, -1, "heap " + path);
}

int Heap::Impl::release() noexcept {
  // A child forked inside a section leaves it here, but the lock, the
  // counts, the log and the byte-range locks (shared with the parent's open
  // file) are the parent's: only this process's bookkeeping goes.
  const bool in_child = forked();
  // (The holder of the mutex is in no counted section of this heap.)
  if (owner_tid.load(std::memory_order_relaxed) != this_thread_id()) {
    if (CountedSection* section = counted_section(this)) {
      if (--section->depth == 0) {
        if (!in_child) leave_counted();
        counted_sections.erase(counted_sections.begin() + (section - counted_sections.data()));
        --sections_held;
      }
      return 0;
    }
  }
  if (in_child) {
    if (--depth == 0) {
      owner_tid.store(0, std::memory_order_relaxed);
      --sections_held;
    }
    return 0;
  }
  if (--depth > 0) return 0;
  int error = 0;
  State& s = state();
  if (outer_exclusive) {
    held_lock();  // still, until the unlock below
    end_undo_log();
    ++s.generation;
    publish(s.lock_holder, 0);
    disown_undo_log();
  }
  owner_tid.store(0, std::memory_order_relaxed);
  --sections_held;
  if (mode == LockMode::kLocal) {
    // A reader that waited on the mutex lifts the bar (a writer leaves it up
    // for the next writer: bar_readers()), as does anyone who held the
    // mutex for reading after a holder died; but not while lock_holder is
    // still set: a repair that failed leaves the heap half changed, and
    // readers must wait for the next one.
    if (counted_readers && !read_only && !outer_exclusive &&
        __atomic_load_n(&s.readers_barred, __ATOMIC_RELAXED) && s.lock_holder == 0) {
      __atomic_store_n(&s.readers_barred, 0, __ATOMIC_SEQ_CST);
    }
    pthread_mutex_unlock(mutex());
    return 0;
  }
  if (outer_exclusive) error = flush_to_server();
  seen_generation = s.generation;
  unmap_pages();
  if (const int unlocked = posix::unlock_range(fd, kHeapLock, kHeapLockLength); error == 0) {
    error = unlocked;
  }
  network_mutex.unlock();
  return error;
}

// Network mode, just after taking the lock: make our view what the server has.
void Heap::Impl::refresh_from_server() {
  refresh_range(0, kHeaderBytes);
  const State& s = state();
  const std::uint64_t size = heap_size();  // what we mapped of it
  if (s.generation != seen_generation) refresh_range(kHeaderBytes, size - kHeaderBytes);
  if (size > known_file_size) {
    // Another host grew the file; our kernel's idea of its size (which
    // decides what the mapping may touch) must catch up before we read.
    struct statx fresh {};
    if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_SIZE, &fresh) == 0) {
      known_file_size = fresh.stx_size;
    }
  }
}

// Makes every page of [offset, offset + length) that this host caches equal
// to the server's copy. First the recipe of REFERENCE.md §4: drop our
// mappings, then ask the kernel to drop its cached pages. The kernel may keep
// a page it cannot drop at that instant (one another process on this host
// has a transient reference to), and such a page can be stale: measured on
// GlusterFS with two processes per host. So every page still cached
// afterwards (mincore) is compared with a read that bypasses the cache
// (O_DIRECT) and overwritten where it differs.
void Heap::Impl::refresh_range(std::uint64_t offset, std::uint64_t length) {
  if (length == 0) return;
  madvise(base + offset, length, MADV_DONTNEED);
  posix_fadvise(fd, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_DONTNEED);
  // A read-only mapping cannot be corrected in place: read-only readers rely
  // on eviction alone (exact with one process per host).
  if (direct_fd < 0 || read_only) return;
  const std::uint64_t pages = (length + kPageSize - 1) / kPageSize;
  std::vector<unsigned char> cached(pages);
  if (mincore(base + offset, length, cached.data()) != 0) return;
  constexpr std::uint64_t kChunkPages = 16;
  if (!bounce)
    bounce.reset(
        static_cast<std::uint8_t*>(std::aligned_alloc(kPageSize, kChunkPages * kPageSize)));
  bool repaired = false;
  for (std::uint64_t page = 0; page < pages;) {
    if (!(cached[page] & 1)) {
      ++page;
      continue;
    }
    std::uint64_t run = 1;
    while (page + run < pages && run < kChunkPages && (cached[page + run] & 1)) ++run;
    const std::uint64_t at_offset = offset + page * kPageSize;
    const ssize_t got =
        pread(direct_fd, bounce.get(), run * kPageSize, static_cast<off_t>(at_offset));
    if (got < 0) throw Error::from_errno(errno, "heap " + path + ": read from the server");
    for (std::uint64_t i = 0; i * kPageSize < static_cast<std::uint64_t>(got); ++i) {
      std::uint8_t* mapped = base + at_offset + i * kPageSize;
      const std::uint8_t* server = bounce.get() + i * kPageSize;
      if (std::memcmp(mapped, server, kPageSize) != 0) {
        std::memcpy(mapped, server, kPageSize);
        repaired = true;
      }
    }
    page += run;
  }
  // The repaired pages now hold the server's bytes but look written; write
  // them back now, so a reader's release leaves nothing dirty behind.
  if (repaired) msync(base + offset, length, MS_SYNC);
}

int Heap::Impl::flush_to_server() noexcept {
  if (const int error = posix::msync(base, heap_size()); error != 0) return error;
  return posix::fdatasync(fd);
}

// Network mode, just before releasing the lock: drop this process's mappings
// of the heap's pages. posix_fadvise(DONTNEED) in the next acquirer on this
// host cannot evict a page that any process here still maps, so a page kept
// mapped outside the lock would feed stale bytes to every later holder here.
void Heap::Impl::unmap_pages() noexcept {
  madvise(base, state().size, MADV_DONTNEED);
}

bool Heap::Impl::session_survives(int slot) const {
  const std::uint64_t id = state().sessions[slot].id;
  if (known_dead_session != 0 && id == known_dead_session) return false;
  return session_alive(slot);
}

bool Heap::Impl::session_alive(int slot) const {
  // When the probe fails we cannot tell: assume alive.
  return posix::range_locked_by_other(fd, F_WRLCK, kSessionLockBase + slot, 1, true);
}

std::uint32_t Heap::Impl::live_sessions() const {
  std::uint32_t live = 0;
  for (int i = 0; i < kMaxSessions; ++i) {
    if (state().sessions[i].id == 0) continue;
    if (i == session_slot || session_alive(i)) ++live;
  }
  return live;
}

// Processes in different modes must never share a heap (each would take a
// different lock). Every open heap read-holds its mode's byte; an opener
// refuses while another mode's byte is held, before it locks or writes anything.
void Heap::Impl::claim_mode() {
  // A read lock on our own byte conflicts only with a writer, and none exists.
  posix::try_lock_range(fd, F_RDLCK, kModeLockBase + static_cast<int>(mode), 1, "heap " + path);
  for (LockMode other : {LockMode::kLocal, LockMode::kNetwork}) {
    if (other == mode) continue;
    if (posix::range_locked_by_other(fd, F_WRLCK, kModeLockBase + static_cast<int>(other), 1,
                                     false)) {
      throw Error(Errc::kBusy, "heap " + path + ": open in " + lock_mode_name(other) +
                                   " mode by another process; every process must use the same "
                                   "mode (see SHEAF_HEAP_MODE)");
    }
  }
}

void Heap::Impl::register_session(bool walked) {
  require_exclusive();
  State& s = state();
  // A process that died without closing may have left blocks in its thread
  // caches: give them back (from its ledgers; by walking if one is unreadable).
  if (reclaim_dead_sessions(walked)) ++s.walked_recoveries;
  int chosen = -1;
  for (int i = 0; i < kMaxSessions; ++i) {
    Session& other = s.sessions[i];
    if (other.id == 0 && chosen < 0 &&
        posix::try_lock_range(fd, F_WRLCK, kSessionLockBase + i, 1, "heap " + path)) {
      chosen = i;
    }
  }
  if (chosen < 0) {
    throw Error(Errc::kBusy, "heap " + path + ": already open by " + std::to_string(kMaxSessions) +
                                 " processes");
  }
  // Not logged: a count of 0 is right for a slot nobody reads through, and
  // reader_slots only grows.
  __atomic_store_n(&s.readers[chosen], 0, __ATOMIC_SEQ_CST);
  if (static_cast<std::uint32_t>(chosen) >= s.reader_slots) {
    __atomic_store_n(&s.reader_slots, static_cast<std::uint32_t>(chosen + 1), __ATOMIC_RELEASE);
  }
  Operation op(*this);
  Session& mine = s.sessions[chosen];
  save_range(&mine, sizeof(Session));
  store(s.session_ledgers[chosen], 0);  // an orphan's were reclaimed above
  mine = Session{};
  mine.pid = static_cast<std::uint32_t>(getpid());
  mine.mode = static_cast<std::uint32_t>(mode);
  mine.opened_ns = posix::realtime_ns();
  gethostname(mine.host, sizeof(mine.host) - 1);
  if (s.next_session_id == 0) s.next_session_id = 1;  // 0 means "no session"
  mine.id = s.next_session_id++;
  session_slot = chosen;
  session_id = mine.id;
  op.commit();
}

void Heap::Impl::unregister_session() noexcept {
  if (session_slot < 0) return;
  Operation op(*this);
  save_range(&state().sessions[session_slot], sizeof(Session));
  state().sessions[session_slot] = format::Session{};
  op.commit();
  posix::unlock_range(fd, kSessionLockBase + session_slot, 1);
  session_slot = -1;
}

}  // namespace sheaf
