// store_test.cpp: stores and databags: the store's layout and names, bag round
// trips (empty, typed, sparse beyond 4 GiB), writers SIGKILLed at random
// instants, a full filesystem, corrupted bytes, and readers that keep their
// mapping while the bag is replaced.
//
// Payloads that must be recognisable after a crash are "versioned": the first
// 16 bytes hold the version and the size, and every other byte is a function
// of the version and its offset, so a reader can tell which version it has and
// check every byte of it (check_versioned).
//
// SHEAF_BAG_KILLS sets the number of writers the crash test kills (default 100).
// The full-disk test mounts a 4 MiB tmpfs and needs root; it skips otherwise.
#include <fcntl.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "bags/bag_impl.hpp"
#include "heap_test_util.hpp"
#include "posix.hpp"
#include "sheaf/heap.hpp"
#include "sheaf/store.hpp"

namespace sheaf {
namespace {

using testing::Child;
using testing::Pipe;
using testing::read_file;
using testing::run_in_child;
using testing::TempDir;
using testing::TmpfsMount;
using testing::write_file;

constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

// --- Helpers -----------------------------------------------------------------

// The names in dir, sorted ("." and ".." left out).
std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

constexpr std::uint64_t kStamp = 16;  // version, then size, little-endian

// Byte i of version `version` (of `size` bytes) of a versioned payload.
std::byte versioned_byte(std::uint64_t version, std::uint64_t size, std::uint64_t i) {
  if (i < 8) return static_cast<std::byte>(version >> (8 * i));
  if (i < kStamp) return static_cast<std::byte>(size >> (8 * (i - 8)));
  std::uint32_t x = static_cast<std::uint32_t>(i) * 2654435761u +
                    static_cast<std::uint32_t>(version) * 0x85EBCA6Bu;
  x ^= x >> 15;
  x *= 0x2C1B3C6Du;
  return static_cast<std::byte>(x >> 24);
}

// Fills out with bytes [offset, offset + out.size()) of a versioned payload.
void fill_versioned(std::uint64_t version, std::uint64_t size, std::uint64_t offset,
                    std::span<std::byte> out) {
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = versioned_byte(version, size, offset + i);
}

std::vector<std::byte> versioned(std::uint64_t version, std::uint64_t size) {
  std::vector<std::byte> bytes(size);
  fill_versioned(version, size, 0, bytes);
  return bytes;
}

// Checks every byte of a versioned payload. Returns "" and sets *version when
// it is whole; otherwise says what is wrong.
std::string check_versioned(std::span<const std::byte> bytes, std::uint64_t* version) {
  if (bytes.size() < kStamp) return "only " + std::to_string(bytes.size()) + " bytes";
  std::uint64_t v = 0;
  std::uint64_t size = 0;
  std::memcpy(&v, bytes.data(), 8);
  std::memcpy(&size, bytes.data() + 8, 8);
  if (size != bytes.size()) {
    return "version " + std::to_string(v) + " says " + std::to_string(size) + " bytes, has " +
           std::to_string(bytes.size());
  }
  for (std::uint64_t i = kStamp; i < size; ++i) {
    if (bytes[i] != versioned_byte(v, size, i)) {
      return "version " + std::to_string(v) + " of " + std::to_string(size) +
             " bytes: wrong byte at " + std::to_string(i);
    }
  }
  *version = v;
  return "";
}

// The version a bag holds, after checking every byte of it (and failing the
// test if any is wrong).
std::uint64_t version_of(const Bag& bag) {
  std::uint64_t version = 0;
  const std::string problem = check_versioned(bag.bytes(), &version);
  EXPECT_EQ(problem, "") << "bag " << bag.info().name;
  return problem.empty() ? version : ~std::uint64_t{0};
}

BagInfo put_versioned(Store& store, const std::string& name, std::uint64_t version,
                      std::uint64_t size) {
  return store.put_bag(name, versioned(version, size));
}

// Reads exactly size bytes; false at end of file (or on error) before that.
bool read_full(int fd, void* data, std::size_t size) {
  auto* out = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t got = ::read(fd, out, size);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    out += got;
    size -= static_cast<std::size_t>(got);
  }
  return true;
}

void write_byte(int fd, char c) {
  if (::write(fd, &c, 1) != 1) throw std::runtime_error("pipe write");
}

char read_byte(int fd) {
  char c = 0;
  if (!read_full(fd, &c, 1)) throw std::runtime_error("pipe closed");
  return c;
}

std::uint64_t file_size(const std::string& path) {
  return std::filesystem::file_size(path);
}

// Flips (xors with 0xff) the byte at offset of the file at path.
void flip_byte(const std::string& path, std::uint64_t offset) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  unsigned char c = 0;
  ASSERT_EQ(pread(fd, &c, 1, static_cast<off_t>(offset)), 1);
  c ^= 0xff;
  ASSERT_EQ(pwrite(fd, &c, 1, static_cast<off_t>(offset)), 1);
  ::close(fd);
}

std::uint64_t wall_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

// --- The store's layout and names -----------------------------------------------

TEST(Store, InitOpenAndNames) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  EXPECT_TRUE(Store::is_store(dir / "s"));
  EXPECT_TRUE(Store::open(dir / "s").ok());
  EXPECT_FALSE(Store::open(dir.path()).ok());
  EXPECT_THROW(Store::check_name("../x"), Error);
  EXPECT_THROW(Store::check_name("a/b"), Error);
  EXPECT_NO_THROW(Store::check_name("model-1.v2_final"));
}

TEST(Store, InitCreatesTheDirectoryAndTheLayout) {
  TempDir dir;
  const std::string root = dir / "store";  // does not exist yet
  Store store = Store::init(root).value();
  EXPECT_EQ(store.path(), root);
  EXPECT_EQ(list_dir(root), (std::vector<std::string>{".sheaf-store", "bags", "heaps", "tmp"}));
  const std::vector<char> marker = read_file(root + "/.sheaf-store");
  EXPECT_EQ(std::string(marker.data(), std::min<std::size_t>(marker.size(), 14)),
            "sheaf-store 1\n");
  EXPECT_NE(std::string(marker.begin(), marker.end()).find("uuid "), std::string::npos);
  EXPECT_TRUE(list_dir(root + "/tmp").empty());  // the marker's temporary is gone
}

TEST(Store, InitTwiceKeepsTheStoreAndItsBags) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  put_versioned(store, "kept", 7, 5000);
  const std::vector<char> marker = read_file(dir / "s/.sheaf-store");

  Store again = Store::init(dir / "s").value();
  EXPECT_EQ(read_file(dir / "s/.sheaf-store"), marker);  // same UUID: not re-made
  EXPECT_EQ(again.bag_names(), std::vector<std::string>{"kept"});
  EXPECT_EQ(version_of(again.open_bag("kept").value()), 7u);
}

TEST(Store, InitRefusesANonEmptyDirectoryThatIsNotAStore) {
  TempDir dir;
  const std::string root = dir / "data";
  std::filesystem::create_directories(root);
  write_file(root + "/notes.txt", {'h', 'i'});

  auto store = Store::init(root);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().code(), Errc::kAlreadyExists);
  EXPECT_NE(store.error().message().find(root), std::string::npos) << store.error().message();
  // Nothing was added to it.
  EXPECT_EQ(list_dir(root), std::vector<std::string>{"notes.txt"});
  EXPECT_FALSE(Store::is_store(root));
}

TEST(Store, OpenOfANonStoreSaysHowToMakeOne) {
  TempDir dir;
  std::filesystem::create_directories(dir / "plain");
  auto plain = Store::open(dir / "plain");
  ASSERT_FALSE(plain.ok());
  EXPECT_EQ(plain.error().code(), Errc::kNotFound);
  EXPECT_NE(plain.error().message().find("sheaf store init"), std::string::npos)
      << plain.error().message();
  EXPECT_NE(plain.error().message().find(dir / "plain"), std::string::npos);

  auto missing = Store::open(dir / "nowhere");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), Errc::kNotFound);
  EXPECT_NE(missing.error().message().find(dir / "nowhere"), std::string::npos);

  // A marker with the wrong first line is not a store either.
  std::filesystem::create_directories(dir / "fake");
  write_file(dir / "fake/.sheaf-store", {'x', '\n'});
  EXPECT_FALSE(Store::is_store(dir / "fake"));
  EXPECT_FALSE(Store::open(dir / "fake").ok());
}

