// posix.cpp: the one layer between Sheaf's files and the operating system.
#include "posix.hpp"

#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <ctime>
#include <vector>

#include "sheaf/error.hpp"

namespace sheaf::posix {
namespace {

// Per operation: successes still to let through, then failures to inject.
struct Fault {
  std::atomic<int> skip{0};
  std::atomic<int> count{0};
  std::atomic<int> error{0};
};
std::array<Fault, static_cast<std::size_t>(Op::kCount)> faults;
// Tests set faults rarely; every call reads this one flag first, so the
// production path costs one relaxed load.
std::atomic<bool> any_fault{false};

// Runs `call` (which returns -1 and sets errno on failure) with injection
// and EINTR retries; returns its result, errno set on failure.
template <class Call>
auto checked(Op op, Call&& call) {
  for (;;) {
    if (int error = injected(op); error != 0) {
      if (error == EINTR) continue;  // what a real EINTR gets: another try
      errno = error;
      return static_cast<decltype(call())>(-1);
    }
    auto result = call();
    if (result < 0 && errno == EINTR) continue;
    return result;
  }
}

void sleep_ns(std::uint64_t ns) {
  timespec pause{static_cast<time_t>(ns / 1000000000u), static_cast<long>(ns % 1000000000u)};
  while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
  }
}

struct flock range(short type, off_t start, off_t length) {
  struct flock lock {};
  lock.l_type = type;
  lock.l_whence = SEEK_SET;
  lock.l_start = start;
  lock.l_len = length;
  return lock;
}

}  // namespace

void inject_fault(Op op, int error, int count, int skip) {
  Fault& fault = faults[static_cast<std::size_t>(op)];
  fault.error.store(error);
  fault.skip.store(skip);
  fault.count.store(count);
  any_fault.store(true);
}

void clear_faults() {
  for (Fault& fault : faults) fault.count.store(0);
  any_fault.store(false);
}

std::atomic<int> crash_countdown{-1};

void inject_crash(int skip) {
  crash_countdown.store(skip);
}

void crash_point_reached() noexcept {
  if (crash_countdown.fetch_sub(1) == 0) ::kill(::getpid(), SIGKILL);
}

int injected(Op op) {
  if (!any_fault.load(std::memory_order_relaxed)) return 0;
  Fault& fault = faults[static_cast<std::size_t>(op)];
  if (fault.count.load() <= 0) return 0;
  if (fault.skip.load() > 0 && fault.skip.fetch_sub(1) > 0) return 0;
  if (fault.count.fetch_sub(1) <= 0) return 0;
  return fault.error.load();
}

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

void Fd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Fd try_open(const std::string& path, int flags, mode_t mode) {
  return Fd(checked(Op::kOpen, [&] { return ::open(path.c_str(), flags | O_CLOEXEC, mode); }));
}

Fd open_file(const std::string& path, int flags, const std::string& what, mode_t mode) {
  Fd fd = try_open(path, flags, mode);
  if (!fd.valid()) throw Error::from_errno(errno, what);
  return fd;
}

std::size_t pread_all(int fd, std::span<std::byte> bytes, std::uint64_t offset,
                      const std::string& what) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t got = checked(Op::kRead, [&] {
      return ::pread(fd, bytes.data() + done, bytes.size() - done,
                     static_cast<off_t>(offset + done));
    });
    if (got < 0) throw Error::from_errno(errno, what + ": read");
    if (got == 0) break;
    done += static_cast<std::size_t>(got);
  }
  return done;
}

void pwrite_all(int fd, std::span<const std::byte> bytes, std::uint64_t offset,
                const std::string& what) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t put = checked(Op::kWrite, [&] {
      return ::pwrite(fd, bytes.data() + done, bytes.size() - done,
                      static_cast<off_t>(offset + done));
    });
    if (put < 0) throw Error::from_errno(errno, what + ": write");
    done += static_cast<std::size_t>(put);
  }
}

