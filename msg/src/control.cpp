#include "control.hpp"

#include <cerrno>
#include <cstring>

#include "sheaf/error.hpp"

namespace sheaf::msg {

std::vector<std::byte> to_payload(const Json& json) {
  const std::string text = json.dump();
  const auto* first = reinterpret_cast<const std::byte*>(text.data());
  return {first, first + text.size()};
}

Json parse_control(const Frame& frame) {
  const char* what = frame_type_name(frame.header.type);
  if (frame.payload.size() > kMaxControlBytes) {
    throw Error(Errc::kCorrupted, std::string("message frame '") + what + "': payload too long",
                EPROTO);
  }
  const auto* first = reinterpret_cast<const char*>(frame.payload.data());
  Json json = Json::parse(first, first + frame.payload.size(), nullptr, false);
  if (json.is_discarded() || !(json.is_object() || json.is_array())) {
    throw Error(Errc::kCorrupted,
                std::string("message frame '") + what + "': payload is not a JSON object", EPROTO);
  }
  return json;
}

std::string string_field(const Json& json, const char* key, const Frame& frame) {
  if (!json.is_object() || !json.contains(key) || !json[key].is_string()) {
    throw Error(Errc::kCorrupted,
                std::string("message frame '") + frame_type_name(frame.header.type) +
                    "': no string field '" + key + "'",
                EPROTO);
  }
  return json[key].get<std::string>();
}

std::int64_t int_field(const Json& json, const char* key, const Frame& frame) {
  if (!json.is_object() || !json.contains(key) || !json[key].is_number_integer()) {
    throw Error(Errc::kCorrupted,
                std::string("message frame '") + frame_type_name(frame.header.type) +
                    "': no integer field '" + key + "'",
                EPROTO);
  }
  return json[key].get<std::int64_t>();
}

void check_name(const std::string& name, const char* what) {
  if (name.empty() || name.size() > kMaxIdLength) {
    throw Error(Errc::kInvalidArgument, std::string(what) + " '" + name + "': must be 1 to " +
                                            std::to_string(kMaxIdLength) + " characters");
  }
  for (const char c : name) {
    if (c <= ' ' || c > '~') {
      throw Error(Errc::kInvalidArgument,
                  std::string(what) + " '" + name +
                      "': only printable ASCII characters without spaces are allowed");
    }
  }
}

std::vector<std::byte> error_payload(const std::string& message) {
  const auto* first = reinterpret_cast<const std::byte*>(message.data());
  return {first, first + std::min<std::size_t>(message.size(), 4096)};
}

void throw_error_frame(const Frame& frame, const std::string& context) {
  const std::string text(reinterpret_cast<const char*>(frame.payload.data()), frame.payload.size());
  const int error = frame.header.value;
  // The category the errno has everywhere else; a broken protocol is damage.
  const Errc code = error == EPROTO ? Errc::kCorrupted : Error::from_errno(error, "").code();
  throw Error(code, context + ": " + text, error);
}

}  // namespace sheaf::msg
