#include "heap_cache.hpp"

#include <cerrno>

#include "names.hpp"

namespace sheaf::fs {

std::shared_ptr<Heap> HeapCache::get(const std::string& name, struct stat* file_stat) {
  const std::string path = store_.heap_path(name);
  struct stat st {};
  if (!valid_name(name) || ::stat(path.c_str(), &st) != 0) {
    std::lock_guard lock(mutex_);
    heaps_.erase(name);  // deleted: let the session go
    throw Error(Errc::kNotFound, "no heap named '" + name + "'", ENOENT);
  }
  if (file_stat) *file_stat = st;
  {
    std::lock_guard lock(mutex_);
    auto it = heaps_.find(name);
    if (it != heaps_.end() && it->second.dev == st.st_dev && it->second.ino == st.st_ino) {
      return it->second.heap;
    }
  }
  // Opened outside the mutex: an open may repair the heap or wait for its
  // lock, and requests for other heaps must not wait for that.
  // A heap file the server may only read is served read-only (its objects
  // then refuse writes with the heap's own error).
  Result<Heap> opened = Heap::open(path);
  if (!opened.ok() && opened.error().sys_errno() == EACCES) {
    OpenOptions options;
    options.read_only = true;
    opened = Heap::open(path, options);
  }
  auto heap = std::make_shared<Heap>(std::move(opened).value());
  std::lock_guard lock(mutex_);
  Entry& entry = heaps_[name];
  if (!entry.heap || entry.dev != st.st_dev || entry.ino != st.st_ino) {
    entry = Entry{std::move(heap), st.st_dev, st.st_ino};
  }
  return entry.heap;  // another thread's open may have won; this one closes
}

}  // namespace sheaf::fs
