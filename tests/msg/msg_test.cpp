// msg_test.cpp: the message layer between real processes: a manager in a
// child process, owners and clients in others, real sockets, real kills.
#include <grp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../heap_test_util.hpp"
#include "addresses.hpp"
#include "client_state.hpp"
#include "peers.hpp"
#include "posix.hpp"
#include "sheaf/error.hpp"
#include "sheaf/heap.hpp"
#include "sheaf/msg.hpp"
#include "sheaf/msg_manager.hpp"

namespace sheaf::msg {
namespace {

using namespace std::chrono_literals;
using sheaf::testing::Child;
using sheaf::testing::Pipe;
using sheaf::testing::refusal;
using sheaf::testing::TempDir;

std::span<const std::byte> as_bytes(std::string_view text) {
  return std::as_bytes(std::span(text.data(), text.size()));
}

// Blocks until the other end writes a byte (or closes); false on close.
bool wait_signal(Pipe& pipe) {
  char byte = 0;
  return ::read(pipe.read_end(), &byte, 1) == 1;
}
void signal(Pipe& pipe) {
  const char byte = 1;
  ASSERT_EQ(::write(pipe.write_end(), &byte, 1), 1);
}

// Makes this (child) process the user nobody, with `primary` as its group
// and `others` as the rest: what `setpriv --reuid=nobody --regid=... --groups=...`
// does. Exits with 9 if it cannot.
void become_nobody(gid_t primary = 65534, const std::vector<gid_t>& others = {}) {
  if (::setgroups(others.size(), others.data()) != 0 ||
      ::setresgid(primary, primary, primary) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
    _exit(9);
  }
}

// A manager in a child process, on a port of its choosing (or the one given,
// to restart it where it was).
class ManagerProcess {
 public:
  explicit ManagerProcess(std::uint16_t port = 0) {
    Pipe ready;
    child_ = std::make_unique<Child>([&] {
      Manager manager({.listen = "127.0.0.1:" + std::to_string(port)});
      const std::string address = manager.address();
      const auto colon = address.rfind(':');
      const std::uint16_t bound = static_cast<std::uint16_t>(std::stoi(address.substr(colon + 1)));
      if (::write(ready.write_end(), &bound, sizeof(bound)) != sizeof(bound)) _exit(3);
      manager.run();
    });
    ready.close_write();
    if (::read(ready.read_end(), &port_, sizeof(port_)) != sizeof(port_)) {
      throw std::runtime_error("the manager did not start");
    }
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::uint16_t port() const { return port_; }
  void kill() {
    child_->kill();
    child_->wait();
  }

 private:
  std::unique_ptr<Child> child_;
  std::uint16_t port_ = 0;
};

class MsgTest : public ::testing::Test {
 protected:
  Client client(const std::string& id) {
    return Client::connect(id, {.manager = manager.address(), .timeout = 5000ms});
  }
  ManagerProcess manager;
};

TEST_F(MsgTest, SynchronousSendIsAnsweredByReply) {
  Child server([&] {
    Client me = client("server");
    Channel channel = me.create_channel("upper");
    // Pings are answered inside receive(), as MESSIP's are: serve until
    // the client says goodbye.
    for (int answered = 0;;) {
      Message m = channel.receive(5s);
      ASSERT_NE(m.event, Event::kTimeout);
      if (m.event == Event::kDisconnect) {
        EXPECT_EQ(answered, 3);
        break;
      }
      ASSERT_EQ(m.event, Event::kMessage);
      EXPECT_EQ(m.sender, "client");
      std::string text(m.payload.text());
      for (char& c : text) c = static_cast<char>(std::toupper(c));
      channel.reply(m.index, m.type * 10, as_bytes(text));
      ++answered;
    }
  });
  Client me = client("client");
  Connection upper = me.connect_channel("upper", 5s, /*wait=*/true);
  for (int i = 1; i <= 3; ++i) {
    const std::string text = "message " + std::to_string(i);
    Reply r = upper.send(i, as_bytes(text), 5s);
    EXPECT_EQ(r.answer, i * 10);
    EXPECT_EQ(r.payload.text(), "MESSAGE " + std::to_string(i));
    EXPECT_FALSE(r.payload.by_reference());
  }
  EXPECT_LT(upper.ping(1s), 1s);
  upper.disconnect();
  EXPECT_EQ(server.wait_code(), 0);
}

TEST_F(MsgTest, ChannelNamesAreUniqueAndListed) {
  Client owner = client("owner");
  Channel a = owner.create_channel("a", {.max_buffered = 7});
  Client other = client("other");
  try {
    other.create_channel("a");
    FAIL() << "a second channel named a was created";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kAlreadyExists);
    EXPECT_NE(e.message().find("owner"), std::string::npos) << e.message();
  }
  const auto list = other.channels();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name, "a");
  EXPECT_EQ(list[0].owner, "owner");
  EXPECT_EQ(list[0].pid, ::getpid());
  EXPECT_EQ(list[0].max_buffered, 7u);
  EXPECT_TRUE(list[0].address.starts_with("unix:/")) << list[0].address;
  try {
    other.connect_channel("nope", 1s);
    FAIL() << "connected to a channel nobody created";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kNotFound);
  }
  EXPECT_THROW(owner.create_channel("bad name"), Error);
  EXPECT_THROW(owner.create_channel(std::string(48, 'x')), Error);
}

// Where a client looks for the manager, in order: the address it is given,
// $SHEAF_MANAGER, the first line of /etc/sheaf/manager, 127.0.0.1:9200. The
// file is tested in a mount namespace of a child's own, over a tmpfs on
// /etc, so the machine's /etc is never touched.
TEST(ManagerAddress, TheCallThenTheEnvironmentThenTheFileThenTheDefault) {
  if (::getuid() != 0) GTEST_SKIP() << "needs root for a mount namespace";
  const int code = sheaf::testing::run_in_child([] {
    ASSERT_EQ(::unshare(CLONE_NEWNS), 0) << std::strerror(errno);
    ASSERT_EQ(::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0);
    ASSERT_EQ(::mount("tmpfs", "/etc", "tmpfs", 0, "size=1m"), 0) << std::strerror(errno);
    ::unsetenv("SHEAF_MANAGER");
    EXPECT_EQ(manager_address(), "127.0.0.1:9200");  // nothing says otherwise
    ASSERT_EQ(::mkdir("/etc/sheaf", 0755), 0);
    {
      std::ofstream file(kManagerConfigFile);
      file << "  127.0.0.9:9300 \nignored\n";
    }
    EXPECT_EQ(manager_address(), "127.0.0.9:9300");
    ::setenv("SHEAF_MANAGER", "127.0.0.7:7000", 1);
    EXPECT_EQ(manager_address(), "127.0.0.7:7000");
    EXPECT_EQ(manager_address("127.0.0.8:8000"), "127.0.0.8:8000");
  });
  EXPECT_EQ(code, 0);
}

// How many shared-memory rings this process has open (memfds named
// "sheaf-msg-ring", msg/src/ring.cpp).
int open_rings() {
  int rings = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(entry.path(), ec).string();
    if (!ec && target.starts_with("/memfd:sheaf-msg-ring")) ++rings;
  }
  return rings;
}

// On one host a connection carries its frames in shared-memory rings,
// chosen without being asked; SHEAF_MSG_RINGS=0 keeps them on the socket
// (CI runs all of these tests both ways).
TEST_F(MsgTest, OneHostsConnectionsUseRingsUnlessToldNotTo) {
  const char* setting = std::getenv("SHEAF_MSG_RINGS");
  const bool rings_off = setting != nullptr && std::string_view(setting) == "0";
  Client owner = client("owner");
  Channel channel = owner.create_channel("ringed");
  Child sender([this] {
    Client c = client("sender");
    Connection to = c.connect_channel("ringed", 5s);
    EXPECT_EQ(to.send(1, as_bytes("x"), 5s).answer, 2);
  });
  bool answered = false;
  for (int i = 0; i < 50 && !answered; ++i) {  // bounded: 5 s
    Message m = channel.receive(100ms);
    if (m.event == Event::kMessage) {
      // The sender's connection, as the owner holds it: rings or none.
      EXPECT_EQ(open_rings(), rings_off ? 0 : 1);
      channel.reply(m.index, 2);
      answered = true;
    }
  }
  EXPECT_TRUE(answered);
  EXPECT_EQ(sender.wait_code(), 0);
}

