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
  throw Error(Errc::kSystem, "connection to " + peer + ": the peer is gone (" +
                                 std::string(std::strerror(error)) + ")",
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

Link Link::connect(const std::string& address, Deadline deadline) {
  const Address where = parse_address(address);
  Socket socket(socket_context());
  asio::generic::stream_protocol::endpoint endpoint;
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
  }
  asio::error_code ec;
  socket.open(endpoint.protocol(), ec);
  if (ec) throw Error(Errc::kSystem, "socket for " + address + ": " + ec.message(), ec.value());
  set_non_blocking(socket.native_handle());
  for (;;) {
    if (::connect(socket.native_handle(), endpoint.data(), static_cast<socklen_t>(endpoint.size())) ==
        0) {
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
  return Link(std::move(socket), address);
}

void Link::send(FrameHeader header, std::span<const std::byte> payload, Deadline deadline) {
  header.payload_bytes = static_cast<std::uint32_t>(payload.size());
  const auto head = encode_header(header);
  std::array<iovec, 2> parts{iovec{const_cast<std::byte*>(head.data()), head.size()},
                             iovec{const_cast<std::byte*>(payload.data()), payload.size()}};
  std::size_t first = 0;  // the first part not sent whole
  while (first < parts.size()) {
    msghdr message{};
    message.msg_iov = parts.data() + first;
    message.msg_iovlen = parts.size() - first;
    const ssize_t n = ::sendmsg(fd(), &message, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        if (!wait_for(fd(), POLLOUT, deadline)) {
          throw Error(Errc::kTimedOut, "sending to " + peer_ + ": timed out (the peer reads no more)",
                      ETIMEDOUT);
        }
        continue;
      }
      if (errno == EPIPE || errno == ECONNRESET) throw_peer_gone(peer_, errno);
      throw Error::from_errno(errno, "sending to " + peer_);
    }
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
  std::array<std::byte, 64 * 1024> buffer;
  for (;;) {
    const ssize_t n = ::recv(fd(), buffer.data(), buffer.size(), MSG_DONTWAIT);
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

std::optional<Frame> Link::receive(Deadline deadline) {
  for (;;) {
    if (auto frame = reader_.next()) return frame;
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
