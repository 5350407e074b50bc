// frame_fuzz.cpp: libFuzzer target for message frames from the wire.
//
// The input is a byte stream as a socket would deliver it. Its first byte
// sets the size of the pieces it is fed to a FrameReader in, its second the
// payload size from which the reader gathers payloads directly; every frame that
// comes out must be self-consistent, a heap reference must decode or be
// refused, never read past its bytes, and a control payload (JSON: hello,
// channel requests, the channel list) must parse into the fields the manager
// and the channels read, or be refused with an Error; every frame is checked
// as a listener checks a client's first one (and never accepted: the fuzzer
// cannot know the proof).
#include <cstdint>
#include <span>

#include "auth.hpp"
#include "client_state.hpp"
#include "control.hpp"
#include "frame.hpp"
#include "sheaf/error.hpp"

namespace {

// What the manager and a channel owner read from a control frame.
void read_control(const sheaf::msg::Frame& frame) {
  try {
    const sheaf::msg::Json json = sheaf::msg::parse_control(frame);
    (void)sheaf::msg::parse_heaps(json, frame);
    const std::string name = sheaf::msg::string_field(json, "name", frame);
    sheaf::msg::check_name(name, "channel name");
    (void)sheaf::msg::int_field(json, "pid", frame);
  } catch (const sheaf::Error&) {
  }
}

// What a listener beyond loopback does with a client's first frame. The
// point is that parsing it never crashes; a fixed challenge, so that any
// input that does crash it crashes it again. (An input that forged the HMAC
// would trap below; none will, short of a broken HMAC.)
void read_authenticate(const sheaf::msg::Frame& frame) {
  static const sheaf::msg::Secret secret{std::vector<unsigned char>(32, 'k'), "fuzz"};
  static const sheaf::msg::Nonce challenge = [] {
    sheaf::msg::Nonce fixed{};
    fixed.fill(std::byte{0x5a});
    return fixed;
  }();
  try {
    (void)sheaf::msg::answer_client(secret, challenge, frame, "fuzz");
    __builtin_trap();  // a forged proof was taken
  } catch (const sheaf::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t piece = 1 + data[0] % 64;
  // Payloads from this size on are gathered directly: small enough here for
  // inputs of a few KiB to take that path too.
  const std::size_t direct_bytes = 1 + data[1] % 128 * 32;
  const auto stream = std::as_bytes(std::span(data + 2, size - 2));
  sheaf::msg::FrameReader reader(1 << 16, direct_bytes);
  try {
    for (std::size_t at = 0; at < stream.size(); at += piece) {
      reader.feed(stream.subspan(at, std::min(piece, stream.size() - at)));
      while (std::optional<sheaf::msg::Frame> frame = reader.next()) {
        if (frame->payload.size() != frame->header.payload_bytes) __builtin_trap();
        if (frame->header.payload_bytes > (1u << 16)) __builtin_trap();
        if (frame->header.flags & sheaf::msg::kFlagHeapRef) {
          try {
            (void)sheaf::msg::decode_heap_ref(frame->payload);
          } catch (const sheaf::Error&) {
          }
        }
        read_control(*frame);
        read_authenticate(*frame);
      }
    }
  } catch (const sheaf::Error&) {
    // A clear error is the right answer to bytes that are not frames.
  }
  return 0;
}
