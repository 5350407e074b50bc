// msg_bench.cpp: the message layer beside raw sockets and Boost.Interprocess's
// message_queue, and payloads by heap reference beside copies. Every benchmark
// runs between two processes: it forks its peer, which a manager (forked once,
// on a free loopback port) introduces.
//
//   BM_Msg_SyncRoundTrip/<bytes>   Connection::send + Channel::reply, N bytes each way
//   BM_RawUnix_PingPong/<bytes>    the same bytes over a socketpair, no framing at all
//   BM_RawTcp_PingPong/<bytes>     the same over loopback TCP (TCP_NODELAY)
//   BM_BoostMq_PingPong/<bytes>    two boost::interprocess::message_queue, one each way
//   BM_Msg_Async/100               buffered sends of 100 bytes: items per second
//   BM_Transfer_HeapRef/<bytes>    a Loan of N bytes sent by reference; the receiver reads
//                                  its first and last byte and answers with no payload
//   BM_Transfer_Copy/<bytes>       the same N bytes copied through the channel
//   BM_HeapRef_LargeVsSmall        256 MiB and 64 B by reference, alternating in batches;
//                                  counter "ratio": the p50 of 256 MiB over that of 64 B
//   BM_Iceoryx_PingPong/<bytes>    iceoryx 2.0 (Debian), the zero-copy peer: a loaned chunk
//                                  of N bytes whose first and last byte the peer reads, and
//                                  an 8-byte loaned answer, both sides polling; its daemon
//                                  RouDi is started and stopped by the benchmark
//   BM_HeapRef_VsIceoryx/<bytes>   the two above alternating in batches within one run;
//                                  counter "ratio": HeapRef's p50 over iceoryx's, taken at
//                                  the same moments (this noisy machine's slow spells,
//                                  which can double either one's time, fall on both)
//
// Round trips also report p50_us and p99_us counters (per-iteration times). At the end a
// table gives the medians side by side and the ratios the targets are about.
// The heap for the transfers lives in $SHEAF_BENCH_DIR (default /dev/shm).
#include <benchmark/benchmark.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#include <boost/interprocess/ipc/message_queue.hpp>
#include <chrono>
#include <map>

#include "bench_util.hpp"
#include "sheaf/heap.hpp"
#include "sheaf/msg.hpp"
#include "sheaf/msg_manager.hpp"
#include "table_reporter.hpp"
#if defined(SHEAF_HAVE_ICEORYX)
#include <filesystem>

#include "iceoryx_peer.hpp"
#endif

namespace {

namespace bip = boost::interprocess;
using namespace std::chrono_literals;
using sheaf_bench::cell;

std::string g_manager;  // "127.0.0.1:PORT"
pid_t g_manager_pid = -1;
std::string g_heap_path;  // the transfers' heap
int g_channel_counter = 0;

std::span<const std::byte> bytes_of(const std::vector<std::byte>& v) {
  return {v.data(), v.size()};
}

// --- Peers -------------------------------------------------------------------------------------
// A forked process, killed and reaped when the benchmark is done with it.
class Peer {
 public:
  template <class Body>
  explicit Peer(Body&& body) {
    std::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives a benchmark that was killed
      int code = 0;
      try {
        body();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "peer: %s\n", e.what());
        code = 1;
      }
      std::fflush(nullptr);
      _exit(code);
    }
  }
  ~Peer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

 private:
  pid_t pid_ = -1;
};

void wait_byte(int fd) {
  char b = 0;
  if (::read(fd, &b, 1) != 1) throw std::runtime_error("the peer did not start");
}
void send_byte(int fd) {
  const char b = 1;
  if (::write(fd, &b, 1) != 1) throw std::runtime_error("pipe");
}

