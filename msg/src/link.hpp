// link.hpp: one connected stream socket (Unix or TCP) that carries frames.
// Internal.
//
// Asio opens, binds, listens, accepts, resolves and connects (addresses.cpp,
// and the manager's server is all Asio). The data path of a Link is plain
// poll/recv/sendmsg on the descriptor Asio owns: every call here has a
// deadline, which Asio's synchronous operations do not offer, and a round
// trip must not pay for a reactor. Sends never raise SIGPIPE (MSG_NOSIGNAL).
#pragma once

#include <sys/socket.h>

#include <asio/generic/stream_protocol.hpp>
#include <asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "frame.hpp"

namespace sheaf::msg {

using Deadline = std::chrono::steady_clock::time_point;
// A deadline `timeout` from now; a negative timeout never passes.
Deadline deadline_after(std::chrono::milliseconds timeout);
// Milliseconds left for poll(): -1 for a deadline that never passes, 0 if passed.
int poll_millis(Deadline deadline);

// The io_context that owns the sockets used synchronously (it is never run).
asio::io_context& socket_context();

// Payloads this layer accepts from a peer (kMaxPayloadBytes, 1 GiB).
inline constexpr std::uint32_t kLinkMaxPayload = kMaxPayloadBytes;

class Link {
 public:
  using Socket = asio::generic::stream_protocol::socket;

  // "unix:PATH" or "tcp:HOST:PORT". Throws kTimedOut past the deadline,
  // kNotFound for a Unix socket that is not there, kSystem otherwise.
  static Link connect(const std::string& address, Deadline deadline);
  explicit Link(Socket socket, std::string peer);
  Link(Link&&) noexcept = default;
  Link& operator=(Link&&) noexcept = default;

  // Writes one frame whole, waiting (up to the deadline) while the socket's
  // buffer is full. Throws kSystem (EPIPE, ECONNRESET) if the peer is gone.
  void send(FrameHeader header, std::span<const std::byte> payload, Deadline deadline);
  // The next frame, or nullopt at the deadline. Throws kSystem (ECONNRESET)
  // when the peer closed, kCorrupted for a frame that breaks the format.
  std::optional<Frame> receive(Deadline deadline);
  // Reads what has arrived without waiting. False: the peer closed.
  bool read_available();
  // A whole frame read already, if any (after read_available()).
  std::optional<Frame> next_frame() { return reader_.next(); }

  int fd() { return socket_.native_handle(); }
  const std::string& peer() const { return peer_; }
  bool is_unix() const { return unix_; }
  // The peer's credentials (Unix sockets); uid -1 for TCP.
  ucred peer_credentials();
  void close();

 private:
  Socket socket_;
  std::string peer_;  // for messages: the address it was reached at
  bool unix_ = false;
  FrameReader reader_{kLinkMaxPayload};
};

}  // namespace sheaf::msg
