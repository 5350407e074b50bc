// heap_robustness_test.cpp: the heap under misuse and failure: errors that
// must not be dropped, locks that must not leak, a closed or forked heap,
// races between threads, timed locks, growth near a full disk. Each test
// failed (or hung, or crashed under a sanitizer) before the fix it guards.
//
// Faults are injected through the one POSIX layer (heap/src/posix.hpp).
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <thread>

#include "format.hpp"
#include "heap_test_util.hpp"
#include "posix.hpp"
#include "sheaf/containers.hpp"
#include "sheaf/heap.hpp"

namespace sheaf {
namespace {

using namespace std::chrono_literals;
using testing::Child;
using testing::Pipe;
using testing::run_in_child;
using testing::TempDir;
using testing::TmpfsMount;

// Clears injected faults however the test ends.
struct FaultGuard {
  ~FaultGuard() { posix::clear_faults(); }
};

Heap network_heap(const std::string& path) {
  CreateOptions options;
  options.initial_size = 1 << 20;
  options.open.mode = LockMode::kNetwork;
  return Heap::create(path, options).value();
}

// A heap of 64 KiB that grows: small files keep byte-for-byte comparisons cheap.
Heap small_heap(const std::string& path) {
  CreateOptions options;
  options.initial_size = 64 << 10;
  return Heap::create(path, options).value();
}

void expect_sound(const Heap& heap) {
  const CheckReport report = heap.check();
  for (const auto& problem : report.problems) ADD_FAILURE() << problem;
  for (const auto& repair : report.repairs) ADD_FAILURE() << "repair due: " << repair;
}

// In network mode every call flushes to the server when it leaves the lock;
// allocate() and deallocate() once dropped a failed flush.
TEST(HeapLockGuard, FailedFlushIsReportedByEveryCall) {
  TempDir dir;
  FaultGuard faults;
  Heap heap = network_heap(dir / "h");
  void* kept = heap.allocate(100);

  posix::inject_fault(posix::Op::kMsync, EIO);
  try {
    heap.allocate(100);
    ADD_FAILURE() << "allocate() hid a failed flush";
  } catch (const Error& e) {
    EXPECT_EQ(e.sys_errno(), EIO) << e.message();
    EXPECT_NE(e.message().find(dir / "h"), std::string::npos) << e.message();
  }
  posix::inject_fault(posix::Op::kFsync, EIO);
  EXPECT_THROW(heap.deallocate(kept), Error);
  posix::inject_fault(posix::Op::kMsync, EIO);
  EXPECT_THROW(heap.construct<int>("x")(1), Error);
  posix::inject_fault(posix::Op::kMsync, EIO);
  EXPECT_THROW(heap.exclusive([] {}), Error);
  // The lock was released every time: the heap goes on working.
  EXPECT_NO_THROW(heap.exclusive([] {}));
  expect_sound(heap);
}

TEST(HeapLockGuard, FailedFlushAtCloseIsReported) {
  TempDir dir;
  FaultGuard faults;
  Heap heap = network_heap(dir / "h");
  posix::inject_fault(posix::Op::kMsync, EIO);
  Result<void> closed = heap.close();
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().sys_errno(), EIO);
  EXPECT_FALSE(heap.is_open());
}

// A byte-range lock that fails while close() holds the heap lock once left
// the robust mutex held by a live thread: every other process blocked for ever.
TEST(HeapLockGuard, LockIsReleasedWhenClosingFails) {
  TempDir dir;
  FaultGuard faults;
  const std::string path = dir / "h";
  Heap heap = Heap::create(path).value();
  {
    Heap second = Heap::open(path).value();  // so the closer is not the last
    // Closing unlocks its session byte, then asks for the presence lock:
    // let the first through and fail the second.
    posix::inject_fault(posix::Op::kLock, EIO, 1, 1);
    EXPECT_FALSE(second.close().ok());
    posix::clear_faults();
  }
  EXPECT_EQ(run_in_child([&] {
              OpenOptions options;
              options.lock_timeout = 2s;
              Heap other = Heap::open(path, options).value();
              other.exclusive([] {});
            }),
            0);
  EXPECT_NO_THROW(heap.exclusive_for(2s, [] {}));
}

// The first opener of a heap that was not closed cleanly repairs it under
// the lock. A repair that failed (here: it must rebuild the name table in a
// heap that is full and may not grow) once left the lock held for ever.
TEST(HeapLockGuard, LockIsReleasedWhenTheRepairAtOpenFails) {
  TempDir dir;
  const std::string path = dir / "h";
  {
    CreateOptions options;
    options.initial_size = 1 << 20;
    options.max_size = 1 << 20;
    Heap heap = Heap::create(path, options).value();
    for (int i = 0; i < 100; ++i) heap.construct<std::int64_t>("n" + std::to_string(i))(i);
    heap.exclusive([&] {  // fill every byte, so the repair finds no room
      for (std::size_t bytes = 64 << 10; bytes >= 16;) {
        try {
          heap.allocate(bytes);
        } catch (const Error&) {
          bytes /= 2;
        }
      }
    });
    ASSERT_TRUE(heap.close().ok());
  }
  // No name table, and its block kept as a used one, so that the repair
  // needs room for a new table and there is none.
  {
    posix::Fd fd = posix::open_file(path, O_RDWR, path);
    const std::uint64_t where =
        offsetof(format::Header, state) + offsetof(format::State, name_table);
    std::uint64_t table = 0;
    posix::pread_all(fd.get(), std::as_writable_bytes(std::span(&table, 1)), where, path);
    ASSERT_NE(table, 0u);
    format::BlockHeader header{};
    posix::pread_all(fd.get(), std::as_writable_bytes(std::span(&header, 1)), table, path);
    header.size_and_state = header.size() | format::kUsed;
    posix::pwrite_all(fd.get(), std::as_bytes(std::span(&header, 1)), table, path);
    const std::uint64_t none = 0;
    posix::pwrite_all(fd.get(), std::as_bytes(std::span(&none, 1)), where, path);
    // Left unclean by a machine that restarted since: the first opener walks
    // and repairs.
    const std::uint64_t state = offsetof(format::Header, state);
    posix::pwrite_all(fd.get(), std::as_bytes(std::span(&none, 1)),
                      state + offsetof(format::State, clean), path);
    posix::pwrite_all(fd.get(), std::as_bytes(std::span(&none, 1)),
                      state + offsetof(format::State, boot_hash), path);
  }
  auto failed = Heap::open(path);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().code(), Errc::kOutOfSpace) << failed.error().message();
  // Another process gets an answer, not a lock held by nobody alive.
  EXPECT_EQ(run_in_child([&] {
              OpenOptions options;
              options.lock_timeout = 3s;
              auto again = Heap::open(path, options);
              if (again.ok() || again.error().code() != Errc::kOutOfSpace) std::_Exit(5);
            }),
            0);
}