// The Sheaf side of a benchmark: a channel owner in a child that echoes each
// message (or only acknowledges it), and the parent's connection to it.
struct SheafPair {
  enum Mode { kEcho, kAck };
  std::unique_ptr<Peer> server;
  std::optional<sheaf::Heap> heap;
  std::optional<sheaf::msg::Client> client;
  std::optional<sheaf::msg::Connection> connection;

  SheafPair(Mode mode, bool with_heap, std::uint32_t max_buffered = 1024) {
    const std::string name =
        "bench-" + std::to_string(::getpid()) + "-" + std::to_string(g_channel_counter++);
    int ready[2];
    if (::pipe(ready) != 0) throw std::runtime_error("pipe");
    server = std::make_unique<Peer>([&] {
      ::close(ready[0]);
      std::optional<sheaf::Heap> mine;
      auto me = sheaf::msg::Client::connect("server", {.manager = g_manager});
      if (with_heap) {
        mine.emplace(sheaf::Heap::open(g_heap_path).value());
        me.attach(*mine);
      }
      auto channel = me.create_channel(name, {.max_buffered = max_buffered});
      send_byte(ready[1]);
      for (;;) {
        sheaf::msg::Message m = channel.receive(sheaf::msg::kForever);
        if (m.event == sheaf::msg::Event::kMessage) {
          if (mode == kEcho) {
            channel.reply(m.index, 0, m.payload.bytes());
          } else {
            const auto b = m.payload.bytes();
            const int touched =
                b.empty() ? 0 : static_cast<int>(b.front()) + static_cast<int>(b.back());
            channel.reply(m.index, touched);
          }
        } else if (m.event == sheaf::msg::Event::kDisconnect ||
                   m.event == sheaf::msg::Event::kDeath) {
          return;
        }
      }
    });
    ::close(ready[1]);
    wait_byte(ready[0]);
    ::close(ready[0]);
    client.emplace(sheaf::msg::Client::connect("client", {.manager = g_manager}));
    if (with_heap) {
      heap.emplace(sheaf::Heap::open(g_heap_path).value());
      client->attach(*heap);
    }
    connection.emplace(client->connect_channel(name, 5s));
  }
  ~SheafPair() { connection.reset(); }
};

// Per-iteration round-trip times, as p50 and p99 counters named with
// `prefix`. The paired benchmarks give only the p50: their p99 measures how
// the scheduler places a peer that slept through the other half's batch
// (sharing this process's core, a whole batch can take 11 us per round trip).
class Latencies {
 public:
  enum Report { kP50AndP99, kP50 };
  explicit Latencies(benchmark::State& state, std::string prefix = "", Report report = kP50AndP99)
      : state_(state), prefix_(std::move(prefix)), report_(report) {
    ns_.reserve(1 << 16);
  }
  void start() { started_ = std::chrono::steady_clock::now(); }
  void stop() {
    ns_.push_back(
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - started_)
            .count());
  }
  double p50_us() {
    if (ns_.empty()) return 0;
    std::nth_element(ns_.begin(), ns_.begin() + ns_.size() / 2, ns_.end());
    return ns_[ns_.size() / 2] / 1000;
  }
  ~Latencies() {
    if (ns_.empty()) return;
    std::sort(ns_.begin(), ns_.end());
    state_.counters[prefix_ + "p50_us"] = ns_[ns_.size() / 2] / 1000;
    if (report_ == kP50) return;
    state_.counters[prefix_ + "p99_us"] =
        ns_[std::min(ns_.size() - 1, ns_.size() * 99 / 100)] / 1000;
  }

 private:
  benchmark::State& state_;
  std::string prefix_;
  Report report_;
  std::vector<double> ns_;
  std::chrono::steady_clock::time_point started_;
};

// --- Round trips ---------------------------------------------------------------------------------
void BM_Msg_SyncRoundTrip(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  sheaf_bench::guarded(state, [&] {
    SheafPair pair(SheafPair::kEcho, false);
    std::vector<std::byte> payload(n, std::byte{7});
    Latencies latencies(state);
    for (auto _ : state) {
      latencies.start();
      sheaf::msg::Reply r = pair.connection->send(1, bytes_of(payload), 5s);
      latencies.stop();
      if (r.payload.size() != n) throw std::runtime_error("short echo");
    }
  });
}

