// manager.cpp: the name service, an Asio server on one thread.
//
// One Session per connected client. A session reads frames (FrameReader
// checks each before anything else sees it), answers each request in
// order, and writes its answers through a queue (one async_write at a
// time). A session that breaks the protocol is closed; its channels go
// with it, as they do when the client exits or dies.
#include "sheaf/msg_manager.hpp"

#include <asio/ip/tcp.hpp>
#include <asio/read.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <asio/write.hpp>
#include <cerrno>
#include <csignal>
#include <deque>
#include <map>
#include <set>

#include "addresses.hpp"
#include "auth.hpp"
#include "control.hpp"
#include "frame.hpp"
#include "sheaf/error.hpp"

namespace sheaf::msg {
namespace {

using asio::ip::tcp;

struct Session;

struct ChannelEntry {
  std::weak_ptr<Session> owner;
  std::string owner_id;
  std::int64_t pid = 0;
  std::string address;
  std::string host;  // the owner's host_identity(), passed on
  std::uint32_t max_buffered = 0;
  Json heaps = Json::array();    // what the owner maps, passed on to who connects
  std::set<std::string> groups;  // the groups it joined (it leaves them when it goes)
};

struct Waiter {  // a connect request for a channel that does not exist yet
  std::weak_ptr<Session> session;
  std::uint64_t request_id = 0;
  std::string name;
};

struct Registry {
  std::map<std::string, ChannelEntry> channels;
  std::vector<Waiter> waiters;
  std::set<std::shared_ptr<Session>> sessions;
};

Json describe(const std::string& name, const ChannelEntry& entry) {
  Json json{{"name", name},
            {"owner", entry.owner_id},
            {"pid", entry.pid},
            {"address", entry.address},
            {"max_buffered", entry.max_buffered},
            {"heaps", entry.heaps}};
  if (!entry.host.empty()) json["host"] = entry.host;  // (absent: the owner did not say)
  return json;
}

struct Session : std::enable_shared_from_this<Session> {
  Session(tcp::socket s, Registry& r, const Secret* secret)
      : socket(std::move(s)), registry(r), secret(secret) {}

  tcp::socket socket;
  Registry& registry;
  const Secret* secret;            // set when the manager listens beyond loopback
  std::optional<Nonce> challenge;  // sent, and not answered yet: nothing else is taken
  asio::steady_timer handshake_timer{socket.get_executor()};  // then it is hung up on
  FrameReader reader{kMaxControlBytes};
  std::array<std::byte, 16 * 1024> buffer;
  std::deque<std::vector<std::byte>> outgoing;  // whole frames, written in order
  std::string id;                               // empty until hello
  std::int64_t pid = 0;
  bool closing = false;  // close_after_writes() was called
  bool closed = false;

  void start() {
    asio::error_code ec;
    const auto remote = socket.remote_endpoint(ec);
    if (secret != nullptr && (ec || !is_loopback(remote.address()))) {
      challenge = random_nonce();
      // Until it has authenticated, nothing longer than its proof is read,
      // and it has a few seconds for that.
      reader.limit(kAuthenticateBytes);
      handshake_timer.expires_after(kHandshakeTime);
      handshake_timer.async_wait([self = shared_from_this()](asio::error_code timer_ec) {
        if (!timer_ec && self->challenge) self->close();
      });
      answer({FrameType::kChallenge}, {challenge->begin(), challenge->end()});
    }
    read_more();
  }

  void read_more() {
    socket.async_read_some(
        asio::buffer(buffer), [self = shared_from_this()](asio::error_code ec, std::size_t n) {
          if (ec) return self->close();
          self->reader.feed(std::span(self->buffer.data(), n));
          try {
            while (auto frame = self->reader.next()) self->handle(*frame);
          } catch (const Error& e) {
            // A peer that breaks the protocol or fails to authenticate:
            // tell it why, then hang up.
            const int error = e.sys_errno() == EACCES ? EACCES : EPROTO;
            self->answer({FrameType::kError, 0, 0, 0, 0, error}, error_payload(e.message()));
            return self->close_after_writes();
          }
          if (!self->closed && !self->closing) self->read_more();
        });
  }

  void answer(FrameHeader header, std::vector<std::byte> payload = {}) {
    header.payload_bytes = static_cast<std::uint32_t>(payload.size());
    const auto head = encode_header(header);
    std::vector<std::byte> frame(head.begin(), head.end());
    frame.insert(frame.end(), payload.begin(), payload.end());
    outgoing.push_back(std::move(frame));
    if (outgoing.size() == 1) write_next();
  }

  void fail(const Frame& request, int error, const std::string& message) {
    answer({FrameType::kError, 0, 0, request.header.channel, request.header.request_id, error},
           error_payload(message));
  }

