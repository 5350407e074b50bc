// sheaf_fs_bench: the FUSE view of a store (sheaf/mount.hpp) beside the same work done on the
// store's files and on a plain directory directly, in one run.
//
//   BM_Fs_BagRead        open MOUNT/bags/big, read() it in 1 MiB chunks to the end, close
//   BM_Direct_BagRead    the same on the bag's own file in the store (Store::bag_path("big"))
//   BM_Fs_BagRead_Cold   BM_Fs_BagRead after dropping the mount's cached pages of the file
//   BM_Fs_LsL            `ls -l MOUNT/heaps/h/objects > /dev/null` (a heap of N named objects)
//   BM_Direct_LsL        `ls -l DIR > /dev/null` for a plain directory of N empty files
//
// The mount is served by threads of this process (sheaf::Mount, default MountOptions); ls is
// /bin/ls in a child process (posix_spawn, then waitpid), with this process's environment, so
// its locale (and so its sorting) is the same on both sides. All rows are timed in real time.
//
// What is measured and what is not. Before every iteration, with the timer paused, the file
// is put in a known cache state; the "cached" counter is the fraction of the file the row
// reads that is in the page cache just before the timed open (mincore), and "store_cached"
// that of the store's bag file, which is what the daemon reads from.
// - BagRead rows: a warm-up pass reads the same file, through the same path, first, so both
//   sides read from the page cache: what the FUSE row adds is the open and release going to
//   the daemon and whatever the kernel's FUSE read path costs over a plain file's. If the
//   mount does not let the kernel keep a file's pages across opens, the timed open throws
//   them away, and "cached" (measured through an open of its own) shows 0.
// - BM_Fs_BagRead_Cold: the store's file is read first (so it is in the page cache), then the
//   mount's pages of the bag, only those, are dropped (posix_fadvise(POSIX_FADV_DONTNEED) on
//   the mount's file). Every byte then comes from the daemon through /dev/fuse, but the daemon
//   reads it from memory, not from the disk: this is the cost of the FUSE round trips and
//   copies, not of the disk. Its ratio is taken against the warm direct read.
// - LsL rows: the mount lets the kernel reuse the attributes a listing returned for
//   MountOptions::listing_ttl seconds; before each BM_Fs_LsL iteration the bench waits until
//   that long has passed since the previous listing ended, so that each `ls -l` starts with
//   nothing cached by the one before, as one typed at a shell would. The plain directory's
//   inodes stay in the kernel's caches (nothing to expire there).
// Page caches are never dropped as a whole (a shared machine).
//
// Everything lives in a directory made for the run (mkdtemp) in $SHEAF_BENCH_DIR (default
// /var/tmp): the store (one bag, "big", of random bytes; one heap, "h"), the plain directory
// and the mount point. The bag, the heap and the plain directory are each made once, by the
// first benchmark that needs them; the mount is started once the store has what is asked of
// it. At exit the mount is stopped and the directory removed, also when a benchmark failed;
// on a fatal signal the mount is detached and the directory removed (never by descending
// into a mount point). Knobs: $SHEAF_FS_BENCH_BYTES (default 1G; suffixes K, M, G) for the
// bag's size, $SHEAF_FS_BENCH_OBJECTS (default 100000) for the number of names listed.
// Repetitions of all rows are interleaved in a random order (unless
// --benchmark_enable_random_interleaving=false), so that load from elsewhere on the machine
// falls on both sides of a ratio alike. At the end a table gives, from the medians of the
// repetitions, the read throughput of each side and Fs/Direct (target >= 0.50 warm), and the
// time of each `ls -l` and Fs/Direct (target: under 1 s for the mount's listing).
#include <benchmark/benchmark.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "bench_util.hpp"
#include "sheaf/heap.hpp"
#include "sheaf/mount.hpp"
#include "sheaf/store.hpp"
#include "table_reporter.hpp"

extern char** environ;