void read_exactly(int fd, char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t got = ::read(fd, p, n);
    if (got <= 0) throw std::runtime_error("read");
    p += got;
    n -= static_cast<std::size_t>(got);
  }
}
void write_exactly(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t put = ::send(fd, p, n, MSG_NOSIGNAL);
    if (put <= 0) throw std::runtime_error("write");
    p += put;
    n -= static_cast<std::size_t>(put);
  }
}

// Echoes n-byte messages on fd until it closes.
void echo_loop(int fd, std::size_t n) {
  std::vector<char> buffer(n);
  for (;;) {
    std::size_t have = 0;
    while (have < n) {
      const ssize_t got = ::read(fd, buffer.data() + have, n - have);
      if (got <= 0) return;
      have += static_cast<std::size_t>(got);
    }
    write_exactly(fd, buffer.data(), n);
  }
}

void ping_pong(benchmark::State& state, int fd, std::size_t n) {
  std::vector<char> out(n, 7);
  std::vector<char> in(n);
  Latencies latencies(state);
  for (auto _ : state) {
    latencies.start();
    write_exactly(fd, out.data(), n);
    read_exactly(fd, in.data(), n);
    latencies.stop();
  }
}

void BM_RawUnix_PingPong(benchmark::State& state) {
  const auto n = std::max<std::size_t>(1, static_cast<std::size_t>(state.range(0)));
  sheaf_bench::guarded(state, [&] {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) throw std::runtime_error("socketpair");
    {
      Peer echo([&] {
        ::close(fds[0]);
        echo_loop(fds[1], n);
      });
      ::close(fds[1]);
      ping_pong(state, fds[0], n);
      ::close(fds[0]);
    }
  });
}

void BM_RawTcp_PingPong(benchmark::State& state) {
  const auto n = std::max<std::size_t>(1, static_cast<std::size_t>(state.range(0)));
  sheaf_bench::guarded(state, [&] {
    const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    if (::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
        ::listen(listener, 1) != 0 ||
        ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      throw std::runtime_error("listen");
    }
    const int one = 1;
    Peer echo([&] {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) return;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      echo_loop(fd, n);
    });
    const int fd = ::accept(listener, nullptr, nullptr);
    ::close(listener);
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ping_pong(state, fd, n);
    ::close(fd);
  });
}

void BM_BoostMq_PingPong(benchmark::State& state) {
  const auto n = std::max<std::size_t>(1, static_cast<std::size_t>(state.range(0)));
  sheaf_bench::guarded(state, [&] {
    const std::string stem = "sheaf-bench-mq-" + std::to_string(::getpid());
    const std::string to_name = stem + "-to";
    const std::string from_name = stem + "-from";
    bip::message_queue::remove(to_name.c_str());
    bip::message_queue::remove(from_name.c_str());
    bip::message_queue to(bip::create_only, to_name.c_str(), 4, n);
    bip::message_queue from(bip::create_only, from_name.c_str(), 4, n);
    {
      Peer echo([&] {
        bip::message_queue in(bip::open_only, to_name.c_str());
        bip::message_queue out(bip::open_only, from_name.c_str());
        std::vector<char> buffer(n);
        for (;;) {
          std::size_t got = 0;
          unsigned priority = 0;
          in.receive(buffer.data(), n, got, priority);
          if (got == 0 && n > 1) return;
          out.send(buffer.data(), got, 0);
        }
      });
      std::vector<char> out(n, 7);
      std::vector<char> in(n);
      Latencies latencies(state);
      for (auto _ : state) {
        latencies.start();
        to.send(out.data(), n, 0);
        std::size_t got = 0;
        unsigned priority = 0;
        from.receive(in.data(), n, got, priority);
        latencies.stop();
      }
    }
    bip::message_queue::remove(to_name.c_str());
    bip::message_queue::remove(from_name.c_str());
  });
}

