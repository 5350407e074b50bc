// iceoryx_peer.hpp: iceoryx 2.0 (Debian's), the zero-copy peer sheaf_msg_bench compares
// heap references with. Included by msg_bench.cpp only when CMake found iceoryx_posh.
//
// A ping-pong between this process and a peer process that runs this same program with
// --iceoryx-peer (a fresh process: iceoryx's runtime must not be forked). Both sides poll,
// as Sheaf's rings spin: the ping is a loaned chunk of N bytes whose first and last byte
// the peer reads; the pong is an 8-byte chunk. RouDi, iceoryx's daemon, is started by
// the benchmark with a configuration whose pools hold chunks of every size benchmarked.
#pragma once

#include <fcntl.h>
#include <linux/futex.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_hoofs/platform/platform_settings.hpp"
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"

extern char** environ;

namespace sheaf_bench::iceoryx {

// The sizes BM_Transfer_HeapRef is measured at.
constexpr std::uint64_t kSizes[] = {64, 4096, 65536, 1 << 20, 16 << 20, 256 << 20};

inline const iox::capro::ServiceDescription kPing{"Sheaf", "Bench", "Ping"};
inline const iox::capro::ServiceDescription kPong{"Sheaf", "Bench", "Pong"};

// What a runtime named `name` leaves when it dies or exits without saying
// goodbye (as every one here does): its socket and its lock file.
inline void remove_runtime_files(const std::string& name) {
  ::unlink((std::string(iox::platform::IOX_UDS_SOCKET_PATH_PREFIX) + name).c_str());
  ::unlink((std::string(iox::platform::IOX_LOCK_FILE_PATH_PREFIX) + name + ".lock").c_str());
}

// RouDi with pools for every size above (a chunk holds its header too, hence the room).
class Roudi {
 public:
  explicit Roudi(const std::string& dir) : config_(dir + "/roudi.toml") {
    std::ofstream toml(config_);
    toml << "[general]\nversion = 1\n\n[[segment]]\n\n";
    // Pools in increasing chunk size (RouDi insists); the first holds the pongs.
    toml << "[[segment.mempool]]\nsize = 1024\ncount = 64\n\n";
    for (const std::uint64_t size : kSizes) {
      toml << "[[segment.mempool]]\nsize = " << size + 1024 << "\ncount = "
           << (size >= (16u << 20)  ? 2
               : size >= (1u << 20) ? 4
                                    : 64)
           << "\n\n";
    }
    toml.close();
    // Its shared memory: removed after it stops unless it was there before
    // (then it is another RouDi's, which ours could not replace anyway).
    const passwd* user = ::getpwuid(::getuid());  // RouDi names a segment after its user
    const std::string user_segment =
        std::string("/dev/shm/") + (user != nullptr ? user->pw_name : "root");
    // (RouDi's runtime is called "roudi": its socket and lock file too.)
    const std::string tmp = iox::platform::IOX_UDS_SOCKET_PATH_PREFIX;
    for (const std::string& name :
         {std::string("/dev/shm/iceoryx_mgmt"), user_segment, tmp + "iox-unique-roudi.lock",
          tmp + "roudi", tmp + "roudi.lock"}) {
      if (::access(name.c_str(), F_OK) != 0) ours_.push_back(name);
    }
    // Through setpriv (util-linux), which execs it with PDEATHSIG set: a
    // benchmark killed outright (SIGKILL) takes RouDi with it.
    std::string setpriv = "setpriv";
    std::string pdeathsig = "--pdeathsig";
    std::string kill = "KILL";
    std::string program = "iox-roudi";
    std::string flag = "-c";
    std::string quiet = "-l";
    std::string level = "off";
    char* argv[] = {setpriv.data(), pdeathsig.data(), kill.data(),  program.data(), flag.data(),
                    config_.data(), quiet.data(),     level.data(), nullptr};
    if (posix_spawnp(&pid_, "setpriv", nullptr, nullptr, argv, environ) != 0) pid_ = -1;
  }
  // Killed outright: asked to stop, RouDi signals every process still
  // registered (this one, whose runtime lives until exit) and then asserts
  // on the peer it cannot find. What it leaves is removed here.
  ~Roudi() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    for (const std::string& name : ours_) ::unlink(name.c_str());
  }
  bool started() const { return pid_ > 0; }

 private:
  std::string config_;
  std::vector<std::string> ours_;
  pid_t pid_ = -1;
};

inline void quiet() {
  iox::log::LogManager::GetLogManager().SetDefaultLogLevel(iox::log::LogLevel::kError);
}

// Whose turn it is to run: a word in a file that the benchmark and the peer
// both map. The peer polls only while it is kIceoryx and sleeps on the word
// (a futex) otherwise, so it takes no core from the benchmarks it is not part
// of, nor from the Sheaf half of the paired one (a poller beside two Sheaf
// processes on two cores would slow them, not measure iceoryx).
class Turn {
 public:
  static constexpr std::uint32_t kPaused = 0;
  static constexpr std::uint32_t kIceoryx = 1;