TEST(Store, CheckNameEnforcesEveryRule) {
  auto refusal = [](std::string_view name) -> std::string {
    try {
      Store::check_name(name);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kInvalidArgument) << name;
      return e.message();
    }
    return "";
  };
  EXPECT_NE(refusal("").find("1 to 200 bytes"), std::string::npos);
  EXPECT_NE(refusal(std::string(201, 'a')).find("1 to 200 bytes"), std::string::npos);
  EXPECT_EQ(refusal(std::string(200, 'a')), "");
  EXPECT_NE(refusal("a/b").find("only letters"), std::string::npos);
  EXPECT_NE(refusal("/abs").find("only letters"), std::string::npos);
  EXPECT_NE(refusal("..").find("may not start with '.'"), std::string::npos);
  EXPECT_NE(refusal("../x").find("may not start with '.'"), std::string::npos);
  EXPECT_NE(refusal(".hidden").find("may not start with '.'"), std::string::npos);
  EXPECT_NE(refusal("a b").find("only letters"), std::string::npos);
  EXPECT_NE(refusal("a\nb").find("only letters"), std::string::npos);
  EXPECT_NE(refusal(std::string("a\0b", 3)).find("only letters"), std::string::npos);
  EXPECT_NE(refusal("caf\xc3\xa9").find("only letters"), std::string::npos);
  EXPECT_NE(refusal("x.bag/..").find("only letters"), std::string::npos);
  for (const char* good : {"a", "A-1", "x.y.z", "under_score", "v1..2", "0"}) {
    EXPECT_EQ(refusal(good), "") << good;
  }
  // The message names the name.
  EXPECT_NE(refusal("a/b").find("'a/b'"), std::string::npos);
}

TEST(Store, EveryEntryPointRefusesBadNamesAndTouchesNothing) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  const std::vector<std::byte> payload(100, std::byte{1});
  for (const std::string& bad :
       std::vector<std::string>{"../escape", "a/b", ".hidden", "", std::string(201, 'n')}) {
    try {
      store.put_bag(bad, payload);
      ADD_FAILURE() << "put_bag accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kInvalidArgument) << bad;
    }
    auto opened = store.open_bag(bad);
    ASSERT_FALSE(opened.ok()) << bad;
    EXPECT_EQ(opened.error().code(), Errc::kInvalidArgument) << bad;
    EXPECT_THROW(store.remove_bag(bad), Error) << bad;
    EXPECT_THROW(store.create_bag(bad), Error) << bad;
    EXPECT_THROW(store.bag_path(bad), Error) << bad;
    EXPECT_THROW(store.heap_path(bad), Error) << bad;
  }
  EXPECT_EQ(list_dir(dir / "s/bags"), std::vector<std::string>{});
  EXPECT_EQ(list_dir(dir / "s/tmp"), std::vector<std::string>{});
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"s"});  // nothing escaped
}

TEST(Store, BagNamesAreSortedAndOnlyBags) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  for (const char* name : {"zeta", "alpha", "Beta", "m-1", "m.0", "m_2"}) {
    put_versioned(store, name, 1, 64);
  }
  // Strays that are not bags: a dot file, another suffix, a writer's temporary.
  write_file(dir / "s/bags/.partial.bag", {'x'});
  write_file(dir / "s/bags/readme.txt", {'x'});
  BagWriter pending = store.create_bag("pending");
  pending.write(versioned(1, 64));

  EXPECT_EQ(store.bag_names(),
            (std::vector<std::string>{"Beta", "alpha", "m-1", "m.0", "m_2", "zeta"}));
  EXPECT_EQ(store.bag_path("alpha"), dir / "s/bags/alpha.bag");
}

TEST(Store, RemoveBag) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  put_versioned(store, "a", 1, 100);
  put_versioned(store, "b", 2, 100);
  EXPECT_TRUE(store.remove_bag("a"));
  EXPECT_FALSE(store.remove_bag("a"));
  EXPECT_FALSE(store.remove_bag("never"));
  EXPECT_EQ(store.bag_names(), std::vector<std::string>{"b"});
  auto gone = store.open_bag("a");
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code(), Errc::kNotFound);
  EXPECT_NE(gone.error().message().find("bag a"), std::string::npos) << gone.error().message();
  EXPECT_THROW(store.bag_info("a"), Error);
  EXPECT_EQ(version_of(store.open_bag("b").value()), 2u);
}

TEST(Store, PutWithoutReplaceRefusesATakenName) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  put_versioned(store, "x", 1, 1000);
  BagWriteOptions no_replace;
  no_replace.replace = false;
  try {
    store.put_bag("x", versioned(2, 1000), no_replace);
    ADD_FAILURE() << "replaced a bag with replace = false";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kAlreadyExists);
    EXPECT_NE(e.message().find("bag x"), std::string::npos) << e.message();
  }
  // Taken between create_bag and commit: commit refuses, the first one stays.
  BagWriter late = store.create_bag("y", no_replace);
  late.write(versioned(3, 1000));
  put_versioned(store, "y", 4, 1000);
  try {
    late.commit();
    ADD_FAILURE() << "commit replaced a bag with replace = false";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kAlreadyExists) << e.message();
  }
  EXPECT_EQ(version_of(store.open_bag("x").value()), 1u);
  EXPECT_EQ(version_of(store.open_bag("y").value()), 4u);
  { BagWriter dropped = std::move(late); }
  EXPECT_EQ(list_dir(dir / "s/tmp"), std::vector<std::string>{});
  // A new name is fine.
  store.put_bag("z", versioned(5, 1000), no_replace);
  EXPECT_EQ(version_of(store.open_bag("z").value()), 5u);
}

TEST(Store, HeapsAreListedSortedWithTheirSizes) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  EXPECT_TRUE(store.heaps().empty());
  CreateOptions small;
  small.initial_size = 1 << 20;
  CreateOptions larger;
  larger.initial_size = 3 << 20;
  Heap::create(store.heap_path("weights"), larger).value();
  Heap::create(store.heap_path("cache"), small).value();
  write_file(dir / "s/heaps/stray.txt", {'x'});  // not a heap

  const std::vector<HeapEntry> heaps = store.heaps();
  ASSERT_EQ(heaps.size(), 2u);
  EXPECT_EQ(heaps[0].name, "cache");
  EXPECT_EQ(heaps[1].name, "weights");
  EXPECT_EQ(heaps[0].file_size, file_size(dir / "s/heaps/cache.heap"));
  EXPECT_EQ(heaps[1].file_size, file_size(dir / "s/heaps/weights.heap"));
  EXPECT_GE(heaps[0].file_size, 1u << 20);
  EXPECT_GE(heaps[1].file_size, 3u << 20);
  EXPECT_EQ(store.heap_path("cache"), dir / "s/heaps/cache.heap");
}

TEST(Store, ResolveHeap) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  // STORE/NAME: the heap NAME in the store, whether or not it exists yet.
  EXPECT_EQ(Store::resolve_heap(dir / "s/main"), dir / "s/heaps/main.heap");
  Heap::create(store.heap_path("main")).value();
  EXPECT_EQ(Store::resolve_heap(dir / "s/main"), dir / "s/heaps/main.heap");
  // A path to an existing file is returned as it is, even inside a store.
  write_file(dir / "plain.heap", {'x'});
  EXPECT_EQ(Store::resolve_heap(dir / "plain.heap"), dir / "plain.heap");
  EXPECT_EQ(Store::resolve_heap(dir / "s/heaps/main.heap"), dir / "s/heaps/main.heap");
  // Not in a store: returned as it is (the heap layer reports it missing).
  EXPECT_EQ(Store::resolve_heap(dir / "elsewhere"), dir / "elsewhere");
  EXPECT_EQ(Store::resolve_heap("bare-name"), "bare-name");
}

// --- Round trips ---------------------------------------------------------------

// XXH3-128 of `size` bytes, computed here (not by Sheaf), as a bag checksum.
BagChecksum xxh3_128(const void* data, std::size_t size) {
  const XXH128_hash_t hash = XXH3_128bits(data, size);
  return {BagChecksum::Algorithm::kXxh3_128, hash.high64, hash.low64};
}

// A payload that the file no longer reaches (truncated, here while nothing
// else looks) is an error, never hashed as a hole of zeros.
TEST(BagPayloadHash, AFileCutShortIsAnErrorNotAHoleOfZeros) {
  TempDir dir;
  const std::string path = dir / "payload";
  {
    posix::Fd fd = posix::open_file(path, O_RDWR | O_CREAT | O_TRUNC, path, 0600);
    const std::vector<char> data(4096, 'x');
    posix::write_all(fd.get(), std::as_bytes(std::span(data)), path);
  }
  posix::Fd fd = posix::open_file(path, O_RDONLY, path);
  EXPECT_NO_THROW(hash_payload(fd.get(), 0, 4096, BagChecksum::Algorithm::kXxh3_128, {}, "bag p"));
  try {
    hash_payload(fd.get(), 0, 8192, BagChecksum::Algorithm::kXxh3_128, {}, "bag p");
    ADD_FAILURE() << "8192 bytes hashed from a 4096-byte file";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kCorrupted) << e.message();
    EXPECT_NE(e.message().find("truncated"), std::string::npos) << e.message();
  }
}