// --- Throughput ----------------------------------------------------------------------------------
void BM_Msg_Async(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  sheaf_bench::guarded(state, [&] {
    SheafPair pair(SheafPair::kAck, false, 4096);
    std::vector<std::byte> payload(n, std::byte{7});
    for (auto _ : state) pair.connection->buffered_send(1, bytes_of(payload), 5s);
    // Delivered, not only sent: a synchronous message is answered after every
    // buffered one before it (one sender's messages stay in order).
    pair.connection->send(2, std::span<const std::byte>(), 30s);
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
  });
}

// --- Transfers -----------------------------------------------------------------------------------
// One transfer by reference: a loan of n bytes, its first and last byte
// written, sent; the receiver answers with their sum.
void heap_ref_round_trip(SheafPair& pair, std::size_t n) {
  auto loan = sheaf::msg::Loan::allocate(*pair.heap, n);
  loan.bytes().front() = std::byte{1};
  loan.bytes().back() = std::byte{2};
  const sheaf::msg::Reply r = pair.connection->send(1, std::move(loan), 5s);
  if (r.answer != 3) throw std::runtime_error("the receiver did not see the payload");
}

void BM_Transfer_HeapRef(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  sheaf_bench::guarded(state, [&] {
    SheafPair pair(SheafPair::kAck, true);
    if (!pair.connection->by_reference(*pair.heap)) throw std::runtime_error("not by reference");
    Latencies latencies(state);
    for (auto _ : state) {
      latencies.start();
      heap_ref_round_trip(pair, n);
      latencies.stop();
    }
  });
}

// Paired benchmarks alternate what they compare in batches of this many
// round trips: far longer than the warm-up after a switch, far shorter than
// the machine's slow spells (seconds).
constexpr std::uint64_t kPairedBatch = 1024;
// The first round trips of a batch, while the peer that slept gets going
// again (tens of them took 10 us and more), are not counted.
constexpr std::uint64_t kPairedWarmUp = 64;

// The loop of a paired benchmark: round trips of `a` and of `b` in
// alternating batches of kPairedBatch, the first kPairedWarmUp of each not
// counted, `switched(b_next)` called before each batch. Counters: the p50
// of each (named with `a_name` and `b_name`), and "ratio", a's p50 over b's.
template <class A, class B, class Switched>
void run_paired(benchmark::State& state, const std::string& a_name, A&& a,
                const std::string& b_name, B&& b, Switched&& switched) {
  Latencies a_times(state, a_name, Latencies::kP50);
  Latencies b_times(state, b_name, Latencies::kP50);
  std::uint64_t i = 0;
  for (auto _ : state) {
    const bool b_turn = (i / kPairedBatch) % 2 == 1;
    const std::uint64_t in_batch = i++ % kPairedBatch;
    if (in_batch == 0) switched(b_turn);
    if (in_batch < kPairedWarmUp) {
      b_turn ? b() : a();
      continue;
    }
    Latencies& times = b_turn ? b_times : a_times;
    times.start();
    b_turn ? b() : a();
    times.stop();
  }
  // (Only once both were measured: a run shorter than a batch has one.)
  if (a_times.p50_us() > 0 && b_times.p50_us() > 0) {
    state.counters["ratio"] = a_times.p50_us() / b_times.p50_us();
  }
}

// The largest transfer beside the smallest, paired (run_paired) for the
// same reason as BM_HeapRef_VsIceoryx below: counter "ratio" is the p50 of
// 256 MiB over the p50 of 64 B, both taken in the same spells. A
// reference's cost should not depend on its size.
void BM_HeapRef_LargeVsSmall(benchmark::State& state) {
  sheaf_bench::guarded(state, [&] {
    SheafPair pair(SheafPair::kAck, true);
    if (!pair.connection->by_reference(*pair.heap)) throw std::runtime_error("not by reference");
    run_paired(
        state, "large_", [&] { heap_ref_round_trip(pair, std::size_t{256} << 20); }, "small_",
        [&] { heap_ref_round_trip(pair, 64); }, [](bool) {});
  });
}

