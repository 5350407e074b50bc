// sheaf/msg_manager.hpp: the name service of the message layer.
//
// A manager maps channel names to where their owners listen. It carries no
// messages: a client asks it once for a channel's address and then talks to
// the owner directly. It forgets a channel when its owner's connection to
// it closes (the owner exited or died), and a restarted manager learns the
// channels again from their live owners, which register them anew
// (docs/msg.md). `sheaf msg manager` runs one.
#pragma once

#include <memory>
#include <string>

namespace sheaf::msg {

struct ManagerOptions {
  // "HOST:PORT". On an address other hosts can reach (not loopback), every
  // connection from another host must prove it knows the shared secret
  // (docs/msg.md, "Security"); the manager does not start without one.
  std::string listen = "127.0.0.1:9200";
  // The shared secret's file; empty: $SHEAF_SECRET_FILE, then
  // ~/.config/sheaf/secret, then /etc/sheaf/secret.
  std::string secret_file{};
  bool stop_on_signals = false;  // SIGINT and SIGTERM make run() return
};

class Manager {
 public:
  // Binds the listener; throws sheaf::Error (kAlreadyExists if the port is
  // taken, kInvalidArgument for an address it cannot listen on, kNotFound
  // when it needs a shared secret and finds none).
  explicit Manager(const ManagerOptions& options);
  ~Manager();
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;

  // The address it listens on, "HOST:PORT" (the real port if 0 was asked).
  std::string address() const;
  // Serves until stop() (from any thread) or, if asked, a signal.
  void run();
  void stop();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace sheaf::msg
