// heap_holds_test.cpp: held blocks, shared between sessions and freed exactly once.
#include <unistd.h>

#include <algorithm>
#include <cstring>
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

template <class T>
void send_value(int fd, const T& value) {
  if (::write(fd, &value, sizeof(value)) != static_cast<ssize_t>(sizeof(value))) _exit(3);
}
template <class T>
T receive_value(int fd) {
  T value{};
  if (::read(fd, &value, sizeof(value)) != static_cast<ssize_t>(sizeof(value))) return T{};
  return value;
}

void expect_error(Errc code, const std::function<void()>& call) {
  try {
    call();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
  }
}

TEST(HeapHolds, TheLastReleaseFreesTheBlock) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  const std::uint64_t used = heap.info().used;
  void* p = heap.allocate_held(100);
  std::memset(p, 7, 100);
  EXPECT_EQ(heap.holds(p), 1u);
  heap.hold(p);
  EXPECT_EQ(heap.holds(p), 2u);
  EXPECT_TRUE(heap.check().ok());
  heap.release(p);
  EXPECT_EQ(heap.holds(p), 1u);
  heap.release(p);
  expect_error(Errc::kInvalidArgument, [&] { heap.holds(p); });  // gone
  // What is left is this session's (empty) hold ledger.
  EXPECT_LT(heap.info().used, used + 2048);
  EXPECT_TRUE(heap.check().ok());
}

TEST(HeapHolds, MisuseIsAnErrorAndChangesNothing) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  void* held = heap.allocate_held(64);
  void* plain = heap.allocate(64);
  expect_error(Errc::kInvalidArgument, [&] { heap.deallocate(held); });
  expect_error(Errc::kInvalidArgument, [&] { heap.release(plain); });
  expect_error(Errc::kInvalidArgument, [&] { heap.hold(static_cast<char*>(held) + 16); });
  expect_error(Errc::kInvalidArgument, [&] { heap.held_block(plain); });
  expect_error(Errc::kInvalidArgument, [&] { heap.held_block(static_cast<char*>(held) + 16); });
  // Bytes that look like a held block's header: not a block this process
  // holds, so no hold is counted on them.
  auto* fake = static_cast<std::uint64_t*>(heap.allocate(256));
  fake[4] = 64 | format::kHeld;
  fake[5] = 1;
  expect_error(Errc::kInvalidArgument, [&] { heap.hold(fake + 6); });
  EXPECT_EQ(fake[5], 1u);
  expect_error(Errc::kNotFound, [&] { heap.hand_over(held, 987654); });
  EXPECT_EQ(heap.holds(held), 1u);
  EXPECT_TRUE(heap.check().ok());
  heap.release(held);
  expect_error(Errc::kInvalidArgument, [&] { heap.release(held); });  // not ours any more
  EXPECT_TRUE(heap.check().ok());
}

// Every held block gets a serial of its own, kept across recovery's recount,
// so that a reference to a block freed since is told from one to a block
// that took its place.
TEST(HeapHolds, EachHeldBlockHasItsOwnSerial) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  void* first = heap.allocate_held(64);
  const Heap::HeldBlock a = heap.held_block(first);
  EXPECT_GE(a.bytes, 64u);
  EXPECT_NE(a.serial, 0u);
  heap.hold(first);  // the count changes, the serial does not
  EXPECT_EQ(heap.holds(first), 2u);
  EXPECT_EQ(heap.held_block(first).serial, a.serial);
  heap.release(first);
  heap.release(first);
  void* second = heap.allocate_held(64);  // most likely in the same place
  const Heap::HeldBlock b = heap.held_block(second);
  EXPECT_NE(b.serial, a.serial);
  EXPECT_EQ(heap.holds(second), 1u);
  // What the sender of a reference puts in it: hand_over's answer.
  EXPECT_EQ(heap.hand_over(second, heap.session()), b.serial);
  EXPECT_TRUE(heap.check().ok());
  const auto features = heap.info().features;
  EXPECT_NE(std::find(features.begin(), features.end(), "held-serials"), features.end());
}