// A bag of format 1 (XXH64 payload checksum), as Sheaf wrote it before
// format 2, built here byte by byte from its documented layout
// (docs/bags.md): magic, version 1, byte-order mark, header size, element
// size, payload size, payload XXH64, creation time, type length, tag count,
// extra length; the type's name; the header's XXH64; zeros to 4096; payload.
std::string format1_bag(std::string_view type, std::uint32_t element_size,
                        std::string_view payload) {
  std::string header("SHEAFBAG", 8);
  auto put = [&](auto value) {
    header.append(reinterpret_cast<const char*>(&value), sizeof(value));
  };
  put(std::uint32_t{1});           // version
  put(std::uint32_t{0x01020304});  // byte-order mark
  put(std::uint32_t{4096});
  put(element_size);
  put(std::uint64_t{payload.size()});
  put(std::uint64_t{XXH64(payload.data(), payload.size(), 0)});
  put(std::uint64_t{1700000000000000000});
  put(static_cast<std::uint16_t>(type.size()));
  put(std::uint16_t{0});
  put(static_cast<std::uint32_t>(type.size()));
  header += type;
  put(std::uint64_t{XXH64(header.data(), header.size(), 0)});
  header.resize(4096, '\0');
  return header + std::string(payload);
}

// Bags written before XXH3-128 stay readable and verifiable: their XXH64 is
// checked, reported as XXH64, and a damaged payload is still caught.
TEST(BagFormat1, AnXxh64BagStillOpensVerifiesAndCatchesDamage) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  const std::string payload(3 * 4096 + 8, 'q');
  const std::string original = format1_bag("uint64", 8, payload);
  write_file(dir / "s/bags/old.bag", {original.begin(), original.end()});

  Bag bag = store.open_bag("old").value();  // verifies the payload's XXH64
  EXPECT_EQ(bag.info().format, 1u);
  EXPECT_EQ(bag.info().checksum.algorithm, BagChecksum::Algorithm::kXxh64);
  EXPECT_STREQ(bag.info().checksum.algorithm_name(), "XXH64");
  EXPECT_EQ(bag.info().checksum.low, XXH64(payload.data(), payload.size(), 0));
  EXPECT_EQ(bag.info().checksum.hex().size(), 16u);
  EXPECT_EQ(bag.as<std::uint64_t>().size(), payload.size() / 8);
  EXPECT_EQ(std::memcmp(bag.bytes().data(), payload.data(), payload.size()), 0);
  EXPECT_TRUE(store.verify("old").front().ok()) << store.verify("old").front().problem;

  std::string damaged = payload;
  damaged[5000] = 'r';
  std::string file = format1_bag("uint64", 8, payload);
  file.replace(4096, damaged.size(), damaged);  // the header still has the old XXH64
  write_file(dir / "s/bags/old.bag", {file.begin(), file.end()});
  const std::vector<BagCheck> checks = store.verify("old");
  ASSERT_EQ(checks.size(), 1u);
  EXPECT_NE(checks[0].problem.find("payload checksum mismatch"), std::string::npos)
      << checks[0].problem;
  EXPECT_FALSE(store.open_bag("old").ok());

  // A bag written now is format 2, XXH3-128, 32 hex digits.
  const BagInfo fresh = store.put_bag("new", std::as_bytes(std::span(payload)));
  EXPECT_EQ(fresh.format, 2u);
  EXPECT_STREQ(fresh.checksum.algorithm_name(), "XXH3-128");
  EXPECT_EQ(fresh.checksum, xxh3_128(payload.data(), payload.size()));
  EXPECT_EQ(fresh.checksum.hex().size(), 32u);
  EXPECT_EQ(store.bag_info("new").checksum, fresh.checksum);
}

TEST(BagRoundTrip, Empty) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  const BagInfo written = store.put_bag("empty", {});
  EXPECT_EQ(written.size, 0u);
  EXPECT_EQ(written.checksum, xxh3_128(nullptr, 0));
  EXPECT_EQ(written.format, 2u);
  EXPECT_EQ(file_size(dir / "s/bags/empty.bag"), 4096u);  // the header page alone

  Bag bag = store.open_bag("empty").value();
  EXPECT_EQ(bag.info().name, "empty");
  EXPECT_EQ(bag.info().size, 0u);
  EXPECT_EQ(bag.info().checksum, written.checksum);
  EXPECT_TRUE(bag.bytes().empty());
  EXPECT_TRUE(bag.scratch().empty());
  EXPECT_TRUE(store.verify("empty").front().ok());

  // An empty typed bag is an empty span of its type.
  store.put_bag("no-floats", {}, BagWriteOptions::of<float>());
  Bag floats = store.open_bag("no-floats").value();
  EXPECT_TRUE(floats.as<float>().empty());
  EXPECT_EQ(floats.info().element_type, "float32");
}

TEST(BagRoundTrip, SmallTypedBagKeepsValuesTypeTagsAndTime) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  std::vector<float> values(1000);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) * 0.5f - 3.25f;
  BagWriteOptions options = BagWriteOptions::of<float>();
  options.tags = {{"model", "resnet"}, {"epoch", "12"}, {"empty", ""}, {"k=v", "a=b"}};
  const std::span<const std::byte> payload = std::as_bytes(std::span<const float>(values));

  const std::uint64_t before = wall_ns();
  const BagInfo written = store.put_bag("weights", payload, options);
  const std::uint64_t after = wall_ns();
  EXPECT_EQ(written.name, "weights");
  EXPECT_EQ(written.size, values.size() * sizeof(float));
  EXPECT_EQ(written.checksum, xxh3_128(payload.data(), payload.size()));
  EXPECT_EQ(written.element_type, "float32");
  EXPECT_EQ(written.element_size, 4u);
  EXPECT_GE(written.created_ns, before);
  EXPECT_LE(written.created_ns, after);

  Bag bag = store.open_bag("weights").value();
  const BagInfo& info = bag.info();
  EXPECT_EQ(info.name, "weights");
  EXPECT_EQ(info.size, written.size);
  EXPECT_EQ(info.checksum, written.checksum);
  EXPECT_EQ(info.element_type, "float32");
  EXPECT_EQ(info.element_size, 4u);
  EXPECT_EQ(info.created_ns, written.created_ns);
  EXPECT_EQ(info.tags, options.tags);
  const std::span<const float> floats = bag.as<float>();
  ASSERT_EQ(floats.size(), values.size());
  EXPECT_TRUE(std::equal(floats.begin(), floats.end(), values.begin()));
  // The payload is mapped page-aligned, so it can be read as any type in place.
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(bag.bytes().data()) % 4096, 0u);

  const BagInfo header = store.bag_info("weights");
  EXPECT_EQ(header.tags, options.tags);
  EXPECT_EQ(header.checksum, written.checksum);
  EXPECT_EQ(header.created_ns, written.created_ns);
  // The file is the header page and the payload, nothing more.
  EXPECT_EQ(file_size(dir / "s/bags/weights.bag"), 4096 + written.size);
}

TEST(BagRoundTrip, StreamedInPiecesEqualsPutAtOnce) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  const std::vector<std::byte> payload = versioned(3, 300000);
  BagWriter writer = store.create_bag("pieces");
  std::uint64_t at = 0;
  for (std::uint64_t step : {1, 7, 4096, 65536, 100000}) {
    writer.write(std::span<const std::byte>(payload).subspan(at, step));
    at += step;
    EXPECT_EQ(writer.written(), at);
  }
  writer.write(std::span<const std::byte>(payload).subspan(at));
  const BagInfo info = writer.commit();
  EXPECT_EQ(info.size, payload.size());
  EXPECT_THROW(writer.write(payload), Error);  // committed: no more writes
  EXPECT_THROW(writer.commit(), Error);
  EXPECT_EQ(info.checksum, store.put_bag("whole", payload).checksum);
  EXPECT_EQ(version_of(store.open_bag("pieces").value()), 3u);
  EXPECT_EQ(list_dir(dir / "s/tmp"), std::vector<std::string>{});
}

TEST(BagRoundTrip, OpenReportsHowThePayloadCheckGoes) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  const std::uint64_t size = 9 * kMiB + 3;
  put_versioned(store, "p", 1, size);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
  BagOpenOptions options;
  options.progress = [&](std::uint64_t done, std::uint64_t total) {
    calls.emplace_back(done, total);
  };
  Bag bag = store.open_bag("p", options).value();
  ASSERT_FALSE(calls.empty());
  for (std::size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].second, size) << "call " << i;
    if (i > 0) {
      EXPECT_GE(calls[i].first, calls[i - 1].first) << "went backwards at call " << i;
    }
  }
  EXPECT_EQ(calls.back().first, size);
  EXPECT_TRUE(bag.problem().empty());
  EXPECT_EQ(version_of(bag), 1u);
}

TEST(BagRoundTrip, TypeMismatchNamesBothTypes) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  const std::vector<float> values(16, 1.0f);
  store.put_bag("f", std::as_bytes(std::span<const float>(values)), BagWriteOptions::of<float>());
  store.put_bag("raw", std::as_bytes(std::span<const float>(values)));
  Bag f = store.open_bag("f").value();
  Bag raw = store.open_bag("raw").value();

  auto mismatch = [](auto&& read) -> std::string {
    try {
      read();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kTypeMismatch);
      return e.message();
    }
    ADD_FAILURE() << "no type mismatch";
    return "";
  };
  // Same size, other type.
  std::string message = mismatch([&] { f.as<std::int32_t>(); });
  EXPECT_NE(message.find("float32"), std::string::npos) << message;
  EXPECT_NE(message.find("int32"), std::string::npos) << message;
  EXPECT_NE(message.find("bag f"), std::string::npos) << message;
  message = mismatch([&] { f.as<double>(); });
  EXPECT_NE(message.find("float32"), std::string::npos) << message;
  EXPECT_NE(message.find("float64"), std::string::npos) << message;
  // Untyped bytes are not any type, not even bytes.
  message = mismatch([&] { raw.as<float>(); });
  EXPECT_NE(message.find("untyped"), std::string::npos) << message;
  EXPECT_NE(message.find("float32"), std::string::npos) << message;
  // The right type works, and the bytes are always there.
  EXPECT_EQ(f.as<float>().size(), 16u);
  EXPECT_EQ(raw.bytes().size(), 64u);
}

