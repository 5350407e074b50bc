// allocator.cpp: blocks, bins, splitting, merging and growth.
//
// Every function here runs under the exclusive heap lock.
//
// Shape (after dlmalloc and mimalloc, simplified for crash safety):
// - Blocks up to 1040 bytes live in 64 exact-size bins. Freeing one is a push and
//   allocating one is a pop: no search, no merging. Their neighbours are
//   merged lazily, by a sweep over the chain when an allocation would
//   otherwise grow the file.
// - Larger blocks live in bins of a quarter of a power of two each; freeing
//   one merges it with the free blocks that follow it.
// - A bitmap of non-empty bins finds the next bin with a block that fits in a
//   few instructions.
// - When nothing fits, the file grows (by the request, and by its own size
//   up to 1 GiB where the limit and the disk allow) under the same mapping;
//   nothing moves.
//
// Crash safety: see format.hpp. A block being allocated is unlinked from its
// bin first, while its header still says kFree; the walk rebuilds the bins,
// so a kill there loses nothing. Its header then turns kUsed, and any tail
// split off becomes reachable, in one store. Every store to a word another
// process can reach goes through store(), which saves the old value in the
// undo log first (recovery.cpp, "Operations"), so that a kill inside an
// operation is undone without a walk.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>

#include "impl.hpp"
#include "posix.hpp"

namespace sheaf {
namespace {

using namespace format;

constexpr std::uint64_t kMaxGrowthStep = std::uint64_t{1} << 30;
constexpr int kLargeBinScan = 32;  // blocks tried in the request's own bin before moving up

// The first non-empty bin at or after `from`, or -1.
int next_nonempty_bin(const std::uint64_t (&bitmap)[4], int from) {
  for (int word = from / 64; word < 4; ++word) {
    std::uint64_t bits = bitmap[word];
    if (word == from / 64) bits &= ~std::uint64_t{0} << (from % 64);
    // Bits past the last bin mean nothing (and a damaged file may set them).
    if (bits != 0) {
      const int bin = word * 64 + std::countr_zero(bits);
      return bin < kBinCount ? bin : -1;
    }
  }
  return -1;
}

}  // namespace

void Heap::Impl::push_free(std::uint64_t offset, bool fresh) {
  State& s = state();
  const int bin = bin_of(block(offset)->size());
  auto* links = at<FreeLinks>(offset + kBlockHeaderBytes);
  if (fresh) {  // nobody reached these bytes before this operation: nothing to undo
    publish(links->next, s.bins[bin]);
    publish(links->prev, std::uint64_t{0});
  } else {
    store(links->next, s.bins[bin]);
    store(links->prev, 0);
  }
  if (links->next != 0) store(at<FreeLinks>(links->next + kBlockHeaderBytes)->prev, offset);
  store(s.bins[bin], offset);
  const std::uint64_t bit = std::uint64_t{1} << (bin % 64);
  if (!(s.bin_bitmap[bin / 64] & bit)) store(s.bin_bitmap[bin / 64], s.bin_bitmap[bin / 64] | bit);
  store_counter(s.free_bytes, s.free_bytes + block(offset)->size());
}

void Heap::Impl::unlink_free(std::uint64_t offset) {
  State& s = state();
  const int bin = bin_of(block(offset)->size());
  auto* links = at<FreeLinks>(offset + kBlockHeaderBytes);
  if (links->prev != 0) {
    store(at<FreeLinks>(links->prev + kBlockHeaderBytes)->next, links->next);
  } else {
    store(s.bins[bin], links->next);
  }
  if (links->next != 0) store(at<FreeLinks>(links->next + kBlockHeaderBytes)->prev, links->prev);
  if (s.bins[bin] == 0) {
    store(s.bin_bitmap[bin / 64], s.bin_bitmap[bin / 64] & ~(std::uint64_t{1} << (bin % 64)));
  }
  store_counter(s.free_bytes, s.free_bytes - block(offset)->size());
  // Whoever took the block writes over its links (plain stores, hence the
  // fence); an undo must find them.
  save(&links->next);
  save(&links->prev);
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

void Heap::Impl::reset_bins() {  // only in rebuild(), which is not logged
  State& s = state();
  std::fill(std::begin(s.bins), std::end(s.bins), 0);
  std::fill(std::begin(s.bin_bitmap), std::end(s.bin_bitmap), 0);
  s.free_bytes = 0;
}

// Unlinks and returns a free block of at least `size` bytes, or 0.
std::uint64_t Heap::Impl::take_fit(std::uint64_t size) {
  State& s = state();
  const int bin = bin_of(size);
  if (size <= kSmallMax) {
    if (std::uint64_t offset = s.bins[bin]; offset != 0) {
      unlink_free(offset);
      return offset;
    }
  } else {
    std::uint64_t offset = s.bins[bin];
    for (int tried = 0; offset != 0 && tried < kLargeBinScan; ++tried) {
      if (block(offset)->size() >= size) {
        unlink_free(offset);
        return offset;
      }
      offset = at<FreeLinks>(offset + kBlockHeaderBytes)->next;
    }
  }
  // Every block in a later bin is large enough.
  const int later = next_nonempty_bin(s.bin_bitmap, bin + 1);
  if (later < 0) return 0;
  const std::uint64_t offset = s.bins[later];
  unlink_free(offset);
  return offset;
}

std::uint64_t Heap::Impl::allocate_block(std::uint64_t payload, std::uint64_t alignment,
                                         BlockState final_state) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > kPageSize) {
    throw Error(Errc::kInvalidArgument, "heap " + path + ": alignment " +
                                            std::to_string(alignment) +
                                            " is not a power of two up to the page size");
  }
  if (payload > growth_limit()) {
    throw Error(Errc::kOutOfSpace, "heap " + path + ": cannot allocate " + std::to_string(payload) +
                                       " bytes (the heap may grow to " +
                                       std::to_string(growth_limit()) + ")");
  }
  State& s = state();
  const std::uint64_t size = block_size_for(payload);
  // An over-aligned payload may need up to two alignments of slack in front.
  const std::uint64_t wanted = alignment > kAlign ? size + 2 * alignment : size;