void write_all(int fd, std::span<const std::byte> bytes, const std::string& what) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t put =
        checked(Op::kWrite, [&] { return ::write(fd, bytes.data() + done, bytes.size() - done); });
    if (put < 0) throw Error::from_errno(errno, what + ": write");
    done += static_cast<std::size_t>(put);
  }
}

void copy_range(int in, std::uint64_t in_offset, int out, std::uint64_t out_offset,
                std::uint64_t length, const std::string& what) {
  bool in_kernel = true;
  std::vector<std::byte> buffer;
  while (length > 0) {
    ssize_t moved = -1;
    if (in_kernel) {
      auto from = static_cast<loff_t>(in_offset);
      auto to = static_cast<loff_t>(out_offset);
      moved = checked(Op::kWrite, [&] {
        return ::copy_file_range(in, &from, out, &to, std::min<std::uint64_t>(length, 1u << 30), 0);
      });
      if (moved < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
                        errno == EOPNOTSUPP || errno == EBADF)) {
        in_kernel = false;  // not for these two files: through a buffer from here on
        continue;
      }
      if (moved < 0) throw Error::from_errno(errno, what + ": copy");
    } else {
      if (buffer.empty()) buffer.resize(4 << 20);
      const std::size_t got =
          pread_all(in, std::span(buffer.data(), std::min<std::uint64_t>(length, buffer.size())),
                    in_offset, what);
      pwrite_all(out, std::span<const std::byte>(buffer.data(), got), out_offset, what);
      moved = static_cast<ssize_t>(got);
    }
    if (moved == 0) {
      throw Error(Errc::kCorrupted, what + ": the file ends at byte " + std::to_string(in_offset) +
                                        ", before what was to be copied");
    }
    in_offset += static_cast<std::uint64_t>(moved);
    out_offset += static_cast<std::uint64_t>(moved);
    length -= static_cast<std::uint64_t>(moved);
  }
}

std::uint64_t file_size(int fd, const std::string& what) {
  struct stat st {};
  if (checked(Op::kStat, [&] { return ::fstat(fd, &st); }) != 0) {
    throw Error::from_errno(errno, what + ": stat");
  }
  return static_cast<std::uint64_t>(st.st_size);
}

int fsync(int fd) noexcept {
  return checked(Op::kFsync, [&] { return ::fsync(fd); }) == 0 ? 0 : errno;
}

int fdatasync(int fd) noexcept {
  return checked(Op::kFsync, [&] { return ::fdatasync(fd); }) == 0 ? 0 : errno;
}

int msync(void* address, std::size_t length) noexcept {
  return checked(Op::kMsync, [&] { return ::msync(address, length, MS_SYNC); }) == 0 ? 0 : errno;
}

int allocate_range(int fd, std::uint64_t offset, std::uint64_t length) noexcept {
  const int rc = checked(Op::kFallocate, [&] {
    return ::fallocate(fd, 0, static_cast<off_t>(offset), static_cast<off_t>(length));
  });
  if (rc == 0) return 0;
  if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL) return errno;
  // No fallocate here: extend sparsely (never shrink).
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno;
  if (static_cast<std::uint64_t>(st.st_size) >= offset + length) return 0;
  return ::ftruncate(fd, static_cast<off_t>(offset + length)) == 0 ? 0 : errno;
}

std::string directory_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

void fsync_directory(const std::string& directory) noexcept {
  Fd dir = try_open(directory, O_RDONLY | O_DIRECTORY);
  if (dir.valid()) (void)posix::fsync(dir.get());
}

void publish_file(int fd, const std::string& temp_path, const std::string& final_path, bool replace,
                  const std::string& what, bool durable) {
  if (int error = durable ? posix::fsync(fd) : 0; error != 0) {
    throw Error::from_errno(error, what + ": cannot write to disk");
  }
  const int rc = checked(Op::kLink, [&] {
    return replace ? ::rename(temp_path.c_str(), final_path.c_str())
                   : ::link(temp_path.c_str(), final_path.c_str());
  });
  if (rc != 0) {
    const int error = errno;
    if (error == EEXIST) throw Error(Errc::kAlreadyExists, what + ": already exists", EEXIST);
    throw Error::from_errno(error, what + ": cannot give it its name");
  }
  if (durable) fsync_directory(directory_of(final_path));
}

