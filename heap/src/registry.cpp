// registry.cpp: the heaps this process has open (see registry.hpp).
#include "registry.hpp"

#include <pthread.h>

#include <array>
#include <atomic>
#include <cstring>
#include <mutex>

namespace sheaf::registry {
namespace {

constexpr int kMaxOpenHeaps = 256;

// Readers of `base` (at_base) take no lock: an entry is filled before its
// base is published, and its base cleared before the entry is reused.
struct Entry {
  std::atomic<const void*> base{nullptr};
  std::atomic<Heap::Impl*> impl{nullptr};
  std::weak_ptr<Heap::Impl> owner;  // under `mutex`
};
std::array<Entry, kMaxOpenHeaps> entries;
std::mutex mutex;

std::once_flag fork_handler_installed;

// The registry's mutex is held across fork(), so a child never inherits it
// locked by a thread that does not exist there.
void before_fork() {
  mutex.lock();
}
void after_fork_in_parent() {
  mutex.unlock();
}
void after_fork_in_child() {
  fork_epoch_counter.fetch_add(1, std::memory_order_relaxed);
  mutex.unlock();
}

}  // namespace

std::atomic<std::uint64_t> fork_epoch_counter{0};

void add(const std::shared_ptr<Heap::Impl>& impl) {
  std::call_once(fork_handler_installed,
                 [] { pthread_atfork(&before_fork, &after_fork_in_parent, &after_fork_in_child); });
  std::lock_guard guard(mutex);
  for (Entry& entry : entries) {
    if (entry.base.load() != nullptr) continue;
    entry.impl.store(impl.get());
    entry.owner = impl;
    entry.base.store(impl->base, std::memory_order_release);
    return;
  }
  throw Error(Errc::kBusy, "heap " + impl->path + ": this process has " +
                               std::to_string(kMaxOpenHeaps) + " heaps open already");
}

void remove(const Heap::Impl* impl) noexcept {
  std::lock_guard guard(mutex);
  for (Entry& entry : entries) {
    if (entry.impl.load() == impl && entry.base.load() != nullptr) {
      entry.base.store(nullptr);
      entry.owner.reset();
    }
  }
}

Heap::Impl& at_base(const void* base) {
  const Heap::Impl* inherited = nullptr;
  for (Entry& entry : entries) {
    if (entry.base.load(std::memory_order_acquire) != base) continue;
    Heap::Impl& impl = *entry.impl.load();
    if (!impl.forked()) return impl;
    inherited = &impl;
  }
  if (inherited) {
    throw Error(Errc::kInvalidArgument,
                "heap " + inherited->path +
                    ": opened before this process was forked; open it again in the child");
  }
  throw Error(Errc::kInvalidArgument, "sheaf::Allocator: its heap is not open in this process");
}

std::shared_ptr<Heap::Impl> by_uuid(const std::uint8_t (&uuid)[16]) {
  std::lock_guard guard(mutex);
  for (Entry& entry : entries) {
    if (entry.base.load() == nullptr) continue;
    std::shared_ptr<Heap::Impl> impl = entry.owner.lock();
    if (impl && !impl->forked() &&
        std::memcmp(impl->header()->identity.uuid, uuid, sizeof(uuid)) == 0) {
      return impl;
    }
  }
  return nullptr;
}

std::vector<std::shared_ptr<Heap::Impl>> all() {
  std::vector<std::shared_ptr<Heap::Impl>> found;
  std::lock_guard guard(mutex);
  for (Entry& entry : entries) {
    if (entry.base.load() == nullptr) continue;
    if (std::shared_ptr<Heap::Impl> impl = entry.owner.lock(); impl && !impl->forked()) {
      found.push_back(std::move(impl));
    }
  }
  return found;
}

}  // namespace sheaf::registry