namespace {

using sheaf_bench::cached_fraction;
using sheaf_bench::cell;
using sheaf_bench::chunk_buffer;
using sheaf_bench::fail;
using sheaf_bench::Fd;
using sheaf_bench::guarded;
using sheaf_bench::read_file;
using sheaf_bench::ready_or_skip;
using sheaf_bench::set_path;

constexpr std::uint64_t kDefaultBytes = std::uint64_t{1} << 30;
constexpr std::size_t kDefaultObjects = 100000;
constexpr std::size_t kMaxObjects = 10000000;
constexpr std::size_t kChunk = 1 << 20;  // read() and write() size
// A warm 1 GiB read takes a tenth of a second or so: two of them per repetition, whatever
// the size, so that one repetition is not a single short sample.
constexpr std::uint64_t kBytesPerRepetition = std::uint64_t{2} << 30;
// Each `ls -l` of 100,000 names takes a good fraction of a second, and the mount's row waits
// listing_ttl before each: a fixed, small count keeps a run predictable.
constexpr benchmark::IterationCount kLsIterations = 5;
constexpr const char* kBag = "big";
constexpr const char* kHeap = "h";
constexpr const char* kLs = "/bin/ls";
const sheaf::MountOptions kMountOptions{};  // the defaults, as a user's mount would have

std::uint64_t g_bytes = kDefaultBytes;    // the bag's payload bytes
std::size_t g_objects = kDefaultObjects;  // names in the heap and files in the plain directory

// --- Files -------------------------------------------------------------------------------
// Fixed buffers, so that the signal handler can use them.
char g_top[4096];                          // the run's directory (mkdtemp), removed at exit
char g_store[4096];                        // TOP/store
char g_plain[4096];                        // TOP/plain: g_objects empty files
char g_mnt[4096];                          // TOP/mnt: the mount point
volatile std::sig_atomic_t g_mounted = 0;  // g_mnt has our mount on it

void remove_files() noexcept {
  if (g_top[0] != '\0') sheaf_bench::remove_tree(g_top);
}

// Takes the mount out of the namespace without waiting for anyone (for the signal handler):
// umount2 when we may (root), else fusermount3, as an unprivileged FUSE mount is undone.
void detach_mount() noexcept {
  if (::umount2(g_mnt, MNT_DETACH) == 0) return;
  const pid_t pid = ::fork();
  if (pid == 0) {
    static char arg0[] = "fusermount3", arg1[] = "-u", arg2[] = "-z";
    char* argv[] = {arg0, arg1, arg2, g_mnt, nullptr};
    ::execve("/usr/bin/fusermount3", argv, environ);
    ::execve("/bin/fusermount3", argv, environ);
    ::_exit(127);
  }
  if (pid > 0) ::waitpid(pid, nullptr, 0);
}

// What a fatal signal leaves to clean up once the running ls is killed.
void clean_up_after_signal() noexcept {
  if (g_mounted != 0) detach_mount();
  remove_files();
}

// --- Helpers ---------------------------------------------------------------------------------
std::uint64_t file_size(const char* path) {
  struct stat st {};
  if (::stat(path, &st) != 0) fail(std::string("stat ") + path);
  return static_cast<std::uint64_t>(st.st_size);
}

// Drops the file's clean pages from the page cache: for a file under the mount, the mount's
// copy only; the store's file that the daemon reads from keeps its own.
void drop_cached(const char* path) {
  Fd fd(path, O_RDONLY);
  sheaf_bench::drop_cached(fd.get(), path);
}

std::size_t count_entries(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) fail("opendir " + dir);
  std::size_t n = 0;
  errno = 0;
  while (const dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) ++n;
  }
  const int err = errno;
  ::closedir(d);
  if (err != 0) {
    errno = err;
    fail("readdir " + dir);
  }
  return n;
}

// "obj-000123": the same names in the heap and in the plain directory.
std::string object_name(std::size_t i) {
  char name[32];
  std::snprintf(name, sizeof name, "obj-%06zu", i);
  return name;
}

// Runs `/bin/ls -l DIR > /dev/null` and waits for it; throws unless it exits with 0.
void run_ls(const std::string& dir) {
  sheaf_bench::run_program(kLs, {"ls", "-l", dir}, sheaf_bench::Stdout::kDevNull);
}

// --- What the benchmarks work on ----------------------------------------------------------------
// The store, its mount and the plain directory. main() owns the one World; its destructor
// stops the mount and removes the files however the benchmarks went. Each part is made by the
// first Setup callback that needs it; a failure is kept and reported by every row needing it.
class World {
 public:
  World() = default;
  World(const World&) = delete;
  World& operator=(const World&) = delete;
  ~World() { shut_down(); }

  // "" when the part is ready, else why it is not.
  const std::string& bag() {
    return once(bag_, [this] { make_bag(); });
  }
  const std::string& heap() {
    return once(heap_, [this] { make_heap(); });
  }
  const std::string& plain() {
    return once(plain_, [this] { make_plain(); });
  }

