// mount.cpp: mounting and unmounting a store (sheaf/mount.hpp).
#include "sheaf/mount.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "store_fs.hpp"

namespace sheaf {
namespace {

using fs::StoreFs;

constexpr const char* kFsType = "fuse.sheaf";

// libfuse's option syntax: commas separate options, a backslash escapes.
std::string escape_option(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == ',' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// The path as /proc/self/mountinfo spells a mount point: absolute, without
// a trailing slash, symbolic links resolved in its parent (the mount point
// itself is not resolved: a dead mount answers ENOTCONN).
std::string absolute(const std::string& path) {
  std::filesystem::path p = std::filesystem::absolute(path).lexically_normal();
  if (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::canonical(p.parent_path(), ec);
  if (!ec && p.has_filename()) p = parent / p.filename();
  return p.string();
}

// The "major:minor" device of the Sheaf filesystem mounted at `mountpoint`,
// from /proc/self/mountinfo (fields: id parent MAJOR:MINOR root MOUNTPOINT
// options ... - TYPE ...); nothing if no Sheaf filesystem is mounted there.
std::optional<std::string> sheaf_mount_device(const std::string& mountpoint) {
  std::ifstream in("/proc/self/mountinfo");
  std::optional<std::string> found;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string id, parent, device, root, point;
    fields >> id >> parent >> device >> root >> point;
    std::string word;
    while (fields >> word && word != "-") {
    }
    std::string type;
    fields >> type;
    // mountinfo writes space, tab, newline and backslash as \ooo.
    std::string unescaped;
    for (std::size_t i = 0; i < point.size(); ++i) {
      if (point[i] == '\\' && i + 3 < point.size()) {
        unescaped += static_cast<char>(std::stoi(point.substr(i + 1, 3), nullptr, 8));
        i += 3;
      } else {
        unescaped += point[i];
      }
    }
    // The last one wins: it is on top when mounts are stacked.
    if (unescaped == mountpoint) found = type == kFsType ? std::optional(device) : std::nullopt;
  }
  return found;
}

// Sequential reads through FUSE arrive in requests no larger than the
// readahead window; 128 KiB (the kernel's default) makes them four times
// dearer than needed. Root may widen it; for others it stays as it is.
void widen_readahead(const std::string& mountpoint) {
  const std::optional<std::string> device = sheaf_mount_device(mountpoint);
  if (!device) return;
  std::ofstream("/sys/class/bdi/" + *device + "/read_ahead_kb") << "4096\n";
}

// SIGINT, SIGTERM and SIGHUP stop a server that owns its process. The
// handler only writes to a pipe; a thread of the server reads it and stops
// in an order that cannot hang: first the listing watcher (its kernel calls
// may wait for a lookup that only a serving thread can answer), then it
// detaches the mount, and the serving threads end when the kernel closes the
// session (at once, or when the last open file is closed).
int g_signal_pipe[2] = {-1, -1};
constexpr char kStopServing = 's';
constexpr char kServingEnded = 'e';

extern "C" void on_stop_signal(int) {
  const int saved = errno;
  const char byte = kStopServing;
  [[maybe_unused]] const ssize_t ignored = ::write(g_signal_pipe[1], &byte, 1);  // never blocks
  errno = saved;
}

bool catch_signals() {
  if (g_signal_pipe[0] < 0) {
    if (::pipe2(g_signal_pipe, O_CLOEXEC) != 0) return false;
    ::fcntl(g_signal_pipe[1], F_SETFL, O_NONBLOCK);
  }
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    if (::sigaction(sig, &action, nullptr) != 0) return false;
  }
  ::signal(SIGPIPE, SIG_IGN);
  return true;
}

void restore_signals() {
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::signal(sig, SIG_DFL);
}

// A daemon keeps nothing its caller had open (a make jobserver's pipes, a
// terminal, a lock) but standard input, output and error and `keep`.
void close_inherited_descriptors(std::initializer_list<int> keep) {
  std::vector<int> open;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(dir)) {
      if (e->d_name[0] != '.') open.push_back(std::atoi(e->d_name));
    }
    ::closedir(dir);  // its own descriptor is in the list, closed already: harmless
  }
  for (int fd : open) {
    if (fd > 2 && std::find(keep.begin(), keep.end(), fd) == keep.end()) ::close(fd);
  }
}

// A FUSE session on the store (libfuse's fuse_session and our StoreFs), mounted at
// `mountpoint` and not yet serving. (Not a heap's Session, which is a slot in its header.)
struct FuseSession {
  std::unique_ptr<StoreFs> fs;
  fuse_session* session = nullptr;
  std::string mountpoint;
  bool handles_signals = false;

  FuseSession() = default;
  FuseSession(const FuseSession&) = delete;
  FuseSession& operator=(const FuseSession&) = delete;
  ~FuseSession() {
    if (fs) fs->stop_watching();
    if (session) {
      if (handles_signals) restore_signals();
      fuse_session_destroy(session);
    }
  }
};