// A sender hands its hold to a receiver in another process; the receiver's
// release frees the block, the sender can no longer release it.
TEST(HeapHolds, AHoldHandedToAnotherProcessIsItsToRelease) {
  TempDir dir;
  const std::string path = dir / "h";
  Heap heap = Heap::create(path).value();
  Pipe to_child, from_child;
  Child receiver([&] {
    Heap mine = Heap::open(path).value();
    send_value(from_child.write_end(), mine.session());
    const auto offset = receive_value<std::uint64_t>(to_child.read_end());
    auto* p = static_cast<char*>(mine.pointer_at(offset));
    if (std::strcmp(p, "by reference") != 0) _exit(4);
    if (mine.holds(p) != 1) _exit(5);
    // Its now: what a receiver checks (held_block) says so, with its size.
    if (mine.held_block(p).bytes < 64) _exit(6);
    mine.release(p);
    send_value(from_child.write_end(), std::uint64_t{1});
    receive_value<char>(to_child.read_end());  // stay open until told
  });
  from_child.close_write();  // so that a child that dies is an end of file, not a hang
  const auto session = receive_value<std::uint64_t>(from_child.read_end());
  ASSERT_NE(session, 0u);
  auto* p = static_cast<char*>(heap.allocate_held(64));
  std::strcpy(p, "by reference");
  EXPECT_GE(heap.held_block(p).bytes, 64u);
  heap.hand_over(p, session);
  expect_error(Errc::kInvalidArgument, [&] { heap.release(p); });
  EXPECT_EQ(heap.holds(p), 1u);
  EXPECT_EQ(heap.held_block(p).bytes, 0u);  // held, but not by this process any more
  send_value(to_child.write_end(), heap.offset_of(p));
  ASSERT_EQ(receive_value<std::uint64_t>(from_child.read_end()), 1u);
  expect_error(Errc::kInvalidArgument, [&] { heap.holds(p); });  // freed
  EXPECT_TRUE(heap.check().ok());
  send_value(to_child.write_end(), 'x');
  EXPECT_EQ(receiver.wait_code(), 0);
}

// A process killed with holds: its holds are released for it, and a block it
// allocated held but never handed anywhere is freed (no leak).
TEST(HeapHolds, ADeadProcessesHoldsAreReleased) {
  TempDir dir;
  const std::string path = dir / "h";
  Heap heap = Heap::create(path).value();
  auto* shared = static_cast<char*>(heap.allocate_held(64));
  const std::uint64_t before = heap.info().used;
  {
    Pipe session, handed, ready;
    Child holder([&] {
      Heap mine = Heap::open(path).value();
      send_value(session.write_end(), mine.session());
      (void)receive_value<char>(handed.read_end());            // two holds on `shared` are ours now
      for (int i = 0; i < 200; ++i) mine.allocate_held(1000);  // never linked anywhere
      send_value(ready.write_end(), 'r');
      ::pause();
    });
    session.close_write();
    ready.close_write();
    const auto child_session = receive_value<std::uint64_t>(session.read_end());
    ASSERT_NE(child_session, 0u);
    heap.hold(shared);
    heap.hold(shared);
    heap.hand_over(shared, child_session);
    heap.hand_over(shared, child_session);
    send_value(handed.write_end(), 'h');
    ASSERT_EQ(receive_value<char>(ready.read_end()), 'r');
    holder.kill();
    holder.wait();
  }
  EXPECT_EQ(heap.holds(shared), 3u);  // the dead one's two count until released
  const CheckReport dead = heap.check();
  ASSERT_TRUE(dead.ok()) << dead.problems.front();
  ASSERT_FALSE(dead.repairs.empty());
  EXPECT_NE(dead.repairs.back().find("202 holds of processes that are gone"), std::string::npos)
      << dead.repairs.back();
  // The next process to open the heap releases them.
  EXPECT_EQ(testing::run_in_child([&] { Heap::open(path).value(); }), 0);
  EXPECT_EQ(heap.holds(shared), 1u);
  const CheckReport after = heap.check();
  EXPECT_TRUE(after.ok() && after.repairs.empty());
  EXPECT_EQ(heap.info().walked_recoveries, 0u);
  EXPECT_LE(heap.info().used, before + 4096);  // the 200 blocks are back (a ledger may stay)
}

