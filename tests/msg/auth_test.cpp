// auth_test.cpp: listeners that other hosts can reach. Two network
// namespaces made here ("host a" and "host b", joined by a veth pair, with
// private addresses that exist only inside them) stand for two hosts: a
// manager and a channel owner listen on host a's address, clients on host b
// must prove they know the shared secret, and a server that does not know it
// is refused by the client. Needs root (skipped otherwise).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sched.h>
#include <unistd.h>

#include <asio/ip/tcp.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include "../heap_test_util.hpp"
#include "auth.hpp"
#include "frame.hpp"
#include "sheaf/error.hpp"
#include "sheaf/msg.hpp"
#include "sheaf/msg_manager.hpp"

namespace sheaf::msg {
namespace {

using namespace std::chrono_literals;
using sheaf::testing::Child;
using sheaf::testing::Pipe;
using sheaf::testing::refusal;
using sheaf::testing::TempDir;

// Two namespaces and the veth pair between them; deleted on destruction.
class TwoHosts {
 public:
  TwoHosts() {
    const std::string tag = std::to_string(::getpid() % 100000);
    const std::string octet = std::to_string(::getpid() % 250 + 1);
    a_ = "sheaf-t" + tag + "a";
    b_ = "sheaf-t" + tag + "b";
    address_a = "10.201." + octet + ".1";
    address_b = "10.201." + octet + ".2";
    const std::string veth_a = "sft" + tag + "a";
    const std::string veth_b = "sft" + tag + "b";
    const std::string script =
        "set -e; ip netns add " + a_ + "; ip netns add " + b_ + "; ip link add " + veth_a +
        " type veth peer name " + veth_b + "; ip link set " + veth_a + " netns " + a_ +
        "; ip link set " + veth_b + " netns " + b_ + "; ip -n " + a_ + " addr add " + address_a +
        "/24 dev " + veth_a + "; ip -n " + b_ + " addr add " + address_b + "/24 dev " + veth_b +
        "; for n in " + a_ + " " + b_ + "; do ip -n $n link set lo up; done; ip -n " + a_ +
        " link set " + veth_a + " up; ip -n " + b_ + " link set " + veth_b + " up";
    ok_ = std::system(("sh -c '" + script + "' >/dev/null 2>&1").c_str()) == 0;
  }
  ~TwoHosts() {
    const std::string cleanup =
        "ip netns del " + a_ + " >/dev/null 2>&1; ip netns del " + b_ + " >/dev/null 2>&1";
    [[maybe_unused]] const int ignored = std::system(cleanup.c_str());
  }
  bool ok() const { return ok_; }
  // Moves the calling process (a child: one thread) onto host 'a' or 'b'.
  void enter(char host) const {
    const std::string path = "/run/netns/" + (host == 'a' ? a_ : b_);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) _exit(70);
    ::close(fd);
  }

  std::string address_a;
  std::string address_b;

 private:
  std::string a_;
  std::string b_;
  bool ok_ = false;
};

// A raw frame on a raw socket, for peers that do not follow the protocol.
void write_frame(asio::ip::tcp::socket& socket, FrameHeader header,
                 std::span<const std::byte> payload = {}) {
  header.payload_bytes = static_cast<std::uint32_t>(payload.size());
  const auto head = encode_header(header);
  asio::write(socket, asio::buffer(head.data(), head.size()));
  if (!payload.empty()) asio::write(socket, asio::buffer(payload.data(), payload.size()));
}
Frame read_frame(asio::ip::tcp::socket& socket) {
  std::array<std::byte, kFrameHeaderBytes> head;
  asio::read(socket, asio::buffer(head.data(), head.size()));
  Frame frame;
  frame.header = decode_header(head, kMaxPayloadBytes);
  frame.payload.resize(frame.header.payload_bytes);
  asio::read(socket, asio::buffer(frame.payload.data(), frame.payload.size()));
  return frame;
}

void signal_byte(Pipe& pipe) {
  const char byte = 1;
  if (::write(pipe.write_end(), &byte, 1) != 1) _exit(3);
}

std::uint16_t read_port(Pipe& pipe) {
  std::uint16_t port = 0;
  if (::read(pipe.read_end(), &port, sizeof(port)) != sizeof(port)) return 0;
  return port;
}
void write_port(Pipe& pipe, std::uint16_t port) {
  if (::write(pipe.write_end(), &port, sizeof(port)) != sizeof(port)) _exit(3);
}

class MsgAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::getuid() != 0) GTEST_SKIP() << "needs root for network namespaces";
    ASSERT_TRUE(hosts.ok()) << "could not make two network namespaces (ip netns, veth)";
    create_secret_file(secret);
    create_secret_file(wrong_secret);
    // Secrets this machine may have in the usual places play no part.
    ::setenv(kSecretEnv, (dir / "no-such-secret").c_str(), 1);
  }
  void TearDown() override { ::unsetenv(kSecretEnv); }

  // A manager on host a, with the secret; returns "HOST:PORT".
  std::string start_manager() {
    Pipe ready;
    manager_ = std::make_unique<Child>([&] {
      hosts.enter('a');
      Manager manager({.listen = hosts.address_a + ":0", .secret_file = secret});
      const std::string address = manager.address();
      write_port(ready,
                 static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1))));
      manager.run();
    });
    ready.close_write();
    return hosts.address_a + ":" + std::to_string(read_port(ready));
  }

  TwoHosts hosts;
  TempDir dir;
  std::string secret = dir / "secret";
  std::string wrong_secret = dir / "wrong-secret";
  std::unique_ptr<Child> manager_;
};

