// bags/bag_impl.hpp: what bag.cpp and store.cpp share. Internal.
#pragma once

#include <optional>

// xxHash's run-time choice of SIMD code (SSE2, AVX2, AVX-512) for XXH3.
#include <xxh_x86dispatch.h>
#include <xxhash.h>

#include <cstdlib>
#include <future>
#include <memory>
#include <string>

#include "sheaf/bag.hpp"
#include "sheaf/store.hpp"

namespace sheaf {

struct Bag::Impl {
  ~Impl();
  BagInfo info;
  int fd = -1;
  void* map = nullptr;  // the whole file, read-only
  std::uint64_t map_length = 0;
  std::uint64_t header_bytes = 0;
  void* scratch = nullptr;  // the payload, private copy-on-write, once asked for
  std::string problem;      // what a forensic open overlooked
};

// A payload checksum being computed, in either algorithm.
class PayloadHasher {
 public:
  explicit PayloadHasher(BagChecksum::Algorithm algorithm);
  void update(const void* data, std::size_t size);
  BagChecksum digest() const;

 private:
  struct Free {
    void operator()(XXH64_state_t* state) const { XXH64_freeState(state); }
    void operator()(XXH3_state_t* state) const { XXH3_freeState(state); }
  };
  BagChecksum::Algorithm algorithm_;
  std::unique_ptr<XXH64_state_t, Free> xxh64_;
  std::unique_ptr<XXH3_state_t, Free> xxh3_;
};

struct BagWriter::Impl {
  ~Impl();       // removes the temporary file unless committed
  BagInfo info;  // size grows as bytes are written
  std::string temp_path;
  std::string final_path;
  int fd = -1;
  std::uint64_t header_bytes = 0;
  bool replace = true;
  PayloadHasher hasher{BagChecksum::Algorithm::kXxh3_128};
  // Large payloads bypass the page cache: bytes are staged in a page-aligned
  // buffer and written with O_DIRECT once it is full, by a helper thread
  // while the next buffer fills (bag.cpp, stage()).
  int direct_fd = -1;  // the temporary opened O_DIRECT, or -1: buffered writes only
  struct FreeBuffer {
    void operator()(std::byte* p) const { std::free(p); }
  };
  using Buffer = std::unique_ptr<std::byte, FreeBuffer>;
  static Buffer staging_buffer();  // kStaging bytes, page-aligned; null without memory
  void open_direct();              // direct_fd and staging, if the filesystem allows
  Buffer staging;
  Buffer spare;                 // the buffer in_flight writes, or will
  std::future<void> in_flight;  // the helper's write of a full buffer, if any
  void wait_for_write();        // for in_flight; throws its failure
  std::uint64_t staged = 0;     // bytes in staging, not yet in the file
  std::uint64_t flushed = 0;    // payload bytes in the file (or in flight)
  void stage(const std::byte* data, std::uint64_t size);
  void flush_staging(bool final);
  // Sticky failure: the first error of a write, skip or commit, thrown
  // again by every later call.
  std::optional<Error> failure;
  void require_usable() const;  // throws "already committed" or the failure
  template <class Step>
  void failing_on_error(Step&& step) {
    require_usable();
    try {
      step();
    } catch (const Error& e) {
      failure = e;
      throw;
    }
  }
};

std::string encode_bag_header(const BagInfo& info);  // exactly bag_header_bytes(info) long
std::uint64_t bag_header_bytes(const BagInfo& info);
std::unique_ptr<Bag::Impl> map_bag(const std::string& path, const std::string& name,
                                   const BagOpenOptions& options);
// The checksum of `size` bytes at `offset` of fd, read in large sequential chunks.
BagChecksum hash_payload(int fd, std::uint64_t offset, std::uint64_t size,
                         BagChecksum::Algorithm algorithm, const Progress& progress,
                         const std::string& what);

}  // namespace sheaf
