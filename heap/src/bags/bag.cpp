// bag.cpp: the bag file format, reading bags in place and writing them atomically.
//
//   0                     header_bytes (a multiple of 4096)           + size
//   | fixed header | type | tags | checksum | zero padding | payload ... |
//
// The fixed header holds the magic "SHEAFBAG", format version, byte-order
// mark, header size, element size, payload size, the payload's checksum (its
// low 64 bits), the creation time and the length of what follows it (the
// "extra" bytes): in format 2, the payload checksum's high 64 bits; then the
// element type's name, then each tag as (u16 key length, u32 value length,
// key, value). An XXH64 of all of that follows it. The payload starts on a
// page boundary, so it maps.
//
// Format 1 differs only in its payload checksum: XXH64, 64 bits, so its
// extra bytes begin with the type's name. Format 2's XXH3-128 is twice as
// fast to compute (xxHash's AVX2 code, chosen at run time), and the wider
// sum makes an undetected corruption unthinkable. Both are read and
// verified; only format 2 is written. The header's own checksum stays XXH64
// (it covers a few hundred bytes), so every version's header is checked
// before its version is believed.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <future>
#include <optional>
#include <thread>
#include <vector>

#include "../posix.hpp"
#include "bag_impl.hpp"

namespace sheaf {
namespace {

constexpr char kBagMagic[8] = {'S', 'H', 'E', 'A', 'F', 'B', 'A', 'G'};
constexpr std::uint32_t kBagVersion = 2;  // 1: XXH64 payload checksum
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kMaxHeaderBytes = 1 << 20;
constexpr std::size_t kMaxTypeLength = 256;
constexpr std::size_t kMaxTagKey = 256;
constexpr std::size_t kMaxTagValue = 4096;
constexpr std::size_t kMaxTags = 256;

struct Fixed {
  char magic[8];
  std::uint32_t version;
  std::uint32_t endian;
  std::uint32_t header_bytes;
  std::uint32_t element_size;
  std::uint64_t payload_size;
  std::uint64_t payload_checksum;  // XXH64 (format 1) or XXH3-128's low half (2)
  std::uint64_t created_ns;
  std::uint16_t type_length;
  std::uint16_t tag_count;
  std::uint32_t extra_length;  // bytes of type and tags after the fixed header
};
static_assert(sizeof(Fixed) == 56);

template <class T>
void append(std::string& out, const T& value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(value));
}

}  // namespace

// --- The header --------------------------------------------------------------

std::string encode_bag_header(const BagInfo& info) {
  if (info.element_type.size() > kMaxTypeLength) {
    throw Error(Errc::kInvalidArgument, "bag " + info.name + ": element type name longer than " +
                                            std::to_string(kMaxTypeLength) + " bytes");
  }
  if (info.tags.size() > kMaxTags) {
    throw Error(Errc::kInvalidArgument,
                "bag " + info.name + ": more than " + std::to_string(kMaxTags) + " tags");
  }
  if (bag_header_bytes(info) > kMaxHeaderBytes) {
    throw Error(Errc::kInvalidArgument, "bag " + info.name + ": type and tags take more than " +
                                            std::to_string(kMaxHeaderBytes) + " bytes");
  }
  std::string extra;
  append(extra, info.checksum.high);
  extra += info.element_type;
  for (const auto& [key, value] : info.tags) {
    if (key.empty() || key.size() > kMaxTagKey || value.size() > kMaxTagValue) {
      throw Error(Errc::kInvalidArgument, "bag " + info.name + ": tag '" + key +
                                              "': keys have 1 to 256 bytes, values up to 4096");
    }
    append(extra, static_cast<std::uint16_t>(key.size()));
    append(extra, static_cast<std::uint32_t>(value.size()));
    extra += key;
    extra += value;
  }
  Fixed fixed{};
  std::memcpy(fixed.magic, kBagMagic, sizeof(kBagMagic));
  fixed.version = kBagVersion;
  fixed.endian = posix::kEndianMark;
  fixed.header_bytes = static_cast<std::uint32_t>(bag_header_bytes(info));
  fixed.element_size = info.element_size;
  fixed.payload_size = info.size;
  fixed.payload_checksum = info.checksum.low;
  fixed.created_ns = info.created_ns;
  fixed.type_length = static_cast<std::uint16_t>(info.element_type.size());
  fixed.tag_count = static_cast<std::uint16_t>(info.tags.size());
  fixed.extra_length = static_cast<std::uint32_t>(extra.size());
  std::string header(reinterpret_cast<const char*>(&fixed), sizeof(fixed));
  header += extra;
  append(header, XXH64(header.data(), header.size(), 0));
  header.resize(fixed.header_bytes, '\0');
  return header;
}