TEST(BagRoundTrip, ScratchWritesNeverReachTheFileOrOtherMappings) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  const std::uint64_t size = 3 * 4096 + 123;
  const std::vector<std::byte> payload = versioned(9, size);
  store.put_bag("s", payload);
  const std::string path = dir / "s/bags/s.bag";
  const std::vector<char> file_before = read_file(path);

  Bag writer = store.open_bag("s").value();
  Bag other = store.open_bag("s").value();
  std::span<std::byte> scratch = writer.scratch();
  ASSERT_EQ(scratch.size(), size);
  EXPECT_TRUE(std::equal(scratch.begin(), scratch.end(), payload.begin()));  // starts as the bag
  for (std::byte& b : scratch) b = ~b;
  scratch[0] = std::byte{0x5a};
  // Asking again gives the same private copy, with its changes.
  std::span<std::byte> again = writer.scratch();
  EXPECT_EQ(again.data(), scratch.data());
  EXPECT_EQ(again[0], std::byte{0x5a});

  // Neither this Bag's own view, nor another Bag, nor the file, nor another
  // process saw any of it.
  EXPECT_TRUE(std::equal(writer.bytes().begin(), writer.bytes().end(), payload.begin()));
  EXPECT_TRUE(std::equal(other.bytes().begin(), other.bytes().end(), payload.begin()));
  EXPECT_EQ(read_file(path), file_before);
  const std::string root = dir / "s";
  EXPECT_EQ(run_in_child([&] {
              Store s = Store::open(root).value();
              Bag fresh = s.open_bag("s").value();
              EXPECT_EQ(version_of(fresh), 9u);
            }),
            0);
  EXPECT_TRUE(store.verify("s").front().ok());
  // Nor does it after the scratch mapping is gone.
  { Bag dropped = std::move(writer); }
  EXPECT_EQ(read_file(path), file_before);
  EXPECT_EQ(version_of(store.open_bag("s").value()), 9u);
}

// A bag of more than 4 GiB: mostly a hole (skip_zeros), with real bytes before
// and beyond the 4 GiB mark, so any 32-bit size or offset shows.
TEST(BagRoundTrip, SparseBagBeyondFourGiB) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  const std::string head = "head of the bag";
  const std::string far = "written beyond 4 GiB";
  const std::string tail = "the last bytes";
  const std::uint64_t far_at = 4 * kGiB + 4097;          // not page-aligned
  const std::uint64_t size = 4 * kGiB + 64 * kMiB + 11;  // > 4 GiB, odd
  const std::uint64_t tail_at = size - tail.size();
  auto bytes_of = [](const std::string& s) {
    return std::span<const std::byte>(reinterpret_cast<const std::byte*>(s.data()), s.size());
  };

  BagWriter writer = store.create_bag("huge");
  writer.write(bytes_of(head));
  writer.skip_zeros(far_at - head.size());
  writer.write(bytes_of(far));
  writer.skip_zeros(tail_at - far_at - far.size());
  writer.write(bytes_of(tail));
  ASSERT_EQ(writer.written(), size);
  const BagInfo written = writer.commit();
  EXPECT_EQ(written.size, size);

  // The checksum is of exactly these bytes: computed here independently.
  XXH3_state_t* state = XXH3_createState();
  XXH3_128bits_reset(state);
  static const std::vector<std::byte> zeros(4 * kMiB);
  auto hash_zeros = [&](std::uint64_t n) {
    for (; n > 0;) {
      const std::uint64_t step = std::min<std::uint64_t>(n, zeros.size());
      XXH3_128bits_update(state, zeros.data(), step);
      n -= step;
    }
  };
  XXH3_128bits_update(state, head.data(), head.size());
  hash_zeros(far_at - head.size());
  XXH3_128bits_update(state, far.data(), far.size());
  hash_zeros(tail_at - far_at - far.size());
  XXH3_128bits_update(state, tail.data(), tail.size());
  const XXH128_hash_t expected = XXH3_128bits_digest(state);
  EXPECT_EQ(written.checksum.high, expected.high64);
  EXPECT_EQ(written.checksum.low, expected.low64);
  XXH3_freeState(state);

  // The file holds holes, not 4 GiB of zeros.
  const std::string path = dir / "s/bags/huge.bag";
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<std::uint64_t>(st.st_size), size + 4096);
  EXPECT_LT(static_cast<std::uint64_t>(st.st_blocks) * 512, 1 * kMiB)
      << "the sparse bag takes " << st.st_blocks * 512 << " bytes on disk";

  {
    Bag bag = store.open_bag("huge").value();  // verifies all 4 GiB + of the payload
    EXPECT_EQ(bag.info().size, size);
    EXPECT_EQ(bag.info().checksum, written.checksum);
    const std::span<const std::byte> bytes = bag.bytes();
    ASSERT_EQ(bytes.size(), size);
    auto holds_at = [&](const std::string& s, std::uint64_t at) {
      return std::memcmp(bytes.data() + at, s.data(), s.size()) == 0;
    };
    EXPECT_TRUE(holds_at(head, 0));
    EXPECT_TRUE(holds_at(far, far_at));
    EXPECT_TRUE(holds_at(tail, tail_at));
    EXPECT_EQ(bytes[far_at - 1], std::byte{0});
    EXPECT_EQ(bytes[4 * kGiB], std::byte{0});
    EXPECT_EQ(bytes[far_at + far.size()], std::byte{0});
  }
  const std::vector<BagCheck> checks = store.verify("huge");
  ASSERT_EQ(checks.size(), 1u);
  EXPECT_TRUE(checks[0].ok()) << checks[0].problem;
  EXPECT_EQ(store.bag_info("huge").size, size);
}

// --- Corruption ----------------------------------------------------------------

TEST(BagCorruption, FlippedPayloadByteIsCaughtByVerifyAndOpen) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  for (const char* name : {"a", "b", "c"}) put_versioned(store, name, 1, 200000);
  for (const BagCheck& check : store.verify()) EXPECT_TRUE(check.ok()) << check.name;

  const std::string path = dir / "s/bags/b.bag";
  const std::uint64_t header = file_size(path) - 200000;
  const std::uint64_t offset = 123457;
  flip_byte(path, header + offset);

  const std::vector<BagCheck> checks = store.verify();
  ASSERT_EQ(checks.size(), 3u);
  EXPECT_EQ(checks[0].name, "a");
  EXPECT_TRUE(checks[0].ok()) << checks[0].problem;
  EXPECT_EQ(checks[1].name, "b");
  EXPECT_FALSE(checks[1].ok());
  EXPECT_NE(checks[1].problem.find("checksum"), std::string::npos) << checks[1].problem;
  EXPECT_EQ(checks[2].name, "c");
  EXPECT_TRUE(checks[2].ok()) << checks[2].problem;
  const std::vector<BagCheck> one = store.verify("b");
  ASSERT_EQ(one.size(), 1u);
  EXPECT_FALSE(one[0].ok());

  auto refused = store.open_bag("b");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code(), Errc::kCorrupted);
  EXPECT_NE(refused.error().message().find("bag b"), std::string::npos);
  EXPECT_NE(refused.error().message().find("payload checksum"), std::string::npos)
      << refused.error().message();

  // Forensic: mapped anyway, the damage visible where it was made.
  BagOpenOptions forensic;
  forensic.forensic = true;
  Bag damaged = store.open_bag("b", forensic).value();
  EXPECT_NE(damaged.problem().find("payload checksum"), std::string::npos) << damaged.problem();
  ASSERT_EQ(damaged.bytes().size(), 200000u);
  const std::vector<std::byte> good = versioned(1, 200000);
  EXPECT_EQ(damaged.bytes()[offset], ~good[offset]);
  std::uint64_t differences = 0;
  for (std::uint64_t i = 0; i < good.size(); ++i) differences += damaged.bytes()[i] != good[i];
  EXPECT_EQ(differences, 1u);

  // Told not to read the payload, open trusts the (sound) header.
  BagOpenOptions header_only;
  header_only.verify_payload = false;
  EXPECT_TRUE(store.open_bag("b", header_only).ok());
  EXPECT_EQ(store.bag_info("b").size, 200000u);
  // Its neighbours are untouched, and a sound bag opened forensic has no problem.
  EXPECT_TRUE(store.open_bag("a", forensic).value().problem().empty());
  EXPECT_EQ(version_of(store.open_bag("a").value()), 1u);
  EXPECT_EQ(version_of(store.open_bag("c").value()), 1u);
}