// The policy alone, fed wait lengths: three waits in a row past the window
// shorten the spin, but for a probe of the whole window every eighth wait;
// one wait within the window restores it.
TEST(SpinBudget, ShortensAfterLongWaitsProbesAndRecoversAfterAShortOne) {
  using msg::SpinBudget;
  const std::uint64_t window = msg::spin_ns();
  if (window <= SpinBudget::kShortNs) GTEST_SKIP() << "SHEAF_MSG_SPIN_US is too small";
  SpinBudget budget;
  for (unsigned i = 0; i < SpinBudget::kPatience; ++i) {
    EXPECT_EQ(budget.ns(), window) << "after " << i << " long waits";
    budget.waited(window * 3);
  }
  int probes = 0;
  for (unsigned i = 0; i < 10 * SpinBudget::kProbeEvery; ++i) {
    const std::uint64_t spin = budget.ns();
    EXPECT_TRUE(spin == SpinBudget::kShortNs || spin == window);
    probes += spin == window;
    budget.waited(window * 100);
  }
  EXPECT_EQ(probes, 10);
  budget.waited(window / 2);
  EXPECT_EQ(budget.ns(), window);
  // In the short mode a wait that slept and ended within the window and a
  // wake-up brings the window back; in the whole window the same wait is a
  // long one.
  for (unsigned i = 0; i < SpinBudget::kPatience; ++i) budget.waited(window * 3);
  ASSERT_EQ(budget.ns(), SpinBudget::kShortNs);
  budget.waited(window + SpinBudget::kWakeUpNs / 2);
  EXPECT_EQ(budget.ns(), window);
  for (unsigned i = 0; i < SpinBudget::kPatience; ++i) {
    budget.waited(window + SpinBudget::kWakeUpNs / 2);
  }
  EXPECT_EQ(budget.ns(), SpinBudget::kShortNs);
  budget.waited(window / 2);
  // Long waits that do not come in a row never shorten it.
  for (int i = 0; i < 10; ++i) {
    budget.waited(window * 3);
    budget.waited(window * 3);
    budget.waited(window / 4);
  }
  EXPECT_EQ(budget.ns(), window);
}

// A client whose server takes milliseconds to answer stops spinning on the
// ring after a few such waits (SpinBudget, ring.hpp) instead of spinning the
// whole window in vain at every request (kAsks windows; a fixed window
// fails this test).
TEST_F(MsgTest, AClientOfASlowServerStopsSpinningInVain) {
  const char* rings = std::getenv("SHEAF_MSG_RINGS");
  if (rings != nullptr && std::string_view(rings) == "0") GTEST_SKIP() << "no rings, no spin";
  constexpr int kAsks = 40;
  Client owner = client("slow");
  Channel channel = owner.create_channel("slow-server");
  Pipe report;
  Child asker([&] {
    report.close_read();
    Client c = client("asker");
    Connection to = c.connect_channel("slow-server", 5s);
    to.send(0, as_bytes("warm-up"), 5s);
    const std::uint64_t before = msg::spin_in_vain_ns();
    for (int i = 0; i < kAsks; ++i) to.send(1, as_bytes("x"), 5s);
    const std::uint64_t in_vain = msg::spin_in_vain_ns() - before;
    if (::write(report.write_end(), &in_vain, sizeof(in_vain)) != sizeof(in_vain)) _exit(3);
  });
  report.close_write();
  int answered = 0;
  for (int i = 0; i < 1000 && answered < kAsks + 1; ++i) {  // bounded: 100 s
    Message m = channel.receive(100ms);
    if (m.event != Event::kMessage) continue;
    std::this_thread::sleep_for(2ms);  // a slow server
    // With a payload: a frame whose rest comes just after its header must
    // not count as a fast answer.
    channel.reply(m.index, 0, as_bytes("a reply with a payload of some length"));
    ++answered;
  }
  std::uint64_t in_vain = 0;
  ASSERT_EQ(::read(report.read_end(), &in_vain, sizeof(in_vain)),
            static_cast<ssize_t>(sizeof(in_vain)));
  EXPECT_EQ(asker.wait_code(), 0);
  EXPECT_EQ(answered, kAsks + 1);
  // A fixed window would spin it all in vain at every request: kAsks windows.
  const std::uint64_t window = msg::spin_ns();
  ASSERT_GT(window, 0u) << "SHEAF_MSG_SPIN_US=0: nothing spins";
  using msg::SpinBudget;
  EXPECT_GE(in_vain, SpinBudget::kPatience * window) << "the asker never spun in vain";
  const std::uint64_t probes = kAsks / SpinBudget::kProbeEvery + 1;
  // (And a few windows more: a reply's payload that comes later than its
  // header, the writer preempted between the two, is waited for too.)
  constexpr std::uint64_t kSlack = 4;
  EXPECT_LE(in_vain,
            (SpinBudget::kPatience + probes + kSlack) * window + kAsks * SpinBudget::kShortNs)
      << "the asker spun " << in_vain << " ns in vain over " << kAsks << " requests";
}

// A Unix socket bound at `path` (closed again unless `listen`): what an owner
// killed with SIGKILL leaves behind, or a live owner's.
int bind_socket_at(const std::string& path, bool listen) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
  if (fd < 0 || ::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0 ||
      (listen && ::listen(fd, 4) != 0)) {
    ADD_FAILURE() << "cannot bind " << path << ": " << std::strerror(errno);
  }
  if (!listen) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Channel owners killed with SIGKILL leave their sockets in the runtime
// directory (tens of thousands had piled up on a test machine). A process's
// first channel there removes those of dead processes on which nobody
// listens, and keeps one that still answers (an owner in another pid
// namespace sharing the directory).
TEST_F(MsgTest, SocketsThatKilledOwnersLeftAreSweptAway) {
  Child gone([] { _exit(0); });
  const pid_t dead = gone.pid();
  ASSERT_EQ(gone.wait_code(), 0);
  const std::string dir = msg::runtime_dir();
  const std::string stale = dir + "/c-" + std::to_string(dead) + "-0.sock";
  const std::string answering = dir + "/c-" + std::to_string(dead) + "-1.sock";
  const std::string not_ours = dir + "/notes.sock";
  ::unlink(stale.c_str());
  ::unlink(answering.c_str());
  bind_socket_at(stale, false);
  const int listener = bind_socket_at(answering, true);
  bind_socket_at(not_ours, false);
  ASSERT_TRUE(std::filesystem::exists(stale));
  Child sweeper([this] {  // a fresh process: its first channel sweeps
    Client c = client("sweeper");
    Channel channel = c.create_channel("sweeper-channel");
  });
  EXPECT_EQ(sweeper.wait_code(), 0);
  EXPECT_FALSE(std::filesystem::exists(stale)) << stale;
  EXPECT_TRUE(std::filesystem::exists(answering)) << answering;
  EXPECT_TRUE(std::filesystem::exists(not_ours)) << not_ours;
  ::close(listener);
  ::unlink(answering.c_str());
  ::unlink(not_ours.c_str());
}