std::uint64_t bag_header_bytes(const BagInfo& info) {
  std::uint64_t bytes = sizeof(Fixed) + 8 + info.element_type.size() + 8;
  for (const auto& [key, value] : info.tags) bytes += 6 + key.size() + value.size();
  return (bytes + kPage - 1) / kPage * kPage;
}

std::string BagChecksum::hex() const {
  char text[33];
  if (algorithm == Algorithm::kXxh64) {
    std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(low));
  } else {
    std::snprintf(text, sizeof(text), "%016llx%016llx", static_cast<unsigned long long>(high),
                  static_cast<unsigned long long>(low));
  }
  return text;
}

const char* BagChecksum::algorithm_name() const noexcept {
  return algorithm == Algorithm::kXxh64 ? "XXH64" : "XXH3-128";
}

PayloadHasher::PayloadHasher(BagChecksum::Algorithm algorithm) : algorithm_(algorithm) {
  if (algorithm_ == BagChecksum::Algorithm::kXxh64) {
    xxh64_.reset(XXH64_createState());
    if (!xxh64_ || XXH64_reset(xxh64_.get(), 0) != XXH_OK) throw std::bad_alloc();
  } else {
    xxh3_.reset(XXH3_createState());
    if (!xxh3_ || XXH3_128bits_reset(xxh3_.get()) != XXH_OK) throw std::bad_alloc();
  }
}

void PayloadHasher::update(const void* data, std::size_t size) {
  if (xxh64_) {
    XXH64_update(xxh64_.get(), data, size);
  } else {
    XXH3_128bits_update(xxh3_.get(), data, size);  // the AVX2 code where the CPU has it
  }
}

BagChecksum PayloadHasher::digest() const {
  BagChecksum sum;
  sum.algorithm = algorithm_;
  if (xxh64_) {
    sum.low = XXH64_digest(xxh64_.get());
  } else {
    const XXH128_hash_t hash = XXH3_128bits_digest(xxh3_.get());
    sum.high = hash.high64;
    sum.low = hash.low64;
  }
  return sum;
}

