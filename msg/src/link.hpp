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
#include <vector>

#include "frame.hpp"
#include "ring.hpp"

namespace sheaf::posix {
enum class Op;
}  // namespace sheaf::posix

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
  // kNotFound for a Unix socket that is not there, kSystem otherwise. A TCP
  // peer that is not on loopback is authenticated first (auth.hpp), with the
  // shared secret in `secret_file` (empty: where load_secret looks).
  static Link connect(const std::string& address, Deadline deadline,
                      const std::string& secret_file = {});
  explicit Link(Socket socket, std::string peer);
  Link(Link&&) noexcept = default;
  Link& operator=(Link&&) noexcept = default;
  ~Link();

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
  // The longest payload the peer may send from now on (kLinkMaxPayload at first).
  void limit_payload(std::uint32_t bytes) { reader_.limit(bytes); }

  int fd() { return socket_.native_handle(); }
  bool is_unix() const { return unix_; }

  // --- Shared-memory rings (ring.hpp), for a Unix socket ---------------------
  // Client: makes the rings and sends `header` (a hello) with their
  // descriptors; every frame after it goes through the rings.
  void offer_rings(FrameHeader header, std::span<const std::byte> payload, Deadline deadline);
  // Owner: takes the rings the hello came with (their descriptors were
  // received beside it). Throws Error(kCorrupted) if they are not rings.
  void accept_rings();
  bool has_rings() const { return ring_.has_value(); }
  // The descriptor that becomes readable when ring data (or room) arrives;
  // -1 without rings.
  int wake_fd() const { return ring_ ? ring_->self_wake() : -1; }
  // Without rings the socket is read as usual. With them, the socket
  // carries nothing more: it becoming readable means the peer closed it.
  bool peer_closed();
  // Server side, before sleeping in poll(): false if ring data arrived
  // meanwhile. finish_sleep() after poll().
  bool prepare_sleep() {
    if (!ring_) return true;
    sleeping_ = ring_->prepare_to_sleep_reading();
    return sleeping_;
  }
  void finish_sleep();
  bool ring_readable() const { return ring_ && ring_->readable(); }
  // Part of a frame has arrived, not all of it. (The rest comes at once:
  // a wait for it says nothing about how long the peer takes.)
  bool mid_frame() const { return reader_.buffered() > 0; }
  // The peer's credentials (Unix sockets); uid -1 for TCP.
  ucred peer_credentials();
  void close();

 private:
  Socket socket_;
  // Test hook (posix::inject_fault): an injected error ends the connection.
  void break_if_injected(posix::Op op);
  bool read_socket();  // read_available() without rings
  // One frame's bytes on the socket, with `fds` (SCM_RIGHTS) if any.
  void send_socket(std::span<const std::byte> head, std::span<const std::byte> payload,
                   std::span<const int> fds, Deadline deadline);
  void send_ring(std::span<const std::byte> bytes, Deadline deadline);
  // Waits for ring data, spinning first; false at the deadline.
  bool wait_ring_readable(Deadline deadline);
  void close_received_fds();

  std::string peer_;  // for messages: the address it was reached at
  bool unix_ = false;
  FrameReader reader_{kLinkMaxPayload};
  std::optional<RingEnd> ring_;
  SpinBudget read_spin_;           // waits for ring data (a reply, a message)
  SpinBudget write_spin_;          // waits for room in a full ring
  std::vector<int> received_fds_;  // descriptors that came with socket data
  bool sleeping_ = false;          // prepare_sleep() announced a sleep
};

}  // namespace sheaf::msg
