// fs_test.cpp: the FUSE view of a store (sheaf/mount.hpp), tested through
// real mounts: served by threads of this process (sheaf::Mount) or by the
// sheaf command (`sheaf mount`), and driven by real processes (coreutils, dd,
// find, grep, od, hexdump, getfattr, the sheaf command) and by system calls.
//
// What each group checks:
//  - the tree, object and info bytes, bag xattrs: what a shell user sees;
//  - freshness: a change made by another process shows on the next listing
//    or read, and listing attributes are kept no longer than listing_ttl;
//  - bag writes: a bag appears whole on close, never while being written, and
//    never from a writer killed before closing; a full disk leaves the store as
//    it was;
//  - what cannot be honoured fails with the errno the contract names and
//    changes nothing (EPERM, EFBIG, ESPIPE, EXDEV, EINVAL, EROFS, ENOSPC);
//  - robustness: readers killed mid-read, many readers at once, a heap
//    growing under readers, unmounting while files are open;
//  - the `sheaf mount` / `sheaf umount` commands.
//
// Shell commands run in child processes (posix_spawn of /bin/sh): this process
// serves the mount, so it never blocks on the mount itself while holding a
// lock its serving threads could need. Every file this process opens is
// O_CLOEXEC, so spawned commands never keep a mount file open; even so, exec
// closing its copy is a flush the mount sees, so no test spawns a command
// while it has a bag open for writing, except the one that tests just that.
// A watchdog aborts a test's FUSE connections if the test hangs (FsTest).
//
// The full-disk test and the foreign-mount case of `sheaf umount` mount a
// tmpfs and need root; they skip otherwise. Without /dev/fuse every test skips.
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <random>
#include <regex>
#include <set>
#include <span>
#include <sstream>
#include <thread>

#include "../heap_test_util.hpp"
#include "sheaf/heap.hpp"
#include "sheaf/mount.hpp"
#include "sheaf/store.hpp"

#ifndef SHEAF_CLI_PATH
#error "SHEAF_CLI_PATH must name the sheaf binary (tests/CMakeLists.txt defines it)"
#endif

extern char** environ;

namespace sheaf::testing {

using namespace std::chrono_literals;

constexpr const char* kSheaf = SHEAF_CLI_PATH;
constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * 1024;

// --- Bytes and files -------------------------------------------------------------

// n pseudo-random bytes (NULs included), the same for the same seed.
inline std::string random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::string bytes(n, '\0');
  for (std::size_t i = 0; i < n; i += 4) {
    const std::uint32_t word = rng();
    std::memcpy(bytes.data() + i, &word, std::min<std::size_t>(4, n - i));
  }
  return bytes;
}

inline std::span<const std::byte> as_bytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

inline std::string to_string(std::span<const std::byte> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// The whole file as a string ("" if it cannot be read).
inline std::string file_string(const std::string& path) {
  const std::vector<char> bytes = read_file(path);
  return std::string(bytes.begin(), bytes.end());
}

inline void write_string(const std::string& path, const std::string& bytes) {
  write_file(path, std::vector<char>(bytes.begin(), bytes.end()));
}

// For failure messages about long or binary strings: the size and where two
// strings first differ, instead of megabytes of bytes.
inline std::string first_difference(const std::string& got, const std::string& want) {
  if (got == want) return "equal";
  const auto [a, b] = std::mismatch(got.begin(), got.end(), want.begin(), want.end());
  return "got " + std::to_string(got.size()) + " bytes, want " + std::to_string(want.size()) +
         "; first difference at byte " + std::to_string(a - got.begin());
}

// Single-quoted for /bin/sh.
inline std::string q(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// The names in a directory (of the real filesystem), sorted.
inline std::vector<std::string> dir_names(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

inline std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += name + "\n";
  return out;
}

// --- File descriptors and errors ---------------------------------------------

// A file descriptor closed when it goes out of scope, so that a failed
// assertion never leaves a file open on the mount (which would keep it busy).
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  bool ok() const { return fd_ >= 0; }
  // close()'s own result: for a bag, close is where the write is committed,
  // so its error matters.
  int close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// 0 if a system call returning -1 on failure succeeded, else its errno; for
// EXPECT_EQ(error_of(::mkdir(...)), EPERM).
inline int error_of(long rc) {
  return rc == -1 ? errno : 0;
}

// Opens and closes path; 0 if the open succeeded, else its errno.
inline int open_error(const std::string& path, int flags, mode_t mode = 0644) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return errno;
  ::close(fd);
  return 0;
}

// Writes everything unless a write fails; returns the bytes written, with
// errno from the failing write when that is fewer than asked.
inline std::size_t write_all(int fd, const char* data, std::size_t size) {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

inline bool read_byte(int fd, char* c) {
  for (;;) {
    const ssize_t n = ::read(fd, c, 1);
    if (n < 0 && errno == EINTR) continue;
    return n == 1;
  }
}

// --- Extended attributes -------------------------------------------------------

struct Xattr {
  std::string value;
  int error = 0;  // errno of getxattr; 0 when value is set
};

inline Xattr get_xattr(const std::string& path, const std::string& name) {
  std::vector<char> buffer(64 * kKiB);
  const ssize_t n = ::getxattr(path.c_str(), name.c_str(), buffer.data(), buffer.size());
  if (n < 0) return {"", errno};
  return {std::string(buffer.data(), static_cast<std::size_t>(n)), 0};
}

inline std::vector<std::string> list_xattrs(const std::string& path) {
  std::vector<char> buffer(64 * kKiB);
  const ssize_t n = ::listxattr(path.c_str(), buffer.data(), buffer.size());
  std::vector<std::string> names;
  if (n <= 0) return names;
  for (std::size_t i = 0; i < static_cast<std::size_t>(n);) {
    const std::string name(buffer.data() + i);
    names.push_back(name);
    i += name.size() + 1;
  }
  std::sort(names.begin(), names.end());
  return names;
}

// --- Mounts --------------------------------------------------------------------

// The filesystem type mounted at exactly `path` in this mount namespace (the
// topmost one), or nothing when path is not a mount point.
inline std::optional<std::string> mount_type(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::optional<std::string> type;
  for (std::string line; std::getline(in, line);) {
    // id parent major:minor root MOUNTPOINT options... - TYPE source super-options
    std::istringstream fields(line);
    std::string id, parent, device, root, mountpoint;
    fields >> id >> parent >> device >> root >> mountpoint;
    if (mountpoint != path) continue;
    const auto dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::istringstream rest(line.substr(dash + 3));
    std::string fstype;
    rest >> fstype;
    type = fstype;  // later lines are mounted on top of earlier ones
  }
  return type;
}

inline bool is_mounted(const std::string& path) {
  return mount_type(path).has_value();
}

// The connection numbers (minor device numbers, as fusectl names them) of the
// FUSE mounts at or under `dir`; from mountinfo, so without touching a mount
// that may hang.
inline std::vector<unsigned> fuse_connections_under(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::vector<unsigned> found;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string id, parent, device, root, mountpoint;
    fields >> id >> parent >> device >> root >> mountpoint;
    const auto dash = line.find(" - ");
    if (dash == std::string::npos || line.compare(dash + 3, 4, "fuse") != 0) continue;
    if (mountpoint != dir && mountpoint.rfind(dir + "/", 0) != 0) continue;
    const auto colon = device.find(':');
    if (colon != std::string::npos) found.push_back(std::stoul(device.substr(colon + 1)));
  }
  return found;
}

// Aborts a FUSE connection through fusectl: every request waiting on it fails
// at once. The last resort against a server that hangs, since a process cannot
// even exit while it waits on a mount it serves itself.
inline void abort_fuse_connection(unsigned connection) {
  const std::string dir = "/sys/fs/fuse/connections";
  const std::string abort_file = dir + "/" + std::to_string(connection) + "/abort";
  if (::access(abort_file.c_str(), W_OK) != 0) {
    ::mount("fusectl", dir.c_str(), "fusectl", 0, nullptr);  // where systemd would have it
  }
  std::ofstream(abort_file) << "1\n";
}

// Calls fire() (on its own thread) unless destroyed within `limit`.
class Watchdog {
 public:
  Watchdog(std::chrono::milliseconds limit, std::function<void()> fire)
      : thread_([this, limit, fire = std::move(fire)](std::stop_token stop) {
          std::unique_lock lock(mutex_);
          cv_.wait_for(lock, stop, limit, [] { return false; });
          if (!stop.stop_requested()) fire();
        }) {}

 private:
  std::mutex mutex_;
  std::condition_variable_any cv_;
  std::jthread thread_;  // last: started once the rest exists, joined before it goes
};

// Polls cond every 10 ms until it holds or `limit` passes; the last answer.
inline bool wait_until(const std::function<bool()>& cond,
                       std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (cond()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return cond();
    std::this_thread::sleep_for(10ms);
  }
}

// Processes named `comm` with `arg` among their command-line arguments:
// finds a daemon by the unique temporary path it was given. Only the
// cmdline of processes with that name is read: reading another process's
// cmdline can block while that process is stuck in exec.
inline std::vector<pid_t> processes_with_arg(const std::string& comm, const std::string& arg) {
  std::vector<pid_t> found;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", error)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (pid == ::getpid()) continue;
    if (file_string(entry.path().string() + "/comm") != comm + "\n") continue;
    const std::string cmdline = file_string(entry.path().string() + "/cmdline");
    for (std::size_t i = 0; i < cmdline.size();) {
      const std::string one(cmdline.c_str() + i);
      if (one == arg) {
        found.push_back(pid);
        break;
      }
      i += one.size() + 1;
    }
  }
  return found;
}

// --- Processes -------------------------------------------------------------------

inline int exit_code(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// What a shell command did.
struct ShellResult {
  int status = -1;  // exit status, 128 + signal; -1 if it could not run or was killed at the limit
  std::string out;
  std::string err;
  bool timed_out = false;
  // stdout or stderr were still open 2 s after the shell exited: some process
  // it started (a daemon) kept them.
  bool held_open = false;
};

inline std::ostream& operator<<(std::ostream& os, const ShellResult& r) {
  auto shorten = [](const std::string& s) {
    return s.size() <= 400 ? s : s.substr(0, 400) + "...(" + std::to_string(s.size()) + " bytes)";
  };
  os << "status " << r.status << (r.timed_out ? " (timed out)" : "")
     << (r.held_open ? " (output held open)" : "") << "\nstdout: " << shorten(r.out)
     << "\nstderr: " << shorten(r.err);
  return os;
}

// Runs `/bin/sh -c script` (in the C locale, stdin /dev/null), capturing its
// stdout and stderr. Killed at `limit`, so a hung mount fails the test instead
// of hanging it.
inline ShellResult sh(const std::string& script,
                      std::chrono::milliseconds limit = std::chrono::seconds(30)) {
  ShellResult result;
  Pipe out;
  Pipe err;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out.write_end(), 1);
  posix_spawn_file_actions_adddup2(&actions, err.write_end(), 2);
  std::string shell = "/bin/sh";
  std::string dash_c = "-c";
  std::string text = "export LC_ALL=C\n" + script;
  char* argv[] = {shell.data(), dash_c.data(), text.data(), nullptr};
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, "/bin/sh", &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  out.close_write();
  err.close_write();
  if (rc != 0) {
    result.err = std::string("posix_spawn: ") + std::strerror(rc);
    return result;
  }

  const auto deadline = std::chrono::steady_clock::now() + limit;
  std::optional<std::chrono::steady_clock::time_point> exited_at;
  int status = 0;
  bool out_open = true;
  bool err_open = true;
  char buffer[64 * 1024];
  for (;;) {
    if (!exited_at && ::waitpid(pid, &status, WNOHANG) == pid) {
      exited_at = std::chrono::steady_clock::now();
    }
    if (exited_at && !out_open && !err_open) break;
    const auto now = std::chrono::steady_clock::now();
    if (exited_at && now > *exited_at + 2s) {
      result.held_open = true;
      break;
    }
    if (!exited_at && now > deadline) {
      ::kill(pid, SIGKILL);
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      result.timed_out = true;
      return result;
    }
    pollfd fds[2];
    int* owners[2];
    nfds_t n = 0;
    if (out_open) {
      fds[n] = {out.read_end(), POLLIN, 0};
      owners[n++] = &out.fds[0];
    }
    if (err_open) {
      fds[n] = {err.read_end(), POLLIN, 0};
      owners[n++] = &err.fds[0];
    }
    if (n == 0) {
      std::this_thread::sleep_for(5ms);  // output closed; waiting for the exit
      continue;
    }
    if (::poll(fds, n, 10) <= 0) continue;
    for (nfds_t i = 0; i < n; ++i) {
      if (fds[i].revents == 0) continue;
      const ssize_t got = ::read(fds[i].fd, buffer, sizeof buffer);
      if (got < 0 && errno == EINTR) continue;
      const bool is_out = owners[i] == &out.fds[0];
      if (got <= 0) {
        (is_out ? out_open : err_open) = false;
      } else {
        (is_out ? result.out : result.err).append(buffer, static_cast<std::size_t>(got));
      }
    }
  }
  result.status = exit_code(status);
  return result;
}

// A command started in the background (stdin /dev/null, stdout and stderr
// appended to `log`); killed (SIGKILL) and reaped when it leaves scope still
// running, so a failing test leaves no process behind.
class Spawned {
 public:
  explicit Spawned(std::vector<std::string> argv, const std::string& log = "/dev/null")
      : argv_(std::move(argv)) {
    std::vector<char*> args;
    for (std::string& arg : argv_) args.push_back(arg.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    if (::posix_spawnp(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  Spawned(const Spawned&) = delete;
  Spawned& operator=(const Spawned&) = delete;
  ~Spawned() {
    kill(SIGKILL);
    wait();
  }
  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  void kill(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);  // never kill(-1, ...)
  }
  // 0..255 for an exit, 128 + signal for a death by one (0 if already reaped).
  int wait() {
    if (pid_ <= 0) return 0;
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return exit_code(status);
  }
  // The exit code if the process ends within `limit`; nothing if it is still running.
  std::optional<int> wait_for(std::chrono::milliseconds limit) {
    if (pid_ <= 0) return 0;
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return exit_code(status);
      }
      if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(10ms);
    }
  }

 private:
  std::vector<std::string> argv_;
  pid_t pid_ = -1;
};

// --- Heaps -------------------------------------------------------------------------

// A named object holding `bytes` (as an array of std::byte, like `sheaf heap put`).
inline void put_object(Heap& heap, const std::string& name, const std::string& bytes) {
  heap.construct_with<std::byte>(name, bytes.size(), [&](std::byte* first, std::size_t n) {
    if (n != 0) std::memcpy(first, bytes.data(), n);
  });
}

// An object's bytes, copied under the heap's lock.
inline std::string object_string(const Heap& heap, const std::string& name) {
  return heap.shared([&] { return to_string(heap.object_bytes(name)); });
}

}  // namespace sheaf::testing