BagInfo parse_bag_header(std::span<const std::byte> header, std::uint64_t file_size,
                         const std::string& what) {
  const std::string where = what + ": ";
  Fixed fixed{};
  if (header.size() < sizeof(kBagMagic) ||
      std::memcmp(header.data(), kBagMagic, sizeof(kBagMagic)) != 0) {
    throw Error(Errc::kUnsupported, where + "not a Sheaf bag (no bag magic at the start)");
  }
  if (header.size() < sizeof(Fixed)) {
    throw Error(Errc::kCorrupted, where + "truncated: shorter than a bag header");
  }
  std::memcpy(&fixed, header.data(), sizeof(fixed));
  if (fixed.endian != posix::kEndianMark) {
    throw Error(fixed.endian == posix::kEndianMarkSwapped ? Errc::kUnsupported : Errc::kCorrupted,
                where + (fixed.endian == posix::kEndianMarkSwapped
                             ? "written on a machine of the other byte order"
                             : "corrupted header (bad byte-order mark)"));
  }
  const std::uint64_t checked = sizeof(Fixed) + std::uint64_t{fixed.extra_length};
  if (fixed.header_bytes % kPage != 0 || fixed.header_bytes == 0 ||
      fixed.header_bytes > kMaxHeaderBytes || checked + 8 > fixed.header_bytes) {
    throw Error(Errc::kCorrupted, where + "corrupted header (header size " +
                                      std::to_string(fixed.header_bytes) + ")");
  }
  if (header.size() < checked + 8) {
    throw Error(Errc::kCorrupted, where + "truncated: the header runs past the end of the file");
  }
  std::uint64_t stored = 0;
  std::memcpy(&stored, header.data() + checked, sizeof(stored));
  if (XXH64(header.data(), checked, 0) != stored) {
    throw Error(Errc::kCorrupted, where + "header checksum mismatch (the file is corrupted)");
  }
  if (fixed.version > kBagVersion) {
    throw Error(Errc::kUnsupported, where + "format version " + std::to_string(fixed.version) +
                                        " is newer than this Sheaf reads (" +
                                        std::to_string(kBagVersion) + ")");
  }
  if (fixed.version == 0) throw Error(Errc::kCorrupted, where + "corrupted header (version 0)");
  if (file_size < fixed.header_bytes || file_size - fixed.header_bytes != fixed.payload_size) {
    throw Error(
        Errc::kCorrupted,
        where + "truncated: the header promises " + std::to_string(fixed.payload_size) +
            " payload bytes, the file holds " +
            std::to_string(file_size > fixed.header_bytes ? file_size - fixed.header_bytes : 0));
  }
  BagInfo info;
  info.format = fixed.version;
  info.size = fixed.payload_size;
  info.checksum.low = fixed.payload_checksum;
  info.element_size = fixed.element_size;
  info.created_ns = fixed.created_ns;
  // The checksum's high half, type and tags, every length checked against what is left.
  const char* cursor = reinterpret_cast<const char*>(header.data()) + sizeof(Fixed);
  std::uint64_t left = fixed.extra_length;
  auto take = [&](std::uint64_t n) {
    if (n > left) throw Error(Errc::kCorrupted, where + "corrupted header (tags overrun)");
    const char* at = cursor;
    cursor += n;
    left -= n;
    return at;
  };
  if (fixed.version == 1) {
    info.checksum.algorithm = BagChecksum::Algorithm::kXxh64;
  } else {
    if (left < 8) throw Error(Errc::kCorrupted, where + "corrupted header (no payload checksum)");
    std::memcpy(&info.checksum.high, take(8), 8);
  }
  if (fixed.type_length > kMaxTypeLength) {
    throw Error(Errc::kCorrupted, where + "corrupted header (type name length)");
  }
  info.element_type.assign(take(fixed.type_length), fixed.type_length);
  for (std::uint32_t i = 0; i < fixed.tag_count; ++i) {
    std::uint16_t key_length = 0;
    std::uint32_t value_length = 0;
    std::memcpy(&key_length, take(2), 2);
    std::memcpy(&value_length, take(4), 4);
    if (key_length == 0 || key_length > kMaxTagKey || value_length > kMaxTagValue) {
      throw Error(Errc::kCorrupted, where + "corrupted header (tag lengths)");
    }
    std::string key(take(key_length), key_length);
    info.tags[std::move(key)].assign(take(value_length), value_length);
  }
  if (left != 0) throw Error(Errc::kCorrupted, where + "corrupted header (trailing bytes)");
  if (info.element_type.empty() != (info.element_size == 0) ||
      (info.element_size != 0 && info.size % info.element_size != 0)) {
    throw Error(Errc::kCorrupted, where + "corrupted header (element size " +
                                      std::to_string(info.element_size) + " for " +
                                      std::to_string(info.size) + " bytes)");
  }
  return info;
}

BagInfo read_bag_header(int fd, std::uint64_t file_size, const std::string& what) {
  // The first page holds the fixed header, which says how long the whole
  // header is (a field at a fixed offset, checked by parse_bag_header).
  std::vector<std::byte> header(std::min<std::uint64_t>(file_size, kPage));
  header.resize(posix::pread_all(fd, header, 0, what));
  std::uint32_t header_bytes = 0;
  if (header.size() >= offsetof(Fixed, header_bytes) + sizeof(header_bytes)) {
    std::memcpy(&header_bytes, header.data() + offsetof(Fixed, header_bytes), sizeof(header_bytes));
  }
  if (header_bytes > header.size() && header_bytes <= kMaxHeaderBytes && header.size() == kPage) {
    header.resize(std::min<std::uint64_t>(file_size, header_bytes));
    header.resize(posix::pread_all(fd, header, 0, what));
  }
  return parse_bag_header(header, file_size, what);
}

namespace {

constexpr std::uint64_t kWindow = 64 << 20;

// Hashes [at, at + length) of fd through a mapping if nearly all of it is in
// the page cache already; returns false, having hashed nothing, otherwise.
bool hash_if_cached(int fd, std::uint64_t at, std::uint64_t length, PayloadHasher& hasher) {
  if (at % kPage != 0) return false;
  void* map = mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(at));
  if (map == MAP_FAILED) return false;
  const std::uint64_t pages = (length + kPage - 1) / kPage;
  std::vector<unsigned char> cached(pages);
  std::uint64_t resident = 0;
  if (mincore(map, length, cached.data()) == 0) {
    for (unsigned char page : cached) resident += page & 1;
  }
  const bool use = resident * 10 >= pages * 9;
  if (use) hasher.update(map, length);
  munmap(map, length);
  return use;
}

}  // namespace