TEST(BagCorruption, FlippedHeaderByteIsRefusedWithAHeaderChecksumMessage) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  BagWriteOptions options = BagWriteOptions::of<std::uint32_t>();
  options.tags = {{"k", "value"}};
  store.put_bag("h", versioned(2, 4096), options);
  put_versioned(store, "ok", 2, 4096);
  const std::string path = dir / "s/bags/h.bag";
  const std::uint64_t size = file_size(path);
  // In turn: the payload size, the creation time and a tag's value.
  for (const std::uint64_t offset : {24u, 40u, 56u + 6u + 6u + 1u + 2u}) {
    SCOPED_TRACE("header byte " + std::to_string(offset));
    flip_byte(path, offset);
    auto refused = store.open_bag("h");
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.error().code(), Errc::kCorrupted);
    EXPECT_NE(refused.error().message().find("header checksum"), std::string::npos)
        << refused.error().message();
    EXPECT_NE(refused.error().message().find("bag h"), std::string::npos);
    EXPECT_THROW(store.bag_info("h"), Error);

    const std::vector<BagCheck> checks = store.verify();
    ASSERT_EQ(checks.size(), 2u);
    EXPECT_EQ(checks[0].name, "h");
    EXPECT_NE(checks[0].problem.find("header checksum"), std::string::npos) << checks[0].problem;
    EXPECT_TRUE(checks[1].ok()) << checks[1].problem;

    // Forensic: the whole file, header included, for inspection.
    BagOpenOptions forensic;
    forensic.forensic = true;
    Bag raw = store.open_bag("h", forensic).value();
    EXPECT_NE(raw.problem().find("header checksum"), std::string::npos) << raw.problem();
    EXPECT_EQ(raw.bytes().size(), size);
    EXPECT_EQ(std::memcmp(raw.bytes().data(), "SHEAFBAG", 8), 0);
    flip_byte(path, offset);  // mend it: the next flip is the only one
    EXPECT_TRUE(store.open_bag("h").ok());
  }
}

TEST(BagCorruption, TruncatedAndForeignFilesAreRefused) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  put_versioned(store, "t", 1, 10000);
  const std::string path = dir / "s/bags/t.bag";
  std::filesystem::resize_file(path, file_size(path) - 1);
  auto truncated = store.open_bag("t");
  ASSERT_FALSE(truncated.ok());
  EXPECT_EQ(truncated.error().code(), Errc::kCorrupted);
  EXPECT_NE(truncated.error().message().find("truncated"), std::string::npos)
      << truncated.error().message();

  write_file(dir / "s/bags/foreign.bag", std::vector<char>(5000, 'z'));
  auto foreign = store.open_bag("foreign");
  ASSERT_FALSE(foreign.ok());
  EXPECT_EQ(foreign.error().code(), Errc::kUnsupported);
  write_file(dir / "s/bags/zero.bag", {});
  EXPECT_FALSE(store.open_bag("zero").ok());
  const std::vector<BagCheck> checks = store.verify();
  ASSERT_EQ(checks.size(), 3u);
  for (const BagCheck& check : checks) EXPECT_FALSE(check.ok()) << check.name;
}

// Regression (was a bug): verify()'s progress announces a total of whole files (headers included)
// but counts payload bytes only, so it never reaches the total (a progress bar stops short of
// 100%); and a bag that fails to open does not advance it at all.
TEST(StoreVerify, ProgressEndsAtTheTotalItAnnounced) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  put_versioned(store, "a", 1, 100000);
  put_versioned(store, "b", 1, 5 * kMiB);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
  const std::vector<BagCheck> checks = store.verify(
      std::nullopt,
      [&](std::uint64_t done, std::uint64_t total) { calls.emplace_back(done, total); });
  ASSERT_EQ(checks.size(), 2u);
  for (const BagCheck& check : checks) EXPECT_TRUE(check.ok()) << check.problem;
  ASSERT_FALSE(calls.empty());
  for (std::size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].second, calls[0].second) << "the total changed at call " << i;
    EXPECT_LE(calls[i].first, calls[i].second) << "call " << i;
    if (i > 0) {
      EXPECT_GE(calls[i].first, calls[i - 1].first) << "went backwards at call " << i;
    }
  }
  EXPECT_EQ(calls.back().first, calls.back().second) << "progress stops short";
}

// Regression (was a bug): bag_names() lists every *.bag file in bags/, even one whose name
// check_name() refuses (put there by hand or by another tool), and verify() then throws
// Error(kInvalidArgument) from bag_path() outside its per-bag try, so one stray file stops the
// check of the whole store.
TEST(StoreVerify, AStrayFileWithABadNameDoesNotStopVerify) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  put_versioned(store, "good", 1, 1000);
  write_file(dir / "s/bags/bad name.bag", std::vector<char>(5000, 'x'));
  std::vector<BagCheck> checks;
  try {
    checks = store.verify();
  } catch (const Error& e) {
    ADD_FAILURE() << "verify() threw: " << e.message();
  }
  for (const BagCheck& check : checks) {
    if (check.name == "good") {
      EXPECT_TRUE(check.ok()) << check.problem;
    } else if (check.name == "bad name") {
      EXPECT_FALSE(check.ok());
    }
  }
  EXPECT_TRUE(std::any_of(checks.begin(), checks.end(),
                          [](const BagCheck& check) { return check.name == "good"; }));
}

TEST(StoreVerify, VerifyOfAMissingBagIsNotFound) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  try {
    store.verify("absent");
    ADD_FAILURE() << "verify of a missing bag returned";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kNotFound);
    EXPECT_NE(e.message().find("bag absent"), std::string::npos) << e.message();
  }
  EXPECT_TRUE(store.verify().empty());
}

// --- Writers that fail to finish -------------------------------------------------

TEST(BagWrite, AbandonedWriterLeavesNothingAndKeepsTheOldBag) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  put_versioned(store, "x", 1, 50000);
  {
    BagWriter writer = store.create_bag("x");
    writer.write(versioned(2, 50000));
    // Under way: a temporary in tmp/, never anything new in bags/.
    const std::vector<std::string> temps = list_dir(dir / "s/tmp");
    ASSERT_EQ(temps.size(), 1u);
    EXPECT_EQ(temps[0].find(".bag"), std::string::npos) << temps[0];
    EXPECT_EQ(list_dir(dir / "s/bags"), std::vector<std::string>{"x.bag"});
    EXPECT_EQ(version_of(store.open_bag("x").value()), 1u);
  }
  EXPECT_EQ(list_dir(dir / "s/tmp"), std::vector<std::string>{});
  EXPECT_EQ(version_of(store.open_bag("x").value()), 1u);
  { BagWriter never_written = store.create_bag("new"); }
  EXPECT_EQ(list_dir(dir / "s/tmp"), std::vector<std::string>{});
  EXPECT_EQ(store.bag_names(), std::vector<std::string>{"x"});
}

// Regression (was a bug): commit() accepts a typed payload whose size is not a multiple of the
// element size and writes a header that parse_bag_header refuses ("element size 4 for 7 bytes",
// parse_bag_header in heap/src/bags/bag.cpp), so the put succeeds, the previous bag of that name is
// replaced, and the new one can never be opened.
TEST(BagWrite, TypedPayloadOfAPartialElementIsRefusedNotCommitted) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  const std::vector<float> values(4, 2.0f);
  store.put_bag("f", std::as_bytes(std::span<const float>(values)), BagWriteOptions::of<float>());
  const std::vector<std::byte> seven(7, std::byte{1});
  try {
    store.put_bag("f", seven, BagWriteOptions::of<float>());
    ADD_FAILURE() << "put_bag committed 7 bytes as float32";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kInvalidArgument) << e.message();
  }
  // Whatever put_bag did, what is in the store must open.
  auto bag = store.open_bag("f");
  ASSERT_TRUE(bag.ok()) << "" << bag.error().message();
  EXPECT_EQ(bag.value().as<float>().size(), 4u);
}

// Regression (was a bug): create_bag accepts up to 256 tags of up to 4096-byte values, but
// parse_bag_header refuses any header larger than kMaxHeaderBytes (1 MiB), and 256 tags of 4-byte
// keys and 4096-byte values make a header of 1052672 bytes: the put succeeds (replacing any
// previous bag of that name) and the bag never opens ("corrupted header (header size 1052672)").
// encode_bag_header should refuse a header over kMaxHeaderBytes, as parse_bag_header does: e.g.
// throw kInvalidArgument when bag_header_bytes(info) > kMaxHeaderBytes.
TEST(BagWrite, TagsTheWriterAcceptsTheReaderAccepts) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  BagWriteOptions options;
  for (int i = 0; i < 256; ++i) {
    char key[8];
    std::snprintf(key, sizeof(key), "k%03d", i);
    options.tags[key] = std::string(4096, static_cast<char>('a' + i % 26));
  }
  bool committed = false;
  try {
    store.put_bag("tagged", versioned(1, 100), options);
    committed = true;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kInvalidArgument) << e.message();  // refusing is fine
  }
  if (committed) {
    auto bag = store.open_bag("tagged");
    ASSERT_TRUE(bag.ok()) << "committed, but: " << bag.error().message();
    EXPECT_EQ(bag.value().info().tags, options.tags);
  }
}