namespace sheaf {
namespace {

using namespace testing;  // sheaf::testing

// Longer than any test takes; past it a test's mounts are aborted.
constexpr auto kTestLimit = std::chrono::seconds(60);

// Every test gets a store (STORE), an empty mount point (MP) and a way to
// mount one on the other. Whatever happens in the test, TearDown (and the
// destructor, if SetUp did not get that far) stops the mount, detaches every
// mount the test made, and only then are the directories removed: removing
// them through a live mount would delete the store's files through it.
//
// A watchdog aborts the test's FUSE connections if it runs past kTestLimit:
// a hung request then fails (and the test with it) instead of hanging the
// binary, whose exit would otherwise wait on its own mount forever.
class FsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "no usable /dev/fuse";
    ASSERT_FALSE(dir_.path().empty());
    watchdog_.emplace(kTestLimit, [this] {
      ADD_FAILURE() << "the test ran for " << kTestLimit.count()
                    << " s: aborting its FUSE connections (a request hung)";
      abort_mounts();
    });
    store_dir_ = dir_ / "store";
    mp_ = dir_ / "mnt";
    ASSERT_EQ(::mkdir(mp_.c_str(), 0755), 0) << std::strerror(errno);
    auto store = Store::init(store_dir_);
    ASSERT_TRUE(store.ok()) << store.error().what();
    store_.emplace(std::move(store).value());
  }
  void TearDown() override { cleanup(); }
  ~FsTest() override { cleanup(); }

  void cleanup() noexcept {
    if (mount_) {
      (void)mount_->stop(/*lazy=*/true);
      mount_.reset();
    }
    if (!mp_.empty()) ::umount2(mp_.c_str(), MNT_DETACH);  // one `sheaf mount` made
    for (auto it = detach_.rbegin(); it != detach_.rend(); ++it) {
      ::umount2(it->c_str(), MNT_DETACH);
    }
    detach_.clear();
    watchdog_.reset();
  }

  // Notes the FUSE connections of the mounts under the test's directory, so
  // that abort_mounts() finds them even once they are detached.
  void remember_connections() {
    std::lock_guard lock(connections_mutex_);
    for (unsigned c : fuse_connections_under(dir_.path())) connections_.insert(c);
  }

  // Aborts every FUSE connection the test made (see abort_fuse_connection).
  void abort_mounts() {
    remember_connections();
    std::lock_guard lock(connections_mutex_);
    for (unsigned c : connections_) abort_fuse_connection(c);
  }

  // Mounts `store` (default: the test's store) at MP, served by this
  // process's threads; throws (failing the test) if it cannot.
  void start_mount(const MountOptions& options = {}, const std::string& store = "") {
    auto mount = Mount::start(store.empty() ? store_dir_ : store, mp_, options);
    if (!mount.ok()) throw mount.error();
    mount_.emplace(std::move(mount).value());
    remember_connections();
  }

  Heap make_heap(const std::string& name, std::uint64_t initial_size = 8 * kMiB) {
    CreateOptions options;
    options.initial_size = initial_size;
    return Heap::create(store_->heap_path(name), options).value();
  }

  // A tmpfs of `size` on dir_/name, detached in cleanup however the test ends.
  std::string mount_tmpfs(const std::string& name, const std::string& size) {
    const std::string dir = dir_ / name;
    std::filesystem::create_directories(dir);
    const std::string options = "size=" + size + ",mode=0755";
    if (::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) != 0) {
      throw std::runtime_error("mount tmpfs on " + dir + ": " + std::strerror(errno));
    }
    detach_.push_back(dir);
    return dir;
  }

  std::string heap_dir(const std::string& heap) const { return mp_ + "/heaps/" + heap; }
  std::string objects_dir(const std::string& heap) const { return heap_dir(heap) + "/objects"; }
  std::string obj(const std::string& heap, const std::string& name) const {
    return objects_dir(heap) + "/" + name;
  }
  std::string bags_dir() const { return mp_ + "/bags"; }
  std::string bag(const std::string& name) const { return bags_dir() + "/" + name; }
  std::string sheaf_cmd(const std::string& args) const { return q(kSheaf) + " " + args; }
  // The name the kernel gives a sheaf process (/proc/PID/comm): at most 15 bytes.
  static std::string sheaf_comm() {
    return std::filesystem::path(kSheaf).filename().string().substr(0, 15);
  }

  // The payload of a bag in the store, opened (so both checksums verified)
  // through the library; nothing if it is missing or fails to verify.
  std::optional<std::string> bag_payload(const std::string& name, const Store* store = nullptr) {
    auto opened = (store ? *store : *store_).open_bag(name);
    if (!opened.ok()) return std::nullopt;
    return to_string(opened.value().bytes());
  }

  // Whether the store has a bag `name` that opens (both checksums verified)
  // and holds exactly `want`; says how it differs otherwise.
  ::testing::AssertionResult bag_holds(const std::string& name, const std::string& want,
                                       const Store* store = nullptr) {
    auto opened = (store ? *store : *store_).open_bag(name);
    if (!opened.ok()) {
      return ::testing::AssertionFailure() << "bag " << name << ": " << opened.error().what();
    }
    const std::string got = to_string(opened.value().bytes());
    if (got != want) {
      return ::testing::AssertionFailure() << "bag " << name << ": " << first_difference(got, want);
    }
    return ::testing::AssertionSuccess();
  }

  std::vector<std::string> tmp_entries(const std::string& store = "") const {
    return dir_names((store.empty() ? store_dir_ : store) + "/tmp");
  }

  // Writes bag "x" in two halves, `meanwhile` between them (defined with the
  // tests that use it).
  void write_bag_around(const std::string& what, const std::function<void()>& meanwhile);

  TempDir dir_;
  std::string store_dir_;
  std::string mp_;
  std::optional<Store> store_;
  std::optional<Mount> mount_;
  std::vector<std::string> detach_;
  std::mutex connections_mutex_;
  std::set<unsigned> connections_;
  std::optional<Watchdog> watchdog_;  // last: destroyed first, before what it uses
};

// --- The tree --------------------------------------------------------------------

TEST_F(FsTest, TreeShowsHeapsObjectsInfoFilesAndBagsWithTheirSizes) {
  Heap h = make_heap("h");
  Heap g = make_heap("g");
  put_object(h, "alpha", random_bytes(1000, 1));
  h.construct<std::uint32_t>("numbers")[1000](7u);  // an array: size = 4 * 1000
  put_object(g, "only", "x");
  store_->put_bag("b1", as_bytes("hello bag"));
  store_->put_bag("b2", as_bytes(random_bytes(70000, 2)), BagWriteOptions::of<float>());
  start_mount();

  EXPECT_EQ(sh("ls " + q(mp_)).out, "bags\nheaps\n");
  EXPECT_EQ(sh("ls " + q(mp_ + "/heaps")).out, "g\nh\n");
  EXPECT_EQ(sh("ls " + q(heap_dir("h"))).out, "info\ninfo.json\nobjects\n");
  EXPECT_EQ(sh("ls " + q(objects_dir("h"))).out, "alpha\nnumbers\n");
  EXPECT_EQ(sh("ls " + q(objects_dir("g"))).out, "only\n");
  EXPECT_EQ(sh("ls " + q(bags_dir())).out, "b1\nb2\n");

  // st_size is the object's size (element size * count) and the bag's payload size.
  EXPECT_EQ(sh("stat -c '%F %s' " + q(obj("h", "alpha"))).out, "regular file 1000\n");
  EXPECT_EQ(sh("stat -c '%F %s' " + q(obj("h", "numbers"))).out, "regular file 4000\n");
  EXPECT_EQ(sh("stat -c '%F %s' " + q(obj("g", "only"))).out, "regular file 1\n");
  EXPECT_EQ(sh("stat -c '%F %s' " + q(bag("b1"))).out, "regular file 9\n");
  EXPECT_EQ(sh("stat -c '%F %s' " + q(bag("b2"))).out, "regular file 70000\n");
  EXPECT_EQ(sh("stat -c %F " + q(objects_dir("h"))).out, "directory\n");
  EXPECT_EQ(sh("stat -c %F " + q(bags_dir())).out, "directory\n");
  // `ls -l` agrees with stat (the sizes that come with a listing).
  const ShellResult ls = sh("ls -l " + q(objects_dir("h")) + " | awk 'NF > 2 {print $5, $9}'");
  EXPECT_EQ(ls.out, "1000 alpha\n4000 numbers\n") << ls;

  // Names that are not there are not there.
  EXPECT_EQ(error_of(::access(obj("h", "missing").c_str(), F_OK)), ENOENT);
  EXPECT_EQ(error_of(::access(bag("missing").c_str(), F_OK)), ENOENT);
  EXPECT_EQ(error_of(::access((mp_ + "/heaps/nope").c_str(), F_OK)), ENOENT);
}

TEST_F(FsTest, ObjectBytesReadWithCatDdOdHexdumpAndGrep) {
  Heap h = make_heap("h");
  const std::string blob = random_bytes(100000, 3);
  put_object(h, "blob", blob);
  std::string text;
  for (int i = 0; i < 50; ++i) {
    text += (i % 5 == 0 ? "a line with the needle " : "a plain line ") + std::to_string(i) + "\n";
  }
  put_object(h, "text", text);
  start_mount();

  const std::string path = obj("h", "blob");
  const std::string expected = object_string(h, "blob");
  ASSERT_EQ(expected, blob);
  const ShellResult cat = sh("cat " + q(path));
  EXPECT_EQ(cat.status, 0) << cat;
  EXPECT_TRUE(cat.out == expected) << first_difference(cat.out, expected);
  EXPECT_EQ(sh("wc -c < " + q(path)).out, "100000\n");

  // Reads at an offset (dd skip) return those bytes, not the file's start.
  const ShellResult dd = sh("dd if=" + q(path) + " bs=1000 skip=37 count=10 2>/dev/null");
  EXPECT_EQ(dd.status, 0) << dd;
  EXPECT_TRUE(dd.out == expected.substr(37000, 10000))
      << first_difference(dd.out, expected.substr(37000, 10000));
  const ShellResult tail = sh("tail -c 5 " + q(path) + " | od -An -tx1");
  EXPECT_EQ(tail.status, 0) << tail;

  // od and hexdump of the mounted object print what they print for a plain
  // file holding Heap::object_bytes.
  const std::string copy = dir_ / "blob.copy";
  write_string(copy, expected);
  const ShellResult od = sh("od -An -v -tx1 " + q(path));
  EXPECT_EQ(od.status, 0) << od;
  EXPECT_TRUE(od.out == sh("od -An -v -tx1 " + q(copy)).out) << "od output differs";
  const ShellResult hexdump = sh("hexdump -C " + q(path) + " | sed 1000q");
  EXPECT_EQ(hexdump.status, 0) << hexdump;
  EXPECT_EQ(hexdump.out, sh("hexdump -C " + q(copy) + " | sed 1000q").out);
  EXPECT_EQ(tail.out, sh("tail -c 5 " + q(copy) + " | od -An -tx1").out);

  // grep finds the lines holding a known string.
  const ShellResult grep = sh("grep -c needle " + q(obj("h", "text")));
  EXPECT_EQ(grep.out, "10\n") << grep;
  EXPECT_EQ(sh("grep -c 'plain line' " + q(obj("h", "text"))).out, "40\n");
}

TEST_F(FsTest, InfoFilesAreHeapInfoAsTextAndJson) {
  Heap h = make_heap("h");
  put_object(h, "a", "1");
  put_object(h, "b", "2");
  start_mount();

  const HeapInfo info = h.info();
  const ShellResult json_text = sh("cat " + q(heap_dir("h") + "/info.json"));
  ASSERT_EQ(json_text.status, 0) << json_text;
  nlohmann::json json;
  ASSERT_NO_THROW(json = nlohmann::json::parse(json_text.out)) << json_text.out;
  for (const char* key : {"uuid", "size", "used", "objects", "generation", "sessions"}) {
    EXPECT_TRUE(json.contains(key)) << "info.json has no \"" << key << "\": " << json_text.out;
  }
  EXPECT_EQ(json.value("uuid", ""), info.uuid);
  EXPECT_EQ(json.value("objects", std::uint64_t{999}), 2u);
  EXPECT_EQ(json.value("size", std::uint64_t{0}), info.size);
  EXPECT_GE(json.value("sessions", std::uint64_t{0}), 1u);  // this test has the heap open

  const ShellResult text = sh("cat " + q(heap_dir("h") + "/info"));
  ASSERT_EQ(text.status, 0) << text;
  EXPECT_NE(text.out.find(info.uuid), std::string::npos) << text.out;
  EXPECT_TRUE(std::regex_search(text.out, std::regex("(^|\n)objects:[ \t]+2\n"))) << text.out;

  // Another process adds an object: the next read of either file says so.
  const std::string file = dir_ / "c.bin";
  write_string(file, "three");
  const ShellResult put = sh(sheaf_cmd("heap put " + q(store_dir_ + "/h") + " c " + q(file)));
  ASSERT_EQ(put.status, 0) << put;
  const ShellResult again = sh("cat " + q(heap_dir("h") + "/info.json"));
  ASSERT_NO_THROW(json = nlohmann::json::parse(again.out)) << again.out;
  EXPECT_EQ(json.value("objects", std::uint64_t{999}), 3u) << again.out;
  const ShellResult text_again = sh("cat " + q(heap_dir("h") + "/info"));
  EXPECT_TRUE(std::regex_search(text_again.out, std::regex("(^|\n)objects:[ \t]+3\n")))
      << text_again.out;
}