// Deleting a channel (its destructor) frees its name at once, while its
// owner lives: the manager forgets it, a client cannot reach it, and the
// name can be taken again. And the manager answers a ping.
TEST_F(MsgTest, ADeletedChannelsNameIsFreeAgain) {
  Client owner = client("owner");
  Client other = client("other");
  const std::chrono::nanoseconds round_trip = other.ping();
  EXPECT_GT(round_trip.count(), 0);
  EXPECT_LT(round_trip, 5s);
  {
    Channel temporary = owner.create_channel("temporary");
    EXPECT_EQ(other.channels().size(), 1u);
  }
  EXPECT_TRUE(other.channels().empty());
  EXPECT_EQ(refusal([&] { other.connect_channel("temporary", 1s); }, "temporary").code(),
            Errc::kNotFound);
  Channel again = other.create_channel("temporary");
  const auto list = owner.channels();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].owner, "other");
}

TEST_F(MsgTest, ChannelsOfADeadOwnerAreForgotten) {
  Pipe created;
  Child owner([&] {
    Client me = client("doomed");
    Channel c = me.create_channel("doomed-channel");
    signal(created);
    ::pause();
  });
  created.close_write();
  ASSERT_TRUE(wait_signal(created));
  Client me = client("watcher");
  ASSERT_EQ(me.channels().size(), 1u);
  owner.kill();
  owner.wait();
  for (int i = 0; i < 200 && !me.channels().empty(); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(me.channels().empty());
  // Its name is free again.
  Channel mine = me.create_channel("doomed-channel");
}

TEST_F(MsgTest, RepliesInAnyOrderReachTheirSenders) {
  Client me = client("server");
  Channel channel = me.create_channel("order");
  auto sender = [&](std::string id) {
    return std::make_unique<Child>([this, id] {
      Client c = client(id);
      Connection order = c.connect_channel("order", 5s);
      Reply r = order.send(1, as_bytes(id), 5s);
      EXPECT_EQ(r.payload.text(), "for " + id);
    });
  };
  auto first = sender("first");
  auto second = sender("second");
  std::vector<Message> held;
  while (held.size() < 2) {
    Message m = channel.receive(5s);
    ASSERT_NE(m.event, Event::kTimeout);
    if (m.event == Event::kMessage) held.push_back(std::move(m));
  }
  // Answer the later one first.
  for (int i = 1; i >= 0; --i) {
    const std::string text = "for " + held[i].sender;
    channel.reply(held[i].index, 0, as_bytes(text));
  }
  EXPECT_EQ(first->wait_code(), 0);
  EXPECT_EQ(second->wait_code(), 0);
  // An index answered already is refused.
  EXPECT_THROW(channel.reply(held[0].index, 0), Error);
}

TEST_F(MsgTest, AReplyAfterTheTimeoutIsNeverTakenForTheNextOne) {
  Client me = client("server");
  Channel channel = me.create_channel("slow");
  Child client_process([this] {
    Client c = client("impatient");
    Connection slow = c.connect_channel("slow", 5s);
    try {
      slow.send(1, as_bytes("first"), 100ms);
      ADD_FAILURE() << "the first send did not time out";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kTimedOut) << e.message();
    }
    Reply r = slow.send(2, as_bytes("second"), 5s);
    EXPECT_EQ(r.payload.text(), "answer to second");
    EXPECT_EQ(r.answer, 2);
  });
  Message first = channel.receive(5s);
  ASSERT_EQ(first.event, Event::kMessage);
  Message second = channel.receive(5s);  // arrives after the first timed out
  ASSERT_EQ(second.event, Event::kMessage);
  ASSERT_EQ(second.type, 2);
  channel.reply(first.index, 1, as_bytes("late answer to first"));
  channel.reply(second.index, 2, as_bytes("answer to second"));
  EXPECT_EQ(client_process.wait_code(), 0);
}

// A link that breaks while both ends live (a reset on the wire, here made by
// the one POSIX layer's fault switch, which really shuts the socket down):
// the client connects again and sends the same request, which must not run
// twice, whichever of the two copies reaches the owner and whenever the
// owner answers.
TEST_F(MsgTest, ARequestSentAgainAfterItsReplyWasLostRunsOnce) {
  Client me = client("server");
  Channel channel = me.create_channel("once");
  Child sender([this] {
    Client c = client("sender");
    Connection once = c.connect_channel("once", 5s);
    for (int i = 1; i <= 3; ++i) {
      const std::string text = "request " + std::to_string(i);
      Reply r = once.send(i, as_bytes(text), 5s);
      EXPECT_EQ(r.answer, i * 10);
      EXPECT_EQ(r.payload.text(), "ran " + text);
    }
  });
  // The reply to the first request breaks the link on its way out.
  posix::inject_fault(posix::Op::kSocketSend, ECONNRESET);
  int runs = 0;
  int deaths = 0;
  for (int i = 0; i < 20; ++i) {
    Message m = channel.receive(5s);
    ASSERT_NE(m.event, Event::kTimeout);
    if (m.event == Event::kDisconnect) break;
    if (m.event == Event::kDeath) ++deaths;
    if (m.event == Event::kMessage) {
      ++runs;
      EXPECT_EQ(m.type, runs);  // never the first one again
      channel.reply(m.index, m.type * 10, as_bytes("ran " + std::string(m.payload.text())));
    }
  }
  posix::clear_faults();
  EXPECT_EQ(runs, 3);
  EXPECT_EQ(deaths, 1);  // the link did break once
  EXPECT_EQ(sender.wait_code(), 0);
}

TEST_F(MsgTest, ARequestSentAgainWhileItAwaitsItsReplyRunsOnce) {
  Client me = client("server");
  Channel channel = me.create_channel("pending");
  Child sender([this] {
    Client c = client("sender");
    Connection pending = c.connect_channel("pending", 5s);
    // The link breaks while the first send waits for its answer.
    posix::inject_fault(posix::Op::kSocketReceive, ECONNRESET);
    EXPECT_EQ(pending.send(1, as_bytes("first"), 5s).answer, 100);
    EXPECT_EQ(pending.send(2, as_bytes("second"), 5s).answer, 200);
  });
  Message first = channel.receive(5s);
  ASSERT_EQ(first.event, Event::kMessage) << event_name(first.event);
  EXPECT_EQ(first.payload.text(), "first");
  Message broke = channel.receive(5s);
  EXPECT_EQ(broke.event, Event::kDeath) << event_name(broke.event);
  // The copy sent on the new connection is absorbed, not a second message.
  Message none = channel.receive(500ms);
  EXPECT_EQ(none.event, Event::kTimeout) << event_name(none.event);
  EXPECT_EQ(channel.clients(), 1u);  // it came back
  channel.reply(first.index, 100);   // reaches it on its new connection
  Message second = channel.receive(5s);
  ASSERT_EQ(second.event, Event::kMessage) << event_name(second.event);
  EXPECT_EQ(second.payload.text(), "second");
  channel.reply(second.index, 200);
  EXPECT_EQ(channel.receive(5s).event, Event::kDisconnect);
  EXPECT_EQ(sender.wait_code(), 0);
}

// The owner holds a message's index until it replies, even after its sender
// gave up and left: the index is never handed to another message, whose
// sender would then get the answer meant for the first.
TEST_F(MsgTest, AnIndexIsNeverReusedWhileTheOwnerHoldsIt) {
  Client me = client("server");
  Channel channel = me.create_channel("indices");
  Pipe first_left;
  Child impatient([&] {
    Client c = client("impatient");
    Connection to = c.connect_channel("indices", 5s);
    EXPECT_THROW(to.send(1, as_bytes("first"), 100ms), Error);
    to.disconnect();
    signal(first_left);
  });
  first_left.close_write();
  Message first = channel.receive(5s);
  ASSERT_EQ(first.event, Event::kMessage);
  ASSERT_TRUE(wait_signal(first_left));
  Message left = channel.receive(5s);
  EXPECT_EQ(left.event, Event::kDisconnect) << event_name(left.event);
  EXPECT_EQ(impatient.wait_code(), 0);
  Child patient([this] {
    Client c = client("patient");
    Connection to = c.connect_channel("indices", 5s);
    EXPECT_EQ(to.send(2, as_bytes("second"), 5s).answer, 2);
  });
  Message second = channel.receive(5s);
  ASSERT_EQ(second.event, Event::kMessage);
  EXPECT_NE(second.index, first.index);
  channel.reply(first.index, 1);  // its sender is gone: dropped, not sent to another
  channel.reply(second.index, 2);
  EXPECT_EQ(patient.wait_code(), 0);
}

