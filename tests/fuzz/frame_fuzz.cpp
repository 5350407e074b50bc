// frame_fuzz.cpp: libFuzzer target for message frames from the wire.
//
// The input is a byte stream as a socket would deliver it. Its first byte
// sets the size of the pieces it is fed to a FrameReader in; every frame that
// comes out must be self-consistent, and a heap reference must decode or be
// refused, never read past its bytes.
#include <cstdint>
#include <span>

#include "frame.hpp"
#include "sheaf/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t piece = 1 + data[0] % 64;
  const auto stream = std::as_bytes(std::span(data + 1, size - 1));
  sheaf::msg::FrameReader reader(1 << 16);
  try {
    for (std::size_t at = 0; at < stream.size(); at += piece) {
      reader.feed(stream.subspan(at, std::min(piece, stream.size() - at)));
      while (std::optional<sheaf::msg::Frame> frame = reader.next()) {
        if (frame->payload.size() != frame->header.payload_bytes) __builtin_trap();
        if (frame->header.payload_bytes > (1u << 16)) __builtin_trap();
        if (frame->header.flags & sheaf::msg::kFlagHeapRef) {
          (void)sheaf::msg::decode_heap_ref(frame->payload);
        }
      }
    }
  } catch (const sheaf::Error&) {
    // A clear error is the right answer to bytes that are not frames.
  }
  return 0;
}