TEST(HeapUse, AfterCloseOrMoveEveryCallThrows) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  void* p = heap.allocate(64);
  Heap moved_to = std::move(heap);
  const auto expect_refused = [&](Heap& h) {
    const auto refused = [](auto&& call) {
      try {
        call();
        ADD_FAILURE() << "a call on a heap that is not open went through";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), Errc::kInvalidArgument);
        EXPECT_NE(e.message().find("close"), std::string::npos) << e.message();
      }
    };
    refused([&] { h.allocate(8); });
    refused([&] { h.deallocate(p); });
    refused([&] { h.reallocate(p, 100); });
    refused([&] { h.usable_size(p); });
    refused([&] { h.construct<int>("x")(1); });
    refused([&] { h.find_or_construct<int>("x")(1); });
    refused([&] { h.find<int>("x"); });
    refused([&] { h.destroy<int>("x"); });
    refused([&] { h.erase("x"); });
    refused([&] { h.object("x"); });
    refused([&] { h.objects(); });
    refused([&] { h.object_bytes("x"); });
    refused([&] { h.offset_of(p); });
    refused([&] { h.pointer_at(16384); });
    refused([&] { h.info(); });
    refused([&] { h.check(); });
    refused([&] { h.exclusive([] {}); });
    refused([&] { h.shared([] {}); });
    EXPECT_FALSE(h.contains(p));
    EXPECT_EQ(h.base(), nullptr);
  };
  expect_refused(heap);  // moved from
  ASSERT_TRUE(moved_to.close().ok());
  expect_refused(moved_to);            // closed
  EXPECT_TRUE(moved_to.close().ok());  // closing twice is harmless
}

// The Constructor once kept a string_view of the name: a name built in the
// call and gone by the time the Constructor ran was read after its end.
TEST(HeapUse, ConstructorKeepsItsOwnCopyOfTheName) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  auto constructor = heap.construct<std::int64_t>(std::string(200, 'n'));
  std::int64_t* value = constructor(42);
  ASSERT_NE(value, nullptr);
  EXPECT_EQ(heap.find<std::int64_t>(std::string(200, 'n')), value);
}

TEST(HeapUse, ReallocateKeepsTheAlignment) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  for (std::size_t alignment : {64u, 256u, 4096u}) {
    void* p = heap.allocate(100, alignment);
    heap.allocate(100);  // so the block cannot grow in place
    void* moved = heap.reallocate(p, 200000);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(moved) % alignment, 0u) << alignment;
  }
  expect_sound(heap);
}