void BM_Transfer_Copy(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  sheaf_bench::guarded(state, [&] {
    SheafPair pair(SheafPair::kAck, false);
    std::vector<std::byte> payload(n, std::byte{0});
    payload.front() = std::byte{1};
    payload.back() = std::byte{2};
    Latencies latencies(state);
    for (auto _ : state) {
      latencies.start();
      const sheaf::msg::Reply r = pair.connection->send(1, bytes_of(payload), 30s);
      latencies.stop();
      if (r.answer != 3) throw std::runtime_error("the receiver did not see the payload");
    }
  });
}

#if defined(SHEAF_HAVE_ICEORYX)
// --- iceoryx -------------------------------------------------------------------------------------
// The peer is this program run again (iceoryx's runtime must not be
// forked), once for the whole run (iceoryx_peer.hpp says why).
class IceoryxPeer {
 public:
  explicit IceoryxPeer(const std::string& turn_file) {
    std::string self = "/proc/self/exe";
    std::string flag = "--iceoryx-peer";
    std::string parent = std::to_string(::getpid());
    std::string turn = turn_file;
    char* argv[] = {self.data(), flag.data(), name_.data(), parent.data(), turn.data(), nullptr};
    if (posix_spawn(&pid_, "/proc/self/exe", nullptr, nullptr, argv, environ) != 0) pid_ = -1;
  }
  ~IceoryxPeer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      sheaf_bench::iceoryx::remove_runtime_files(name_);
    }
  }
  bool started() const { return pid_ > 0; }

 private:
  std::string name_ = "sheaf-bench-peer-" + std::to_string(::getpid());
  pid_t pid_ = -1;
};

// This process's runtime (a static of iceoryx's, never destroyed).
const std::string kIceoryxSide = "sheaf-bench-" + std::to_string(::getpid());

struct Iceoryx {
  std::string dir;
  std::unique_ptr<sheaf_bench::iceoryx::Roudi> roudi;
  std::unique_ptr<sheaf_bench::iceoryx::Turn> turn;
  std::unique_ptr<sheaf_bench::iceoryx::Side> side;
  std::unique_ptr<IceoryxPeer> peer;
  bool failed = false;
};
Iceoryx g_iceoryx;

// RouDi, this process's side and the peer, started by the first benchmark that
// needs them. Leaves the turn the peer's (warm_up needs it). False, with the
// benchmark skipped, when they did not start.
bool start_iceoryx(benchmark::State& state) {
  using sheaf_bench::iceoryx::Turn;
  Iceoryx& x = g_iceoryx;
  if (!x.side && !x.failed) {
    x.failed = true;  // until it works
    char pattern[] = "/tmp/sheaf-iceoryx-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) {
      state.SkipWithError("mkdtemp");
      return false;
    }
    x.dir = pattern;
    x.roudi = std::make_unique<sheaf_bench::iceoryx::Roudi>(x.dir);
    if (!x.roudi->started()) {
      state.SkipWithError("iox-roudi did not start");
      return false;
    }
    x.turn = std::make_unique<Turn>(x.dir + "/turn", true);
    x.side = std::make_unique<sheaf_bench::iceoryx::Side>(kIceoryxSide);
    x.peer = std::make_unique<IceoryxPeer>(x.dir + "/turn");
    x.failed = !x.peer->started();
  }
  if (x.failed) {
    state.SkipWithError("iceoryx did not start");
    return false;
  }
  x.turn->set(Turn::kIceoryx);
  if (!x.side->warm_up()) {
    x.turn->set(Turn::kPaused);
    state.SkipWithError("the iceoryx peer did not answer");
    return false;
  }
  return true;
}

