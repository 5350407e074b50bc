#include "ring.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "frame.hpp"
#include "sheaf/error.hpp"

namespace sheaf::msg {
namespace {

constexpr std::uint64_t kRingMagic = 0x53484D52494E4731;  // "SHMRING1"
constexpr std::uint64_t kMinCapacity = 4096;
constexpr std::uint64_t kMaxCapacity = std::uint64_t{1} << 30;

// The segment: a header page, then each direction's data.
struct Header {
  std::uint64_t magic;
  std::uint64_t capacity;  // per direction, a power of two
  RingIndices direction[2];
};
constexpr std::uint64_t kHeaderBytes = 4096;
static_assert(sizeof(Header) <= kHeaderBytes);

Header* header_of(std::byte* base) {
  return reinterpret_cast<Header*>(base);
}

[[noreturn]] void broken(const std::string& what) {
  throw Error(Errc::kCorrupted, "shared-memory ring: " + what, EPROTO);
}

}  // namespace

RingPair RingPair::create(std::uint64_t capacity) {
  RingPair ring;
  ring.fd_ = ::memfd_create("sheaf-msg-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (ring.fd_ < 0) throw Error::from_errno(errno, "memfd_create for a message ring");
  const std::uint64_t bytes = kHeaderBytes + 2 * capacity;
  if (::ftruncate(ring.fd_, static_cast<off_t>(bytes)) != 0) {
    throw Error::from_errno(errno, "sizing a message ring");
  }
  // Its size cannot change under the peer's mapping (a SIGBUS otherwise).
  ::fcntl(ring.fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
  ring.map(bytes);
  Header* h = header_of(ring.base_);
  h->capacity = capacity;
  for (RingIndices& d : h->direction) {
    d.head.store(0);
    d.tail.store(0);
    d.reader_waiting.store(0);
    d.writer_waiting.store(0);
  }
  std::atomic_ref<std::uint64_t>(h->magic).store(kRingMagic, std::memory_order_release);
  ring.capacity_ = capacity;
  return ring;
}

RingPair RingPair::adopt(int fd) {
  RingPair ring;
  ring.fd_ = fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw Error::from_errno(errno, "a message ring from a peer");
  const auto bytes = static_cast<std::uint64_t>(st.st_size);
  // Sealed against shrinking, or a peer could truncate it under our reads.
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) broken("not sealed against shrinking");
  if (bytes < kHeaderBytes + 2 * kMinCapacity || bytes > kHeaderBytes + 2 * kMaxCapacity) {
    broken("bad size " + std::to_string(bytes));
  }
  ring.map(bytes);
  const Header* h = header_of(ring.base_);
  const std::uint64_t capacity = h->capacity;
  if (std::atomic_ref<const std::uint64_t>(h->magic).load(std::memory_order_acquire) !=
          kRingMagic ||
      capacity < kMinCapacity || (capacity & (capacity - 1)) != 0 ||
      bytes != kHeaderBytes + 2 * capacity) {
    broken("bad header");
  }
  ring.capacity_ = capacity;
  return ring;
}

void RingPair::map(std::uint64_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) throw Error::from_errno(errno, "mapping a message ring");
  base_ = static_cast<std::byte*>(p);
  bytes_ = bytes;
}

RingPair::RingPair(RingPair&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      base_(std::exchange(other.base_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      capacity_(std::exchange(other.capacity_, 0)) {}

RingPair& RingPair::operator=(RingPair&& other) noexcept {
  if (this != &other) {
    this->~RingPair();
    new (this) RingPair(std::move(other));
  }
  return *this;
}

RingPair::~RingPair() {
  if (base_ != nullptr) ::munmap(base_, bytes_);
  if (fd_ >= 0) ::close(fd_);
}

RingIndices& RingPair::indices(int direction) const {
  return header_of(base_)->direction[direction];
}
std::byte* RingPair::data(int direction) const {
  return base_ + kHeaderBytes + static_cast<std::uint64_t>(direction) * capacity_;
}

RingEnd::RingEnd(RingPair rings, int write_direction, int self_wake, int peer_wake)
    : rings_(std::move(rings)),
      write_direction_(write_direction),
      self_wake_(self_wake),
      peer_wake_(peer_wake) {}

RingEnd::RingEnd(RingEnd&& other) noexcept
    : rings_(std::move(other.rings_)),
      write_direction_(other.write_direction_),
      self_wake_(std::exchange(other.self_wake_, -1)),
      peer_wake_(std::exchange(other.peer_wake_, -1)) {}

RingEnd& RingEnd::operator=(RingEnd&& other) noexcept {
  if (this != &other) {
    this->~RingEnd();
    new (this) RingEnd(std::move(other));
  }
  return *this;
}

RingEnd::~RingEnd() {
  if (self_wake_ >= 0) ::close(self_wake_);
  if (peer_wake_ >= 0) ::close(peer_wake_);
}

namespace {

void poke(int fd) {
  const std::uint64_t one = 1;
  // EAGAIN: the counter is full, so the peer is woken anyway.
  while (::write(fd, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

}  // namespace

std::size_t RingEnd::write_some(std::span<const std::byte> bytes) {
  RingIndices& d = rings_.indices(write_direction_);
  const std::uint64_t capacity = rings_.capacity();
  const std::uint64_t head = d.head.load(std::memory_order_relaxed);
  const std::uint64_t tail = d.tail.load(std::memory_order_acquire);
  const std::uint64_t used = head - tail;
  if (used > capacity) broken("the reader's index is ahead of the writer's");
  const std::uint64_t n = std::min<std::uint64_t>(bytes.size(), capacity - used);
  if (n == 0) return 0;
  std::byte* data = rings_.data(write_direction_);
  const std::uint64_t at = head & (capacity - 1);
  const std::uint64_t first = std::min(n, capacity - at);
  std::memcpy(data + at, bytes.data(), first);
  std::memcpy(data, bytes.data() + first, n - first);
  // Sequentially consistent store and load (not a fence: ThreadSanitizer
  // cannot check fences): the reader's flag store and its head load are
  // ordered with these, so one of us sees the other.
  d.head.store(head + n, std::memory_order_seq_cst);
  if (d.reader_waiting.load(std::memory_order_seq_cst) != 0) poke(peer_wake_);
  return n;
}

std::size_t RingEnd::read_into(FrameReader& reader) {
  const int direction = 1 - write_direction_;
  RingIndices& d = rings_.indices(direction);
  const std::uint64_t capacity = rings_.capacity();
  const std::uint64_t tail = d.tail.load(std::memory_order_relaxed);
  const std::uint64_t head = d.head.load(std::memory_order_acquire);
  const std::uint64_t n = head - tail;
  if (n == 0) return 0;
  if (n > capacity) broken("the writer's index runs more than the ring ahead");
  const std::byte* data = rings_.data(direction);
  const std::uint64_t at = tail & (capacity - 1);
  const std::uint64_t first = std::min(n, capacity - at);
  reader.feed(std::span(data + at, first));
  if (n > first) reader.feed(std::span(data, n - first));
  d.tail.store(head, std::memory_order_seq_cst);
  if (d.writer_waiting.load(std::memory_order_seq_cst) != 0) poke(peer_wake_);
  return n;
}

bool RingEnd::readable() const {
  const RingIndices& d = rings_.indices(1 - write_direction_);
  return d.head.load(std::memory_order_acquire) != d.tail.load(std::memory_order_relaxed);
}

bool RingEnd::writable() const {
  const RingIndices& d = rings_.indices(write_direction_);
  return d.head.load(std::memory_order_relaxed) - d.tail.load(std::memory_order_acquire) <
         rings_.capacity();
}

bool RingEnd::prepare_to_sleep_reading() {
  RingIndices& d = rings_.indices(1 - write_direction_);
  d.reader_waiting.store(1, std::memory_order_seq_cst);
  if (d.head.load(std::memory_order_seq_cst) != d.tail.load(std::memory_order_relaxed)) {
    d.reader_waiting.store(0, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void RingEnd::done_sleeping_reading() {
  rings_.indices(1 - write_direction_).reader_waiting.store(0, std::memory_order_relaxed);
}

bool RingEnd::prepare_to_sleep_writing() {
  RingIndices& d = rings_.indices(write_direction_);
  d.writer_waiting.store(1, std::memory_order_seq_cst);
  if (d.head.load(std::memory_order_relaxed) - d.tail.load(std::memory_order_seq_cst) <
      rings_.capacity()) {
    d.writer_waiting.store(0, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void RingEnd::done_sleeping_writing() {
  rings_.indices(write_direction_).writer_waiting.store(0, std::memory_order_relaxed);
}

void RingEnd::drain_wake() {
  std::uint64_t count = 0;
  while (::read(self_wake_, &count, sizeof(count)) < 0 && errno == EINTR) {
  }
}

int make_wake_fd() {
  const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) throw Error::from_errno(errno, "eventfd for a message ring");
  return fd;
}

namespace {
thread_local std::uint64_t spun_in_vain = 0;
}  // namespace

void count_spin_in_vain(std::uint64_t budget_ns) {
  spun_in_vain += budget_ns;
}

std::uint64_t spin_in_vain_ns() {
  return spun_in_vain;
}

void spin_pause(unsigned& spins) {
  if (++spins % 64 == 0) {
    ::sched_yield();
  } else {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

std::uint64_t spin_ns() {
  static const std::uint64_t ns = [] {
    const char* text = std::getenv("SHEAF_MSG_SPIN_US");
    if (text == nullptr || *text == '\0') return std::uint64_t{20000};
    return static_cast<std::uint64_t>(std::strtoull(text, nullptr, 10)) * 1000;
  }();
  return ns;
}

}  // namespace sheaf::msg
