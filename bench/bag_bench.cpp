// sheaf_bag_bench: writing and verifying a 1 GiB databag beside cp and a plain read, in one run.
//
//   BM_Bag_Put               read() the source file in 4 MiB chunks, stream them into
//                            Store::create_bag(...).write(), then commit() (fsync of the file,
//                            rename into bags/, fsync of the directory)
//   BM_Cp                    the real cp: posix_spawn of /bin/cp SOURCE DEST, then waitpid
//   BM_CpSync                the same, then open + fsync of DEST and fsync of its directory:
//                            a durable copy, which is what a bag put is
//   BM_Bag_Verify/cold:C     Store::verify(name) on a 1 GiB bag (4 MiB pread()s + XXH64)
//   BM_PlainRead/cold:C      read() the same bag file end to end into a 4 MiB buffer, with the
//                            same POSIX_FADV_SEQUENTIAL hint and no hashing
//
// All report bytes per second of real (wall) time; cp runs in a child process.
//
// What is measured and what is not. Before every iteration, with the timer paused: the
// previous destination (bag or cp copy) is removed and syncfs() is called, so that no
// writeback, block freeing or discard left over from an earlier iteration, of any row, runs
// inside a timed one; then the input is put in a known cache state, the same for both sides
// of a ratio. Page caches are never dropped as a whole (a shared machine), and the
// destination is always a new file.
// - Put, Cp and CpSync: the source is read end to end first, so it is in the page cache for
//   all three; what is timed is reading it from the cache, copying, and for Put and CpSync
//   getting the copy onto the disk. Cp returns with its copy still dirty in the page cache
//   (and GNU cp copies with copy_file_range, inside the kernel): it is the speed of a copy
//   into memory, not onto the disk. Its writeback happens, untimed, before the next iteration.
// - Verify and PlainRead, cold:0: the bag file is read once first, so both read it from the
//   page cache; this shows what hashing costs over copying the bytes out. cold:1: the bag
//   file's pages (only that file's) are evicted with posix_fadvise(POSIX_FADV_DONTNEED) first,
//   so both read it from the disk (or whatever cache the disk's host keeps).
// The "cached" column is the fraction of the input file in the page cache just before the
// timed part (mincore), to show the states are what they claim to be.
//
// The files live in a directory made for the run in $SHEAF_BENCH_DIR (default /var/tmp: a
// real disk, not /dev/shm, since fsync is part of what is measured; the filesystem is printed
// in the context header): the random (incompressible) source, cp's copies, and a store with the
// bags. The source and the bag that Verify reads are made once, by the first benchmark that
// needs them. The directory is removed at exit, or on a fatal signal.
// $SHEAF_BAG_BENCH_BYTES (e.g. 64M; suffixes K, M, G) shrinks the 1 GiB for quick runs; each
// iteration then moves that many bytes and a run makes as many iterations as move about 1 GiB.
// Repetitions of all the rows are interleaved in a random order (unless
// --benchmark_enable_random_interleaving=false), so that load from elsewhere on the machine,
// which comes and goes, falls on both sides of a ratio alike. When the runs are done a table
// gives the throughput of each side and the ratio (Sheaf / baseline, higher is better; the
// target is 0.80), from the medians of the repetitions. Run it through bench/run.sh.
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
#include <map>
#include <new>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "sheaf/store.hpp"
#include "table_reporter.hpp"

extern char** environ;

namespace {

constexpr std::uint64_t kDefaultBytes = std::uint64_t{1} << 30;
constexpr std::size_t kChunk = std::size_t{4} << 20;  // read() size, as Store::verify's pread()s
constexpr const char* kPutBag = "put";                // written by BM_Bag_Put
constexpr const char* kVerifyBag = "verify";          // read by BM_Bag_Verify and BM_PlainRead
constexpr const char* kCp = "/bin/cp";

std::uint64_t g_bytes = kDefaultBytes;  // payload bytes per iteration

// --- Files -------------------------------------------------------------------------
// Fixed buffers, so that the signal handler can use them.
char g_top[4096];     // the run's directory, removed at exit
char g_source[4096];  // the random source file
char g_copy[4096];    // cp's destination
char g_store_dir[4096];
volatile std::sig_atomic_t g_child = 0;  // a running cp, killed on a fatal signal

bool set_path(char (&out)[4096], const std::string& path) {
  if (path.size() >= sizeof out) return false;
  std::memcpy(out, path.c_str(), path.size() + 1);
  return true;
}

// Removes `name` under the directory `parent`, recursively, with only async-signal-safe
// calls (getdents64 rather than readdir).
void remove_tree_at(int parent, const char* name) noexcept {
  const int fd = ::openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    ::unlinkat(parent, name, 0);
    return;
  }
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
        remove_tree_at(fd, entry);
        removed = true;
      }
    }
  }
  ::close(fd);
  ::unlinkat(parent, name, AT_REMOVEDIR);
}