void iceoryx_round_trip(std::uint32_t n) {
  if (g_iceoryx.side->round_trip(n, 5s) != 3u) {
    throw std::runtime_error("the iceoryx peer did not answer right");
  }
}

void BM_Iceoryx_PingPong(benchmark::State& state) {
  const auto n = static_cast<std::uint32_t>(state.range(0));
  if (!start_iceoryx(state)) return;
  sheaf_bench::guarded(state, [&] {
    Latencies latencies(state);
    for (auto _ : state) {
      latencies.start();
      iceoryx_round_trip(n);
      latencies.stop();
    }
  });
  g_iceoryx.turn->set(sheaf_bench::iceoryx::Turn::kPaused);
}

// The two above in one benchmark, paired (run_paired): alternating in
// batches of kPairedBatch round trips, the one not measured sleeping
// meanwhile (the Sheaf server in its receive, the iceoryx peer on its
// turn). The machine's slow spells, which last far longer than a batch,
// then fall on both alike, and the ratio of their p50s (counter "ratio")
// compares the two at the same moments. An iteration is one round trip of
// either.
void BM_HeapRef_VsIceoryx(benchmark::State& state) {
  using sheaf_bench::iceoryx::Turn;
  const auto n = static_cast<std::size_t>(state.range(0));
  if (!start_iceoryx(state)) return;
  g_iceoryx.turn->set(Turn::kPaused);
  sheaf_bench::guarded(state, [&] {
    SheafPair pair(SheafPair::kAck, true);
    if (!pair.connection->by_reference(*pair.heap)) throw std::runtime_error("not by reference");
    // Both peers asleep before either is woken (the Sheaf server sleeps
    // 20 us into a wait, the iceoryx peer as soon as it sees its turn
    // end): one still running on the other core when the other is woken
    // makes the scheduler put that one on this process's core, where round
    // trips take 11 us until it moves.
    const auto switched = [](bool to_iceoryx) {
      g_iceoryx.turn->set(Turn::kPaused);
      std::this_thread::sleep_for(200us);
      if (to_iceoryx) g_iceoryx.turn->set(Turn::kIceoryx);
    };
    run_paired(
        state, "ref_", [&] { heap_ref_round_trip(pair, n); }, "iceoryx_",
        [&] { iceoryx_round_trip(static_cast<std::uint32_t>(n)); }, switched);
  });
  g_iceoryx.turn->set(Turn::kPaused);
}

void stop_iceoryx() noexcept {
  g_iceoryx.peer.reset();
  g_iceoryx.turn.reset();
  const bool had_side = g_iceoryx.side != nullptr;
  g_iceoryx.side.reset();
  g_iceoryx.roudi.reset();
  if (had_side) sheaf_bench::iceoryx::remove_runtime_files(kIceoryxSide);
  if (!g_iceoryx.dir.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(g_iceoryx.dir, ignored);
  }
}
#endif

constexpr std::int64_t kRoundTripSizes[] = {0, 100, 1000, 10000};
constexpr std::int64_t kTransferSizes[] = {64, 4096, 65536, 1 << 20, 16 << 20, 256 << 20};

void round_trip_args(benchmark::internal::Benchmark* b) {
  for (auto n : kRoundTripSizes) b->Arg(n);
  b->UseRealTime()->Unit(benchmark::kMicrosecond);
}
void transfer_args(benchmark::internal::Benchmark* b) {
  for (auto n : kTransferSizes) b->Arg(n);
  b->UseRealTime()->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_Msg_SyncRoundTrip)->Apply(round_trip_args);