TEST_F(MsgTest, ADeadServerFailsABlockedSendWithinOneSecond) {
  Pipe received;
  Child server([&] {
    Client me = client("server");
    Channel channel = me.create_channel("dies");
    for (;;) {
      Message m = channel.receive(5s);
      if (m.event == Event::kMessage) {
        signal(received);
        ::pause();  // never replies: killed here
      }
    }
  });
  received.close_write();
  Client me = client("client");
  Connection dies = me.connect_channel("dies", 5s, true);
  std::atomic<bool> killed{false};
  std::chrono::steady_clock::time_point killed_at;
  std::thread killer([&] {
    wait_signal(received);
    killed_at = std::chrono::steady_clock::now();
    server.kill();
    killed = true;
  });
  try {
    dies.send(1, as_bytes("hello"), kForever);
    ADD_FAILURE() << "a send to a dead server returned normally";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kSystem) << e.message();
    EXPECT_NE(e.message().find("gone"), std::string::npos) << e.message();
  }
  const auto noticed = std::chrono::steady_clock::now();
  killer.join();
  ASSERT_TRUE(killed);
  EXPECT_LT(noticed - killed_at, 1s);
  // And the next send fails at once, without SIGPIPE.
  EXPECT_THROW(dies.send(1, as_bytes("again"), kForever), Error);
}

TEST_F(MsgTest, AClientsDisconnectionAndDeathAreEvents) {
  Client me = client("server");
  Channel channel = me.create_channel("events");
  Pipe connected;
  Child polite([&] {
    Client c = client("polite");
    Connection events = c.connect_channel("events", 5s);
    events.send(1, as_bytes("hi"), 5s);
    events.disconnect();
  });
  Child rude([&] {
    Client c = client("rude");
    Connection events = c.connect_channel("events", 5s);
    events.buffered_send(1, as_bytes("hi"), 5s);
    signal(connected);
    ::pause();  // killed here
  });
  connected.close_write();
  ASSERT_TRUE(wait_signal(connected));
  rude.kill();
  bool saw_disconnect = false;
  bool saw_death = false;
  for (int i = 0; i < 20 && !(saw_disconnect && saw_death); ++i) {
    Message m = channel.receive(5s);
    ASSERT_NE(m.event, Event::kTimeout);
    if (m.event == Event::kMessage) channel.reply(m.index, 0);
    if (m.event == Event::kDisconnect) {
      EXPECT_EQ(m.sender, "polite");
      saw_disconnect = true;
    }
    if (m.event == Event::kDeath) {
      EXPECT_EQ(m.sender, "rude");
      saw_death = true;
    }
  }
  EXPECT_TRUE(saw_disconnect);
  EXPECT_TRUE(saw_death);
  EXPECT_EQ(polite.wait_code(), 0);
}

// Clients that hang up hard (a reset) right after sending their requests:
// the manager's answers meet a closed socket (EPIPE, ECONNRESET), which
// must not kill it (MESSIP's manager died of SIGPIPE).
TEST_F(MsgTest, TheManagerSurvivesClientsThatHangUpBeforeTheirAnswers) {
  std::vector<std::byte> requests;
  for (int i = 0; i < 200; ++i) {
    const FrameHeader ping{
        .type = FrameType::kPing, .request_id = std::uint64_t(i + 1), .value = i};
    const auto header = encode_header(ping);
    requests.insert(requests.end(), header.begin(), header.end());
  }
  for (int round = 0; round < 20; ++round) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(manager.port());
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof(to)), 0);
    ASSERT_EQ(::send(fd, requests.data(), requests.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(requests.size()));
    // Half the rounds close with a reset, half with a goodbye (then the
    // manager's first answer draws a reset, and its next one EPIPE).
    if (round % 2 == 0) {
      const linger reset{1, 0};
      ASSERT_EQ(::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset)), 0);
    }
    ::close(fd);
  }
  // Still there, and still answering.
  Client me = client("after");
  Channel c = me.create_channel("still-here");
  EXPECT_EQ(me.channels().size(), 1u);
  EXPECT_GT(me.ping().count(), 0);
}

// A client killed while the owner waits in receive() with nothing else to
// do: the receive returns the death at once, not at its timeout.
TEST_F(MsgTest, AClientKilledDuringAReceiveEndsIt) {
  Client me = client("server");
  Channel channel = me.create_channel("waiting");
  Pipe connected;
  Child doomed([&] {
    Client c = client("doomed");
    Connection to = c.connect_channel("waiting", 5s);
    to.ping(5s);  // connected and answered: the owner knows this client
    signal(connected);
    ::pause();  // killed here
  });
  connected.close_write();
  // The ping is answered inside receive(); then nothing comes.
  for (int i = 0; i < 50 && channel.clients() == 0; ++i) channel.receive(100ms);
  ASSERT_EQ(channel.clients(), 1u);
  ASSERT_TRUE(wait_signal(connected));
  const pid_t victim = doomed.pid();
  Child killer([victim] {
    std::this_thread::sleep_for(200ms);
    ::kill(victim, SIGKILL);
  });
  const auto started = std::chrono::steady_clock::now();
  const Message m = channel.receive(10s);
  const auto took = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(m.event, Event::kDeath) << event_name(m.event);
  EXPECT_EQ(m.sender, "doomed");
  EXPECT_GE(took, 150ms);  // it was waiting when the client died
  EXPECT_LT(took, 2s);     // and did not wait for its timeout
  EXPECT_EQ(killer.wait_code(), 0);
  EXPECT_EQ(doomed.wait_code(), 128 + SIGKILL);
  EXPECT_EQ(channel.clients(), 0u);
}

TEST_F(MsgTest, BufferedSendsKeepOrderAndMeetBackPressureAtTheBound) {
  Client me = client("server");
  Channel channel = me.create_channel("queue", {.max_buffered = 4});
  Pipe full;
  Pipe go_on;
  Child sender([&] {
    Client c = client("sender");
    Connection queue = c.connect_channel("queue", 5s);
    for (int i = 0; i < 4; ++i) {
      const auto start = std::chrono::steady_clock::now();
      queue.buffered_send(i, as_bytes(std::to_string(i)), 5s);
      EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);  // no waiting below the bound
    }
    try {
      queue.buffered_send(4, as_bytes("4"), 200ms);
      ADD_FAILURE() << "a buffered send past the bound went through";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kBusy) << e.message();
      EXPECT_NE(e.message().find("bound"), std::string::npos) << e.message();
    }
    signal(full);
    wait_signal(go_on);
    for (int i = 4; i < 100; ++i) queue.buffered_send(i, as_bytes(std::to_string(i)), 5s);
  });
  full.close_write();
  go_on.close_read();
  ASSERT_TRUE(wait_signal(full));
  signal(go_on);
  for (int expected = 0; expected < 100; ++expected) {
    Message m = channel.receive(5s);
    ASSERT_EQ(m.event, Event::kBuffered) << event_name(m.event);
    EXPECT_EQ(m.type, expected);
    EXPECT_EQ(m.payload.text(), std::to_string(expected));
  }
  EXPECT_EQ(sender.wait_code(), 0);
}

TEST_F(MsgTest, TimersTickOnceOrRepeatedly) {
  Client me = client("server");
  Channel channel = me.create_channel("timers");
  const auto start = std::chrono::steady_clock::now();
  channel.timer_create(7, 50ms);
  const int repeating = channel.timer_create(8, 20ms, 20ms);
  int sevens = 0;
  int eights = 0;
  while (std::chrono::steady_clock::now() - start < 300ms) {
    Message m = channel.receive(50ms);
    if (m.event != Event::kTimer) continue;
    if (m.type == 7) {
      ++sevens;
      EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
    }
    if (m.type == 8) ++eights;
  }
  EXPECT_EQ(sevens, 1);
  EXPECT_GE(eights, 5);
  EXPECT_LE(eights, 16);
  channel.timer_delete(repeating);
  EXPECT_THROW(channel.timer_delete(repeating), Error);
  Message m = channel.receive(100ms);
  EXPECT_EQ(m.event, Event::kTimeout);
}

