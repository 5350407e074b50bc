// sheaf_heap_bench: Sheaf's heap beside Boost.Interprocess and glibc malloc, in one run.
//
//   BM_<Impl>_AllocFree/<bytes>          allocate one block, write a byte, free it
//   BM_<Impl>_AllocFree/<bytes>/real_time/threads:2   the same from two threads on one heap
//   BM_<Impl>_ConstructFind              construct a uniquely named int64, find it, destroy
//                                        it, with 10,000 other named objects present
//   BM_<Impl>_Find                       find one of 10,000 named objects
//
// Impl is Sheaf (sheaf::Heap), BoostIpc (boost::interprocess::managed_mapped_file) or
// Malloc. The heap files are 1 GiB each and live in $SHEAF_BENCH_DIR (default /dev/shm):
// made once, before the first run that needs them (never per thread), shared by the threads
// of the two-thread runs, checked (Heap::check) and removed at exit, or removed on a fatal
// signal.
// When the runs are done a table gives, per row, Sheaf / Boost and Sheaf / malloc on the
// real time per operation (the median when --benchmark_repetitions asked for several).
// With two threads, the time per operation is wall time divided by the operations of both
// threads together. Run it through bench/run.sh.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <boost/interprocess/creation_tags.hpp>
#include <boost/interprocess/managed_mapped_file.hpp>
#include <charconv>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "bench_util.hpp"
#include "sheaf/heap.hpp"
#include "table_reporter.hpp"