  void write_next() {
    if (closed || outgoing.empty()) return;
    asio::async_write(socket, asio::buffer(outgoing.front()),
                      [self = shared_from_this()](asio::error_code ec, std::size_t) {
                        if (ec) return self->close();
                        self->outgoing.pop_front();
                        if (self->closing && self->outgoing.empty()) return self->close();
                        self->write_next();
                      });
  }

  // Reads no more; closes once what is queued (the error frame saying why)
  // is written. (Writing it here, beside an async_write that may be under
  // way with the queue's front, would send that frame twice and free it
  // twice.)
  void close_after_writes() {
    closing = true;
    if (outgoing.empty()) close();
  }

  void close() {
    if (closed) return;
    closed = true;
    asio::error_code ignored;
    socket.close(ignored);
    for (auto it = registry.channels.begin(); it != registry.channels.end();) {
      if (it->second.owner.lock().get() == this || it->second.owner.expired()) {
        it = registry.channels.erase(it);
      } else {
        ++it;
      }
    }
    std::erase_if(registry.waiters, [this](const Waiter& w) {
      auto s = w.session.lock();
      return !s || s.get() == this;
    });
    registry.sessions.erase(shared_from_this());
  }

  void handle(const Frame& frame) {
    const FrameHeader& h = frame.header;
    if (challenge) {
      const std::vector<std::byte> proof =
          answer_client(*secret, *challenge, frame, "this manager");
      challenge.reset();
      handshake_timer.cancel();
      reader.limit(kMaxControlBytes);
      return answer({FrameType::kAuthenticated}, proof);
    }
    if (id.empty() && h.type != FrameType::kHello && h.type != FrameType::kPing) {
      throw Error(Errc::kCorrupted, "the first frame must be hello", EPROTO);
    }
    switch (h.type) {
      case FrameType::kHello: {
        const Json hello = parse_control(frame);
        std::string who = string_field(hello, "id", frame);
        try {
          check_name(who, "client id");
        } catch (const Error& e) {
          return fail(frame, EINVAL, e.message());
        }
        id = std::move(who);
        pid = int_field(hello, "pid", frame);
        return answer({FrameType::kWelcome, 0, 0, 0, h.request_id, 0});
      }
      case FrameType::kPing:
        return answer({FrameType::kPong, 0, 0, 0, h.request_id, h.value});
      case FrameType::kCreateChannel:
        return create(frame);
      case FrameType::kDeleteChannel: {
        const std::string name = string_field(parse_control(frame), "name", frame);
        auto it = registry.channels.find(name);
        if (it == registry.channels.end() || it->second.owner.lock().get() != this) {
          return fail(frame, ENOENT, "no channel '" + name + "' of this client");
        }
        registry.channels.erase(it);
        return answer({FrameType::kDone, 0, 0, 0, h.request_id, 0});
      }
      case FrameType::kConnectChannel: {
        const std::string name = string_field(parse_control(frame), "name", frame);
        auto it = registry.channels.find(name);
        if (it != registry.channels.end() && !it->second.owner.expired()) {
          return answer({FrameType::kChannelConnected, 0, 0, 0, h.request_id, 0},
                        to_payload(describe(name, it->second)));
        }
        if (h.value != 0) {  // wait for it
          registry.waiters.push_back({weak_from_this(), h.request_id, name});
          return;
        }
        return fail(frame, ENOENT, "no channel named '" + name + "'");
      }
      case FrameType::kJoinGroup: {
        const Json request = parse_control(frame);
        const std::string group = string_field(request, "group", frame);
        const std::string name = string_field(request, "channel", frame);
        try {
          check_name(group, "group name");
        } catch (const Error& e) {
          return fail(frame, EINVAL, e.message());
        }
        auto it = registry.channels.find(name);
        if (it == registry.channels.end() || it->second.owner.lock().get() != this) {
          return fail(frame, ENOENT, "no channel '" + name + "' of this client");
        }
        it->second.groups.insert(group);
        return answer({FrameType::kDone, 0, 0, 0, h.request_id, 0});
      }
      case FrameType::kListGroup: {
        const std::string group = string_field(parse_control(frame), "group", frame);
        Json list = Json::array();
        for (const auto& [name, entry] : registry.channels) {
          if (entry.groups.contains(group) && !entry.owner.expired()) {
            list.push_back(describe(name, entry));
          }
        }
        return answer({FrameType::kChannelList, 0, 0, 0, h.request_id, 0}, to_payload(list));
      }
      case FrameType::kListChannels: {
        Json list = Json::array();
        for (const auto& [name, entry] : registry.channels) list.push_back(describe(name, entry));
        return answer({FrameType::kChannelList, 0, 0, 0, h.request_id, 0}, to_payload(list));
      }
      default:
        throw Error(Errc::kCorrupted,
                    std::string("a manager does not take '") + frame_type_name(h.type) + "' frames",
                    EPROTO);
    }
  }