TEST(BagWrite, BadTypesAndTagsAreRefusedAtCreate) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  BagWriteOptions no_size;
  no_size.element_type = "float32";
  EXPECT_THROW(store.create_bag("a", no_size), Error);
  BagWriteOptions long_type;
  long_type.element_type = std::string(257, 't');
  long_type.element_size = 1;
  EXPECT_THROW(store.create_bag("a", long_type), Error);
  BagWriteOptions empty_key;
  empty_key.tags[""] = "v";
  EXPECT_THROW(store.create_bag("a", empty_key), Error);
  BagWriteOptions long_value;
  long_value.tags["k"] = std::string(4097, 'v');
  EXPECT_THROW(store.create_bag("a", long_value), Error);
  EXPECT_EQ(list_dir(dir / "s/tmp"), std::vector<std::string>{});
  EXPECT_TRUE(store.bag_names().empty());
}

// --- Temporaries of live and dead writers ------------------------------------------

// A writer in another process, stopped mid-write until told to go on.
struct BlockedWriter {
  Pipe progress;  // child -> parent: 'w' once it has written, 'c' once committed
  Pipe go;        // parent -> child: 'c' to commit
  std::unique_ptr<Child> child;

  BlockedWriter(const std::string& root, const std::string& name, std::uint64_t version) {
    child = std::make_unique<Child>([&] {
      progress.close_read();
      go.close_write();
      Store store = Store::open(root).value();
      BagWriter writer = store.create_bag(name);
      const std::vector<std::byte> payload = versioned(version, 2 * kMiB);
      writer.write(std::span<const std::byte>(payload).first(kMiB));
      write_byte(progress.write_end(), 'w');
      if (read_byte(go.read_end()) != 'c') throw std::runtime_error("bad command");
      writer.write(std::span<const std::byte>(payload).subspan(kMiB));
      writer.commit();
      write_byte(progress.write_end(), 'c');
    });
    progress.close_write();
    go.close_read();
    if (read_byte(progress.read_end()) != 'w') throw std::runtime_error("writer did not start");
  }
};

TEST(StoreSweep, LiveWritersKeepTheirTemporaryDeadOnesLoseIt) {
  TempDir dir;
  const std::string root = dir / "s";
  Store store = Store::init(root).value();
  put_versioned(store, "live", 1, 1000);

  BlockedWriter live(root, "live", 2);
  BlockedWriter dead(root, "dead", 3);
  const std::vector<std::string> temps = list_dir(root + "/tmp");
  ASSERT_EQ(temps.size(), 2u);

  // Killed mid-write: its temporary stays until a store is opened.
  dead.child->kill();
  EXPECT_EQ(dead.child->wait_code(), 128 + SIGKILL);
  EXPECT_EQ(list_dir(root + "/tmp"), temps);

  // Opening sweeps the dead writer's file and only that.
  Store reopened = Store::open(root).value();
  const std::vector<std::string> after = list_dir(root + "/tmp");
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].rfind("live.", 0), 0u) << after[0];
  EXPECT_EQ(reopened.bag_names(), std::vector<std::string>{"live"});
  EXPECT_EQ(version_of(reopened.open_bag("live").value()), 1u);
  // Opening again, in another process too, still leaves the live one alone.
  EXPECT_EQ(run_in_child([&] { Store::open(root).value(); }), 0);
  EXPECT_EQ(list_dir(root + "/tmp"), after);

  // The live writer finishes: its bag replaces the old one, tmp/ is empty.
  write_byte(live.go.write_end(), 'c');
  EXPECT_EQ(read_byte(live.progress.read_end()), 'c');
  EXPECT_EQ(live.child->wait_code(), 0);
  EXPECT_EQ(list_dir(root + "/tmp"), std::vector<std::string>{});
  EXPECT_EQ(list_dir(root + "/bags"), std::vector<std::string>{"live.bag"});
  EXPECT_EQ(version_of(reopened.open_bag("live").value()), 2u);
}

TEST(StoreSweep, OpenInTheWritersOwnProcessKeepsItsTemporary) {
  TempDir dir;
  Store store = Store::init(dir / "s").value();
  BagWriter writer = store.create_bag("mine");
  writer.write(versioned(4, 10000));
  Store::open(dir / "s").value();  // sweeps, in the process that is writing
  ASSERT_EQ(list_dir(dir / "s/tmp").size(), 1u);
  writer.commit();
  EXPECT_EQ(version_of(store.open_bag("mine").value()), 4u);
  EXPECT_EQ(list_dir(dir / "s/tmp"), std::vector<std::string>{});
}

// Regression (was a bug): a Store::open in another process can sweep the temporary of a writer
// that is alive, in two windows: between create_bag's open(O_CREAT) and its fcntl(F_OFD_SETLK),
// and between commit's close(fd), which drops the lock, and its rename/link.
struct RaceResult {
  int puts = 0;
  int failures = 0;
  long opens = 0;
  std::string first_error;
};

// One process puts small bags as fast as it can; this one opens the store
// (and so sweeps tmp/) as often as it can meanwhile.
RaceResult put_while_opening(const std::string& root, int puts) {
  RaceResult result;
  result.puts = puts;
  Pipe report;
  Child writer([&] {
    report.close_read();
    Store s = Store::open(root).value();
    const std::vector<std::byte> payload = versioned(1, 512);
    std::int32_t failures = 0;
    char first[200] = {};
    for (int i = 0; i < puts; ++i) {
      try {
        s.put_bag("hot", payload);
      } catch (const Error& e) {
        if (failures++ == 0) std::snprintf(first, sizeof(first), "%s", e.what());
      }
    }
    if (::write(report.write_end(), &failures, sizeof(failures)) != sizeof(failures) ||
        ::write(report.write_end(), first, sizeof(first)) != sizeof(first)) {
      _exit(3);
    }
  });
  report.close_write();
  for (; result.opens < 100000000; ++result.opens) {  // bounded; the writer ends first
    pollfd ready{report.read_end(), POLLIN, 0};
    if (::poll(&ready, 1, 0) > 0) break;
    Store::open(root).value();
  }
  std::int32_t failures = -1;
  char first[200] = {};
  EXPECT_TRUE(read_full(report.read_end(), &failures, sizeof(failures)) &&
              read_full(report.read_end(), first, sizeof(first)));
  EXPECT_EQ(writer.wait_code(), 0);
  result.failures = failures;
  result.first_error = first;
  std::printf("%s: %d puts against %ld concurrent opens: %d failed%s%s\n", root.c_str(), puts,
              result.opens, failures, failures ? ", the first with: " : "", first);
  return result;
}

TEST(StoreSweep, OpeningWhileOthersCommitNeverBreaksAWriter) {
  {
    TempDir dir;
    Store store = Store::init(dir / "s").value();
    const RaceResult disk = put_while_opening(dir / "s", 300);
    EXPECT_EQ(disk.failures, 0) << "a concurrent Store::open swept a live writer's "
                                   "temporary; first error: "
                                << disk.first_error;
    EXPECT_EQ(version_of(store.open_bag("hot").value()), 1u);
    EXPECT_EQ(list_dir(dir / "s/tmp"), std::vector<std::string>{});
  }
  // On a tmpfs commits take microseconds, so many more of them race the opens.
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs for the fast half";
  TempDir dir;
  TmpfsMount mount(dir / "fs", "64m");
  if (!mount.ok()) GTEST_SKIP() << mount.why();
  Store store = Store::init(dir / "fs/s").value();
  const RaceResult memory = put_while_opening(dir / "fs/s", 10000);
  EXPECT_EQ(memory.failures, 0) << "a concurrent Store::open swept a live writer's "
                                   "temporary; first error: "
                                << memory.first_error;
  EXPECT_EQ(version_of(store.open_bag("hot").value()), 1u);
}

// --- Writers SIGKILLed at random instants ---------------------------------------

struct Committed {
  std::uint64_t version;
  std::uint64_t size;
};

std::uint64_t random_size(std::mt19937_64& random) {
  switch (random() % 3) {
    case 0:
      return kStamp + random() % 4096;
    case 1:
      return kStamp + random() % (256 << 10);
    default:
      return kStamp + random() % (3 * kMiB);
  }
}

// Replaces bag "b" with version after version, in 64 KiB writes, reporting
// each version whose commit() returned. Runs until killed.
[[noreturn]] void replace_until_killed(const std::string& root, std::uint64_t first_version,
                                       std::uint64_t seed, int report_fd) {
  try {
    Store store = Store::open(root).value();
    std::mt19937_64 random(seed);
    std::vector<std::byte> chunk(64 << 10);
    write_byte(report_fd, 'r');
    for (std::uint64_t version = first_version; version < first_version + 100000; ++version) {
      const std::uint64_t size = random_size(random);
      BagWriter writer = store.create_bag("b");
      for (std::uint64_t at = 0; at < size;) {
        const std::size_t n =
            static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), size - at));
        fill_versioned(version, size, at, {chunk.data(), n});
        writer.write({chunk.data(), n});
        at += n;
      }
      writer.commit();
      const Committed done{version, size};
      if (::write(report_fd, &done, sizeof(done)) != sizeof(done)) _exit(3);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "writer: %s\n", e.what());
    _exit(1);
  }
  _exit(0);
}

