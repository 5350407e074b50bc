// object_name_fuzz.cpp: libFuzzer target for the file names a mounted store is
// asked about (any bytes a user types), decoded into heap object names
// (fs/src/object_names.hpp).
//
// Properties: a file name that decodes re-encodes to itself (each object has
// one spelling), and every object name encodes to a legal file name that
// decodes back to it.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "../../fs/src/object_names.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  if (const auto name = sheaf::fs::object_name_of(input)) {
    if (sheaf::fs::file_name_of(*name) != input) std::abort();
  }
  const std::string file = sheaf::fs::file_name_of(input);
  if (file.find('/') != std::string::npos || file.find('\0') != std::string::npos) std::abort();
  if (file == "." || file == "..") std::abort();
  const auto back = sheaf::fs::object_name_of(file);
  if (!back || *back != input) std::abort();
  return 0;
}
