// sheaf_bag_bench: writing and verifying a 1 GiB databag beside cp and a plain read, in one run.
//
//   BM_Bag_Put               read() the source file in 4 MiB chunks, stream them into
//                            Store::create_bag(...).write(), then commit() (fsync of the file,
//                            rename into bags/, fsync of the directory)
//   BM_Cp                    the real cp: posix_spawn of /bin/cp SOURCE DEST, then waitpid
//   BM_CpSync                the same, then open + fsync of DEST and fsync of its directory:
//                            a durable copy, which is what a bag put is
//   BM_Bag_Get               what `sheaf bag get STORE NAME -o FILE` does: open the bag's header,
//                            Bag::copy_payload (copy_file_range, XXH3-128 on a second thread)
//                            into a new temporary file, size it, rename it over FILE
//   BM_CpBag                 the real cp of the same bag file (header page included)
//   BM_Bag_Verify/cold:C     Store::verify(name) on a 1 GiB bag (4 MiB pread()s + XXH3-128)
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
// - Get and CpBag: the bag file is read first, so both copy it from the page cache; neither
//   forces its copy to the disk (cp does not; `bag get` does only with --sync).
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
// gives the throughput of each side and the ratio (Sheaf / baseline, higher is better, beside
// its target), from the medians of the repetitions. Run it through bench/run.sh.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "sheaf/store.hpp"
#include "table_reporter.hpp"