// A Heap used in a child after fork() handed the same blocks to parent and
// child. Now the child gets a clear error, and the parent never notices.
TEST(HeapFork, ChildIsRefusedAndTheParentGoesOn) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  auto* names = heap.construct<vector<string>>("names")(heap);
  void* block = heap.allocate(64);  // this thread now has a cache
  EXPECT_EQ(run_in_child([&] {
              const auto refused = [](auto&& call) {
                try {
                  call();
                  std::_Exit(10);
                } catch (const Error& e) {
                  if (e.message().find("fork") == std::string::npos) std::_Exit(11);
                }
              };
              refused([&] { heap.allocate(64); });
              refused([&] { heap.deallocate(block); });
              refused([&] { heap.find<int>("x"); });
              refused([&] { names->emplace_back("from the child", heap); });  // the Allocator
              // Opening again in the child works.
              Heap again = Heap::open(dir / "h").value();
              again.construct<int>("child")(7);
              // Closing the inherited Heap leaves the parent's session alone
              // (it runs at exit too).
              if (!heap.close().ok()) std::_Exit(12);
            }),
            0);
  EXPECT_EQ(heap.info().sessions, 1u);
  heap.deallocate(block);
  names->emplace_back("from the parent", heap);
  EXPECT_EQ(*heap.find<int>("child"), 7);
  expect_sound(heap);
}

// A lock held by another process: exclusive_for gives up in bounded time
// and names the holder.
void expect_timed_lock(LockMode mode) {
  TempDir dir;
  const std::string path = dir / "h";
  CreateOptions options;
  options.open.mode = mode;
  Heap heap = Heap::create(path, options).value();
  Pipe inside, leave;
  Child holder([&] {
    OpenOptions open;
    open.mode = mode;
    Heap mine = Heap::open(path, open).value();
    mine.exclusive([&] {
      char byte = 1;
      if (::write(inside.write_end(), &byte, 1) != 1) std::_Exit(3);
      (void)::read(leave.read_end(), &byte, 1);  // until the parent says so
    });
  });
  char byte = 0;
  ASSERT_EQ(::read(inside.read_end(), &byte, 1), 1);
  const auto started = std::chrono::steady_clock::now();
  try {
    heap.exclusive_for(300ms, [] { ADD_FAILURE() << "ran without the lock"; });
    ADD_FAILURE() << "the lock was granted while another process held it";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kTimedOut);
    EXPECT_NE(e.message().find("pid " + std::to_string(holder.pid())), std::string::npos)
        << e.message();
    EXPECT_NE(e.message().find("host"), std::string::npos) << e.message();
  }
  const auto waited = std::chrono::steady_clock::now() - started;
  EXPECT_GE(waited, 300ms);
  EXPECT_LT(waited, 3s);
  byte = 1;
  ASSERT_EQ(::write(leave.write_end(), &byte, 1), 1);
  EXPECT_EQ(holder.wait_code(), 0);
  EXPECT_NO_THROW(heap.exclusive_for(5s, [] {}));
}

TEST(HeapTimedLock, LocalModeNamesTheHolder) {
  expect_timed_lock(LockMode::kLocal);
}

TEST(HeapTimedLock, NetworkModeNamesTheHolder) {
  expect_timed_lock(LockMode::kNetwork);
}

TEST(HeapTimedLock, OpenOptionAppliesToEveryCall) {
  TempDir dir;
  const std::string path = dir / "h";
  Heap heap = Heap::create(path).value();
  Pipe inside, leave;
  Child holder([&] {
    Heap mine = Heap::open(path).value();
    mine.exclusive([&] {
      char byte = 1;
      if (::write(inside.write_end(), &byte, 1) != 1) std::_Exit(3);
      (void)::read(leave.read_end(), &byte, 1);
    });
  });
  char byte = 0;
  ASSERT_EQ(::read(inside.read_end(), &byte, 1), 1);
  OpenOptions options;
  options.lock_timeout = 200ms;
  auto opened = Heap::open(path, options);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().code(), Errc::kTimedOut) << opened.error().message();
  byte = 1;
  ASSERT_EQ(::write(leave.write_end(), &byte, 1), 1);
  EXPECT_EQ(holder.wait_code(), 0);
}

