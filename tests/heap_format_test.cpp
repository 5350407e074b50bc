// heap_format_test.cpp: format evolution and object identity. Feature bits,
// opening and upgrading a heap made by the first format (a file that Sheaf's
// first release wrote, kept in tests/data), refusing unknown features, and
// serials that tell an object from the one built after it at the same offset.
#include <xxhash.h>

#include <cstring>
#include <filesystem>

#include "format.hpp"
#include "heap_test_util.hpp"
#include "posix.hpp"
#include "sheaf/heap.hpp"

namespace sheaf {
namespace {

using testing::Child;
using testing::Pipe;
using testing::TempDir;

void expect_sound(const Heap& heap) {
  const CheckReport report = heap.check();
  for (const auto& problem : report.problems) ADD_FAILURE() << problem;
  for (const auto& repair : report.repairs) ADD_FAILURE() << "repair due: " << repair;
}

std::string text_of(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// Reads, changes and writes back the header of a closed heap file.
template <class Change>
void edit_header(const std::string& path, Change&& change) {
  posix::Fd fd = posix::open_file(path, O_RDWR, path);
  auto header = std::make_unique<format::Header>();
  posix::pread_all(fd.get(), std::as_writable_bytes(std::span(header.get(), 1)), 0, path);
  change(*header);
  posix::pwrite_all(fd.get(), std::as_bytes(std::span(header.get(), 1)), 0, path);
}

std::uint64_t identity_checksum(const format::Identity& id) {
  return XXH64(&id, offsetof(format::Identity, checksum), 0);
}

TEST(HeapFormat, NewHeapsAreCurrentWithSerials) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  const HeapInfo info = heap.info();
  EXPECT_EQ(info.format_version, 2u);
  EXPECT_EQ(info.features,
            (std::vector<std::string>{"object-serials", "cache-ledgers", "holds", "used-tags",
                                      "shared-readers", "held-serials"}));
  EXPECT_FALSE(heap.upgrade().value());  // nothing to do
}

// Bins hand a freed offset to the next block of the same size, so an offset
// alone cannot tell a rebuilt object from the one before it; a serial can.
TEST(HeapFormat, SerialsTellARebuiltObjectFromTheOldOne) {
  TempDir dir;
  Heap heap = Heap::create(dir / "h").value();
  heap.construct<std::int64_t>("x")(1);
  const ObjectInfo first = heap.object("x").value();
  ASSERT_TRUE(heap.destroy<std::int64_t>("x"));
  heap.construct<std::int64_t>("x")(2);
  const ObjectInfo second = heap.object("x").value();
  EXPECT_EQ(first.offset, second.offset);  // the premise: the same place
  EXPECT_NE(first.serial, 0u);
  EXPECT_GT(second.serial, first.serial);
  // Serials survive closing and are never reused after it.
  ASSERT_TRUE(heap.close().ok());
  Heap again = Heap::open(dir / "h").value();
  EXPECT_EQ(again.object("x")->serial, second.serial);
  again.construct<int>("y")(3);
  EXPECT_GT(again.object("y")->serial, second.serial);
  expect_sound(again);
}

// tests/data/heap-format-1.heap was written by Sheaf's first release
// (format 1, before feature bits): `sheaf heap create --size 64K`, then
// `sheaf heap put` of "hello, sheaf\n" as greeting and of 1000 bytes
// 0..255 repeated as bytes.
TEST(HeapFormat, OpensAndUpgradesAHeapOfTheFirstFormat) {
  TempDir dir;
  const std::string path = dir / "old.heap";
  std::filesystem::copy_file(SHEAF_TEST_DATA "/heap-format-1.heap", path);
  Heap heap = Heap::open(path).value();
  HeapInfo info = heap.info();
  EXPECT_EQ(info.format_version, 1u);
  EXPECT_TRUE(info.features.empty());
  EXPECT_EQ(text_of(heap.object_bytes("greeting")), "hello, sheaf\n");
  const auto bytes = heap.object_bytes("bytes");
  ASSERT_EQ(bytes.size(), 1000u);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    ASSERT_EQ(static_cast<unsigned>(bytes[i]), i % 256) << i;
  }
  EXPECT_EQ(heap.object("greeting")->serial, 0u);   // the first format has none
  heap.construct<int>("written by this Sheaf")(1);  // writing keeps the old format
  EXPECT_EQ(heap.info().format_version, 1u);
  expect_sound(heap);