namespace {

namespace bip = boost::interprocess;

using sheaf_bench::cell;
using sheaf_bench::guarded;

constexpr std::uint64_t kHeapBytes = std::uint64_t{1} << 30;
constexpr int kNames = 10'000;

// --- Files -------------------------------------------------------------------------
// Fixed buffers, so that the signal handler can unlink them.
enum HeapKind { kSheafAlloc, kSheafNames, kBoostAlloc, kBoostNames, kHeapKinds };
char g_paths[kHeapKinds][4096];

void remove_files() noexcept {
  for (const char* path : g_paths) {
    if (path[0] != '\0') ::unlink(path);
  }
}

bool set_paths() {
  std::string stem =
      sheaf_bench::bench_dir("/dev/shm") + "/sheaf_bench_" + std::to_string(::getpid());
  const char* suffixes[kHeapKinds] = {"_sheaf_alloc.heap", "_sheaf_names.heap", "_boost_alloc.heap",
                                      "_boost_names.heap"};
  for (int kind = 0; kind < kHeapKinds; ++kind) {
    std::string path = stem + suffixes[kind];
    if (path.size() >= sizeof g_paths[kind]) return false;
    std::memcpy(g_paths[kind], path.c_str(), path.size() + 1);
  }
  return true;
}

// --- The heaps under test ------------------------------------------------------------
// Four heap files: Sheaf and Boost, one for anonymous blocks and one holding kNames named
// objects. Each is made by the first Setup callback that needs it (once, never per thread)
// and then serves every later run, whose threads share it; main() removes them at the end.
// Making them once keeps the 1 GiB file creation (fallocate for Sheaf) out of the dozens of
// runs Google Benchmark makes per row. Every benchmark leaves its heap as it found it.
std::optional<sheaf::Heap> g_sheaf[2];               // [kind - kSheafAlloc]
std::optional<bip::managed_mapped_file> g_boost[2];  // [kind - kBoostAlloc]
std::string g_setup_error[kHeapKinds];               // why a heap could not be made
bool g_setup_tried[kHeapKinds] = {};

const std::vector<std::string>& names() {
  static const std::vector<std::string> all = [] {
    std::vector<std::string> v;
    v.reserve(kNames);
    char buf[32];
    for (int i = 0; i < kNames; ++i) {
      std::snprintf(buf, sizeof buf, "object-%05d", i);
      v.emplace_back(buf);
    }
    return v;
  }();
  return all;
}

// The order in which BM_*_Find visits the names: a fixed shuffle, the same for both.
const std::vector<int>& find_order() {
  static const std::vector<int> order = [] {
    std::vector<int> v(kNames);
    for (int i = 0; i < kNames; ++i) v[i] = i;
    std::mt19937 rng(12345);
    std::shuffle(v.begin(), v.end(), rng);
    return v;
  }();
  return order;
}

// Makes heap `kind` unless that was tried already; a failure is kept in g_setup_error and
// reported by the benchmarks that need the heap, while the others still run.
template <class Make>
void setup_once(HeapKind kind, Make&& make) {
  if (g_setup_tried[kind]) return;
  g_setup_tried[kind] = true;
  try {
    make(g_paths[kind]);
  } catch (const std::exception& e) {
    g_setup_error[kind] = e.what();
  }
}

void make_sheaf(HeapKind kind) {
  setup_once(kind, [&](const char* path) {
    ::unlink(path);
    sheaf::CreateOptions options;
    options.initial_size = kHeapBytes;
    std::optional<sheaf::Heap>& heap = g_sheaf[kind - kSheafAlloc];
    heap.emplace(sheaf::Heap::create(path, options).value());
    if (kind == kSheafNames) {
      const auto& all = names();
      for (int i = 0; i < kNames; ++i) heap->construct<std::int64_t>(all[i])(i);
    }
  });
}

void make_boost(HeapKind kind) {
  setup_once(kind, [&](const char* path) {
    ::unlink(path);
    std::optional<bip::managed_mapped_file>& segment = g_boost[kind - kBoostAlloc];
    segment.emplace(bip::create_only, path, kHeapBytes);
    if (kind == kBoostNames) {
      const auto& all = names();
      for (int i = 0; i < kNames; ++i) segment->construct<std::int64_t>(all[i].c_str())(i);
    }
  });
}

void setup_sheaf_alloc(const benchmark::State&) {
  make_sheaf(kSheafAlloc);
}
void setup_sheaf_names(const benchmark::State&) {
  make_sheaf(kSheafNames);
}
void setup_boost_alloc(const benchmark::State&) {
  make_boost(kBoostAlloc);
}
void setup_boost_names(const benchmark::State&) {
  make_boost(kBoostNames);
}

// The heap, or nullptr after reporting why there is none.
sheaf::Heap* sheaf_or_skip(HeapKind kind, benchmark::State& state) {
  std::optional<sheaf::Heap>& heap = g_sheaf[kind - kSheafAlloc];
  if (heap && g_setup_error[kind].empty()) return &*heap;
  std::string why = "heap setup failed: " + g_setup_error[kind];
  state.SkipWithError(why.c_str());
  return nullptr;
}

bip::managed_mapped_file* boost_or_skip(HeapKind kind, benchmark::State& state) {
  std::optional<bip::managed_mapped_file>& segment = g_boost[kind - kBoostAlloc];
  if (segment && g_setup_error[kind].empty()) return &*segment;
  std::string why = "segment setup failed: " + g_setup_error[kind];
  state.SkipWithError(why.c_str());
  return nullptr;
}

// Closes and removes the heaps, after checking that the Sheaf heaps are still sound (a
// benchmark that corrupted its heap measured nothing worth reading). False if one was not.
bool close_heaps() {
  bool sound = true;
  for (auto& heap : g_sheaf) {
    if (!heap) continue;
    try {
      sheaf::CheckReport report = heap->check();
      for (const std::string& problem : report.problems) {
        std::cerr << "sheaf_heap_bench: " << heap->path() << " after the runs: " << problem << "\n";
      }
      sound = sound && report.ok();
    } catch (const std::exception& e) {
      std::cerr << "sheaf_heap_bench: " << heap->path() << ": check failed: " << e.what() << "\n";
      sound = false;
    }
  }
  for (auto& heap : g_sheaf) heap.reset();
  for (auto& segment : g_boost) segment.reset();
  remove_files();
  return sound;
}

inline void touch(void* p) {
  *static_cast<volatile unsigned char*>(p) = 1;
  benchmark::DoNotOptimize(p);
}

// --- Allocate + free ---------------------------------------------------------------------
void BM_Sheaf_AllocFree(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  sheaf::Heap* heap_ptr = sheaf_or_skip(kSheafAlloc, state);
  if (heap_ptr == nullptr) return;
  sheaf::Heap& heap = *heap_ptr;
  guarded(state, [&] {
    for (auto _ : state) {
      void* p = heap.allocate(bytes);
      touch(p);
      heap.deallocate(p);
    }
  });
}

void BM_BoostIpc_AllocFree(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  bip::managed_mapped_file* segment_ptr = boost_or_skip(kBoostAlloc, state);
  if (segment_ptr == nullptr) return;
  bip::managed_mapped_file& segment = *segment_ptr;
  guarded(state, [&] {
    for (auto _ : state) {
      void* p = segment.allocate(bytes);
      touch(p);
      segment.deallocate(p);
    }
  });
}

void BM_Malloc_AllocFree(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(bytes);
    if (p == nullptr) {
      state.SkipWithError("malloc failed");
      break;
    }
    touch(p);
    std::free(p);
  }
}

