// peers.cpp: a loopback TCP peer's uid from the kernel's socket
// diagnostics, and group membership of peers.
#include "peers.hpp"

#include <arpa/inet.h>
#include <grp.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "posix.hpp"

namespace sheaf::msg {

std::optional<uid_t> loopback_peer_uid(int fd) {
  sockaddr_storage ours{}, theirs{};
  socklen_t ours_length = sizeof(ours), theirs_length = sizeof(theirs);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ours), &ours_length) != 0 ||
      ::getpeername(fd, reinterpret_cast<sockaddr*>(&theirs), &theirs_length) != 0 ||
      ours.ss_family != theirs.ss_family) {
    return std::nullopt;
  }
  // One exact lookup: the other end's socket, whose source is their address
  // and whose destination is ours.
  struct {
    nlmsghdr header;
    inet_diag_req_v2 request;
  } query{};
  query.header.nlmsg_len = sizeof(query);
  query.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  query.header.nlmsg_flags = NLM_F_REQUEST;
  query.request.sdiag_family = static_cast<std::uint8_t>(ours.ss_family);
  query.request.sdiag_protocol = IPPROTO_TCP;
  query.request.idiag_states = ~0u;
  query.request.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  query.request.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  // (Ports and addresses stay in network byte order, as the kernel wants them.)
  const auto ends = [&](auto their_port, const auto& their_address, auto our_port,
                        const auto& our_address) {
    query.request.id.idiag_sport = their_port;
    query.request.id.idiag_dport = our_port;
    std::memcpy(query.request.id.idiag_src, &their_address, sizeof(their_address));
    std::memcpy(query.request.id.idiag_dst, &our_address, sizeof(our_address));
  };
  if (ours.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(theirs);
    const auto& b = reinterpret_cast<const sockaddr_in&>(ours);
    ends(a.sin_port, a.sin_addr, b.sin_port, b.sin_addr);
  } else if (ours.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(theirs);
    const auto& b = reinterpret_cast<const sockaddr_in6&>(ours);
    ends(a.sin6_port, a.sin6_addr, b.sin6_port, b.sin6_addr);
  } else {
    return std::nullopt;
  }
  const posix::Fd diag(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!diag.valid()) return std::nullopt;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(diag.get(), &query, sizeof(query), 0, reinterpret_cast<const sockaddr*>(&kernel),
               sizeof(kernel)) != static_cast<ssize_t>(sizeof(query))) {
    return std::nullopt;
  }
  alignas(nlmsghdr) std::array<char, 8192> answer;
  const timeval patience{1, 0};  // the kernel answers at once; never hang on it
  ::setsockopt(diag.get(), SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof(patience));
  const ssize_t got = ::recv(diag.get(), answer.data(), answer.size(), 0);
  if (got <= 0) return std::nullopt;
  // One answer: the socket's inet_diag_msg, or NLMSG_ERROR (no such socket).
  const auto* h = reinterpret_cast<const nlmsghdr*>(answer.data());
  const auto size = static_cast<std::size_t>(got);
  if (size < sizeof(nlmsghdr) || h->nlmsg_len > size || h->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
      h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) {
    return std::nullopt;
  }
  // Only a live socket says who owns it, and only the one asked for: a
  // socket its process closed (time-wait, orphaned) has no inode and
  // reports uid 0, and a lookup that finds no connection may answer with a
  // listening socket on the same address.
  const auto* found = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
  const inet_diag_sockid& asked = query.request.id;
  if (found->idiag_inode == 0 || found->idiag_state == TCP_LISTEN ||
      found->idiag_state == TCP_TIME_WAIT || found->id.idiag_sport != asked.idiag_sport ||
      found->id.idiag_dport != asked.idiag_dport ||
      std::memcmp(found->id.idiag_src, asked.idiag_src, sizeof(asked.idiag_src)) != 0 ||
      std::memcmp(found->id.idiag_dst, asked.idiag_dst, sizeof(asked.idiag_dst)) != 0) {
    return std::nullopt;
  }
  return static_cast<uid_t>(found->idiag_uid);
}

bool user_in_group(uid_t uid, gid_t gid) {
  passwd entry{}, *found = nullptr;
  std::vector<char> buffer(16384);
  if (::getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found) != 0 || found == nullptr) {
    return false;
  }
  if (entry.pw_gid == gid) return true;
  std::vector<gid_t> groups(64);
  for (int tries = 0; tries < 4; ++tries) {
    int count = static_cast<int>(groups.size());
    if (::getgrouplist(entry.pw_name, entry.pw_gid, groups.data(), &count) >= 0) {
      return std::find(groups.begin(), groups.begin() + count, gid) != groups.begin() + count;
    }
    groups.resize(static_cast<std::size_t>(count) + 16);
  }
  return false;
}

bool process_in_group(pid_t pid, gid_t gid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Groups:", 0) != 0) continue;
    std::istringstream groups(line.substr(7));
    for (long long group = 0; groups >> group;) {
      if (group == static_cast<long long>(gid)) return true;
    }
    return false;
  }
  return false;
}

}  // namespace sheaf::msg