  // Another process with it open: refused, nothing changed.
  {
    Pipe opened, leave;
    Child other([&] {
      Heap mine = Heap::open(path).value();
      char byte = 1;
      if (::write(opened.write_end(), &byte, 1) != 1) std::_Exit(3);
      (void)::read(leave.read_end(), &byte, 1);
    });
    char byte = 0;
    ASSERT_EQ(::read(opened.read_end(), &byte, 1), 1);
    auto refused = heap.upgrade();
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.error().code(), Errc::kBusy) << refused.error().message();
    EXPECT_EQ(heap.info().format_version, 1u);
    ASSERT_EQ(::write(leave.write_end(), &byte, 1), 1);
    EXPECT_EQ(other.wait_code(), 0);
  }

  // A block an older Sheaf allocated has no check word (this one writes it
  // whatever the format): the upgrade gives it one, so it can be freed after.
  // (Zero, or the id of the session whose thread cache handed it out.)
  void* from_before = heap.allocate(100);
  std::memset(static_cast<char*>(from_before) - 8, 0, 8);
  void* from_a_cache = heap.allocate(200);
  const std::uint64_t other_session = 987654321;
  std::memcpy(static_cast<char*>(from_a_cache) - 8, &other_session, 8);

  ASSERT_TRUE(heap.upgrade().value());
  heap.deallocate(from_before);
  heap.deallocate(from_a_cache);
  info = heap.info();
  EXPECT_EQ(info.format_version, 2u);
  EXPECT_EQ(info.features,
            (std::vector<std::string>{"object-serials", "cache-ledgers", "holds", "used-tags",
                                      "shared-readers", "held-serials"}));
  std::vector<std::uint64_t> serials;
  for (const ObjectInfo& object : heap.objects()) serials.push_back(object.serial);
  std::sort(serials.begin(), serials.end());
  EXPECT_EQ(serials, (std::vector<std::uint64_t>{1, 2, 3}));
  heap.construct<int>("after the upgrade")(2);
  EXPECT_EQ(heap.object("after the upgrade")->serial, 4u);
  EXPECT_EQ(text_of(heap.object_bytes("greeting")), "hello, sheaf\n");
  expect_sound(heap);
  ASSERT_TRUE(heap.close().ok());

  Heap reopened = Heap::open(path).value();
  EXPECT_EQ(reopened.info().format_version, 2u);
  EXPECT_FALSE(reopened.upgrade().value());
  expect_sound(reopened);
}

TEST(HeapFormat, UnknownFeaturesAreRefusedByName) {
  TempDir dir;
  const std::string path = dir / "h";
  ASSERT_TRUE(Heap::create(path).value().close().ok());
  const auto before = testing::read_file(path);
  const auto set_bits = [&](std::uint64_t incompat, std::uint64_t ro_compat) {
    testing::write_file(path, before);
    edit_header(path, [&](format::Header& header) {
      header.identity.incompat_features |= incompat;
      header.identity.ro_compat_features |= ro_compat;
      header.identity.checksum = identity_checksum(header.identity);
    });
  };
  set_bits(std::uint64_t{1} << 40, 0);
  auto refused = Heap::open(path);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), Errc::kUnsupported);
  EXPECT_NE(refused.error().message().find("incompatible bit 40"), std::string::npos)
      << refused.error().message();

  set_bits(0, std::uint64_t{1} << 7);
  refused = Heap::open(path);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("read-only compatible bit 7"), std::string::npos)
      << refused.error().message();
  // A reader may open it: the feature asks something only of writers.
  OpenOptions read_only;
  read_only.read_only = true;
  EXPECT_TRUE(Heap::open(path, read_only).ok());
  set_bits(std::uint64_t{1} << 40, 0);
  refused = Heap::open(path, read_only);
  ASSERT_FALSE(refused.ok());  // but not one whose layout it may not understand
  EXPECT_NE(refused.error().message().find("incompatible bit 40"), std::string::npos)
      << refused.error().message();

  // A compatible feature this Sheaf does not know changes nothing for it.
  testing::write_file(path, before);
  edit_header(path, [&](format::Header& header) {
    header.identity.compat_features |= std::uint64_t{1} << 3;
    header.identity.checksum = identity_checksum(header.identity);
  });
  EXPECT_TRUE(Heap::open(path).ok());
}

