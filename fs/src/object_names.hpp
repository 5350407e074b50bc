// object_names.hpp: how a heap's object names are spelled as file names.
//
// An object name is any string of up to 4096 bytes; a file name may not hold
// '/' or NUL, may not be "." or "..", and has at most 255 bytes. So in file
// names '%', '/' and NUL are written %25, %2F and %00, and the names "." and
// ".." as %2E and %2E%2E. Everything else is itself. Each object has exactly
// one file name; objects whose file name would be longer than 255 bytes are
// not shown (`sheaf heap ls` lists them).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace sheaf::fs {

inline constexpr std::size_t kMaxFileName = 255;

std::string file_name_of(std::string_view object_name);
// The object name a file name spells, or nothing if it spells none (a bad
// or non-canonical escape, which no listing ever shows).
std::optional<std::string> object_name_of(std::string_view file_name);

}  // namespace sheaf::fs
