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

#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

#include "impl.hpp"

namespace sheaf {
namespace {

using namespace format;

std::int64_t this_thread_id() {
  thread_local const std::int64_t id = gettid();
  return id;
}

}  // namespace

bool Heap::Impl::held_by_this_thread() const {
  return owner_tid.load(std::memory_order_relaxed) == this_thread_id();
}

void Heap::Impl::require_exclusive() const {
  if (!held_by_this_thread() || !outer_exclusive) {
    throw Error(Errc::kInvalidArgument,
                "heap " + path + ": this changes the heap, so it cannot run inside shared()");
  }
}

// Sections are short (tens of nanoseconds), so a contended lock is usually
// free again within a few hundred cycles: spin a little before sleeping in the
// kernel, which costs microseconds per hand-off.
int Heap::Impl::lock_local_mutex() {
  constexpr int kSpins = 200;
  for (int spin = 0; spin < kSpins; ++spin) {
    const int rc = pthread_mutex_trylock(&state().mutex);
    if (rc != EBUSY) return rc;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  return pthread_mutex_lock(&state().mutex);
}

void Heap::Impl::acquire(bool exclusive) {
  if (held_by_this_thread()) {
    if (exclusive && !outer_exclusive) require_exclusive();
    ++depth;
    return;
  }
  bool holder_died = false;
  if (mode == LockMode::kLocal) {
    int rc = lock_local_mutex();
    if (rc == EOWNERDEAD) {
      pthread_mutex_consistent(&state().mutex);
      holder_died = true;
    } else if (rc != 0) {
      throw Error::from_errno(rc, "heap " + path + ": lock");
    }
  } else {
    network_mutex.lock();
    try {
      lock_range(fd, exclusive ? F_WRLCK : F_RDLCK, kHeapLock, kHeapLockLength, true);
      try {
        refresh_from_server();
      } catch (...) {
        lock_range(fd, F_UNLCK, kHeapLock, kHeapLockLength, true);
        throw;
      }
    } catch (...) {
      network_mutex.unlock();
      throw;
    }
  }
  owner_tid.store(this_thread_id(), std::memory_order_relaxed);
  depth = 1;
  outer_exclusive = exclusive;

  try {
    check_reservation();
    if (holder_died || state().lock_holder != 0) recover_after_death();
  } catch (...) {
    // Leave lock_holder as it is: if the repair failed, the next locker must
    // try again. What the repair wrote is a walkable chain; on a network
    // filesystem it must reach the server before the lock goes.
    if (mode == LockMode::kNetwork) flush_to_server();
    outer_exclusive = false;
    release();
    throw;
  }
  if (exclusive) publish(state().lock_holder, holder_token());
}

// Another process may have grown the heap beyond what this one mapped.
void Heap::Impl::check_reservation() const {
  const std::uint64_t size = __atomic_load_n(&state().size, __ATOMIC_ACQUIRE);
  if (size > reserve) {
    throw Error(Errc::kOutOfSpace, "heap " + path + " has grown to " + std::to_string(size) +
                                       " bytes, beyond the " + std::to_string(reserve) +
                                       " this process reserved for it; open it with a larger "
                                       "OpenOptions::reserve");
  }
}

// The previous holder died inside the lock: repair, as an exclusive section
// of our own, then carry on in the mode we were asked for.
void Heap::Impl::recover_after_death() {
  const bool upgrade = mode == LockMode::kNetwork && !outer_exclusive;
  if (upgrade) {  // a read lock may not write: trade it for a write lock
    lock_range(fd, F_UNLCK, kHeapLock, kHeapLockLength, true);
    lock_range(fd, F_WRLCK, kHeapLock, kHeapLockLength, true);
    refresh_from_server();
  }
  if (mode == LockMode::kNetwork) {
    // The dead holder's writes reached the server without a generation bump,
    // so our cached data pages may be older than them: refresh them all.
    const State& s = state();
    refresh_range(kHeaderBytes, s.size - kHeaderBytes);
  }
  if (mode == LockMode::kLocal || state().lock_holder != 0) {  // someone may have beaten us to it
    publish(state().lock_holder, holder_token());
    rebuild(Rebuild::kRecover);
    ++state().recoveries;
    ++state().generation;
    publish(state().lock_holder, 0);
    if (mode == LockMode::kNetwork && flush_to_server() != 0) {
      throw Error::from_errno(errno, "heap " + path + ": cannot write the repaired heap");
    }
  }
  if (upgrade) lock_range(fd, F_RDLCK, kHeapLock, kHeapLockLength, true);
}

int Heap::Impl::release() noexcept {
  if (--depth > 0) return 0;
  int error = 0;
  State& s = state();
  if (outer_exclusive) {
    ++s.generation;
    publish(s.lock_holder, 0);
  }
  owner_tid.store(0, std::memory_order_relaxed);
  if (mode == LockMode::kLocal) {
    pthread_mutex_unlock(&s.mutex);
    return 0;
  }
  if (outer_exclusive) error = flush_to_server();
  seen_generation = s.generation;
  unmap_pages();
  try {
    lock_range(fd, F_UNLCK, kHeapLock, kHeapLockLength, true);
  } catch (const Error& e) {
    error = e.sys_errno() ? e.sys_errno() : EIO;
  }
  network_mutex.unlock();
  return error;
}

// Network mode, just after taking the lock: make our view what the server has.
void Heap::Impl::refresh_from_server() {
  refresh_range(0, kHeaderBytes);
  check_reservation();
  const State& s = state();
  const std::uint64_t size = __atomic_load_n(&s.size, __ATOMIC_ACQUIRE);
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
  if (direct_fd < 0) return;
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
  if (msync(base, state().size, MS_SYNC) != 0) return errno;
  if (fdatasync(fd) != 0) return errno;
  return 0;
}

// Network mode, just before releasing the lock: drop this process's mappings
// of the heap's pages. posix_fadvise(DONTNEED) in the next acquirer on this
// host cannot evict a page that any process here still maps, so a page kept
// mapped outside the lock would feed stale bytes to every later holder here.
void Heap::Impl::unmap_pages() noexcept {
  madvise(base, state().size, MADV_DONTNEED);
}

bool Heap::Impl::session_alive(int slot) const {
  struct flock probe {};
  probe.l_type = F_WRLCK;
  probe.l_whence = SEEK_SET;
  probe.l_start = kSessionLockBase + slot;
  probe.l_len = 1;
  if (fcntl(fd, F_OFD_GETLK, &probe) != 0) return true;  // cannot tell: assume alive
  return probe.l_type != F_UNLCK;
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
  lock_range(fd, F_RDLCK, kModeLockBase + static_cast<int>(mode), 1, false);
  for (LockMode other : {LockMode::kLocal, LockMode::kNetwork}) {
    if (other == mode) continue;
    struct flock probe {};
    probe.l_type = F_WRLCK;
    probe.l_whence = SEEK_SET;
    probe.l_start = kModeLockBase + static_cast<int>(other);
    probe.l_len = 1;
    if (fcntl(fd, F_OFD_GETLK, &probe) == 0 && probe.l_type != F_UNLCK) {
      throw Error(Errc::kBusy, "heap " + path + ": open in " + lock_mode_name(other) +
                                   " mode by another process; every process must use the same "
                                   "mode (see SHEAF_HEAP_MODE)");
    }
  }
}

void Heap::Impl::register_session() {
  require_exclusive();
  State& s = state();
  int chosen = -1;
  bool found_dead = false;
  for (int i = 0; i < kMaxSessions; ++i) {
    Session& other = s.sessions[i];
    if (other.id != 0 && !session_alive(i)) {  // its process is gone
      other = Session{};
      found_dead = true;
    }
    if (other.id == 0 && chosen < 0 && lock_range(fd, F_WRLCK, kSessionLockBase + i, 1, false)) {
      chosen = i;
    }
  }
  if (chosen < 0) {
    throw Error(Errc::kBusy, "heap " + path + ": already open by " + std::to_string(kMaxSessions) +
                                 " processes");
  }
  Session& mine = s.sessions[chosen];
  mine = Session{};
  mine.pid = static_cast<std::uint32_t>(getpid());
  mine.mode = static_cast<std::uint32_t>(mode);
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  mine.opened_ns = static_cast<std::uint64_t>(now.tv_sec) * 1000000000u +
                   static_cast<std::uint64_t>(now.tv_nsec);
  gethostname(mine.host, sizeof(mine.host) - 1);
  if (s.next_session_id == 0) s.next_session_id = 1;  // 0 means "no session"
  mine.id = s.next_session_id++;
  session_slot = chosen;
  session_id = mine.id;
  // A process that died without closing may have left blocks in its thread
  // caches: give them back.
  if (found_dead) rebuild(Rebuild::kRecover);
}

void Heap::Impl::unregister_session() noexcept {
  if (session_slot < 0) return;
  state().sessions[session_slot] = format::Session{};
  try {
    lock_range(fd, F_UNLCK, kSessionLockBase + session_slot, 1, false);
  } catch (...) {
  }
  session_slot = -1;
}

}  // namespace sheaf