  // The benchmark creates the file; the peer opens it.
  Turn(const std::string& path, bool create) {
    const int fd = ::open(path.c_str(), create ? O_RDWR | O_CREAT | O_EXCL : O_RDWR, 0600);
    if (fd < 0 || (create && ::ftruncate(fd, sizeof(std::uint32_t)) != 0)) {
      if (fd >= 0) ::close(fd);
      throw std::runtime_error("iceoryx turn file " + path);
    }
    void* p = ::mmap(nullptr, sizeof(std::uint32_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) throw std::runtime_error("mmap " + path);
    word_ = static_cast<std::uint32_t*>(p);
  }
  ~Turn() { ::munmap(word_, sizeof(std::uint32_t)); }
  Turn(const Turn&) = delete;
  Turn& operator=(const Turn&) = delete;

  void set(std::uint32_t turn) {
    if (std::atomic_ref<std::uint32_t>(*word_).exchange(turn) != turn) {
      ::syscall(SYS_futex, word_, FUTEX_WAKE, 1, nullptr, nullptr, 0);
    }
  }
  std::uint32_t get() const {
    return std::atomic_ref<std::uint32_t>(*word_).load(std::memory_order_relaxed);
  }
  // Sleeps while paused, at most about `limit`.
  void wait_while_paused(std::chrono::seconds limit) const {
    const timespec most{static_cast<time_t>(limit.count()), 0};
    ::syscall(SYS_futex, word_, FUTEX_WAIT, kPaused, &most, nullptr, 0);
  }

 private:
  std::uint32_t* word_ = nullptr;
};

// The peer, one for the whole run (a peer killed between benchmarks would
// leave its subscriber, and the chunks queued to it, behind in RouDi for a
// while: iceoryx's known leak after kill -9). It answers each ping with a
// pong, polling while the turn (above) is iceoryx's and sleeping otherwise;
// it dies with the benchmark (PR_SET_PDEATHSIG) and after 10 minutes
// without a ping.
[[noreturn]] inline void run_peer(const char* name, pid_t parent, const char* turn_file) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) _exit(1);  // the parent died before the line above
  quiet();
  const Turn turn(turn_file, false);
  iox::runtime::PoshRuntime::initRuntime(iox::RuntimeName_t(iox::cxx::TruncateToCapacity, name));
  iox::popo::UntypedSubscriber pings(kPing, {/*queueCapacity=*/4});
  iox::popo::UntypedPublisher pongs(kPong);
  auto last = std::chrono::steady_clock::now();
  for (std::uint64_t polls = 0;; ++polls) {
    if ((polls & 0x3f) == 0) {
      if (std::chrono::steady_clock::now() - last > std::chrono::minutes(10)) _exit(0);
      if (turn.get() == Turn::kPaused) turn.wait_while_paused(std::chrono::seconds(1));
    }
    pings.take().and_then([&](const void* ping) {
      last = std::chrono::steady_clock::now();
      const auto* header = iox::mepoo::ChunkHeader::fromUserPayload(ping);
      const auto* bytes = static_cast<const std::uint8_t*>(ping);
      const std::uint32_t n = header->userPayloadSize();
      const std::uint64_t ends = n == 0 ? 0 : bytes[0] + bytes[n - 1];
      pongs.loan(sizeof(std::uint64_t)).and_then([&](void* pong) {
        *static_cast<std::uint64_t*>(pong) = ends;
        pongs.publish(pong);
      });
      pings.release(ping);
    });
  }
}

// This process's side, made once (iceoryx allows one runtime per process).
// `name`: its runtime's, unique to this run (remove_runtime_files() at the end).
class Side {
 public:
  explicit Side(const std::string& name)
      : runtime_((quiet(), iox::runtime::PoshRuntime::initRuntime(
                               iox::RuntimeName_t(iox::cxx::TruncateToCapacity, name)))),
        pings_(kPing),
        pongs_(kPong, {/*queueCapacity=*/4}) {}

  // Until the peer answers (both routes connected), then drops late pongs.
  bool warm_up() {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < until) {
      if (!pings_.hasSubscribers()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
      if (round_trip(64, std::chrono::milliseconds(100))) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        while (pongs_.take().and_then([&](const void* pong) { pongs_.release(pong); })) {
        }
        return true;
      }
    }
    return false;
  }

  // One round trip with an n-byte ping; returns what the peer read, or
  // nothing if no pong came within `patience`.
  std::optional<std::uint64_t> round_trip(std::uint32_t n, std::chrono::milliseconds patience) {
    const auto until = std::chrono::steady_clock::now() + patience;
    bool sent = false;
    pings_.loan(n).and_then([&](void* ping) {
      auto* bytes = static_cast<std::uint8_t*>(ping);
      bytes[0] = 1;
      bytes[n - 1] = 2;
      pings_.publish(ping);
      sent = true;
    });
    if (!sent) throw std::runtime_error("iceoryx: no chunk to loan");
    std::optional<std::uint64_t> ends;
    while (!ends) {
      pongs_.take().and_then([&](const void* pong) {
        ends = *static_cast<const std::uint64_t*>(pong);
        pongs_.release(pong);
      });
      if (!ends && std::chrono::steady_clock::now() > until) break;
    }
    return ends;
  }
  bool connected() const { return pings_.hasSubscribers(); }

 private:
  iox::runtime::PoshRuntime& runtime_;
  iox::popo::UntypedPublisher pings_;
  iox::popo::UntypedSubscriber pongs_;
};

}  // namespace sheaf_bench::iceoryx