int bag_kills() {
  const char* text = std::getenv("SHEAF_BAG_KILLS");
  return std::max(1, text ? std::atoi(text) : 100);
}

TEST(BagCrash, SigkillDuringPutLeavesTheOldOrTheNewBagWhole) {
  TempDir dir;
  const std::string root = dir / "s";
  const std::string tmp = root + "/tmp";
  const std::string bags = root + "/bags";
  Store::init(root).value();
  {
    Store store = Store::open(root).value();
    put_versioned(store, "b", 1, 1000);
  }
  std::uint64_t on_disk = 1;  // the version the last check found
  std::mt19937_64 random(20240611);
  const int kills = bag_kills();
  int dead_temporaries = 0;  // kills that left a temporary for open to sweep
  int new_version = 0;       // kills after which the version being written was in place
  int rounds_with_commits = 0;
  std::uint64_t commits = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int round = 0; round < kills; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::uint64_t last = on_disk;  // the newest version known to be committed
    {
      Pipe reports;
      const std::uint64_t seed = random();
      Child writer([&] {
        reports.close_read();
        replace_until_killed(root, on_disk + 1, seed, reports.write_end());
      });
      reports.close_write();
      ASSERT_EQ(read_byte(reports.read_end()), 'r');
      // The random instant: half the time early (mostly mid-write of the first
      // version), half the time anywhere up to a few commits in.
      const std::uint64_t delay_us = random() % 2 ? random() % 5000 : random() % 60000;
      std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
      writer.kill();
      const int status = writer.wait();
      ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
          << "the writer ended on its own, status " << status;
      Committed done{};
      int reported = 0;
      while (read_full(reports.read_end(), &done, sizeof(done))) {
        ASSERT_EQ(done.version, last + 1) << "reports out of order";
        last = done.version;
        ++reported;
      }
      commits += reported;
      rounds_with_commits += reported > 0;
    }

    // Before any open: a dead writer's temporary may be there; in bags/, only b.
    dead_temporaries += !list_dir(tmp).empty();
    ASSERT_EQ(list_dir(bags), std::vector<std::string>{"b.bag"});
    Store store = Store::open(root).value();
    ASSERT_EQ(list_dir(tmp), std::vector<std::string>{}) << "open left a dead writer's temporary";
    ASSERT_EQ(list_dir(bags), std::vector<std::string>{"b.bag"});
    ASSERT_EQ(store.bag_names(), std::vector<std::string>{"b"});
    auto bag = store.open_bag("b");  // checks the payload's checksum
    ASSERT_TRUE(bag.ok()) << bag.error().message();
    std::uint64_t version = 0;
    const std::string problem = check_versioned(bag.value().bytes(), &version);
    ASSERT_EQ(problem, "") << "torn bag";
    ASSERT_TRUE(version == last || version == last + 1)
        << "found version " << version << ", last committed " << last;
    new_version += version == last + 1;
    on_disk = version;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "%d kills in %.1f s: %llu commits reported; %d kills left a temporary, %d found the "
      "version being written in place, %d came after a commit\n",
      kills, seconds, static_cast<unsigned long long>(commits), dead_temporaries, new_version,
      rounds_with_commits);
  // The kills must have landed mid-write (else the sweep was not tested) and
  // after commits (else the ordering was not).
  if (kills >= 50) {
    EXPECT_GT(dead_temporaries, 0);
    EXPECT_GT(rounds_with_commits, 0);
  }
}

// --- A full filesystem --------------------------------------------------------------

TEST(BagFull, EnospcDuringPutIsAClearErrorAndLosesNothing) {
  TempDir dir;
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
  TmpfsMount mount(dir / "fs", "4m");
  if (!mount.ok() && (mount.error() == EPERM || mount.error() == EACCES)) {
    GTEST_SKIP() << mount.why() << " (not allowed in this environment)";
  }
  ASSERT_TRUE(mount.ok()) << mount.why();
  const std::string root = dir / "fs/s";
  Store store = Store::init(root).value();
  put_versioned(store, "keep", 1, kMiB);

  auto expect_out_of_space = [&](const std::function<void()>& put, const std::string& name) {
    try {
      put();
      ADD_FAILURE() << "bag " << name << " fit in a 4 MiB filesystem";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kOutOfSpace) << e.message();
      EXPECT_EQ(e.sys_errno(), ENOSPC) << e.message();
      EXPECT_NE(e.message().find("bag " + name), std::string::npos) << e.message();
      EXPECT_NE(e.message().find(std::strerror(ENOSPC)), std::string::npos) << e.message();
    }
  };
  auto expect_only_keep = [&](std::uint64_t version) {
    EXPECT_EQ(list_dir(root + "/bags"), std::vector<std::string>{"keep.bag"});
    EXPECT_EQ(list_dir(root + "/tmp"), std::vector<std::string>{});
    auto keep = store.open_bag("keep");
    ASSERT_TRUE(keep.ok()) << keep.error().message();
    EXPECT_EQ(version_of(keep.value()), version);
    EXPECT_EQ(keep.value().info().size, kMiB);
    const std::vector<BagCheck> checks = store.verify();
    ASSERT_EQ(checks.size(), 1u);
    EXPECT_TRUE(checks[0].ok()) << checks[0].problem;
  };

  // A new bag that does not fit.
  expect_out_of_space([&] { put_versioned(store, "big", 2, 8 * kMiB); }, "big");
  expect_only_keep(1);

  // A replacement that does not fit leaves the old one.
  expect_out_of_space([&] { put_versioned(store, "keep", 3, 8 * kMiB); }, "keep");
  expect_only_keep(1);

  // Streamed: the writer that failed holds its temporary until it is destroyed.
  // (Large payloads are staged in memory before they are written, so the
  // full disk may show at a write or only at commit.)
  {
    BagWriter writer = store.create_bag("streamed");
    const std::vector<std::byte> chunk = versioned(4, kMiB);
    expect_out_of_space(
        [&] {
          for (int i = 0; i < 8; ++i) writer.write(chunk);
          writer.commit();
        },
        "streamed");
    EXPECT_EQ(list_dir(root + "/tmp").size(), 1u);
    EXPECT_EQ(list_dir(root + "/bags"), std::vector<std::string>{"keep.bag"});
  }
  expect_only_keep(1);

  // The disk fills between the payload and the header: commit fails, cleanly.
  {
    BagWriter writer = store.create_bag("keep");
    writer.write(versioned(5, kMiB));
    {
      std::ofstream filler(dir / "fs/filler", std::ios::binary);
      const std::vector<char> block(4096, 'f');
      for (int i = 0; i < 2048 && filler.write(block.data(), block.size()); ++i) {
      }
    }
    expect_out_of_space([&] { writer.commit(); }, "keep");
  }
  expect_only_keep(1);
  std::filesystem::remove(dir / "fs/filler");

  // Nothing leaked: the space is all back, so a bag that fits still goes in.
  put_versioned(store, "keep", 6, kMiB);
  put_versioned(store, "more", 7, 2 * kMiB);
  EXPECT_EQ(version_of(store.open_bag("keep").value()), 6u);
  EXPECT_EQ(version_of(store.open_bag("more").value()), 7u);
  EXPECT_EQ(list_dir(root + "/tmp"), std::vector<std::string>{});
}

// --- Readers while the bag is replaced --------------------------------------------

