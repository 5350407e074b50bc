// names.hpp: what a name in the mounted store means, and the attributes
// every file shares. Internal to fs/.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <string>

#include "sheaf/heap.hpp"

namespace sheaf::fs {

// What makes an object under a name the same object: its creation serial,
// which is never reused (an offset is: a destroyed object's block goes to
// the next one of its size). Heaps made before serials have only the offset.
std::uint64_t object_identity(const ObjectInfo& object);

// Whether `name` follows the store's rules for a bag's or a heap's name.
bool valid_name(const std::string& name);
// The errno for a name the store's rules refuse: ENAMETOOLONG for one too
// long (tools say "File name too long"), else `otherwise`.
int name_errno(const std::string& name, int otherwise);
// Whether `name` is a hidden temporary in bags/: ".NAME.XXXXXX" (a dot, a
// name of the bag rules' characters, a dot, six letters or digits), as rsync
// and mkstemp make them; up to the kernel's 255 bytes. Other dot names are
// refused, so that a dotfile is never taken in and silently dropped.
bool hidden_upload_name(const std::string& name);
// The name a hidden temporary's writer goes by until it is renamed: a valid
// bag name (it only names the temporary file in the store's tmp/).
std::string hidden_upload_writer_name(const std::string& name);

// stat(2) of a path, or the request fails with its errno.
struct stat stat_path(const std::string& path);

// The attributes of a directory of the mount, and of a file of `size` bytes,
// with the owner and times of `from` (a file of the store).
struct stat directory_attr(const struct stat& from, bool read_only);
struct stat file_attr(const struct stat& from, std::uint64_t size, mode_t permissions);

}  // namespace sheaf::fs
