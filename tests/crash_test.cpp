// crash_test.cpp: writers SIGKILLed at random instants, the heap checked after each kill.
//
// Each round starts two writer processes on one heap. They construct named
// byte arrays of random length and content, churn anonymous blocks (so the
// heap splits, merges and grows), and destroy some of their own objects; they
// report through a pipe every construct and destroy that returned. The test
// kills both at random instants, most often while one holds the heap lock,
// and then checks that the heap is sound and that every object whose
// construct returned is present with the right bytes.
//
// The test process keeps the heap open throughout, so the repairs it sees are
// done live, by the next process to take the lock; every tenth round it closes
// and reopens, so the first-opener repair is exercised too.
//
// SHEAF_CRASH_KILLS sets the number of rounds (default 100, two kills each);
// tests/soak.sh runs thousands.
#include <fcntl.h>
#include <poll.h>

#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "heap_test_util.hpp"
#include "sheaf/heap.hpp"

namespace sheaf {
namespace {

using testing::TempDir;

// What a writer reports; each message is written whole (< PIPE_BUF).
struct Report {
  enum Kind : std::uint32_t { kCreated, kDestroying, kDestroyed } kind;
  std::uint32_t length;
  char name[48];
};

std::uint8_t pattern(const std::string& name, std::size_t i) {
  return static_cast<std::uint8_t>(name.back() * 7 + name.size() + i * 131);
}

[[noreturn]] void writer(const std::string& path, const std::string& prefix, int report_fd,
                         unsigned seed) {
  try {
    Heap heap = Heap::open(path).value();
    std::mt19937 random(seed);
    std::vector<std::string> mine;
    std::vector<void*> scratch;
    auto send = [&](Report::Kind kind, const std::string& name, std::uint32_t length) {
      Report report{kind, length, {}};
      std::snprintf(report.name, sizeof(report.name), "%s", name.c_str());
      if (write(report_fd, &report, sizeof(report)) != sizeof(report)) _exit(3);
    };
    for (int i = 0; i < 1000000; ++i) {  // bounded; the test kills us long before
      const std::string name = prefix + "-" + std::to_string(i);
      const std::uint32_t length = 1 + random() % 5000;
      auto* bytes = heap.construct<std::uint8_t>(name)[length](0);
      for (std::uint32_t b = 0; b < length; ++b) bytes[b] = pattern(name, b);
      heap.exclusive([] {});  // publish the bytes (network mode flushes here)
      send(Report::kCreated, name, length);
      mine.push_back(name);

      scratch.push_back(
          heap.allocate(random() % 3 ? 1 + random() % 1000 : 4096 + random() % 60000));
      if (scratch.size() > 8) {
        const std::size_t victim = random() % scratch.size();
        heap.deallocate(scratch[victim]);
        scratch.erase(scratch.begin() + static_cast<std::ptrdiff_t>(victim));
      }
      if (mine.size() > 20 && random() % 2 == 0) {
        const std::string victim = mine[random() % mine.size()];
        send(Report::kDestroying, victim, 0);
        heap.destroy<std::uint8_t>(victim);
        send(Report::kDestroyed, victim, 0);
        mine.erase(std::find(mine.begin(), mine.end(), victim));
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "writer %s: %s\n", prefix.c_str(), e.what());
    _exit(1);
  }
  _exit(0);
}

struct Writer {
  pid_t pid = -1;
  int reports = -1;
};

Writer start_writer(const std::string& path, const std::string& prefix, unsigned seed) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    writer(path, prefix, fds[1], seed);
  }
  close(fds[1]);
  return {pid, fds[0]};
}

int crash_rounds() {
  const char* text = std::getenv("SHEAF_CRASH_KILLS");
  int kills = text ? std::atoi(text) : 200;
  return std::max(1, kills / 2);
}

TEST(HeapCrash, SigkillAtRandomInstantsLosesNothingCommitted) {
  TempDir dir;
  const std::string path = dir / "crash.heap";
  CreateOptions options;
  options.initial_size = 256 << 10;  // small, so writers grow it often
  auto heap = std::make_unique<Heap>(Heap::create(path, options).value());

  std::map<std::string, std::uint32_t> committed;  // name -> length
  std::set<std::string> maybe_gone;                // a destroy was under way when killed
  std::mt19937 random(12345);
  const int rounds = crash_rounds();
  int recovered_live = 0;
  for (int round = 0; round < rounds; ++round) {
    Writer writers[2] = {
        start_writer(path, "r" + std::to_string(round) + "a", random()),
        start_writer(path, "r" + std::to_string(round) + "b", random()),
    };
    // Let them get going, then kill each at its own random instant.
    std::this_thread::sleep_for(std::chrono::microseconds(2000 + random() % 8000));
    kill(writers[0].pid, SIGKILL);
    std::this_thread::sleep_for(std::chrono::microseconds(random() % 3000));
    kill(writers[1].pid, SIGKILL);

    for (Writer& w : writers) {
      int status = 0;
      waitpid(w.pid, &status, 0);
      ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
          << "writer ended on its own (status " << status << ") in round " << round;
      Report report{};
      while (read(w.reports, &report, sizeof(report)) == sizeof(report)) {
        switch (report.kind) {
          case Report::kCreated:
            committed[report.name] = report.length;
            break;
          case Report::kDestroying:
            maybe_gone.insert(report.name);
            break;
          case Report::kDestroyed:
            committed.erase(report.name);
            maybe_gone.erase(report.name);
            break;
        }
      }
      close(w.reports);
    }

    if (round % 10 == 9) {  // the first process to open it repairs it
      heap.reset();
      auto reopened = Heap::open(path);
      ASSERT_TRUE(reopened.ok()) << "round " << round << ": " << reopened.error().what();
      heap = std::make_unique<Heap>(std::move(reopened).value());
    }
    const std::uint64_t before = heap->info().recoveries;
    CheckReport report = heap->check();
    ASSERT_TRUE(report.ok()) << "round " << round << ": " << report.problems.front();
    // Recovery repaired everything a death inside the lock leaves; what a
    // writer killed outside it cached waits for the next opener or locker
    // that finds its session gone.
    for (const std::string& repair : report.repairs) {
      EXPECT_NE(repair.find("cached by processes that are gone"), std::string::npos)
          << "round " << round << ": " << repair;
    }
    recovered_live += heap->info().recoveries > before;
    for (const auto& [name, length] : committed) {
      std::span<std::uint8_t> bytes = heap->find_array<std::uint8_t>(name);
      if (bytes.empty() && maybe_gone.count(name)) continue;
      ASSERT_EQ(bytes.size(), length) << "round " << round << ": object " << name;
      std::uint32_t wrong = 0;
      while (wrong < length && bytes[wrong] == pattern(name, wrong)) ++wrong;
      ASSERT_EQ(wrong, length) << "round " << round << ": object " << name << " damaged";
    }
    // Keep the heap from growing without bound: retire old objects.
    while (committed.size() > 3000) {
      heap->destroy<std::uint8_t>(committed.begin()->first);
      committed.erase(committed.begin());
    }
  }
  const HeapInfo info = heap->info();
  std::printf("%d rounds, %d kills: %llu repairs after a death inside the lock, %zu objects\n",
              rounds, rounds * 2, static_cast<unsigned long long>(info.recoveries),
              committed.size());
  // The writers spend most of their time inside the lock; if no kill landed
  // there, the test did not test what it claims.
  EXPECT_GT(info.recoveries, 0u);
}

}  // namespace
}  // namespace sheaf
