// heap_cache.hpp: the heaps a mount serves, each opened once and kept open
// (a session on it) while the mount lives, reopened when its file is
// replaced. Internal to fs/.
#pragma once

#include <sys/stat.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "sheaf/heap.hpp"
#include "sheaf/store.hpp"

namespace sheaf::fs {

// Heaps of the store, opened on first use and kept open.
class HeapCache {
 public:
  explicit HeapCache(const Store& store) : store_(store) {}
  // The heap `name`, with its file's current stat. Throws Error(kNotFound)
  // when the store has no such heap.
  std::shared_ptr<Heap> get(const std::string& name, struct stat* file_stat = nullptr);

 private:
  struct Entry {
    std::shared_ptr<Heap> heap;
    dev_t dev = 0;
    ino_t ino = 0;
  };
  const Store& store_;
  std::mutex mutex_;
  std::map<std::string, Entry> heaps_;
};

}  // namespace sheaf::fs