// Opening while another process grows the heap once read the file's size
// before the header and called a healthy heap truncated.
TEST(HeapGrowth, OpeningWhileAnotherProcessGrowsIt) {
  TempDir dir;
  const std::string path = dir / "h";
  Heap heap = small_heap(path);
  Child grower([&] {
    Heap mine = Heap::open(path).value();
    for (int i = 0; i < 4000; ++i) mine.allocate(std::size_t{64} << 10);  // bounded: 256 MiB
  });
  int opened = 0;
  for (int i = 0; i < 300; ++i) {
    auto other = Heap::open(path);
    ASSERT_TRUE(other.ok()) << other.error().message();
    ++opened;
  }
  EXPECT_EQ(grower.wait_code(), 0);
  EXPECT_EQ(opened, 300);
}

// Growth asked for max(request, the heap's size) and failed when the disk
// had room for the request but not for that.
TEST(HeapGrowth, FallsBackToWhatTheRequestNeedsWhenTheDiskIsNearlyFull) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
  TempDir dir;
  TmpfsMount mount(dir / "fs", "32m");
  ASSERT_TRUE(mount.ok()) << mount.why();
  CreateOptions options;
  options.initial_size = 20 << 20;
  Heap heap = Heap::create(dir / "fs/h", options).value();
  // 20 MiB used of 32: 12 MiB free, less than the 20 MiB the heap would
  // like to grow by, more than a 4 MiB request needs.
  heap.allocate(19 << 20);
  EXPECT_NO_THROW(heap.allocate(4 << 20));
  expect_sound(heap);
}

// The thread-cache registry and State::size were read by one thread while
// another wrote them; these run under ThreadSanitizer in CI.
TEST(HeapLocking, CloseWhileAnotherThreadUsesItsCacheOfAnotherHeap) {
  TempDir dir;
  for (int round = 0; round < 20; ++round) {
    Heap first = Heap::create(dir / ("a" + std::to_string(round))).value();
    Heap second = Heap::create(dir / ("b" + std::to_string(round))).value();
    std::atomic<bool> cached{false};
    std::thread user([&] {
      first.deallocate(first.allocate(32));  // a cache of `first` in this thread
      cached = true;
      for (int i = 0; i < 2000; ++i) second.deallocate(second.allocate(32));  // scans its caches
    });
    while (!cached) std::this_thread::yield();
    ASSERT_TRUE(first.close().ok());
    user.join();
  }
}

TEST(HeapLocking, GrowthWhileAnotherThreadResolvesOffsets) {
  TempDir dir;
  Heap heap = small_heap(dir / "h");
  void* first = heap.allocate(64);
  const std::uint64_t offset = heap.offset_of(first);
  std::atomic<bool> done{false};
  std::thread resolver([&] {
    while (!done) {
      EXPECT_EQ(heap.pointer_at(offset), first);
      EXPECT_TRUE(heap.contains(first));
    }
  });
  for (int i = 0; i < 200; ++i) heap.allocate(64 << 10);  // grows many times
  done = true;
  resolver.join();
}

// Reads one byte from `fd`, waiting at most `timeout`; false if none came.
bool read_byte_within(int fd, std::chrono::milliseconds timeout) {
  pollfd ready{fd, POLLIN, 0};
  char byte = 0;
  return ::poll(&ready, 1, static_cast<int>(timeout.count())) == 1 && ::read(fd, &byte, 1) == 1;
}

// shared() is a reader lock between processes: two readers are inside at
// once (before, the second waited for the first, so this timed out).
TEST(HeapLocking, ReadersInTwoProcessesDoNotExcludeEachOther) {
  TempDir dir;
  const std::string path = dir / "h";
  Heap heap = Heap::create(path).value();
  heap.construct<int>("value")(5);
  Pipe opened, go, child_inside;
  // Opening registers a session, which writes: the child opens before the
  // parent's section begins.
  Child reader([&] {
    Heap mine = Heap::open(path).value();
    char byte = 1;
    if (::write(opened.write_end(), &byte, 1) != 1) std::_Exit(3);
    if (::read(go.read_end(), &byte, 1) != 1) std::_Exit(3);
    mine.shared([&] {
      EXPECT_EQ(*mine.find<int>("value"), 5);
      if (::write(child_inside.write_end(), &byte, 1) != 1) std::_Exit(3);
    });
  });
  ASSERT_TRUE(read_byte_within(opened.read_end(), 10s));
  bool both_inside = false;
  heap.shared([&] {
    char byte = 1;
    ASSERT_EQ(::write(go.write_end(), &byte, 1), 1);
    both_inside = read_byte_within(child_inside.read_end(), 10s);
  });
  EXPECT_TRUE(both_inside) << "the second reader waited for the first";
  EXPECT_EQ(reader.wait_code(), 0);
}

