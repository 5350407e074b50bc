// bench_util.hpp: what the benchmark programs share besides their ratio tables
// (table_reporter.hpp): errors and open files, a page-aligned buffer for each program's
// read() size, random file contents, the page-cache state of a file, child processes,
// cleanup on a fatal signal, and the command line and environment.
//
// Each program includes it once, from its single source file, and keeps what is its own
// (sizes, paths, the files under test) there.
#pragma once

#include <benchmark/benchmark.h>
#include <dirent.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <new>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

extern char** environ;

namespace sheaf_bench {

// --- Errors and files ----------------------------------------------------------------------
[[noreturn]] inline void fail(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

class Fd {
 public:
  Fd(const char* path, int flags, mode_t mode = 0) : fd_(::open(path, flags | O_CLOEXEC, mode)) {
    if (fd_ < 0) fail(std::string("open ") + path);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { ::close(fd_); }
  int get() const { return fd_; }

 private:
  int fd_;
};

// Paths live in fixed buffers, so that a signal handler can use them; false if too long.
inline bool set_path(char (&out)[4096], const std::string& path) {
  if (path.size() >= sizeof out) return false;
  std::memcpy(out, path.c_str(), path.size() + 1);
  return true;
}

// --- Reading and writing in chunks ---------------------------------------------------------
// Each program reads (and writes) in chunks of its own size, Size: the one buffer of that
// size, page-aligned, made on first use, serves every read() and write() it makes.
template <std::size_t Size>
char* chunk_buffer() {
  static char* const buf = [] {
    void* p = std::aligned_alloc(4096, Size);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<char*>(p);
  }();
  return buf;
}

// Reads up to Size bytes at the file position into chunk_buffer<Size>(); 0 at the end.
template <std::size_t Size>
std::size_t read_chunk(int fd, const char* what) {
  for (;;) {
    const ssize_t got = ::read(fd, chunk_buffer<Size>(), Size);
    if (got >= 0) return static_cast<std::size_t>(got);
    if (errno != EINTR) fail(std::string("read ") + what);
  }
}

// Reads from the file position to the end in Size read()s; returns the bytes read.
template <std::size_t Size>
std::uint64_t read_to_end(int fd, const char* what) {
  std::uint64_t total = 0;
  while (const std::size_t got = read_chunk<Size>(fd, what)) total += got;
  benchmark::DoNotOptimize(chunk_buffer<Size>()[0]);
  return total;
}

// Opens, reads to the end in Size read()s, closes; returns the bytes read.
template <std::size_t Size>
std::uint64_t read_file(const char* path) {
  Fd fd(path, O_RDONLY);
  return read_to_end<Size>(fd.get(), path);
}

// The bytes of a file under test: splitmix64 from a random seed, so incompressible, without
// holes, and different in every run, so that nothing below the filesystem can deduplicate
// or compress them.
class RandomWords {
 public:
  RandomWords() : x_((std::uint64_t{std::random_device{}()} << 32) | std::random_device{}()) {}

  // The next `bytes` of the stream into out, rounded up to whole 8-byte words (out must
  // have room for them).
  void fill(char* out, std::size_t bytes) {
    auto* words = reinterpret_cast<std::uint64_t*>(out);
    for (std::size_t i = 0; i < (bytes + 7) / 8; ++i) {
      std::uint64_t z = (x_ += 0x9e3779b97f4a7c15u);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
      words[i] = z ^ (z >> 31);
    }
  }

 private:
  std::uint64_t x_;
};

// --- The page cache ------------------------------------------------------------------------
// Drops the clean pages of the open file fd (named path) from the page cache.
inline void drop_cached(int fd, const char* path) {
  const int err = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  if (err != 0) {
    errno = err;
    fail(std::string("posix_fadvise ") + path);
  }
}

// The fraction of the file's pages in the page cache (mincore); nothing when the file cannot
// be mapped (a FUSE file opened with direct I/O has no page cache to speak of).
inline std::optional<double> cached_fraction(const char* path) {
  Fd fd(path, O_RDONLY);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(std::string("stat ") + path);
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0) return 1.0;
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) return std::nullopt;
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((size + page - 1) / page);
  const int rc = ::mincore(map, size, resident.data());
  ::munmap(map, size);
  if (rc != 0) return std::nullopt;
  const auto in =
      std::count_if(resident.begin(), resident.end(), [](unsigned char r) { return (r & 1) != 0; });
  return static_cast<double>(in) / static_cast<double>(resident.size());
}

// --- Child processes -----------------------------------------------------------------------
// The child run_program is waiting for (cp, ls), killed on a fatal signal; 0 when none.
inline volatile std::sig_atomic_t g_child = 0;

// Where run_program sends the child's standard output: ours, or /dev/null.
enum class Stdout { kInherit, kDevNull };

// Runs `program` with args (args[0] included) and this process's environment, and waits for
// it; throws unless it exits with 0.
inline void run_program(const char* program, std::vector<std::string> args,
                        Stdout out = Stdout::kInherit) {
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  int err = 0;
  if (out == Stdout::kDevNull) {
    posix_spawn_file_actions_t actions;
    err = ::posix_spawn_file_actions_init(&actions);
    if (err != 0) {
      errno = err;
      fail("posix_spawn_file_actions_init");
    }
    err = ::posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    if (err == 0) err = ::posix_spawn(&pid, program, &actions, nullptr, argv.data(), environ);
    ::posix_spawn_file_actions_destroy(&actions);
  } else {
    err = ::posix_spawn(&pid, program, nullptr, nullptr, argv.data(), environ);
  }
  if (err != 0) {
    errno = err;
    fail(std::string("posix_spawn ") + program);
  }
  g_child = pid;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) fail("waitpid");
  }
  g_child = 0;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string command = program;
    for (std::size_t i = 1; i < args.size(); ++i) command += " " + args[i];
    throw std::runtime_error(command + " failed (status " + std::to_string(status) + ")");
  }
}

