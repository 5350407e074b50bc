// frame.hpp: the wire format every Sheaf message travels in (docs/protocols.md).
//
// A frame is a fixed 32-byte header in network byte order, then its payload:
// bytes, or, when the header says so, a heap reference (HeapRef, 48 bytes)
// naming a block of a heap both ends map. The message layer's transports,
// the manager and (later) PSRP servers all speak it. Everything read from
// the wire is checked here before anything else sees it: an unknown version,
// type or flag, a reserved field that is not zero, a payload longer than the
// reader allows, are refused with an Error naming the field; nothing is
// allocated for a payload before its length has been checked.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sheaf/ref.hpp"

namespace sheaf::msg {

inline constexpr std::uint32_t kFrameMagic = 0x53484D46;  // "SHMF"
inline constexpr std::uint8_t kFrameVersion = 1;
inline constexpr std::size_t kFrameHeaderBytes = 32;
inline constexpr std::size_t kHeapRefBytes = 48;
// No frame carries more, whatever a reader allows (heap references carry
// more than that in 48 bytes).
inline constexpr std::uint32_t kMaxPayloadBytes = std::uint32_t{1} << 30;

// What a frame asks or answers. Values are on the wire: never reuse one.
enum class FrameType : std::uint8_t {
  kHello = 1,    // client -> manager or server: who I am (payload: id)
  kWelcome = 2,  // the answer to kHello
  kError = 3,    // value: an errno; payload: a message
  kPing = 4,     // value: echoed in the kPong
  kPong = 5,
  kCreateChannel = 6,   // payload: name; value: bound on buffered messages
  kChannelCreated = 7,  // channel: the new channel's id
  kDeleteChannel = 8,
  kConnectChannel = 9,     // payload: name
  kChannelConnected = 10,  // channel: its id
  kDisconnectChannel = 11,
  kSend = 12,          // a synchronous request; value: the message type
  kReply = 13,         // request_id: the kSend's; value: the answer
  kBufferedSend = 14,  // asynchronous; value: the message type
  kEvent = 15,         // value: what happened (a timer, a client's death...)
  kCredit = 16,        // server -> sender: value more buffered sends may go
  kListChannels = 17,  // client -> manager
  kChannelList = 18,   // payload: the channels (JSON)
  kDone = 19,          // the answer to a request that returns nothing
  kJoinGroup = 20,     // owner -> manager: {"group", "channel"}: the channel joins the group
  kListGroup = 21,     // client -> manager: {"group"}; answered with a channel list
  // Before the hello, on a connection from another host (auth.hpp):
  kChallenge = 22,      // listener -> client: a random nonce
  kAuthenticate = 23,   // client -> listener: its nonce and its proof
  kAuthenticated = 24,  // listener -> client: the listener's proof
};
inline constexpr std::uint8_t kLastFrameType = 24;
const char* frame_type_name(FrameType type) noexcept;

// Header flags. Any other bit set is refused.
inline constexpr std::uint16_t kFlagHeapRef = 1;  // the payload is a HeapRef
inline constexpr std::uint16_t kKnownFlags = kFlagHeapRef;

struct FrameHeader {
  FrameType type = FrameType::kPing;
  std::uint16_t flags = 0;
  std::uint32_t payload_bytes = 0;
  std::uint32_t channel = 0;     // 0: none
  std::uint64_t request_id = 0;  // 0: none; a client's requests count up from 1
  std::int32_t value = 0;        // per type (see FrameType)
  friend bool operator==(const FrameHeader&, const FrameHeader&) = default;
};

std::array<std::byte, kFrameHeaderBytes> encode_header(const FrameHeader& header);
// Throws Error(kUnsupported) for a version this Sheaf does not speak,
// Error(kCorrupted) for anything else wrong, each naming the field; a
// payload longer than `max_payload` (at most kMaxPayloadBytes) is refused.
FrameHeader decode_header(std::span<const std::byte, kFrameHeaderBytes> bytes,
                          std::uint32_t max_payload);

// A block of a heap, as a message carries it instead of its bytes (the
// public sheaf::Ref, sheaf/ref.hpp).
using HeapRef = sheaf::Ref;
std::array<std::byte, kHeapRefBytes> encode_heap_ref(const HeapRef& ref);
// Throws Error(kCorrupted) unless `bytes` is exactly one well-formed HeapRef.
HeapRef decode_heap_ref(std::span<const std::byte> bytes);

struct Frame {
  FrameHeader header;
  std::vector<std::byte> payload;
};

// Frames out of a byte stream (a socket), which delivers them in pieces of
// any size. feed() what arrived; next() returns each whole frame once. A
// malformed header poisons the reader: next() throws, and keeps throwing,
// since the stream can no longer be framed.
//
// A payload of kDirectBytes or more is gathered in its own vector, the
// frame's, from the moment its header is read: its bytes are copied once,
// not into the buffer and then out again, and the buffer does not grow to
// the largest payload ever read. The vector's capacity is reserved at once
// but its pages are touched only as bytes arrive, so a header that
// announces a large payload costs address space, not memory, until the
// peer sends it.
class FrameReader {
 public:
  static constexpr std::size_t kDirectBytes = std::size_t{64} << 10;

  // `direct_bytes`: the smallest payload gathered directly (kDirectBytes but
  // for tests and fuzzing, which reach that path with smaller inputs).
  explicit FrameReader(std::uint32_t max_payload, std::size_t direct_bytes = kDirectBytes)
      : max_payload_(max_payload), direct_bytes_(direct_bytes) {}
  void feed(std::span<const std::byte> bytes);
  std::optional<Frame> next();
  // Bytes fed and not yet returned in a frame.
  std::size_t buffered() const noexcept {
    return buffer_.size() - start_ +
           (gathering_ ? kFrameHeaderBytes + gathering_->payload.size() : 0);
  }
  // From the next header on, payloads longer than this are refused.
  void limit(std::uint32_t max_payload) { max_payload_ = std::min(max_payload, kMaxPayloadBytes); }

 private:
  std::uint32_t max_payload_;
  std::size_t direct_bytes_;
  std::vector<std::byte> buffer_;
  std::size_t start_ = 0;           // where the next frame begins in buffer_
  std::optional<Frame> gathering_;  // a large payload's frame, its bytes still coming
  std::optional<std::string> poisoned_;
};

}  // namespace sheaf::msg
