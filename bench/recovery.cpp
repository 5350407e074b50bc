// sheaf_recovery_bench: how long the first open of a big heap takes, cleanly closed
// or after a process was killed in it, beside the walk of every block that both used
// to cost.
//
// The heap holds N named objects (default 500,000 of 8 KiB: 4 GiB). Each round:
//   clean      Heap::open of the heap, closed cleanly before;
//   killed     Heap::open after a child that had it open was SIGKILLed in the middle of
//              its work (at a store chosen by posix::inject_crash: inside an allocator
//              operation, or in its thread cache), so the open takes the lock over from
//              the dead process, undoes its operation and frees its caches;
//   walked     Heap::open with OpenOptions::verify: the walk over every block that every
//              first open did before the undo log and the ledgers (and every recovery
//              did, twice).
// Each is timed by hand (wall clock around Heap::open); after each killed round the heap
// is checked (Heap::check, not timed) and must be sound, with no walk counted. Prints
// min/median/max in ms and the ratios of the medians.
//
//   sheaf_recovery_bench [--objects=N] [--object-bytes=B] [--rounds=R]
//
// --benchmark_repetitions=R is taken as --rounds=R; other extra flags are ignored. The file goes to
// $SHEAF_BENCH_DIR (default /dev/shm) and is removed at exit.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "posix.hpp"  // inject_crash: a real SIGKILL at a chosen store
#include "sheaf/heap.hpp"

namespace {

struct Options {
  long objects = 500'000;
  long object_bytes = 8192;
  int rounds = 5;
  std::string dir;
};

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

struct Samples {
  std::vector<double> ms;
  double min() const { return *std::min_element(ms.begin(), ms.end()); }
  double max() const { return *std::max_element(ms.begin(), ms.end()); }
  double median() const {
    std::vector<double> s = ms;
    std::sort(s.begin(), s.end());
    const std::size_t n = s.size();
    return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  }
};

double timed_open(const std::string& path, const sheaf::OpenOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  sheaf::Heap heap = sheaf::Heap::open(path, options).value();
  const double ms = ms_since(start);
  heap.close().value();
  return ms;
}

// A child opens the heap, then works (named objects, small blocks through its cache,
// large ones under the lock) until it kills itself at store number `crash_at`.
void kill_a_worker(const std::string& path, int crash_at) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    try {
      sheaf::Heap heap = sheaf::Heap::open(path).value();
      sheaf::posix::inject_crash(crash_at);
      std::vector<void*> blocks;
      for (long i = 0; i < 10'000'000; ++i) {  // bounded; the crash comes long before
        blocks.push_back(heap.allocate(i % 7 == 0 ? 70'000 : 16 + i % 1000));
        if (blocks.size() > 300) {
          heap.deallocate(blocks[i % blocks.size()]);
          blocks.erase(blocks.begin() + static_cast<long>(i % blocks.size()));
        }
        if (i % 50 == 0)
          heap.construct<std::uint64_t>("worker-" + std::to_string(crash_at) + "-" +
                                        std::to_string(i))(i);
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "worker: %s\n", e.what());
    }
    _exit(1);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
    throw std::runtime_error("the worker was not killed at its crash point");
  }
}

int run(const Options& options) {
  const std::string path = options.dir + "/sheaf-recovery-bench-" + std::to_string(getpid());
  struct Remove {
    std::string path;
    ~Remove() { std::remove(path.c_str()); }
  } remove{path};

  std::printf("building %ld objects of %ld bytes in %s ...\n", options.objects,
              options.object_bytes, path.c_str());
  {
    sheaf::CreateOptions create;
    create.initial_size = 64 << 20;
    sheaf::Heap heap = sheaf::Heap::create(path, create).value();
    for (long i = 0; i < options.objects; ++i) {
      heap.construct<char>("object-" +
                           std::to_string(i))[static_cast<std::size_t>(options.object_bytes)]();
    }
    const sheaf::HeapInfo info = heap.info();
    std::printf("heap: %.2f GiB, %llu objects\n", static_cast<double>(info.size) / (1 << 30),
                static_cast<unsigned long long>(info.objects));
  }

  sheaf::OpenOptions verify;
  verify.verify = true;
  Samples clean;
  Samples killed;
  Samples walked;
  for (int round = 0; round < options.rounds; ++round) {
    clean.ms.push_back(timed_open(path, {}));
    walked.ms.push_back(timed_open(path, verify));

    kill_a_worker(path, 2000 + round * 337);
    killed.ms.push_back(timed_open(path, {}));
    sheaf::Heap heap = sheaf::Heap::open(path).value();
    const sheaf::CheckReport report = heap.check();
    if (!report.ok()) throw std::runtime_error("unsound after recovery: " + report.problems[0]);
    if (heap.info().walked_recoveries != 0) throw std::runtime_error("a recovery walked");
    heap.close().value();
  }

  std::printf("\nfirst open of the heap, ms (min / median / max of %d rounds)\n", options.rounds);
  const auto row = [](const char* name, const Samples& s) {
    std::printf("  %-8s %10.3f %10.3f %10.3f\n", name, s.min(), s.median(), s.max());
  };
  row("clean", clean);
  row("killed", killed);
  row("walked", walked);
  std::printf("\nratios of medians: clean / walked %.4f, killed / walked %.4f\n",
              clean.median() / walked.median(), killed.median() / walked.median());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  const char* dir = std::getenv("SHEAF_BENCH_DIR");
  options.dir = dir && *dir ? dir : "/dev/shm";
  CLI::App app{"The first open of a big heap: clean, after a kill, and walked."};
  app.add_option("--objects", options.objects, "named objects in the heap")
      ->check(CLI::PositiveNumber);
  app.add_option("--object-bytes", options.object_bytes, "bytes of each")
      ->check(CLI::PositiveNumber);
  app.add_option("--rounds,--benchmark_repetitions", options.rounds, "rounds of each measurement")
      ->check(CLI::PositiveNumber);
  app.allow_extras();  // run.sh's other --benchmark_* flags
  CLI11_PARSE(app, argc, argv);
  try {
    return run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sheaf_recovery_bench: %s\n", e.what());
    return 1;
  }
}