BagChecksum hash_payload(int fd, std::uint64_t offset, std::uint64_t size,
                         BagChecksum::Algorithm algorithm, const Progress& progress,
                         const std::string& what) {
  constexpr std::size_t kChunk = 4 << 20;
  static const char zeros[1 << 16] = {};
  std::unique_ptr<char[]> buffer(new char[kChunk]);
  PayloadHasher hasher(algorithm);
  posix_fadvise(fd, static_cast<off_t>(offset), static_cast<off_t>(size), POSIX_FADV_SEQUENTIAL);
  const std::uint64_t end = offset + size;
  std::uint64_t at = offset;
  while (at < end) {
    // A hole reads as zeros: hash them without reading (or caching) them.
    off_t data = lseek(fd, static_cast<off_t>(at), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) {
        // No data from here to the end of the file: a hole, if the file
        // still reaches the payload's end; if not, it was cut short (never
        // hash zeros for bytes that are not there).
        const std::uint64_t file_end = posix::file_size(fd, what);
        if (file_end < end) {
          throw Error(Errc::kCorrupted, what + ": the file ends at byte " +
                                            std::to_string(file_end) +
                                            ", before its payload's end (" + std::to_string(end) +
                                            "): it was truncated");
        }
        data = static_cast<off_t>(end);
      } else if (errno == EINVAL || errno == EOPNOTSUPP) {
        data = static_cast<off_t>(at);  // no hole support here: read it all
      } else {
        throw Error::from_errno(errno, what + ": lseek(SEEK_DATA)");
      }
    }
    const std::uint64_t hole_end = std::min<std::uint64_t>(static_cast<std::uint64_t>(data), end);
    while (at < hole_end) {
      const auto step =
          static_cast<std::size_t>(std::min<std::uint64_t>(sizeof(zeros), hole_end - at));
      hasher.update(zeros, step);
      at += step;
    }
    if (at >= end) break;
    const off_t hole = lseek(fd, static_cast<off_t>(at), SEEK_HOLE);
    if (hole < 0 && errno != EINVAL && errno != EOPNOTSUPP && errno != ENXIO) {
      throw Error::from_errno(errno, what + ": lseek(SEEK_HOLE)");
    }
    // (No hole support, or none found: data to the end; a short file is
    // caught by the reads below.)
    const std::uint64_t data_end =
        hole < 0 ? end : std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), end);
    while (at < data_end) {
      // Pages this host caches already are hashed where they lie (a copy
      // into a buffer costs as much as the hash); the rest is read in large
      // sequential chunks, which is what the disk likes.
      const std::uint64_t window = std::min<std::uint64_t>(kWindow, data_end - at);
      if (hash_if_cached(fd, at, window, hasher)) {
        at += window;
        if (progress) progress(at - offset, size);
        continue;
      }
      const std::uint64_t window_end = at + window;
      while (at < window_end) {
        const auto want =
            static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, window_end - at));
        const std::size_t got =
            posix::pread_all(fd, std::as_writable_bytes(std::span(buffer.get(), want)), at, what);
        if (got == 0) throw Error::from_errno(EIO, what + ": read: the file ended early");
        hasher.update(buffer.get(), got);
        at += static_cast<std::uint64_t>(got);
        if (progress) progress(at - offset, size);
      }
    }
  }
  if (progress) progress(size, size);
  return hasher.digest();
}

// --- Bag ---------------------------------------------------------------------

Bag::Impl::~Impl() {
  if (map != nullptr) munmap(map, map_length);
  if (scratch != nullptr) munmap(scratch, info.size);
  if (fd >= 0) ::close(fd);
}