BENCHMARK(BM_RawUnix_PingPong)->Apply(round_trip_args);
BENCHMARK(BM_RawTcp_PingPong)->Apply(round_trip_args);
BENCHMARK(BM_BoostMq_PingPong)->Apply(round_trip_args);
BENCHMARK(BM_Msg_Async)->Arg(100)->UseRealTime();
BENCHMARK(BM_Transfer_HeapRef)->Apply(transfer_args);
BENCHMARK(BM_Transfer_Copy)->Apply(transfer_args);
BENCHMARK(BM_HeapRef_LargeVsSmall)->UseRealTime()->Unit(benchmark::kMicrosecond);
#if defined(SHEAF_HAVE_ICEORYX)
BENCHMARK(BM_Iceoryx_PingPong)->Apply(transfer_args);
BENCHMARK(BM_HeapRef_VsIceoryx)->Apply(transfer_args);
#endif

// --- The table ---------------------------------------------------------------------------------
class MsgReporter : public sheaf_bench::TableReporter {
 public:
  using TableReporter::TableReporter;

 private:
  void collect(const Run& run) override {
    const std::string key = run.run_name.function_name + "/" + run.run_name.args;
    const double us =
        run.GetAdjustedRealTime() * 1e6 / benchmark::GetTimeUnitMultiplier(run.time_unit);
    times_[key].add(run, us);
    if (auto it = run.counters.find("items_per_second"); it != run.counters.end()) {
      rates_[key].add(run, it->second.value);
    }
    if (auto it = run.counters.find("ratio"); it != run.counters.end()) {
      rates_[key].add(run, it->second.value);
    }
  }

  double us(const std::string& key) const {
    auto it = times_.find(key);
    return it == times_.end() ? -1 : it->second.value();
  }

  void print_table(std::ostream& out) const override {
    char line[256];
    out << "\nRound trips, us (medians), and the message layer's time over raw Unix sockets'\n";
    std::snprintf(line, sizeof line, "%-8s %10s %10s %10s %10s %12s\n", "bytes", "Sheaf", "RawUnix",
                  "RawTcp", "BoostMq", "Sheaf/Unix");
    out << line;
    for (auto n : kRoundTripSizes) {
      const std::string a = "/" + std::to_string(n);
      const double sheaf = us("BM_Msg_SyncRoundTrip" + a);
      const double unix_socket = us("BM_RawUnix_PingPong" + a);
      std::snprintf(line, sizeof line, "%-8lld %10s %10s %10s %10s %12s\n",
                    static_cast<long long>(n), cell(sheaf, "%.1f").c_str(),
                    cell(unix_socket, "%.1f").c_str(),
                    cell(us("BM_RawTcp_PingPong" + a), "%.1f").c_str(),
                    cell(us("BM_BoostMq_PingPong" + a), "%.1f").c_str(),
                    cell(sheaf > 0 && unix_socket > 0 ? sheaf / unix_socket : -1, "%.2fx").c_str());
      out << line;
    }
    if (auto it = rates_.find("BM_Msg_Async/100"); it != rates_.end()) {
      out << "\nBuffered 100-byte messages: " << cell(it->second.value(), "%.0f")
          << " per second\n";
    }
    out << "\nTransfers (send + empty reply), us (medians): by heap reference, by copy, and "
           "iceoryx's loaned-chunk ping-pong;\nHeapRef/Iceoryx from the two runs, and paired: "
           "from BM_HeapRef_VsIceoryx, the two alternating\n";
    std::snprintf(line, sizeof line, "%-10s %12s %12s %12s %10s %15s %8s\n", "bytes", "HeapRef",
                  "Copy", "Copy/HeapRef", "Iceoryx", "HeapRef/Iceoryx", "paired");
    out << line;
    for (auto n : kTransferSizes) {
      const std::string a = "/" + std::to_string(n);
      const double ref = us("BM_Transfer_HeapRef" + a);
      const double copy = us("BM_Transfer_Copy" + a);
      const double iceoryx = us("BM_Iceoryx_PingPong" + a);
      auto paired = rates_.find("BM_HeapRef_VsIceoryx" + a);
      std::snprintf(line, sizeof line, "%-10lld %12s %12s %12s %10s %15s %8s\n",
                    static_cast<long long>(n), cell(ref, "%.1f").c_str(),
                    cell(copy, "%.1f").c_str(),
                    cell(ref > 0 && copy > 0 ? copy / ref : -1, "%.1fx").c_str(),
                    cell(iceoryx, "%.1f").c_str(),
                    cell(ref > 0 && iceoryx > 0 ? ref / iceoryx : -1, "%.2fx").c_str(),
                    cell(paired != rates_.end() ? paired->second.value() : -1, "%.2fx").c_str());
      out << line;
    }
    const double smallest = us("BM_Transfer_HeapRef/64");
    const double largest = us("BM_Transfer_HeapRef/" + std::to_string(kTransferSizes[5]));
    const auto paired = rates_.find("BM_HeapRef_LargeVsSmall/");
    if ((smallest > 0 && largest > 0) || paired != rates_.end()) {
      out << "HeapRef 256 MiB / 64 B: "
          << cell(smallest > 0 && largest > 0 ? largest / smallest : -1, "%.2fx")
          << " from the two runs, "
          << cell(paired != rates_.end() ? paired->second.value() : -1, "%.2fx")
          << " paired (BM_HeapRef_LargeVsSmall, the two alternating)\n";
    }
    out << std::flush;
  }

