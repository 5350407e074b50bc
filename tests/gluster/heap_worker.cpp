// heap_worker.cpp: one "host"'s writer for the cross-host heap test.
//
//   sheaf_gluster_worker init HEAP            create the heap with its shared objects
//   sheaf_gluster_worker add HEAP ID ROUNDS   ROUNDS times, under the heap lock: bump
//                                             the shared counter and this worker's
//                                             counter, append ID*1000000+i to the log
//   sheaf_gluster_worker verify HEAP WORKERS ROUNDS
//                                             every update is there exactly once
//   sheaf_gluster_worker turns HEAP ID PARTIES TURNS
//                                             strict turns: loop on exclusive()
//                                             until turn % PARTIES == ID, read the
//                                             1 MiB blob, take the turn; TURNS times.
//                                             Fails if one wait lasts over 5 s.
//   sheaf_gluster_worker observe HEAP SECONDS once a second, read the turn under
//                                             the lock, allowed 5 s; fail on a stall
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "sheaf/containers.hpp"
#include "sheaf/heap.hpp"

namespace {

using Log = sheaf::vector<std::int64_t>;

int fail(const std::string& why) {
  std::fprintf(stderr, "heap_worker: %s\n", why.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string verb = argc > 2 ? argv[1] : "";
    const std::string path = argc > 2 ? argv[2] : "";
    if (verb == "init" && argc == 3) {
      sheaf::Heap heap = sheaf::Heap::create(path).value();
      heap.construct<std::int64_t>("counter")(0);
      heap.construct<Log>("log")(heap);
      heap.construct<std::int64_t>("turn")(0);
      heap.construct<char>("blob")[std::size_t{1} << 20]('b');
      std::printf("created %s in %s mode\n", path.c_str(), sheaf::lock_mode_name(heap.mode()));
      return 0;
    }
    if (verb == "add" && argc == 5) {
      const int id = std::atoi(argv[3]);
      const int rounds = std::atoi(argv[4]);
      sheaf::Heap heap = sheaf::Heap::open(path).value();
      if (heap.mode() != sheaf::LockMode::kNetwork) return fail("expected network mode");
      auto* counter = heap.find<std::int64_t>("counter");
      auto* mine = heap.find_or_construct<std::int64_t>("worker-" + std::to_string(id))(0);
      auto* log = heap.find<Log>("log");
      for (int i = 0; i < rounds; ++i) {
        heap.exclusive([&] {
          ++*counter;
          ++*mine;
          log->push_back(std::int64_t{id} * 1000000 + i);
        });
      }
      return 0;
    }
    if (verb == "verify" && argc == 5) {
      const int workers = std::atoi(argv[3]);
      const int rounds = std::atoi(argv[4]);
      sheaf::Heap heap = sheaf::Heap::open(path).value();
      return heap.shared([&]() -> int {
        const std::int64_t expected = std::int64_t{workers} * rounds;
        const std::int64_t counter = *heap.find<std::int64_t>("counter");
        const Log& log = *heap.find<Log>("log");
        std::printf("counter %lld of %lld, log %zu entries\n", static_cast<long long>(counter),
                    static_cast<long long>(expected), log.size());
        if (counter != expected) return fail("lost counter updates");
        if (static_cast<std::int64_t>(log.size()) != expected) return fail("lost log entries");
        std::vector<std::int64_t> sorted(log.begin(), log.end());
        std::sort(sorted.begin(), sorted.end());
        if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
          return fail("duplicate log entries");
        }
        for (int id = 1; id <= workers; ++id) {
          auto* mine = heap.find<std::int64_t>("worker-" + std::to_string(id));
          if (!mine || *mine != rounds) {
            return fail("worker " + std::to_string(id) + " counter is " +
                        (mine ? std::to_string(*mine) : "missing") + ", not " +
                        std::to_string(rounds));
          }
        }
        return 0;
      });
    }
    if (verb == "turns" && argc == 6) {
      // Strict turns between processes on different hosts: the pattern that
      // once left every process waiting in F_OFD_SETLKW for 12-20 s.
      using Clock = std::chrono::steady_clock;
      const int id = std::atoi(argv[3]);
      const int parties = std::atoi(argv[4]);
      const int turns = std::atoi(argv[5]);
      sheaf::Heap heap = sheaf::Heap::open(path).value();
      auto* turn = heap.find<std::int64_t>("turn");
      const auto blob = heap.find_array<char>("blob");
      long checksum = 0;
      auto last = Clock::now();
      double longest = 0;
      for (int taken = 0; taken < turns;) {
        const bool mine = heap.exclusive([&] {
          if (*turn % parties != id) return false;
          for (std::size_t i = 0; i < blob.size(); i += 4096) checksum += blob[i];
          ++*turn;
          return true;
        });
        const double waited = std::chrono::duration<double>(Clock::now() - last).count();
        if (mine) {
          ++taken;
          longest = std::max(longest, waited);
          last = Clock::now();
        }
        if (waited > 5)
          return fail("worker " + std::to_string(id) + " waited " + std::to_string(waited) +
                      " s for its turn");
      }
      std::printf("worker %d: %d turns, longest wait %.3f s (checksum %ld)\n", id, turns, longest,
                  checksum);
      return 0;
    }
    if (verb == "observe" && argc == 4) {
      const int seconds = std::atoi(argv[3]);
      sheaf::Heap heap = sheaf::Heap::open(path).value();
      auto* turn = heap.find<std::int64_t>("turn");
      std::int64_t seen = -1;
      for (int i = 0; i < seconds; ++i) {
        std::this_thread::sleep_for(std::chrono::seconds(1));
        const std::int64_t now = heap.exclusive_for(std::chrono::seconds(5), [&] { return *turn; });
        std::printf("observer: turn %lld\n", static_cast<long long>(now));
        seen = now;
      }
      return seen >= 0 ? 0 : fail("observer saw nothing");
    }
    return fail(
        "usage: init HEAP | add HEAP ID ROUNDS | verify HEAP WORKERS ROUNDS | "
        "turns HEAP ID PARTIES TURNS | observe HEAP SECONDS");
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}