// --- Cleanup on a fatal signal -------------------------------------------------------------
namespace detail {

// Removes `name` under the directory `parent`, recursively, with only async-signal-safe calls
// (getdents64 rather than readdir). Never descends into another filesystem (st_dev != dev):
// removing a file through a mount of the store would remove it from the store, one FUSE
// request at a time, and a mount point whose daemon is gone cannot even be read.
inline void remove_tree_at(int parent, const char* name, dev_t dev) noexcept {
  struct stat st {};
  if (::fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    ::unlinkat(parent, name, 0);
    return;
  }
  if (st.st_dev != dev) {
    ::unlinkat(parent, name, AT_REMOVEDIR);  // fails, harmlessly, while still mounted
    return;
  }
  const int fd = ::openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  alignas(8) char buf[4096];
  for (bool removed = true; removed;) {  // again from the start while entries go away
    removed = false;
    ::lseek(fd, 0, SEEK_SET);
    for (;;) {
      const ssize_t n = getdents64(fd, buf, sizeof buf);
      if (n <= 0) break;
      for (ssize_t off = 0; off < n;) {
        unsigned short reclen = 0;
        std::memcpy(&reclen, buf + off + offsetof(struct dirent64, d_reclen), sizeof reclen);
        const char* entry = buf + off + offsetof(struct dirent64, d_name);
        off += reclen;
        if (std::strcmp(entry, ".") == 0 || std::strcmp(entry, "..") == 0) continue;
        remove_tree_at(fd, entry, dev);
        // Only what went counts: an entry that stays (a mount point) must not loop forever.
        struct stat gone {};
        removed = removed || ::fstatat(fd, entry, &gone, AT_SYMLINK_NOFOLLOW) != 0;
      }
    }
  }
  ::close(fd);
  ::unlinkat(parent, name, AT_REMOVEDIR);
}

inline void (*g_fatal_cleanup)() noexcept = nullptr;

extern "C" inline void sheaf_bench_on_fatal_signal(int sig) {
  const pid_t child = g_child;
  if (child > 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
  }
  if (g_fatal_cleanup != nullptr) g_fatal_cleanup();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

}  // namespace detail

// Removes the file or directory tree at path (if any) with only async-signal-safe calls, and
// without descending into a filesystem mounted inside it (see detail::remove_tree_at).
inline void remove_tree(const char* path) noexcept {
  struct stat st {};
  if (::lstat(path, &st) == 0) detail::remove_tree_at(AT_FDCWD, path, st.st_dev);
}

// However the run ends, a crash in the code under test included, its files must go: on
// SIGINT, SIGTERM, SIGHUP, SIGSEGV, SIGBUS, SIGABRT or SIGFPE the running child (g_child) is
// killed, then cleanup (async-signal-safe) runs, then the process dies of the signal.
inline void clean_up_on_fatal_signals(void (*cleanup)() noexcept) {
  detail::g_fatal_cleanup = cleanup;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE}) {
    std::signal(sig, detail::sheaf_bench_on_fatal_signal);
  }
}

// --- Benchmark bodies ----------------------------------------------------------------------
// True when the setup a benchmark needs went well (error is empty), else skips it saying why.
inline bool ready_or_skip(benchmark::State& state, const std::string& error) {
  if (error.empty()) return true;
  const std::string why = "setup failed: " + error;
  state.SkipWithError(why.c_str());
  return false;
}