void remove_files() noexcept {
  if (g_top[0] != '\0') remove_tree_at(AT_FDCWD, g_top);
}

extern "C" void on_fatal_signal(int sig) {
  const pid_t child = g_child;
  if (child > 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
  }
  remove_files();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// --- Helpers ---------------------------------------------------------------------------
[[noreturn]] void fail(const std::string& what) {
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

// One 4 MiB buffer, page-aligned, for every read() the benchmarks make.
char* buffer() {
  static char* const buf = [] {
    void* p = std::aligned_alloc(4096, kChunk);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<char*>(p);
  }();
  return buf;
}

// Reads up to kChunk bytes at the file position; 0 at the end.
std::size_t read_chunk(int fd, const char* what) {
  for (;;) {
    const ssize_t got = ::read(fd, buffer(), kChunk);
    if (got >= 0) return static_cast<std::size_t>(got);
    if (errno != EINTR) fail(std::string("read ") + what);
  }
}

// Reads the whole file, discarding the bytes; returns how many there were.
std::uint64_t read_file(const char* path) {
  Fd fd(path, O_RDONLY);
  std::uint64_t total = 0;
  while (std::size_t got = read_chunk(fd.get(), path)) total += got;
  return total;
}

void fsync_path(const char* path, int flags) {
  Fd fd(path, flags);
  if (::fsync(fd.get()) != 0) fail(std::string("fsync ") + path);
}

// Lets everything written so far, and the freeing of removed files, reach the disk.
void settle() {
  Fd fd(g_top, O_RDONLY | O_DIRECTORY);
  if (::syncfs(fd.get()) != 0) fail("syncfs");
}

void evict(const char* path) {
  Fd fd(path, O_RDONLY);
  if (::fdatasync(fd.get()) != 0) fail(std::string("fdatasync ") + path);
  const int err = ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);
  if (err != 0) {
    errno = err;
    fail(std::string("posix_fadvise ") + path);
  }
}

// The fraction of the file's pages in the page cache.
double cached_fraction(const char* path) {
  Fd fd(path, O_RDONLY);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(std::string("stat ") + path);
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0) return 1;
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) fail(std::string("mmap ") + path);
  const long page = ::sysconf(_SC_PAGESIZE);
  const std::size_t pages = (size + static_cast<std::size_t>(page) - 1) / page;
  std::vector<unsigned char> resident(pages);
  const int rc = ::mincore(map, size, resident.data());
  ::munmap(map, size);
  if (rc != 0) fail(std::string("mincore ") + path);
  const auto in =
      std::count_if(resident.begin(), resident.end(), [](unsigned char r) { return (r & 1) != 0; });
  return static_cast<double>(in) / static_cast<double>(pages);
}

// Runs /bin/cp SOURCE DEST and waits for it.
void run_cp(const char* source, const char* dest) {
  std::string arg0 = "cp", arg1 = source, arg2 = dest;
  char* argv[] = {arg0.data(), arg1.data(), arg2.data(), nullptr};
  pid_t pid = 0;
  const int err = ::posix_spawn(&pid, kCp, nullptr, nullptr, argv, environ);
  if (err != 0) {
    errno = err;
    fail(std::string("posix_spawn ") + kCp);
  }
  g_child = pid;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) fail("waitpid");
  }
  g_child = 0;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(std::string(kCp) + " " + source + " " + dest + " failed (status " +
                             std::to_string(status) + ")");
  }
}

// --- The files under test -------------------------------------------------------------
// The source file and the store with the bag that Verify reads, each made by the first
// Setup callback that needs it and kept for the rest of the run; main() removes them.
std::optional<sheaf::Store> g_store;
std::string g_setup_error;
bool g_source_tried = false;
bool g_verify_tried = false;

// Streams the source into the bag `name` the way BM_Bag_Put does; returns the payload bytes.
std::uint64_t put_from_source(sheaf::Store& store, const char* name) {
  Fd source(g_source, O_RDONLY);
  sheaf::BagWriter writer = store.create_bag(name);
  while (std::size_t got = read_chunk(source.get(), g_source)) {
    writer.write({reinterpret_cast<const std::byte*>(buffer()), got});
  }
  return writer.commit().size;
}

