#include "bag_version.hpp"

#include <fcntl.h>
#include <xxhash.h>

#include <cerrno>

#include "errors.hpp"

namespace sheaf::fs {

std::uint64_t BagFile::identity() const {
  const std::uint64_t parts[] = {static_cast<std::uint64_t>(st.st_dev),
                                 static_cast<std::uint64_t>(st.st_ino), info.created_ns,
                                 info.checksum.low, info.checksum.high};
  const std::uint64_t hash = XXH64(parts, sizeof(parts), 0);
  return hash == 0 ? 1 : hash;  // 0 means "a bag being written"
}

std::size_t BagFile::read(std::span<std::byte> out, std::uint64_t offset) const {
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::pread(fd, out.data() + done, out.size() - done,
                              static_cast<off_t>(header_bytes + offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(errno);
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

std::unique_ptr<BagFile> open_bag_version(const std::string& path) {
  auto bag = std::make_unique<BagFile>();
  bag->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (bag->fd < 0) fail(errno);
  if (::fstat(bag->fd, &bag->st) != 0) fail(errno);
  const auto file_size = static_cast<std::uint64_t>(bag->st.st_size);
  if (file_size == 0) throw Error(Errc::kCorrupted, "bag " + path + ": empty file");
  // Read, never mapped: a bag file cut short meanwhile is an error here, where
  // a mapping would kill the server with SIGBUS.
  bag->info = read_bag_header(bag->fd, file_size, path);
  bag->header_bytes = file_size - bag->info.size;
  return bag;
}

}  // namespace sheaf::fs
