// control.hpp: the JSON payloads of control frames (hello, channel
// requests, the channel list). Internal; see docs/protocols.md.
//
// Control frames are rare and small, so their payloads are JSON objects,
// parsed by nlohmann-json with every field's type checked; the frames that
// carry messages (send, reply, buffered send) have binary payloads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "frame.hpp"

namespace sheaf::msg {

using Json = nlohmann::json;

inline constexpr std::size_t kMaxIdLength = 47;             // client ids and channel names
inline constexpr std::uint32_t kMaxControlBytes = 1 << 20;  // a control payload

std::vector<std::byte> to_payload(const Json& json);
// The payload as a JSON object; throws Error(kCorrupted) naming the frame.
Json parse_control(const Frame& frame);
// The field as a string / integer; throws Error(kCorrupted) if missing or mistyped.
std::string string_field(const Json& json, const char* key, const Frame& frame);
std::int64_t int_field(const Json& json, const char* key, const Frame& frame);
// Throws Error(kInvalidArgument) unless `name` is 1..47 printable ASCII
// characters without spaces; `what`: "channel name", "client id".
void check_name(const std::string& name, const char* what);

// An error frame's text and errno as the Error it reports.
[[noreturn]] void throw_error_frame(const Frame& frame, const std::string& context);
std::vector<std::byte> error_payload(const std::string& message);

}  // namespace sheaf::msg
