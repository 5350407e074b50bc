// sheaf/msg.hpp: named channels between processes, with payloads that travel
// as heap references when both ends map the heap (docs/msg.md).
//
//   auto client = sheaf::msg::Client::connect("server");         // finds the manager
//   auto channel = client.create_channel("jobs");                 // unique name
//   sheaf::msg::Message m = channel.receive(std::chrono::seconds(1));
//   if (m.event == sheaf::msg::Event::kMessage) channel.reply(m.index, 0, m.payload.bytes());
//
//   auto client = sheaf::msg::Client::connect("worker");
//   auto jobs = client.connect_channel("jobs", std::chrono::seconds(5));
//   sheaf::msg::Reply r = jobs.send(1, bytes, std::chrono::seconds(1));
//
// A manager (`sheaf msg manager`) only names channels: it maps a channel's
// name to where its owner listens. Messages go straight between the two
// processes (a Unix socket on one host, TCP between hosts), never through
// it. The model, ownership rules and faults are in docs/msg.md.
//
// Every call reports failure by throwing sheaf::Error: kTimedOut when its
// timeout passed, kBusy when a buffered send met the receiver's bound for
// longer than its timeout, kNotFound for a channel that does not exist,
// kAlreadyExists for a name that is taken, kCorrupted for a peer that broke
// the protocol, kSystem (with the errno) when a peer is gone or the system
// refused. No call aborts the process, and SIGPIPE is never raised.
//
// Objects of these classes belong to one thread at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "sheaf/ref.hpp"

namespace sheaf {
class Heap;
}  // namespace sheaf

namespace sheaf::msg {

// How long a call may wait; negative (kForever) waits for as long as it takes.
using Timeout = std::chrono::milliseconds;
inline constexpr Timeout kForever{-1};

inline constexpr std::uint16_t kDefaultManagerPort = 9200;
// Read when neither an explicit address nor $SHEAF_MANAGER names the manager:
// its first line, "HOST:PORT".
inline constexpr const char* kManagerConfigFile = "/etc/sheaf/manager";

// Where the manager is: `explicit_address` ("HOST:PORT") when not empty,
// else $SHEAF_MANAGER, else the first line of kManagerConfigFile, else
// 127.0.0.1 and kDefaultManagerPort.
std::string manager_address(const std::string& explicit_address = "");

// Writes a new shared secret (32 random bytes, as hex) to `file`, mode 0600,
// for listeners that other hosts can reach (docs/msg.md, "Security"); throws
// kAlreadyExists rather than replace a file.
void create_secret_file(const std::string& file);

// A held block of a heap (Heap::allocate_held), lent to the caller to fill in
// place and then sent: the hold goes to the receiver, so the bytes are never
// copied when the receiver maps the heap too (else they are copied and the
// hold released). A Loan that is never sent releases its hold.
class Loan {
 public:
  static Loan allocate(Heap& heap, std::size_t bytes);
  Loan(Loan&& other) noexcept;
  Loan& operator=(Loan&& other) noexcept;
  Loan(const Loan&) = delete;
  Loan& operator=(const Loan&) = delete;
  ~Loan();

  std::span<std::byte> bytes() const { return {data_, size_}; }
  template <class T>
  T* as() const {
    return reinterpret_cast<T*>(data_);
  }
  Heap& heap() const { return *heap_; }
  std::size_t size() const { return size_; }
  explicit operator bool() const { return data_ != nullptr; }

 private:
  friend struct Sender;
  Loan(Heap* heap, std::byte* data, std::size_t size) : heap_(heap), data_(data), size_(size) {}
  void reset() noexcept;
  Heap* heap_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// What a message or reply carries: bytes copied into this process, or a
// read-only view of a held block of a heap this process maps, whose hold is
// released when the Payload is destroyed.
class Payload {
 public:
  Payload() = default;
  explicit Payload(std::vector<std::byte> bytes) : copy_(std::move(bytes)) {}
  Payload(Payload&& other) noexcept;
  Payload& operator=(Payload&& other) noexcept;
  Payload(const Payload&) = delete;
  Payload& operator=(const Payload&) = delete;
  ~Payload();

