#include "link.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <cerrno>

#include "addresses.hpp"
#include "auth.hpp"
#include "posix.hpp"
#include "sheaf/error.hpp"

namespace sheaf::msg {

Deadline deadline_after(std::chrono::milliseconds timeout) {
  if (timeout.count() < 0) return Deadline::max();
  return std::chrono::steady_clock::now() + timeout;
}

int poll_millis(Deadline deadline) {
  if (deadline == Deadline::max()) return -1;
  const auto left = deadline - std::chrono::steady_clock::now();
  if (left <= std::chrono::steady_clock::duration::zero()) return 0;
  // Rounded up, so that a wait never ends just short of its deadline.
  const auto millis = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return millis > 1'000'000'000 ? 1'000'000'000 : static_cast<int>(millis);
}

asio::io_context& socket_context() {
  static asio::io_context context;
  return context;
}

namespace {

// Waits until fd is ready for `events`; false at the deadline. EINTR is
// retried: a signal handler of the program must not fail our calls.
bool wait_for(int fd, short events, Deadline deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, poll_millis(deadline));
    if (n > 0) return true;
    if (n == 0) {
      if (deadline != Deadline::max() && std::chrono::steady_clock::now() >= deadline) return false;
      continue;
    }
    if (errno != EINTR) throw Error::from_errno(errno, "poll");
  }
}

void set_non_blocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    throw Error::from_errno(errno, "fcntl O_NONBLOCK");
  }
}

[[noreturn]] void throw_peer_gone(const std::string& peer, int error) {
  throw Error(
      Errc::kSystem,
      "connection to " + peer + ": the peer is gone (" + std::string(std::strerror(error)) + ")",
      error);
}

}  // namespace

Link::Link(Socket socket, std::string peer) : socket_(std::move(socket)), peer_(std::move(peer)) {
  set_non_blocking(fd());
  unix_ = socket_.local_endpoint().protocol().family() == AF_UNIX;
  if (!unix_) {
    const int one = 1;
    ::setsockopt(fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // frames are whole already
  }
}

Link Link::connect(const std::string& address, Deadline deadline, const std::string& secret_file) {
  const Address where = parse_address(address);
  Socket socket(socket_context());
  asio::generic::stream_protocol::endpoint endpoint;
  bool other_host = false;  // a TCP peer not on loopback: authenticated (auth.hpp)
  if (where.kind == Address::kUnix) {
    endpoint = asio::local::stream_protocol::endpoint(where.path);
  } else {
    asio::ip::tcp::resolver resolver(socket_context());
    asio::error_code ec;
    auto results = resolver.resolve(where.host, std::to_string(where.port), ec);
    if (ec || results.empty()) {
      throw Error(Errc::kNotFound, "cannot resolve host '" + where.host + "': " + ec.message());
    }
    endpoint = results.begin()->endpoint();
    other_host = !is_loopback(results.begin()->endpoint().address());
  }
  asio::error_code ec;
  socket.open(endpoint.protocol(), ec);
  if (ec) throw Error(Errc::kSystem, "socket for " + address + ": " + ec.message(), ec.value());
  set_non_blocking(socket.native_handle());
  for (;;) {
    if (::connect(socket.native_handle(), endpoint.data(),
                  static_cast<socklen_t>(endpoint.size())) == 0) {
      break;
    }
    if (errno == EINTR) continue;
    if (errno != EINPROGRESS) {
      throw Error::from_errno(errno, "connect to " + address);
    }
    if (!wait_for(socket.native_handle(), POLLOUT, deadline)) {
      throw Error(Errc::kTimedOut, "connect to " + address + ": timed out", ETIMEDOUT);
    }
    int error = 0;
    socklen_t length = sizeof(error);
    ::getsockopt(socket.native_handle(), SOL_SOCKET, SO_ERROR, &error, &length);
    if (error != 0) throw Error::from_errno(error, "connect to " + address);
    break;
  }
  Link link(std::move(socket), address);
  if (other_host) {
    const Secret secret = load_secret(secret_file, "connect to " + address + " (another host)");
    authenticate_to(link, secret, address, deadline);
  }
  return link;
}

Link::~Link() {
  close_received_fds();
}

void Link::close_received_fds() {
  for (const int fd : received_fds_) ::close(fd);
  received_fds_.clear();
}

void Link::break_if_injected(posix::Op op) {
  if (const int error = posix::injected(op); error != 0) {
    ::shutdown(fd(), SHUT_RDWR);  // the peer sees the connection end, as after a reset
    throw_peer_gone(peer_, error);
  }
}

void Link::send(FrameHeader header, std::span<const std::byte> payload, Deadline deadline) {
  break_if_injected(posix::Op::kSocketSend);
  header.payload_bytes = static_cast<std::uint32_t>(payload.size());
  const auto head = encode_header(header);
  if (ring_) {
    send_ring(head, deadline);
    send_ring(payload, deadline);
    return;
  }
  send_socket(head, payload, {}, deadline);
}

void Link::send_socket(std::span<const std::byte> head, std::span<const std::byte> payload,
                       std::span<const int> fds, Deadline deadline) {
  std::array<iovec, 2> parts{iovec{const_cast<std::byte*>(head.data()), head.size()},
                             iovec{const_cast<std::byte*>(payload.data()), payload.size()}};
  // The descriptors go with the first byte sent (SCM_RIGHTS).
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))] = {};
  const bool with_fds = !fds.empty();
  if (fds.size() > 4) throw Error(Errc::kInvalidArgument, "sending more than 4 descriptors");
  std::size_t first = 0;  // the first part not sent whole
  bool fds_sent = !with_fds;
  while (first < parts.size()) {
    msghdr message{};
    message.msg_iov = parts.data() + first;
    message.msg_iovlen = parts.size() - first;
    if (!fds_sent) {
      message.msg_control = control;
      message.msg_controllen = CMSG_SPACE(fds.size_bytes());
      cmsghdr* c = CMSG_FIRSTHDR(&message);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(fds.size_bytes());
      std::memcpy(CMSG_DATA(c), fds.data(), fds.size_bytes());
    }
    const ssize_t n = ::sendmsg(fd(), &message, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        if (!wait_for(fd(), POLLOUT, deadline)) {
          throw Error(Errc::kTimedOut,
                      "sending to " + peer_ + ": timed out (the peer reads no more)", ETIMEDOUT);
        }
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET) throw_peer_gone(peer_, errno);
      throw Error::from_errno(errno, "sending to " + peer_);
    }
    fds_sent = true;
    auto sent = static_cast<std::size_t>(n);
    while (first < parts.size() && sent >= parts[first].iov_len) {
      sent -= parts[first].iov_len;
      ++first;
    }
    if (first < parts.size()) {
      parts[first].iov_base = static_cast<char*>(parts[first].iov_base) + sent;
      parts[first].iov_len -= sent;
    }
  }
}