// --- Freshness -----------------------------------------------------------------

// With the default listing_ttl, and a listing of everything first: changes
// made by other processes (the sheaf command) and through the API still show
// on the very next listing or read of an object, and on the next lookup of a
// bag that no listing has just returned.
TEST_F(FsTest, ChangesByOtherProcessesShowOnTheNextListingOrRead) {
  Heap h = make_heap("h");
  put_object(h, "counter", "AAAAAAAA");
  put_object(h, "gone", "bye");
  const std::string v1 = random_bytes(5000, 10);
  const std::string v2 = random_bytes(9000, 11);
  store_->put_bag("b", as_bytes(v1));
  start_mount();

  EXPECT_EQ(sh("ls " + q(objects_dir("h"))).out, "counter\ngone\n");
  EXPECT_EQ(sh("ls -l " + q(objects_dir("h"))).status, 0);
  EXPECT_EQ(sh("cat " + q(obj("h", "counter"))).out, "AAAAAAAA");

  // A new object, put by another process.
  const std::string src = dir_ / "fresh.bin";
  write_string(src, "fresh bytes");
  const ShellResult put = sh(sheaf_cmd("heap put " + q(store_dir_ + "/h") + " fresh " + q(src)));
  ASSERT_EQ(put.status, 0) << put;
  EXPECT_EQ(sh("ls " + q(objects_dir("h"))).out, "counter\nfresh\ngone\n");
  EXPECT_EQ(sh("cat " + q(obj("h", "fresh"))).out, "fresh bytes");

  // An object destroyed through the API.
  ASSERT_TRUE(h.erase("gone"));
  EXPECT_EQ(sh("ls " + q(objects_dir("h"))).out, "counter\nfresh\n");

  // Bytes changed in place through the API (same size, so only the bytes
  // can tell): the next cat has them.
  h.exclusive([&] { std::memcpy(h.find_array<std::byte>("counter").data(), "BBBBBBBB", 8); });
  EXPECT_EQ(sh("cat " + q(obj("h", "counter"))).out, "BBBBBBBB");
  EXPECT_EQ(sh("od -An -c " + q(obj("h", "counter")) + " | tr -d ' \\n'").out, "BBBBBBBB");

  // A bag replaced by `sheaf bag put` (bags/ was not listed: the lookups
  // that stat and cat make are never cached).
  EXPECT_EQ(sh("stat -c %s " + q(bag("b"))).out, "5000\n");
  EXPECT_TRUE(sh("cat " + q(bag("b"))).out == v1);
  const std::string v2_file = dir_ / "v2.bin";
  write_string(v2_file, v2);
  const ShellResult bag_put = sh(sheaf_cmd("bag put " + q(store_dir_) + " b " + q(v2_file)));
  ASSERT_EQ(bag_put.status, 0) << bag_put;
  EXPECT_EQ(sh("stat -c %s " + q(bag("b"))).out, "9000\n");
  const ShellResult cat = sh("cat " + q(bag("b")));
  EXPECT_TRUE(cat.out == v2) << first_difference(cat.out, v2);
  EXPECT_EQ(sh("cmp " + q(v2_file) + " " + q(bag("b"))).status, 0);

  // A heap created by another process appears in heaps/.
  const ShellResult create = sh(sheaf_cmd("heap create " + q(store_dir_ + "/h2")));
  ASSERT_EQ(create.status, 0) << create;
  EXPECT_EQ(sh("ls " + q(mp_ + "/heaps")).out, "h\nh2\n");
  EXPECT_EQ(sh("ls " + q(objects_dir("h2"))).status, 0);
}

// With a listing_ttl far longer than the test, lookups that were not made by
// a listing must still ask the store every time: a removed object is gone at
// once, a new one is there at once (no negative caching), a replaced bag has
// its new size at once.
TEST_F(FsTest, LookupsOutsideListingsAreNeverCached) {
  Heap h = make_heap("h");
  put_object(h, "x", "xxxx");
  store_->put_bag("b", as_bytes(std::string(4096, 'a')));
  MountOptions options;
  options.listing_ttl = 60;
  start_mount(options);

  EXPECT_EQ(sh("stat -c %s " + q(obj("h", "x"))).out, "4\n");
  EXPECT_EQ(sh("stat -c %s " + q(bag("b"))).out, "4096\n");
  EXPECT_NE(sh("stat " + q(obj("h", "y"))).status, 0);

  const ShellResult rm = sh(sheaf_cmd("heap rm " + q(store_dir_ + "/h") + " x"));
  ASSERT_EQ(rm.status, 0) << rm;
  const std::string src = dir_ / "y.bin";
  write_string(src, "yy");
  const ShellResult put = sh(sheaf_cmd("heap put " + q(store_dir_ + "/h") + " y " + q(src)));
  ASSERT_EQ(put.status, 0) << put;
  const std::string bigger = dir_ / "bigger.bin";
  write_string(bigger, std::string(12288, 'c'));
  ASSERT_EQ(sh(sheaf_cmd("bag put " + q(store_dir_) + " b " + q(bigger))).status, 0);

  EXPECT_NE(sh("stat " + q(obj("h", "x"))).status, 0) << "a removed object is still found";
  EXPECT_EQ(error_of(::access(obj("h", "x").c_str(), F_OK)), ENOENT);
  EXPECT_EQ(sh("stat -c %s " + q(obj("h", "y"))).out, "2\n") << "a new object is not found";
  EXPECT_EQ(sh("cat " + q(obj("h", "y"))).out, "yy");
  EXPECT_EQ(sh("stat -c %s " + q(bag("b"))).out, "12288\n");
  EXPECT_EQ(sh("cmp " + q(bigger) + " " + q(bag("b"))).status, 0);
}

// What a listing returned may be reused for listing_ttl, no longer.
TEST_F(FsTest, ListingAttributesExpireAfterListingTtl) {
  Heap h = make_heap("h");
  put_object(h, "x", "xxxx");
  store_->put_bag("b", as_bytes(std::string(4096, 'a')));
  MountOptions options;
  options.listing_ttl = 0.3;
  start_mount(options);

  EXPECT_NE(sh("ls -l " + q(bags_dir())).out.find("4096"), std::string::npos);
  EXPECT_EQ(sh("ls -l " + q(objects_dir("h"))).status, 0);
  const std::string bigger = dir_ / "bigger.bin";
  write_string(bigger, std::string(12288, 'c'));
  ASSERT_EQ(sh(sheaf_cmd("bag put " + q(store_dir_) + " b " + q(bigger))).status, 0);
  ASSERT_EQ(sh(sheaf_cmd("heap rm " + q(store_dir_ + "/h") + " x")).status, 0);

  std::this_thread::sleep_for(600ms);  // twice the ttl
  EXPECT_EQ(sh("stat -c %s " + q(bag("b"))).out, "12288\n");
  EXPECT_EQ(sh("cmp " + q(bigger) + " " + q(bag("b"))).status, 0);
  EXPECT_NE(sh("stat " + q(obj("h", "x"))).status, 0);
  EXPECT_EQ(sh("ls " + q(objects_dir("h"))).out, "");
}

// A listing's attributes live for listing_ttl, but the watcher re-checks the
// listed directory and invalidates what changed long before that ends.
TEST_F(FsTest, ListedAttributesAreRefreshedSoonAfterAChange) {
  Heap h = make_heap("h");
  put_object(h, "x", "xxxx");
  store_->put_bag("b", as_bytes(std::string(4096, 'a')));
  MountOptions options;
  options.listing_ttl = 60;
  start_mount(options);
  ASSERT_EQ(sh("ls -l " + q(objects_dir("h")) + " " + q(bags_dir())).status, 0);
  ASSERT_EQ(sh("stat -c %s " + q(obj("h", "x"))).out, "4\n");

  // Replaced by another process, with another size.
  ASSERT_EQ(sh(sheaf_cmd("heap rm " + q(store_dir_ + "/h") + " x")).status, 0);
  const std::string src = dir_ / "x.bin";
  write_string(src, "a longer x");
  ASSERT_EQ(sh(sheaf_cmd("heap put " + q(store_dir_ + "/h") + " x " + q(src))).status, 0);
  const std::string bigger = dir_ / "bigger.bin";
  write_string(bigger, std::string(12288, 'c'));
  ASSERT_EQ(sh(sheaf_cmd("bag put " + q(store_dir_) + " b " + q(bigger))).status, 0);

  // Within a second (the watcher's period is 20 ms), not within 60.
  const auto deadline = std::chrono::steady_clock::now() + 1s;
  std::string object_size, bag_size;
  while (std::chrono::steady_clock::now() < deadline) {
    object_size = sh("stat -c %s " + q(obj("h", "x"))).out;
    bag_size = sh("stat -c %s " + q(bag("b"))).out;
    if (object_size == "10\n" && bag_size == "12288\n") break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(object_size, "10\n") << "a listed object's old size outlived its replacement";
  EXPECT_EQ(bag_size, "12288\n") << "a listed bag's old size outlived its replacement";
}

// Shells open the target, dup it onto standard output and close the first
// descriptor: only the last close by the writer publishes the bag.
TEST_F(FsTest, ShellRedirectionsIntoBagsPublishWhatWasWritten) {
  start_mount();
  EXPECT_EQ(sh("echo hi > " + q(bag("builtin"))).status, 0);
  EXPECT_EQ(sh("seq 3 > " + q(bag("program"))).status, 0);
  EXPECT_EQ(sh("exec 3>" + q(bag("kept")) + "; echo a >&3; echo b >&3; exec 3>&-").status, 0);
  EXPECT_EQ(sh("{ echo one; echo two; } > " + q(bag("group"))).status, 0);
  const std::map<std::string, std::string> want = {
      {"builtin", "hi\n"}, {"program", "1\n2\n3\n"}, {"kept", "a\nb\n"}, {"group", "one\ntwo\n"}};
  for (const auto& [name, bytes] : want) {
    Result<Bag> opened = store_->open_bag(name);  // verifies the checksum too
    ASSERT_TRUE(opened.ok()) << name << ": " << opened.error().what();
    EXPECT_EQ(to_string(opened.value().bytes()), bytes) << name;
  }
}

// Only the writer's own death abandons a bag: a helper it forked (and that
// inherited the descriptor) may be killed without losing the writer's work.
TEST_F(FsTest, AKilledHelperOfTheWriterDoesNotAbandonTheBag) {
  start_mount();
  const ShellResult run = sh("sh -c 'sleep 100 & echo hello; kill -9 $!; wait' > " + q(bag("k")));
  EXPECT_EQ(run.status, 0) << run;
  Result<Bag> opened = store_->open_bag("k");
  ASSERT_TRUE(opened.ok()) << opened.error().what();
  EXPECT_EQ(to_string(opened.value().bytes()), "hello\n");
}

// Rewriting a bag in place (O_TRUNC) shows the new bag's size from the start.
TEST_F(FsTest, ARewrittenBagShowsItsNewSizeWhileBeingWritten) {
  store_->put_bag("t", as_bytes(std::string(50000, 'o')));
  start_mount();
  const int fd = ::open(bag("t").c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  struct stat st {};
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 0) << "fstat shows the old bag's size";
  ASSERT_EQ(::write(fd, "hello", 5), 5);
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 5);
  ASSERT_EQ(::close(fd), 0);
  Result<Bag> opened = store_->open_bag("t");
  ASSERT_TRUE(opened.ok()) << opened.error().what();
  EXPECT_EQ(to_string(opened.value().bytes()), "hello");
}

// Object names may hold '/', '%' or be "."; file names cannot. See
// fs/src/object_names.hpp for the spelling.
TEST_F(FsTest, ObjectNamesAreEscapedAsFileNames) {
  Heap h = make_heap("h");
  put_object(h, "readings/1/42", "r");
  put_object(h, "100%", "p");
  put_object(h, ".", "d");
  MountOptions options;
  options.allow_object_removal = true;
  start_mount(options);

  EXPECT_EQ(sh("LC_ALL=C ls " + q(objects_dir("h"))).out, "%2E\n100%25\nreadings%2F1%2F42\n");
  EXPECT_EQ(sh("cat " + q(obj("h", "readings%2F1%2F42"))).out, "r");
  EXPECT_EQ(sh("cat " + q(obj("h", "100%25"))).out, "p");
  EXPECT_EQ(sh("cat " + q(obj("h", "%2E"))).out, "d");
  // One spelling per object: other spellings and broken escapes name nothing.
  EXPECT_EQ(error_of(::access(obj("h", "readings%2f1%2f42").c_str(), F_OK)), ENOENT);
  EXPECT_EQ(error_of(::access(obj("h", "100%").c_str(), F_OK)), ENOENT);
  EXPECT_EQ(error_of(::access(obj("h", "100%2").c_str(), F_OK)), ENOENT);

  ASSERT_EQ(sh("rm " + q(obj("h", "readings%2F1%2F42"))).status, 0);
  EXPECT_FALSE(h.object("readings/1/42").has_value());
  EXPECT_TRUE(h.object("100%").has_value());
}

// --- Bag attributes ---------------------------------------------------------------

