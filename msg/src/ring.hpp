// ring.hpp: a shared-memory byte stream between two processes on one host.
// Internal.
//
// A connection on a Unix socket can move its frames into a pair of rings
// (one per direction) in a memfd segment the client makes and passes to the
// owner with SCM_RIGHTS, beside one eventfd per side. A frame is then a
// memcpy into the ring and an index store; the kernel is involved only when
// the reader was asleep (it says so in the ring, and the writer pokes its
// eventfd) or the ring is full. The socket stays open: its closing is how
// each side learns that the other died.
//
// Each direction is a byte stream like a socket's, so frames of any size
// pass (a big one in pieces, as room appears) and FrameReader reads them
// unchanged. Everything in the segment is written by both processes, so the
// reader checks the indices it is given (bytes in the ring never more than
// its capacity) and treats a violation as a broken peer.
//
// Waking up, by the reader of a direction:            by its writer:
//   1. reader_waiting = 1 (seq_cst store)              1. copy bytes, head += n (seq_cst store)
//   2. head == tail (seq_cst load) ?                   2. reader_waiting (seq_cst load) ?
//      sleep in poll() on its eventfd                     write its eventfd
// In the single order of seq_cst operations one of the two loads comes after
// the other side's store, so a wake-up is never lost.
// A writer that finds the ring full waits the same way on writer_waiting.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

namespace sheaf::msg {

class FrameReader;

// One direction's indices, each on its own cache line.
struct RingIndices {
  alignas(64) std::atomic<std::uint64_t> head;  // bytes written, ever
  alignas(64) std::atomic<std::uint64_t> tail;  // bytes read, ever
  alignas(64) std::atomic<std::uint32_t> reader_waiting;
  std::atomic<std::uint32_t> writer_waiting;
};

class RingPair {
 public:
  static constexpr std::uint64_t kDefaultCapacity = 1 << 20;  // per direction

  // Makes a segment (the client does). Throws Error(kSystem).
  static RingPair create(std::uint64_t capacity = kDefaultCapacity);
  // Maps a segment received from a peer; throws Error(kCorrupted) if it is
  // not one (size, magic, capacity). Takes ownership of `fd`.
  static RingPair adopt(int fd);
  RingPair(RingPair&& other) noexcept;
  RingPair& operator=(RingPair&& other) noexcept;
  RingPair(const RingPair&) = delete;
  RingPair& operator=(const RingPair&) = delete;
  ~RingPair();

  int fd() const { return fd_; }
  std::uint64_t capacity() const { return capacity_; }
  // Direction 0: client to owner; 1: owner to client.
  RingIndices& indices(int direction) const;
  std::byte* data(int direction) const;

 private:
  RingPair() = default;
  void map(std::uint64_t bytes);
  int fd_ = -1;
  std::byte* base_ = nullptr;
  std::uint64_t bytes_ = 0;
  std::uint64_t capacity_ = 0;
};

// One side's view: it writes one direction and reads the other.
class RingEnd {
 public:
  // `self_wake`: this side's eventfd (poked when it may read or write
  // again); `peer_wake`: the other side's. Takes ownership of both.
  RingEnd(RingPair rings, int write_direction, int self_wake, int peer_wake);
  RingEnd(RingEnd&& other) noexcept;
  RingEnd& operator=(RingEnd&& other) noexcept;
  RingEnd(const RingEnd&) = delete;
  RingEnd& operator=(const RingEnd&) = delete;
  ~RingEnd();

  int self_wake() const { return self_wake_; }
  const RingPair& rings() const { return rings_; }

  // Copies as much of `bytes` as fits; returns how much. Pokes the reader if
  // it sleeps.
  std::size_t write_some(std::span<const std::byte> bytes);
  // Feeds what is readable to `reader`; returns the bytes fed. Throws
  // Error(kCorrupted) when the peer's indices make no sense.
  std::size_t read_into(FrameReader& reader);
  bool readable() const;
  bool writable() const;
  // Before sleeping until readable (or writable): announce it; false if it
  // became so meanwhile (then do not sleep). Clear it after waking.
  bool prepare_to_sleep_reading();
  void done_sleeping_reading();
  bool prepare_to_sleep_writing();
  void done_sleeping_writing();
  // Empties this side's eventfd after a wake-up.
  void drain_wake();