  std::string mount_bag_path() const { return std::string(g_mnt) + "/bags/" + kBag; }
  std::string store_bag_path() const { return store_->bag_path(kBag); }
  std::string mount_objects_dir() const {
    return std::string(g_mnt) + "/heaps/" + kHeap + "/objects";
  }

  // Waits, untimed, until the attributes the last listing of the mount returned have expired.
  void wait_for_listing_ttl() const {
    const auto ttl = std::chrono::duration<double>(kMountOptions.listing_ttl + 0.1);
    std::this_thread::sleep_until(last_fs_listing_ +
                                  std::chrono::duration_cast<Clock::duration>(ttl));
  }
  void fs_listed() { last_fs_listing_ = Clock::now(); }

  bool ok() const { return bag_.error.empty() && heap_.error.empty() && plain_.error.empty(); }

  void shut_down() noexcept {
    if (mount_) {
      if (sheaf::Result<void> stopped = mount_->stop(); !stopped.ok()) {
        std::cerr << "sheaf_fs_bench: unmount " << g_mnt << ": " << stopped.error().what()
                  << "; detaching it lazily\n";
        if (sheaf::Result<void> lazy = mount_->stop(true); !lazy.ok()) {
          std::cerr << "sheaf_fs_bench: lazy unmount " << g_mnt << ": " << lazy.error().what()
                    << "\n";
        }
      }
      mount_.reset();
      g_mounted = 0;
    }
    store_.reset();
    remove_files();
    if (g_top[0] != '\0' && ::access(g_top, F_OK) == 0) {
      std::cerr << "sheaf_fs_bench: could not remove all of " << g_top << "\n";
    }
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct Part {
    bool tried = false;
    std::string error;
  };

  template <class F>
  const std::string& once(Part& part, F&& make) {
    if (!part.tried) {
      part.tried = true;
      try {
        make();
      } catch (const std::exception& e) {
        part.error = e.what()[0] != '\0' ? e.what() : "setup failed";
      } catch (...) {
        part.error = "setup failed (unknown exception)";
      }
    }
    return part.error;
  }

  sheaf::Store& store() {
    if (!store_) store_.emplace(sheaf::Store::init(g_store).value());
    return *store_;
  }

  // Started once the store has what the first benchmark needs; what later ones add shows
  // through it (the view asks the store on every listing).
  void start_mount() {
    if (mount_) return;
    mount_.emplace(sheaf::Mount::start(g_store, g_mnt, kMountOptions).value());
    g_mounted = 1;
  }

  // g_bytes of random bytes (sheaf_bench::RandomWords), streamed in kChunk writes.
  void make_bag() {
    sheaf::BagWriter writer = store().create_bag(kBag);
    sheaf_bench::RandomWords random;
    char* const buffer = chunk_buffer<kChunk>();
    for (std::uint64_t left = g_bytes; left > 0;) {
      const auto step = static_cast<std::size_t>(std::min<std::uint64_t>(left, kChunk));
      random.fill(buffer, step);
      writer.write({reinterpret_cast<const std::byte*>(buffer), step});
      left -= step;
    }
    if (writer.commit().size != g_bytes) throw std::runtime_error("bag: short payload");
    start_mount();
    const std::string path = mount_bag_path();
    if (const std::uint64_t size = file_size(path.c_str()); size != g_bytes) {
      throw std::runtime_error(path + ": size " + std::to_string(size) + ", want " +
                               std::to_string(g_bytes));
    }
  }

  // g_objects named std::uint64_t; closed before the mount opens the heap, so that the only
  // user of the heap during the run is the mount.
  void make_heap() {
    {
      sheaf::Heap heap = sheaf::Heap::create(store().heap_path(kHeap)).value();
      for (std::size_t i = 0; i < g_objects; ++i) {
        heap.construct<std::uint64_t>(object_name(i))(std::uint64_t{i});
      }
    }
    start_mount();
    // One listing through the mount, untimed: checks the view, and opens the heap there.
    const std::string dir = mount_objects_dir();
    if (const std::size_t n = count_entries(dir); n != g_objects) {
      throw std::runtime_error(dir + ": " + std::to_string(n) + " entries, want " +
                               std::to_string(g_objects));
    }
    fs_listed();
  }

  void make_plain() {
    if (::mkdir(g_plain, 0755) != 0) fail(std::string("mkdir ") + g_plain);
    Fd dir(g_plain, O_RDONLY | O_DIRECTORY);
    for (std::size_t i = 0; i < g_objects; ++i) {
      const std::string name = object_name(i);
      const int fd =
          ::openat(dir.get(), name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd < 0) fail(std::string("create ") + g_plain + "/" + name);
      ::close(fd);
    }
  }

  std::optional<sheaf::Store> store_;
  std::optional<sheaf::Mount> mount_;  // after store_: stopped before the store goes
  Part bag_, heap_, plain_;
  Clock::time_point last_fs_listing_{};
};

World* g_world = nullptr;  // main()'s

void setup_bag(const benchmark::State&) {
  g_world->bag();
}
void setup_heap(const benchmark::State&) {
  g_world->heap();
}
void setup_plain(const benchmark::State&) {
  g_world->plain();
}

// The mean of a fraction over the iterations, as a counter; absent if never measured.
struct Average {
  double sum = 0;
  int n = 0;
  void add(std::optional<double> v) {
    if (!v) return;
    sum += *v;
    ++n;
  }
  void report(benchmark::State& state, const char* name) const {
    if (n > 0) state.counters[name] = sum / n;
  }
};

// --- Bag reads --------------------------------------------------------------------------------
// prepare() runs untimed before each iteration; the timed part is read_file<kChunk>(path),
// which must return `expect` bytes.
template <class Prepare>
void read_loop(benchmark::State& state, const std::string& path, std::uint64_t expect,
               Prepare&& prepare) {
  std::uint64_t bytes = 0;
  guarded(state, [&] {
    for (auto _ : state) {
      state.PauseTiming();
      prepare();
      state.ResumeTiming();
      const std::uint64_t got = read_file<kChunk>(path.c_str());
      if (got != expect) {
        throw std::runtime_error(path + ": read " + std::to_string(got) + " bytes, want " +
                                 std::to_string(expect));
      }
      bytes += got;
    }
  });
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes));
}