// --- Named objects -------------------------------------------------------------------------
// A name no other object has: "fresh-<n>", NUL-terminated for Boost.
class FreshName {
 public:
  std::string_view next() {
    auto [end, ec] = std::to_chars(buf_ + kPrefix, buf_ + sizeof buf_ - 1, counter_++);
    (void)ec;
    *end = '\0';
    return std::string_view(buf_, static_cast<std::size_t>(end - buf_));
  }

 private:
  static constexpr std::size_t kPrefix = 6;
  char buf_[32] = "fresh-";
  std::uint64_t counter_ = 0;
};

void BM_Sheaf_ConstructFind(benchmark::State& state) {
  sheaf::Heap* heap_ptr = sheaf_or_skip(kSheafNames, state);
  if (heap_ptr == nullptr) return;
  sheaf::Heap& heap = *heap_ptr;
  FreshName fresh;
  guarded(state, [&] {
    for (auto _ : state) {
      std::string_view name = fresh.next();
      std::int64_t* made = heap.construct<std::int64_t>(name)(42);
      std::int64_t* found = heap.find<std::int64_t>(name);
      benchmark::DoNotOptimize(found);
      if (found != made) {
        state.SkipWithError("find did not return the constructed object");
        break;
      }
      if (!heap.destroy<std::int64_t>(name)) {
        state.SkipWithError("destroy found no object");
        break;
      }
    }
  });
}

void BM_BoostIpc_ConstructFind(benchmark::State& state) {
  bip::managed_mapped_file* segment_ptr = boost_or_skip(kBoostNames, state);
  if (segment_ptr == nullptr) return;
  bip::managed_mapped_file& segment = *segment_ptr;
  FreshName fresh;
  guarded(state, [&] {
    for (auto _ : state) {
      const char* name = fresh.next().data();
      std::int64_t* made = segment.construct<std::int64_t>(name)(42);
      std::int64_t* found = segment.find<std::int64_t>(name).first;
      benchmark::DoNotOptimize(found);
      if (found != made) {
        state.SkipWithError("find did not return the constructed object");
        break;
      }
      if (!segment.destroy<std::int64_t>(name)) {
        state.SkipWithError("destroy found no object");
        break;
      }
    }
  });
}

void BM_Sheaf_Find(benchmark::State& state) {
  sheaf::Heap* heap_ptr = sheaf_or_skip(kSheafNames, state);
  if (heap_ptr == nullptr) return;
  sheaf::Heap& heap = *heap_ptr;
  const auto& all = names();
  const auto& order = find_order();
  std::size_t i = 0;
  guarded(state, [&] {
    for (auto _ : state) {
      std::int64_t* found = heap.find<std::int64_t>(all[order[i]]);
      benchmark::DoNotOptimize(found);
      if (found == nullptr) {
        state.SkipWithError("a named object was not found");
        break;
      }
      if (++i == order.size()) i = 0;
    }
  });
}

void BM_BoostIpc_Find(benchmark::State& state) {
  bip::managed_mapped_file* segment_ptr = boost_or_skip(kBoostNames, state);
  if (segment_ptr == nullptr) return;
  bip::managed_mapped_file& segment = *segment_ptr;
  const auto& all = names();
  const auto& order = find_order();
  std::size_t i = 0;
  guarded(state, [&] {
    for (auto _ : state) {
      std::int64_t* found = segment.find<std::int64_t>(all[order[i]].c_str()).first;
      benchmark::DoNotOptimize(found);
      if (found == nullptr) {
        state.SkipWithError("a named object was not found");
        break;
      }
      if (++i == order.size()) i = 0;
    }
  });
}

void sizes(benchmark::internal::Benchmark* b) {
  b->Arg(64)->Arg(1024)->Arg(65536);
}

// Single-threaded rows first, then the two-thread rows, then the named objects.
BENCHMARK(BM_Sheaf_AllocFree)->Apply(sizes)->Setup(setup_sheaf_alloc);
BENCHMARK(BM_BoostIpc_AllocFree)->Apply(sizes)->Setup(setup_boost_alloc);
BENCHMARK(BM_Malloc_AllocFree)->Apply(sizes);