  std::uint64_t offset = take_fit(wanted);
  if (offset == 0 && s.small_freed + s.free_bytes >= wanted) {
    rebuild(Rebuild::kSweep);  // free neighbours merged may fit without growing
    offset = take_fit(wanted);
  }
  if (offset == 0) {
    grow(wanted);
    offset = take_fit(wanted);
    if (offset == 0) throw Error(Errc::kOutOfSpace, "heap " + path + ": no block after growth");
  }

  if (alignment > kAlign) {
    // Split off the slack in front as a free block of its own.
    const std::uint64_t whole = block(offset)->size();
    std::uint64_t gap =
        align_up(offset + kBlockHeaderBytes, alignment) - kBlockHeaderBytes - offset;
    if (gap != 0 && gap < kMinBlock) gap += alignment;
    if (gap != 0) {
      const std::uint64_t aligned = offset + gap;
      block(aligned)->size_and_state = (whole - gap) | kFree;  // not reachable yet
      block(aligned)->tag = 0;
      store(block(offset)->size_and_state, gap | kFree);
      push_free(offset, true);  // its links were saved when it left its bin
      offset = aligned;
    }
  }

  const std::uint64_t whole = block(offset)->size();
  // Before the block is published as anything but free. Not saved: a free
  // block's tag means nothing, so an undo need not restore it.
  publish(block(offset)->tag, final_state == kUsed ? used_tag(offset) : 0);
  if (whole - size >= kMinBlock) {
    const std::uint64_t tail = offset + size;
    block(tail)->size_and_state = (whole - size) | kFree;  // not reachable yet
    block(tail)->tag = 0;
    store(block(offset)->size_and_state, size | final_state);
    push_free(tail, true);
  } else {
    store(block(offset)->size_and_state, whole | final_state);
  }
  store_counter(s.used_bytes, s.used_bytes + block(offset)->size());
  return offset;
}

void Heap::Impl::free_block(std::uint64_t offset) {
  State& s = state();
  BlockHeader* header = block(offset);
  std::uint64_t size = header->size();
  store_counter(s.used_bytes, s.used_bytes - size);
  store(header->size_and_state, size | kFree);
  if (size <= kSmallMax) {
    store_counter(s.small_freed, s.small_freed + size);
  } else {
    // Merge with the free blocks that follow; each step is one store.
    for (std::uint64_t next = offset + size; next < s.size; next = offset + size) {
      if (block(next)->state() != kFree) break;
      unlink_free(next);
      size += block(next)->size();
      store(header->size_and_state, size | kFree);
    }
  }
  push_free(offset);
}