Bag::Bag(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Bag::Bag(Bag&&) noexcept = default;
Bag& Bag::operator=(Bag&&) noexcept = default;
Bag::~Bag() = default;

const BagInfo& Bag::info() const noexcept {
  return impl_->info;
}

const std::string& Bag::problem() const noexcept {
  return impl_->problem;
}

std::span<const std::byte> Bag::bytes() const noexcept {
  if (impl_->info.size == 0) return {};
  return {static_cast<const std::byte*>(impl_->map) + impl_->header_bytes, impl_->info.size};
}

std::span<std::byte> Bag::scratch() {
  if (impl_->info.size == 0) return {};
  if (impl_->scratch == nullptr) {
    void* map = mmap(nullptr, impl_->info.size, PROT_READ | PROT_WRITE, MAP_PRIVATE, impl_->fd,
                     static_cast<off_t>(impl_->header_bytes));
    if (map == MAP_FAILED) throw Error::from_errno(errno, "bag " + impl_->info.name + ": mmap");
    impl_->scratch = map;
  }
  return {static_cast<std::byte*>(impl_->scratch), impl_->info.size};
}

// Why a thread for the checksum: copy_file_range keeps one core busy in
// the kernel, and XXH3 on the other hashes the same pages (from the page
// cache, or read once from the disk for both), so a verified copy takes as
// long as a plain one. The two share the descriptor: both use explicit
// offsets (pread, copy_file_range, lseek's answer), never its position.
void Bag::copy_payload(int out, bool verify, const Progress& progress) const {
  const Impl& bag = *impl_;
  const std::string what = "bag " + bag.info.name;
  std::optional<BagChecksum> actual;
  std::exception_ptr hash_failure;
  {
    std::jthread hasher;
    if (verify) {
      hasher = std::jthread([&] {
        try {
          actual = hash_payload(bag.fd, bag.header_bytes, bag.info.size,
                                bag.info.checksum.algorithm, {}, what);
        } catch (...) {
          hash_failure = std::current_exception();
        }
      });
    }
    const std::uint64_t start = bag.header_bytes;
    const std::uint64_t end = start + bag.info.size;
    for (std::uint64_t at = start; at < end;) {
      // Only runs of data are copied; a hole in the bag stays one in the copy.
      off_t data = lseek(bag.fd, static_cast<off_t>(at), SEEK_DATA);
      if (data < 0 && errno == ENXIO) break;  // a hole to the end (hash_payload checks the size)
      if (data < 0) data = static_cast<off_t>(at);  // no hole support: copy it all
      at = std::min<std::uint64_t>(static_cast<std::uint64_t>(data), end);
      if (at >= end) break;
      const off_t hole = lseek(bag.fd, static_cast<off_t>(at), SEEK_HOLE);
      const std::uint64_t data_end =
          hole < 0 ? end : std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), end);
      while (at < data_end) {
        const std::uint64_t step = std::min<std::uint64_t>(data_end - at, 64 << 20);
        posix::copy_range(bag.fd, at, out, at - start, step, what + ": copying the payload");
        at += step;
        if (progress) progress(at - start, bag.info.size);
      }
    }
  }  // the hasher is done
  if (hash_failure) std::rethrow_exception(hash_failure);
  if (actual && *actual != bag.info.checksum) {
    throw Error(Errc::kCorrupted, what + ": payload checksum mismatch (the bag is corrupted)");
  }
  if (progress) progress(bag.info.size, bag.info.size);
}

BagChecksum Bag::compute_checksum(const Progress& progress) const {
  return hash_payload(impl_->fd, impl_->header_bytes, impl_->info.size,
                      impl_->info.checksum.algorithm, progress, "bag " + impl_->info.name);
}

void Bag::check_type(const TypeTag& type) const {
  const BagInfo& info = impl_->info;
  if (info.element_type == type.name && info.element_size == type.size) return;
  throw Error(Errc::kTypeMismatch,
              "bag " + info.name + " holds " +
                  (info.element_type.empty()
                       ? std::string("untyped bytes")
                       : info.element_type + " (" + std::to_string(info.element_size) + " bytes)") +
                  ", not " + std::string(type.name) + " (" + std::to_string(type.size) + " bytes)");
}

