#include "names.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>

#include "errors.hpp"
#include "sheaf/store.hpp"

namespace sheaf::fs {

std::uint64_t object_identity(const ObjectInfo& object) {
  return object.serial != 0 ? object.serial : object.offset;
}

int name_errno(const std::string& name, int otherwise) {
  return name.size() > Store::kMaxNameLength ? ENAMETOOLONG : otherwise;
}

bool hidden_upload_name(const std::string& name) {
  // '.', NAME, '.', six letters or digits: what rsync and mkstemp make.
  constexpr std::size_t kSuffix = 6;
  if (name.size() < 2 + kSuffix + 1 || name.size() > 255 || name[0] != '.' || name[1] == '.' ||
      name[name.size() - kSuffix - 1] != '.') {
    return false;
  }
  for (std::size_t i = name.size() - kSuffix; i < name.size(); ++i) {
    if (!std::isalnum(static_cast<unsigned char>(name[i]))) return false;
  }
  for (std::size_t i = 1; i < name.size() - kSuffix - 1; ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (!std::isalnum(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

std::string hidden_upload_writer_name(const std::string& name) {
  return name.substr(1, std::min<std::size_t>(name.size() - 1, Store::kMaxNameLength));
}

bool valid_name(const std::string& name) {
  try {
    Store::check_name(name);
    return true;
  } catch (const Error&) {
    return false;
  }
}

struct stat stat_path(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(errno);
  return st;
}

struct stat directory_attr(const struct stat& from, bool read_only) {
  struct stat attr {};
  attr.st_mode = S_IFDIR | (read_only ? 0555 : 0755);
  attr.st_nlink = 2;
  attr.st_uid = from.st_uid;
  attr.st_gid = from.st_gid;
  attr.st_atim = from.st_atim;
  attr.st_mtim = from.st_mtim;
  attr.st_ctim = from.st_ctim;
  attr.st_blksize = 4096;
  return attr;
}

struct stat file_attr(const struct stat& from, std::uint64_t size, mode_t permissions) {
  struct stat attr {};
  attr.st_mode = S_IFREG | permissions;
  attr.st_nlink = 1;
  attr.st_uid = from.st_uid;
  attr.st_gid = from.st_gid;
  attr.st_size = static_cast<off_t>(size);
  attr.st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  attr.st_blksize = 128 << 10;  // what cp and cat size their buffers by
  attr.st_atim = from.st_atim;
  attr.st_mtim = from.st_mtim;
  attr.st_ctim = from.st_ctim;
  return attr;
}

}  // namespace sheaf::fs
