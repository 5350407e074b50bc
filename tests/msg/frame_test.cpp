// The wire format (msg/src/frame.hpp, docs/protocols.md): what is written is
// what is read, byte for byte as the document says, and every malformed field
// is refused by name.
#include "frame.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "sheaf/error.hpp"

namespace sheaf::msg {
namespace {

using Header = std::array<std::byte, kFrameHeaderBytes>;

FrameHeader sample() {
  FrameHeader h;
  h.type = FrameType::kSend;
  h.flags = 0;
  h.payload_bytes = 5;
  h.channel = 0x01020304;
  h.request_id = 0x1112131415161718;
  h.value = -7;
  return h;
}

// Expects decode_header to refuse `bytes` with `code`, naming `what`.
void expect_refused(const Header& bytes, Errc code, const std::string& what,
                    std::uint32_t max_payload = kMaxPayloadBytes) {
  try {
    decode_header(bytes, max_payload);
    ADD_FAILURE() << "accepted; wanted a refusal naming '" << what << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.message();
    EXPECT_NE(e.message().find(what), std::string::npos) << e.message();
  }
}

TEST(Frame, HeaderIsBigEndianAsDocumented) {
  const Header bytes = encode_header(sample());
  const unsigned char expected[kFrameHeaderBytes] = {
      'S',  'H',  'M',  'F',                           // magic
      1,    12,   0,    0,                             // version, type (send), flags
      0,    0,    0,    5,                             // payload bytes
      1,    2,    3,    4,                             // channel
      0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,  // request id
      0xff, 0xff, 0xff, 0xf9,                          // value -7
      0,    0,    0,    0};                            // reserved
  EXPECT_EQ(std::memcmp(bytes.data(), expected, sizeof(expected)), 0);
  EXPECT_EQ(decode_header(bytes, 100), sample());
}

TEST(Frame, EveryMalformedFieldIsRefusedByName) {
  const Header good = encode_header(sample());
  Header bytes = good;
  bytes[0] = std::byte{'X'};
  expect_refused(bytes, Errc::kCorrupted, "magic");
  bytes = good;
  bytes[4] = std::byte{2};
  expect_refused(bytes, Errc::kUnsupported, "version 2 is newer");
  bytes[4] = std::byte{0};
  expect_refused(bytes, Errc::kUnsupported, "version 0");
  bytes = good;
  bytes[5] = std::byte{0};
  expect_refused(bytes, Errc::kCorrupted, "unknown type 0");
  bytes[5] = std::byte{kLastFrameType + 1};
  expect_refused(bytes, Errc::kCorrupted, "unknown type");
  bytes = good;
  bytes[7] = std::byte{0x80};
  expect_refused(bytes, Errc::kCorrupted, "unknown flags");
  bytes = good;
  bytes[31] = std::byte{1};
  expect_refused(bytes, Errc::kCorrupted, "reserved");
  // Longer than the reader allows, and longer than any frame may be.
  expect_refused(good, Errc::kCorrupted, "more than the 4 allowed", 4);
  FrameHeader huge = sample();
  huge.payload_bytes = kMaxPayloadBytes + 1;
  expect_refused(encode_header(huge), Errc::kCorrupted, "allowed", UINT32_MAX);
  // A heap reference is exactly 48 bytes.
  FrameHeader ref = sample();
  ref.flags = kFlagHeapRef;
  expect_refused(encode_header(ref), Errc::kCorrupted, "heap reference of 5 bytes");
  ref.payload_bytes = kHeapRefBytes;
  EXPECT_EQ(decode_header(encode_header(ref), kMaxPayloadBytes), ref);
  // The errno a transport reports.
  try {
    decode_header(bytes, 100);
    ADD_FAILURE() << "a reserved field that is not zero was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.sys_errno(), EPROTO);
  }
}

TEST(Frame, HeapReferenceRoundTripsAndRefusesDamage) {
  HeapRef ref;
  for (std::size_t i = 0; i < ref.heap_uuid.size(); ++i)
    ref.heap_uuid[i] = static_cast<std::uint8_t>(i * 7);
  ref.offset = 4096;
  ref.length = std::uint64_t{1} << 33;
  ref.serial = 42;
  const auto bytes = encode_heap_ref(ref);
  EXPECT_EQ(decode_heap_ref(bytes), ref);
  EXPECT_THROW(decode_heap_ref(std::span(bytes).first(47)), Error);
  auto damaged = bytes;
  damaged[47] = std::byte{1};
  EXPECT_THROW(decode_heap_ref(damaged), Error);
  HeapRef wraps = ref;
  wraps.offset = UINT64_MAX - 1;
  wraps.length = 2;
  EXPECT_THROW(decode_heap_ref(encode_heap_ref(wraps)), Error);
}

// Frames written back to back arrive in pieces of any size: each comes out
// whole, once, in order, small payloads and those gathered directly
// (kDirectBytes and more) alike; and the reader holds exactly the bytes fed
// and not yet returned.
TEST(FrameReader, ReassemblesFramesFromPiecesOfAnySize) {
  std::vector<std::byte> stream;
  std::vector<Frame> sent;
  std::mt19937 random(7);
  for (int i = 0; i < 200; ++i) {
    Frame frame;
    frame.header = sample();
    frame.header.request_id = static_cast<std::uint64_t>(i + 1);
    const std::size_t bytes = i % 10 == 3   ? FrameReader::kDirectBytes + random() % 100000
                              : i % 10 == 7 ? FrameReader::kDirectBytes
                                            : random() % 3000;
    frame.payload.resize(bytes);
    for (auto& b : frame.payload) b = static_cast<std::byte>(random());
    frame.header.payload_bytes = static_cast<std::uint32_t>(frame.payload.size());
    const auto header = encode_header(frame.header);
    stream.insert(stream.end(), header.begin(), header.end());
    stream.insert(stream.end(), frame.payload.begin(), frame.payload.end());
    sent.push_back(std::move(frame));
  }
  FrameReader reader(1 << 20);
  std::size_t received = 0;
  std::size_t returned_bytes = 0;
  for (std::size_t at = 0; at < stream.size();) {
    // Mostly small pieces, now and then one that spans several frames.
    const std::size_t most = random() % 8 == 0 ? 300000 : 700;
    const std::size_t piece = std::min<std::size_t>(1 + random() % most, stream.size() - at);
    reader.feed(std::span(stream).subspan(at, piece));
    at += piece;
    while (std::optional<Frame> frame = reader.next()) {
      ASSERT_LT(received, sent.size());
      EXPECT_EQ(frame->header, sent[received].header);
      EXPECT_EQ(frame->payload, sent[received].payload);
      returned_bytes += kFrameHeaderBytes + frame->payload.size();
      ++received;
    }
    ASSERT_EQ(reader.buffered(), at - returned_bytes);
  }
  EXPECT_EQ(received, sent.size());
  EXPECT_EQ(reader.buffered(), 0u);
}

// A bad header poisons the stream: nothing after it is taken for a frame,
// and a payload over the limit is refused before a byte of it is kept.
TEST(FrameReader, ABadHeaderPoisonsTheStream) {
  FrameReader reader(1000);
  FrameHeader big = sample();
  big.payload_bytes = 1001;
  const auto header = encode_header(big);
  reader.feed(header);
  EXPECT_THROW(reader.next(), Error);
  const auto good = encode_header(sample());
  reader.feed(good);
  try {
    reader.next();
    ADD_FAILURE() << "read on after a bad header";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("cannot be read on"), std::string::npos) << e.message();
  }
}

}  // namespace
}  // namespace sheaf::msg