std::unique_ptr<Bag::Impl> map_bag(const std::string& path, const std::string& name,
                                   const BagOpenOptions& options) {
  const std::string what = "bag " + name;
  auto impl = std::make_unique<Bag::Impl>();
  impl->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (impl->fd < 0 && errno == ENOENT) throw Error(Errc::kNotFound, what + ": no such bag", ENOENT);
  if (impl->fd < 0) throw Error::from_errno(errno, what);
  struct stat st {};
  if (fstat(impl->fd, &st) != 0) throw Error::from_errno(errno, what + ": stat");
  if (!S_ISREG(st.st_mode)) {
    throw Error(Errc::kUnsupported, what + ": not a regular file, so not a bag (" + path + ")",
                S_ISDIR(st.st_mode) ? EISDIR : EINVAL);
  }
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  impl->map_length = std::max<std::uint64_t>(file_size, 1);
  void* map = mmap(nullptr, impl->map_length, PROT_READ, MAP_SHARED, impl->fd, 0);
  if (map == MAP_FAILED) throw Error::from_errno(errno, what + ": mmap");
  impl->map = map;
  try {
    impl->info = read_bag_header(impl->fd, file_size, what);
    impl->header_bytes = file_size - impl->info.size;
    if (options.verify_payload) {
      const BagChecksum actual =
          hash_payload(impl->fd, impl->header_bytes, impl->info.size, impl->info.checksum.algorithm,
                       options.progress, what);
      if (actual != impl->info.checksum) {
        throw Error(Errc::kCorrupted, what + ": payload checksum mismatch (the bag is corrupted)");
      }
    }
  } catch (const Error& e) {
    if (!options.forensic) throw;
    impl->problem = e.message();
    if (impl->info.size == 0 && impl->header_bytes == 0) {
      // The header itself is unreadable: show the whole file as the payload.
      impl->info = BagInfo{};
      impl->info.size = file_size;
    }
  }
  impl->info.name = name;
  return impl;
}

// --- BagWriter ---------------------------------------------------------------

// Why O_DIRECT: a buffered write of a large bag spends most of its time
// copying every byte into new page-cache pages that fsync then writes out
// anyway (measured in docs/bags.md). Writing from our own buffer straight to
// the disk skips that copy. Small bags (below one staging buffer) and
// unaligned tails are written buffered, as are all bags on filesystems that
// refuse O_DIRECT.
//
// Why two buffers: an O_DIRECT write returns only when the disk has the
// bytes, and the caller would wait for it with nothing else to do. So a full
// buffer is written by a helper thread while the caller fills the other
// (reading its source, hashing, copying in); at most one write is in flight,
// and its failure is what the next write, skip or commit throws.
constexpr std::uint64_t kStaging = 16 << 20;

BagWriter::Impl::Buffer BagWriter::Impl::staging_buffer() {
  return Buffer(static_cast<std::byte*>(std::aligned_alloc(kPage, kStaging)));
}

void BagWriter::Impl::open_direct() {
  direct_fd = posix::try_open(temp_path, O_WRONLY | O_DIRECT).release();
  if (direct_fd < 0) return;  // buffered writes only
  staging = staging_buffer();
  if (!staging) {
    ::close(direct_fd);
    direct_fd = -1;
  }
}

void BagWriter::Impl::wait_for_write() {
  if (in_flight.valid()) in_flight.get();  // rethrows the helper's failure
}

void BagWriter::Impl::stage(const std::byte* data, std::uint64_t size) {
  while (size > 0) {
    const std::uint64_t take = std::min(size, kStaging - staged);
    std::memcpy(staging.get() + staged, data, take);
    staged += take;
    data += take;
    size -= take;
    if (staged == kStaging) flush_staging(false);
  }
}

void BagWriter::Impl::flush_staging(bool final) {
  if (staged == 0) return wait_for_write();
  const std::string what =
      "bag " + info.name + ": cannot write (after " + std::to_string(flushed) + " bytes)";
  const std::uint64_t at = header_bytes + flushed;
  // A small bag's only buffer goes through the page cache; so does a tail
  // that is not a whole number of pages.
  const bool small = final && flushed == 0;
  const std::uint64_t aligned = small || at % kPage != 0 ? 0 : staged / kPage * kPage;
  if (!final && aligned == staged) {
    if (!spare) spare = staging_buffer();
    if (spare) {  // the full buffer goes to the helper; we go on with the spare
      wait_for_write();
      in_flight = std::async(std::launch::async, [this, buffer = staging.get(), aligned, at, what] {
        posix::pwrite_all(direct_fd, std::span(buffer, aligned), at, what);
      });
      std::swap(staging, spare);
      flushed += staged;
      staged = 0;
      return;
    }
  }
  wait_for_write();
  if (aligned > 0) posix::pwrite_all(direct_fd, std::span(staging.get(), aligned), at, what);
  if (aligned < staged)
    posix::pwrite_all(fd, std::span(staging.get() + aligned, staged - aligned), at + aligned, what);
  flushed += staged;
  staged = 0;
}