  std::span<const std::byte> bytes() const {
    return heap_ != nullptr ? std::span<const std::byte>(view_, ref_.length)
                            : std::span<const std::byte>(copy_);
  }
  std::string_view text() const {
    const auto b = bytes();
    return {reinterpret_cast<const char*>(b.data()), b.size()};
  }
  std::size_t size() const { return bytes().size(); }
  bool by_reference() const { return heap_ != nullptr; }
  // The reference it arrived as (checked against the heap: the block is
  // held by this process and carries that serial); empty for a copy.
  std::optional<Ref> ref() const {
    return heap_ != nullptr ? std::optional<Ref>(ref_) : std::nullopt;
  }

 private:
  friend struct Receiver;
  void reset() noexcept;
  std::vector<std::byte> copy_;
  Heap* heap_ = nullptr;  // set: view_ is a held block of it, held by this process
  const std::byte* view_ = nullptr;
  Ref ref_;  // as it arrived (its length is the view's), when heap_ is set
};

// What Channel::receive returns.
enum class Event {
  kMessage,     // a synchronous send: answer it with Channel::reply(index, ...)
  kBuffered,    // an asynchronous (buffered) send: nothing to answer
  kTimer,       // a timer of this channel fired; type is the timer's
  kDisconnect,  // a client disconnected from the channel
  kDeath,       // a client's connection broke without a goodbye (it died)
  kTimeout,     // nothing happened before the timeout
};
const char* event_name(Event event) noexcept;

struct Message {
  Event event = Event::kTimeout;
  std::int32_t type = 0;  // the sender's message type, or the timer's
  std::string sender;     // the sending client's id (also for kDisconnect, kDeath)
  Payload payload;
  int index = -1;  // kMessage: what Channel::reply takes
};

struct Reply {
  std::int32_t answer = 0;
  Payload payload;
};

struct ChannelInfo {
  std::string name;
  std::string owner;     // the owning client's id
  std::int64_t pid = 0;  // the owner's process
  std::string address;   // where it listens: "unix:PATH" and/or "tcp:HOST:PORT", space separated
  std::uint32_t max_buffered = 0;
};

struct ConnectOptions {
  std::string manager{};  // "HOST:PORT"; empty: manager_address()
  Timeout timeout{5000};
  // The shared secret that proves this client to a manager or channel on
  // another host, and them to it (docs/msg.md, "Security"); also what the
  // client's channels that listen beyond loopback ask for. Empty:
  // $SHEAF_SECRET_FILE, then ~/.config/sheaf/secret, then /etc/sheaf/secret.
  std::string secret_file{};
};

struct ChannelOptions {
  // At most this many buffered messages from one sender wait unread; a
  // sender that reaches it waits (up to its timeout) for the receiver.
  std::uint32_t max_buffered = 64;
  // Also listen on TCP ("HOST:PORT", port 0 for any), for clients on other
  // hosts. Empty: a Unix socket only (0600, in a 0700 directory of the user).
  // Beyond loopback, clients from other hosts must prove they know the
  // shared secret (ConnectOptions::secret_file); without one, create_channel
  // throws.
  std::string tcp_listen{};
  // Clients of another user are refused (SO_PEERCRED) unless they are in this
  // group (their own or one of their others); -1: none. (Root is always let
  // in.) The socket then lies in /tmp/sheaf-UID-gGID, 0750 and of the group,
  // and is 0660; the owner must be in the group unless it is root.
  std::int64_t allow_group = -1;
};

class Channel;
class Connection;

// One process's connection to the manager, under a client id (at most 8
// characters are shown by MESSIP programs; Sheaf allows up to 47).
class Client {
 public:
  static Client connect(const std::string& id, const ConnectOptions& options = {});
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  const std::string& id() const;
  // Heaps this process maps: a payload in one of them (a Loan) travels by
  // reference to peers that attached the same heap. The heap must stay open
  // while channels and connections made after this call live.
  void attach(Heap& heap);

  Channel create_channel(const std::string& name, const ChannelOptions& options = {});
  // Connects to a channel by name; `wait`: if it does not exist yet, wait
  // (up to the timeout) for it to be created.
  Connection connect_channel(const std::string& name, Timeout timeout, bool wait = false);
  std::vector<ChannelInfo> channels(Timeout timeout = Timeout(5000));
  // A round trip to the manager.
  std::chrono::nanoseconds ping(Timeout timeout = Timeout(5000));

