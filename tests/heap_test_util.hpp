// heap_test_util.hpp: what the heap tests share: temporary directories,
// file fingerprints, child processes and pipes.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "sheaf/heap.hpp"

namespace sheaf::testing {

// A fresh directory, removed with everything in it when the test ends.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "sheaf-test-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_file(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A child process running body; killed (SIGKILL) and reaped when the test
// leaves its scope still running it, so a failing test leaves no process behind.
class Child {
 public:
  explicit Child(const std::function<void()>& body) {
    std::fflush(nullptr);  // or the child flushes our buffered output a second time
    pid_ = fork();
    if (pid_ == 0) {
      int code = 0;
      try {
        body();
        if (::testing::Test::HasFailure()) code = 2;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child: %s\n", e.what());
        code = 1;
      }
      std::fflush(nullptr);
      _exit(code);
    }
    if (pid_ < 0) throw std::runtime_error("fork");
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  pid_t pid() const { return pid_; }
  void kill() {
    if (pid_ > 0) ::kill(pid_, SIGKILL);  // never kill(-1, ...)
  }
  // The raw wait status (0 if already reaped).
  int wait() {
    if (pid_ <= 0) return 0;
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return status;
  }
  // 0..255 for an exit, 128 + signal for a death by signal.
  int wait_code() {
    const int status = wait();
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
};

// The sheaf::Error `call` throws, which must say `text` (a test failure if
// it throws none, or one that does not say it):
//   EXPECT_EQ(refusal([&] { heap.release(p); }, "holds no hold").code(), Errc::kInvalidArgument);
inline Error refusal(const std::function<void()>& call, const std::string& text) {
  try {
    call();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find(text), std::string::npos) << e.message();
    return e;
  }
  ADD_FAILURE() << "no error (one saying '" << text << "' was expected)";
  return Error(Errc::kOk, "");
}

// Runs body in a child process and waits for it: 0 when body returned
// normally, 1 when it threw, 2 when a gtest expectation failed in it,
// 128 + signal when it died of one.
inline int run_in_child(const std::function<void()>& body) {
  return Child(body).wait_code();
}

// A pipe whose ends close with it (close-on-exec, so spawned commands do not
// hold them open).
struct Pipe {
  Pipe() {
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  int read_end() const { return fds[0]; }
  int write_end() const { return fds[1]; }
  void close_read() {
    if (fds[0] >= 0) ::close(fds[0]);
    fds[0] = -1;
  }
  void close_write() {
    if (fds[1] >= 0) ::close(fds[1]);
    fds[1] = -1;
  }
  int fds[2] = {-1, -1};
};

// Runs `work` in a child process and, once it has returned, SIGKILLs the
// child with the heap `work` returned still open (its thread caches, its
// holds). True if the child got that far; false if it died or threw before.
inline bool kill_after(const std::function<Heap()>& work) {
  Pipe ready;
  Child child([&] {
    Heap open = work();
    const char byte = 1;
    if (::write(ready.write_end(), &byte, 1) != 1) _exit(3);
    ::pause();
  });
  ready.close_write();  // a child that dies early is an end of file, not a hang
  char byte = 0;
  const bool reached = ::read(ready.read_end(), &byte, 1) == 1;
  child.kill();
  child.wait();
  return reached;
}

// A tmpfs of the given size mounted on dir (created if needed) for as long as
// the guard lives; unmounted however the test ends. ok() is false (and why()
// says why) when the mount failed.
class TmpfsMount {
 public:
  TmpfsMount(const std::string& dir, const std::string& size) : dir_(dir) {
    std::filesystem::create_directories(dir);
    const std::string options = "size=" + size + ",mode=0755";
    if (::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = errno;
    }
  }
  ~TmpfsMount() {
    if (!mounted_) return;
    if (::umount(dir_.c_str()) != 0) ::umount2(dir_.c_str(), MNT_DETACH);  // busy: detach
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  bool ok() const { return mounted_; }
  int error() const { return error_; }
  std::string why() const { return "mount tmpfs on " + dir_ + ": " + std::strerror(error_); }

 private:
  std::string dir_;
  bool mounted_ = false;
  int error_ = 0;
};

}  // namespace sheaf::testing