TEST_F(MsgTest, ReceiveAnyListensOnSeveralChannels) {
  Client me = client("server");
  Channel a = me.create_channel("a");
  Channel b = me.create_channel("b");
  Child sender([this] {
    Client c = client("sender");
    Connection to_b = c.connect_channel("b", 5s);
    to_b.buffered_send(5, as_bytes("to b"), 5s);
  });
  Channel* both[] = {&a, &b};
  auto [which, m] = Channel::receive_any(both, 5s);
  EXPECT_EQ(which, 1u);
  EXPECT_EQ(m.event, Event::kBuffered);
  EXPECT_EQ(m.payload.text(), "to b");
  EXPECT_EQ(sender.wait_code(), 0);
}

// One client's channels, each served on a thread of its own, while the
// main thread asks the manager through the same client (the client's
// manager link is shared, under its mutex; CI runs this under TSan too).
TEST_F(MsgTest, OneClientsChannelsServeOnSeveralThreads) {
  Client me = client("server");
  constexpr int kThreads = 3;
  constexpr int kMessages = 50;
  std::vector<Channel> channels;
  for (int i = 0; i < kThreads; ++i) channels.push_back(me.create_channel("t" + std::to_string(i)));
  // Forked before any thread starts: a child forked while another thread
  // holds a lock (the allocator's, say) would wait on it forever.
  Child sender([this] {
    Client c = client("sender");
    std::vector<Connection> to;
    for (int i = 0; i < kThreads; ++i) to.push_back(c.connect_channel("t" + std::to_string(i), 5s));
    for (int k = 0; k < kMessages; ++k) {
      for (int i = 0; i < kThreads; ++i) EXPECT_EQ(to[i].send(k, as_bytes("x"), 5s).answer, k + 1);
    }
  });
  std::vector<std::thread> servers;
  std::atomic<int> answered{0};
  for (int i = 0; i < kThreads; ++i) {
    servers.emplace_back([&, channel = std::move(channels[i])]() mutable {
      for (int seen = 0; seen < kMessages;) {
        Message m = channel.receive(10s);
        if (m.event == Event::kTimeout) return;
        if (m.event != Event::kMessage) continue;
        channel.reply(m.index, m.type + 1);
        ++seen;
        ++answered;
      }
    });
  }
  channels.clear();
  for (int k = 0; k < 20; ++k) EXPECT_EQ(me.channels().size(), static_cast<std::size_t>(kThreads));
  EXPECT_EQ(sender.wait_code(), 0);
  for (auto& t : servers) t.join();
  EXPECT_EQ(answered.load(), kThreads * kMessages);
}

TEST_F(MsgTest, ARestartedManagerLearnsTheChannelsAgain) {
  Client me = client("server");
  Channel channel = me.create_channel("survivor");
  channel.join("crew");
  Client user = client("user");
  Connection before = user.connect_channel("survivor", 5s);
  manager.kill();
  // Traffic does not go through the manager: it goes on without it.
  before.buffered_send(1, as_bytes("while down"), 5s);
  Message m = channel.receive(5s);
  EXPECT_EQ(m.event, Event::kBuffered);
  ManagerProcess restarted(manager.port());
  // The owner registers again from its receive loop (it tries once a second).
  Client late = Client::connect("late", {.manager = restarted.address()});
  std::vector<ChannelInfo> list;
  for (int i = 0; i < 40 && list.empty(); ++i) {
    channel.receive(100ms);
    list = late.channels();
  }
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name, "survivor");
  Connection after = late.connect_channel("survivor", 5s);
  after.buffered_send(2, as_bytes("after"), 5s);
  Message again = channel.receive(5s);
  EXPECT_EQ(again.payload.text(), "after");
  // Its group comes back with it.
  Client::GroupSend sent;
  for (int i = 0; i < 40 && sent.delivered.empty(); ++i) {  // bounded: 4 s
    channel.receive(100ms);
    sent = late.group_send("crew", 3, as_bytes("to the crew"), 5s);
  }
  EXPECT_EQ(sent.delivered.size(), 1u);
  EXPECT_TRUE(sent.failures.empty());
  Message crew = channel.receive(5s);
  EXPECT_EQ(crew.event, Event::kBuffered) << event_name(crew.event);
  EXPECT_EQ(crew.payload.text(), "to the crew");
  restarted.kill();
}

TEST_F(MsgTest, ConnectCanWaitForTheChannelToAppear) {
  Pipe go;
  Child owner([&] {
    wait_signal(go);
    Client me = client("late-owner");
    Channel c = me.create_channel("later");
    for (int i = 0; i < 50; ++i) {
      Message m = c.receive(100ms);
      if (m.event == Event::kMessage) c.reply(m.index, 42);
      if (m.event == Event::kDisconnect) return;
    }
  });
  go.close_read();
  Client me = client("early");
  std::thread starter([&] {
    std::this_thread::sleep_for(200ms);
    signal(go);
  });
  Connection later = me.connect_channel("later", 5s, /*wait=*/true);
  starter.join();
  EXPECT_EQ(later.send(1, as_bytes("x"), 5s).answer, 42);
  later.disconnect();
  EXPECT_EQ(owner.wait_code(), 0);
}

TEST_F(MsgTest, AGroupSendReachesEveryMemberAndOnlyThem) {
  Client me = client("owners");
  Channel a = me.create_channel("member-a");
  Channel b = me.create_channel("member-b");
  Channel outsider = me.create_channel("outsider");
  a.join("team");
  b.join("team");
  outsider.join("other-team");
  Pipe sent;
  Child sender([&] {
    Client c = client("broadcaster");
    const Client::GroupSend result = c.group_send("team", 9, as_bytes("to all"), 5s);
    EXPECT_EQ(result.delivered.size(), 2u);
    EXPECT_TRUE(result.failures.empty());
    EXPECT_TRUE(c.group_send("nobody-here", 9, as_bytes("x"), 5s).delivered.empty());
    signal(sent);
  });
  sent.close_write();
  ASSERT_TRUE(wait_signal(sent));
  for (Channel* member : {&a, &b}) {
    Message m;
    do {
      m = member->receive(5s);
    } while (m.event == Event::kDisconnect);
    EXPECT_EQ(m.event, Event::kBuffered) << event_name(m.event);
    EXPECT_EQ(m.type, 9);
    EXPECT_EQ(m.payload.text(), "to all");
  }
  Message none = outsider.receive(200ms);
  EXPECT_EQ(none.event, Event::kTimeout) << event_name(none.event);
  EXPECT_EQ(sender.wait_code(), 0);
}

TEST_F(MsgTest, AnotherUserCannotReachAChannel) {
  if (::getuid() != 0) GTEST_SKIP() << "needs root to become another user";
  Client me = client("owner");
  Channel channel = me.create_channel("private");
  const int code = sheaf::testing::run_in_child([this] {
    become_nobody();
    Client other = client("nobody");  // the manager answers anyone on this host
    // The owner's socket lies in its 0700 runtime directory.
    EXPECT_EQ(refusal([&] { other.connect_channel("private", 2s); },
                      "channel private: cannot reach its owner")
                  .sys_errno(),
              EACCES);
  });
  EXPECT_EQ(code, 0);
  EXPECT_EQ(channel.clients(), 0u);
}