  // What group_send() did: which members took the message, and why the
  // others did not (one line each, naming the channel).
  struct GroupSend {
    std::vector<std::string> delivered;
    std::vector<std::string> failures;
  };
  // A buffered send of the same bytes to every channel in `group`
  // (Channel::join), in turn; a member that cannot take it (gone, or at its
  // bound for `timeout`) does not stop the others. Throws only if the
  // manager cannot say who the members are.
  GroupSend group_send(const std::string& group, std::int32_t type,
                       std::span<const std::byte> bytes, Timeout timeout);

  struct State;

 private:
  explicit Client(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

// A channel this process owns: clients connect to it by name and send to it.
class Channel {
 public:
  Channel(Channel&&) noexcept;
  Channel& operator=(Channel&&) noexcept;
  ~Channel();  // deletes the channel

  const std::string& name() const;
  // The next message or event, oldest first; Event::kTimeout after `timeout`.
  Message receive(Timeout timeout);
  // The next message of any of `channels`, and which one it came on.
  static std::pair<std::size_t, Message> receive_any(std::span<Channel* const> channels,
                                                     Timeout timeout);
  // Answers the synchronous message received with this index. Replies may
  // come in any order. Throws kNotFound for an index not pending (answered,
  // or its client gone); a reply to a send that timed out is dropped by the
  // client, never taken for the answer to a later send.
  void reply(int index, std::int32_t answer, std::span<const std::byte> bytes = {});
  void reply(int index, std::int32_t answer, Loan&& loan);
  // A timer that makes receive() return Event::kTimer with `type`, first
  // after `first`, then every `repeat` (zero: once). Returns its id.
  int timer_create(std::int32_t type, Timeout first, Timeout repeat = Timeout(0));
  void timer_delete(int timer);
  std::size_t clients() const;
  // Joins a named group: Client::group_send to it reaches this channel too,
  // until the channel is gone.
  void join(const std::string& group);
  // "unix:PATH" and, with ChannelOptions::tcp_listen, " tcp:HOST:PORT".
  const std::string& address() const;

  struct State;

 private:
  friend class Client;
  explicit Channel(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// A client's connection to a channel (the server's process).
class Connection {
 public:
  Connection(Connection&&) noexcept;
  Connection& operator=(Connection&&) noexcept;
  ~Connection();  // disconnects

  const std::string& channel() const;
  // Sends a message and waits for its reply.
  Reply send(std::int32_t type, std::span<const std::byte> bytes, Timeout timeout);
  Reply send(std::int32_t type, Loan&& loan, Timeout timeout);
  Reply send(std::int32_t type, std::string_view text, Timeout timeout) {
    return send(type, std::as_bytes(std::span(text.data(), text.size())), timeout);
  }
  // Queues a message at the receiver without waiting for it, unless the
  // receiver holds max_buffered unread messages from us: then waits up to
  // `timeout` for it to read some, and throws kBusy (back-pressure).
  void buffered_send(std::int32_t type, std::span<const std::byte> bytes, Timeout timeout);
  void buffered_send(std::int32_t type, Loan&& loan, Timeout timeout);
  // A round trip to the channel's owner: whether it is there to answer.
  std::chrono::nanoseconds ping(Timeout timeout);
  // Whether a payload in `heap` travels by reference to this channel.
  bool by_reference(const Heap& heap) const;
  // A loan of `bytes` in a heap this client attached and the channel's
  // owner maps too (the first such), so that send() passes it by reference;
  // in the first attached heap if the owner maps none (it is then copied).
  // Throws kInvalidArgument if this client attached no heap.
  Loan loan(std::size_t bytes);
  // A loan for `count` objects of T (trivially copyable: they are bytes to
  // a receiver that does not map the heap), default-initialized.
  template <class T>
  Loan loan(std::size_t count) {
    static_assert(std::is_trivially_copyable_v<T>,
                  "a loan carries bytes: T must be trivially copyable");
    return loan(count * sizeof(T));
  }
  void disconnect();

  struct State;

 private:
  friend class Client;
  explicit Connection(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace sheaf::msg