void BM_Fs_BagRead(benchmark::State& state) {
  if (!ready_or_skip(state, g_world->bag())) return;
  const std::string path = g_world->mount_bag_path();
  const std::string store_path = g_world->store_bag_path();
  Average cached, store_cached;
  read_loop(state, path, g_bytes, [&] {
    read_file<kChunk>(path.c_str());  // the warm-up pass, through the mount
    cached.add(cached_fraction(path.c_str()));
    store_cached.add(cached_fraction(store_path.c_str()));
  });
  cached.report(state, "cached");
  store_cached.report(state, "store_cached");
}

void BM_Fs_BagRead_Cold(benchmark::State& state) {
  if (!ready_or_skip(state, g_world->bag())) return;
  const std::string path = g_world->mount_bag_path();
  const std::string store_path = g_world->store_bag_path();
  Average cached, store_cached;
  read_loop(state, path, g_bytes, [&] {
    // The daemon's source in memory: FUSE is timed, not the disk.
    read_file<kChunk>(store_path.c_str());
    drop_cached(path.c_str());
    cached.add(cached_fraction(path.c_str()));
    store_cached.add(cached_fraction(store_path.c_str()));
  });
  cached.report(state, "cached");
  store_cached.report(state, "store_cached");
}

void BM_Direct_BagRead(benchmark::State& state) {
  if (!ready_or_skip(state, g_world->bag())) return;
  const std::string path = g_world->store_bag_path();
  Average cached;
  std::uint64_t size = 0;  // the whole file: the header page, then the payload
  guarded(state, [&] { size = file_size(path.c_str()); });
  if (size == 0) return;
  read_loop(state, path, size, [&] {
    read_file<kChunk>(path.c_str());  // the warm-up pass
    cached.add(cached_fraction(path.c_str()));
  });
  cached.report(state, "cached");
}

// --- ls -l ------------------------------------------------------------------------------------
void BM_Fs_LsL(benchmark::State& state) {
  if (!ready_or_skip(state, g_world->heap())) return;
  const std::string dir = g_world->mount_objects_dir();
  guarded(state, [&] {
    for (auto _ : state) {
      state.PauseTiming();
      g_world->wait_for_listing_ttl();
      state.ResumeTiming();
      run_ls(dir);
      g_world->fs_listed();
    }
  });
  state.counters["entries"] = static_cast<double>(g_objects);
}

void BM_Direct_LsL(benchmark::State& state) {
  if (!ready_or_skip(state, g_world->plain())) return;
  const std::string dir = g_plain;
  guarded(state, [&] {
    for (auto _ : state) run_ls(dir);
  });
  state.counters["entries"] = static_cast<double>(g_objects);
}