// A writer waits for the readers inside, and readers that come after it wait
// for it; a writer with a time limit names the reader it waited for.
TEST(HeapLocking, AWriterWaitsForTheReadersInside) {
  TempDir dir;
  const std::string path = dir / "h";
  Heap heap = Heap::create(path).value();
  int* value = heap.construct<int>("value")(0);
  Pipe inside, leave, seen;
  Child reader([&] {
    Heap mine = Heap::open(path).value();
    mine.shared([&] {
      const int* mine_value = mine.find<int>("value");
      char byte = 1;
      if (::write(inside.write_end(), &byte, 1) != 1) std::_Exit(3);
      (void)::read(leave.read_end(), &byte, 1);
      const int at_the_end = *mine_value;  // no writer may have run meanwhile
      if (::write(seen.write_end(), &at_the_end, sizeof(at_the_end)) != sizeof(at_the_end)) {
        std::_Exit(3);
      }
    });
  });
  leave.close_read();
  ASSERT_TRUE(read_byte_within(inside.read_end(), 10s));
  try {
    heap.exclusive_for(200ms, [&] { *value = 1; });
    ADD_FAILURE() << "a writer went in while a reader was inside";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kTimedOut);
    EXPECT_NE(e.message().find("pid " + std::to_string(reader.pid())), std::string::npos)
        << e.message();
    EXPECT_NE(e.message().find("shared section"), std::string::npos) << e.message();
  }
  // Now one without a limit, while the reader is still inside; it leaves
  // 300 ms later.
  std::thread letter_go([&] {
    std::this_thread::sleep_for(300ms);
    char byte = 1;
    if (::write(leave.write_end(), &byte, 1) != 1) std::_Exit(3);
  });
  const auto started = std::chrono::steady_clock::now();
  heap.exclusive([&] { *value = 2; });
  EXPECT_GE(std::chrono::steady_clock::now() - started, 250ms);
  letter_go.join();
  int at_the_end = -1;
  ASSERT_EQ(::read(seen.read_end(), &at_the_end, sizeof(at_the_end)),
            static_cast<ssize_t>(sizeof(at_the_end)));
  EXPECT_EQ(at_the_end, 0);
  EXPECT_EQ(reader.wait_code(), 0);
  EXPECT_EQ(*value, 2);
}

// A reader killed inside its section leaves its count behind; the next writer
// finds its session gone and goes in.
TEST(HeapLocking, AReaderKilledInsideDoesNotBlockWriters) {
  TempDir dir;
  const std::string path = dir / "h";
  Heap heap = Heap::create(path).value();
  Pipe inside;
  Child reader([&] {
    Heap mine = Heap::open(path).value();
    mine.shared([&] {
      char byte = 1;
      if (::write(inside.write_end(), &byte, 1) != 1) std::_Exit(3);
      ::pause();
    });
  });
  inside.close_write();
  ASSERT_TRUE(read_byte_within(inside.read_end(), 10s));
  reader.kill();
  reader.wait();
  const auto started = std::chrono::steady_clock::now();
  heap.exclusive_for(10s, [&] { heap.construct<int>("after")(1); });
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
  EXPECT_TRUE(heap.check().ok());
}

// generation() is read without the lock: it answers while another thread
// sits in an exclusive section, and moves when that section ends.
TEST(HeapLocking, GenerationIsReadWithoutTheLock) {
  for (LockMode mode : {LockMode::kLocal, LockMode::kNetwork}) {
    TempDir dir;
    CreateOptions options;
    options.open.mode = mode;
    Heap heap = Heap::create(dir / "h", options).value();
    const std::uint64_t before = heap.generation();
    EXPECT_EQ(before, heap.info().generation);
    std::atomic<bool> inside{false};
    std::atomic<bool> leave{false};
    std::thread writer([&] {
      heap.exclusive([&] {
        inside = true;
        for (int i = 0; i < 10000 && !leave; ++i) std::this_thread::sleep_for(1ms);
      });
    });
    for (int i = 0; i < 10000 && !inside; ++i) std::this_thread::sleep_for(1ms);
    ASSERT_TRUE(inside);
    EXPECT_EQ(heap.generation(), before);  // answered while the lock is held
    leave = true;
    writer.join();
    EXPECT_EQ(heap.generation(), before + 1);
  }
}