TEST(BagReaders, KeepTheirMappingWhileTheBagIsReplacedAndRemoved) {
  TempDir dir;
  const std::string root = dir / "s";
  Store store = Store::init(root).value();
  constexpr std::uint64_t kSize = 2 * kMiB + 17;
  constexpr std::uint64_t kLast = 8;
  put_versioned(store, "r", 1, kSize);

  // A reader in another process maps version 1 and reads it over and over
  // while the replacements happen, and once more after them.
  Pipe opened;  // reader -> test: 'o' once mapped
  Pipe done;    // test -> reader: closed when the replacements are done
  Child reader([&] {
    opened.close_read();
    done.close_write();
    Store s = Store::open(root).value();
    Bag bag = s.open_bag("r").value();
    const std::span<const std::byte> span = bag.bytes();
    write_byte(opened.write_end(), 'o');
    int passes = 0;
    for (bool finished = false; !finished && passes < 100000; ++passes) {
      pollfd ready{done.read_end(), POLLIN, 0};
      finished = ::poll(&ready, 1, 0) > 0;
      std::uint64_t version = 0;
      const std::string problem = check_versioned(span, &version);
      if (!problem.empty() || version != 1) {
        std::fprintf(stderr, "reader, pass %d: %s (version %llu)\n", passes, problem.c_str(),
                     static_cast<unsigned long long>(version));
        _exit(4);
      }
    }
    // A fresh open sees the newest version.
    std::uint64_t version = 0;
    Bag fresh = s.open_bag("r").value();
    if (!check_versioned(fresh.bytes(), &version).empty() || version != kLast) _exit(5);
  });
  opened.close_write();
  done.close_read();
  ASSERT_EQ(read_byte(opened.read_end()), 'o');

  // The replacements, by another process, once told to start. (Forked now,
  // before this process has threads.)
  Pipe start;
  Child replacer([&] {
    start.close_write();
    Store s = Store::open(root).value();
    if (read_byte(start.read_end()) != 'g') throw std::runtime_error("bad command");
    for (std::uint64_t v = 2; v <= kLast; ++v) put_versioned(s, "r", v, kSize);
  });
  start.close_read();

  // A reader thread here too, holding version 1 ...
  Bag held = store.open_bag("r").value();
  const std::span<const std::byte> held_span = held.bytes();
  // ... and one opening afresh all along: always some whole version, never older.
  std::atomic<bool> stop{false};
  std::atomic<int> fresh_problems{0};
  std::atomic<int> fresh_opens{0};
  std::thread opener([&] {
    std::uint64_t newest = 1;
    for (int i = 0; i < 100000 && !stop.load(); ++i) {
      auto bag = store.open_bag("r");
      std::uint64_t version = 0;
      if (!bag.ok() || !check_versioned(bag.value().bytes(), &version).empty() ||
          version < newest) {
        ++fresh_problems;
      }
      newest = std::max(newest, version);
      ++fresh_opens;
    }
  });

  write_byte(start.write_end(), 'g');
  EXPECT_EQ(replacer.wait_code(), 0);
  stop = true;
  opener.join();
  done.close_write();
  EXPECT_EQ(reader.wait_code(), 0) << "the reader process saw bytes change under its mapping";
  EXPECT_EQ(fresh_problems.load(), 0) << "of " << fresh_opens.load() << " fresh opens";
  EXPECT_GT(fresh_opens.load(), 0);

  std::uint64_t version = 0;
  EXPECT_EQ(check_versioned(held_span, &version), "");
  EXPECT_EQ(version, 1u);
  EXPECT_EQ(version_of(store.open_bag("r").value()), kLast);

  // Removed: the mapping still holds version 1.
  ASSERT_TRUE(store.remove_bag("r"));
  EXPECT_EQ(check_versioned(held_span, &version), "");
  EXPECT_EQ(version, 1u);
  EXPECT_FALSE(store.open_bag("r").ok());
  EXPECT_EQ(list_dir(root + "/tmp"), std::vector<std::string>{});
}

// Faults injected through the one POSIX layer: a failed write, fsync or
// rename of a bag put is reported, leaves the old bag whole and nothing in
// tmp/; an interrupted call (EINTR) is retried and the put succeeds.
struct FaultsCleared {
  ~FaultsCleared() { posix::clear_faults(); }
};

TEST(BagFaults, EveryFailedStepOfAPutIsReportedAndLosesNothing) {
  TempDir dir;
  FaultsCleared cleared;
  Store store = Store::init(dir / "s").value();
  const std::string old_bytes(100000, 'o');
  store.put_bag("b", std::as_bytes(std::span(old_bytes)));
  const std::string new_bytes(300000, 'n');
  for (const auto& [op, error] :
       {std::pair{posix::Op::kWrite, ENOSPC}, std::pair{posix::Op::kFsync, EIO},
        std::pair{posix::Op::kLink, EIO}}) {
    posix::inject_fault(op, error);
    try {
      store.put_bag("b", std::as_bytes(std::span(new_bytes)));
      ADD_FAILURE() << "a put with an injected " << std::strerror(error) << " succeeded";
    } catch (const Error& e) {
      EXPECT_EQ(e.sys_errno(), error) << e.message();
      EXPECT_NE(e.message().find("bag b"), std::string::npos) << e.message();
    }
    posix::clear_faults();
    Bag bag = store.open_bag("b").value();
    EXPECT_EQ(bag.bytes().size(), old_bytes.size()) << "the old bag was not kept";
    EXPECT_EQ(list_dir(dir / "s/tmp"), std::vector<std::string>{}) << "a temporary was left";
  }
  posix::inject_fault(posix::Op::kWrite, EINTR, 3);
  store.put_bag("b", std::as_bytes(std::span(new_bytes)));
  EXPECT_EQ(store.open_bag("b").value().bytes().size(), new_bytes.size());
}

// A write that failed poisons the writer: later writes and the commit
// throw that failure, and no bag appears whose checksum covers bytes the
// file lacks.
TEST(BagFaults, AFailedWriteIsStickyAndNothingIsCommitted) {
  TempDir dir;
  FaultsCleared cleared;
  Store store = Store::init(dir / "s").value();
  BagWriter writer = store.create_bag("b");
  const std::string bytes(1000, 'x');
  writer.write(std::as_bytes(std::span(bytes)));  // staged, not yet written
  posix::inject_fault(posix::Op::kWrite, ENOSPC);
  EXPECT_THROW(writer.commit(), Error);  // writing what was staged fails
  posix::clear_faults();
  for (int attempt = 0; attempt < 3; ++attempt) {
    try {
      if (attempt == 0) writer.write(std::as_bytes(std::span(bytes)));
      if (attempt == 1) writer.skip_zeros(4096);
      if (attempt == 2) writer.commit();
      ADD_FAILURE() << "call " << attempt << " went on after a failed write";
    } catch (const Error& e) {
      EXPECT_EQ(e.sys_errno(), ENOSPC) << e.message();
      EXPECT_NE(e.message().find("earlier write failed"), std::string::npos) << e.message();
    }
  }
  EXPECT_FALSE(store.open_bag("b").ok());
}

// Bag::copy_payload (what `sheaf bag get -o FILE` uses): a copy from file to
// file with the check beside it, holes kept, every failure reported.
TEST(BagCopy, CopiesDataKeepsHolesAndReportsDamageAndWriteErrors) {
  TempDir dir;
  FaultsCleared cleared;
  Store store = Store::init(dir / "s").value();
  constexpr std::uint64_t kHole = 8 << 20;
  const std::string head(5 * 4096 + 17, 'h');
  const std::string tail(3 * 4096, 't');
  {
    BagWriter writer = store.create_bag("b");
    writer.write(std::as_bytes(std::span(head)));
    writer.skip_zeros(kHole);
    writer.write(std::as_bytes(std::span(tail)));
    writer.commit();
  }
  const std::uint64_t size = head.size() + kHole + tail.size();
  auto copy_to = [&](const std::string& path, bool verify) {
    BagOpenOptions header_only;
    header_only.verify_payload = false;
    const Bag bag = store.open_bag("b", header_only).value();
    posix::Fd out = posix::open_file(path, O_RDWR | O_CREAT | O_TRUNC, path);
    std::uint64_t last = 0;
    bag.copy_payload(out.get(), verify, [&](std::uint64_t done, std::uint64_t total) {
      EXPECT_GE(done, last);
      EXPECT_EQ(total, size);
      last = done;
    });
    EXPECT_EQ(last, size);
    ASSERT_EQ(ftruncate(out.get(), static_cast<off_t>(size)), 0);
  };

  copy_to(dir / "copy", true);
  const std::vector<char> copied = testing::read_file(dir / "copy");
  ASSERT_EQ(copied.size(), size);
  EXPECT_EQ(std::string(copied.data(), head.size()), head);
  EXPECT_EQ(std::string(copied.data() + size - tail.size(), tail.size()), tail);
  EXPECT_TRUE(std::all_of(copied.begin() + static_cast<std::ptrdiff_t>(head.size()),
                          copied.end() - static_cast<std::ptrdiff_t>(tail.size()),
                          [](char c) { return c == 0; }));
  struct stat st {};
  ASSERT_EQ(::stat((dir / "copy").c_str(), &st), 0);
  EXPECT_LT(static_cast<std::uint64_t>(st.st_blocks) * 512, kHole / 2) << "the hole was filled";

  // A write error (ENOSPC from the output) is reported, naming the bag.
  posix::inject_fault(posix::Op::kWrite, ENOSPC);
  try {
    copy_to(dir / "full", true);
    ADD_FAILURE() << "a failed write went unreported";
  } catch (const Error& e) {
    EXPECT_EQ(e.sys_errno(), ENOSPC) << e.message();
    EXPECT_NE(e.message().find("bag b"), std::string::npos) << e.message();
  }
  posix::clear_faults();

  // A damaged payload is copied, then refused; unverified, it is copied as it is.
  {
    posix::Fd bag = posix::open_file(store.bag_path("b"), O_WRONLY, "bag");
    const char flipped = 'X';
    ASSERT_EQ(::pwrite(bag.get(), &flipped, 1, 4096 + 3), 1);
  }
  try {
    copy_to(dir / "damaged", true);
    ADD_FAILURE() << "a damaged payload was copied without complaint";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kCorrupted) << e.message();
    EXPECT_NE(e.message().find("payload checksum mismatch"), std::string::npos) << e.message();
  }
  copy_to(dir / "forensic", false);
  EXPECT_EQ(testing::read_file(dir / "forensic")[3], 'X');
}

}  // namespace
}  // namespace sheaf