// g_bytes of random bytes (splitmix64 from a random seed: incompressible, and different in
// every run, so nothing below the filesystem can deduplicate them), written and fsynced once.
void make_source() {
  if (g_source_tried) return;
  g_source_tried = true;
  try {
    g_store.emplace(sheaf::Store::init(g_store_dir).value());
    Fd out(g_source, O_WRONLY | O_CREAT | O_EXCL, 0644);
    std::uint64_t x = (std::uint64_t{std::random_device{}()} << 32) | std::random_device{}();
    for (std::uint64_t left = g_bytes; left > 0;) {
      const std::size_t step = static_cast<std::size_t>(std::min<std::uint64_t>(left, kChunk));
      auto* words = reinterpret_cast<std::uint64_t*>(buffer());
      for (std::size_t i = 0; i < (step + 7) / 8; ++i) {
        std::uint64_t z = (x += 0x9e3779b97f4a7c15u);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
        words[i] = z ^ (z >> 31);
      }
      for (std::size_t done = 0; done < step;) {
        const ssize_t n = ::write(out.get(), buffer() + done, step - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail(std::string("write ") + g_source);
        done += static_cast<std::size_t>(n);
      }
      left -= step;
    }
    if (::fsync(out.get()) != 0) fail(std::string("fsync ") + g_source);
  } catch (const std::exception& e) {
    g_setup_error = e.what();
  }
}

void make_verify_bag() {
  make_source();
  if (g_verify_tried || !g_setup_error.empty()) return;
  g_verify_tried = true;
  try {
    put_from_source(*g_store, kVerifyBag);
  } catch (const std::exception& e) {
    g_setup_error = e.what();
  }
}

void setup_source(const benchmark::State&) {
  make_source();
}
void setup_verify_bag(const benchmark::State&) {
  make_verify_bag();
}

bool ready_or_skip(benchmark::State& state) {
  if (g_store && g_setup_error.empty()) return true;
  const std::string why = "setup failed: " + g_setup_error;
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

void remove_copy() {
  if (::unlink(g_copy) != 0 && errno != ENOENT) fail(std::string("unlink ") + g_copy);
}

// Untimed, before each Put/Cp/CpSync iteration: no old destination, nothing pending on the
// disk, the source in the page cache. Returns the cached fraction of the source.
double prepare_copy() {
  g_store->remove_bag(kPutBag);
  remove_copy();
  settle();
  read_file(g_source);
  return cached_fraction(g_source);
}

// Untimed, before each Verify/PlainRead iteration: the bag file in the page cache, or not.
double prepare_read(bool cold) {
  settle();
  const std::string path = g_store->bag_path(kVerifyBag);
  if (cold) {
    evict(path.c_str());
  } else {
    read_file(path.c_str());
  }
  return cached_fraction(path.c_str());
}

template <class Prepare, class Body>
void timed_loop(benchmark::State& state, std::uint64_t bytes, Prepare&& prepare, Body&& body) {
  double cached = 0;
  guarded(state, [&] {
    for (auto _ : state) {
      state.PauseTiming();
      cached += prepare();
      state.ResumeTiming();
      body();
    }
  });
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
  state.counters["cached"] = benchmark::Counter(cached, benchmark::Counter::kAvgIterations);
}

// --- Put beside cp ---------------------------------------------------------------------
void BM_Bag_Put(benchmark::State& state) {
  if (!ready_or_skip(state)) return;
  sheaf::Store& store = *g_store;
  timed_loop(state, g_bytes, prepare_copy, [&] {
    if (put_from_source(store, kPutBag) != g_bytes) throw std::runtime_error("short bag");
  });
  guarded(state, [&] { store.remove_bag(kPutBag); });
}

void BM_Cp(benchmark::State& state) {
  if (!ready_or_skip(state)) return;
  timed_loop(state, g_bytes, prepare_copy, [] { run_cp(g_source, g_copy); });
  guarded(state, remove_copy);
}

void BM_CpSync(benchmark::State& state) {
  if (!ready_or_skip(state)) return;
  timed_loop(state, g_bytes, prepare_copy, [] {
    run_cp(g_source, g_copy);
    fsync_path(g_copy, O_RDONLY);
    fsync_path(g_top, O_RDONLY | O_DIRECTORY);
  });
  guarded(state, remove_copy);
}

// --- Verify beside a plain read --------------------------------------------------------------
void BM_Bag_Verify(benchmark::State& state) {
  if (!ready_or_skip(state)) return;
  const bool cold = state.range(0) != 0;
  sheaf::Store& store = *g_store;
  timed_loop(
      state, g_bytes, [&] { return prepare_read(cold); },
      [&] {
        const std::vector<sheaf::BagCheck> checks = store.verify(kVerifyBag);
        if (checks.size() != 1 || !checks[0].ok()) {
          throw std::runtime_error("verify: " +
                                   (checks.empty() ? std::string("no bag") : checks[0].problem));
        }
      });
}

void BM_PlainRead(benchmark::State& state) {
  if (!ready_or_skip(state)) return;
  const bool cold = state.range(0) != 0;
  const std::string path = g_store->bag_path(kVerifyBag);
  std::uint64_t file_bytes = 0;
  timed_loop(
      state, g_bytes, [&] { return prepare_read(cold); },
      [&] {
        Fd fd(path.c_str(), O_RDONLY);
        ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);  // as Store::verify does
        std::uint64_t total = 0;
        while (std::size_t got = read_chunk(fd.get(), path.c_str())) total += got;
        benchmark::DoNotOptimize(buffer()[0]);
        file_bytes = total;
      });
  // The header page too: it was read.
  if (file_bytes > g_bytes) {
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * file_bytes));
  }
}

