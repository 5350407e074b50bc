// msg_worker.cpp: one "host"'s side of the cross-host message test
// (cross_host_test.sh): payloads by heap reference both ways between two
// hosts that mount one heap file through two GlusterFS mounts, over TCP,
// authenticated with a shared secret.
//
//   sheaf_gluster_msg_worker serve HEAP MANAGER LISTEN SECRET ROUNDS
//       owns channel "across" (also on TCP at LISTEN, port 0), answers ROUNDS
//       messages: each must come by reference and read right under the heap's
//       lock; the answer is a loan by reference holding each byte plus one
//   sheaf_gluster_msg_worker send HEAP MANAGER SECRET ROUNDS
//       ROUNDS sends of loans from 1 KiB to 1 MiB by reference; every reply
//       must come by reference and read right
//
// The bytes are written and read inside heap sections: on a network
// filesystem that is what makes one host's writes visible to the other
// (docs/heap.md, "Consistency model"); the message only says where they are.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "sheaf/heap.hpp"
#include "sheaf/msg.hpp"

namespace {

using namespace std::chrono_literals;
namespace msg = sheaf::msg;

int fail(const std::string& why) {
  std::fprintf(stderr, "msg_worker: %s\n", why.c_str());
  return 1;
}

std::byte pattern(int round, std::size_t i) {
  return static_cast<std::byte>((round * 31 + i) % 251);
}

std::size_t size_of_round(int round) {
  return std::size_t{1024} << (round % 11);  // 1 KiB .. 1 MiB
}

// Whether `bytes` hold pattern(round, i) + plus, read inside a section.
bool reads_right(sheaf::Heap& heap, std::span<const std::byte> bytes, int round, int plus) {
  bool right = bytes.size() == size_of_round(round);
  heap.shared([&] {
    for (std::size_t i = 0; right && i < bytes.size(); ++i) {
      right = bytes[i] == static_cast<std::byte>(static_cast<int>(pattern(round, i)) + plus);
    }
  });
  return right;
}

int serve(const std::string& path, const std::string& manager, const std::string& listen,
          const std::string& secret, int rounds) {
  sheaf::Heap heap = sheaf::Heap::open(path).value();
  msg::Client me = msg::Client::connect("host1", {.manager = manager, .secret_file = secret});
  me.attach(heap);
  msg::Channel channel = me.create_channel("across", {.tcp_listen = listen});
  std::printf("serving channel across at %s\n", channel.address().c_str());
  std::fflush(stdout);
  for (int answered = 0; answered < rounds;) {
    msg::Message m = channel.receive(30s);
    if (m.event == msg::Event::kTimeout) return fail("no message for 30 s");
    if (m.event != msg::Event::kMessage) continue;
    if (!m.payload.by_reference()) return fail("a message came by copy, not by reference");
    if (!reads_right(heap, m.payload.bytes(), m.type, 0)) {
      return fail("message " + std::to_string(m.type) + " reads wrong on this host");
    }
    msg::Loan answer = msg::Loan::allocate(heap, m.payload.size());
    heap.exclusive([&] {
      for (std::size_t i = 0; i < answer.size(); ++i) {
        answer.bytes()[i] = static_cast<std::byte>(static_cast<int>(m.payload.bytes()[i]) + 1);
      }
    });
    channel.reply(m.index, m.type, std::move(answer));
    ++answered;
  }
  // Until the sender says goodbye: its last reply must not be cut off.
  for (int i = 0; i < 300; ++i) {
    if (channel.receive(100ms).event == msg::Event::kDisconnect) break;
  }
  std::printf("answered %d messages by reference\n", rounds);
  return 0;
}

int send(const std::string& path, const std::string& manager, const std::string& secret,
         int rounds) {
  sheaf::Heap heap = sheaf::Heap::open(path).value();
  msg::Client me = msg::Client::connect("host2", {.manager = manager, .secret_file = secret});
  me.attach(heap);
  msg::Connection across = me.connect_channel("across", 30s, /*wait=*/true);
  if (!across.by_reference(heap)) return fail("the owner does not map the heap");
  for (int round = 0; round < rounds; ++round) {
    msg::Loan loan = across.loan(size_of_round(round));
    heap.exclusive([&] {
      for (std::size_t i = 0; i < loan.size(); ++i) loan.bytes()[i] = pattern(round, i);
    });
    msg::Reply r = across.send(round, std::move(loan), 10s);
    if (r.answer != round)
      return fail("reply " + std::to_string(r.answer) + " to " + std::to_string(round));
    if (!r.payload.by_reference()) return fail("a reply came by copy, not by reference");
    if (!reads_right(heap, r.payload.bytes(), round, 1)) {
      return fail("reply " + std::to_string(round) + " reads wrong on this host");
    }
  }
  across.disconnect();
  std::printf("sent %d messages by reference and read %d replies by reference\n", rounds, rounds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string verb = argc > 1 ? argv[1] : "";
    if (verb == "serve" && argc == 7) {
      return serve(argv[2], argv[3], argv[4], argv[5], std::atoi(argv[6]));
    }
    if (verb == "send" && argc == 6) return send(argv[2], argv[3], argv[4], std::atoi(argv[5]));
    std::fprintf(stderr,
                 "usage: sheaf_gluster_msg_worker serve HEAP MANAGER LISTEN SECRET ROUNDS\n"
                 "       sheaf_gluster_msg_worker send HEAP MANAGER SECRET ROUNDS\n");
    return 2;
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}
