// posix.hpp: every system call the heap and the store make on files, in one
// place, and the fault switches of the message layer's sockets. Internal;
// never in public headers.
//
// After LevelDB's Env: one layer between Sheaf and the operating system, so
// that (1) each call's retry on EINTR, short reads and writes, and the shape of
// its error message are written once, and (2) tests can make any of them fail
// (inject_fault) to prove that every error path reports and loses nothing.
//
// Functions that cannot go on without the call succeeding throw sheaf::Error
// naming `what` (a file, usually "heap PATH: step"); the few whose failure a
// caller must weigh return the errno instead (0 for success).
#pragma once

#include <fcntl.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace sheaf::posix {

// The calls a test can make fail.
enum class Op {
  kOpen,
  kRead,
  kWrite,
  kFsync,  // fsync and fdatasync
  kMsync,
  kFallocate,  // fallocate and ftruncate
  kLock,       // OFD byte-range locks (set, not probe)
  kLink,       // link and rename
  kStat,
  // The message layer's links (msg/src/link.cpp) ask injected() before a
  // frame goes out or is awaited; an injected error there breaks the
  // connection for real (shutdown), as a reset on the wire would.
  kSocketSend,
  kSocketReceive,
  kCount
};

// Test hook: after `skip` more calls of `op` succeed, the next `count` fail
// with `error` (EIO, ENOSPC, EINTR...). An injected EINTR is retried like a
// real one, so it proves the retry rather than an error path.
void inject_fault(Op op, int error, int count = 1, int skip = 0);
void clear_faults();
// Zero if the call goes ahead; else the injected errno (already counted).
int injected(Op op);

// Test hook for crash safety: the heap calls crash_point() before each store
// a death could interrupt (an operation's logged stores, a ledger's stores).
// After `skip` more calls, the process kills itself there with SIGKILL: a
// real death, at an instant a test chose. Negative: never (the default).
void inject_crash(int skip);
extern std::atomic<int> crash_countdown;  // inject_crash's; negative: off
void crash_point_reached() noexcept;
// Inline: the allocator passes here tens of times per operation.
inline void crash_point() noexcept {
  if (crash_countdown.load(std::memory_order_relaxed) >= 0) [[unlikely]]
    crash_point_reached();
}

// An owned file descriptor, closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept;
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

// open(2) with O_CLOEXEC added; throws Error naming `what` on failure.
Fd open_file(const std::string& path, int flags, const std::string& what, mode_t mode = 0600);
// Like open_file but returns an invalid Fd with errno set instead of throwing.
Fd try_open(const std::string& path, int flags, mode_t mode = 0600);

// Reads until `bytes` is full or the file ends; returns the bytes read.
std::size_t pread_all(int fd, std::span<std::byte> bytes, std::uint64_t offset,
                      const std::string& what);
void pwrite_all(int fd, std::span<const std::byte> bytes, std::uint64_t offset,
                const std::string& what);
void write_all(int fd, std::span<const std::byte> bytes, const std::string& what);

// Copies `length` bytes at `in_offset` of `in` to `out_offset` of `out`
// inside the kernel (copy_file_range), or, where the kernel cannot for this
// pair of files (another filesystem type, a pipe), through a buffer.
// Throws Error naming `what` (Op::kWrite faults apply); a source that ends
// early is kCorrupted.
void copy_range(int in, std::uint64_t in_offset, int out, std::uint64_t out_offset,
                std::uint64_t length, const std::string& what);
std::uint64_t file_size(int fd, const std::string& what);

// fsync / fdatasync / msync(MS_SYNC): 0 or the errno.
int fsync(int fd) noexcept;
int fdatasync(int fd) noexcept;
int msync(void* address, std::size_t length) noexcept;

// Claims [offset, offset + length) on disk now (a full disk is ENOSPC here,
// not SIGBUS later), falling back to a sparse extension where the filesystem
// has no fallocate. 0 or the errno.
int allocate_range(int fd, std::uint64_t offset, std::uint64_t length) noexcept;

// fsync of a directory, so a name made in it survives a crash. Best effort:
// some filesystems refuse to fsync directories.
void fsync_directory(const std::string& directory) noexcept;
std::string directory_of(const std::string& path);

// Atomic publication of a file written under a temporary name in the same
// directory: fsync it, give it its final name, fsync the directory. With
// `replace` the final name is renamed over (readers see the old file or the
// new one); without it, link() fails with kAlreadyExists if the name is taken.
// Without `durable`, neither fsync: readers still see all or nothing, but a
// power cut may lose the file, as it may what cp wrote.
void publish_file(int fd, const std::string& temp_path, const std::string& final_path, bool replace,
                  const std::string& what, bool durable = true);

// OFD byte-range locks (per open file description, so threads and forked
// children holding the same description share them).
// Takes the lock without waiting: false when another holder conflicts.
bool try_lock_range(int fd, short type, off_t start, off_t length, const std::string& what);
// Takes the lock, waiting at most `timeout_ns` (< 0: for ever). The wait is
// a sleep that backs off from 50 us to 5 ms between non-blocking tries, never a
// blocking F_OFD_SETLKW, so a lost wake-up in a network filesystem's lock
// server costs at most one back-off step. False when the time ran out.
bool lock_range(int fd, short type, off_t start, off_t length, std::int64_t timeout_ns,
                const std::string& what);
// Unlocks; 0 or the errno.
int unlock_range(int fd, off_t start, off_t length) noexcept;
// Whether any other open file description holds a lock conflicting with
// `type` on the range. When the probe itself fails, reports `if_unknown`.
bool range_locked_by_other(int fd, short type, off_t start, off_t length, bool if_unknown);

// Futexes on a word of a shared file mapping (so across processes): wait
// while *word == expected, for at most timeout_ns (woken, changed, timed out
// or interrupted: the caller looks again); wake every waiter.
void futex_wait(const std::uint32_t* word, std::uint32_t expected,
                std::uint64_t timeout_ns) noexcept;
void futex_wake(const std::uint32_t* word) noexcept;

// `bytes` bytes from the kernel's random generator (getrandom), as lowercase
// hex: temporary file names, store markers, connection tokens, secrets.
std::string random_hex(std::size_t bytes);

// Clocks.
std::uint64_t monotonic_ns() noexcept;
std::uint64_t realtime_ns() noexcept;
// A number that changes each time the machine starts (the kernel's boot id,
// folded), or 0 if it cannot be read.
std::uint64_t boot_id() noexcept;

// The byte-order mark every Sheaf file stores, read back swapped on a
// machine of the other byte order.
inline constexpr std::uint32_t kEndianMark = 0x01020304;
inline constexpr std::uint32_t kEndianMarkSwapped = 0x04030201;

}  // namespace sheaf::posix
