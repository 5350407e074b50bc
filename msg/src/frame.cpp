#include "frame.hpp"

#include <boost/endian/conversion.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <string>

#include "sheaf/error.hpp"

namespace sheaf::msg {
namespace {

namespace endian = boost::endian;

//   0  u32 magic "SHMF"      12  u32 channel
//   4  u8  version           16  u64 request id
//   5  u8  type              24  i32 value
//   6  u16 flags             28  u32 reserved (0)
//   8  u32 payload bytes
unsigned char* at(std::array<std::byte, kFrameHeaderBytes>& bytes, std::size_t offset) {
  return reinterpret_cast<unsigned char*>(bytes.data()) + offset;
}
const unsigned char* at(std::span<const std::byte> bytes, std::size_t offset) {
  return reinterpret_cast<const unsigned char*>(bytes.data()) + offset;
}

[[noreturn]] void refuse(const std::string& what) {
  throw Error(Errc::kCorrupted, "message frame: " + what, EPROTO);
}

}  // namespace

const char* frame_type_name(FrameType type) noexcept {
  switch (type) {
    case FrameType::kHello:
      return "hello";
    case FrameType::kWelcome:
      return "welcome";
    case FrameType::kError:
      return "error";
    case FrameType::kPing:
      return "ping";
    case FrameType::kPong:
      return "pong";
    case FrameType::kCreateChannel:
      return "create-channel";
    case FrameType::kChannelCreated:
      return "channel-created";
    case FrameType::kDeleteChannel:
      return "delete-channel";
    case FrameType::kConnectChannel:
      return "connect-channel";
    case FrameType::kChannelConnected:
      return "channel-connected";
    case FrameType::kDisconnectChannel:
      return "disconnect-channel";
    case FrameType::kSend:
      return "send";
    case FrameType::kReply:
      return "reply";
    case FrameType::kBufferedSend:
      return "buffered-send";
    case FrameType::kEvent:
      return "event";
    case FrameType::kCredit:
      return "credit";
    case FrameType::kListChannels:
      return "list-channels";
    case FrameType::kChannelList:
      return "channel-list";
    case FrameType::kDone:
      return "done";
    case FrameType::kJoinGroup:
      return "join-group";
    case FrameType::kListGroup:
      return "list-group";
    case FrameType::kChallenge:
      return "challenge";
    case FrameType::kAuthenticate:
      return "authenticate";
    case FrameType::kAuthenticated:
      return "authenticated";
  }
  return "unknown";
}

std::array<std::byte, kFrameHeaderBytes> encode_header(const FrameHeader& header) {
  std::array<std::byte, kFrameHeaderBytes> bytes{};
  endian::store_big_u32(at(bytes, 0), kFrameMagic);
  *at(bytes, 4) = kFrameVersion;
  *at(bytes, 5) = static_cast<unsigned char>(header.type);
  endian::store_big_u16(at(bytes, 6), header.flags);
  endian::store_big_u32(at(bytes, 8), header.payload_bytes);
  endian::store_big_u32(at(bytes, 12), header.channel);
  endian::store_big_u64(at(bytes, 16), header.request_id);
  endian::store_big_s32(at(bytes, 24), header.value);
  endian::store_big_u32(at(bytes, 28), 0);
  return bytes;
}

FrameHeader decode_header(std::span<const std::byte, kFrameHeaderBytes> bytes,
                          std::uint32_t max_payload) {
  if (endian::load_big_u32(at(bytes, 0)) != kFrameMagic) refuse("bad magic (not a Sheaf peer?)");
  const unsigned version = *at(bytes, 4);
  if (version != kFrameVersion) {
    throw Error(Errc::kUnsupported,
                "message frame: version " + std::to_string(version) +
                    (version > kFrameVersion ? " is newer than" : " is not") +
                    " what this Sheaf speaks (" + std::to_string(kFrameVersion) + ")",
                EPROTONOSUPPORT);
  }
  const unsigned type = *at(bytes, 5);
  if (type == 0 || type > kLastFrameType) refuse("unknown type " + std::to_string(type));
  FrameHeader header;
  header.type = static_cast<FrameType>(type);
  header.flags = endian::load_big_u16(at(bytes, 6));
  if ((header.flags & ~kKnownFlags) != 0) refuse("unknown flags " + std::to_string(header.flags));
  header.payload_bytes = endian::load_big_u32(at(bytes, 8));
  const std::uint32_t limit = std::min(max_payload, kMaxPayloadBytes);
  if (header.payload_bytes > limit) {
    refuse("payload of " + std::to_string(header.payload_bytes) + " bytes, more than the " +
           std::to_string(limit) + " allowed");
  }
  if ((header.flags & kFlagHeapRef) && header.payload_bytes != kHeapRefBytes) {
    refuse("a heap reference of " + std::to_string(header.payload_bytes) + " bytes, not " +
           std::to_string(kHeapRefBytes));
  }
  header.channel = endian::load_big_u32(at(bytes, 12));
  header.request_id = endian::load_big_u64(at(bytes, 16));
  header.value = endian::load_big_s32(at(bytes, 24));
  if (endian::load_big_u32(at(bytes, 28)) != 0) refuse("reserved field not zero");
  return header;
}

//   0  16 bytes heap UUID     24  u64 length
//  16  u64 offset             32  u64 serial      40  u64 reserved (0)
std::array<std::byte, kHeapRefBytes> encode_heap_ref(const HeapRef& ref) {
  std::array<std::byte, kHeapRefBytes> bytes{};
  auto* out = reinterpret_cast<unsigned char*>(bytes.data());
  std::memcpy(out, ref.heap_uuid.data(), ref.heap_uuid.size());
  endian::store_big_u64(out + 16, ref.offset);
  endian::store_big_u64(out + 24, ref.length);
  endian::store_big_u64(out + 32, ref.serial);
  endian::store_big_u64(out + 40, 0);
  return bytes;
}

HeapRef decode_heap_ref(std::span<const std::byte> bytes) {
  if (bytes.size() != kHeapRefBytes) {
    refuse("a heap reference of " + std::to_string(bytes.size()) + " bytes, not " +
           std::to_string(kHeapRefBytes));
  }
  HeapRef ref;
  std::memcpy(ref.heap_uuid.data(), bytes.data(), ref.heap_uuid.size());
  ref.offset = endian::load_big_u64(at(bytes, 16));
  ref.length = endian::load_big_u64(at(bytes, 24));
  ref.serial = endian::load_big_u64(at(bytes, 32));
  if (endian::load_big_u64(at(bytes, 40)) != 0) refuse("heap reference: reserved field not zero");
  if (ref.length > UINT64_MAX - ref.offset) refuse("heap reference: offset + length overflows");
  return ref;
}

void FrameReader::feed(std::span<const std::byte> bytes) {
  if (gathering_) {
    std::vector<std::byte>& payload = gathering_->payload;
    const std::size_t take =
        std::min<std::size_t>(bytes.size(), gathering_->header.payload_bytes - payload.size());
    payload.insert(payload.end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(take));
    bytes = bytes.subspan(take);
    if (bytes.empty()) return;
  }
  // Drop what was consumed before growing, so the buffer holds at most one
  // frame and what arrived after it.
  if (start_ > 0 && start_ >= buffer_.size() / 2) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(start_));
    start_ = 0;
  }
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

