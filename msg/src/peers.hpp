// peers.hpp: who is at the other end of a connection on this host. Internal.
//
// A Unix socket says (SO_PEERCRED). A TCP connection over loopback does
// not, but the kernel knows the uid that owns the other end's socket and
// tells it through its socket diagnostics (NETLINK_SOCK_DIAG, inet_diag),
// as `ss -e` shows it.
#pragma once

#include <sys/types.h>

#include <optional>

namespace sheaf::msg {

// The uid owning the socket at the other end of the connected TCP socket
// `fd`, which must come from this host (loopback); nullopt if the kernel
// does not say: no inet_diag, or no live socket there any more (its
// process closed it: such a socket has no owner the kernel reports).
std::optional<uid_t> loopback_peer_uid(int fd);

// Whether user `uid` is in group `gid`: its own group or one of its others
// (the group database, getgrouplist).
bool user_in_group(uid_t uid, gid_t gid);

// Whether process `pid` (a peer, from SO_PEERCRED) has `gid` among its
// supplementary groups (/proc/PID/status).
bool process_in_group(pid_t pid, gid_t gid);

}  // namespace sheaf::msg
