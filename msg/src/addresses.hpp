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

// Where a listener listens: "HOST:PORT" with HOST an IP address. Throws
// Error(kInvalidArgument) naming `who` otherwise. One that is not loopback
// needs a shared secret (auth.hpp).
asio::ip::tcp::endpoint listen_endpoint(const std::string& host_port, const std::string& who);

// What makes two processes one host for the message layer: the same kernel
// boot and the same network namespace ("BOOT/NETNS_INODE", the boot id as
// posix::boot_id() folds it). A channel's
// Unix socket is used only by clients of its own host; others use its TCP
// address, even where they could open the socket's path (a process of
// another host with the same pid would own the same path there).
const std::string& host_identity();

// $XDG_RUNTIME_DIR/sheaf, else /tmp/sheaf-UID; created 0700 if missing;
// throws Error(kBusy) if it belongs to another user or others may enter it.
std::string runtime_dir();

// For the sockets of channels that let group `gid` in
// (ChannelOptions::allow_group): /tmp/sheaf-UID-gGID, created 0750 with
// that group if missing (the user must be in it, unless root); throws
// Error(kBusy) if it is not this user's and that group's, or if the group
// may write to it or others may enter it. (Not under $XDG_RUNTIME_DIR,
// which is closed to everyone else.)
std::string group_runtime_dir(gid_t gid);

// Removes from `dir` the channel sockets (c-PID-N.sock) that owners killed
// with SIGKILL left behind: those whose process is gone and on which nobody
// listens (a connect is refused; a process of another pid namespace that
// shares the directory still answers on its own). Once per directory and
// process, at its first channel there; returns how many it removed.
std::size_t sweep_dead_sockets(const std::string& dir);

}  // namespace sheaf::msg
