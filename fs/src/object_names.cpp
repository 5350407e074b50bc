#include "object_names.hpp"

namespace sheaf::fs {

std::string file_name_of(std::string_view object_name) {
  if (object_name == ".") return "%2E";
  if (object_name == "..") return "%2E%2E";
  std::string out;
  out.reserve(object_name.size());
  for (char c : object_name) {
    switch (c) {
      case '%':
        out += "%25";
        break;
      case '/':
        out += "%2F";
        break;
      case '\0':
        out += "%00";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::optional<std::string> object_name_of(std::string_view file_name) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(file_name.size());
  for (std::size_t i = 0; i < file_name.size(); ++i) {
    if (file_name[i] != '%') {
      out += file_name[i];
      continue;
    }
    if (i + 2 >= file_name.size()) return std::nullopt;
    const int high = hex(file_name[i + 1]);
    const int low = hex(file_name[i + 2]);
    if (high < 0 || low < 0) return std::nullopt;
    out += static_cast<char>(high * 16 + low);
    i += 2;
  }
  if (file_name_of(out) != file_name) return std::nullopt;  // one spelling per object
  return out;
}

}  // namespace sheaf::fs
