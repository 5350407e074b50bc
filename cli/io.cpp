#include "io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <algorithm>
#include <cerrno>

#include "sheaf/error.hpp"

namespace sheaf::cli {
namespace {

constexpr std::size_t kChunk = std::size_t{1} << 20;

// Closes a descriptor this code opened (never standard input).
class InputFile {
 public:
  explicit InputFile(const std::string& path) {
    if (path == "-") return;
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw Error::from_errno(errno, path);
  }
  ~InputFile() {
    if (fd_ != STDIN_FILENO) ::close(fd_);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_ = STDIN_FILENO;
};

}  // namespace

std::vector<std::byte> read_input(const std::string& path) {
  const std::string what = path == "-" ? std::string("standard input") : path;
  InputFile file(path);
  // A regular file tells its size, so one read usually does; a pipe does not.
  struct stat st {};
  std::size_t chunk = kChunk;
  if (::fstat(file.fd(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    chunk = std::max(chunk, static_cast<std::size_t>(st.st_size) + 1);
  }
  std::vector<std::byte> bytes;
  std::size_t used = 0;
  for (;;) {
    if (used == bytes.size()) {
      bytes.resize(used + chunk);
      chunk = std::max(chunk, bytes.size());  // grow geometrically on a long stream
    }
    ssize_t n = ::read(file.fd(), bytes.data() + used, bytes.size() - used);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error::from_errno(errno, what);
    }
    used += static_cast<std::size_t>(n);
  }
  bytes.resize(used);
  return bytes;
}

void write_output(std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(STDOUT_FILENO, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error::from_errno(errno, "standard output");
    }
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
}

}  // namespace sheaf::cli