 private:
  RingPair rings_;
  int write_direction_;
  int self_wake_;
  int peer_wake_;
};

// An eventfd for a RingEnd (non-blocking, close-on-exec); throws Error.
int make_wake_fd();
// How long a waiting side spins on the ring before it sleeps in the kernel:
// $SHEAF_MSG_SPIN_US microseconds (default 20; 0: never spin).
std::uint64_t spin_ns();

// One step of a spin: a pause, and now and then a sched_yield(), so that a
// peer on the same core (two processes, one free core) gets to run instead
// of waiting for our time slice to end.
void spin_pause(unsigned& spins);

// Spins that ran out without data or room: their budgets, summed for the
// calling thread (what spinning cost it for nothing; tests read it).
void count_spin_in_vain(std::uint64_t budget_ns);
std::uint64_t spin_in_vain_ns();

inline std::uint64_t nanoseconds_since(std::chrono::steady_clock::time_point start) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count());
}

// How long one waiter spins, adapted to how long its waits take. A wait
// that ends within the window (spin_ns()) is served by the spin: no sleep,
// no wake-up, a few microseconds saved. One that outlasts it (a peer busy
// for longer) pays the whole spin for nothing, a core burnt meanwhile. So:
// - a waiter spins the whole window while its waits end within it;
// - after kPatience waits in a row that outlasted it, only kShortNs (a peer
//   about to answer is still caught), except every kProbeEvery-th wait,
//   which spins the whole window again to find out whether the peer got
//   faster (a sleeping waiter's own wake-up can take longer than the
//   window on a busy machine, so the waits it measures cannot tell);
// - the first wait that ends within the window brings the whole window back
//   (in the short mode, within the window and a wake-up: kWakeUpNs).
// A waiter whose peer answers fast (a request-reply loop, the benchmarks)
// keeps its spin, and one whose peer is slow stops burning a core. (glibc's
// adaptive mutex adapts the window itself; that lost here, where the
// hand-offs that matter take 1-5 us and a shorter window misses them:
// docs/msg.md.) Not thread-safe: one per waiting side.
class SpinBudget {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  static constexpr unsigned kPatience = 3;
  static constexpr unsigned kProbeEvery = 8;
  static constexpr std::uint64_t kShortNs = 1000;
  static constexpr std::uint64_t kWakeUpNs = 100'000;

  // Begins a wait: spins until `ready()` or the budget (or `until`) runs
  // out; true if ready. `counts`: whether the wait says how long the peer
  // takes (not one for the rest of a frame whose head came). A spin that
  // runs out is counted in vain, and the wait goes on in the caller's
  // sleep, which ends with slept_until_ready().
  template <class Ready>
  bool spin(Ready&& ready, bool counts, TimePoint until = TimePoint::max()) {
    started_ = std::chrono::steady_clock::now();
    counts_ = counts;
    const TimePoint spin_until = std::min(until, started_ + std::chrono::nanoseconds(ns()));
    for (unsigned spins = 0;; spin_pause(spins)) {
      if (ready()) {
        if (counts) long_waits_ = 0;  // (no clock read: it ended within the window)
        sleeping_ = false;
        return true;
      }
      if (std::chrono::steady_clock::now() >= spin_until) break;
    }
    count_spin_in_vain(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(spin_until - started_).count()));
    sleeping_ = true;
    return false;
  }
  // The wait spin() began, and slept on, has what it waited for.
  void slept_until_ready() {
    if (sleeping_ && counts_) waited(nanoseconds_since(started_));
    sleeping_ = false;
  }

  // The policy (public for its test): how long to spin, in nanoseconds...
  std::uint64_t ns() const {
    if (long_waits_ < kPatience || long_waits_ % kProbeEvery == 0) return spin_ns();
    return std::min(kShortNs, spin_ns());
  }
  // ...and a wait that ended `waited_ns` after it began.
  void waited(std::uint64_t waited_ns) {
    // In the short mode a wait that slept also measures this side's own
    // wake-up (50-70 us here): one that ended within kWakeUpNs past the
    // window says the peer was fast. Without that, two sides of a fast
    // exchange that fell into the short mode together kept each other there,
    // each one's probe finding the other asleep (`sheaf msg bench` showed
    // 68 us round trips for a whole series).
    const bool short_mode = long_waits_ >= kPatience;
    if (waited_ns <= spin_ns() || (short_mode && waited_ns <= spin_ns() + kWakeUpNs)) {
      long_waits_ = 0;
    } else if (++long_waits_ == 0) {
      long_waits_ = kPatience;  // (wrapped)
    }
  }

 private:
  unsigned long_waits_ = 0;  // in a row
  TimePoint started_{};      // of the wait spin() began
  bool counts_ = false;
  bool sleeping_ = false;  // spin() ran out; slept_until_ready() not yet
};

}  // namespace sheaf::msg