// A hold that cannot be recorded (no room for the ledger) is not taken at
// all: the failed operation undoes itself, and the counts still agree.
TEST(HeapHolds, AHoldThatFailsHalfwayLeavesNothingHalfDone) {
  TempDir dir;
  CreateOptions options;
  options.initial_size = 1 << 20;
  options.max_size = 1 << 20;
  Heap heap = Heap::create(dir / "h", options).value();
  void* last = nullptr;
  heap.exclusive([&] {  // under the lock: no thread cache keeps blocks aside
    for (std::size_t bytes = 64 << 10; bytes >= 32;) {
      try {
        last = heap.allocate(bytes);
      } catch (const Error&) {
        bytes /= 2;
      }
    }
    heap.deallocate(last);  // room for a small block, not for a hold ledger
  });
  expect_error(Errc::kOutOfSpace, [&] { heap.allocate_held(8); });
  const CheckReport report = heap.check();
  EXPECT_TRUE(report.ok()) << (report.ok() ? "" : report.problems.front());
  EXPECT_TRUE(report.repairs.empty());
}

// The walk (after a machine restart) recounts holds from the ledgers of the
// sessions that live, and frees blocks that only the dead held.
TEST(HeapHolds, TheWalkRecountsHolds) {
  TempDir dir;
  const std::string path = dir / "h";
  std::uint64_t kept_offset = 0;
  std::uint64_t orphan_offset = 0;
  {
    Heap heap = Heap::create(path).value();
    kept_offset = heap.offset_of(heap.allocate_held(64));
    orphan_offset = heap.offset_of(heap.allocate_held(64));
    // A child that is handed one hold on each block in `offsets`, then killed.
    const auto killed_holding = [&](std::vector<std::uint64_t> offsets) {
      Pipe session, handed;
      Child holder([&] {
        Heap mine = Heap::open(path).value();
        send_value(session.write_end(), mine.session());
        (void)receive_value<char>(handed.read_end());
        send_value(session.write_end(), mine.session());
        ::pause();
      });
      session.close_write();
      const auto child_session = receive_value<std::uint64_t>(session.read_end());
      for (std::uint64_t offset : offsets) {
        heap.hold(heap.pointer_at(offset));
        heap.hand_over(heap.pointer_at(offset), child_session);
      }
      send_value(handed.write_end(), 'h');
      EXPECT_EQ(receive_value<std::uint64_t>(session.read_end()), child_session);
      holder.kill();
      holder.wait();
    };
    killed_holding({kept_offset, orphan_offset});
    heap.release(heap.pointer_at(orphan_offset));  // now only the dead one holds it
    EXPECT_EQ(heap.holds(heap.pointer_at(kept_offset)), 2u);
    // Left open (killed), on a machine that then restarted.
    killed_holding({kept_offset});
  }
  {
    posix::Fd fd = posix::open_file(path, O_RDWR, path);
    const std::uint64_t other_boot = 12345;
    posix::pwrite_all(fd.get(), std::as_bytes(std::span(&other_boot, 1)),
                      offsetof(format::Header, state) + offsetof(format::State, boot_hash), path);
  }
  Heap heap = Heap::open(path).value();
  EXPECT_EQ(heap.info().walked_recoveries, 1u);
  const CheckReport report = heap.check();
  EXPECT_TRUE(report.ok()) << (report.ok() ? "" : report.problems.front());
  EXPECT_TRUE(report.repairs.empty());
  // Every session that held them is gone: both blocks are free.
  expect_error(Errc::kInvalidArgument, [&] { heap.holds(heap.pointer_at(kept_offset)); });
  expect_error(Errc::kInvalidArgument, [&] { heap.holds(heap.pointer_at(orphan_offset)); });
}

TEST(HeapHolds, AHeapWithoutTheFeatureRefusesHolds) {
  TempDir dir;
  const std::string path = dir / "h";
  std::filesystem::copy_file(SHEAF_TEST_DATA "/heap-format-1.heap", path);
  Heap heap = Heap::open(path).value();
  expect_error(Errc::kUnsupported, [&] { heap.allocate_held(8); });
  ASSERT_TRUE(heap.upgrade().value());
  void* p = heap.allocate_held(8);
  heap.release(p);
  EXPECT_TRUE(heap.check().ok());
}

}  // namespace
}  // namespace sheaf
