#include "addresses.hpp"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "posix.hpp"
#include "sheaf/error.hpp"
#include "sheaf/msg.hpp"

namespace sheaf::msg {

Address parse_host_port(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
    throw Error(Errc::kInvalidArgument, "address '" + text + "': expected HOST:PORT");
  }
  Address address;
  address.kind = Address::kTcp;
  address.host = text.substr(0, colon);
  if (address.host.size() > 2 && address.host.front() == '[' && address.host.back() == ']') {
    address.host = address.host.substr(1, address.host.size() - 2);
  }
  const char* first = text.data() + colon + 1;
  const char* last = text.data() + text.size();
  unsigned port = 0;
  const auto [end, error] = std::from_chars(first, last, port);
  if (error != std::errc() || end != last || port > 65535) {
    throw Error(Errc::kInvalidArgument,
                "address '" + text + "': port '" + std::string(first, last) + "' is not 0-65535");
  }
  address.port = static_cast<std::uint16_t>(port);
  return address;
}

Address parse_address(const std::string& text) {
  if (text.starts_with("unix:")) {
    Address address;
    address.path = text.substr(5);
    if (address.path.empty() || address.path.size() >= 108) {  // sun_path
      throw Error(Errc::kInvalidArgument, "address '" + text + "': bad socket path");
    }
    return address;
  }
  if (text.starts_with("tcp:")) return parse_host_port(text.substr(4));
  throw Error(Errc::kInvalidArgument,
              "address '" + text + "': expected unix:PATH or tcp:HOST:PORT");
}

std::vector<std::string> split_addresses(const std::string& list) {
  std::vector<std::string> out;
  std::istringstream in(list);
  for (std::string word; in >> word;) out.push_back(word);
  return out;
}

asio::ip::tcp::endpoint listen_endpoint(const std::string& host_port, const std::string& who) {
  const Address where = parse_host_port(host_port);
  asio::error_code ec;
  const auto host = asio::ip::make_address(where.host, ec);
  if (ec) {
    throw Error(Errc::kInvalidArgument, who + ": '" + where.host + "' is not an IP address");
  }
  return {host, where.port};
}

const std::string& host_identity() {
  static const std::string identity = [] {
    struct stat st {};
    const auto netns = ::stat("/proc/self/ns/net", &st) == 0 ? st.st_ino : 0;
    return std::to_string(posix::boot_id()) + "/" + std::to_string(netns);
  }();
  return identity;
}

std::string runtime_dir() {
  const uid_t uid = ::getuid();
  std::string dir;
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg == '/') {
    dir = std::string(xdg) + "/sheaf";
  } else {
    dir = "/tmp/sheaf-" + std::to_string(uid);
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    throw Error::from_errno(errno, "runtime directory " + dir);
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) throw Error::from_errno(errno, "runtime directory " + dir);
  if (!S_ISDIR(st.st_mode) || st.st_uid != uid || (st.st_mode & 077) != 0) {
    throw Error(Errc::kBusy, "runtime directory " + dir +
                                 " is not a directory of this user closed to others (0700); "
                                 "refusing to put sockets there");
  }
  return dir;
}

std::string group_runtime_dir(gid_t gid) {
  const uid_t uid = ::getuid();
  const std::string dir = "/tmp/sheaf-" + std::to_string(uid) + "-g" + std::to_string(gid);
  if (::mkdir(dir.c_str(), 0700) == 0) {
    // Closed while it is set up: the group and its rights come after.
    if (::chown(dir.c_str(), static_cast<uid_t>(-1), gid) != 0 || ::chmod(dir.c_str(), 0750) != 0) {
      const int error = errno;
      ::rmdir(dir.c_str());
      throw Error::from_errno(error, "directory " + dir + " for group " + std::to_string(gid));
    }
  } else if (errno != EEXIST) {
    throw Error::from_errno(errno, "directory " + dir);
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) throw Error::from_errno(errno, "directory " + dir);
  if (!S_ISDIR(st.st_mode) || st.st_uid != uid || st.st_gid != gid || (st.st_mode & 027) != 0) {
    throw Error(Errc::kBusy, "directory " + dir + " is not a directory of this user and group " +
                                 std::to_string(gid) +
                                 " closed to others (0750); refusing to put sockets there");
  }
  // Ours, and no more open than 0750: open it that far (a process that died
  // between its mkdir and its chmod left it 0700).
  if ((st.st_mode & 0750) != 0750 && ::chmod(dir.c_str(), 0750) != 0) {
    throw Error::from_errno(errno, "directory " + dir);
  }
  return dir;
}

std::string manager_address(const std::string& explicit_address) {
  if (!explicit_address.empty()) return explicit_address;
  if (const char* env = std::getenv("SHEAF_MANAGER"); env != nullptr && *env != '\0') return env;
  std::ifstream config(kManagerConfigFile);
  std::string line;
  if (config && std::getline(config, line)) {
    const auto first = line.find_first_not_of(" \t");
    const auto last = line.find_last_not_of(" \t\r");
    if (first != std::string::npos) return line.substr(first, last - first + 1);
  }
  return "127.0.0.1:" + std::to_string(kDefaultManagerPort);
}

namespace {

// The pid in a channel socket's name ("c-PID-N.sock"), or -1.
pid_t owner_pid_of(const std::string& file) {
  if (file.size() < 8 || file.compare(0, 2, "c-") != 0 ||
      file.compare(file.size() - 5, 5, ".sock") != 0) {
    return -1;
  }
  pid_t pid = -1;
  const auto [end, ec] = std::from_chars(file.data() + 2, file.data() + file.size(), pid);
  return ec == std::errc() && *end == '-' && pid > 0 ? pid : -1;
}

// Whether anyone listens on the Unix socket at `path` (without blocking:
// a full backlog counts as listening).
bool someone_listens(const std::string& path) {
  sockaddr_un address{};
  if (path.size() >= sizeof(address.sun_path)) return true;  // cannot tell: keep it
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return true;
  const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address));
  const int error = rc == 0 ? 0 : errno;
  ::close(fd);
  return error != ECONNREFUSED && error != ENOENT;
}

}  // namespace

std::size_t sweep_dead_sockets(const std::string& dir) {
  static std::mutex mutex;
  static std::map<std::string, pid_t> swept_by;  // (a forked child sweeps anew)
  {
    std::lock_guard lock(mutex);
    pid_t& by = swept_by[dir];
    if (by == ::getpid()) return 0;
    by = ::getpid();
  }
  std::size_t removed = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string file = it->path().filename().string();
    const pid_t pid = owner_pid_of(file);
    if (pid < 0 || pid == ::getpid()) continue;
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to ask)
    const std::string path = it->path().string();
    if (!someone_listens(path) && ::unlink(path.c_str()) == 0) ++removed;
  }
  return removed;
}

}  // namespace sheaf::msg
