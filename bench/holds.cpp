// sheaf_holds_bench: a block passed by reference from one process to another, with a
// crash-safe hold (allocate_held, hand_over, release) beside a plain allocate in one
// process and deallocate in the other.
//
// Each round: a fresh 1 GiB heap; a consumer process opens it and tells its session
// through the heap; the producer (this process) then sends N blocks of 64 bytes through a
// single-producer single-consumer ring of offsets in the heap itself:
//   held    producer: allocate_held + hand_over(consumer);  consumer: release
//   plain   producer: allocate;                             consumer: deallocate
// timed (wall clock) from the first send until the consumer has let go of the last block.
// Rounds alternate the two. Prints min/median/max ns per block and held / plain of the
// medians: what freeing exactly once, whoever dies, costs over trusting both processes.
//
//   sheaf_holds_bench [--blocks=N] [--rounds=R]
//
// --benchmark_repetitions=R is taken as --rounds=R; other extra flags are ignored. Files go
// to $SHEAF_BENCH_DIR (default /dev/shm) and are removed after each round.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "sheaf/heap.hpp"

namespace {

constexpr std::size_t kBlockBytes = 64;
constexpr std::uint64_t kRingSlots = 1024;

// Lives in the heap: the consumer's session, then offsets from producer to consumer.
struct Ring {
  std::atomic<std::uint64_t> consumer_session{0};
  std::atomic<std::uint64_t> head{0};  // next slot the producer fills
  std::atomic<std::uint64_t> tail{0};  // next slot the consumer empties
  std::uint64_t slots[kRingSlots] = {};
};

enum class Mode { kHeld, kPlain };

inline void relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

[[noreturn]] void consume(const std::string& path, Mode mode, long blocks) {
  try {
    sheaf::Heap heap = sheaf::Heap::open(path).value();
    Ring* ring = heap.find<Ring>("ring");
    ring->consumer_session.store(heap.session());
    for (long done = 0; done < blocks;) {
      const std::uint64_t tail = ring->tail.load(std::memory_order_relaxed);
      if (ring->head.load(std::memory_order_acquire) == tail) {
        relax();
        continue;
      }
      void* p = heap.pointer_at(ring->slots[tail % kRingSlots]);
      if (mode == Mode::kHeld) {
        heap.release(p);
      } else {
        heap.deallocate(p);
      }
      ring->tail.store(tail + 1, std::memory_order_release);
      ++done;
    }
    heap.close().value();
    _exit(0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    _exit(1);
  }
}

double round_ns_per_block(const std::string& dir, Mode mode, long blocks) {
  const std::string path = dir + "/sheaf-holds-bench-" + std::to_string(getpid());
  struct Remove {
    std::string path;
    ~Remove() { std::remove(path.c_str()); }
  } remove{path};
  sheaf::CreateOptions create;
  create.initial_size = std::uint64_t{1} << 30;
  sheaf::Heap heap = sheaf::Heap::create(path, create).value();
  Ring* ring = heap.construct<Ring>("ring")();
  std::fflush(nullptr);
  const pid_t consumer = fork();
  if (consumer < 0) throw std::runtime_error("fork");
  if (consumer == 0) consume(path, mode, blocks);
  // Bounded waits throughout: a consumer that died leaves us with an error, not a hang.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  const auto check_time = [&] {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(consumer, SIGKILL);
      throw std::runtime_error("the consumer did not keep up within 5 minutes");
    }
  };
  std::uint64_t session = 0;
  while ((session = ring->consumer_session.load()) == 0) check_time();

  const auto start = std::chrono::steady_clock::now();
  for (long sent = 0; sent < blocks; ++sent) {
    void* p = nullptr;
    if (mode == Mode::kHeld) {
      p = heap.allocate_held(kBlockBytes);
      heap.hand_over(p, session);
    } else {
      p = heap.allocate(kBlockBytes);
    }
    const std::uint64_t head = ring->head.load(std::memory_order_relaxed);
    while (head - ring->tail.load(std::memory_order_acquire) == kRingSlots) {
      relax();
      if ((head & 0xfff) == 0) check_time();
    }
    ring->slots[head % kRingSlots] = heap.offset_of(p);
    ring->head.store(head + 1, std::memory_order_release);
  }
  while (ring->tail.load(std::memory_order_acquire) != static_cast<std::uint64_t>(blocks)) {
    relax();
    check_time();
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  int status = 0;
  while (waitpid(consumer, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error("consumer failed");
  const sheaf::CheckReport report = heap.check();
  if (!report.ok()) throw std::runtime_error("heap unsound after the round: " + report.problems[0]);
  return std::chrono::duration<double, std::nano>(elapsed).count() / static_cast<double>(blocks);
}

struct Samples {
  std::vector<double> ns;
  double at(double quantile) const {
    std::vector<double> s = ns;
    std::sort(s.begin(), s.end());
    return s[static_cast<std::size_t>(quantile * static_cast<double>(s.size() - 1) + 0.5)];
  }
};

}  // namespace

int main(int argc, char** argv) {
  long blocks = 200'000;
  int rounds = 5;
  CLI::App app{"A block handed between two processes: held beside plain."};
  app.add_option("--blocks", blocks, "blocks sent per round")->check(CLI::PositiveNumber);
  app.add_option("--rounds,--benchmark_repetitions", rounds, "rounds of each")
      ->check(CLI::PositiveNumber);
  app.allow_extras();  // run.sh's other --benchmark_* flags
  CLI11_PARSE(app, argc, argv);
  const char* dir = std::getenv("SHEAF_BENCH_DIR");
  try {
    Samples held;
    Samples plain;
    for (int round = 0; round < rounds; ++round) {
      held.ns.push_back(round_ns_per_block(dir && *dir ? dir : "/dev/shm", Mode::kHeld, blocks));
      plain.ns.push_back(round_ns_per_block(dir && *dir ? dir : "/dev/shm", Mode::kPlain, blocks));
    }
    std::printf(
        "a 64-byte block from one process to another, ns per block "
        "(min / median / max of %d rounds of %ld)\n",
        rounds, blocks);
    std::printf("  held   (allocate_held + hand_over / release) %8.1f %8.1f %8.1f\n", held.at(0),
                held.at(0.5), held.at(1));
    std::printf("  plain  (allocate / deallocate)               %8.1f %8.1f %8.1f\n", plain.at(0),
                plain.at(0.5), plain.at(1));
    std::printf("held / plain (medians): %.2fx\n", held.at(0.5) / plain.at(0.5));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sheaf_holds_bench: %s\n", e.what());
    return 1;
  }
}