  std::map<std::string, sheaf_bench::Median> times_;
  std::map<std::string, sheaf_bench::Median> rates_;
};

void stop_manager() noexcept {
  if (g_manager_pid > 0) {
    ::kill(g_manager_pid, SIGKILL);
    ::waitpid(g_manager_pid, nullptr, 0);
    g_manager_pid = -1;
  }
  if (!g_heap_path.empty()) ::unlink(g_heap_path.c_str());
#if defined(SHEAF_HAVE_ICEORYX)
  stop_iceoryx();  // last: this process's iceoryx runtime complains once RouDi is gone
#endif
}

}  // namespace

int main(int argc, char** argv) {
#if defined(SHEAF_HAVE_ICEORYX)
  if (argc == 5 && std::string_view(argv[1]) == "--iceoryx-peer") {
    sheaf_bench::iceoryx::run_peer(argv[2], static_cast<pid_t>(std::atol(argv[3])), argv[4]);
  }
#endif
  if (!sheaf_bench::initialize_interleaved(argc, argv)) return 1;
  std::signal(SIGPIPE, SIG_IGN);
  g_heap_path = sheaf_bench::bench_dir("/dev/shm") + "/sheaf-msg-bench-" +
                std::to_string(::getpid()) + ".heap";
  // The transfers' heap: room for the largest payload, twice.
  sheaf::Heap::create(g_heap_path, {.initial_size = std::uint64_t{640} << 20})
      .value()
      .close()
      .value();
  int ready[2];
  if (::pipe(ready) != 0) return 1;
  std::fflush(nullptr);
  g_manager_pid = ::fork();
  if (g_manager_pid == 0) {
    ::close(ready[0]);
    sheaf::msg::Manager manager({.listen = "127.0.0.1:0"});
    const std::string address = manager.address();
    if (::write(ready[1], address.data(), address.size()) < 0) _exit(1);
    ::close(ready[1]);
    manager.run();
    _exit(0);
  }
  ::close(ready[1]);
  char text[64] = {};
  if (::read(ready[0], text, sizeof(text) - 1) <= 0) return 1;
  ::close(ready[0]);
  g_manager = text;
  sheaf_bench::clean_up_on_fatal_signals(stop_manager);

  MsgReporter reporter(sheaf_bench::console_options());
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  stop_manager();
#if defined(SHEAF_HAVE_ICEORYX)
  // iceoryx's runtime, a static, would say goodbye to a RouDi that is gone.
  std::fflush(nullptr);
  _exit(0);
#endif
  return 0;
}