void register_benchmarks() {
  // About 1 GiB moved per repetition, whatever SHEAF_BAG_BENCH_BYTES says; one iteration of
  // the full size already takes a second or more.
  const auto iterations =
      static_cast<benchmark::IterationCount>(std::max<std::uint64_t>(1, kDefaultBytes / g_bytes));
  auto copy = [&](benchmark::internal::Benchmark* b) {
    b->Setup(setup_source)->Iterations(iterations)->UseRealTime()->Unit(benchmark::kMillisecond);
  };
  auto read = [&](benchmark::internal::Benchmark* b) {
    b->Setup(setup_verify_bag)
        ->ArgName("cold")
        ->Arg(0)
        ->Arg(1)
        ->Iterations(iterations)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  };
  copy(benchmark::RegisterBenchmark("BM_Bag_Put", BM_Bag_Put));
  copy(benchmark::RegisterBenchmark("BM_Cp", BM_Cp));
  copy(benchmark::RegisterBenchmark("BM_CpSync", BM_CpSync));
  read(benchmark::RegisterBenchmark("BM_Bag_Verify", BM_Bag_Verify));
  read(benchmark::RegisterBenchmark("BM_PlainRead", BM_PlainRead));
}

// --- The ratio table ----------------------------------------------------------------------------
// The console output as usual, then, in Finalize, one row per comparison with the throughput of
// Sheaf and of the baseline and their ratio.
class RatioReporter : public sheaf_bench::TableReporter {
 public:
  using TableReporter::TableReporter;

 private:
  void collect(const Run& run) override {
    const auto rate = run.counters.find("bytes_per_second");
    if (rate == run.counters.end()) return;
    std::string key = run.run_name.function_name;
    if (!run.run_name.args.empty()) key += "/" + run.run_name.args;
    cells_[key].add(run, rate->second.value);
  }

  double rate(const std::string& key) const {
    auto it = cells_.find(key);
    return it == cells_.end() ? -1 : it->second.value();
  }

  void print_table(std::ostream& out) const override {
    struct Ratio {
      const char* label;
      const char* sheaf;
      const char* base;
    };
    static constexpr Ratio kRatios[] = {
        {"Put / Cp", "BM_Bag_Put", "BM_Cp"},
        {"Put / CpSync", "BM_Bag_Put", "BM_CpSync"},
        {"Verify / PlainRead, warm", "BM_Bag_Verify/cold:0", "BM_PlainRead/cold:0"},
        {"Verify / PlainRead, cold", "BM_Bag_Verify/cold:1", "BM_PlainRead/cold:1"},
    };
    if (cells_.empty()) return;
    char line[256];
    out << "\nSheaf beside cp and a plain read: throughput in MiB/s of real time, median of the "
           "repetitions\nwhen there were several; ratio = Sheaf / baseline, higher is better, "
           "target 0.80\n";
    std::snprintf(line, sizeof line, "%-26s %12s %12s %8s  %s\n", "Ratio", "Sheaf MiB/s",
                  "Base MiB/s", "Ratio", "Target 0.80");
    out << line << std::string(76, '-') << "\n";
    auto num = [](double v, const char* fmt) {
      char buf[32];
      if (v < 0) return std::string("-");
      std::snprintf(buf, sizeof buf, fmt, v);
      return std::string(buf);
    };
    constexpr double kMiB = 1024.0 * 1024.0;
    for (const Ratio& r : kRatios) {
      const double sheaf = rate(r.sheaf);
      const double base = rate(r.base);
      if (sheaf < 0 && base < 0) continue;
      const double ratio = sheaf > 0 && base > 0 ? sheaf / base : -1;
      std::snprintf(line, sizeof line, "%-26s %12s %12s %8s  %s\n", r.label,
                    num(sheaf < 0 ? -1 : sheaf / kMiB, "%.0f").c_str(),
                    num(base < 0 ? -1 : base / kMiB, "%.0f").c_str(), num(ratio, "%.2f").c_str(),
                    ratio < 0      ? "-"
                    : ratio >= 0.8 ? "met"
                                   : "NOT met");
      out << line;
    }
    out << "Put and CpSync end with the data on the disk (fsync); Cp ends with it in the page "
           "cache.\n"
        << std::flush;
  }

