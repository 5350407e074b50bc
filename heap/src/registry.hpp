// registry.hpp: the heaps this process has open. Internal.
//
// An Allocator living inside a heap cannot hold a pointer to this process's
// Heap, so it finds its heap by the heap's base address; heap references (the
// message layer) find a heap by its UUID; diagnostics (PSRP's `heaps`) list
// them all. Lookup by base is lock-free, on the allocation path; the rest
// take a mutex.
//
// The registry also knows whether this process is a child forked after a
// heap was opened (fork_epoch): such a heap's lock, sessions and caches
// belong to the parent.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "impl.hpp"

namespace sheaf::registry {

// Adds an open heap; throws Error(kBusy) when this process has too many open.
void add(const std::shared_ptr<Heap::Impl>& impl);
void remove(const Heap::Impl* impl) noexcept;

// The open heap mapped at `base`; throws Error(kInvalidArgument) if none is,
// or if it was opened before this process was forked.
Heap::Impl& at_base(const void* base);
// The open heap with this UUID, or nullptr.
std::shared_ptr<Heap::Impl> by_uuid(const std::uint8_t (&uuid)[16]);
std::vector<std::shared_ptr<Heap::Impl>> all();

// Bumped in every child at fork(); a heap remembers the value it was opened
// at. Read on every call (Heap::Impl::forked), so inline: one relaxed load.
extern std::atomic<std::uint64_t> fork_epoch_counter;
inline std::uint64_t fork_epoch() noexcept {
  return fork_epoch_counter.load(std::memory_order_relaxed);
}

}  // namespace sheaf::registry