BENCHMARK(BM_Sheaf_AllocFree)->Apply(sizes)->Threads(2)->UseRealTime()->Setup(setup_sheaf_alloc);
BENCHMARK(BM_BoostIpc_AllocFree)->Apply(sizes)->Threads(2)->UseRealTime()->Setup(setup_boost_alloc);
BENCHMARK(BM_Malloc_AllocFree)->Apply(sizes)->Threads(2)->UseRealTime();

BENCHMARK(BM_Sheaf_ConstructFind)->Setup(setup_sheaf_names);
BENCHMARK(BM_BoostIpc_ConstructFind)->Setup(setup_boost_names);
BENCHMARK(BM_Sheaf_Find)->Setup(setup_sheaf_names);
BENCHMARK(BM_BoostIpc_Find)->Setup(setup_boost_names);

// --- The ratio table ----------------------------------------------------------------------------
// The console output as usual, then, in Finalize, one row per operation with Sheaf's time
// beside Boost's and malloc's.
class RatioReporter : public sheaf_bench::TableReporter {
 public:
  using TableReporter::TableReporter;

 private:
  enum Impl { kSheaf, kBoost, kMalloc, kImpls };

  struct Row {
    sheaf_bench::Median cells[kImpls];
  };

  void collect(const Run& run) override {
    // "BM_<Impl>_<Op>" -> Impl, Op.
    std::string_view function = run.run_name.function_name;
    if (function.substr(0, 3) != "BM_") return;
    function.remove_prefix(3);
    std::size_t sep = function.find('_');
    if (sep == std::string_view::npos) return;
    std::string_view impl_name = function.substr(0, sep);
    Impl impl;
    if (impl_name == "Sheaf") {
      impl = kSheaf;
    } else if (impl_name == "BoostIpc") {
      impl = kBoost;
    } else if (impl_name == "Malloc") {
      impl = kMalloc;
    } else {
      return;
    }
    std::string key(function.substr(sep + 1));
    if (!run.run_name.args.empty()) key += "/" + run.run_name.args;
    if (!run.run_name.threads.empty()) key += "/" + run.run_name.threads;

    double ns = run.GetAdjustedRealTime() * 1e9 / benchmark::GetTimeUnitMultiplier(run.time_unit);
    auto [it, inserted] = rows_.try_emplace(key);
    if (inserted) order_.push_back(key);
    it->second.cells[impl].add(run, ns);
  }

  void print_table(std::ostream& out) const override {
    if (order_.empty()) return;
    char line[256];
    out << "\nSheaf beside Boost.Interprocess and malloc: real time per operation in ns "
           "(median of the repetitions when there were several)\n";
    std::snprintf(line, sizeof line, "%-28s %10s %10s %10s %12s %13s\n", "Operation", "Sheaf",
                  "BoostIpc", "malloc", "Sheaf/Boost", "Sheaf/malloc");
    out << line << std::string(88, '-') << "\n";
    for (const std::string& key : order_) {
      const Row& row = rows_.at(key);
      double sheaf = row.cells[kSheaf].value();
      double boost = row.cells[kBoost].value();
      double malloc = row.cells[kMalloc].value();
      double to_boost = sheaf > 0 && boost > 0 ? sheaf / boost : -1;
      double to_malloc = sheaf > 0 && malloc > 0 ? sheaf / malloc : -1;
      std::snprintf(line, sizeof line, "%-28s %10s %10s %10s %12s %13s\n", key.c_str(),
                    cell(sheaf, "%.1f").c_str(), cell(boost, "%.1f").c_str(),
                    cell(malloc, "%.1f").c_str(), cell(to_boost, "%.2fx").c_str(),
                    cell(to_malloc, "%.1fx").c_str());
      out << line;
    }
    out << std::flush;
  }

  std::map<std::string, Row> rows_;
  std::vector<std::string> order_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (!set_paths()) {
    std::cerr << "sheaf_heap_bench: SHEAF_BENCH_DIR is too long\n";
    return 1;
  }
  // Remove the heap files however the run ends, a crash in the code under test included.
  sheaf_bench::clean_up_on_fatal_signals(remove_files);

  RatioReporter reporter(sheaf_bench::console_options());
  benchmark::RunSpecifiedBenchmarks(&reporter);
  bool sound = close_heaps();
  benchmark::Shutdown();
  return sound ? 0 : 1;
}
