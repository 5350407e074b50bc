// bag_version.hpp: one version of a bag, as the mount serves it to readers.
// Internal to fs/.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "sheaf/bag.hpp"

namespace sheaf::fs {

// An open bag file: its descriptor, stat and header. Reads are served from
// the descriptor, so a reader keeps the bytes it opened even when the bag is
// replaced (the rename leaves the old file alive while it is open).
struct BagFile {
  int fd = -1;
  struct stat st {};
  BagInfo info;
  std::uint64_t header_bytes = 0;

  BagFile() = default;
  BagFile(const BagFile&) = delete;
  BagFile& operator=(const BagFile&) = delete;
  ~BagFile() {
    if (fd >= 0) ::close(fd);
  }

  // What makes this version of the bag this version: inode numbers are
  // reused by filesystems, creation times (ns) and checksums together are
  // not. (Not the file's mtime: `touch` and `tar x` set it, and the bytes
  // stay the same.)
  std::uint64_t identity() const;
  // Payload bytes from `offset` into `out`; fewer only at the file's end.
  // Fails the request with the errno of a failed read.
  std::size_t read(std::span<std::byte> out, std::uint64_t offset) const;
};

// Opens the bag file at `path` and reads its header (pread, never a mapping:
// a file cut short meanwhile is an error, not a SIGBUS in the server).
std::unique_ptr<BagFile> open_bag_version(const std::string& path);

}  // namespace sheaf::fs