// The uid at the other end of a loopback TCP connection, as the kernel's
// socket diagnostics tell it: ours for a connection of ours, nobody's for
// one a child made as nobody.
TEST(LoopbackPeers, TheKernelSaysWhoIsAtTheOtherEnd) {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in at{};
  at.sin_family = AF_INET;
  at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(at);
  ASSERT_EQ(::bind(listener, reinterpret_cast<const sockaddr*>(&at), sizeof(at)), 0);
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&at), &length), 0);
  ASSERT_EQ(::listen(listener, 4), 0);
  const auto connect_to_listener = [&] {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr*>(&at), sizeof(at)) != 0) _exit(7);
    return fd;
  };
  const int mine = connect_to_listener();
  const int accepted = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(accepted, 0);
  EXPECT_EQ(loopback_peer_uid(accepted), std::optional<uid_t>(::getuid()));
  ::close(accepted);
  ::close(mine);
  if (::getuid() == 0) {
    Pipe connected, done;
    Child nobody([&] {
      become_nobody();
      const int fd = connect_to_listener();
      signal(connected);
      wait_signal(done);
      ::close(fd);
    });
    connected.close_write();
    ASSERT_TRUE(wait_signal(connected));
    const int theirs = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(theirs, 0);
    EXPECT_EQ(loopback_peer_uid(theirs), std::optional<uid_t>(65534));
    signal(done);
    EXPECT_EQ(nobody.wait_code(), 0);
    ::close(theirs);
  }
  ::close(listener);
}

// Another user's client that cannot reach a channel's Unix socket tries its
// loopback TCP listener next: refused there too, by uid.
TEST_F(MsgTest, AnotherUserIsRefusedOverLoopbackTcpToo) {
  if (::getuid() != 0) GTEST_SKIP() << "needs root to become another user";
  Client me = client("owner");
  Channel channel = me.create_channel("private-tcp", {.tcp_listen = "127.0.0.1:0"});
  Pipe done;
  Child nobody([&] {
    become_nobody();
    Client other = client("nobody");
    EXPECT_EQ(refusal(
                  [&] {
                    Connection c = other.connect_channel("private-tcp", 2s);
                    c.send(1, as_bytes("let me in"), 2s);
                  },
                  "refuses uid 65534 (over loopback TCP)")
                  .sys_errno(),
              EACCES);
    signal(done);
  });
  done.close_write();
  // The owner accepts (and refuses) inside receive(); nothing gets through.
  for (int i = 0; i < 50; ++i) {  // bounded: 5 s
    const Message m = channel.receive(100ms);
    EXPECT_NE(m.event, Event::kMessage) << "another user's message got through";
    pollfd ready{done.read_end(), POLLIN, 0};
    if (::poll(&ready, 1, 0) == 1) break;  // the child is done
  }
  EXPECT_EQ(nobody.wait_code(), 0);
  EXPECT_EQ(channel.clients(), 0u);
}

// Another user's client that writes its hello and a message over loopback
// TCP and hangs up before the owner accepts: its socket is gone by then
// (time-wait, which the kernel reports as uid 0 with no inode), so nobody
// can vouch for it, and nothing it wrote is taken.
TEST_F(MsgTest, AnotherUsersClientThatHangsUpBeforeTheAcceptIsNotLetIn) {
  if (::getuid() != 0) GTEST_SKIP() << "needs root to become another user";
  Client me = client("owner");
  Channel channel = me.create_channel("tcp-only-ours", {.tcp_listen = "127.0.0.1:0"});
  const std::string address = channel.address();
  const auto port = static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
  const int code = sheaf::testing::run_in_child([port] {
    become_nobody();
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof(to)), 0);
    const auto put = [fd](FrameHeader header, std::string_view payload) {
      header.payload_bytes = static_cast<std::uint32_t>(payload.size());
      const auto head = encode_header(header);
      ASSERT_EQ(::write(fd, head.data(), head.size()), static_cast<ssize_t>(head.size()));
      ASSERT_EQ(::write(fd, payload.data(), payload.size()), static_cast<ssize_t>(payload.size()));
    };
    put({.type = FrameType::kHello}, R"({"id":"intruder"})");
    put({.type = FrameType::kBufferedSend, .value = 42}, "written by nobody");
    ::close(fd);  // before the owner accepts
  });
  ASSERT_EQ(code, 0);
  std::this_thread::sleep_for(100ms);  // its socket closes down meanwhile
  for (int i = 0; i < 10; ++i) {       // bounded: 2 s
    const Message m = channel.receive(200ms);
    EXPECT_NE(m.event, Event::kBuffered) << "sender " << m.sender << ": " << m.payload.text();
    EXPECT_NE(m.event, Event::kMessage) << "sender " << m.sender << ": " << m.payload.text();
  }
  EXPECT_EQ(channel.clients(), 0u);
}

// A channel's socket is 0600 (0660 for one that lets a group in) whatever
// the process's umask. (Its mode is set with chmod: a umask is the whole
// process's, and other threads' files would get a channel's meanwhile.)
TEST_F(MsgTest, AChannelsSocketHasItsModeWhateverTheUmask) {
  // The loosest mask (modes from bind() are 0777), put back however the test ends.
  struct LooseUmask {
    mode_t saved = ::umask(0);
    ~LooseUmask() { ::umask(saved); }
  } loose;
  Client me = client("owner");
  const auto socket_mode = [](const Channel& channel) {
    const std::string& address = channel.address();
    const std::size_t from = address.find("unix:");
    if (from == std::string::npos) return mode_t{0};
    const std::string path = address.substr(from + 5, address.find(' ', from) - from - 5);
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? st.st_mode & 07777 : mode_t{0};
  };
  {
    Channel mine = me.create_channel("mode-private");
    EXPECT_EQ(socket_mode(mine), 0600u);
  }
  if (::getuid() == 0) {  // (only root may give a socket another group)
    Channel grouped = me.create_channel("mode-group", {.allow_group = 65534});
    EXPECT_EQ(socket_mode(grouped), 0660u);
  }
}

// A channel that lets a group in: a user of that group reaches it, whether
// the group is its own (primary) or one of its others; anyone else does not.
TEST_F(MsgTest, AChannelLetsInTheGroupItAllows) {
  if (::getuid() != 0) GTEST_SKIP() << "needs root to become another user";
  constexpr gid_t kNogroup = 65534;
  constexpr gid_t kDaemon = 1;
  Client me = client("owner");
  Channel channel = me.create_channel("grouped", {.allow_group = kNogroup});
  // Its socket lies in /tmp/sheaf-0-g65534, 0750 and of that group.
  struct stat st {};
  ASSERT_EQ(::stat("/tmp/sheaf-0-g65534", &st), 0);
  EXPECT_EQ(st.st_gid, kNogroup);
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  const auto served_by_owner = [&](Child& sender) {
    bool answered = false;
    for (int i = 0; i < 50 && !answered; ++i) {  // bounded: 5 s
      Message m = channel.receive(100ms);
      if (m.event == Event::kMessage) {
        channel.reply(m.index, m.type + 1);
        answered = true;
      }
    }
    EXPECT_TRUE(answered);
    EXPECT_EQ(sender.wait_code(), 0);
  };
  Child in_its_own_group([&] {
    become_nobody(kNogroup);
    Client other = client("nobody");
    EXPECT_EQ(other.connect_channel("grouped", 2s).send(1, as_bytes("hi"), 5s).answer, 2);
  });
  served_by_owner(in_its_own_group);
  Child in_another_of_its_groups([&] {
    become_nobody(kDaemon, {kNogroup});
    Client other = client("nobody");
    EXPECT_EQ(other.connect_channel("grouped", 2s).send(3, as_bytes("hi"), 5s).answer, 4);
  });
  served_by_owner(in_another_of_its_groups);
  EXPECT_EQ(sheaf::testing::run_in_child([&] {
              become_nobody(kDaemon);
              Client other = client("nobody");
              EXPECT_EQ(refusal([&] { other.connect_channel("grouped", 2s); },
                                "channel grouped: cannot reach its owner")
                            .sys_errno(),
                        EACCES);
            }),
            0);
}

// --- Payloads by heap reference ------------------------------------------------