TEST_F(FsTest, BagXattrsAreItsInfo) {
  std::vector<float> values(1000);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) * 0.5f;
  BagWriteOptions typed_options = BagWriteOptions::of<float>();
  typed_options.tags = {{"source", "unit test"}, {"k", "v=1"}};
  const BagInfo typed_info =
      store_->put_bag("typed", std::as_bytes(std::span(values)), typed_options);
  const BagInfo raw_info = store_->put_bag("raw", as_bytes("raw bytes"));
  start_mount();

  const std::string typed = bag("typed");
  EXPECT_EQ(get_xattr(typed, "user.sheaf.xxh128").value, typed_info.checksum.hex());
  EXPECT_EQ(get_xattr(typed, "user.sheaf.type").value, typed_info.element_type);
  EXPECT_EQ(get_xattr(typed, "user.sheaf.element_size").value, "4");
  EXPECT_EQ(get_xattr(typed, "user.sheaf.created").value, std::to_string(typed_info.created_ns));
  EXPECT_EQ(get_xattr(typed, "user.sheaf.tag.source").value, "unit test");
  EXPECT_EQ(get_xattr(typed, "user.sheaf.tag.k").value, "v=1");
  EXPECT_EQ(get_xattr(typed, "user.sheaf.tag.missing").error, ENODATA);
  const std::vector<std::string> names = list_xattrs(typed);
  for (const char* name : {"user.sheaf.xxh128", "user.sheaf.type", "user.sheaf.element_size",
                           "user.sheaf.created", "user.sheaf.tag.source", "user.sheaf.tag.k"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end())
        << "listxattr lacks " << name << ": " << joined(names);
  }

  // An untyped bag has no type attribute, and does not list one.
  const std::string raw = bag("raw");
  EXPECT_EQ(get_xattr(raw, "user.sheaf.xxh128").value, raw_info.checksum.hex());
  EXPECT_EQ(get_xattr(raw, "user.sheaf.type").error, ENODATA);
  const std::vector<std::string> raw_names = list_xattrs(raw);
  EXPECT_EQ(std::find(raw_names.begin(), raw_names.end(), "user.sheaf.type"), raw_names.end());
  EXPECT_NE(std::find(raw_names.begin(), raw_names.end(), "user.sheaf.xxh128"), raw_names.end());

  // Other namespaces hold nothing.
  for (const char* name : {"trusted.sheaf.xxh64", "security.selinux", "system.posix_acl_access"}) {
    const int error = get_xattr(typed, name).error;
    EXPECT_TRUE(error == ENODATA || error == ENOTSUP) << name << ": " << std::strerror(error);
  }

  // Bags are immutable: their attributes too.
  EXPECT_EQ(error_of(::setxattr(typed.c_str(), "user.sheaf.tag.k", "w", 1, 0)), EPERM);
  EXPECT_EQ(error_of(::setxattr(typed.c_str(), "user.note", "w", 1, 0)), EPERM);
  EXPECT_EQ(error_of(::removexattr(typed.c_str(), "user.sheaf.tag.k")), EPERM);
  EXPECT_EQ(get_xattr(typed, "user.sheaf.tag.k").value, "v=1");
  EXPECT_EQ(store_->bag_info("typed").tags, typed_options.tags);

  // getfattr shows them all.
  const ShellResult getfattr = sh("getfattr -d -m user.sheaf " + q(typed));
  ASSERT_EQ(getfattr.status, 0) << getfattr;
  for (const std::string& line :
       {"user.sheaf.xxh128=\"" + typed_info.checksum.hex() + "\"",
        "user.sheaf.type=\"" + typed_info.element_type + "\"",
        std::string("user.sheaf.element_size=\"4\""),
        "user.sheaf.created=\"" + std::to_string(typed_info.created_ns) + "\"",
        std::string("user.sheaf.tag.source=\"unit test\"")}) {
    EXPECT_NE(getfattr.out.find(line + "\n"), std::string::npos) << line << "\n" << getfattr;
  }
}

// --- Writing bags -----------------------------------------------------------------

TEST_F(FsTest, CpCreatesAVerifiedBag) {
  const std::string src = dir_ / "src.bin";
  const std::string content = random_bytes(3 * kMiB + 123, 4);
  write_string(src, content);
  start_mount();

  const ShellResult cp = sh("cp " + q(src) + " " + q(bag("new")));
  ASSERT_EQ(cp.status, 0) << cp;
  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{"new"});
  const std::optional<std::string> payload = bag_payload("new");  // checksums verified
  ASSERT_TRUE(payload.has_value()) << "the new bag does not open and verify";
  EXPECT_TRUE(*payload == content) << first_difference(*payload, content);
  EXPECT_EQ(sh("cmp " + q(src) + " " + q(bag("new"))).status, 0);
  EXPECT_EQ(sh("stat -c %s " + q(bag("new"))).out, std::to_string(content.size()) + "\n");
  EXPECT_EQ(get_xattr(bag("new"), "user.sheaf.xxh128").value,
            store_->bag_info("new").checksum.hex());
  EXPECT_EQ(sh("ls " + q(bags_dir())).out, "new\n");

  // An empty file makes an empty bag.
  const ShellResult empty = sh(": > " + q(bag("empty")));
  ASSERT_EQ(empty.status, 0) << empty;
  const std::optional<std::string> none = bag_payload("empty");
  ASSERT_TRUE(none.has_value());
  EXPECT_EQ(*none, "");
  EXPECT_TRUE(tmp_entries().empty()) << joined(tmp_entries());
}

// While the bag is open for writing, neither the store nor a listing of
// bags/ shows it. The listing is made by this process (readdir), not by `ls`:
// a process spawned now would inherit the open file (see the next test).
TEST_F(FsTest, BagBeingWrittenIsInvisibleUntilClosed) {
  start_mount();
  const std::string content = random_bytes(kMiB, 5);
  Fd fd(::open(bag("pending").c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd.ok()) << std::strerror(errno);
  ASSERT_EQ(write_all(fd.get(), content.data(), content.size() / 2), content.size() / 2)
      << std::strerror(errno);

  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{});
  EXPECT_FALSE(store_->open_bag("pending").ok());
  EXPECT_EQ(dir_names(bags_dir()), std::vector<std::string>{});

  const std::size_t rest = content.size() - content.size() / 2;
  ASSERT_EQ(write_all(fd.get(), content.data() + content.size() / 2, rest), rest)
      << std::strerror(errno);
  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{});
  EXPECT_EQ(dir_names(bags_dir()), std::vector<std::string>{});

  ASSERT_EQ(fd.close(), 0) << std::strerror(errno);
  // Visible once close() returns: the bag was committed before it did.
  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{"pending"});
  const std::optional<std::string> payload = bag_payload("pending");
  ASSERT_TRUE(payload.has_value()) << "the bag does not open and verify";
  EXPECT_TRUE(*payload == content) << first_difference(*payload, content);
  EXPECT_EQ(get_xattr(bag("pending"), "user.sheaf.xxh128").value,
            store_->bag_info("pending").checksum.hex());
  EXPECT_EQ(sh("ls " + q(bags_dir())).out, "pending\n");
}

// Writes bag "x" in two 64 KiB halves through one open file, with `meanwhile`
// between them: another process closes its copy of the descriptor (`what`, in
// the failure message), which the mount sees as a flush of the same open file.
// That must neither hang nor publish the bag early: the writer goes on
// writing, and its own close publishes every byte.
void FsTest::write_bag_around(const std::string& what, const std::function<void()>& meanwhile) {
  const std::string first(64 * kKiB, 'a');
  const std::string second(64 * kKiB, 'b');
  Fd fd(::open(bag("x").c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd.ok()) << std::strerror(errno);
  ASSERT_EQ(write_all(fd.get(), first.data(), first.size()), first.size()) << std::strerror(errno);
  meanwhile();
  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{}) << "published by " << what;
  EXPECT_EQ(write_all(fd.get(), second.data(), second.size()), second.size())
      << std::strerror(errno);
  EXPECT_EQ(fd.close(), 0) << std::strerror(errno);
  EXPECT_TRUE(bag_holds("x", first + second));
}

// A writer that runs another program while its bag is open: exec closes the
// program's copy of the close-on-exec descriptor.
TEST_F(FsTest, WriterThatRunsAProgramKeepsWritingItsBag) {
  start_mount();
  write_bag_around("a program's exec", [this] {
    // Bounded: should the flush hang, the connection is aborted.
    auto spawned = std::async(std::launch::async, [] { return sh("true"); });
    if (spawned.wait_for(10s) != std::future_status::ready) {
      ADD_FAILURE() << "running a program while a bag is open for writing hung (the flush "
                       "made by its exec got no answer); aborting the mount";
      abort_mounts();
    }
    EXPECT_EQ(spawned.get().status, 0);
  });
}

// A writer that forks a child that just exits, closing its inherited copy.
TEST_F(FsTest, WriterThatForksKeepsWritingItsBag) {
  start_mount();
  write_bag_around("a child's exit", [] {
    Child child([] { _exit(0); });
    EXPECT_EQ(child.wait_code(), 0);
  });
}

// A child writes 1 MiB of a new bag at `path`, then is killed with the file
// still open. Returns the child's exit code.
int kill_writer_mid_bag(const std::string& path) {
  const std::string chunk(64 * kKiB,
                          'x');  // made before the fork: the child only makes system calls
  Pipe ready;
  Child writer([&] {
    const int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) _exit(3);
    for (int i = 0; i < 16; ++i) {
      if (write_all(fd, chunk.data(), chunk.size()) != chunk.size()) _exit(4);
    }
    const char c = 'r';
    if (::write(ready.write_end(), &c, 1) != 1) _exit(5);
    for (;;) ::pause();  // killed here, the file still open
  });
  ready.close_write();
  char c = 0;
  if (!read_byte(ready.read_end(), &c)) return writer.wait_code();
  writer.kill();
  return writer.wait_code();
}

TEST_F(FsTest, WriterKilledBeforeCloseLeavesNoBag) {
  start_mount();
  const std::string path = bag("x");
  EXPECT_EQ(kill_writer_mid_bag(path), 128 + SIGKILL);
  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{});
  EXPECT_FALSE(store_->open_bag("x").ok());
  EXPECT_EQ(sh("ls " + q(bags_dir())).out, "");
  // The temporary goes once the kernel tells the mount the file was released.
  EXPECT_TRUE(wait_until([&] { return tmp_entries().empty(); })) << joined(tmp_entries());
  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{});

  // The name is free: a whole write of it works.
  const std::string src = dir_ / "x.bin";
  write_string(src, "after");
  ASSERT_EQ(sh("cp " + q(src) + " " + q(path)).status, 0);
  EXPECT_TRUE(bag_holds("x", "after"));
}

// When the close of a killed writer cannot be inspected in time (the
// closer check gives up: here at once), the release that follows must not
// publish the half-written bag; a writer that is still alive still gets its
// bag published at the release.
TEST_F(FsTest, AKilledWriterWhoseCloseCannotBeInspectedLeavesNoBag) {
  MountOptions options;
  options.closer_wait = std::chrono::milliseconds(0);
  start_mount(options);
  EXPECT_EQ(kill_writer_mid_bag(bag("x")), 128 + SIGKILL);
  EXPECT_TRUE(wait_until([&] { return tmp_entries().empty(); })) << joined(tmp_entries());
  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{});
  EXPECT_EQ(sh("ls " + q(bags_dir())).out, "");

  // This process lives on after its close: the release publishes its bag.
  {
    Fd fd(::open(bag("alive").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd.ok()) << std::strerror(errno);
    ASSERT_EQ(::write(fd.get(), "kept", 4), 4);
  }
  EXPECT_TRUE(wait_until([&] { return bag_holds("alive", "kept"); }));
}

// Tools that copy a file's attributes set mode, owner and times whether
// they differ or not: what changes nothing is accepted, times are kept on the
// bag's file, and only a real change of mode or owner is refused.
TEST_F(FsTest, CpPreservingInstallTarTouchAndMvFromOutsideWork) {
  start_mount();
  const std::string src = dir_ / "src";
  std::filesystem::create_directories(src);
  write_string(src + "/a", "bag a");
  write_string(src + "/b", "bag b");
  // The mode and owner the mount gives a new bag (the store's owner, 0644 less the umask).
  ASSERT_EQ(sh("cp " + q(src + "/a") + " " + q(bag("probe"))).status, 0);
  struct stat probe {};
  ASSERT_EQ(::stat(bag("probe").c_str(), &probe), 0);
  const std::string mode = std::to_string((probe.st_mode >> 6) & 7) +
                           std::to_string((probe.st_mode >> 3) & 7) +
                           std::to_string(probe.st_mode & 7);
  ASSERT_EQ(sh("chmod " + mode + " " + q(src + "/a") + " " + q(src + "/b")).status, 0);
  ASSERT_EQ(sh("touch -d '2001-02-03 04:05:06' " + q(src + "/a") + " " + q(src + "/b")).status, 0);

  for (const std::string& command :
       {"cp -p " + q(src + "/a") + " " + q(bag("cp-p")),
        "cp -a " + q(src + "/b") + " " + q(bag("cp-a")),
        "install -m " + mode + " " + q(src + "/a") + " " + q(bag("installed")),
        "tar -C " + q(src) + " -cf - a | tar -C " + q(bags_dir()) + " -xf -",
        "cp " + q(src + "/b") + " " + q(dir_ / "moved") + " && mv " + q(dir_ / "moved") + " " +
            q(bag("moved"))}) {
    const ShellResult result = sh(command);
    EXPECT_EQ(result.status, 0) << command << ": " << result;
  }
  EXPECT_TRUE(bag_holds("cp-p", "bag a"));
  EXPECT_TRUE(bag_holds("cp-a", "bag b"));
  EXPECT_TRUE(bag_holds("installed", "bag a"));
  EXPECT_TRUE(bag_holds("a", "bag a"));
  EXPECT_TRUE(bag_holds("moved", "bag b"));
  // The times asked for are kept (cp -p and -a on the open file, tar after closing it).
  for (const char* name : {"cp-p", "cp-a", "a"}) {
    EXPECT_EQ(sh("date -u -r " + q(bag(name)) + " +%Y").out, "2001\n") << name;
  }
  // touch, and a no-op chmod and chown, work on a published bag.
  EXPECT_EQ(sh("touch " + q(bag("a"))).status, 0);
  EXPECT_NE(sh("date -u -r " + q(bag("a")) + " +%Y").out, "2001\n");
  EXPECT_EQ(sh("chmod " + mode + " " + q(bag("a"))).status, 0);
  EXPECT_EQ(sh("chown " + std::to_string(probe.st_uid) + ":" + std::to_string(probe.st_gid) + " " +
               q(bag("a")))
                .status,
            0);
  // A bag's mode is its file's: chmod changes it (install's 0600 then 0644
  // needs that); a change of owner is refused and changes nothing.
  ASSERT_EQ(error_of(::chmod(bag("a").c_str(), 0600)), 0);
  struct stat after {};
  ASSERT_EQ(::stat(bag("a").c_str(), &after), 0);
  EXPECT_EQ(after.st_mode & 0777, 0600u);
  struct stat in_store {};
  ASSERT_EQ(::stat(store_->bag_path("a").c_str(), &in_store), 0);
  EXPECT_EQ(in_store.st_mode & 0777, 0600u);
  EXPECT_EQ(error_of(::chown(bag("a").c_str(), probe.st_uid + 1, static_cast<gid_t>(-1))), EPERM);
  ASSERT_EQ(::stat(bag("a").c_str(), &after), 0);
  EXPECT_EQ(after.st_uid, probe.st_uid);
  EXPECT_TRUE(bag_holds("a", "bag a"));
  // An object's mode is its heap's: a real change is refused.
  Heap h = make_heap("h");
  put_object(h, "o", "object");
  struct stat object {};
  ASSERT_EQ(::stat(obj("h", "o").c_str(), &object), 0);
  EXPECT_EQ(error_of(::chmod(obj("h", "o").c_str(), object.st_mode & 0777)), 0);
  EXPECT_EQ(error_of(::chmod(obj("h", "o").c_str(), (object.st_mode & 0777) ^ 0040)), EPERM);
  // A reader that opened the bag before a touch still reads it (its
  // identity is its content, not its times).
  Fd reader(::open(bag("a").c_str(), O_RDONLY));
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(sh("touch " + q(bag("a"))).status, 0);
  char got[5] = {};
  EXPECT_EQ(::pread(reader.get(), got, 5, 0), 5) << std::strerror(errno);
  EXPECT_EQ(std::string(got, 5), "bag a");
}