bool Link::read_available() {
  if (ring_) {
    ring_->read_into(reader_);
    return true;  // the socket says whether the peer is gone (peer_closed)
  }
  return read_socket();
}

bool Link::read_socket() {
  std::array<std::byte, 64 * 1024> buffer;
  // Room for the descriptors a hello may bring (rings: a memfd, two eventfds).
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
  for (;;) {
    iovec part{buffer.data(), buffer.size()};
    msghdr message{};
    message.msg_iov = &part;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof(control);
    const ssize_t n = ::recvmsg(fd(), &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n >= 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&message); c != nullptr; c = CMSG_NXTHDR(&message, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
          int received = -1;
          std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          if (received_fds_.size() < 8) {
            received_fds_.push_back(received);
          } else {
            ::close(received);  // more than any frame brings: not kept
          }
        }
      }
    }
    if (n > 0) {
      reader_.feed(std::span(buffer.data(), static_cast<std::size_t>(n)));
      if (static_cast<std::size_t>(n) < buffer.size()) return true;
      continue;
    }
    if (n == 0) return false;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return true;
    if (errno == ECONNRESET) return false;
    throw Error::from_errno(errno, "reading from " + peer_);
  }
}

bool Link::peer_closed() {
  char byte = 0;
  const ssize_t n = ::recv(fd(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

void Link::offer_rings(FrameHeader header, std::span<const std::byte> payload, Deadline deadline) {
  RingPair rings = RingPair::create();
  const int mine = make_wake_fd();
  int theirs = -1;
  try {
    theirs = make_wake_fd();
  } catch (...) {
    ::close(mine);
    throw;
  }
  RingEnd end(std::move(rings), /*write_direction=*/0, mine, theirs);
  header.payload_bytes = static_cast<std::uint32_t>(payload.size());
  // The owner's end: the segment, its own eventfd, then ours.
  const int fds[3] = {end.rings().fd(), theirs, mine};
  send_socket(encode_header(header), payload, fds, deadline);
  ring_.emplace(std::move(end));
}

void Link::accept_rings() {
  if (received_fds_.size() != 3) {
    close_received_fds();
    throw Error(Errc::kCorrupted, "a hello offering rings came without their three descriptors",
                EPROTO);
  }
  const int segment = received_fds_[0];
  const int mine = received_fds_[1];
  const int theirs = received_fds_[2];
  received_fds_.clear();
  RingPair rings = [&] {
    try {
      return RingPair::adopt(segment);
    } catch (...) {
      ::close(mine);
      ::close(theirs);
      throw;
    }
  }();
  ring_.emplace(std::move(rings), /*write_direction=*/1, mine, theirs);
}

void Link::finish_sleep() {
  if (!ring_ || !sleeping_) return;
  sleeping_ = false;
  ring_->done_sleeping_reading();
  ring_->drain_wake();
}

void Link::send_ring(std::span<const std::byte> bytes, Deadline deadline) {
  while (!bytes.empty()) {
    const std::size_t n = ring_->write_some(bytes);
    bytes = bytes.subspan(n);
    if (!bytes.empty() && n == 0) {
      // Full: spin a little, then sleep until the reader makes room.
      if (write_spin_.spin([&] { return ring_->writable(); }, true)) continue;
      if (ring_->prepare_to_sleep_writing()) {
        pollfd fds[2] = {{ring_->self_wake(), POLLIN, 0}, {fd(), POLLIN, 0}};
        const int ready = ::poll(fds, 2, poll_millis(deadline));
        ring_->done_sleeping_writing();
        ring_->drain_wake();
        if (ready < 0 && errno != EINTR) throw Error::from_errno(errno, "poll");
        // With rings the peer writes nothing more on the socket but a
        // refusal before it closes: read it, and stop at the close.
        if (fds[1].revents != 0 && !read_socket()) throw_peer_gone(peer_, ECONNRESET);
        if (ring_->writable()) write_spin_.slept_until_ready();
        if (ready == 0 && deadline != Deadline::max() &&
            std::chrono::steady_clock::now() >= deadline) {
          throw Error(Errc::kTimedOut,
                      "sending to " + peer_ + ": timed out (the peer reads no more)", ETIMEDOUT);
        }
      }
    }
  }
}

bool Link::wait_ring_readable(Deadline deadline) {
  // (A frame's rest comes at once: such a wait does not count; mid_frame().)
  if (read_spin_.spin([&] { return ring_->readable(); }, !mid_frame())) return true;
  const auto data_came = [&] {
    read_spin_.slept_until_ready();
    return true;
  };
  for (;;) {
    if (!ring_->prepare_to_sleep_reading()) return data_came();
    pollfd fds[2] = {{ring_->self_wake(), POLLIN, 0}, {fd(), POLLIN, 0}};
    const int ready = ::poll(fds, 2, poll_millis(deadline));
    ring_->done_sleeping_reading();
    ring_->drain_wake();
    if (ready < 0 && errno != EINTR) throw Error::from_errno(errno, "poll");
    if (ring_->readable()) return data_came();
    if (fds[1].revents != 0) {  // a refusal, or the close
      const std::size_t before = reader_.buffered();
      const bool open = read_socket();
      if (reader_.buffered() > before) return true;
      if (!open) throw_peer_gone(peer_, ECONNRESET);
    }
    if (deadline != Deadline::max() && std::chrono::steady_clock::now() >= deadline) return false;
  }
}

std::optional<Frame> Link::receive(Deadline deadline) {
  break_if_injected(posix::Op::kSocketReceive);
  for (;;) {
    if (auto frame = reader_.next()) return frame;
    if (ring_) {
      if (ring_->read_into(reader_) > 0) continue;
      if (!wait_ring_readable(deadline)) return std::nullopt;
      continue;
    }
    if (!wait_for(fd(), POLLIN, deadline)) return std::nullopt;
    if (!read_available()) {
      if (auto frame = reader_.next()) return frame;  // what came before the close
      throw_peer_gone(peer_, ECONNRESET);
    }
  }
}

ucred Link::peer_credentials() {
  ucred credentials{0, static_cast<uid_t>(-1), static_cast<gid_t>(-1)};
  if (!is_unix()) return credentials;
  socklen_t length = sizeof(credentials);
  if (::getsockopt(fd(), SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) {
    throw Error::from_errno(errno, "SO_PEERCRED of " + peer_);
  }
  return credentials;
}

void Link::close() {
  asio::error_code ignored;
  socket_.close(ignored);
}

}  // namespace sheaf::msg