void register_benchmarks() {
  const auto read_iterations = static_cast<benchmark::IterationCount>(
      std::max<std::uint64_t>(1, kBytesPerRepetition / g_bytes));
  auto read = [&](const char* name, void (*fn)(benchmark::State&)) {
    benchmark::RegisterBenchmark(name, fn)
        ->Setup(setup_bag)
        ->Iterations(read_iterations)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  };
  auto ls = [&](const char* name, void (*fn)(benchmark::State&),
                void (*setup)(const benchmark::State&)) {
    benchmark::RegisterBenchmark(name, fn)
        ->Setup(setup)
        ->Iterations(kLsIterations)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  };
  read("BM_Fs_BagRead", BM_Fs_BagRead);
  read("BM_Direct_BagRead", BM_Direct_BagRead);
  read("BM_Fs_BagRead_Cold", BM_Fs_BagRead_Cold);
  ls("BM_Fs_LsL", BM_Fs_LsL, setup_heap);
  ls("BM_Direct_LsL", BM_Direct_LsL, setup_plain);
}

// --- The ratio table ----------------------------------------------------------------------------
// The console output as usual, then, in Finalize, the read throughputs, the ls -l times and
// their ratios Fs / Direct, from the medians.
class RatioReporter : public sheaf_bench::TableReporter {
 public:
  using TableReporter::TableReporter;

 private:
  static bool is_ls(const std::string& name) { return name.find("_LsL") != std::string::npos; }

  void collect(const Run& run) override {
    const std::string name = run.run_name.function_name;
    if (is_ls(name)) {  // seconds per ls -l
      cells_[name].add(run,
                       run.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(run.time_unit));
      return;
    }
    const auto rate = run.counters.find("bytes_per_second");
    if (rate != run.counters.end()) cells_[name].add(run, rate->second.value);
  }

  double value(const char* name) const {
    auto it = cells_.find(name);
    return it == cells_.end() ? -1 : it->second.value();
  }

  void print_table(std::ostream& out) const override {
    if (cells_.empty()) return;
    constexpr double kMiB = 1024.0 * 1024.0;
    char line[256];
    out << "\nSheaf's FUSE view beside direct access: medians of the repetitions when there were "
           "several\n";

    struct Read {
      const char* label;
      const char* fs;
      const char* target;  // nullptr: no target, shown for information
    };
    static constexpr Read kReads[] = {
        {"warm: both files in the page cache", "BM_Fs_BagRead", ">= 0.50"},
        {"cold mount (from the daemon) / warm direct", "BM_Fs_BagRead_Cold", nullptr},
    };
    const double direct = value("BM_Direct_BagRead");
    if (direct >= 0 || value("BM_Fs_BagRead") >= 0 || value("BM_Fs_BagRead_Cold") >= 0) {
      const std::string title =
          "Bag read, " + cell(static_cast<double>(g_bytes) / kMiB, "%.0f") + " MiB (MiB/s)";
      std::snprintf(line, sizeof line, "%-48s %9s %12s %9s  %s\n", title.c_str(), "Fs", "Direct",
                    "Fs/Direct", "Target");
      out << line << std::string(96, '-') << "\n";
    }
    for (const Read& r : kReads) {
      const double fs = value(r.fs);
      if (fs < 0 && direct < 0) continue;
      const double ratio = fs > 0 && direct > 0 ? fs / direct : -1;
      std::string verdict = "none (for information)";
      if (r.target != nullptr) {
        verdict = std::string(r.target) + (ratio < 0 ? " -" : ratio >= 0.5 ? " met" : " NOT met");
      }
      std::snprintf(line, sizeof line, "%-48s %9s %12s %9s  %s\n", r.label,
                    cell(fs < 0 ? -1 : fs / kMiB, "%.0f").c_str(),
                    cell(direct < 0 ? -1 : direct / kMiB, "%.0f").c_str(),
                    cell(ratio, "%.2f").c_str(), verdict.c_str());
      out << line;
    }

    const double fs_ls = value("BM_Fs_LsL");
    const double direct_ls = value("BM_Direct_LsL");
    if (fs_ls >= 0 || direct_ls >= 0) {
      const std::string title = "ls -l of " + std::to_string(g_objects) + " entries (ms)";
      std::snprintf(line, sizeof line, "\n%-48s %9s %12s %9s\n", title.c_str(), "Fs", "Direct",
                    "Fs/Direct");
      out << line << std::string(96, '-') << "\n";
      const double ratio = fs_ls > 0 && direct_ls > 0 ? fs_ls / direct_ls : -1;
      std::snprintf(line, sizeof line, "%-48s %9s %12s %9s\n",
                    "mount's heap objects / plain dir of empty files",
                    cell(fs_ls < 0 ? -1 : fs_ls * 1e3, "%.0f").c_str(),
                    cell(direct_ls < 0 ? -1 : direct_ls * 1e3, "%.0f").c_str(),
                    cell(ratio, "%.2f").c_str());
      out << line;
      out << "Target: ls -l of the mount's " << g_objects << " objects in < 1 s: "
          << (fs_ls < 0 ? "not measured"
                        : (fs_ls < 1.0 ? "met (" : "NOT met (") + cell(fs_ls, "%.3f") + " s)")
          << "\n";
    }
    if (value("BM_Fs_BagRead_Cold") >= 0) {
      out << "Cold: the mount's pages of the bag are dropped before each read, so every byte "
             "comes through\nFUSE from the daemon, which reads the store's file from the page "
             "cache, not from the disk.\n";
    }
    if (fs_ls >= 0) {
      out << "Each ls -l of the mount starts once the listing TTL (" << kMountOptions.listing_ttl
          << " s) has passed since the previous listing.\n";
    }
    out << std::flush;
  }