// Two copies racing to create one new bag: the one that comes second learns
// at open, not after writing everything, that the name will be taken.
TEST_F(FsTest, ASecondCpOfANewBagIsRefusedAtOpenWhileTheFirstWrites) {
  start_mount();
  Fd first(::open(bag("r").c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644));
  ASSERT_TRUE(first.ok()) << std::strerror(errno);
  ASSERT_EQ(::write(first.get(), "first", 5), 5);
  const std::string src = dir_ / "second";
  write_string(src, "second");
  const ShellResult cp = sh("cp " + q(src) + " " + q(bag("r")));
  EXPECT_NE(cp.status, 0) << cp;
  EXPECT_NE(cp.err.find("File exists"), std::string::npos) << cp;
  EXPECT_EQ(open_error(bag("r"), O_CREAT | O_EXCL | O_WRONLY), EEXIST);
  EXPECT_EQ(first.close(), 0) << std::strerror(errno);
  EXPECT_TRUE(bag_holds("r", "first"));
  EXPECT_TRUE(wait_until([&] { return tmp_entries().empty(); })) << joined(tmp_entries());
  // Without O_EXCL (a shell's >), a second writer replaces: its bag wins.
  ASSERT_EQ(sh("printf third > " + q(bag("r"))).status, 0);
  EXPECT_TRUE(bag_holds("r", "third"));
}