// Handles SIGINT, SIGTERM and SIGHUP by leaving the serving loop (which then
// unmounts); installed before mounting, so that no signal can leave a mount
// without its server behind. Only for mounts that own the process.
enum class Signals { kLeaveAlone, kHandle };

Result<std::unique_ptr<FuseSession>> mount_session(const std::string& store_dir,
                                                   const std::string& mountpoint,
                                                   const MountOptions& options, Signals signals) {
  try {
    // Absolute: a daemon serves from "/".
    Store store = Store::open(absolute(store_dir)).value();
    struct stat st {};
    if (::stat(mountpoint.c_str(), &st) != 0) {
      return Error::from_errno(errno, "mount point " + mountpoint);
    }
    if (!S_ISDIR(st.st_mode)) {
      return Error(Errc::kInvalidArgument, "mount point " + mountpoint + ": not a directory",
                   ENOTDIR);
    }
    std::error_code ec;
    if (!std::filesystem::is_empty(mountpoint, ec) || ec) {
      // Mounting would hide its files, which is never what was meant.
      return Error(Errc::kInvalidArgument, "mount point " + mountpoint + ": not empty", ENOTEMPTY);
    }
    auto result = std::make_unique<FuseSession>();
    result->mountpoint = absolute(mountpoint);
    result->fs = std::make_unique<StoreFs>(std::move(store), options);

    // default_permissions: the kernel checks modes and owners as on any
    // filesystem; fsname: `mount` and /proc/mounts name the store.
    std::string mount_options =
        "default_permissions,subtype=sheaf,fsname=" + escape_option(absolute(store_dir));
    if (options.read_only) mount_options += ",ro";
    const char* argv[] = {"sheaf", "-o", mount_options.c_str()};
    fuse_args args = FUSE_ARGS_INIT(3, const_cast<char**>(argv));
    result->session = fuse_session_new(&args, &StoreFs::operations(), sizeof(fuse_lowlevel_ops),
                                       result->fs.get());
    if (!result->session) {
      return Error(Errc::kSystem, "mount " + mountpoint + ": cannot start a FUSE session");
    }
    if (signals == Signals::kHandle) {
      if (!catch_signals()) {
        return Error::from_errno(errno, "mount " + mountpoint + ": cannot install signal handlers");
      }
      result->handles_signals = true;
    }
    if (fuse_session_mount(result->session, result->mountpoint.c_str()) != 0) {
      return Error(Errc::kSystem, "mount " + mountpoint +
                                      ": the kernel refused the mount (is /dev/fuse there, "
                                      "and is the directory empty and not mounted already?)");
    }
    widen_readahead(result->mountpoint);
    return result;
  } catch (const Error& e) {
    return e;
  }
}

// Serves requests until the filesystem is unmounted or fuse_session_exit.
// Serves requests until the kernel ends the session (an unmount).
int serve(FuseSession& s, const MountOptions& options) {
  s.fs->start_watching(s.session);
  std::thread stopper;
  if (s.handles_signals) {
    stopper = std::thread([&s] {
      char byte = 0;
      while (::read(g_signal_pipe[0], &byte, 1) < 0 && errno == EINTR) {
      }
      if (byte != kStopServing) return;
      s.fs->stop_watching();
      if (::umount2(s.mountpoint.c_str(), MNT_DETACH) != 0) {
        fuse_session_unmount(s.session);  // not root: through fusermount3 -u -z
      }
    });
  }
  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(config, options.max_threads);
  fuse_loop_cfg_set_idle_threads(config, std::min(options.max_threads, 4u));
  const int rc = fuse_session_loop_mt(s.session, config);
  fuse_loop_cfg_destroy(config);
  if (stopper.joinable()) {
    const char byte = kServingEnded;
    [[maybe_unused]] const ssize_t ignored = ::write(g_signal_pipe[1], &byte, 1);
    stopper.join();
  }
  s.fs->stop_watching();
  return rc;
}

}  // namespace

Result<void> serve_mount(const std::string& store, const std::string& mountpoint,
                         const MountOptions& options, bool daemonize) {
  Result<std::unique_ptr<FuseSession>> mounted =
      mount_session(store, mountpoint, options, Signals::kHandle);
  if (!mounted) return mounted.error();
  FuseSession& s = *mounted.value();
  if (daemonize) {
    // The mount is up already (requests wait in the kernel), so the parent
    // can report success and go; the child serves. Nothing but this thread
    // runs yet, so fork is safe, and heaps are opened in the child only.
    const pid_t child = ::fork();
    if (child < 0) {
      fuse_session_unmount(s.session);
      return Error::from_errno(errno, "mount " + mountpoint + ": fork");
    }
    if (child > 0) return {};  // ~FuseSession closes the parent's copy of the device
    ::setsid();
    if (::chdir("/") != 0) _exit(1);
    const int null = ::open("/dev/null", O_RDWR);
    if (null >= 0) {
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(null, 2);
      if (null > 2) ::close(null);
    }
    close_inherited_descriptors({fuse_session_fd(s.session), g_signal_pipe[0], g_signal_pipe[1]});
    s.fs->log_to_syslog(true);
  }
  const int rc = serve(s, options);
  fuse_session_unmount(s.session);
  if (daemonize) {
    mounted.value().reset();
    _exit(rc == 0 ? 0 : 1);
  }
  if (rc != 0) return Error(Errc::kSystem, "mount " + mountpoint + ": serving stopped on an error");
  return {};
}