// The exit status of `sheaf heap check PATH`, the command a user would run
// (0: sound); 0 without the command built (SHEAF_BUILD_CLI=OFF).
int heap_check_command(const std::string& path) {
#ifdef SHEAF_CLI_PATH
  return std::system((std::string(SHEAF_CLI_PATH) + " heap check " + path + " >/dev/null").c_str());
#else
  (void)path;
  return 0;
#endif
}

class MsgHeapTest : public MsgTest {
 protected:
  TempDir dir;
  std::string heap_path = dir / "shared.heap";
  void SetUp() override { ASSERT_TRUE(Heap::create(heap_path, {.initial_size = 64 << 20}).ok()); }
  // Bytes in use once this session has held a block (its hold ledger, which
  // stays): what must be in use again when every message is done with.
  static std::uint64_t used_at_rest(Heap& heap) {
    heap.release(heap.allocate_held(1));
    return heap.info().used;
  }
  // A client that maps `heap` (which must outlive it).
  Client attached_client(const std::string& id, Heap& heap) {
    Client c = client(id);
    c.attach(heap);
    return c;
  }
};

TEST_F(MsgHeapTest, ALoanTravelsByReferenceWhenBothEndsMapTheHeap) {
  constexpr std::size_t kBytes = 1 << 20;
  Pipe done;
  Child server([&] {
    Heap heap = Heap::open(heap_path).value();
    Client me = attached_client("server", heap);
    Channel channel = me.create_channel("refs");
    Message m = channel.receive(5s);
    ASSERT_EQ(m.event, Event::kMessage) << event_name(m.event) << ": " << m.payload.text();
    EXPECT_TRUE(m.payload.by_reference());
    ASSERT_EQ(m.payload.size(), kBytes);
    bool intact = true;
    for (std::size_t i = 0; i < kBytes; ++i) {
      intact = intact && m.payload.bytes()[i] == std::byte(i % 251);
    }
    EXPECT_TRUE(intact);
    // The view is the held block itself, in this process's mapping: no copy.
    EXPECT_EQ(heap.holds(m.payload.bytes().data()), 1u);
    // The reference it came as names this heap, that block and its serial.
    const std::optional<sheaf::Ref> ref = m.payload.ref();
    EXPECT_TRUE(ref.has_value());
    if (ref) {
      char uuid[37];
      const auto& u = ref->heap_uuid;
      std::snprintf(uuid, sizeof(uuid),
                    "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
                    u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12],
                    u[13], u[14], u[15]);
      EXPECT_EQ(uuid, heap.info().uuid);
      EXPECT_EQ(ref->offset, heap.offset_of(m.payload.bytes().data()));
      EXPECT_EQ(ref->length, kBytes);
      EXPECT_NE(ref->serial, 0u);
      EXPECT_EQ(ref->serial, heap.held_block(m.payload.bytes().data()).serial);
    }
    channel.reply(m.index, 1);
    wait_signal(done);
  });
  Heap heap = Heap::open(heap_path).value();
  Client me = attached_client("client", heap);
  Connection refs = me.connect_channel("refs", 5s, true);
  EXPECT_TRUE(refs.by_reference(heap));
  Loan loan = refs.loan<std::uint8_t>(kBytes);  // in the heap both ends map
  EXPECT_EQ(&loan.heap(), &heap);
  ASSERT_EQ(loan.size(), kBytes);
  for (std::size_t i = 0; i < kBytes; ++i)
    loan.as<std::uint8_t>()[i] = static_cast<std::uint8_t>(i % 251);
  void* block = loan.bytes().data();
  EXPECT_EQ(refs.send(1, std::move(loan), 5s).answer, 1);
  EXPECT_FALSE(loan);
  signal(done);
  EXPECT_EQ(server.wait_code(), 0);
  // The receiver released its view when it was done: the block is free.
  EXPECT_THROW(heap.holds(block), Error);
  const CheckReport report = heap.check();
  EXPECT_TRUE(report.ok());
}

TEST_F(MsgHeapTest, ALoanIsCopiedToAPeerThatDoesNotMapTheHeap) {
  Child server([&] {
    Client me = client("server");  // attaches no heap
    Channel channel = me.create_channel("copies");
    Message m = channel.receive(5s);
    ASSERT_EQ(m.event, Event::kMessage);
    EXPECT_FALSE(m.payload.by_reference());
    EXPECT_FALSE(m.payload.ref().has_value());
    EXPECT_EQ(m.payload.text(), "copied bytes");
    channel.reply(m.index, 2);
  });
  Heap heap = Heap::open(heap_path).value();
  const std::uint64_t used_before = used_at_rest(heap);
  Client me = attached_client("client", heap);
  Connection copies = me.connect_channel("copies", 5s, true);
  EXPECT_FALSE(copies.by_reference(heap));
  Loan loan = Loan::allocate(heap, 12);
  std::memcpy(loan.bytes().data(), "copied bytes", 12);
  EXPECT_EQ(copies.send(1, std::move(loan), 5s).answer, 2);
  EXPECT_EQ(server.wait_code(), 0);
  EXPECT_EQ(heap.info().used, used_before);  // the loan went back
}

// The lost reply was a heap reference: the copy sent after the reconnection
// is the same reference, whose hold the client already has; taken once,
// released once.
TEST_F(MsgHeapTest, AReplyByReferenceLostOnABrokenLinkArrivesOnce) {
  constexpr std::size_t kBytes = 64 << 10;
  Child server([&] {
    Heap heap = Heap::open(heap_path).value();
    Client me = attached_client("server", heap);
    Channel channel = me.create_channel("ref-once");
    posix::inject_fault(posix::Op::kSocketSend, ECONNRESET);
    int runs = 0;
    for (int i = 0; i < 10; ++i) {
      Message m = channel.receive(5s);
      ASSERT_NE(m.event, Event::kTimeout);
      if (m.event == Event::kDisconnect) break;
      if (m.event != Event::kMessage) continue;
      ++runs;
      Loan loan = Loan::allocate(heap, kBytes);
      std::memset(loan.bytes().data(), 0x5a, kBytes);
      channel.reply(m.index, runs, std::move(loan));
    }
    EXPECT_EQ(runs, 1);
  });
  Heap heap = Heap::open(heap_path).value();
  const std::uint64_t used_before = used_at_rest(heap);
  Client me = attached_client("client", heap);
  {
    Connection to = me.connect_channel("ref-once", 5s, true);
    Reply r = to.send(1, as_bytes("once"), 5s);
    EXPECT_EQ(r.answer, 1);
    ASSERT_TRUE(r.payload.by_reference());
    ASSERT_EQ(r.payload.size(), kBytes);
    EXPECT_EQ(heap.holds(r.payload.bytes().data()), 1u);
    EXPECT_EQ(r.payload.bytes()[kBytes - 1], std::byte{0x5a});
  }
  EXPECT_EQ(server.wait_code(), 0);
  EXPECT_EQ(heap.info().used, used_before);
  EXPECT_TRUE(heap.check().ok());
}

// A reference is taken only for the block it was made for: not one freed
// since whose place a block of the same receiver took (serials), and not
// one this process does not hold.
TEST_F(MsgHeapTest, AStaleReferenceIsRefused) {
  Heap heap = Heap::open(heap_path).value();
  const HeapInfo info = heap.info();
  std::vector<LocalHeap> mine(1);
  mine[0].heap = &heap;
  ASSERT_TRUE(parse_uuid(info.uuid, mine[0].uuid));
  mine[0].session = heap.session();
  auto frame_for = [&](void* p, std::uint64_t serial) {
    Frame f;
    f.header.type = FrameType::kSend;
    f.header.flags = kFlagHeapRef;
    const auto ref = encode_heap_ref({mine[0].uuid, heap.offset_of(p), 64, serial});
    f.payload.assign(ref.begin(), ref.end());
    return f;
  };
  void* old_block = heap.allocate_held(64);
  const std::uint64_t old_serial = heap.held_block(old_block).serial;
  Frame stale = frame_for(old_block, old_serial);
  heap.release(old_block);
  void* reused = heap.allocate_held(64);
  ASSERT_EQ(reused, old_block) << "the allocator did not reuse the place; the test needs it";
  EXPECT_EQ(refusal([&] { Receiver::take(stale, mine); }, "stale").code(), Errc::kCorrupted);
  EXPECT_EQ(heap.holds(reused), 1u);  // untouched
  {
    Frame fresh = frame_for(reused, heap.held_block(reused).serial);
    Payload taken = Receiver::take(fresh, mine);
    EXPECT_TRUE(taken.by_reference());
  }  // released with the view
  EXPECT_THROW(heap.holds(reused), Error);
  // A block this process does not hold is refused too.
  void* plain = heap.allocate(64);
  Frame not_held = frame_for(plain, 0);
  EXPECT_THROW(Receiver::take(not_held, mine), Error);
  heap.deallocate(plain);
  EXPECT_TRUE(heap.check().ok());
}