TEST_F(FsTest, WritingOverAnExistingBagReplacesItAtomically) {
  const std::string v1 = random_bytes(kMiB, 6);
  const std::string v2 = random_bytes(2 * kMiB + 5, 7);
  store_->put_bag("b", as_bytes(v1));
  start_mount();

  Fd fd(::open(bag("b").c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
  ASSERT_TRUE(fd.ok()) << std::strerror(errno);
  ASSERT_EQ(write_all(fd.get(), v2.data(), kMiB), kMiB) << std::strerror(errno);
  // Half way through, the store still has the old bag, whole.
  EXPECT_TRUE(bag_holds("b", v1));
  ASSERT_EQ(write_all(fd.get(), v2.data() + kMiB, v2.size() - kMiB), v2.size() - kMiB)
      << std::strerror(errno);
  EXPECT_TRUE(bag_holds("b", v1));
  ASSERT_EQ(fd.close(), 0) << std::strerror(errno);
  const std::optional<std::string> now = bag_payload("b");
  ASSERT_TRUE(now.has_value());
  EXPECT_TRUE(*now == v2) << first_difference(*now, v2);

  // And with cp, from the shell.
  const std::string v3_file = dir_ / "v3.bin";
  const std::string v3 = random_bytes(100000, 8);
  write_string(v3_file, v3);
  const ShellResult cp = sh("cp " + q(v3_file) + " " + q(bag("b")));
  ASSERT_EQ(cp.status, 0) << cp;
  EXPECT_TRUE(bag_holds("b", v3));
  EXPECT_EQ(sh("cmp " + q(v3_file) + " " + q(bag("b"))).status, 0);
  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{"b"});
  EXPECT_TRUE(tmp_entries().empty()) << joined(tmp_entries());
}

// rsync -a writes each file as .NAME.XXXXXX, sets its mode and times, and
// renames it to NAME; rsync --inplace rewrites an existing file through
// O_WRONLY without O_TRUNC and sizes it at the end. Both work; an in-place
// edit of only part of a bag publishes nothing.
TEST_F(FsTest, RsyncIntoBagsWithTemporariesAndInPlace) {
  start_mount();
  const std::string src = dir_ / "src";
  std::filesystem::create_directories(src);
  write_string(src + "/one", random_bytes(300 * kKiB, 41));
  write_string(src + "/two", "two");
  ASSERT_EQ(sh("touch -d '2001-02-03 04:05:06' " + q(src + "/one") + " " + q(src + "/two")).status,
            0);
  const ShellResult rsync = sh("rsync -a " + q(src + "/") + " " + q(bags_dir() + "/"));
  ASSERT_EQ(rsync.status, 0) << rsync;
  EXPECT_EQ(store_->bag_names(), (std::vector<std::string>{"one", "two"}));
  EXPECT_TRUE(bag_holds("one", random_bytes(300 * kKiB, 41)));
  EXPECT_TRUE(bag_holds("two", "two"));
  EXPECT_EQ(sh("date -u -r " + q(bag("one")) + " +%Y").out, "2001\n");
  EXPECT_EQ(sh("ls -A " + q(bags_dir())).out, "one\ntwo\n");  // no temporary left
  EXPECT_TRUE(wait_until([&] { return tmp_entries().empty(); })) << joined(tmp_entries());
  // A second run finds nothing to do, and a changed file is sent again.
  EXPECT_EQ(sh("rsync -a " + q(src + "/") + " " + q(bags_dir() + "/")).status, 0);
  write_string(src + "/two", "two, changed");
  EXPECT_EQ(sh("rsync -a " + q(src + "/") + " " + q(bags_dir() + "/")).status, 0);
  EXPECT_TRUE(bag_holds("two", "two, changed"));

  // --inplace over an existing bag, longer and then shorter.
  write_string(src + "/one", random_bytes(400 * kKiB, 42));
  ShellResult inplace = sh("rsync -a --inplace " + q(src + "/") + " " + q(bags_dir() + "/"));
  EXPECT_EQ(inplace.status, 0) << inplace;
  EXPECT_TRUE(bag_holds("one", random_bytes(400 * kKiB, 42)));
  write_string(src + "/one", "short");
  inplace = sh("rsync -a --inplace " + q(src + "/") + " " + q(bags_dir() + "/"));
  EXPECT_EQ(inplace.status, 0) << inplace;
  EXPECT_TRUE(bag_holds("one", "short"));

  // Part of a bag rewritten in place: the rest is the old version's, as in
  // any file (rsync --inplace --no-whole-file, dd conv=notrunc).
  Fd partial(::open(bag("two").c_str(), O_WRONLY));
  ASSERT_TRUE(partial.ok()) << std::strerror(errno);
  ASSERT_EQ(::write(partial.get(), "TW", 2), 2);
  EXPECT_EQ(partial.close(), 0) << std::strerror(errno);
  EXPECT_TRUE(bag_holds("two", "TWo, changed"));

  // A temporary removed instead of renamed (rsync interrupted) leaves nothing.
  Fd temp(::open(bag(".three.AbC123").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600));
  ASSERT_TRUE(temp.ok()) << std::strerror(errno);
  ASSERT_EQ(::write(temp.get(), "3", 1), 1);
  EXPECT_EQ(temp.close(), 0);
  struct stat st {};
  EXPECT_EQ(::stat(bag(".three.AbC123").c_str(), &st), 0) << std::strerror(errno);
  EXPECT_EQ(st.st_size, 1);
  EXPECT_EQ(error_of(::unlink(bag(".three.AbC123").c_str())), 0);
  EXPECT_EQ(error_of(::stat(bag(".three.AbC123").c_str(), &st)), ENOENT);
  EXPECT_EQ(store_->bag_names(), (std::vector<std::string>{"one", "two"}));
  EXPECT_TRUE(wait_until([&] { return tmp_entries().empty(); })) << joined(tmp_entries());
}

// A bag file cut short in the store while the mount reads its header (for
// a lookup or a listing) must not kill the server: headers are read with
// pread, never through a mapping, where a page past the new end is SIGBUS.
// One thread truncates and restores the file, another looks it up, bounded.
TEST_F(FsTest, ABagTruncatedWhileItsHeaderIsReadDoesNotKillTheServer) {
  const std::string payload = random_bytes(64 * kKiB, 51);
  store_->put_bag("t", as_bytes(payload));
  start_mount();
  const std::string file = store_->bag_path("t");
  const std::vector<char> whole = read_file(file);
  std::atomic<bool> stop{false};
  std::thread cutter([&] {
    for (int i = 0; i < 2000 && !stop; ++i) {
      if (::truncate(file.c_str(), 0) != 0) break;
      std::ofstream(file, std::ios::binary | std::ios::trunc).write(whole.data(), whole.size());
    }
  });
  for (int i = 0; i < 2000; ++i) {
    struct stat st {};
    ::stat(bag("t").c_str(), &st);  // found, refused (EIO) or gone: any answer but a dead server
  }
  stop = true;
  cutter.join();
  // The server lives and serves the restored bag.
  EXPECT_EQ(sh("ls " + q(bags_dir())).out, "t\n");
  EXPECT_TRUE(bag_holds("t", payload));
  EXPECT_EQ(sh("cat " + q(bag("t")) + " | wc -c").out, std::to_string(payload.size()) + "\n");
}

// Tools that rewrite a file in place (truncate, dd conv=notrunc, rsync's
// delta transfer with --inplace, a seek to the end and a write) get a new
// version of the bag in which what they skipped is the old version's bytes,
// never zeros; the bag keeps its mode, type and tags. A size change by path
// from another process while one rewrites is about the bag as it is.
TEST_F(FsTest, InPlaceRewritesKeepWhatTheySkipAndTheBagsAttributes) {
  start_mount();
  ASSERT_EQ(sh("printf 'hello\\n' > " + q(bag("t"))).status, 0);
  ASSERT_EQ(sh("truncate -s 20 " + q(bag("t"))).status, 0);
  EXPECT_TRUE(bag_holds("t", "hello\n" + std::string(14, '\0')));
  ASSERT_EQ(sh("truncate -s 3 " + q(bag("t"))).status, 0);
  EXPECT_TRUE(bag_holds("t", "hel"));
  ASSERT_EQ(sh("printf X | dd of=" + q(bag("t")) + " bs=1 seek=1 conv=notrunc status=none").status,
            0);
  EXPECT_TRUE(bag_holds("t", "hXl"));
  {
    Fd appender(::open(bag("t").c_str(), O_WRONLY));  // no O_APPEND: a seek to the end
    ASSERT_TRUE(appender.ok()) << std::strerror(errno);
    ASSERT_EQ(::lseek(appender.get(), 0, SEEK_END), 3);
    ASSERT_EQ(::write(appender.get(), "!", 1), 1);
    ASSERT_EQ(appender.close(), 0) << std::strerror(errno);
  }
  EXPECT_TRUE(bag_holds("t", "hXl!"));

  // rsync's delta transfer: only the changed block is written.
  const std::string src = dir_ / "src";
  std::filesystem::create_directories(src);
  std::string big = random_bytes(300 * kKiB, 61);
  write_string(src + "/d", big);
  ASSERT_EQ(sh("rsync -a " + q(src + "/") + " " + q(bags_dir() + "/")).status, 0);
  big.replace(150 * kKiB, 8, "CHANGED!");
  write_string(src + "/d", big);
  const ShellResult delta = sh("rsync -a --inplace --no-whole-file --ignore-times " + q(src + "/") +
                               " " + q(bags_dir() + "/"));
  EXPECT_EQ(delta.status, 0) << delta;
  EXPECT_TRUE(bag_holds("d", big));

  // A rewrite keeps the bag's mode; in place it keeps its type and tags too.
  BagWriteOptions typed = BagWriteOptions::of<float>();
  typed.tags = {{"owner", "ana"}};
  const std::vector<float> values = {1, 2, 3, 4};
  store_->put_bag("typed", std::as_bytes(std::span(values)), typed);
  ASSERT_EQ(::chmod(bag("typed").c_str(), 0600), 0) << std::strerror(errno);
  ASSERT_EQ(
      sh("printf '\\0\\0\\0\\0' | dd of=" + q(bag("typed")) + " bs=1 conv=notrunc status=none")
          .status,
      0);
  const BagInfo info = store_->bag_info("typed");
  EXPECT_EQ(info.element_type, typed.element_type);
  EXPECT_EQ(info.tags, typed.tags);
  struct stat st {};
  ASSERT_EQ(::stat(bag("typed").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(sh("printf new > " + q(bag("typed"))).status, 0);
  ASSERT_EQ(::stat(bag("typed").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "a rewrite made the bag readable by others";

  // While this process rewrites "t" in place, another truncates it by path
  // (truncate(2), no descriptor): refused (the bag as it is cannot change
  // size), and this rewrite is intact.
  Fd writer(::open(bag("t").c_str(), O_WRONLY));
  ASSERT_TRUE(writer.ok()) << std::strerror(errno);
  const std::string path = bag("t");
  Child by_path([&] { _exit(::truncate(path.c_str(), 0) == 0 ? 0 : errno); });
  EXPECT_EQ(by_path.wait_code(), EPERM);
  ASSERT_EQ(::write(writer.get(), "H", 1), 1);
  EXPECT_EQ(writer.close(), 0) << std::strerror(errno);
  EXPECT_TRUE(bag_holds("t", "HXl!"));
}

// Dot names other than a tool's temporaries (".NAME.XXXXXX") are refused,
// never taken in and dropped; rsync of the longest bag names works; a
// temporary still open cannot be renamed; removing a bag being written
// abandons it.
TEST_F(FsTest, DotNamesLongNamesAndRemovalWhileWriting) {
  start_mount();
  EXPECT_EQ(open_error(bag(".dotfile"), O_CREAT | O_WRONLY | O_TRUNC), EINVAL);
  EXPECT_NE(sh("printf x > " + q(bag(".other"))).status, 0);
  const std::string src = dir_ / "src";
  std::filesystem::create_directories(src);
  const std::string longest(Store::kMaxNameLength, 'l');
  write_string(src + "/" + longest, "long");
  const ShellResult rsync = sh("rsync -a " + q(src + "/") + " " + q(bags_dir() + "/"));
  EXPECT_EQ(rsync.status, 0) << rsync;
  EXPECT_TRUE(bag_holds(longest, "long"));

  Fd temp(::open(bag(".x.AbC123").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0600));
  ASSERT_TRUE(temp.ok()) << std::strerror(errno);
  ASSERT_EQ(::write(temp.get(), "x", 1), 1);
  EXPECT_EQ(error_of(::rename(bag(".x.AbC123").c_str(), bag("x").c_str())), EBUSY);
  EXPECT_EQ(temp.close(), 0);
  EXPECT_EQ(error_of(::rename(bag(".x.AbC123").c_str(), bag("x").c_str())), 0);
  EXPECT_TRUE(bag_holds("x", "x"));

  // A bag being rewritten, removed: both versions go (a new bag being
  // written is not there to remove until it is published).
  store_->put_bag("gone", as_bytes("old"));
  Fd writing(::open(bag("gone").c_str(), O_WRONLY | O_TRUNC));
  ASSERT_TRUE(writing.ok()) << std::strerror(errno);
  ASSERT_EQ(::write(writing.get(), "g", 1), 1);
  EXPECT_EQ(error_of(::unlink(bag("gone").c_str())), 0);
  EXPECT_EQ(writing.close(), -1);
  EXPECT_FALSE(store_->open_bag("gone").ok());
  EXPECT_TRUE(wait_until([&] { return tmp_entries().empty(); })) << joined(tmp_entries());
}

TEST_F(FsTest, AppendingToABagIsRefused) {
  store_->put_bag("b", as_bytes("original"));
  start_mount();
  EXPECT_EQ(open_error(bag("b"), O_WRONLY | O_APPEND), EPERM);
  const ShellResult append = sh("printf more >> " + q(bag("b")));
  EXPECT_NE(append.status, 0) << append;
  EXPECT_TRUE(bag_holds("b", "original"));
  EXPECT_EQ(sh("cat " + q(bag("b"))).out, "original");
}

TEST_F(FsTest, BagsAreWrittenFrontToBackWithHolesAllowed) {
  start_mount();
  {
    Fd fd(::open(bag("w").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd.ok()) << std::strerror(errno);
    const std::string a(8192, 'a');
    ASSERT_EQ(::pwrite(fd.get(), a.data(), a.size(), 0), static_cast<ssize_t>(a.size()))
        << std::strerror(errno);
    // Forwards past a gap: a hole, read back as zeros.
    const std::string c(4096, 'c');
    ASSERT_EQ(::pwrite(fd.get(), c.data(), c.size(), 16384), static_cast<ssize_t>(c.size()))
        << std::strerror(errno);
    ASSERT_EQ(fd.close(), 0) << std::strerror(errno);
    const std::string expected = a + std::string(8192, '\0') + c;
    const std::optional<std::string> payload = bag_payload("w");
    ASSERT_TRUE(payload.has_value());
    EXPECT_TRUE(*payload == expected) << first_difference(*payload, expected);
  }
  // Backwards: refused with ESPIPE, and the bag is abandoned (the writer
  // asked for bytes it cannot have): later writes and close fail, the bag
  // that was there stays.
  Fd fd(::open(bag("w").c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
  ASSERT_TRUE(fd.ok()) << std::strerror(errno);
  ASSERT_EQ(::pwrite(fd.get(), "zzzz", 4, 0), 4);
  errno = 0;
  EXPECT_EQ(::pwrite(fd.get(), "zz", 2, 1), -1);
  EXPECT_EQ(errno, ESPIPE) << std::strerror(errno);
  EXPECT_EQ(::pwrite(fd.get(), "zz", 2, 4), -1);
  EXPECT_EQ(fd.close(), -1);
  EXPECT_EQ(errno, ESPIPE) << std::strerror(errno);
  EXPECT_EQ(bag_payload("w")->size(), 8192u + 8192u + 4096u);
}

TEST_F(FsTest, BadBagNamesAreRefused) {
  start_mount();
  for (const std::string& name : {std::string("bad name"), std::string("..hidden"),
                                  std::string("semi;colon"), std::string("star*")}) {
    EXPECT_EQ(open_error(bag(name), O_CREAT | O_WRONLY | O_TRUNC), EINVAL) << "'" << name << "'";
  }
  // Too long: "File name too long", from the mount (201) or the kernel (256).
  for (std::size_t length : {201, 255, 256}) {
    EXPECT_EQ(open_error(bag(std::string(length, 'n')), O_CREAT | O_WRONLY | O_TRUNC), ENAMETOOLONG)
        << length;
  }
  const std::string src = dir_ / "src.bin";
  write_string(src, "bytes");
  EXPECT_NE(sh("cp " + q(src) + " " + q(bag("bad name"))).status, 0);
  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{});
  EXPECT_TRUE(tmp_entries().empty()) << joined(tmp_entries());
  // The longest good name works.
  EXPECT_EQ(open_error(bag(std::string(200, 'n')), O_CREAT | O_WRONLY | O_TRUNC), 0);
  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{std::string(200, 'n')});
}

// --- Removing and renaming ---------------------------------------------------------

// Without --allow-object-removal, `rm -rf` of a heap's directory frees
// nothing: every unlink of an object is EPERM.
TEST_F(FsTest, RmOfObjectsIsRefusedUnlessTheMountAllowsIt) {
  Heap h = make_heap("h");
  put_object(h, "a", "aaa");
  put_object(h, "b", "bbb");
  start_mount();
  const ShellResult rm = sh("rm -rf " + q(heap_dir("h")));
  EXPECT_NE(rm.status, 0) << rm;
  EXPECT_NE(rm.err.find("Operation not permitted"), std::string::npos) << rm;
  EXPECT_EQ(error_of(::unlink(obj("h", "a").c_str())), EPERM);
  EXPECT_TRUE(h.object("a").has_value());
  EXPECT_TRUE(h.object("b").has_value());
  EXPECT_EQ(sh("ls " + q(objects_dir("h"))).out, "a\nb\n");
}

TEST_F(FsTest, RmDeletesBagsAndErasesObjects) {
  Heap h = make_heap("h");
  put_object(h, "a", "aaa");
  put_object(h, "b", "bbb");
  store_->put_bag("x", as_bytes("xx"));
  store_->put_bag("y", as_bytes("yy"));
  MountOptions options;
  options.allow_object_removal = true;
  start_mount(options);

  const ShellResult rm_bag = sh("rm " + q(bag("x")));
  EXPECT_EQ(rm_bag.status, 0) << rm_bag;
  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{"y"});
  EXPECT_EQ(sh("ls " + q(bags_dir())).out, "y\n");

  const ShellResult rm_object = sh("rm " + q(obj("h", "a")));
  EXPECT_EQ(rm_object.status, 0) << rm_object;
  EXPECT_FALSE(h.object("a").has_value());
  EXPECT_TRUE(h.object("b").has_value());
  EXPECT_EQ(sh("ls " + q(objects_dir("h"))).out, "b\n");

  EXPECT_EQ(error_of(::unlink(bag("nothing").c_str())), ENOENT);
  EXPECT_EQ(error_of(::unlink(obj("h", "nothing").c_str())), ENOENT);
}

TEST_F(FsTest, RenameWorksWithinBagsAndIsExdevAcrossDirectories) {
  Heap h = make_heap("h");
  Heap g = make_heap("g");
  put_object(h, "o", "object o");
  store_->put_bag("a", as_bytes("bag a"));
  store_->put_bag("keep", as_bytes("bag keep"));
  start_mount();

  ASSERT_EQ(error_of(::rename(bag("a").c_str(), bag("c").c_str())), 0) << std::strerror(errno);
  EXPECT_EQ(store_->bag_names(), (std::vector<std::string>{"c", "keep"}));
  EXPECT_TRUE(bag_holds("c", "bag a"));
  EXPECT_EQ(sh("ls " + q(bags_dir())).out, "c\nkeep\n");
  EXPECT_EQ(sh("cat " + q(bag("c"))).out, "bag a");
  const ShellResult mv = sh("mv " + q(bag("c")) + " " + q(bag("d")));
  EXPECT_EQ(mv.status, 0) << mv;
  EXPECT_EQ(store_->bag_names(), (std::vector<std::string>{"d", "keep"}));

  // A name the rules refuse: EPERM (mv would explain EINVAL as "a
  // subdirectory of itself"), or ENAMETOOLONG; nothing moves.
  const ShellResult bad_mv = sh("mv " + q(bag("keep")) + " " + q(bag("bad name")));
  EXPECT_NE(bad_mv.status, 0);
  EXPECT_NE(bad_mv.err.find("Operation not permitted"), std::string::npos) << bad_mv;
  EXPECT_EQ(bad_mv.err.find("subdirectory"), std::string::npos) << bad_mv;
  EXPECT_EQ(store_->bag_names(), (std::vector<std::string>{"d", "keep"}));
  EXPECT_EQ(error_of(::rename(bag("d").c_str(), bag("bad name").c_str())), EPERM);
  EXPECT_EQ(error_of(::rename(bag("d").c_str(), bag(std::string(201, 'n')).c_str())), ENAMETOOLONG);
  EXPECT_EQ(store_->bag_names(), (std::vector<std::string>{"d", "keep"}));

  // rename(2) itself, not mv, which would fall back to copying.
  EXPECT_EQ(error_of(::rename(bag("d").c_str(), obj("h", "d").c_str())), EXDEV);
  EXPECT_EQ(error_of(::rename(obj("h", "o").c_str(), obj("g", "o").c_str())), EXDEV);
  EXPECT_EQ(error_of(::rename(obj("h", "o").c_str(), bag("o").c_str())), EXDEV);
  EXPECT_EQ(store_->bag_names(), (std::vector<std::string>{"d", "keep"}));
  EXPECT_EQ(object_string(h, "o"), "object o");
  EXPECT_FALSE(g.object("o").has_value());
  EXPECT_FALSE(h.object("d").has_value());
}

// --- Writing objects ---------------------------------------------------------------

// An object replaced by one of the same name and size (which the allocator
// puts at the same offset) under an open reader: the reader's next read
// fails with ESTALE instead of returning the new object's bytes after the
// old one's; a new open reads the new object whole.
TEST_F(FsTest, AReaderOfAReplacedObjectGetsEstaleNeverAMix) {
  Heap h = make_heap("h");
  const std::string old_bytes = random_bytes(kMiB, 21);
  const std::string new_bytes = random_bytes(kMiB, 22);
  put_object(h, "o", old_bytes);
  const std::uint64_t old_offset = h.object("o")->offset;
  start_mount();
  Fd reader(::open(obj("h", "o").c_str(), O_RDONLY));
  ASSERT_TRUE(reader.ok()) << std::strerror(errno);
  std::string first(64 * kKiB, '\0');
  ASSERT_EQ(::pread(reader.get(), first.data(), first.size(), 0),
            static_cast<ssize_t>(first.size()));
  EXPECT_EQ(first, old_bytes.substr(0, first.size()));

  ASSERT_TRUE(h.destroy<std::byte>("o"));
  put_object(h, "o", new_bytes);
  EXPECT_EQ(h.object("o")->offset, old_offset) << "the test wants the block reused";

  std::string second(64 * kKiB, '\0');
  EXPECT_EQ(::pread(reader.get(), second.data(), second.size(), first.size()), -1);
  EXPECT_EQ(errno, ESTALE);
  const std::string expected = dir_ / "new.bin";
  write_string(expected, new_bytes);
  EXPECT_EQ(sh("cat " + q(obj("h", "o")) + " | cmp - " + q(expected)).status, 0);
}

// mmap: a bag maps (its bytes never change); an object does not (ENODEV,
// documented in docs/fs.md: objects are direct I/O, which Debian 12's
// kernel cannot map, so that every read is the heap's bytes now).
TEST_F(FsTest, BagsMapAndObjectsRefuseMmapWithEnodev) {
  Heap h = make_heap("h");
  put_object(h, "o", "object bytes");
  const std::string payload = random_bytes(3 * 4096 + 5, 31);
  store_->put_bag("b", as_bytes(payload));
  start_mount();
  Fd bag_fd(::open(bag("b").c_str(), O_RDONLY));
  ASSERT_TRUE(bag_fd.ok()) << std::strerror(errno);
  void* map = ::mmap(nullptr, payload.size(), PROT_READ, MAP_SHARED, bag_fd.get(), 0);
  ASSERT_NE(map, MAP_FAILED) << std::strerror(errno);
  EXPECT_EQ(std::memcmp(map, payload.data(), payload.size()), 0);
  ::munmap(map, payload.size());

  Fd object_fd(::open(obj("h", "o").c_str(), O_RDONLY));
  ASSERT_TRUE(object_fd.ok()) << std::strerror(errno);
  EXPECT_EQ(::mmap(nullptr, 12, PROT_READ, MAP_SHARED, object_fd.get(), 0), MAP_FAILED);
  EXPECT_EQ(errno, ENODEV);
}

TEST_F(FsTest, WritesInsideAnObjectChangeItsBytes) {
  Heap h = make_heap("h");
  put_object(h, "n", "0123456789abcdef");
  start_mount();

  const ShellResult dd =
      sh("printf ABCD | dd of=" + q(obj("h", "n")) + " bs=1 seek=4 conv=notrunc 2>&1");
  EXPECT_EQ(dd.status, 0) << dd;
  EXPECT_EQ(object_string(h, "n"), "0123ABCD89abcdef");
  EXPECT_EQ(h.object("n")->size, 16u);
  EXPECT_EQ(sh("cat " + q(obj("h", "n"))).out, "0123ABCD89abcdef");
  EXPECT_EQ(sh("stat -c %s " + q(obj("h", "n"))).out, "16\n");

  Fd fd(::open(obj("h", "n").c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.ok()) << std::strerror(errno);
  EXPECT_EQ(::pwrite(fd.get(), "xyz", 3, 13), 3) << std::strerror(errno);  // up to the last byte
  ASSERT_EQ(fd.close(), 0);
  EXPECT_EQ(object_string(h, "n"), "0123ABCD89abcxyz");
}

TEST_F(FsTest, WritesPastAnObjectsEndFailWithEfbigAndChangeNothing) {
  Heap h = make_heap("h");
  put_object(h, "n", "0123456789abcdef");
  start_mount();

  Fd fd(::open(obj("h", "n").c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.ok()) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(::pwrite(fd.get(), "WXYZ", 4, 14), -1);  // straddles the end
  EXPECT_EQ(errno, EFBIG) << std::strerror(errno);
  errno = 0;
  EXPECT_EQ(::pwrite(fd.get(), "W", 1, 16), -1);  // just past it
  EXPECT_EQ(errno, EFBIG) << std::strerror(errno);
  ASSERT_EQ(fd.close(), 0);
  EXPECT_EQ(object_string(h, "n"), "0123456789abcdef");
  EXPECT_EQ(h.object("n")->size, 16u);

  const ShellResult dd =
      sh("printf XXXXXXXX | dd of=" + q(obj("h", "n")) + " bs=8 seek=2 conv=notrunc 2>&1");
  EXPECT_NE(dd.status, 0) << dd;
  EXPECT_EQ(object_string(h, "n"), "0123456789abcdef");
  EXPECT_EQ(sh("stat -c %s " + q(obj("h", "n"))).out, "16\n");
}

TEST_F(FsTest, ObjectsKeepTheirSize) {
  Heap h = make_heap("h");
  put_object(h, "n", "0123456789abcdef");
  start_mount();
  const std::string path = obj("h", "n");

  EXPECT_EQ(open_error(path, O_WRONLY | O_TRUNC), EPERM);
  EXPECT_EQ(open_error(path, O_WRONLY | O_APPEND), EPERM);
  EXPECT_EQ(error_of(::truncate(path.c_str(), 8)), EPERM);
  EXPECT_EQ(error_of(::truncate(path.c_str(), 32)), EPERM);
  EXPECT_EQ(error_of(::truncate(path.c_str(), 0)), EPERM);
  EXPECT_EQ(error_of(::truncate(path.c_str(), 16)), 0) << "truncate to its own size";
  EXPECT_NE(sh(": > " + q(path)).status, 0);
  EXPECT_NE(sh("printf more >> " + q(path)).status, 0);
  EXPECT_EQ(object_string(h, "n"), "0123456789abcdef");
  EXPECT_EQ(h.object("n")->size, 16u);
}

TEST_F(FsTest, NewObjectsDirectoriesLinksAndChmodAreRefused) {
  Heap h = make_heap("h");
  put_object(h, "n", "nnnn");
  store_->put_bag("b", as_bytes("bbbb"));
  start_mount();

  EXPECT_EQ(open_error(obj("h", "new"), O_CREAT | O_WRONLY), EPERM);
  EXPECT_FALSE(h.object("new").has_value());
  const std::string src = dir_ / "src.bin";
  write_string(src, "bytes");
  EXPECT_NE(sh("cp " + q(src) + " " + q(obj("h", "new"))).status, 0);
  EXPECT_FALSE(h.object("new").has_value());

  for (const std::string& dir : {mp_ + "/x", mp_ + "/heaps/new", heap_dir("h") + "/x",
                                 objects_dir("h") + "/x", bags_dir() + "/x"}) {
    EXPECT_EQ(error_of(::mkdir(dir.c_str(), 0755)), EPERM) << dir;
  }
  EXPECT_EQ(error_of(::link(bag("b").c_str(), bag("b2").c_str())), EPERM);
  EXPECT_EQ(error_of(::link(obj("h", "n").c_str(), obj("h", "n2").c_str())), EPERM);
  EXPECT_EQ(error_of(::symlink("b", bag("s").c_str())), EPERM);
  EXPECT_EQ(error_of(::symlink("n", obj("h", "s").c_str())), EPERM);
  // A bag's mode keeps its read and write bits only.
  EXPECT_EQ(error_of(::chmod(bag("b").c_str(), 0777)), 0);
  struct stat bag_stat {};
  ASSERT_EQ(::stat(bag("b").c_str(), &bag_stat), 0);
  EXPECT_EQ(bag_stat.st_mode & 07777, 0666u);
  EXPECT_EQ(error_of(::chmod(obj("h", "n").c_str(), 0777)), EPERM);
  EXPECT_EQ(error_of(::chown(bag("b").c_str(), 12345, 12345)), EPERM);

  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{"b"});
  EXPECT_EQ(h.objects().size(), 1u);
  EXPECT_EQ(store_->heaps().size(), 1u);
  EXPECT_EQ(sh("ls " + q(bags_dir())).out, "b\n");
}

// --- Read-only ------------------------------------------------------------------

TEST_F(FsTest, ReadOnlyMountReadsAndRefusesEveryChangeWithErofs) {
  Heap h = make_heap("h");
  put_object(h, "n", "nnnn");
  store_->put_bag("b", as_bytes("bbbb"));
  MountOptions options;
  options.read_only = true;
  start_mount(options);

  EXPECT_EQ(sh("cat " + q(bag("b"))).out, "bbbb");
  EXPECT_EQ(sh("cat " + q(obj("h", "n"))).out, "nnnn");
  EXPECT_EQ(sh("cat " + q(heap_dir("h") + "/info.json") + " >/dev/null").status, 0);
  EXPECT_EQ(get_xattr(bag("b"), "user.sheaf.xxh128").value, store_->bag_info("b").checksum.hex());

  EXPECT_EQ(open_error(bag("new"), O_CREAT | O_WRONLY), EROFS);
  EXPECT_EQ(open_error(bag("b"), O_WRONLY | O_TRUNC), EROFS);
  EXPECT_EQ(open_error(obj("h", "n"), O_WRONLY), EROFS);
  EXPECT_EQ(open_error(obj("h", "n"), O_RDWR), EROFS);
  EXPECT_EQ(error_of(::unlink(bag("b").c_str())), EROFS);
  EXPECT_EQ(error_of(::unlink(obj("h", "n").c_str())), EROFS);
  EXPECT_EQ(error_of(::rename(bag("b").c_str(), bag("c").c_str())), EROFS);
  EXPECT_EQ(error_of(::mkdir(bag("d").c_str(), 0755)), EROFS);
  EXPECT_EQ(error_of(::setxattr(bag("b").c_str(), "user.x", "1", 1, 0)), EROFS);
  const std::string src = dir_ / "src.bin";
  write_string(src, "bytes");
  EXPECT_NE(sh("cp " + q(src) + " " + q(bag("z"))).status, 0);
  EXPECT_NE(sh("printf ABCD | dd of=" + q(obj("h", "n")) + " conv=notrunc 2>&1").status, 0);

  EXPECT_EQ(store_->bag_names(), std::vector<std::string>{"b"});
  EXPECT_TRUE(bag_holds("b", "bbbb"));
  EXPECT_EQ(object_string(h, "n"), "nnnn");
}

// --- A full disk ------------------------------------------------------------------

TEST_F(FsTest, FullDiskFailsTheWriteWithEnospcAndLeavesTheStoreAsItWas) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
  const std::string small = mount_tmpfs("small", "8m");
  const std::string small_store_dir = small + "/store";
  Store small_store = Store::init(small_store_dir).value();
  const std::string keep = random_bytes(64 * kKiB, 12);
  small_store.put_bag("keep", as_bytes(keep));
  const std::string src = dir_ / "big.src";  // on the test's disk, not the tmpfs
  const std::string big = random_bytes(16 * kMiB, 13);
  write_string(src, big);
  start_mount({}, small_store_dir);

  const ShellResult cp = sh("cp " + q(src) + " " + q(bag("big")));
  EXPECT_NE(cp.status, 0) << "cp of 16 MiB into an 8 MiB store succeeded: " << cp;
  EXPECT_EQ(small_store.bag_names(), std::vector<std::string>{"keep"});

  // The same by system calls: ENOSPC from a write, or from close when the
  // bag is committed there.
  {
    Fd fd(::open(bag("big2").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd.ok()) << std::strerror(errno);
    int write_errno = 0;
    std::size_t off = 0;
    while (off < big.size()) {
      const ssize_t n = ::write(fd.get(), big.data() + off, std::min(kMiB, big.size() - off));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        write_errno = errno;
        break;
      }
      off += static_cast<std::size_t>(n);
    }
    errno = 0;
    const int close_rc = fd.close();
    const int close_errno = close_rc == 0 ? 0 : errno;
    EXPECT_TRUE(write_errno == ENOSPC || (write_errno == 0 && close_errno == ENOSPC))
        << "write: " << std::strerror(write_errno) << " after " << off
        << " bytes; close: " << close_rc << " " << std::strerror(close_errno);
  }

  EXPECT_EQ(small_store.bag_names(), std::vector<std::string>{"keep"});
  for (const BagCheck& check : small_store.verify()) {
    EXPECT_TRUE(check.ok()) << check.name << ": " << check.problem;
  }
  EXPECT_TRUE(bag_holds("keep", keep, &small_store));
  EXPECT_TRUE(wait_until([&] { return tmp_entries(small_store_dir).empty(); }))
      << joined(tmp_entries(small_store_dir));
  EXPECT_EQ(sh("ls " + q(bags_dir())).out, "keep\n");

  // The space came back: a small bag goes in through the mount.
  const std::string little = dir_ / "little.bin";
  write_string(little, random_bytes(100 * kKiB, 14));
  const ShellResult after = sh("cp " + q(little) + " " + q(bag("after")));
  EXPECT_EQ(after.status, 0) << after;
  EXPECT_TRUE(bag_holds("after", file_string(little), &small_store));
}

// --- Robustness --------------------------------------------------------------------

TEST_F(FsTest, ReadersKilledMidReadLeaveTheMountServing) {
  const std::string src = dir_ / "big.src";
  const std::string content = random_bytes(8 * kMiB, 15);
  write_string(src, content);
  store_->put_bag("big", as_bytes(content));
  start_mount();
  const std::string path = bag("big");

  // The kernel keeps a bag's pages across opens; drop them before each read
  // so that every read goes to the server, and the kills land in requests.
  const auto drop_cached_pages = [&] {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    ::close(fd);
  };
  // Time one whole read, so that the kills below land inside the reads.
  drop_cached_pages();
  const auto t0 = std::chrono::steady_clock::now();
  const ShellResult whole = sh("dd if=" + q(path) + " of=/dev/null bs=64k 2>&1");
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_EQ(whole.status, 0) << whole;
  const auto most = std::max<std::int64_t>(
      1000, std::chrono::duration_cast<std::chrono::microseconds>(took).count() * 3 / 4);

  std::mt19937 rng(16);
  int killed = 0;
  for (int round = 0; round < 12; ++round) {
    drop_cached_pages();
    Spawned dd({"dd", "if=" + path, "of=/dev/null", "bs=64k"});
    ASSERT_TRUE(dd.started());
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % most));
    dd.kill(SIGKILL);
    if (dd.wait() == 128 + SIGKILL) ++killed;
  }
  EXPECT_GT(killed, 0) << "every dd finished before it was killed";

  // A reader forever in read calls (4 KiB at a time), killed in one of them.
  {
    Child reader([&] {
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) _exit(3);
      char buffer[4096];
      for (;;) {
        off_t off = 0;
        ssize_t n = 0;
        while ((n = ::pread(fd, buffer, sizeof buffer, off)) > 0) off += n;
        if (n < 0) _exit(4);
      }
    });
    std::this_thread::sleep_for(200ms);
    reader.kill();
    EXPECT_EQ(reader.wait_code(), 128 + SIGKILL) << "the reader failed before it was killed";
  }

  const ShellResult cmp = sh("cmp " + q(src) + " " + q(path));
  EXPECT_EQ(cmp.status, 0) << cmp;
  EXPECT_EQ(sh("dd if=" + q(path) + " of=/dev/null bs=64k 2>&1 | grep -c '^8388608 bytes'").out,
            "1\n");
  // No file stays open after its reader died: an unmount that refuses busy
  // mounts goes through.
  const Result<void> stopped = mount_->stop(/*lazy=*/false);
  EXPECT_TRUE(stopped.ok()) << stopped.error().what();
  EXPECT_FALSE(is_mounted(mp_));
}

TEST_F(FsTest, SixteenConcurrentReadersAllGetTheBag) {
  const std::string src = dir_ / "b.src";
  const std::string content = random_bytes(4 * kMiB, 17);
  write_string(src, content);
  store_->put_bag("b", as_bytes(content));
  start_mount();
  const ShellResult want = sh("md5sum < " + q(src));
  ASSERT_EQ(want.status, 0) << want;

  std::vector<ShellResult> results(16);
  {
    std::vector<std::jthread> readers;
    for (std::size_t i = 0; i < results.size(); ++i) {
      readers.emplace_back([&, i] {
        results[i] = i % 2 == 0 ? sh("cmp " + q(src) + " " + q(bag("b")))
                                : sh("cat " + q(bag("b")) + " | md5sum");
      });
    }
  }
  for (std::size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].status, 0) << "reader " << i << ": " << results[i];
    if (i % 2 == 1) {
      EXPECT_EQ(results[i].out, want.out) << "reader " << i;
    }
  }
}