Result<void> unmount(const std::string& mountpoint, bool lazy) {
  const std::string point = absolute(mountpoint);
  if (!sheaf_mount_device(point)) {
    return Error(Errc::kNotFound, mountpoint + ": not a Sheaf mount", EINVAL);
  }
  if (::umount2(point.c_str(), lazy ? MNT_DETACH : 0) == 0) return {};
  const int error = errno;
  if (error == EBUSY) {
    return Error(Errc::kBusy,
                 mountpoint +
                     ": busy: files under it are open (unmount --lazy detaches it now "
                     "and finishes when they are closed)",
                 EBUSY);
  }
  if (error != EPERM) return Error::from_errno(error, "unmount " + mountpoint);
  // Not root: fusermount3 is setuid and unmounts what this user mounted.
  // Its message (on standard error) says why it failed.
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return Error::from_errno(errno, "unmount " + mountpoint);
  const pid_t child = ::fork();
  if (child == 0) {
    ::dup2(out[1], 2);
    if (lazy) {
      ::execlp("fusermount3", "fusermount3", "-u", "-z", "--", point.c_str(), nullptr);
    } else {
      ::execlp("fusermount3", "fusermount3", "-u", "--", point.c_str(), nullptr);
    }
    _exit(127);
  }
  ::close(out[1]);
  std::string message;
  char chunk[256];
  for (ssize_t n; (n = ::read(out[0], chunk, sizeof chunk)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    message.append(chunk, static_cast<std::size_t>(n));
  }
  ::close(out[0]);
  int status = 0;
  if (child < 0 || ::waitpid(child, &status, 0) != child) {
    return Error::from_errno(errno, "unmount " + mountpoint + ": fusermount3");
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
  while (!message.empty() && message.back() == '\n') message.pop_back();
  if (message.find("busy") != std::string::npos) {
    return Error(Errc::kBusy,
                 mountpoint +
                     ": busy: files under it are open (unmount --lazy detaches it now "
                     "and finishes when they are closed)",
                 EBUSY);
  }
  return Error(Errc::kSystem,
               "unmount " + mountpoint + ": " + (message.empty() ? "fusermount3 failed" : message),
               EPERM);
}

// --- Mount: served by threads of this process ----------------------------------------

struct Mount::Impl {
  std::unique_ptr<FuseSession> session;
  MountOptions options;
  std::thread server;
  bool stopped = false;
};

Mount::Mount(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Mount::Mount(Mount&&) noexcept = default;
Mount& Mount::operator=(Mount&&) noexcept = default;

Mount::~Mount() {
  if (impl_ && !impl_->stopped) (void)stop(/*lazy=*/true);
}

Result<Mount> Mount::start(const std::string& store, const std::string& mountpoint,
                           const MountOptions& options) {
  Result<std::unique_ptr<FuseSession>> mounted =
      mount_session(store, mountpoint, options, Signals::kLeaveAlone);
  if (!mounted) return mounted.error();
  auto impl = std::make_unique<Impl>();
  impl->session = std::move(mounted.value());
  impl->options = options;
  FuseSession* s = impl->session.get();
  impl->server = std::thread([s, options] { serve(*s, options); });
  return Mount(std::move(impl));
}

const std::string& Mount::mountpoint() const noexcept {
  return impl_->session->mountpoint;
}

Result<void> Mount::stop(bool lazy) {
  if (!impl_ || impl_->stopped) return {};
  // Unmounting ends the kernel's side of the session; the serving threads
  // then read ENODEV and return. A lazy unmount ends it once the last open
  // file is closed.
  if (::umount2(impl_->session->mountpoint.c_str(), lazy ? MNT_DETACH : 0) != 0) {
    const int error = errno;
    if (error == EBUSY) {
      return Error(Errc::kBusy, impl_->session->mountpoint + ": busy: files under it are open",
                   EBUSY);
    }
    if (error != EINVAL) {  // EINVAL: unmounted already, by someone else
      fuse_session_unmount(impl_->session->session);
    }
  }
  impl_->server.join();
  impl_->stopped = true;
  impl_->session.reset();
  return {};
}

}  // namespace sheaf