  void create(const Frame& frame) {
    const Json request = parse_control(frame);
    const std::string name = string_field(request, "name", frame);
    const std::string address = string_field(request, "address", frame);
    try {
      check_name(name, "channel name");
      for (const auto& a : split_addresses(address)) parse_address(a);
    } catch (const Error& e) {
      return fail(frame, EINVAL, e.message());
    }
    if (frame.header.value < 0) return fail(frame, EINVAL, "max_buffered below zero");
    auto it = registry.channels.find(name);
    if (it != registry.channels.end()) {
      auto owner = it->second.owner.lock();
      if (owner && owner.get() != this) {
        return fail(frame, EEXIST,
                    "channel '" + name + "' exists (owner '" + it->second.owner_id + "', pid " +
                        std::to_string(it->second.pid) + ")");
      }
    }
    ChannelEntry entry{weak_from_this(),
                       id,
                       pid,
                       address,
                       request.contains("host") ? string_field(request, "host", frame) : "",
                       static_cast<std::uint32_t>(frame.header.value),
                       Json::array(),
                       {}};
    if (entry.host.size() > 256) return fail(frame, EINVAL, "'host' longer than 256 bytes");
    if (request.contains("heaps")) {
      // Checked here, so that a malformed list is refused to its sender
      // rather than passed on to every client that connects.
      if (!request["heaps"].is_array() || request["heaps"].size() > 1024) {
        return fail(frame, EINVAL, "'heaps' is not a list");
      }
      for (const Json& h : request["heaps"]) {
        if (!h.is_object() || !h.contains("uuid") || !h["uuid"].is_string() ||
            !h.contains("session") || !h["session"].is_number_unsigned()) {
          return fail(frame, EINVAL, "a malformed entry in 'heaps'");
        }
      }
      entry.heaps = request["heaps"];
    }
    registry.channels[name] = entry;
    answer({FrameType::kChannelCreated, 0, 0, 0, frame.header.request_id, 0});
    // Connect requests that waited for this name are answered now.
    std::vector<Waiter> waiting;
    std::erase_if(registry.waiters, [&](const Waiter& w) {
      if (w.name != name) return false;
      waiting.push_back(w);
      return true;
    });
    for (const Waiter& w : waiting) {
      if (auto s = w.session.lock(); s && !s->closed) {
        s->answer({FrameType::kChannelConnected, 0, 0, 0, w.request_id, 0},
                  to_payload(describe(name, entry)));
      }
    }
  }
};

}  // namespace

struct Manager::State {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  Registry registry;
  std::optional<Secret> secret;  // listening beyond loopback
  std::optional<asio::signal_set> signals;

  void accept() {
    acceptor.async_accept([this](asio::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) {
        asio::error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        auto session =
            std::make_shared<Session>(std::move(socket), registry, secret ? &*secret : nullptr);
        registry.sessions.insert(session);
        session->start();
      }
      accept();
    });
  }
};

Manager::Manager(const ManagerOptions& options) : state_(std::make_unique<State>()) {
  const tcp::endpoint endpoint = listen_endpoint(options.listen, "manager");
  if (!is_loopback(endpoint.address())) {
    state_->secret = load_secret(options.secret_file,
                                 "manager: listening on " + options.listen +
                                     ", which other hosts can reach, needs a shared secret");
  }
  asio::error_code ec;
  auto& acceptor = state_->acceptor;
  acceptor.open(endpoint.protocol());
  acceptor.set_option(tcp::acceptor::reuse_address(true));
  acceptor.bind(endpoint, ec);
  if (ec) {
    throw Error(ec == asio::error::address_in_use ? Errc::kAlreadyExists : Errc::kSystem,
                "manager: cannot listen on " + options.listen + ": " + ec.message(), ec.value());
  }
  acceptor.listen();
  if (options.stop_on_signals) {
    state_->signals.emplace(state_->io, SIGINT, SIGTERM);
    state_->signals->async_wait([this](asio::error_code, int) { state_->io.stop(); });
  }
  state_->accept();
}

Manager::~Manager() = default;

std::string Manager::address() const {
  const auto endpoint = state_->acceptor.local_endpoint();
  return endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
}

void Manager::run() {
  // A client that vanishes mid-write must not kill the manager (MESSIP's
  // did): Asio sends with MSG_NOSIGNAL; this covers anything else.
  std::signal(SIGPIPE, SIG_IGN);
  state_->io.run();
}

void Manager::stop() {
  state_->io.stop();
}

}  // namespace sheaf::msg