TEST_F(FsTest, HeapGrowingUnderReadersShowsEveryObject) {
  constexpr std::uint64_t kInitial = 1 * kMiB;
  constexpr int kObjects = 3000;  // of 1 KiB: the heap must grow several times
  const std::string path = store_->heap_path("h");
  {
    Heap h = make_heap("h", kInitial);
    put_object(h, "seed", std::string(1024, 's'));
  }
  // The child is forked before the mount's threads exist, so it inherits no
  // lock they hold; it opens the heap itself and grows it when told to.
  Pipe go;
  Pipe done;
  Child grower([&] {
    char c = 0;
    if (!read_byte(go.read_end(), &c)) _exit(3);
    Heap h = Heap::open(path).value();
    for (int i = 0; i < kObjects; ++i) {
      put_object(h, "obj-" + std::to_string(i), std::string(1024, static_cast<char>('a' + i % 26)));
      if (i % 25 == 0) std::this_thread::sleep_for(5ms);  // readers get to run during the growth
    }
    const char d = 'd';
    if (::write(done.write_end(), &d, 1) != 1) _exit(4);
  });
  go.close_read();
  done.close_write();
  start_mount();
  const char g = 'g';
  ASSERT_EQ(::write(go.write_end(), &g, 1), 1);

  const std::string dir = objects_dir("h");
  const std::string reader =
      "set -e\n"
      "ls -l " +
      q(dir) +
      " > /dev/null\n"
      "cat " +
      q(heap_dir("h") + "/info.json") +
      " > /dev/null\n"
      "for f in $(ls " +
      q(dir) +
      " | tail -n 5); do\n"
      "  n=$(wc -c < " +
      q(dir) +
      "/$f)\n"
      "  test \"$n\" -eq 1024 || { echo \"$f has $n bytes\"; exit 1; }\n"
      "done\n";
  int rounds_while_growing = 0;
  int rounds_after = 0;
  std::vector<std::string> failures;
  const auto deadline = std::chrono::steady_clock::now() + 40s;
  bool finished = false;
  while (std::chrono::steady_clock::now() < deadline && rounds_after < 2) {
    pollfd p{done.read_end(), POLLIN, 0};
    if (!finished && ::poll(&p, 1, 0) > 0) finished = true;
    const ShellResult r = sh(reader);
    if (r.status != 0) {
      std::ostringstream text;
      text << r;
      failures.push_back(text.str());
    }
    ++(finished ? rounds_after : rounds_while_growing);
  }
  EXPECT_EQ(grower.wait_code(), 0);
  EXPECT_TRUE(failures.empty()) << failures.size() << " reader rounds failed; first: "
                                << (failures.empty() ? "" : failures.front());
  EXPECT_GT(rounds_while_growing, 0) << "no reader ran while the heap grew";

  Heap h = Heap::open(path).value();
  EXPECT_GT(h.info().size, kInitial) << "the heap did not grow";
  const std::size_t objects = h.objects().size();
  EXPECT_EQ(objects, static_cast<std::size_t>(kObjects + 1));
  EXPECT_EQ(sh("ls " + q(dir) + " | wc -l").out, std::to_string(objects) + "\n");
  EXPECT_EQ(sh("cat " + q(obj("h", "obj-2999"))).out, std::string(1024, 'a' + 2999 % 26));
}