namespace {

using sheaf_bench::cell;
using sheaf_bench::chunk_buffer;
using sheaf_bench::fail;
using sheaf_bench::Fd;
using sheaf_bench::guarded;
using sheaf_bench::read_chunk;
using sheaf_bench::read_file;
using sheaf_bench::read_to_end;
using sheaf_bench::set_path;

constexpr std::uint64_t kDefaultBytes = std::uint64_t{1} << 30;
constexpr std::size_t kChunk = std::size_t{4} << 20;  // read() size, as Store::verify's pread()s
constexpr const char* kPutBag = "put";                // written by BM_Bag_Put
constexpr const char* kVerifyBag = "verify";  // read by BM_Bag_Verify, BM_PlainRead, BM_Bag_Get
constexpr const char* kCp = "/bin/cp";

std::uint64_t g_bytes = kDefaultBytes;  // payload bytes per iteration

// --- Files -------------------------------------------------------------------------
// Fixed buffers, so that the signal handler can use them.
char g_top[4096];     // the run's directory, removed at exit
char g_source[4096];  // the random source file
char g_copy[4096];    // cp's and get's destination
char g_temp[4096];    // get's temporary, renamed to g_copy
char g_store_dir[4096];

void remove_files() noexcept {
  if (g_top[0] != '\0') sheaf_bench::remove_tree(g_top);
}

// --- Helpers ---------------------------------------------------------------------------
void fsync_path(const char* path, int flags) {
  Fd fd(path, flags);
  if (::fsync(fd.get()) != 0) fail(std::string("fsync ") + path);
}

// Lets everything written so far, and the freeing of removed files, reach the disk.
void settle() {
  Fd fd(g_top, O_RDONLY | O_DIRECTORY);
  if (::syncfs(fd.get()) != 0) fail("syncfs");
}

// Writes back the file's dirty pages, then drops them all from the page cache.
void evict(const char* path) {
  Fd fd(path, O_RDONLY);
  if (::fdatasync(fd.get()) != 0) fail(std::string("fdatasync ") + path);
  sheaf_bench::drop_cached(fd.get(), path);
}

// The fraction of the file's pages in the page cache. The files here are plain files on a
// disk, so one that cannot be mapped is an error.
double cached_fraction(const char* path) {
  const std::optional<double> fraction = sheaf_bench::cached_fraction(path);
  if (!fraction) fail(std::string("mmap or mincore ") + path);
  return *fraction;
}

// Runs /bin/cp SOURCE DEST and waits for it.
void run_cp(const char* source, const char* dest) {
  sheaf_bench::run_program(kCp, {"cp", source, dest});
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
  while (std::size_t got = read_chunk<kChunk>(source.get(), g_source)) {
    writer.write({reinterpret_cast<const std::byte*>(chunk_buffer<kChunk>()), got});
  }
  return writer.commit().size;
}

// g_bytes of random bytes (sheaf_bench::RandomWords), written and fsynced once.
void make_source() {
  if (g_source_tried) return;
  g_source_tried = true;
  try {
    g_store.emplace(sheaf::Store::init(g_store_dir).value());
    Fd out(g_source, O_WRONLY | O_CREAT | O_EXCL, 0644);
    sheaf_bench::RandomWords random;
    char* const buffer = chunk_buffer<kChunk>();
    for (std::uint64_t left = g_bytes; left > 0;) {
      const std::size_t step = static_cast<std::size_t>(std::min<std::uint64_t>(left, kChunk));
      random.fill(buffer, step);
      for (std::size_t done = 0; done < step;) {
        const ssize_t n = ::write(out.get(), buffer + done, step - done);
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
  return sheaf_bench::ready_or_skip(state, g_store ? g_setup_error : "no store");
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
  read_file<kChunk>(g_source);
  return cached_fraction(g_source);
}

// Untimed, before each Verify/PlainRead iteration: the bag file in the page cache, or not.
double prepare_read(bool cold) {
  settle();
  const std::string path = g_store->bag_path(kVerifyBag);
  if (cold) {
    evict(path.c_str());
  } else {
    read_file<kChunk>(path.c_str());
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

// --- Get beside cp -------------------------------------------------------------------------------
// Untimed, before each Get/CpBag iteration: no old copy, nothing pending, the bag file cached.
double prepare_get() {
  remove_copy();
  settle();
  const std::string path = g_store->bag_path(kVerifyBag);
  read_file<kChunk>(path.c_str());
  return cached_fraction(path.c_str());
}

void BM_Bag_Get(benchmark::State& state) {
  if (!ready_or_skip(state)) return;
  sheaf::Store& store = *g_store;
  timed_loop(state, g_bytes, prepare_get, [&] {
    sheaf::BagOpenOptions header_only;
    header_only.verify_payload = false;
    const sheaf::Bag bag = store.open_bag(kVerifyBag, header_only).value();
    Fd out(g_temp, O_RDWR | O_CREAT | O_EXCL, 0644);
    bag.copy_payload(out.get(), /*verify=*/true);
    if (::ftruncate(out.get(), static_cast<off_t>(bag.info().size)) != 0) fail("ftruncate");
    if (::rename(g_temp, g_copy) != 0) fail("rename");
  });
  guarded(state, remove_copy);
}

void BM_CpBag(benchmark::State& state) {
  if (!ready_or_skip(state)) return;
  const std::string path = g_store->bag_path(kVerifyBag);
  timed_loop(state, g_bytes, prepare_get, [&] { run_cp(path.c_str(), g_copy); });
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
        file_bytes = read_to_end<kChunk>(fd.get(), path.c_str());
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
  auto get = [&](benchmark::internal::Benchmark* b) {
    b->Setup(setup_verify_bag)
        ->Iterations(iterations)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  };
  get(benchmark::RegisterBenchmark("BM_Bag_Get", BM_Bag_Get));
  get(benchmark::RegisterBenchmark("BM_CpBag", BM_CpBag));
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
      double target;  // 0: none (shown for context)
    };
    static constexpr Ratio kRatios[] = {
        {"Put / Cp", "BM_Bag_Put", "BM_Cp", 0},
        {"Put / CpSync", "BM_Bag_Put", "BM_CpSync", 0.90},
        {"Get / CpBag", "BM_Bag_Get", "BM_CpBag", 0.90},
        {"Verify / PlainRead, warm", "BM_Bag_Verify/cold:0", "BM_PlainRead/cold:0", 0.85},
        {"Verify / PlainRead, cold", "BM_Bag_Verify/cold:1", "BM_PlainRead/cold:1", 0.85},
    };
    if (cells_.empty()) return;
    char line[256];
    out << "\nSheaf beside cp and a plain read: throughput in MiB/s of real time, median of the "
           "repetitions\nwhen there were several; ratio = Sheaf / baseline, higher is better\n";
    std::snprintf(line, sizeof line, "%-26s %12s %12s %8s  %s\n", "Ratio", "Sheaf MiB/s",
                  "Base MiB/s", "Ratio", "Target");
    out << line << std::string(76, '-') << "\n";
    constexpr double kMiB = 1024.0 * 1024.0;
    for (const Ratio& r : kRatios) {
      const double sheaf = rate(r.sheaf);
      const double base = rate(r.base);
      if (sheaf < 0 && base < 0) continue;
      const double ratio = sheaf > 0 && base > 0 ? sheaf / base : -1;
      const std::string verdict =
          r.target == 0 ? "-"
          : ratio < 0   ? cell(r.target, "%.2f")
                        : cell(r.target, "%.2f") + (ratio >= r.target ? " met" : " NOT met");
      std::snprintf(line, sizeof line, "%-26s %12s %12s %8s  %s\n", r.label,
                    cell(sheaf < 0 ? -1 : sheaf / kMiB, "%.0f").c_str(),
                    cell(base < 0 ? -1 : base / kMiB, "%.0f").c_str(), cell(ratio, "%.2f").c_str(),
                    verdict.c_str());
      out << line;
    }
    out << "Put and CpSync end with the data on the disk (fsync); Cp, CpBag and Get end with it "
           "in the page cache.\n"
        << std::flush;
  }

  std::map<std::string, sheaf_bench::Median> cells_;
};

}  // namespace

int main(int argc, char** argv) {
  if (!sheaf_bench::initialize_interleaved(argc, argv)) return 1;
  if (!sheaf_bench::bytes_from_env("sheaf_bag_bench", "SHEAF_BAG_BENCH_BYTES", g_bytes)) return 1;
  const std::string dir = sheaf_bench::bench_dir("/var/tmp");
  const std::string top = dir + "/sheaf_bag_bench_" + std::to_string(::getpid());
  if (!set_path(g_top, top) || !set_path(g_source, top + "/source.bin") ||
      !set_path(g_copy, top + "/cp-copy.bin") || !set_path(g_temp, top + "/.get-copy.tmp") ||
      !set_path(g_store_dir, top + "/store")) {
    std::cerr << "sheaf_bag_bench: SHEAF_BENCH_DIR is too long\n";
    return 1;
  }
  const std::string filesystem = sheaf_bench::describe_filesystem(dir);
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
  sheaf_bench::clean_up_on_fatal_signals(remove_files);

  register_benchmarks();
  RatioReporter reporter(sheaf_bench::console_options());
  benchmark::RunSpecifiedBenchmarks(&reporter);
  g_store.reset();
  remove_files();
  benchmark::Shutdown();
  return g_setup_error.empty() ? 0 : 1;
}