// A repair that fails (here: the repairer's reservation is too small for the
// grown heap) leaves readers barred: the next reader repairs first instead of
// reading the dead writer's half-done operation.
TEST(HeapLocking, AFailedRepairKeepsReadersOut) {
  TempDir dir;
  const std::string path = dir / "h";
  Heap heap = Heap::create(path).value();
  OpenOptions small;
  small.reserve = heap.info().size;
  Heap cramped = Heap::open(path, small).value();
  heap.allocate(32 << 20);  // grows the heap past `cramped`'s reservation
  EXPECT_EQ(run_in_child([&] {
              Heap mine = Heap::open(path).value();
              mine.exclusive([] { ::kill(::getpid(), SIGKILL); });
            }),
            128 + SIGKILL);
  try {
    cramped.exclusive([] {});
    ADD_FAILURE() << "a repair needing the whole heap ran in a process that maps part of it";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kOutOfSpace) << e.message();
  }
  const std::uint64_t recoveries = heap.info().recoveries;  // repairs first (info locks)
  EXPECT_EQ(recoveries, 1u);
  heap.shared([&] {
    const CheckReport report = heap.check();
    for (const std::string& repair : report.repairs) {
      EXPECT_EQ(repair.find("died inside the lock"), std::string::npos) << repair;
    }
  });
}

// A child forked inside a shared section leaves the section in the child
// without touching the parent's count: writers are not kept waiting.
TEST(HeapLocking, AChildForkedInsideASharedSectionDoesNotCountAsAReader) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  pid_t child = -1;
  heap.shared([&] {
    std::fflush(nullptr);
    child = ::fork();
  });
  if (child == 0) std::_Exit(0);  // the child has left the section: its release ran
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_NO_THROW(heap.exclusive_for(5s, [&] { heap.construct<int>("after")(1); }));
}

// A constructor that forks: the child leaves the construct (here by
// throwing) without touching the parent's operation, which the parent
// finishes.
struct ForksInItsConstructor {
  explicit ForksInItsConstructor(pid_t* child) {
    std::fflush(nullptr);
    *child = ::fork();
    if (*child == 0) throw std::runtime_error("the child gives up");
  }
};

TEST(HeapLocking, AChildForkedInsideAConstructorLeavesTheParentsOperationAlone) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  pid_t child = -1;
  try {
    heap.construct<ForksInItsConstructor>("forks")(&child);
  } catch (const std::runtime_error&) {
    if (child == 0) std::_Exit(0);
    throw;
  }
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_NE(heap.find<ForksInItsConstructor>("forks"), nullptr);
  const CheckReport report = heap.check();
  EXPECT_TRUE(report.ok() && report.repairs.empty())
      << (report.ok() ? report.repairs.front() : report.problems.front());
}

// Threads of one process: readers share the lock, the writer excludes them
// (run under ThreadSanitizer too). The writer keeps two words equal; a
// reader that ever sees them differ was let in during a write.
TEST(HeapLocking, ReaderThreadsAndAWriterThread) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  auto* pair = heap.construct<std::uint64_t>("pair")[2](0);
  std::atomic<bool> writing{true};
  std::atomic<int> torn{0};
  std::atomic<int> reads{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&] {
      for (int i = 0; i < 20000 && (writing || i < 100); ++i) {
        // Plain reads: ThreadSanitizer reports them as races unless the
        // lock orders them after the writer's plain writes.
        heap.shared([&] {
          if (pair[0] != pair[1]) ++torn;
        });
        ++reads;
      }
    });
  }
  for (int i = 0; i < 5000; ++i) {
    heap.exclusive([&] {
      ++pair[0];
      ++pair[1];
    });
  }
  writing = false;
  for (std::thread& t : readers) t.join();
  EXPECT_EQ(torn.load(), 0);
  EXPECT_GE(reads.load(), 300);
  EXPECT_EQ(pair[0], 5000u);
  // Writes inside a shared section are refused, as before.
  heap.shared([&] { EXPECT_THROW(heap.allocate(10), Error); });
}

}  // namespace
}  // namespace sheaf

namespace sheaf {
namespace {

using testing::read_file;
using testing::run_in_child;
using testing::TempDir;

// Drops root for the rest of a child process: file permissions then apply.
void become_nobody() {
  if (::setgid(65534) != 0 || ::setuid(65534) != 0) std::_Exit(90);
}

// A user who may only read a heap file can still look at it, and a writer
// working meanwhile never shows that reader a half-done section.
TEST(HeapReadOnly, AReaderWithoutWritePermissionSeesConsistentSnapshots) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to switch to another user";
  TempDir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
  const std::string path = dir / "h";
  CreateOptions options;
  options.file_mode = 0644;
  Heap heap = Heap::create(path, options).value();
  heap.construct<std::int64_t>("a")(1);
  heap.construct<std::int64_t>("b")(2);

