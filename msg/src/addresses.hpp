// addresses.hpp: where things listen. Internal.
//
// An address is "unix:PATH" or "tcp:HOST:PORT" (a channel may list both,
// space separated); the manager's is "HOST:PORT". Sockets of this user live
// in runtime_dir(), made 0700 and refused if someone else owns it.
#pragma once

#include <asio/ip/tcp.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace sheaf::msg {

struct Address {
  enum Kind { kUnix, kTcp } kind = kUnix;
  std::string path;  // kUnix
  std::string host;  // kTcp
  std::uint16_t port = 0;
};

// Throws Error(kInvalidArgument) naming what is wrong.
Address parse_address(const std::string& text);
// "HOST:PORT" (an IPv6 host in brackets); throws kInvalidArgument.
Address parse_host_port(const std::string& text);
std::vector<std::string> split_addresses(const std::string& list);

// Where a listener may listen: "HOST:PORT" with HOST a loopback address
// (127.0.0.0/8, ::1). Throws Error(kInvalidArgument) naming `who` for any
// other: a listener other hosts can reach needs authentication, which this
// version does not have yet (docs/msg.md, "Security").
asio::ip::tcp::endpoint loopback_endpoint(const std::string& host_port, const std::string& who);

// $XDG_RUNTIME_DIR/sheaf, else /tmp/sheaf-UID; created 0700 if missing;
// throws Error(kBusy) if it belongs to another user or others may enter it.
std::string runtime_dir();

}  // namespace sheaf::msg
