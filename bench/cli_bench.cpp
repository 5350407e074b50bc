// sheaf_cli_bench: what a `sheaf heap` command costs on a heap of 100,000 objects beside the
// same command on an empty heap, in one run.
//
//   BM_Cli/<verb>/objects:N   posix_spawn of the real `sheaf` command, then waitpid, on a heap
//                             holding N named objects (0 or $SHEAF_CLI_BENCH_OBJECTS, default
//                             100,000), for each verb:
//     put    sheaf heap put --force STORE/HEAP p FILE   (a 6-byte file, replacing object p)
//     info   sheaf heap info STORE/HEAP                 (output to /dev/null)
//     cat    sheaf heap cat STORE/HEAP p                (output to /dev/null)
//     ls     sheaf heap ls STORE/HEAP                   (every name: grows with N by design;
//                                                        shown for scale, no target)
//
// The whole command is timed: process start, opening the heap, the work, closing. The target
// (issue 10): a command on the big heap costs at most twice what it costs on the empty one.
// The heaps live in a store made for the run in $SHEAF_BENCH_DIR (default /dev/shm), filled
// once through the library, and removed at exit or on a fatal signal. Repetitions of all rows
// are interleaved in a random order so that load from elsewhere falls on both sides of a ratio
// alike. When the runs are done a table gives, per verb, the two times and their ratio.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "sheaf/heap.hpp"
#include "sheaf/store.hpp"
#include "table_reporter.hpp"

#ifndef SHEAF_CLI_PATH
#error "SHEAF_CLI_PATH: the sheaf command to run (bench/CMakeLists.txt sets it)"
#endif

namespace {

constexpr std::uint64_t kDefaultObjects = 100000;
const char* const kVerbs[] = {"put", "info", "cat", "ls"};

std::uint64_t g_objects = kDefaultObjects;
char g_top[4096];  // the run's directory, removed at exit
std::string g_store;
std::string g_input;  // the file `put` stores
std::string g_setup_error;
bool g_tried = false;

void remove_files() noexcept {
  if (g_top[0] != '\0') sheaf_bench::remove_tree(g_top);
}

// The store with heaps "empty" and "full", both holding object p; "full" also N others.
void make_heaps() {
  if (g_tried) return;
  g_tried = true;
  try {
    sheaf::Store store = sheaf::Store::init(g_store).value();
    for (const char* name : {"empty", "full"}) {
      sheaf::Heap heap = sheaf::Heap::create(store.heap_path(name)).value();
      heap.construct<std::int64_t>("p")(1);
      if (std::string(name) == "full") {
        for (std::uint64_t i = 0; i < g_objects; ++i) {
          heap.construct<std::int64_t>("object-" + std::to_string(i))(static_cast<std::int64_t>(i));
        }
      }
    }
    g_input = std::string(g_top) + "/input";
    std::FILE* f = std::fopen(g_input.c_str(), "w");
    if (f == nullptr || std::fputs("hello\n", f) < 0 || std::fclose(f) != 0) {
      throw std::runtime_error("cannot write " + g_input);
    }
  } catch (const std::exception& e) {
    g_setup_error = e.what();
  }
}

void setup(const benchmark::State&) {
  make_heaps();
}

void BM_Cli(benchmark::State& state, const std::string& verb) {
  if (!sheaf_bench::ready_or_skip(state, g_setup_error)) return;
  const std::string heap = g_store + (state.range(0) == 0 ? "/empty" : "/full");
  std::vector<std::string> args = {"sheaf", "heap", verb, heap};
  if (verb == "put") args = {"sheaf", "heap", "put", "--force", heap, "p", g_input};
  if (verb == "cat") args.push_back("p");
  sheaf_bench::guarded(state, [&] {
    for (auto _ : state) {
      sheaf_bench::run_program(SHEAF_CLI_PATH, args, sheaf_bench::Stdout::kDevNull);
    }
  });
}

class RatioReporter : public sheaf_bench::TableReporter {
 public:
  using TableReporter::TableReporter;

 private:
  void collect(const Run& run) override {
    cells_[run.run_name.function_name + "/" + run.run_name.args].add(
        run, run.GetAdjustedRealTime());  // ms: the rows are in milliseconds
  }

  void print_table(std::ostream& out) const override {
    if (cells_.empty()) return;
    char line[160];
    out << "\nA `sheaf heap` command on a heap of " << g_objects
        << " objects beside an empty heap: ms per command (median of the repetitions);\n"
           "ratio = big / empty, target at most 2.00 (ls lists every name: no target)\n";
    std::snprintf(line, sizeof line, "%-8s %12s %12s %8s  %s\n", "Verb", "Empty ms", "Big ms",
                  "Ratio", "Target");
    out << line << std::string(56, '-') << "\n";
    for (const char* verb : kVerbs) {
      const double empty = value("BM_Cli/" + std::string(verb) + "/objects:0");
      const double big =
          value("BM_Cli/" + std::string(verb) + "/objects:" + std::to_string(g_objects));
      const double ratio = empty > 0 && big > 0 ? big / empty : -1;
      const bool targeted = std::string(verb) != "ls";
      std::snprintf(line, sizeof line, "%-8s %12s %12s %8s  %s\n", verb,
                    sheaf_bench::cell(empty, "%.2f").c_str(),
                    sheaf_bench::cell(big, "%.2f").c_str(),
                    sheaf_bench::cell(ratio, "%.2f").c_str(),
                    !targeted      ? "-"
                    : ratio < 0    ? "?"
                    : ratio <= 2.0 ? "met"
                                   : "NOT met");
      out << line;
    }
    out << std::flush;
  }

  double value(const std::string& key) const {
    auto it = cells_.find(key);
    return it == cells_.end() ? -1 : it->second.value();
  }

  std::map<std::string, sheaf_bench::Median> cells_;
};

}  // namespace

int main(int argc, char** argv) {
  if (!sheaf_bench::initialize_interleaved(argc, argv)) return 1;
  if (const char* n = std::getenv("SHEAF_CLI_BENCH_OBJECTS"))
    g_objects = std::strtoull(n, nullptr, 10);
  if (g_objects == 0) g_objects = kDefaultObjects;
  const std::string top =
      sheaf_bench::bench_dir("/dev/shm") + "/sheaf_cli_bench_" + std::to_string(::getpid());
  if (!sheaf_bench::set_path(g_top, top)) {
    std::cerr << "sheaf_cli_bench: SHEAF_BENCH_DIR is too long\n";
    return 1;
  }
  g_store = top + "/store";
  if (::mkdir(g_top, 0755) != 0) {
    std::perror(g_top);
    return 1;
  }
  sheaf_bench::clean_up_on_fatal_signals(remove_files);
  for (const char* verb : kVerbs) {
    benchmark::RegisterBenchmark(("BM_Cli/" + std::string(verb)).c_str(), BM_Cli, std::string(verb))
        ->Setup(setup)
        ->ArgName("objects")
        ->Arg(0)
        ->Arg(static_cast<std::int64_t>(g_objects))
        ->Iterations(20)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  RatioReporter reporter(sheaf_bench::console_options());
  benchmark::RunSpecifiedBenchmarks(&reporter);
  remove_files();
  benchmark::Shutdown();
  return g_setup_error.empty() ? 0 : 1;
}