std::optional<Frame> FrameReader::next() {
  if (poisoned_)
    throw Error(Errc::kCorrupted, *poisoned_ + " (the stream cannot be read on)", EPROTO);
  if (gathering_) {
    if (gathering_->payload.size() < gathering_->header.payload_bytes) return std::nullopt;
    std::optional<Frame> frame = std::move(gathering_);
    gathering_.reset();
    return frame;
  }
  if (buffered() < kFrameHeaderBytes) return std::nullopt;
  FrameHeader header;
  try {
    header = decode_header(
        std::span<const std::byte, kFrameHeaderBytes>(buffer_.data() + start_, kFrameHeaderBytes),
        max_payload_);
  } catch (const Error& e) {
    poisoned_ = e.message();
    throw;
  }
  const auto first = buffer_.begin() + static_cast<std::ptrdiff_t>(start_ + kFrameHeaderBytes);
  if (buffered() - kFrameHeaderBytes < header.payload_bytes) {
    if (header.payload_bytes < direct_bytes_) return std::nullopt;
    // Everything after this header is the start of its payload: gather the
    // rest where it belongs (reserved, not yet touched). Nothing changes
    // unless the room is had: a process that cannot have it refuses the
    // stream, as it would a header over the limit.
    Frame frame{header, {}};
    try {
      frame.payload.reserve(header.payload_bytes);
    } catch (const std::bad_alloc&) {
      poisoned_ = "no memory for a payload of " + std::to_string(header.payload_bytes) + " bytes";
      throw Error(Errc::kOutOfSpace, *poisoned_, ENOMEM);
    }
    frame.payload.assign(first, buffer_.end());
    gathering_ = std::move(frame);
    buffer_.clear();
    start_ = 0;
    return std::nullopt;
  }
  Frame frame{header, std::vector<std::byte>(first, first + header.payload_bytes)};
  start_ += kFrameHeaderBytes + header.payload_bytes;
  if (start_ == buffer_.size()) {
    buffer_.clear();
    start_ = 0;
  }
  return frame;
}

}  // namespace sheaf::msg
