// sheaf_contention_bench: two processes allocating and freeing on one heap file at once.
//
// Each round: the parent creates a fresh 1 GiB heap file, forks two children that each
// open it, waits until both are ready, releases them together and times (wall clock)
// until both have done N allocate+free pairs of 64 bytes. Rounds alternate Sheaf
// (sheaf::Heap) and Boost.Interprocess (managed_mapped_file, created by the parent and
// opened with open_or_create in the children). Prints the medians and Sheaf / Boost.
//
//   sheaf_contention_bench [--iterations=N] [--rounds=R] [--timeout=SECONDS]
//
// --benchmark_repetitions=R is taken as --rounds=R and other --benchmark_* flags are
// ignored, so that run.sh can pass both benchmarks the same flags. Files go to
// $SHEAF_BENCH_DIR (default /dev/shm) and are removed after each round.
#include <poll.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/interprocess/creation_tags.hpp>
#include <boost/interprocess/managed_mapped_file.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sheaf/heap.hpp"

namespace {

namespace bip = boost::interprocess;

constexpr std::uint64_t kHeapBytes = std::uint64_t{1} << 30;
constexpr std::size_t kBlockBytes = 64;
constexpr int kProcesses = 2;

struct Options {
  long iterations = 200'000;  // allocate+free pairs per process
  int rounds = 5;             // of each implementation
  int timeout_s = 300;        // per round, after which the children are killed
  std::string dir;
};

enum class Impl { kSheaf, kBoost };

const char* impl_name(Impl impl) {
  return impl == Impl::kSheaf ? "Sheaf" : "BoostIpc";
}

inline void touch(void* p) {
  *static_cast<volatile unsigned char*>(p) = 1;
  asm volatile("" : : "r"(p) : "memory");
}

// --- Pipes ---------------------------------------------------------------------------
bool write_byte(int fd, char c) {
  for (;;) {
    ssize_t n = ::write(fd, &c, 1);
    if (n == 1) return true;
    if (n < 0 && errno == EINTR) continue;
    return false;
  }
}

// Reads `count` bytes from fd into out, giving up at the deadline. False on timeout, EOF
// or error.
bool read_bytes(int fd, std::size_t count, std::string& out,
                std::chrono::steady_clock::time_point deadline) {
  while (out.size() < count) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    int ready = ::poll(&pfd, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) return false;
    if (ready <= 0) continue;
    char buf[8];
    ssize_t n = ::read(fd, buf, std::min(sizeof buf, count - out.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return true;
}

// --- The child -----------------------------------------------------------------------------
template <class Alloc, class Free>
void work(long iterations, Alloc&& alloc, Free&& release) {
  for (long i = 0; i < iterations; ++i) {
    void* p = alloc(kBlockBytes);
    touch(p);
    release(p);
  }
}

// Opens the heap, says 'r' on `ready`, waits for `go` to close, does the work and says 'd'
// on `done`; says 'e' on both if anything failed. Never returns.
[[noreturn]] void child(Impl impl, const std::string& path, long iterations, int ready, int go,
                        int done) {
  int status = 0;
  try {
    if (impl == Impl::kSheaf) {
      sheaf::Heap heap = sheaf::Heap::open(path).value();
      write_byte(ready, 'r');
      char c;
      while (::read(go, &c, 1) < 0 && errno == EINTR) {
      }
      work(
          iterations, [&](std::size_t n) { return heap.allocate(n); },
          [&](void* p) { heap.deallocate(p); });
      write_byte(done, 'd');  // before closing the heap, which is not timed
    } else {
      bip::managed_mapped_file segment(bip::open_or_create, path.c_str(), kHeapBytes);
      write_byte(ready, 'r');
      char c;
      while (::read(go, &c, 1) < 0 && errno == EINTR) {
      }
      work(
          iterations, [&](std::size_t n) { return segment.allocate(n); },
          [&](void* p) { segment.deallocate(p); });
      write_byte(done, 'd');
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "child %d (%s): %s\n", static_cast<int>(::getpid()), impl_name(impl),
                 e.what());
    write_byte(ready, 'e');  // whichever the parent is waiting on
    write_byte(done, 'e');
    status = 1;
  }
  std::fflush(stderr);
  ::_exit(status);
}

// --- The parent --------------------------------------------------------------------------------
void create_heap(Impl impl, const std::string& path) {
  ::unlink(path.c_str());
  if (impl == Impl::kSheaf) {
    sheaf::CreateOptions options;
    options.initial_size = kHeapBytes;
    sheaf::Heap heap = sheaf::Heap::create(path, options).value();
  } else {
    bip::managed_mapped_file segment(bip::create_only, path.c_str(), kHeapBytes);
  }
}

// After a round, untimed: the Sheaf heap the children shared must still pass Heap::check().
bool heap_sound(const std::string& path) {
  try {
    sheaf::Heap heap = sheaf::Heap::open(path).value();
    sheaf::CheckReport report = heap.check();
    for (const std::string& problem : report.problems) {
      std::fprintf(stderr, "Sheaf: %s after the round: %s\n", path.c_str(), problem.c_str());
    }
    return report.ok();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "Sheaf: %s after the round: %s\n", path.c_str(), e.what());
    return false;
  }
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// One round: the wall time in seconds from the start signal until both children are done,
// or nothing if something failed (said on stderr).
std::optional<double> run_round(Impl impl, const Options& opt, const std::string& path) {
  try {
    create_heap(impl, path);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: cannot create %s: %s\n", impl_name(impl), path.c_str(), e.what());
    ::unlink(path.c_str());
    return std::nullopt;
  }

  int ready[2] = {-1, -1}, go[2] = {-1, -1}, done[2] = {-1, -1};
  if (::pipe(ready) != 0 || ::pipe(go) != 0 || ::pipe(done) != 0) {
    std::perror("pipe");
    for (int* p : {ready, go, done}) close_fd(p[0]), close_fd(p[1]);
    ::unlink(path.c_str());
    return std::nullopt;
  }
  std::fflush(stdout);
  std::fflush(stderr);

  std::vector<pid_t> children;
  for (int i = 0; i < kProcesses; ++i) {
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(ready[0]);
      ::close(go[1]);  // else the go pipe never reaches EOF
      ::close(done[0]);
      child(impl, path, opt.iterations, ready[1], go[0], done[1]);
    }
    if (pid < 0) {
      std::perror("fork");
      break;
    }
    children.push_back(pid);
  }
  close_fd(ready[1]);
  close_fd(go[0]);
  close_fd(done[1]);

  using clock = std::chrono::steady_clock;
  auto deadline = clock::now() + std::chrono::seconds(opt.timeout_s);
  std::optional<double> result;
  std::string said;
  if (children.size() != static_cast<std::size_t>(kProcesses)) {
    // fork failed: the children we have are released below and reaped
  } else if (!read_bytes(ready[0], kProcesses, said, deadline) ||
             said.find('e') != std::string::npos) {
    std::fprintf(stderr, "%s: a child could not open the heap\n", impl_name(impl));
  } else {
    std::string finished;
    auto start = clock::now();
    close_fd(go[1]);  // both children see EOF at once
    if (read_bytes(done[0], kProcesses, finished, deadline)) {
      result = std::chrono::duration<double>(clock::now() - start).count();
    } else {
      std::fprintf(stderr, "%s: the children did not finish within %d s; killing them\n",
                   impl_name(impl), opt.timeout_s);
      for (pid_t pid : children) ::kill(pid, SIGKILL);
    }
  }
  close_fd(go[1]);
  for (pid_t pid : children) {
    int status = 0;
    // Bounded: a child either finished, is released by the closed go pipe, or was killed.
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "%s: child %d ended with status %#x\n", impl_name(impl),
                   static_cast<int>(pid), status);
      result.reset();
    }
  }
  close_fd(ready[0]);
  close_fd(done[0]);
  if (result && impl == Impl::kSheaf && !heap_sound(path)) result.reset();
  ::unlink(path.c_str());
  return result;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

bool parse_long(std::string_view text, long min, long max, long& out) {
  std::string s(text);
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(s.c_str(), &end, 10);
  if (errno != 0 || end == s.c_str() || *end != '\0' || v < min || v > max) return false;
  out = v;
  return true;
}

void usage(std::FILE* out) {
  std::fprintf(out,
               "usage: sheaf_contention_bench [--iterations=N] [--rounds=R] [--timeout=SECONDS]\n"
               "  two processes each do N allocate+free pairs of %zu bytes on one heap file;\n"
               "  R rounds each of Sheaf and Boost.Interprocess, alternating (default N=200000,"
               " R=5).\n"
               "  --benchmark_repetitions=R is read as --rounds=R; other --benchmark_* flags"
               " are ignored.\n"
               "  Files go to $SHEAF_BENCH_DIR (default /dev/shm).\n",
               kBlockBytes);
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value_of = [&](std::string_view flag, std::string_view& value) {
      if (arg.substr(0, flag.size()) != flag) return false;
      value = arg.substr(flag.size());
      return true;
    };
    std::string_view value;
    long n = 0;
    if (arg == "--help" || arg == "-h") {
      usage(stdout);
      return 0;
    } else if (value_of("--iterations=", value) && parse_long(value, 1, 1'000'000'000, n)) {
      opt.iterations = n;
    } else if ((value_of("--rounds=", value) || value_of("--benchmark_repetitions=", value)) &&
               parse_long(value, 1, 1000, n)) {
      opt.rounds = static_cast<int>(n);
    } else if (value_of("--timeout=", value) && parse_long(value, 1, 86'400, n)) {
      opt.timeout_s = static_cast<int>(n);
    } else if (arg.substr(0, 12) == "--benchmark_") {
      // another Google Benchmark flag: not ours
    } else {
      std::fprintf(stderr, "sheaf_contention_bench: bad argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  const char* env = std::getenv("SHEAF_BENCH_DIR");
  opt.dir = env != nullptr && env[0] != '\0' ? env : "/dev/shm";
  std::string stem = opt.dir + "/sheaf_contention_" + std::to_string(::getpid());

  std::printf(
      "Two processes, %ld allocate+free pairs of %zu bytes each on one 1 GiB heap file in %s;"
      " %d rounds each, alternating\n",
      opt.iterations, kBlockBytes, opt.dir.c_str(), opt.rounds);
  std::vector<double> times[2];
  bool failed = false;
  for (int round = 0; round < opt.rounds && !failed; ++round) {
    for (Impl impl : {Impl::kSheaf, Impl::kBoost}) {
      std::string path = stem + (impl == Impl::kSheaf ? "_sheaf.heap" : "_boost.heap");
      std::optional<double> t = run_round(impl, opt, path);
      if (!t) {
        failed = true;
        break;
      }
      times[impl == Impl::kSheaf ? 0 : 1].push_back(*t);
      std::printf("round %d %-8s %9.2f ms  %8.1f ns per pair (wall / pairs of both)\n", round + 1,
                  impl_name(impl), *t * 1e3,
                  *t * 1e9 / (static_cast<double>(opt.iterations) * kProcesses));
      std::fflush(stdout);
    }
  }
  if (failed) {
    std::fprintf(stderr, "sheaf_contention_bench: a round failed\n");
    return 1;
  }

  double sheaf = median(times[0]);
  double boost = median(times[1]);
  double pairs = static_cast<double>(opt.iterations) * kProcesses;
  std::printf("\nTwo-process contention, median wall time of %d rounds\n", opt.rounds);
  std::printf("%-10s %12s %14s\n", "", "wall ms", "ns per pair");
  std::printf("%-10s %12.2f %14.1f\n", "Sheaf", sheaf * 1e3, sheaf * 1e9 / pairs);
  std::printf("%-10s %12.2f %14.1f\n", "BoostIpc", boost * 1e3, boost * 1e9 / pairs);
  std::printf("Sheaf/Boost %.2fx\n", sheaf / boost);
  return 0;
}
