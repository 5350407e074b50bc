// handles.hpp: what an open file or directory of the mount is (its handle,
// in fuse_file_info::fh). Internal to fs/.
//  - an object: its heap and name, and which object it was (reads check);
//  - a generated info text;
//  - a bag being read: its file descriptor, so a replaced bag keeps serving
//    the bytes that were opened;
//  - a bag being written: the upload (bag_upload.hpp), shared with the
//    mount's table of uploads.
#pragma once

#include <fuse3/fuse_lowlevel.h>
#include <sys/stat.h>

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "bag_upload.hpp"
#include "bag_version.hpp"
#include "node_table.hpp"
#include "store_fs.hpp"

namespace sheaf::fs {

struct ObjectFile {
  std::string heap;
  std::string name;
  std::uint64_t identity = 0;  // object_identity() of the object opened
};

struct TextFile {
  std::string text;
};

struct StoreFs::Handle {
  std::variant<ObjectFile, TextFile, std::unique_ptr<BagFile>, std::shared_ptr<BagUpload>> file;
};

struct StoreFs::DirHandle {
  struct Entry {
    std::string name;
    Node node;
    struct stat attr {};
  };
  std::vector<Entry> entries;
};

inline StoreFs::Handle& handle_of(fuse_file_info* fi) {
  return *reinterpret_cast<StoreFs::Handle*>(static_cast<std::uintptr_t>(fi->fh));
}

template <class T>
T* file_as(fuse_file_info* fi) {
  if (fi == nullptr || fi->fh == 0) return nullptr;
  auto& file = handle_of(fi).file;
  if constexpr (std::is_same_v<T, ObjectFile> || std::is_same_v<T, TextFile>) {
    return std::get_if<T>(&file);
  } else {
    if constexpr (std::is_same_v<T, BagUpload>) {
      auto* p = std::get_if<std::shared_ptr<T>>(&file);
      return p ? p->get() : nullptr;
    } else {
      auto* p = std::get_if<std::unique_ptr<T>>(&file);
      return p ? p->get() : nullptr;
    }
  }
}

inline void set_handle(fuse_file_info* fi, std::unique_ptr<StoreFs::Handle> handle) {
  fi->fh = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(handle.release()));
}

}  // namespace sheaf::fs