  Pipe started, finished;
  Child reader([&] {
    become_nobody();
    if (Heap::open(path).ok()) std::_Exit(91);  // no write permission: refused
    OpenOptions read_only;
    read_only.read_only = true;
    Heap mine = Heap::open(path, read_only).value();
    char byte = 1;
    if (::write(started.write_end(), &byte, 1) != 1) std::_Exit(92);
    // Every section of the writer leaves an even number of objects.
    for (int i = 0; i < 3000; ++i) {
      const std::size_t count = mine.objects().size();
      if (count % 2 != 0) std::_Exit(93);
      if (mine.info().objects % 2 != 0) std::_Exit(94);
    }
    if (!mine.check().ok()) std::_Exit(95);
    const auto bytes = mine.copy_object("a");
    std::int64_t value = 0;
    std::memcpy(&value, bytes.data(), sizeof(value));
    if (value != 1) std::_Exit(96);
    try {
      mine.allocate(8);
      std::_Exit(97);
    } catch (const Error& e) {
      if (e.code() != Errc::kInvalidArgument) std::_Exit(98);
    }
    try {
      mine.shared([] {});
      std::_Exit(99);
    } catch (const Error& e) {
      if (e.code() != Errc::kUnsupported) std::_Exit(100);
    }
    if (::write(finished.write_end(), &byte, 1) != 1) std::_Exit(101);
  });
  finished.close_write();
  char byte = 0;
  ASSERT_EQ(::read(started.read_end(), &byte, 1), 1);
  ASSERT_EQ(::fcntl(finished.read_end(), F_SETFL, O_NONBLOCK), 0);
  int sections = 0;
  for (int i = 0; i < 200000 && ::read(finished.read_end(), &byte, 1) < 0; ++i) {  // bounded
    sections += 2;
    heap.exclusive([&] {
      heap.construct<std::int64_t>("x" + std::to_string(i))(i);
      heap.construct<std::int64_t>("y" + std::to_string(i))(i);
    });
    heap.exclusive([&] {
      heap.destroy<std::int64_t>("x" + std::to_string(i));
      heap.destroy<std::int64_t>("y" + std::to_string(i));
    });
    // A writer that is never outside the lock starves a reader without one
    // (it then gives up with kBusy): leave it a moment between pairs.
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  EXPECT_EQ(reader.wait_code(), 0);
  EXPECT_GT(sections, 100) << "the writer barely ran while the reader read";
  expect_sound(heap);
}

// On a file it may write, a read-only open in local mode locks the heap's
// mutex as a reader does, and still writes nothing else.
TEST(HeapReadOnly, AReadOnlyOpenWritesNothing) {
  TempDir dir;
  const std::string path = dir / "h";
  {
    Heap heap = small_heap(path);
    heap.construct<std::int64_t>("n")(5);
    ASSERT_TRUE(heap.close().ok());
  }
  // The mutex lives in the header's first page; compare the rest.
  const auto strip_lock = [](std::vector<char> bytes) {
    std::fill(bytes.begin() + offsetof(format::Header, state),
              bytes.begin() + offsetof(format::Header, state) + sizeof(pthread_mutex_t), 0);
    return bytes;
  };
  const auto before = strip_lock(testing::read_file(path));
  {
    OpenOptions options;
    options.read_only = true;
    Heap reader = Heap::open(path, options).value();
    EXPECT_EQ(*reader.find<std::int64_t>("n"), 5);
    EXPECT_EQ(reader.objects().size(), 1u);
    EXPECT_EQ(reader.info().sessions, 0u);  // a reader registers no session
    reader.shared([] {});
    EXPECT_THROW(reader.exclusive([] {}), Error);
    EXPECT_THROW(reader.construct<int>("m")(1), Error);
    EXPECT_THROW(reader.upgrade().value(), Error);
    expect_sound(reader);
  }
  EXPECT_EQ(strip_lock(testing::read_file(path)), before);
}

// The outside test that found it: a free block's size rewritten to swallow
// the named object after it. Opening once "repaired" that by forgetting the
// object and called the heap sound.
TEST(HeapDamage, ASwallowedObjectIsRefusedUntouchedThenRepairedOnRequest) {
  TempDir dir;
  const std::string path = dir / "h";
  std::uint64_t hole = 0;
  {
    Heap heap = small_heap(path);
    void* p = nullptr;
    heap.exclusive([&] { p = heap.allocate(1000); });  // under the lock: no thread cache
    heap.construct<std::int64_t>("victim")(7);
    heap.construct<std::int64_t>("bystander")(8);
    hole = heap.offset_of(p) - format::kBlockHeaderBytes;
    heap.exclusive([&] { heap.deallocate(p); });
    ASSERT_TRUE(heap.close().ok());
  }
  {
    posix::Fd fd = posix::open_file(path, O_RDWR, path);
    format::BlockHeader free_block{}, victim{};
    posix::pread_all(fd.get(), std::as_writable_bytes(std::span(&free_block, 1)), hole, path);
    ASSERT_EQ(free_block.state(), format::kFree);
    posix::pread_all(fd.get(), std::as_writable_bytes(std::span(&victim, 1)),
                     hole + free_block.size(), path);
    ASSERT_EQ(victim.state(), format::kNamed);
    free_block.size_and_state = (free_block.size() + victim.size()) | format::kFree;
    posix::pwrite_all(fd.get(), std::as_bytes(std::span(&free_block, 1)), hole, path);
  }
  const auto damaged = testing::read_file(path);
  auto refused = Heap::open(path);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), Errc::kCorrupted);
  EXPECT_NE(refused.error().message().find("damaged: "), std::string::npos)
      << refused.error().message();
  EXPECT_EQ(testing::read_file(path), damaged) << "refusing changed the file";

