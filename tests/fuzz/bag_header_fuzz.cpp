// bag_header_fuzz.cpp: libFuzzer target for bag headers from outside.
//
// The input is a bag file. Its first byte is a switch: when bit 0 is set, the
// harness recomputes the header checksum where the header says it lies, so the
// fuzzer gets past it and explores the type and tag parsing.
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "sheaf/bag.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::vector<std::uint8_t> file(data + 1, data + size);
  constexpr std::size_t kFixed = 56;  // the fixed part; its last u32 is the extra length
  if ((data[0] & 1) && file.size() >= kFixed) {
    std::uint32_t extra = 0;
    std::memcpy(&extra, &file[kFixed - 4], 4);
    const std::size_t checked = kFixed + extra;
    if (checked + 8 <= file.size()) {
      const std::uint64_t checksum = XXH64(file.data(), checked, 0);
      std::memcpy(&file[checked], &checksum, 8);
    }
  }
  try {
    const sheaf::BagInfo info = sheaf::parse_bag_header(
        {reinterpret_cast<const std::byte*>(file.data()), file.size()}, file.size(), "fuzz");
    // What parsed must be self-consistent.
    if (info.element_size != 0 && info.size % info.element_size != 0) __builtin_trap();
    if (info.size > file.size()) __builtin_trap();
  } catch (const sheaf::Error&) {
    // A clear error is the right answer to a bad header.
  }
  return 0;
}