bool try_lock_range(int fd, short type, off_t start, off_t length, const std::string& what) {
  struct flock lock = range(type, start, length);
  if (checked(Op::kLock, [&] { return ::fcntl(fd, F_OFD_SETLK, &lock); }) == 0) return true;
  if (errno == EAGAIN || errno == EACCES) return false;
  throw Error::from_errno(errno, what + ": byte-range lock");
}

bool lock_range(int fd, short type, off_t start, off_t length, std::int64_t timeout_ns,
                const std::string& what) {
  constexpr std::uint64_t kFirstPause = 50'000;
  constexpr std::uint64_t kLongestPause = 5'000'000;
  const std::uint64_t start_ns = monotonic_ns();
  std::uint64_t pause = kFirstPause;
  for (;;) {
    if (try_lock_range(fd, type, start, length, what)) return true;
    const std::uint64_t waited = monotonic_ns() - start_ns;
    if (timeout_ns >= 0 && waited >= static_cast<std::uint64_t>(timeout_ns)) return false;
    std::uint64_t nap = pause;
    if (timeout_ns >= 0) nap = std::min(nap, static_cast<std::uint64_t>(timeout_ns) - waited);
    sleep_ns(nap);
    pause = std::min(pause * 2, kLongestPause);
  }
}

int unlock_range(int fd, off_t start, off_t length) noexcept {
  struct flock lock = range(F_UNLCK, start, length);
  return checked(Op::kLock, [&] { return ::fcntl(fd, F_OFD_SETLK, &lock); }) == 0 ? 0 : errno;
}

bool range_locked_by_other(int fd, short type, off_t start, off_t length, bool if_unknown) {
  struct flock probe = range(type, start, length);
  if (::fcntl(fd, F_OFD_GETLK, &probe) != 0) return if_unknown;
  return probe.l_type != F_UNLCK;
}

void futex_wait(const std::uint32_t* word, std::uint32_t expected,
                std::uint64_t timeout_ns) noexcept {
  const timespec timeout{static_cast<time_t>(timeout_ns / 1000000000u),
                         static_cast<long>(timeout_ns % 1000000000u)};
  // Not FUTEX_PRIVATE_FLAG: the word is in a file other processes map.
  ::syscall(SYS_futex, word, FUTEX_WAIT, expected, &timeout, nullptr, 0);
}

void futex_wake(const std::uint32_t* word) noexcept {
  ::syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

std::uint64_t monotonic_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t realtime_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

std::string random_hex(std::size_t bytes) {
  std::vector<unsigned char> raw(bytes);
  for (std::size_t got = 0; got < bytes;) {
    const ssize_t n = ::getrandom(raw.data() + got, bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error::from_errno(n < 0 ? errno : EIO, "getrandom");
    got += static_cast<std::size_t>(n);
  }
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * bytes);
  for (const unsigned char b : raw) {
    hex += kDigits[b >> 4];
    hex += kDigits[b & 15];
  }
  return hex;
}

std::uint64_t boot_id() noexcept {
  char text[64] = {};
  const int fd = ::open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  const ssize_t got = ::read(fd, text, sizeof(text) - 1);
  ::close(fd);
  if (got <= 0) return 0;
  // "6b6f...-...": 32 hex digits; fold the 128 bits into 64.
  std::uint64_t halves[2] = {0, 0};
  int digits = 0;
  for (ssize_t i = 0; i < got && digits < 32; ++i) {
    const char c = text[i];
    int value = -1;
    if (c >= '0' && c <= '9') value = c - '0';
    if (c >= 'a' && c <= 'f') value = c - 'a' + 10;
    if (value < 0) continue;
    halves[digits / 16] = halves[digits / 16] << 4 | static_cast<std::uint64_t>(value);
    ++digits;
  }
  return digits == 32 ? (halves[0] ^ halves[1]) | 1 : 0;
}

}  // namespace sheaf::posix
