// sheaf/ref.hpp: a heap reference, what a message carries instead of its
// payload's bytes when both ends map the heap (docs/msg.md; its wire form is
// in docs/protocols.md, "Heap reference").
#pragma once

#include <array>
#include <cstdint>

namespace sheaf {

// A block of a heap: which heap (the 16 bytes of its UUID, which
// `sheaf heap info` shows in hex), where (the
// payload's offset from the heap's base, Heap::offset_of()), how many bytes
// the message covers, and the held block's serial (Heap::held_block()),
// which makes a stale reference detectable: once the block is freed and its
// offset reused, the block there has another serial and the reference is
// refused. A Ref is plain data; it keeps nothing alive. The hold that does
// travels with it from sender to receiver (Heap::hand_over).
struct Ref {
  std::array<std::uint8_t, 16> heap_uuid{};
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::uint64_t serial = 0;
  friend bool operator==(const Ref&, const Ref&) = default;
};

}  // namespace sheaf