  std::map<std::string, sheaf_bench::Median> cells_;
};

// --- Configuration ------------------------------------------------------------------------------
// A count from 1 to kMaxObjects, digits only.
std::optional<std::size_t> parse_count(const char* text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long n = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || n == 0 || n > kMaxObjects) return std::nullopt;
  return static_cast<std::size_t>(n);
}

int run(int argc, char** argv) {
  if (!sheaf_bench::initialize_interleaved(argc, argv)) return 1;
  if (!sheaf_bench::bytes_from_env("sheaf_fs_bench", "SHEAF_FS_BENCH_BYTES", g_bytes)) return 1;
  if (const char* env = std::getenv("SHEAF_FS_BENCH_OBJECTS"); env != nullptr && env[0] != '\0') {
    const std::optional<std::size_t> objects = parse_count(env);
    if (!objects) {
      std::cerr << "sheaf_fs_bench: SHEAF_FS_BENCH_OBJECTS=" << env << ": want 1 to " << kMaxObjects
                << "\n";
      return 1;
    }
    g_objects = *objects;
  }
  std::string top = sheaf_bench::bench_dir("/var/tmp") + "/sheaf_fs_bench.XXXXXX";
  if (::mkdtemp(top.data()) == nullptr) {
    std::cerr << "sheaf_fs_bench: mkdtemp " << top << ": " << std::strerror(errno) << "\n";
    return 1;
  }
  // An absolute path, whatever the working directory of whoever resolves it later.
  std::error_code ec;
  const std::string real_top = std::filesystem::canonical(top, ec).string();
  if (ec || !set_path(g_top, real_top) || !set_path(g_store, real_top + "/store") ||
      !set_path(g_plain, real_top + "/plain") || !set_path(g_mnt, real_top + "/mnt")) {
    std::cerr << "sheaf_fs_bench: " << top << ": path unusable or too long\n";
    ::rmdir(top.c_str());
    return 1;
  }
  // From here on the World removes the directory, however the run ends. The handlers come
  // before the mount: libfuse installs its own only where a signal still has the default.
  World world;
  g_world = &world;
  sheaf_bench::clean_up_on_fatal_signals(clean_up_after_signal);
  if (::mkdir(g_mnt, 0755) != 0) {
    std::cerr << "sheaf_fs_bench: mkdir " << g_mnt << ": " << std::strerror(errno) << "\n";
    return 1;
  }

  struct utsname uts {};
  ::uname(&uts);
  benchmark::AddCustomContext("bench_dir", sheaf_bench::describe_filesystem(g_top));
  benchmark::AddCustomContext("kernel", uts.release);
  benchmark::AddCustomContext("bag_bytes", std::to_string(g_bytes));
  benchmark::AddCustomContext("objects", std::to_string(g_objects));
  benchmark::AddCustomContext("read_size", std::to_string(kChunk));

  register_benchmarks();
  RatioReporter reporter(sheaf_bench::console_options());
  benchmark::RunSpecifiedBenchmarks(&reporter);
  const bool ok = world.ok();
  world.shut_down();
  g_world = nullptr;
  benchmark::Shutdown();
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // after the World's destructor has cleaned up
    std::cerr << "sheaf_fs_bench: " << e.what() << "\n";
    return 1;
  }
}