// A heap made before cache-ledgers (format 2 with object-serials only) may
// have sessions of an older Sheaf, whose caches no ledger lists: a dead
// session there is reclaimed by walking, until `upgrade` turns the feature on.
TEST(HeapFormat, AHeapWithoutLedgersIsWalkedAfterADeathUntilUpgraded) {
  TempDir dir;
  const std::string path = dir / "h";
  ASSERT_TRUE(Heap::create(path).value().close().ok());
  edit_header(path, [&](format::Header& header) {
    header.identity.ro_compat_features = format::kFeatureObjectSerials;
    header.identity.checksum = identity_checksum(header.identity);
  });
  const auto die_with_a_full_cache = [&] {
    ASSERT_TRUE(testing::kill_after([&] {
      Heap heap = Heap::open(path).value();
      std::vector<void*> blocks;
      for (int i = 0; i < 20; ++i) blocks.push_back(heap.allocate(64));
      for (void* p : blocks) heap.deallocate(p);
      return heap;
    }));
  };
  die_with_a_full_cache();
  {
    Heap heap = Heap::open(path).value();
    EXPECT_EQ(heap.info().walked_recoveries, 1u);
    const CheckReport report = heap.check();
    EXPECT_TRUE(report.ok() && report.repairs.empty());
    ASSERT_TRUE(heap.upgrade().value());
    EXPECT_EQ(heap.info().features,
              (std::vector<std::string>{"object-serials", "cache-ledgers", "holds", "used-tags",
                                        "shared-readers", "held-serials"}));
  }
  die_with_a_full_cache();
  Heap heap = Heap::open(path).value();
  EXPECT_EQ(heap.info().walked_recoveries, 1u);  // no new walk
  const CheckReport report = heap.check();
  EXPECT_TRUE(report.ok() && report.repairs.empty());
}

// A kill inside upgrade() after the new identity was staged and while it
// was being copied leaves a torn identity: the next opener finishes the copy.
TEST(HeapFormat, AnUpgradeCutShortIsFinishedByTheNextOpener) {
  TempDir dir;
  const std::string path = dir / "h";
  std::filesystem::copy_file(SHEAF_TEST_DATA "/heap-format-1.heap", path);
  edit_header(path, [&](format::Header& header) {
    format::Identity fresh = header.identity;
    fresh.version = 2;
    fresh.ro_compat_features = format::kFeatureObjectSerials;
    fresh.checksum = identity_checksum(fresh);
    header.state.staged_identity = fresh;
    header.state.identity_staged = 1;
    header.state.next_serial = 1;
    header.identity.version = 2;  // torn: copied in part, checksum still the old one
  });
  // What upgrade() did before it staged the identity: serials for the objects.
  {
    posix::Fd fd = posix::open_file(path, O_RDWR, path);
    std::uint64_t serial = 1;
    for (std::uint64_t at = format::kHeaderBytes; at < posix::file_size(fd.get(), path);) {
      format::BlockHeader block{};
      posix::pread_all(fd.get(), std::as_writable_bytes(std::span(&block, 1)), at, path);
      ASSERT_GE(block.size(), format::kMinBlock);
      if (block.state() == format::kNamed) {
        block.tag = serial++;
        posix::pwrite_all(fd.get(), std::as_bytes(std::span(&block, 1)), at, path);
      }
      at += block.size();
    }
    edit_header(path, [&](format::Header& header) { header.state.next_serial = serial; });
  }
  Heap heap = Heap::open(path).value();
  EXPECT_EQ(heap.info().format_version, 2u);
  EXPECT_EQ(text_of(heap.object_bytes("greeting")), "hello, sheaf\n");
  expect_sound(heap);
}

}  // namespace
}  // namespace sheaf