  std::map<std::string, sheaf_bench::Median> cells_;
};

benchmark::ConsoleReporter::OutputOptions console_options() {
  const char* term = std::getenv("TERM");
  bool color = ::isatty(STDOUT_FILENO) != 0 && std::getenv("NO_COLOR") == nullptr &&
               term != nullptr && std::string_view(term) != "dumb";
  return color ? benchmark::ConsoleReporter::OO_Color : benchmark::ConsoleReporter::OO_None;
}

// --- Configuration ------------------------------------------------------------------------------
// "1073741824", "64M", "1G": bytes, with an optional binary suffix; nullopt if malformed or 0.
std::optional<std::uint64_t> parse_bytes(const char* text) {
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

// "DIR: ext4 on /dev/vda (mounted on /)", from the longest mount point above DIR.
std::string describe_filesystem(const std::string& dir) {
  std::error_code ec;
  const std::string real = std::filesystem::canonical(dir, ec).string();
  if (ec) return dir + ": " + ec.message();
  std::ifstream mounts("/proc/self/mountinfo");
  std::string line, best_point, best_type, best_source;
  auto unescape = [](std::string s) {  // mountinfo writes ' ' as \040 and so on
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

}  // namespace

int main(int argc, char** argv) {
  // Repetitions of all rows run interleaved in a random order unless the command line says
  // otherwise (a later flag wins), so that load that comes and goes on a shared machine falls
  // on both sides of a ratio alike.
  std::string interleave = "--benchmark_enable_random_interleaving=true";
  std::vector<char*> args(argv, argv + argc);
  args.insert(args.begin() + 1, interleave.data());
  int count = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&count, args.data());
  if (benchmark::ReportUnrecognizedArguments(count, args.data())) return 1;
  if (const char* env = std::getenv("SHEAF_BAG_BENCH_BYTES"); env != nullptr && env[0] != '\0') {
    const std::optional<std::uint64_t> bytes = parse_bytes(env);
    if (!bytes) {
      std::cerr << "sheaf_bag_bench: SHEAF_BAG_BENCH_BYTES=" << env
                << ": want a byte count such as 1073741824, 64M or 1G\n";
      return 1;
    }
    g_bytes = *bytes;
  }
  const char* env_dir = std::getenv("SHEAF_BENCH_DIR");
  const std::string dir = env_dir != nullptr && env_dir[0] != '\0' ? env_dir : "/var/tmp";
  const std::string top = dir + "/sheaf_bag_bench_" + std::to_string(::getpid());
  if (!set_path(g_top, top) || !set_path(g_source, top + "/source.bin") ||
      !set_path(g_copy, top + "/cp-copy.bin") || !set_path(g_store_dir, top + "/store")) {
    std::cerr << "sheaf_bag_bench: SHEAF_BENCH_DIR is too long\n";
    return 1;
  }
  const std::string filesystem = describe_filesystem(dir);
  benchmark::AddCustomContext("bench_dir", filesystem);
  benchmark::AddCustomContext("bytes_per_iteration", std::to_string(g_bytes));
  if (filesystem.find(": tmpfs ") != std::string::npos ||
      filesystem.find(": ramfs ") != std::string::npos) {
    std::cerr << "sheaf_bag_bench: warning: " << filesystem
              << ": a memory filesystem, where fsync costs nothing; set SHEAF_BENCH_DIR to a "
                 "directory on a disk\n";
  }
  if (::mkdir(g_top, 0755) != 0) {
    std::cerr << "sheaf_bag_bench: mkdir " << g_top << ": " << std::strerror(errno) << "\n";
    return 1;
  }
  // Remove the files however the run ends, a crash in the code under test included.
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGSEGV, SIGBUS, SIGABRT, SIGFPE}) {
    std::signal(sig, on_fatal_signal);
  }

  register_benchmarks();
  RatioReporter reporter(console_options());
  benchmark::RunSpecifiedBenchmarks(&reporter);
  g_store.reset();
  remove_files();
  benchmark::Shutdown();
  return g_setup_error.empty() ? 0 : 1;
}