TEST_F(MsgAuthTest, AListenerBeyondLoopbackNeedsASecret) {
  const int code = sheaf::testing::run_in_child([&] {
    hosts.enter('a');
    const Error none = refusal([&] { Manager manager({.listen = hosts.address_a + ":0"}); },
                               "needs a shared secret");
    EXPECT_EQ(none.code(), Errc::kNotFound);
    EXPECT_NE(none.message().find("no-such-secret"), std::string::npos) << none.message();
    // A secret others may read is refused, naming the file.
    const std::string loose = dir / "loose-secret";
    create_secret_file(loose);
    ::chmod(loose.c_str(), 0644);
    EXPECT_EQ(
        refusal([&] { Manager manager({.listen = hosts.address_a + ":0", .secret_file = loose}); },
                "chmod 600")
            .code(),
        Errc::kInvalidArgument);
    // Loopback needs none, on host a as anywhere.
    Manager local({.listen = "127.0.0.1:0"});
    std::thread serve([&] { local.run(); });
    {
      // A channel that listens beyond loopback needs one as well.
      Client bare = Client::connect("bare", {.manager = local.address()});
      EXPECT_EQ(
          refusal([&] { bare.create_channel("wide", {.tcp_listen = hosts.address_a + ":0"}); },
                  "channel wide: listening on")
              .code(),
          Errc::kNotFound);
      // Nor on a wildcard address: it would send other hosts' clients to their own.
      EXPECT_EQ(refusal([&] { bare.create_channel("any", {.tcp_listen = "0.0.0.0:0"}); },
                        "other hosts reach this one at")
                    .code(),
                Errc::kInvalidArgument);
      Client me = Client::connect("owner", {.manager = local.address(), .secret_file = secret});
      Channel c = me.create_channel("wide", {.tcp_listen = hosts.address_a + ":0"});
      EXPECT_NE(c.address().find("tcp:" + hosts.address_a), std::string::npos) << c.address();
    }
    local.stop();
    serve.join();
  });
  EXPECT_EQ(code, 0);
}