// Runs the benchmark body; an exception ends the run with an error instead of the program.
template <class F>
void guarded(benchmark::State& state, F&& body) {
  try {
    body();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

// --- Output --------------------------------------------------------------------------------
// A table cell: v as fmt prints it, or "-" when v is negative (not measured).
inline std::string cell(double v, const char* fmt) {
  if (v < 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

// Colours on a terminal that has them, unless NO_COLOR is set.
inline benchmark::ConsoleReporter::OutputOptions console_options() {
  const char* term = std::getenv("TERM");
  bool color = ::isatty(STDOUT_FILENO) != 0 && std::getenv("NO_COLOR") == nullptr &&
               term != nullptr && std::string_view(term) != "dumb";
  return color ? benchmark::ConsoleReporter::OO_Color : benchmark::ConsoleReporter::OO_None;
}

// --- Configuration -------------------------------------------------------------------------
// Google Benchmark's flags from the command line, with repetitions of all rows interleaved
// in a random order unless the command line says otherwise (a later flag wins), so that load
// that comes and goes on a shared machine falls on both sides of a ratio alike. False when
// the command line has an argument Google Benchmark does not know (it says which).
inline bool initialize_interleaved(int argc, char** argv) {
  std::string interleave = "--benchmark_enable_random_interleaving=true";
  std::vector<char*> args(argv, argv + argc);
  args.insert(args.begin() + 1, interleave.data());
  int count = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&count, args.data());
  return !benchmark::ReportUnrecognizedArguments(count, args.data());
}

// Where the files go: $SHEAF_BENCH_DIR, or `fallback` when it is unset or empty.
inline std::string bench_dir(const char* fallback) {
  const char* env = std::getenv("SHEAF_BENCH_DIR");
  return env != nullptr && env[0] != '\0' ? env : fallback;
}

// "1073741824", "64M", "1G": bytes, with an optional binary suffix; nullopt if malformed or 0.
inline std::optional<std::uint64_t> parse_bytes(const char* text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long n = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text) return std::nullopt;
  std::uint64_t scale = 1;
  const std::string_view suffix(end);
  if (suffix == "K" || suffix == "k") {
    scale = std::uint64_t{1} << 10;
  } else if (suffix == "M" || suffix == "m") {
    scale = std::uint64_t{1} << 20;
  } else if (suffix == "G" || suffix == "g") {
    scale = std::uint64_t{1} << 30;
  } else if (!suffix.empty()) {
    return std::nullopt;
  }
  if (n == 0 || n > (std::uint64_t{1} << 40) / scale) return std::nullopt;
  return n * scale;
}

// The byte count in the environment variable `name` (see parse_bytes) into bytes, which
// keeps its value when the variable is unset or empty. False, after `program` says why on
// stderr, when it is malformed.
inline bool bytes_from_env(const char* program, const char* name, std::uint64_t& bytes) {
  const char* env = std::getenv(name);
  if (env == nullptr || env[0] == '\0') return true;
  const std::optional<std::uint64_t> parsed = parse_bytes(env);
  if (!parsed) {
    std::cerr << program << ": " << name << "=" << env
              << ": want a byte count such as 1073741824, 64M or 1G\n";
    return false;
  }
  bytes = *parsed;
  return true;
}

// "DIR: ext4 on /dev/vda (mounted on /)", from the longest mount point above DIR.
inline std::string describe_filesystem(const std::string& dir) {
  std::error_code ec;
  const std::string real = std::filesystem::canonical(dir, ec).string();
  if (ec) return dir + ": " + ec.message();
  std::ifstream mounts("/proc/self/mountinfo");
  std::string line, best_point, best_type, best_source;
  auto unescape = [](const std::string& s) {  // mountinfo writes ' ' as \040 and so on
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\\' && i + 3 < s.size()) {
        out += static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8));
        i += 3;
      } else {
        out += s[i];
      }
    }
    return out;
  };
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    std::string id, parent, device, root, point, field;
    fields >> id >> parent >> device >> root >> point;
    while (fields >> field && field != "-") {
    }
    std::string type, source;
    fields >> type >> source;
    point = unescape(point);
    const bool above = point == "/" || real == point ||
                       (real.compare(0, point.size(), point) == 0 && real[point.size()] == '/');
    if (above && point.size() >= best_point.size()) {
      best_point = point;
      best_type = type;
      best_source = source;
    }
  }
  if (best_type.empty()) return real + ": filesystem unknown";
  return real + ": " + best_type + " on " + best_source + " (mounted on " + best_point + ")";
}

}  // namespace sheaf_bench