// A client killed while it holds references (a loan it never sent, and a
// reply that came by reference) is a kDeath event for the owner, and its
// holds are released: nothing stays in use, and `sheaf heap check` (the
// command) finds the heap sound.
TEST_F(MsgHeapTest, AClientKilledHoldingReferencesLeaksNothing) {
  Heap heap = Heap::open(heap_path).value();
  const std::uint64_t used_before = used_at_rest(heap);
  Client me = attached_client("owner", heap);
  Channel channel = me.create_channel("serves");
  Pipe holding;
  Child doomed([&] {
    Heap mine = Heap::open(heap_path).value();
    Client c = attached_client("doomed", mine);
    Connection to = c.connect_channel("serves", 5s);
    Loan kept = Loan::allocate(mine, 8192);  // never sent
    const Reply r = to.send(1, as_bytes("give"), 5s);
    if (!r.payload.by_reference() || r.payload.size() != 4096) _exit(3);
    signal(holding);
    ::pause();  // killed holding both
  });
  holding.close_write();
  bool died = false;
  for (int i = 0; i < 100 && !died; ++i) {  // bounded: 10 s
    Message m = channel.receive(100ms);
    if (m.event == Event::kMessage) {
      Loan answer = Loan::allocate(heap, 4096);
      channel.reply(m.index, 0, std::move(answer));
      ASSERT_TRUE(wait_signal(holding));
      EXPECT_GT(heap.info().used, used_before);  // the two blocks, held by the client
      doomed.kill();
    }
    died = m.event == Event::kDeath;
  }
  EXPECT_TRUE(died);
  EXPECT_EQ(doomed.wait_code(), 128 + SIGKILL);
  EXPECT_EQ(heap.info().used, used_before);
  EXPECT_EQ(heap_check_command(heap_path), 0);
}

// Breaks every socket of this process, as a cut network would (both ends
// see the connection end), and leaves the process alive.
void break_all_sockets() {
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    const int fd = std::atoi(entry.path().filename().c_str());
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) ::shutdown(fd, SHUT_RDWR);
  }
}

// A client whose link breaks while it lives on, and does not come back: its
// session in the heap it shares with the owner still counts as alive, so
// whether it died cannot be settled at once (a killed process's socket also
// closes a moment before its exit is done). The owner is not held up
// meanwhile: a timer due 50 ms later comes before the kDeath event, which
// waits until the client's session is found dead or kReclaimWait (200 ms)
// has passed.
TEST_F(MsgHeapTest, AClientWhoseLinkBrokeDoesNotHoldUpTheOwner) {
  Heap heap = Heap::open(heap_path).value();
  Client me = attached_client("owner", heap);
  Channel channel = me.create_channel("broken");
  Pipe broken;
  Child sender([&] {
    Heap mine = Heap::open(heap_path).value();
    Client c = attached_client("sender", mine);
    Connection to = c.connect_channel("broken", 5s);
    to.buffered_send(1, as_bytes("here"), 5s);
    break_all_sockets();
    signal(broken);
    ::pause();  // alive until killed
  });
  broken.close_write();
  Message first = channel.receive(5s);
  ASSERT_EQ(first.event, Event::kBuffered) << event_name(first.event);
  ASSERT_TRUE(wait_signal(broken));
  channel.timer_create(7, 50ms, 0ms);
  Message next = channel.receive(5s);
  EXPECT_EQ(next.event, Event::kTimer) << event_name(next.event);
  Message death = channel.receive(5s);
  EXPECT_EQ(death.event, Event::kDeath) << event_name(death.event);
  EXPECT_EQ(death.sender, "sender");
  sender.kill();
  sender.wait();
}

// A client whose link breaks and that comes back: the hello of its new
// connection shows its session alive, so the old link's kDeath comes at
// once, before anything the new connection brings (here the next message,
// then the goodbye).
TEST_F(MsgHeapTest, AClientThatComesBackHasItsOldLinksDeathFirst) {
  Heap heap = Heap::open(heap_path).value();
  Client me = attached_client("owner", heap);
  Channel channel = me.create_channel("back");
  Child sender([&] {
    Heap mine = Heap::open(heap_path).value();
    Client c = attached_client("sender", mine);
    Connection to = c.connect_channel("back", 5s);
    // The link breaks while the send waits for its answer; it reconnects.
    posix::inject_fault(posix::Op::kSocketReceive, ECONNRESET);
    if (to.send(1, as_bytes("first"), 5s).answer != 100) _exit(3);
    if (to.send(2, as_bytes("second"), 5s).answer != 200) _exit(4);
  });
  Message first = channel.receive(5s);
  ASSERT_EQ(first.event, Event::kMessage) << event_name(first.event);
  channel.reply(first.index, 100);  // at once: the client may be back already
  std::vector<Event> events;
  for (int i = 0; i < 10; ++i) {  // bounded
    Message m = channel.receive(5s);
    if (m.event == Event::kTimeout) break;
    events.push_back(m.event);
    if (m.event == Event::kMessage) channel.reply(m.index, 200);
    if (m.event == Event::kDisconnect) break;
  }
  const std::vector<Event> expected{Event::kDeath, Event::kMessage, Event::kDisconnect};
  EXPECT_EQ(events, expected);
  EXPECT_EQ(sender.wait_code(), 0);
}

TEST_F(MsgHeapTest, ReceiversKilledWhileHoldingReferencesLeakNothing) {
  Heap heap = Heap::open(heap_path).value();
  const std::uint64_t used_before = used_at_rest(heap);
  Client me = attached_client("sender", heap);
  constexpr int kKills = 300;
  for (int round = 0; round < kKills; ++round) {
    Pipe holding;
    Child receiver([&] {
      Heap mine = Heap::open(heap_path).value();
      Client c = attached_client("receiver", mine);
      Channel ch = c.create_channel("hold-" + std::to_string(round));
      for (;;) {
        Message m = ch.receive(5s);
        if (m.event == Event::kBuffered) {
          signal(holding);
          ::pause();  // killed holding m's reference
        }
      }
    });
    holding.close_write();
    Connection to = me.connect_channel("hold-" + std::to_string(round), 5s, true);
    Loan loan = Loan::allocate(heap, 4096 + round);
    std::memset(loan.bytes().data(), round, loan.size());
    to.buffered_send(round, std::move(loan), 5s);
    ASSERT_TRUE(wait_signal(holding));
    receiver.kill();
    receiver.wait();
    // The sender learns of the death at its next call, and the dead
    // receiver's hold on the block is released then, not at the next open.
    try {
      to.ping(1s);
      ADD_FAILURE() << "a dead receiver answered a ping";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kSystem) << e.message();
    }
    ASSERT_EQ(heap.info().used, used_before) << "round " << round;
  }
  const CheckReport report = heap.check();
  EXPECT_TRUE(report.ok());
  // And the command a user would run says so too.
  EXPECT_EQ(heap_check_command(heap_path), 0);
}

}  // namespace
}  // namespace sheaf::msg
