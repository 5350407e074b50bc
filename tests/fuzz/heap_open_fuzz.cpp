// heap_open_fuzz.cpp: libFuzzer target for opening heap files from outside.
//
// The input is a heap file. Its first byte is a switch: when bit 0 is set, the
// harness recomputes the header checksum, so the fuzzer gets past it and
// explores the state, the block chain and the name table. A file that opens
// must pass or fail check() without crashing, and if it passes, the
// allocator and the names must work on it.
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "sheaf/heap.hpp"

namespace {

constexpr std::size_t kChecksumOffset = 120;  // XXH64 of the identity's first 120 bytes

std::string scratch_path() {
  return "/dev/shm/sheaf-fuzz-" + std::to_string(getpid()) + ".heap";
}

void exercise(sheaf::Heap& heap) {
  if (!heap.check().ok()) return;
  for (const auto& object : heap.objects()) {
    (void)heap.object_bytes(object.name);
  }
  void* p = heap.allocate(100);
  auto* value = heap.construct<std::int64_t>("fuzz-probe")(7);
  if (heap.find<std::int64_t>("fuzz-probe") != value) __builtin_trap();
  heap.deallocate(p);
  heap.destroy<std::int64_t>("fuzz-probe");
  if (!heap.check().ok()) __builtin_trap();  // what we did must keep it sound
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::vector<std::uint8_t> file(data + 1, data + size);
  if ((data[0] & 1) && file.size() >= kChecksumOffset + 8) {
    const std::uint64_t checksum = XXH64(file.data(), kChecksumOffset, 0);
    std::memcpy(&file[kChecksumOffset], &checksum, sizeof(checksum));
  }
  const std::string path = scratch_path();
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return 0;
  if (!file.empty() && ::write(fd, file.data(), file.size()) != static_cast<ssize_t>(file.size())) {
    ::close(fd);
    return 0;
  }
  ::close(fd);
  sheaf::OpenOptions options;
  options.reserve = 64 << 20;
  options.mode = sheaf::LockMode::kLocal;
  try {
    auto opened = sheaf::Heap::open(path, options);
    if (opened.ok()) exercise(opened.value());
  } catch (const sheaf::Error&) {
    // A clear error is the right answer to a bad file.
  }
  ::unlink(path.c_str());
  return 0;
}
