// heap_recovery_test.cpp: recovery in proportion to what the dead process was doing.
//
// A process is killed (a real SIGKILL, at a store it was about to make:
// posix::inject_crash) at every instant of a fixed piece of work: named
// objects built and destroyed, small blocks through its thread cache (refills,
// frees, a cache giving blocks back), large blocks split, grown and freed
// under the lock, a held block taken, released and handed over. After each death the heap must be
// sound, every object whose construct returned intact, and no repair may have walked the heap: the
// dead holder's operation is undone from the undo log and its caches are freed from their ledgers
// (recovery.cpp).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "format.hpp"
#include "heap_test_util.hpp"
#include "posix.hpp"
#include "sheaf/heap.hpp"

namespace sheaf {
namespace {

using testing::Child;
using testing::Pipe;
using testing::TempDir;

std::uint8_t pattern(int round, std::size_t i) {
  return static_cast<std::uint8_t>(round * 31 + i * 7);
}
constexpr std::size_t kObjectBytes = 3000;

// What a child reports through its pipe, one int each: +round when the
// object of that round is built, -round - 1 before it destroys that round's
// object (which may then be there or not).
void work(Heap& heap, int round, int report, std::uint64_t receiver) {
  const auto say = [&](int what) {
    if (::write(report, &what, sizeof(what)) != sizeof(what)) _exit(3);
  };
  auto* bytes = heap.construct<std::uint8_t>("obj-" + std::to_string(round))[kObjectBytes](0);
  for (std::size_t i = 0; i < kObjectBytes; ++i) bytes[i] = pattern(round, i);
  say(round);
  std::vector<void*> small;
  for (int i = 0; i < 70; ++i) small.push_back(heap.allocate(496));  // refills, one bin
  for (void* p : small) heap.deallocate(p);  // past the cache's depth: gives half back
  void* big = heap.allocate(70000);          // under the lock: split (or growth)
  big = heap.reallocate(big, 140000);
  heap.deallocate(big);
  void* held = heap.allocate_held(200);  // holds: taken, released, handed over
  heap.hold(held);
  heap.release(held);
  heap.hand_over(held, receiver);
  if (round > 0) {
    say(-round);  // destroying round - 1's object
    heap.destroy<std::uint8_t>("obj-" + std::to_string(round - 1));
  }
  // A small object's block waits in this thread's cache after its destroy,
  // where the next construct of its size takes it back: both moves die at
  // every store too. (Not reported: a death leaves these or not, and nothing
  // else depends on them.)
  for (const char* prefix : {"small-", "again-"}) {
    const std::string name = prefix + std::to_string(round);
    heap.construct<std::uint8_t>(name)[200](1);
    heap.destroy<std::uint8_t>(name);
  }
}

TEST(HeapRecovery, ADeathAtEveryStoreIsUndoneWithoutAWalk) {
  TempDir dir;
  const std::string path = dir / "h";
  // Room enough that no allocation needs the sweep that merges free
  // neighbours: a walk itself, too big to log, so a death inside it is
  // repaired by walking (the only one here that would be).
  CreateOptions room;
  room.initial_size = 64 << 20;
  Heap::create(path, room).value();
  auto observer = std::make_unique<Heap>(Heap::open(path).value());

  std::set<int> present;     // rounds whose object must be there
  std::set<int> maybe_gone;  // rounds whose object was being destroyed
  int deaths = 0;
  bool finished = false;
  // Every point up to 250, then every 9th: the work has about 2,000 stores.
  for (int point = 0, round = 0; point < 5000 && !finished; point += point < 250 ? 1 : 9, ++round) {
    Pipe reports;
    const std::uint64_t receiver = observer->session();
    Child child([&] {
      reports.close_read();
      Heap heap = Heap::open(path).value();
      posix::inject_crash(point);
      work(heap, round, reports.write_end(), receiver);
      posix::inject_crash(-1);
    });
    reports.close_write();
    for (int what = 0; ::read(reports.read_end(), &what, sizeof(what)) == sizeof(what);) {
      if (what >= 0) {
        present.insert(what);
      } else {
        present.erase(-what - 1);
        maybe_gone.insert(-what - 1);
      }
    }
    const int code = child.wait_code();
    ASSERT_TRUE(code == 0 || code == 128 + SIGKILL) << "point " << point << ": code " << code;
    finished = code == 0;
    deaths += code != 0;

    // Every other round the observer reopens (a first open after deaths);
    // else it locks, and the next child's open reclaims the dead session.
    if (round % 2 == 1) {
      observer.reset();
      observer = std::make_unique<Heap>(Heap::open(path).value());
    }
    const HeapInfo info = observer->info();
    ASSERT_EQ(info.walked_recoveries, 0u) << "point " << point << ": a recovery walked";
    const CheckReport report = observer->check();
    ASSERT_TRUE(report.ok()) << "point " << point << ": " << report.problems.front();
    for (const std::string& repair : report.repairs) {
      ASSERT_TRUE(repair.find("cached by processes that are gone") != std::string::npos ||
                  repair.find("holds of processes that are gone") != std::string::npos)
          << "point " << point << ": " << repair;
      ASSERT_EQ(round % 2, 0) << "point " << point << ": a reopen left " << repair;
    }
    for (int r : present) {
      std::span<std::uint8_t> bytes =
          observer->find_array<std::uint8_t>("obj-" + std::to_string(r));
      ASSERT_EQ(bytes.size(), kObjectBytes) << "point " << point << ": object of round " << r;
      for (std::size_t i = 0; i < kObjectBytes; ++i) {
        ASSERT_EQ(bytes[i], pattern(r, i)) << "point " << point << ": object of round " << r;
      }
    }
  }
  EXPECT_TRUE(finished) << "the work never ran to its end";
  EXPECT_GT(deaths, 350);
  // Deaths inside the lock happened, and were repaired without a walk.
  EXPECT_GT(observer->info().recoveries, 10u);
  EXPECT_EQ(observer->info().walked_recoveries, 0u);
}

// An object whose constructor allocates more than the undo log can hold (so
// a death in it needs the walk), then dies.
struct DiesAfterOverflowingTheLog {
  explicit DiesAfterOverflowingTheLog(Heap* heap) {
    for (std::size_t i = 0; i < format::kUndoEntries; ++i) heap->allocate(2000);
    ::kill(::getpid(), SIGKILL);
  }
};

// The process that finds a death that needs the walk may itself die before
// its walk writes anything. Its own log must then say "walk" too: the next
// locker walks, rather than trusting a log that the dead recoverer had just
// emptied (the crash test once found 1,830 free blocks in no bin this way).
TEST(HeapRecovery, ARecovererKilledBeforeItsWalkLeavesTheWalkToTheNext) {
  TempDir dir;
  const std::string path = dir / "h";
  CreateOptions room;
  room.initial_size = 64 << 20;
  Heap::create(path, room).value();
  Heap observer = Heap::open(path).value();  // so that the children are not first openers
  observer.construct<int>("kept")(7);
  const std::uint64_t walked_before = observer.info().walked_recoveries;

  Child overflows([&] {
    Heap heap = Heap::open(path).value();
    heap.construct<DiesAfterOverflowingTheLog>("never")(&heap);
  });
  ASSERT_EQ(overflows.wait_code(), 128 + SIGKILL);
  Child recovers([&] {
    posix::inject_crash(0);  // at the first crash point: the start of the walk
    Heap heap = Heap::open(path).value();
  });
  ASSERT_EQ(recovers.wait_code(), 128 + SIGKILL);

  const CheckReport report = observer.check();
  ASSERT_TRUE(report.ok()) << report.problems.front();
  for (const std::string& repair : report.repairs) {
    EXPECT_NE(repair.find("cached by processes that are gone"), std::string::npos) << repair;
  }
  EXPECT_EQ(observer.info().walked_recoveries, walked_before + 1);
  EXPECT_EQ(observer.find<DiesAfterOverflowingTheLog>("never"), nullptr);
  EXPECT_EQ(*observer.find<int>("kept"), 7);
}

// A process killed while its thread cache hands a block out (the block says
// used, the cache's ledger still has it in flight) leaks nothing, even when
// the heap is walked rather than reclaimed from the ledgers.
TEST(HeapRecovery, AWalkFreesTheBlockADeadCacheHadInFlight) {
  TempDir dir;
  const std::string path = dir / "h";
  Heap::create(path).value();
  OpenOptions verify;  // a first open that walks the heap
  verify.verify = true;
  const auto used_after = [&](bool killed) {
    Child child([&] {
      Heap heap = Heap::open(path).value();
      heap.deallocate(heap.allocate(64));  // the block is now in this thread's cache
      // cached_allocate's stores: in_flight, slot, count, state, tag, and
      // in_flight cleared: die before the last.
      if (killed) posix::inject_crash(5);
      heap.allocate(64);
      posix::inject_crash(-1);
      if (killed) std::_Exit(4);  // the crash point moved: fail loudly
    });
    EXPECT_EQ(child.wait_code(), killed ? 128 + SIGKILL : 0);
    Heap heap = Heap::open(path, verify).value();
    EXPECT_TRUE(heap.check().ok());
    return heap.info().used;
  };
  // The first child keeps its block (its user leaked it); the second's never
  // reached its user, so the walk frees it: nothing more is used after it.
  const std::uint64_t after_a_clean_close = used_after(false);
  EXPECT_EQ(used_after(true), after_a_clean_close);
}

// A heap left unclean on a machine that restarted since (its boot id
// differs) may have lost pages the kernel never wrote back: its first opener
// walks it.
TEST(HeapRecovery, AnUncleanHeapFromAnotherBootIsWalked) {
  TempDir dir;
  const std::string path = dir / "h";
  {
    Heap heap = Heap::create(path).value();
    heap.construct<int>("kept")(7);
  }
  const auto set_state_word = [&](std::size_t field, std::uint64_t value) {
    posix::Fd fd = posix::open_file(path, O_RDWR, path);
    posix::pwrite_all(fd.get(), std::as_bytes(std::span(&value, 1)),
                      offsetof(format::Header, state) + field, path);
  };
  // Killed while open, on this boot: no walk.
  ASSERT_TRUE(testing::kill_after([&] {
    Heap heap = Heap::open(path).value();
    heap.deallocate(heap.allocate(100));  // a thread cache, with its ledger
    return heap;
  }));
  {
    Heap heap = Heap::open(path).value();
    EXPECT_EQ(heap.info().walked_recoveries, 0u);
    EXPECT_TRUE(heap.check().repairs.empty());
  }
  // Unclean, from another boot: walked.
  set_state_word(offsetof(format::State, clean), 0);
  set_state_word(offsetof(format::State, boot_hash), 12345);
  {
    Heap heap = Heap::open(path).value();
    EXPECT_EQ(heap.info().walked_recoveries, 1u);
    EXPECT_EQ(*heap.find<int>("kept"), 7);
    EXPECT_TRUE(heap.check().ok());
  }
}

// check() verifies the ledgers: blocks a dead session cached that none of
// its ledgers lists would never be found without a walk.
TEST(HeapRecovery, CheckFindsCachedBlocksMissingFromTheirLedgers) {
  TempDir dir;
  const std::string path = dir / "h";
  Heap::create(path).value();
  ASSERT_TRUE(testing::kill_after([&] {
    Heap heap = Heap::open(path).value();
    std::vector<void*> blocks;
    for (int i = 0; i < 10; ++i) blocks.push_back(heap.allocate(100));
    for (void* p : blocks) heap.deallocate(p);  // into this thread's cache
    return heap;
  }));
  OpenOptions read_only;  // registers nothing, so reclaims nothing
  read_only.read_only = true;
  {
    Heap heap = Heap::open(path, read_only).value();
    const CheckReport report = heap.check();
    ASSERT_TRUE(report.ok()) << report.problems.front();
    ASSERT_EQ(report.repairs.size(), 1u);
    EXPECT_NE(report.repairs[0].find("cached by processes that are gone"), std::string::npos);
  }
  // Forget the ledger's counts.
  {
    posix::Fd fd = posix::open_file(path, O_RDWR, path);
    std::uint64_t ledgers[format::kMaxSessions] = {};
    posix::pread_all(fd.get(), std::as_writable_bytes(std::span(ledgers)),
                     offsetof(format::Header, state) + offsetof(format::State, session_ledgers),
                     path);
    const std::uint64_t* ledger = std::find_if(std::begin(ledgers), std::end(ledgers),
                                               [](std::uint64_t offset) { return offset != 0; });
    ASSERT_NE(ledger, std::end(ledgers));
    const std::vector<std::uint32_t> zeros(format::kCacheBins, 0);
    posix::pwrite_all(fd.get(), std::as_bytes(std::span(zeros)),
                      *ledger + format::kBlockHeaderBytes + offsetof(format::CacheLedger, counts),
                      path);
  }
  Heap heap = Heap::open(path, read_only).value();
  const CheckReport report = heap.check();
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.problems.front().find("are in none of its ledgers"), std::string::npos)
      << report.problems.front();
}

}  // namespace
}  // namespace sheaf
