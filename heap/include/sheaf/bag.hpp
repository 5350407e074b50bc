// sheaf/bag.hpp: databags, named binary files that processes map and read in place.
//
// A bag is a file in a store (sheaf/store.hpp): a header (format, payload size,
// XXH3-128 of the payload, element type, creation time, key=value tags; itself
// checksummed) and the payload, page-aligned so it can be mapped.
//
//   sheaf::Store store = sheaf::Store::open("/data/store").value();
//   sheaf::Bag weights = store.open_bag("weights").value();   // checks both checksums
//   std::span<const float> w = weights.as<float>();           // checks the recorded type
//
// The contract:
// - A Bag maps its payload read-only; the mapping stays valid, with the bytes
//   it had, for as long as the Bag lives, even if the bag is replaced or
//   removed in the store meanwhile.
// - Opening verifies the header checksum and, unless told not to, the payload
//   checksum; a bag that fails either is refused with Error(kCorrupted) naming
//   it. BagOpenOptions::forensic maps it anyway, for inspection.
// - Writing (BagWriter) is atomic and durable: the bag appears, under its
//   name, complete and checksummed, or not at all; a crash or a full disk at
//   any point leaves the previous bag of that name, if any, untouched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "sheaf/error.hpp"
#include "sheaf/type_name.hpp"

namespace sheaf {

// The checksum of a bag's payload (xxHash, seed 0). Bags written by this
// Sheaf (format 2) carry XXH3-128; bags of format 1 carry XXH64 and stay
// readable and verifiable.
struct BagChecksum {
  enum class Algorithm : std::uint8_t { kXxh64, kXxh3_128 };
  Algorithm algorithm = Algorithm::kXxh3_128;
  std::uint64_t high = 0;  // XXH3-128's high half; 0 for XXH64
  std::uint64_t low = 0;   // XXH3-128's low half, or the XXH64
  // As xxhsum prints it (`xxhsum -H2` for XXH3-128, `-H1` for XXH64):
  // 32 or 16 lowercase hex digits, high half first.
  std::string hex() const;
  // "XXH3-128" or "XXH64".
  const char* algorithm_name() const noexcept;
  friend bool operator==(const BagChecksum&, const BagChecksum&) = default;
};

struct BagInfo {
  std::string name;
  std::uint64_t size = 0;          // payload bytes
  BagChecksum checksum;            // of the payload
  std::uint32_t format = 0;        // the file's format version (1: XXH64, 2: XXH3-128)
  std::string element_type;        // "" when the bag holds untyped bytes
  std::uint32_t element_size = 0;  // 0 when untyped
  std::uint64_t created_ns = 0;    // wall clock, ns since the epoch
  std::map<std::string, std::string> tags;
};

// Called with (bytes done, bytes in all) as long work goes on.
using Progress = std::function<void(std::uint64_t done, std::uint64_t total)>;

struct BagOpenOptions {
  bool verify_payload = true;  // recompute the payload checksum (reads every data byte once)
  bool forensic = false;       // map even a bag whose checksums are wrong
  Progress progress;           // told how the payload check goes
};

class Bag {
 public:
  Bag(Bag&&) noexcept;
  Bag& operator=(Bag&&) noexcept;
  ~Bag();

  const BagInfo& info() const noexcept;
  // Why the bag would have been refused; empty unless opened forensic and damaged.
  const std::string& problem() const noexcept;
  // The payload, read-only, in place.
  std::span<const std::byte> bytes() const noexcept;
  // The payload as T, after checking that the bag records T (by
  // sheaf::type_name<T>() and sizeof(T)); Error(kTypeMismatch) otherwise.
  template <class T>
  std::span<const T> as() const {
    check_type(type_tag<T>());
    const auto all = bytes();
    return {reinterpret_cast<const T*>(all.data()), all.size() / sizeof(T)};
  }
  // A private copy-on-write mapping of the payload: writable, and no write
  // ever reaches the file or other processes.
  std::span<std::byte> scratch();
  // Writes the payload to offset 0.. of `out`, a regular file, from the
  // bag's file rather than its mapping: copy_file_range for each run of data
  // (holes stay holes; the caller sizes `out` to info().size), while another
  // thread recomputes the checksum unless `verify` is false. Throws
  // Error(kCorrupted) after the copy if the checksum does not match: the
  // caller discards what was written (`sheaf bag get -o FILE` writes to a
  // temporary that only a sound copy replaces FILE with).
  void copy_payload(int out, bool verify, const Progress& progress = {}) const;
  // The payload's checksum recomputed from the file, in the bag's algorithm
  // (every data byte read once; holes hashed without reading), to compare
  // with info().checksum.
  BagChecksum compute_checksum(const Progress& progress = {}) const;

  struct Impl;

 private:
  friend class Store;
  explicit Bag(std::unique_ptr<Impl> impl);
  void check_type(const TypeTag& type) const;
  std::unique_ptr<Impl> impl_;
};

struct BagWriteOptions {
  std::string element_type;  // "" for untyped bytes
  std::uint32_t element_size = 0;
  std::map<std::string, std::string> tags;
  bool replace = true;  // false: fail with kAlreadyExists if the name is taken

  template <class T>
  static BagWriteOptions of() {
    BagWriteOptions options;
    options.element_type = std::string(type_name<T>());
    options.element_size = sizeof(T);
    return options;
  }
};

// Streams a new bag into a temporary file in the store, checksumming as it
// goes; commit() makes it visible under its name. Destroyed uncommitted, it
// leaves nothing behind.
class BagWriter {
 public:
  BagWriter(BagWriter&&) noexcept;
  BagWriter& operator=(BagWriter&&) noexcept;
  ~BagWriter();

  // A failed write (or skip, or commit) leaves the writer failed: every
  // later call throws that failure again, and the bag is never committed
  // (its checksum would cover bytes the file lacks).
  void write(std::span<const std::byte> bytes);
  // Extends the payload by `bytes` zero bytes without writing them (a hole
  // in the file where the filesystem supports it).
  void skip_zeros(std::uint64_t bytes);
  std::uint64_t written() const noexcept;
  // Writes the header, fsyncs, renames into place, fsyncs the directory.
  BagInfo commit();
  // commit(), under another name than the one it was created with (in the
  // same store), replacing a bag of that name or, without `replace`,
  // failing with kAlreadyExists. For writers that learn the name last: a
  // mounted store's rsync writes `.NAME.XXXXXX` and renames it to NAME.
  // A name the rules refuse is kInvalidArgument and leaves the writer as it was.
  BagInfo commit_as(std::string_view name, bool replace = true);

  struct Impl;

 private:
  friend class Store;
  explicit BagWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Validates a bag file's header bytes (at least the first page of the file),
// for a file of `file_size` bytes; throws Error(kCorrupted/kUnsupported) naming
// what is wrong. Exposed for tools and the fuzzer.
BagInfo parse_bag_header(std::span<const std::byte> header, std::uint64_t file_size,
                         const std::string& what);
// Reads (pread, never a mapping: a file cut short meanwhile is an error, not
// a SIGBUS) and validates the header of the bag file open as `fd`, of
// `file_size` bytes. The payload is not read.
BagInfo read_bag_header(int fd, std::uint64_t file_size, const std::string& what);

}  // namespace sheaf