TEST_F(MsgAuthTest, OnlyClientsThatKnowTheSecretReachTheManagerAndChannels) {
  const std::string manager = start_manager();
  Pipe created;
  Child owner([&] {
    hosts.enter('a');
    Client me = Client::connect("owner", {.manager = manager, .secret_file = secret});
    Channel channel = me.create_channel("far", {.tcp_listen = hosts.address_a + ":0"});
    signal_byte(created);
    for (int i = 0; i < 20; ++i) {
      Message m = channel.receive(10s);
      ASSERT_NE(m.event, Event::kTimeout);
      // A peer that did not authenticate never shows up as an event.
      EXPECT_EQ(m.sender, "near") << event_name(m.event);
      if (m.event == Event::kDisconnect) break;
      if (m.event == Event::kMessage) {
        std::string text(m.payload.text());
        for (char& c : text) c = static_cast<char>(std::toupper(c));
        channel.reply(m.index, 7, std::as_bytes(std::span(text.data(), text.size())));
      }
    }
  });
  created.close_write();
  char byte = 0;
  ASSERT_EQ(::read(created.read_end(), &byte, 1), 1);

  const int code = sheaf::testing::run_in_child([&] {
    hosts.enter('b');
    // No secret at all: said before anything is sent.
    EXPECT_EQ(refusal([&] { Client::connect("nosecret", {.manager = manager, .timeout = 2000ms}); },
                      "another host")
                  .code(),
              Errc::kNotFound);
    // The wrong secret: the manager refuses.
    EXPECT_EQ(refusal(
                  [&] {
                    Client::connect(
                        "wrong",
                        {.manager = manager, .timeout = 2000ms, .secret_file = wrong_secret});
                  },
                  "authentication failed")
                  .sys_errno(),
              EACCES);
    Client near = Client::connect("near", {.manager = manager, .secret_file = secret});
    const auto list = near.channels();
    ASSERT_EQ(list.size(), 1u);
    const std::string tcp = list[0].address.substr(list[0].address.find("tcp:") + 4);
    const std::string host = tcp.substr(0, tcp.rfind(':'));
    const auto port = static_cast<std::uint16_t>(std::stoi(tcp.substr(tcp.rfind(':') + 1)));
    EXPECT_EQ(host, hosts.address_a);

    // A peer that skips authentication and says hello is refused (EACCES)
    // and hung up on.
    asio::io_context io;
    asio::ip::tcp::socket raw(io);
    raw.connect({asio::ip::make_address(host), port});
    Frame challenge = read_frame(raw);
    EXPECT_EQ(challenge.header.type, FrameType::kChallenge);
    EXPECT_EQ(challenge.payload.size(), kNonceBytes);
    const std::string hello = R"({"id":"intruder","pid":1})";
    write_frame(raw, {FrameType::kHello}, std::as_bytes(std::span(hello.data(), hello.size())));
    Frame refused = read_frame(raw);
    EXPECT_EQ(refused.header.type, FrameType::kError);
    EXPECT_EQ(refused.header.value, EACCES);
    std::array<char, 1> rest;
    asio::error_code ec;
    raw.read_some(asio::buffer(rest), ec);
    EXPECT_EQ(ec, asio::error::eof);

    // Nor can one that says it sends a megabyte before authenticating make
    // the owner wait for (and keep) it: refused at the header.
    asio::ip::tcp::socket greedy(io);
    greedy.connect({asio::ip::make_address(host), port});
    EXPECT_EQ(read_frame(greedy).header.type, FrameType::kChallenge);
    FrameHeader big{FrameType::kAuthenticate};
    big.payload_bytes = 1 << 20;
    const auto head = encode_header(big);
    asio::write(greedy, asio::buffer(head.data(), head.size()));
    Frame cut_off = read_frame(greedy);
    EXPECT_EQ(cut_off.header.type, FrameType::kError);
    EXPECT_EQ(cut_off.header.value, EACCES);

    // With the secret, through TCP across the two hosts (its Unix socket is
    // another host's, and not used).
    Connection far = near.connect_channel("far", 5s, true);
    Reply r = far.send(1, "across hosts", 5s);
    EXPECT_EQ(r.answer, 7);
    EXPECT_EQ(r.payload.text(), "ACROSS HOSTS");
    far.disconnect();
  });
  EXPECT_EQ(code, 0);
  EXPECT_EQ(owner.wait_code(), 0);
}

TEST_F(MsgAuthTest, AServerThatDoesNotKnowTheSecretIsRefusedByTheClient) {
  // An impostor on host a: it challenges, takes any answer, and sends a
  // proof it cannot have made.
  Pipe ready;
  Child impostor([&] {
    hosts.enter('a');
    asio::io_context io;
    asio::ip::tcp::acceptor acceptor(io, {asio::ip::make_address(hosts.address_a), 0});
    write_port(ready, acceptor.local_endpoint().port());
    asio::ip::tcp::socket s = acceptor.accept();
    const Nonce nonce = random_nonce();
    write_frame(s, {FrameType::kChallenge}, nonce);
    read_frame(s);  // the client's proof: taken, unchecked
    const std::array<std::byte, kProofBytes> made_up{};
    write_frame(s, {FrameType::kAuthenticated}, made_up);
    std::array<char, 64> rest;
    asio::error_code ec;
    while (!ec) s.read_some(asio::buffer(rest), ec);  // until the client hangs up
  });
  ready.close_write();
  const std::string address = hosts.address_a + ":" + std::to_string(read_port(ready));
  const int code = sheaf::testing::run_in_child([&] {
    hosts.enter('b');
    EXPECT_EQ(refusal(
                  [&] {
                    Client::connect("careful",
                                    {.manager = address, .timeout = 2000ms, .secret_file = secret});
                  },
                  "does not know the shared secret")
                  .sys_errno(),
              EACCES);
  });
  EXPECT_EQ(code, 0);
  EXPECT_EQ(impostor.wait_code(), 0);
}

}  // namespace
}  // namespace sheaf::msg
