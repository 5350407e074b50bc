// sheaf/bag.hpp: databags, named binary files that processes map and read in place.
//
// A bag is a file in a store (sheaf/store.hpp): a header (format, payload size,
// XXH64 of the payload, element type, creation time, key=value tags; itself
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

struct BagInfo {
  std::string name;
  std::uint64_t size = 0;          // payload bytes
  std::uint64_t checksum = 0;      // XXH64 of the payload, seed 0
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

  struct Impl;

 private:
  friend class Store;
  explicit BagWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A checksum as every tool spells it: 16 lowercase hex digits
// ("0123456789abcdef"), as in `sheaf bag info` and the user.sheaf.xxh64
// attribute of a mounted bag.
std::string checksum_hex(std::uint64_t checksum);

// Validates a bag file's header bytes (at least the first page of the file),
// for a file of `file_size` bytes; throws Error(kCorrupted/kUnsupported) naming
// what is wrong. Exposed for tools and the fuzzer.
BagInfo parse_bag_header(std::span<const std::byte> header, std::uint64_t file_size,
                         const std::string& what);

}  // namespace sheaf
