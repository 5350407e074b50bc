// consumer.cpp: what a program built against an installed Sheaf does with it
// (tests/install/install_test.sh): a heap of its own, a manager, a channel,
// and one message sent by heap reference within this process. Exits 0 when
// the reply says the owner read the payload.
#include <sheaf/heap.hpp>
#include <sheaf/msg.hpp>
#include <sheaf/msg_manager.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer HEAP_PATH\n");
    return 2;
  }
  using namespace std::chrono_literals;
  sheaf::Heap heap = sheaf::Heap::create(argv[1], {.initial_size = 16 << 20}).value();
  sheaf::msg::Manager manager({.listen = "127.0.0.1:0"});
  std::thread names([&] { manager.run(); });
  int status = 1;
  {
    auto owner = sheaf::msg::Client::connect("owner", {.manager = manager.address()});
    owner.attach(heap);
    sheaf::msg::Channel channel = owner.create_channel("consumer");
    std::thread serve([&] {
      sheaf::msg::Message m = channel.receive(5s);
      const bool good = m.event == sheaf::msg::Event::kMessage && m.payload.by_reference() &&
                        m.payload.text() == "by reference";
      channel.reply(m.index, good ? 1 : 0);
    });
    auto sender = sheaf::msg::Client::connect("sender", {.manager = manager.address()});
    sender.attach(heap);
    sheaf::msg::Connection to = sender.connect_channel("consumer", 5s);
    const std::string text = "by reference";
    sheaf::msg::Loan loan = sheaf::msg::Loan::allocate(heap, text.size());
    std::memcpy(loan.bytes().data(), text.data(), text.size());
    status = to.send(1, std::move(loan), 5s).answer == 1 ? 0 : 1;
    serve.join();
  }
  manager.stop();
  names.join();
  std::printf("consumer: %s\n", status == 0 ? "a message by reference went through" : "FAILED");
  return status;
}
