#include "io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "posix.hpp"
#include "sheaf/error.hpp"

namespace sheaf::cli {
namespace {

constexpr std::size_t kChunk = std::size_t{1} << 20;
constexpr std::size_t kPage = 4096;

bool all_zero(std::span<const std::byte> bytes) {
  // The first byte is zero and every byte equals the next: all are zero.
  return bytes.empty() || (bytes[0] == std::byte{0} &&
                           std::memcmp(bytes.data(), bytes.data() + 1, bytes.size() - 1) == 0);
}

}  // namespace

InputFile::InputFile(const std::string& path) {
  if (path == "-") {
    fd_ = STDIN_FILENO;
    what_ = "standard input";
    return;
  }
  what_ = path;
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw Error::from_errno(errno, path);
}

InputFile::~InputFile() {
  if (fd_ != STDIN_FILENO) ::close(fd_);
}

std::size_t InputFile::read_full(std::span<std::byte> buffer) {
  std::size_t used = 0;
  while (used < buffer.size()) {
    const ssize_t n = ::read(fd_, buffer.data() + used, buffer.size() - used);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error::from_errno(errno, what_);
    }
    used += static_cast<std::size_t>(n);
  }
  return used;
}

std::vector<std::byte> read_input(const std::string& path) {
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
    const std::size_t n = file.read_full(std::span(bytes).subspan(used));
    used += n;
    if (used < bytes.size()) break;  // the input ended before the buffer filled
  }
  bytes.resize(used);
  return bytes;
}

void write_output(std::span<const std::byte> bytes) {
  posix::write_all(STDOUT_FILENO, bytes, "standard output");
}

void for_each_zero_run(std::span<const std::byte> bytes,
                       const std::function<void(std::span<const std::byte>, bool)>& fn) {
  std::size_t start = 0;
  while (start < bytes.size()) {
    const bool zero = all_zero(bytes.subspan(start, std::min(kPage, bytes.size() - start)));
    std::size_t end = start + kPage;
    while (end < bytes.size() &&
           all_zero(bytes.subspan(end, std::min(kPage, bytes.size() - end))) == zero) {
      end += kPage;
    }
    end = std::min(end, bytes.size());
    fn(bytes.subspan(start, end - start), zero);
    start = end;
  }
}

OutputFile::OutputFile(const std::string& path) {
  if (path == "-") {
    fd_ = STDOUT_FILENO;
    what_ = "standard output";
    return;
  }
  what_ = path;
  struct stat st {};
  const bool exists = ::stat(path.c_str(), &st) == 0;
  if (exists && !S_ISREG(st.st_mode)) {
    // /dev/null, a FIFO, a terminal: never renamed over, written as it is.
    fd_ = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd_ < 0) throw Error::from_errno(errno, path);
    owns_fd_ = true;
    return;
  }
  path_ = path;
  // Through a symbolic link: replace the file it points to, not the link.
  if (exists) {
    if (char* target = ::realpath(path.c_str(), nullptr)) {
      path_ = target;
      std::free(target);
    }
  }
  const auto slash = path_.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : path_.substr(0, slash + 1);
  const std::string base = slash == std::string::npos ? path_ : path_.substr(slash + 1);
  std::string temp = dir + "." + base + ".XXXXXX";
  fd_ = ::mkostemp(temp.data(), O_CLOEXEC);
  if (fd_ < 0) throw Error::from_errno(errno, path + ": cannot create a temporary file beside it");
  owns_fd_ = true;
  temp_ = temp;
  // mkostemp makes the file 0600: give it the mode of the file it replaces,
  // or the mode a new file would have.
  mode_t mode = st.st_mode & 07777;
  if (!exists) {
    const mode_t mask = ::umask(0);
    ::umask(mask);
    mode = 0666 & ~mask;
  }
  ::fchmod(fd_, mode);
}

OutputFile::~OutputFile() {
  if (owns_fd_) ::close(fd_);
  if (!temp_.empty()) ::unlink(temp_.c_str());
}

void OutputFile::write(std::span<const std::byte> bytes) {
  if (path_.empty()) {
    posix::write_all(fd_, bytes, what_);
    return;
  }
  for_each_zero_run(bytes, [&](std::span<const std::byte> run, bool zero) {
    if (!zero) posix::pwrite_all(fd_, run, size_, what_);
    size_ += run.size();  // a zero run is left as a hole
  });
}

void OutputFile::copy_bag_payload(const Bag& bag, bool verify, const Progress& progress) {
  bag.copy_payload(fd_, verify, progress);
  size_ = bag.info().size;
}

void OutputFile::commit(bool durable) {
  if (path_.empty()) return;
  if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) throw Error::from_errno(errno, what_);
  posix::publish_file(fd_, temp_, path_, /*replace=*/true, what_, durable);
  temp_.clear();
}

}  // namespace sheaf::cli