// --- Unmounting ---------------------------------------------------------------------

TEST_F(FsTest, UnmountRefusesWhileAFileIsOpenUnlessLazy) {
  const std::string content = random_bytes(100000, 18);
  store_->put_bag("b", as_bytes(content));
  start_mount();
  Fd fd(::open(bag("b").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.ok()) << std::strerror(errno);

  const Result<void> busy = mount_->stop(/*lazy=*/false);
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.error().code(), Errc::kBusy) << busy.error().what();
  EXPECT_TRUE(is_mounted(mp_));
  EXPECT_EQ(sh("ls " + q(bags_dir())).out, "b\n") << "the mount stopped serving";

  const Result<void> busy_too = unmount(mp_, /*lazy=*/false);
  ASSERT_FALSE(busy_too.ok());
  EXPECT_EQ(busy_too.error().code(), Errc::kBusy) << busy_too.error().what();

  const ShellResult cli = sh(sheaf_cmd("umount " + q(mp_)));
  EXPECT_EQ(cli.status, 7) << cli;  // kExitBusy
  EXPECT_TRUE(is_mounted(mp_));
  EXPECT_TRUE(sh("cat " + q(bag("b"))).out == content);

  const ShellResult lazy = sh(sheaf_cmd("umount --lazy " + q(mp_)));
  EXPECT_EQ(lazy.status, 0) << lazy;
  EXPECT_FALSE(is_mounted(mp_)) << "a lazy unmount leaves the namespace at once";
  EXPECT_NE(sh("mountpoint -q " + q(mp_)).status, 0);
  // The open file still reads, from the detached mount.
  std::string back(content.size(), '\0');
  EXPECT_EQ(::pread(fd.get(), back.data(), back.size(), 0), static_cast<ssize_t>(back.size()))
      << std::strerror(errno);
  EXPECT_TRUE(back == content) << first_difference(back, content);
  EXPECT_EQ(fd.close(), 0);
}

TEST_F(FsTest, StopUnmountsAndUnmountOfANonMountIsNotFound) {
  store_->put_bag("b", as_bytes("b"));
  start_mount();
  const std::optional<std::string> type = mount_type(mp_);
  ASSERT_TRUE(type.has_value());
  EXPECT_EQ(type->rfind("fuse", 0), 0u) << *type;
  const Result<void> stopped = mount_->stop(/*lazy=*/false);
  EXPECT_TRUE(stopped.ok()) << stopped.error().what();
  EXPECT_FALSE(is_mounted(mp_));
  EXPECT_EQ(dir_names(mp_), std::vector<std::string>{}) << "the mount point shows the store";

  const Result<void> again = unmount(mp_);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code(), Errc::kNotFound) << again.error().what();

  // start() refuses a mount point that is not empty and a directory that is not a store.
  const std::string full = dir_ / "full";
  ASSERT_EQ(::mkdir(full.c_str(), 0755), 0);
  write_string(full + "/file", "x");
  detach_.push_back(full);  // should it mount anyway, cleanup detaches it
  EXPECT_FALSE(Mount::start(store_dir_, full).ok());
  EXPECT_FALSE(is_mounted(full));
  const std::string not_store = dir_ / "not-a-store";
  ASSERT_EQ(::mkdir(not_store.c_str(), 0755), 0);
  EXPECT_FALSE(Mount::start(not_store, mp_).ok());
  EXPECT_FALSE(is_mounted(mp_));
}

// --- Inodes ---------------------------------------------------------------------

TEST_F(FsTest, InodesSizesAndTimesAreStableAndInodesDistinct) {
  Heap h = make_heap("h");
  Heap g = make_heap("g");
  put_object(h, "a", "a");
  put_object(h, "b", "bb");
  put_object(h, "c", "ccc");
  put_object(g, "d", "dddd");
  store_->put_bag("x", as_bytes("xxxxx"));
  store_->put_bag("y", as_bytes("yyyyyy"));
  start_mount();

  const std::vector<std::string> files = {obj("h", "a"), obj("h", "b"), obj("h", "c"),
                                          obj("g", "d"), bag("x"),      bag("y")};
  const std::vector<std::string> others = {mp_,
                                           mp_ + "/heaps",
                                           bags_dir(),
                                           heap_dir("h"),
                                           heap_dir("g"),
                                           objects_dir("h"),
                                           objects_dir("g"),
                                           heap_dir("h") + "/info",
                                           heap_dir("h") + "/info.json",
                                           heap_dir("g") + "/info",
                                           heap_dir("g") + "/info.json"};
  std::map<ino_t, std::string> seen;
  for (const auto* list : {&files, &others}) {
    for (const std::string& path : *list) {
      struct stat first {};
      struct stat second {};
      ASSERT_EQ(::lstat(path.c_str(), &first), 0) << path << ": " << std::strerror(errno);
      std::this_thread::sleep_for(5ms);
      ASSERT_EQ(::lstat(path.c_str(), &second), 0) << path;
      EXPECT_EQ(first.st_ino, second.st_ino) << path;
      if (list == &files) {  // objects and bags: unchanged, so sizes and times too
        EXPECT_EQ(first.st_size, second.st_size) << path;
        EXPECT_EQ(first.st_mtim.tv_sec, second.st_mtim.tv_sec) << path;
        EXPECT_EQ(first.st_mtim.tv_nsec, second.st_mtim.tv_nsec) << path;
        EXPECT_EQ(first.st_ctim.tv_sec, second.st_ctim.tv_sec) << path;
        EXPECT_EQ(first.st_ctim.tv_nsec, second.st_ctim.tv_nsec) << path;
      }
      const auto [it, fresh] = seen.emplace(first.st_ino, path);
      EXPECT_TRUE(fresh) << path << " has the inode number of " << it->second;
    }
  }
  // The shell's view agrees.
  const ShellResult i1 = sh("stat -c %i " + q(obj("h", "a")));
  const ShellResult i2 = sh("stat -c %i " + q(obj("h", "a")));
  EXPECT_EQ(i1.out, i2.out);
  EXPECT_NE(i1.out, sh("stat -c %i " + q(obj("h", "b"))).out);

  // find sees every object, two info files per heap and every bag.
  EXPECT_EQ(sh("find " + q(mp_) + " -type f | wc -l").out, "10\n");
  EXPECT_EQ(sh("find " + q(mp_) + " -type d | wc -l").out, "7\n");
  const ShellResult find_errors = sh("find " + q(mp_) + " > /dev/null");
  EXPECT_EQ(find_errors.status, 0) << find_errors;
}

// --- The sheaf command -----------------------------------------------------------------

TEST_F(FsTest, CliMountDaemonizesAndUmountUnmounts) {
  store_->put_bag("b", as_bytes("bag bytes"));
  const ShellResult mounted = sh(sheaf_cmd("mount " + q(store_dir_) + " " + q(mp_)));
  remember_connections();
  ASSERT_EQ(mounted.status, 0) << mounted;
  EXPECT_FALSE(mounted.held_open) << "the daemon kept the caller's stdout or stderr open";
  EXPECT_TRUE(is_mounted(mp_)) << "sheaf mount returned before the mount was up";
  EXPECT_EQ(sh("mountpoint -q " + q(mp_)).status, 0);
  EXPECT_EQ(sh("cat " + q(bag("b"))).out, "bag bytes");
  EXPECT_FALSE(processes_with_arg(sheaf_comm(), mp_).empty()) << "no daemon serves the mount";

  const ShellResult umounted = sh(sheaf_cmd("umount " + q(mp_)));
  EXPECT_EQ(umounted.status, 0) << umounted;
  EXPECT_FALSE(is_mounted(mp_));
  EXPECT_NE(sh("mountpoint -q " + q(mp_)).status, 0);
  // The daemon exits once its mount is gone.
  EXPECT_TRUE(wait_until([&] { return processes_with_arg(sheaf_comm(), mp_).empty(); }))
      << "the daemon is still running";
}

TEST_F(FsTest, CliMountForegroundServesUntilUnmountedOrTerminated) {
  store_->put_bag("b", as_bytes("bag bytes"));
  const std::string log = dir_ / "mount.log";
  {
    Spawned server({kSheaf, "mount", "--foreground", store_dir_, mp_}, log);
    ASSERT_TRUE(server.started());
    ASSERT_TRUE(wait_until([&] { return is_mounted(mp_); })) << file_string(log);
    remember_connections();
    EXPECT_EQ(sh("cat " + q(bag("b"))).out, "bag bytes");
    const ShellResult umounted = sh(sheaf_cmd("umount " + q(mp_)));
    EXPECT_EQ(umounted.status, 0) << umounted;
    const std::optional<int> code = server.wait_for(5s);
    ASSERT_TRUE(code.has_value()) << "sheaf mount --foreground still runs after umount";
    EXPECT_EQ(*code, 0) << file_string(log);
    EXPECT_FALSE(is_mounted(mp_));
  }
  {
    Spawned server({kSheaf, "mount", "--foreground", store_dir_, mp_}, log);
    ASSERT_TRUE(server.started());
    ASSERT_TRUE(wait_until([&] { return is_mounted(mp_); })) << file_string(log);
    remember_connections();
    server.kill(SIGTERM);
    const std::optional<int> code = server.wait_for(5s);
    ASSERT_TRUE(code.has_value()) << "sheaf mount --foreground ignores SIGTERM";
    EXPECT_EQ(*code, 0) << file_string(log);
    EXPECT_TRUE(wait_until([&] { return !is_mounted(mp_); })) << "SIGTERM left the mount";
  }
}

TEST_F(FsTest, CliUmountOfWhatIsNotASheafMountIsNotFound) {
  const std::string plain = dir_ / "plain";
  ASSERT_EQ(::mkdir(plain.c_str(), 0755), 0);
  const ShellResult r = sh(sheaf_cmd("umount " + q(plain)));
  EXPECT_EQ(r.status, 3) << r;
  const ShellResult missing = sh(sheaf_cmd("umount " + q(dir_ / "missing")));
  EXPECT_EQ(missing.status, 3) << missing;
  if (::geteuid() == 0) {
    // A filesystem that is not Sheaf's is left mounted.
    const std::string foreign = mount_tmpfs("foreign", "1m");
    const ShellResult tmpfs = sh(sheaf_cmd("umount " + q(foreign)));
    EXPECT_EQ(tmpfs.status, 3) << tmpfs;
    EXPECT_TRUE(is_mounted(foreign)) << "sheaf umount unmounted a tmpfs";
    const ShellResult tmpfs_lazy = sh(sheaf_cmd("umount --lazy " + q(foreign)));
    EXPECT_EQ(tmpfs_lazy.status, 3) << tmpfs_lazy;
    EXPECT_TRUE(is_mounted(foreign)) << "sheaf umount --lazy unmounted a tmpfs";
  }
}

TEST_F(FsTest, CliMountRefusesWhatIsNotAStore) {
  const std::string not_store = dir_ / "not-a-store";
  ASSERT_EQ(::mkdir(not_store.c_str(), 0755), 0);
  const ShellResult r = sh(sheaf_cmd("mount " + q(not_store) + " " + q(mp_)));
  EXPECT_NE(r.status, 0) << r;
  EXPECT_FALSE(r.held_open);
  EXPECT_FALSE(is_mounted(mp_));
  const ShellResult missing = sh(sheaf_cmd("mount " + q(store_dir_) + " " + q(dir_ / "no-mp")));
  EXPECT_NE(missing.status, 0) << missing;
  EXPECT_FALSE(missing.held_open);
}

}  // namespace
}  // namespace sheaf