BagWriter::Impl::~Impl() {
  if (in_flight.valid()) in_flight.wait();  // its buffer and descriptor go below
  if (direct_fd >= 0) ::close(direct_fd);
  if (fd >= 0) ::close(fd);
  if (!temp_path.empty()) ::unlink(temp_path.c_str());  // never committed
}

BagWriter::BagWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BagWriter::BagWriter(BagWriter&&) noexcept = default;
BagWriter& BagWriter::operator=(BagWriter&&) noexcept = default;
BagWriter::~BagWriter() = default;

std::uint64_t BagWriter::written() const noexcept {
  return impl_->info.size;
}

void BagWriter::Impl::require_usable() const {
  if (fd < 0) throw Error(Errc::kInvalidArgument, "bag " + info.name + ": already committed");
  if (failure) {
    throw Error(failure->code(),
                "bag " + info.name + ": an earlier write failed, so it will not be committed (" +
                    failure->message() + ")",
                failure->sys_errno());
  }
}

void BagWriter::write(std::span<const std::byte> bytes) {
  Impl& w = *impl_;
  w.failing_on_error([&] {
    if (w.staging) {
      w.stage(bytes.data(), bytes.size());
    } else {
      posix::pwrite_all(w.fd, bytes, w.header_bytes + w.flushed,
                        "bag " + w.info.name + ": after " + std::to_string(w.flushed) + " bytes");
      w.flushed += bytes.size();
    }
    // Hashed once accepted (staged or written), so hash and file agree.
    w.hasher.update(bytes.data(), bytes.size());
    w.info.size += bytes.size();
  });
}

void BagWriter::skip_zeros(std::uint64_t bytes) {
  Impl& w = *impl_;
  w.failing_on_error([&] {
    w.flush_staging(true);  // what came before the hole goes to the file first
    static const std::byte zeros[64 << 10] = {};
    for (std::uint64_t left = bytes; left > 0;) {
      const auto step = static_cast<std::size_t>(std::min<std::uint64_t>(left, sizeof(zeros)));
      w.hasher.update(zeros, step);
      left -= step;
    }
    w.flushed += bytes;
    w.info.size += bytes;
  });
}

namespace {

// The header, then into place; see commit().
BagInfo commit_writer(BagWriter::Impl& w) {
  const std::string what = "bag " + w.info.name;
  if (w.info.element_size != 0 && w.info.size % w.info.element_size != 0) {
    throw Error(Errc::kInvalidArgument,
                what + ": " + std::to_string(w.info.size) + " bytes are not a whole number of " +
                    w.info.element_type + " (" + std::to_string(w.info.element_size) + " bytes)");
  }
  w.flush_staging(true);
  w.info.checksum = w.hasher.digest();
  w.info.format = kBagVersion;
  w.info.created_ns = posix::realtime_ns();
  const std::string header = encode_bag_header(w.info);
  if (header.size() != w.header_bytes)
    throw Error(Errc::kCorrupted, what + ": header size changed");
  if (ftruncate(w.fd, static_cast<off_t>(w.header_bytes + w.info.size)) != 0) {
    throw Error::from_errno(errno, what + ": cannot size the file");
  }
  posix::pwrite_all(w.fd, std::as_bytes(std::span(header)), 0, what + ": cannot write the header");
  // Into place while the file is still open: its lock tells Store::open's
  // sweep that this temporary is alive until it has a name in bags/.
  posix::publish_file(w.fd, w.temp_path, w.final_path, w.replace, what);
  if (!w.replace) ::unlink(w.temp_path.c_str());  // linked: the name in tmp/ goes
  w.temp_path.clear();
  ::close(w.fd);
  w.fd = -1;
  return w.info;
}

}  // namespace

BagInfo BagWriter::commit_as(std::string_view name, bool replace) {
  Impl& w = *impl_;
  Store::check_name(name);
  w.require_usable();
  w.final_path = posix::directory_of(w.final_path) + "/" + std::string(name) + ".bag";
  w.info.name = std::string(name);
  w.replace = replace;
  return commit();
}

BagInfo BagWriter::commit() {
  Impl& w = *impl_;
  BagInfo committed;
  w.failing_on_error([&] { committed = commit_writer(w); });
  return committed;
}

}  // namespace sheaf