  OpenOptions read_only;
  read_only.read_only = true;
  const CheckReport report = Heap::open(path, read_only).value().check();
  EXPECT_FALSE(report.ok());
  bool named = false;
  for (const std::string& problem : report.problems) {
    named |= problem.find("name table entry") != std::string::npos &&
             problem.find("middle of a block") != std::string::npos;
  }
  EXPECT_TRUE(named) << "the swallowed object's name is not reported";
  EXPECT_EQ(testing::read_file(path), damaged) << "checking changed the file";

  OpenOptions repair;
  repair.repair_damage = true;
  Heap repaired = Heap::open(path, repair).value();
  EXPECT_EQ(repaired.find<std::int64_t>("victim"), nullptr);  // what the damage took
  EXPECT_EQ(*repaired.find<std::int64_t>("bystander"), 8);
  expect_sound(repaired);
}

TEST(HeapRegistry, ListsTheOpenHeapsEvenWhileOneIsLocked) {
  TempDir dir;
  Heap first = Heap::create(dir / "a").value();
  OpenOptions read_only;
  read_only.read_only = true;
  Heap second = Heap::open(dir / "a", read_only).value();
  Heap third = Heap::create(dir / "b").value();
  std::vector<OpenHeap> listed;
  first.exclusive([&] { listed = open_heaps(); });  // no lock is taken
  ASSERT_EQ(listed.size(), 3u);
  const auto find = [&](const void* base) {
    auto it = std::find_if(listed.begin(), listed.end(),
                           [&](const OpenHeap& heap) { return heap.base == base; });
    return it == listed.end() ? OpenHeap{} : *it;
  };
  EXPECT_EQ(find(first.base()).path, dir / "a");
  EXPECT_FALSE(find(first.base()).read_only);
  EXPECT_EQ(find(first.base()).uuid, first.info().uuid);
  EXPECT_TRUE(find(second.base()).read_only);
  EXPECT_EQ(find(second.base()).uuid, first.info().uuid);
  EXPECT_EQ(find(third.base()).path, dir / "b");
  ASSERT_TRUE(third.close().ok());
  EXPECT_EQ(open_heaps().size(), 2u);
}

// A process whose reservation another process's growth outran keeps
// reading what it mapped, and is told why the rest fails.
TEST(HeapReservation, AnOutgrownProcessKeepsReadingWhatItMapped) {
  TempDir dir;
  const std::string path = dir / "h";
  Heap big = Heap::create(path).value();
  big.construct<std::int64_t>("early")(1);
  OpenOptions options;
  options.reserve = 16 << 20;
  Heap small = Heap::open(path, options).value();
  big.exclusive([&] { big.allocate(32 << 20); });  // under the lock: grows the file past 16 MiB
  big.exclusive([&] {                              // a name beyond 16 MiB
    void* filler = big.allocate(big.info().largest_free - (1 << 20));
    (void)filler;
    big.construct<std::int64_t>("late")(2);
  });
  ASSERT_GT(big.info().size, options.reserve);
  const auto expect_outgrown = [&](const std::function<void()>& call) {
    try {
      call();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kOutOfSpace) << e.what();
      EXPECT_NE(e.message().find("beyond the 16777216 this process reserved"), std::string::npos)
          << e.what();
    }
  };
  // Reads of what it mapped work.
  EXPECT_EQ(small.info().size, big.info().size);
  EXPECT_EQ(*small.find<std::int64_t>("early"), 1);
  // What lies beyond, and every change, fail and say why.
  expect_outgrown([&] { small.find<std::int64_t>("late"); });
  expect_outgrown([&] { small.allocate(64); });
  expect_outgrown([&] { small.construct<std::int64_t>("mine")(3); });
  expect_outgrown([&] { small.check(); });
  EXPECT_EQ(*big.find<std::int64_t>("late"), 2);
  EXPECT_TRUE(big.check().ok());
}

}  // namespace
}  // namespace sheaf