bool Heap::Impl::resize_in_place(std::uint64_t offset, std::uint64_t payload) {
  State& s = state();
  BlockHeader* header = block(offset);
  const std::uint64_t current = header->size();
  const std::uint64_t size = block_size_for(payload);
  const std::uint64_t state_bits = header->state();
  if (size <= current) {
    if (current - size >= kMinBlock) {  // give the tail back
      const std::uint64_t tail = offset + size;
      block(tail)->size_and_state = (current - size) | kUsed;  // not reachable yet
      block(tail)->tag = 0;
      store(header->size_and_state, size | state_bits);
      free_block(tail);  // merges it with what follows and accounts for it
    }
    return true;
  }
  const std::uint64_t next = offset + current;
  if (next >= s.size || block(next)->state() != kFree) return false;
  const std::uint64_t total = current + block(next)->size();
  if (total < size) return false;
  unlink_free(next);
  if (total - size >= kMinBlock) {
    const std::uint64_t tail = offset + size;
    block(tail)->size_and_state = (total - size) | kFree;  // not reachable yet
    block(tail)->tag = 0;
    store(header->size_and_state, size | state_bits);
    push_free(tail, true);
    store_counter(s.used_bytes, s.used_bytes + size - current);
  } else {
    store(header->size_and_state, total | state_bits);
    store_counter(s.used_bytes, s.used_bytes + total - current);
  }
  return true;
}

// Grows by the request, and when it can by the heap's own size (up to
// 1 GiB) so that a growing heap grows rarely. The larger step is a wish: if
// the limit or the disk refuses it, growth falls back to what the request
// needs.
void Heap::Impl::grow(std::uint64_t bytes) {
  State& s = state();
  const std::uint64_t old_size = s.size;
  const std::uint64_t limit = growth_limit();
  const std::uint64_t needed = align_up(old_size + bytes, kPageSize);
  const std::uint64_t wished =
      align_up(old_size + std::max(bytes, std::min(old_size, kMaxGrowthStep)), kPageSize);
  if (needed > limit || needed < old_size) {
    throw Error(Errc::kOutOfSpace, "heap " + path + " is full: it needs " + std::to_string(bytes) +
                                       " more bytes but may grow to at most " +
                                       std::to_string(limit) +
                                       " (its maximum size or this process's reservation)");
  }
  std::uint64_t new_size = wished <= limit ? wished : needed;
  const std::uint64_t file_bytes = posix::file_size(fd, "heap " + path);
  if (file_bytes < new_size) {
    int error = posix::allocate_range(fd, old_size, new_size - old_size);
    if (error == ENOSPC && new_size > needed) {
      new_size = needed;
      error = file_bytes < new_size ? posix::allocate_range(fd, old_size, new_size - old_size) : 0;
    }
    if (error != 0) {
      throw Error::from_errno(
          error, "heap " + path + ": cannot grow to " + std::to_string(new_size) + " bytes");
    }
  }
  known_file_size = std::max<std::uint64_t>(known_file_size, new_size);
  block(old_size)->size_and_state = (new_size - old_size) | kFree;  // not reachable yet
  block(old_size)->tag = 0;
  store(s.size, new_size);
  push_free(old_size, true);
}

// Follows only offsets inside the heap, and at most as many links as the
// heap has room for blocks: a reader without the lock may meet a list being
// changed (heap.cpp retries on kCorrupted).
std::uint64_t Heap::Impl::largest_free() const {
  const State& s = state();
  const std::uint64_t size = heap_size();
  for (int bin = kBinCount - 1; bin >= 0; --bin) {
    std::uint64_t offset = __atomic_load_n(&s.bins[bin], __ATOMIC_ACQUIRE);
    if (offset == 0) continue;
    std::uint64_t largest = 0;
    for (std::uint64_t steps = 0; offset != 0; ++steps) {
      // A block past this process's mapping: what it saw so far must do.
      if (offset <= full_size() - kMinBlock && beyond_mapping(offset + kMinBlock)) break;
      if (offset < kHeaderBytes || offset > size - kMinBlock || steps > size / kMinBlock) {
        throw Error(Errc::kCorrupted,
                    "heap " + path + ": bin " + std::to_string(bin) + " leads outside the heap");
      }
      largest = std::max(largest, block(offset)->size());
      offset = at<FreeLinks>(offset + kBlockHeaderBytes)->next;
    }
    return largest > kBlockHeaderBytes ? largest - kBlockHeaderBytes : 0;
  }
  return 0;
}

}  // namespace sheaf
