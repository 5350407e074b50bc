// channel.cpp: the owner's side of a channel.
//
// Everything happens in receive(), on the caller's thread: one poll() over
// the listening sockets, every connected client and the manager link; then
// whatever arrived is read, checked and queued, and the oldest message or
// event is returned. Nothing runs behind the caller's back, so a channel
// needs no thread and no lock (MESSIP's manager ran a thread per client).
//
// A client's connection carries a token (its hello's): when the link breaks
// and the client connects again and sends the same request (same id), the
// request is not run twice. The copy gets the reply the first got, or will
// get, however the owner's reply() and the reconnection interleave (or, for
// a reply too large to keep, an ECONNRESET error: never a second run).
//
// Buffered messages are bounded per sender by credits: a client starts with
// max_buffered of them, spends one per buffered send, and gets them back
// (kCredit) as the owner receives its messages. A sender out of credits
// waits; nothing is ever buffered beyond the bound.
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <atomic>
#include <cerrno>
#include <deque>
#include <limits>
#include <map>

#include "addresses.hpp"
#include "auth.hpp"
#include "client_state.hpp"
#include "peers.hpp"
#include "sheaf/error.hpp"
#include "sheaf/heap.hpp"

namespace sheaf::msg {

const char* event_name(Event event) noexcept {
  switch (event) {
    case Event::kMessage:
      return "message";
    case Event::kBuffered:
      return "buffered";
    case Event::kTimer:
      return "timer";
    case Event::kDisconnect:
      return "disconnect";
    case Event::kDeath:
      return "death";
    case Event::kTimeout:
      return "timeout";
  }
  return "unknown";
}

namespace {

constexpr std::uint32_t kMaxBufferedLimit = 1 << 20;
// How long a reply or credit may wait for a client's socket to drain.
constexpr Timeout kWriteTimeout{1000};
// How often a channel whose manager went away tries to reach it again.
constexpr auto kManagerRetry = std::chrono::seconds(1);
// How long a client whose link broke may come back for its request, and how
// many such clients are remembered.
constexpr auto kResumeWindow = std::chrono::seconds(30);
constexpr std::size_t kMaxDetached = 1024;
// A reply is kept for a copy of its request only up to this size; a copy
// of a request whose larger reply was lost gets an error, never a second run.
constexpr std::size_t kMaxKeptReply = std::size_t{1} << 20;
// At most this many clients of other hosts may be authenticating at once.
constexpr std::size_t kMaxHandshakes = 64;

bool valid_token(const std::string& token) {
  return token.size() == 32 && std::all_of(token.begin(), token.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::atomic<unsigned> socket_counter{0};

}  // namespace

struct Channel::State {
  struct Peer {
    Link link;
    std::string id{};                  // empty until its hello
    std::string token{};               // its hello's; empty: its requests are not deduplicated
    std::optional<Nonce> challenge{};  // sent to a client on another host, not yet answered
    std::chrono::steady_clock::time_point handshake_until{};  // then it is let go
    std::uint64_t replied = 0;  // the request id of the last reply sent on this link
    std::vector<PeerHeap> heaps{};
    std::uint32_t queued_buffered = 0;  // its buffered messages in our queue
    std::uint32_t credit_owed = 0;      // credits to give back
  };
  struct Queued {
    Message message;
    std::uint64_t peer = 0;  // for a buffered message: whose credit it returns
  };
  // A synchronous message waiting for its reply. Its slot (the index the
  // owner holds) is freed only by reply(): a slot freed while the owner still
  // held its index would be handed to another message and answered with
  // what was meant for this one. Its sender gone, `peer` is 0.
  struct Pending {
    std::uint64_t peer = 0;
    std::uint64_t request_id = 0;
    bool used = false;
    std::string token;  // its sender's
  };
  // What the owner remembers of a connection's token: its newest request,
  // until the next one, so that a copy sent after a reconnection is
  // answered instead of run again.
  struct Resumable {
    std::uint64_t peer = 0;          // the live connection with this token; 0: none
    std::uint64_t last_request = 0;  // the newest request id seen
    int pending = -1;                // its index while it awaits reply()
    std::optional<Frame> reply;      // its reply, once given (if at most kMaxKeptReply)
    bool reply_not_kept = false;     // given, but too large to keep
    std::chrono::steady_clock::time_point detached{};  // when its link broke
  };
  struct Dying {  // settle_deaths()
    Message event;
    std::vector<PeerHeap> heaps;
    std::chrono::steady_clock::time_point until;
    std::chrono::steady_clock::time_point next_try;
  };
  struct Timer {
    int id = 0;
    std::int32_t type = 0;
    std::chrono::steady_clock::time_point due;
    std::chrono::milliseconds period{0};
  };

  std::shared_ptr<Client::State> client;
  std::string name;
  std::string address;
  ChannelOptions options;
  std::string socket_path;
  std::optional<asio::local::stream_protocol::acceptor> unix_acceptor;
  std::optional<asio::ip::tcp::acceptor> tcp_acceptor;
  std::optional<Secret> secret;  // tcp_acceptor listens beyond loopback
  std::map<std::uint64_t, Peer> peers;
  std::uint64_t next_peer = 1;
  std::deque<Queued> queue;
  std::vector<Pending> pending;
  std::map<std::string, Resumable> resumable;  // by token
  std::vector<Dying> dying;
  std::vector<Timer> timers;
  int next_timer = 1;
  std::chrono::steady_clock::time_point next_manager_try{};
  std::chrono::steady_clock::time_point last_socket_poll{};  // wait_and_serve()'s
  SpinBudget ring_spin{};  // wait_and_serve()'s, on the rings of its clients

  ~State() {
    for (auto& [key, peer] : peers) peer.link.close();
    if (!socket_path.empty()) ::unlink(socket_path.c_str());
    if (!client) return;
    std::lock_guard lock(client->mutex);
    // Clients whose death was not settled yet: one last try at their holds
    // (else the heap's next opener releases them).
    for (const Dying& d : dying) try_release_dead_peer(client->heaps, d.heaps);
    std::erase_if(client->channels, [&](const auto& r) { return r.name == name; });
    if (client->link) {
      try {
        const Json request{{"name", name}};
        client->request({FrameType::kDeleteChannel}, &request, deadline_after(Timeout(1000)),
                        "deleting channel " + name);
      } catch (const Error&) {  // the manager forgets it anyway when we go
      }
    }
  }

  void accept_all() {
    if (unix_acceptor) {
      for (;;) {
        asio::error_code ec;
        asio::local::stream_protocol::socket s(socket_context());
        unix_acceptor->accept(s, ec);
        if (ec) break;
        const int family = AF_UNIX;
        add_peer(Link(
            Link::Socket(socket_context(), asio::generic::stream_protocol(family, 0), s.release()),
            "a client of channel " + name));
      }
    }
    if (tcp_acceptor) {
      for (;;) {
        asio::error_code ec;
        asio::ip::tcp::socket s(socket_context());
        tcp_acceptor->accept(s, ec);
        if (ec) break;
        const int family = s.local_endpoint().protocol().family();
        const auto remote = s.remote_endpoint(ec);
        const bool other_host = secret && (ec || !is_loopback(remote.address()));
        add_peer(
            Link(Link::Socket(socket_context(), asio::generic::stream_protocol(family, IPPROTO_TCP),
                              s.release()),
                 "a client of channel " + name),
            other_host);
      }
    }
  }

  // Whether a user of this host may use the channel: this one, root, or a
  // member of the group the channel allows (with `pid`, when known, by the
  // process's own groups; else by the group database).
  bool user_allowed(uid_t uid, std::optional<gid_t> gid, pid_t pid) const {
    if (uid == ::getuid() || uid == 0) return true;
    if (options.allow_group < 0) return false;
    const auto group = static_cast<gid_t>(options.allow_group);
    if (gid == group) return true;
    return pid > 0 ? process_in_group(pid, group) : user_in_group(uid, group);
  }

  // `other_host`: a client from another host, which must authenticate first.
  // Any other is of this host, by a Unix socket (SO_PEERCRED says who) or by
  // loopback TCP (the kernel's socket diagnostics do): another user is let
  // in only as user_allowed() says.
  void add_peer(Link link, bool other_host = false) {
    std::string refused;  // who, if refused
    if (link.is_unix()) {
      const ucred who = link.peer_credentials();
      if (!user_allowed(who.uid, who.gid, who.pid)) {
        refused = "uid " + std::to_string(who.uid) + " (pid " + std::to_string(who.pid) + ")";
      }
    } else if (!other_host) {
      const std::optional<uid_t> uid = loopback_peer_uid(link.fd());
      if (!uid) {
        refused = "a loopback peer whose user the kernel does not tell";
      } else if (!user_allowed(*uid, std::nullopt, 0)) {
        refused = "uid " + std::to_string(*uid) + " (over loopback TCP)";
      }
    }
    if (!refused.empty()) {
      const std::string why = "channel " + name + " refuses " + refused;
      try {
        link.send({FrameType::kError, 0, 0, 0, 0, EACCES}, error_payload(why),
                  deadline_after(Timeout(100)));
      } catch (const Error&) {
      }
      link.close();
      return;
    }
    Peer peer{.link = std::move(link)};
    if (other_host) {
      const auto handshaking = std::count_if(peers.begin(), peers.end(),
                                             [](const auto& kv) { return kv.second.challenge; });
      if (static_cast<std::size_t>(handshaking) >= kMaxHandshakes) {
        peer.link.close();  // too many at it already: try again later
        return;
      }
      // Until it has authenticated, nothing longer than its proof is read.
      peer.link.limit_payload(kAuthenticateBytes);
      peer.handshake_until = std::chrono::steady_clock::now() + kHandshakeTime;
      peer.challenge = random_nonce();
      try {
        peer.link.send({FrameType::kChallenge}, *peer.challenge, deadline_after(kWriteTimeout));
      } catch (const Error&) {
        return;  // gone already
      }
    }
    peers.emplace(next_peer++, std::move(peer));
  }

  void refuse_slow_handshakes() {
    if (!secret) return;  // (no peer is asked to prove anything)
    const auto now = std::chrono::steady_clock::now();
    std::vector<std::uint64_t> slow;
    for (const auto& [key, peer] : peers) {
      if (peer.challenge && now >= peer.handshake_until) slow.push_back(key);
    }
    for (const std::uint64_t key : slow) refuse_peer(key, "authentication failed: took too long");
  }

  // A client from another host that failed to authenticate (or left before
  // it did): told why if it is still there, and let go without an event,
  // since it never was a client of the channel.
  void refuse_peer(std::uint64_t key, const std::string& why) {
    auto it = peers.find(key);
    if (it == peers.end()) return;
    try {
      it->second.link.send({FrameType::kError, 0, 0, 0, 0, EACCES}, error_payload(why),
                           deadline_after(Timeout(100)));
    } catch (const Error&) {
    }
    it->second.link.close();
    peers.erase(it);
  }

  // `reason`: for a peer let go for breaking the protocol, what it broke
  // (the event's payload).
  void drop_peer(std::uint64_t key, Event why, const std::string& reason = "") {
    auto it = peers.find(key);
    if (it == peers.end()) return;
    Message m;
    m.event = why;
    m.sender = it->second.id;
    if (!reason.empty()) {
      const auto* first = reinterpret_cast<const std::byte*>(reason.data());
      m.payload = Payload(std::vector<std::byte>(first, first + reason.size()));
    }
    it->second.link.close();
    std::vector<PeerHeap> dead_heaps;
    if (why == Event::kDeath) dead_heaps = std::move(it->second.heaps);
    // A link that broke (rather than said goodbye) may be a live client's:
    // what it awaits is kept for kResumeWindow, in case it comes back.
    const auto r = resumable.find(it->second.token);
    const bool may_return = why == Event::kDeath && r != resumable.end();
    if (r != resumable.end() && r->second.peer == key) {
      if (may_return) {
        r->second.peer = 0;
        r->second.detached = std::chrono::steady_clock::now();
      } else {
        forget(r);
      }
    }
    peers.erase(it);
    if (!may_return) {
      for (Pending& p : pending) {
        if (p.used && p.peer == key) p.peer = 0;  // nobody to answer any more
      }
    }
    // (Another connection of the same client, its sessions alive, may have
    // said hello before this one's end was read: then it is back already.)
    const bool back_already = std::any_of(peers.begin(), peers.end(), [&](const auto& other) {
      return share_a_session(other.second.heaps, dead_heaps);
    });
    if (dead_heaps.empty() || back_already) {
      queue.push_back({std::move(m), 0});
    } else {
      const auto now = std::chrono::steady_clock::now();
      dying.push_back({std::move(m), std::move(dead_heaps), now + kReclaimWait, now});
      settle_deaths();
    }
    expire_resumable();
  }

  // A client that died sharing heaps with us: its holds are released before
  // its kDeath is queued, so that the owner, at the event, finds them gone.
  // A socket closes a moment before the kernel has finished the exit, while
  // the client's sessions still count as alive: its event waits here (tried
  // again once a millisecond, from the receive loop) until they no longer
  // do, or kReclaimWait has passed, or a new connection shows them alive
  // (came_back()). The owner serves its other clients meanwhile.
  void settle_deaths() {
    if (dying.empty()) return;
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(client->mutex);
    for (auto d = dying.begin(); d != dying.end();) {
      if (now < d->next_try) {
        ++d;
        continue;
      }
      d->next_try = now + std::chrono::milliseconds(1);  // (each try takes the heap's lock)
      if (try_release_dead_peer(client->heaps, d->heaps) || now >= d->until) {
        queue.push_back({std::move(d->event), 0});
        d = dying.erase(d);
      } else {
        ++d;
      }
    }
  }
  std::chrono::steady_clock::time_point next_death_check() const {
    auto due = std::chrono::steady_clock::time_point::max();
    for (const Dying& d : dying) due = std::min(due, d.next_try);
    return due;
  }
  static bool share_a_session(const std::vector<PeerHeap>& a, const std::vector<PeerHeap>& b) {
    for (const PeerHeap& x : a) {
      for (const PeerHeap& y : b) {
        if (x.uuid == y.uuid && x.session == y.session) return true;
      }
    }
    return false;
  }
  // A new connection's hello names heap sessions: a client whose link broke
  // is back, alive. Its old link's kDeath is queued now, before anything
  // the new connection brings, and nothing is released.
  void came_back(const std::vector<PeerHeap>& heaps) {
    for (auto d = dying.begin(); d != dying.end();) {
      if (share_a_session(d->heaps, heaps)) {
        queue.push_back({std::move(d->event), 0});
        d = dying.erase(d);
      } else {
        ++d;
      }
    }
  }

  void forget(std::map<std::string, Resumable>::iterator r) {
    if (r->second.pending >= 0) {
      pending[r->second.pending].peer = 0;  // the owner still holds its index
      pending[r->second.pending].token.clear();
    }
    resumable.erase(r);
  }

  // Tokens whose client did not come back in time, oldest first when too many.
  void expire_resumable() {
    const auto now = std::chrono::steady_clock::now();
    std::size_t detached = 0;
    for (auto r = resumable.begin(); r != resumable.end();) {
      if (r->second.peer == 0 && now - r->second.detached > kResumeWindow) {
        forget(r++);
      } else {
        detached += r->second.peer == 0 ? 1 : 0;
        ++r;
      }
    }
    while (detached > kMaxDetached) {
      auto oldest = resumable.end();
      for (auto r = resumable.begin(); r != resumable.end(); ++r) {
        if (r->second.peer == 0 &&
            (oldest == resumable.end() || r->second.detached < oldest->second.detached)) {
          oldest = r;
        }
      }
      forget(oldest);
      --detached;
    }
  }

  // Reads one peer's frames into the queue, dropping the peer when it is gone.
  void read_peer(std::uint64_t key) {
    auto found = peers.find(key);
    if (found == peers.end()) return;
    Peer& peer = found->second;
    bool open = true;
    try {
      // A hello can switch the peer to rings: what follows it is read there.
      for (bool more = true; more;) {
        const bool had_rings = peer.link.has_rings();
        open = peer.link.read_available();
        while (auto frame = peer.link.next_frame()) {
          if (!handle(key, peer, *frame)) return;  // said goodbye, or broke the protocol
        }
        more = open && peer.link.has_rings() && (!had_rings || peer.link.ring_readable());
      }
    } catch (const Error& e) {
      if (peer.challenge) return refuse_peer(key, e.message());
      // A link that failed (a write that broke or timed out on the way) is a
      // broken link, which its client may replace; anything else broke the
      // protocol, and what its client awaits is forgotten with it.
      if (e.code() == Errc::kSystem || e.code() == Errc::kTimedOut) {
        return drop_peer(key, peer.id.empty() ? Event::kDisconnect : Event::kDeath);
      }
      return drop_peer(key, Event::kDisconnect, e.message());
    }
    if (!open && peer.challenge) return refuse_peer(key, "");
    if (!open) drop_peer(key, peer.id.empty() ? Event::kDisconnect : Event::kDeath);
  }

  // A peer whose socket may have closed (one on rings sends nothing else
  // there, so a readable socket means that): if it did, what it wrote
  // before is read first, then it is dropped.
  void drop_if_closed(std::uint64_t key) {
    auto found = peers.find(key);
    if (found == peers.end() || !found->second.link.peer_closed()) return;
    read_peer(key);
    found = peers.find(key);
    if (found != peers.end()) {
      drop_peer(key, found->second.id.empty() ? Event::kDisconnect : Event::kDeath);
    }
  }

  // False when the peer was dropped.
  bool handle(std::uint64_t key, Peer& peer, Frame& frame) {
    const FrameHeader& h = frame.header;
    if (peer.challenge) {
      const std::vector<std::byte> proof =
          answer_client(*secret, *peer.challenge, frame, "channel " + name);
      peer.challenge.reset();
      peer.link.limit_payload(kLinkMaxPayload);
      peer.link.send({FrameType::kAuthenticated}, proof, deadline_after(kWriteTimeout));
      return true;
    }
    if (peer.id.empty() && h.type != FrameType::kHello) {
      throw Error(Errc::kCorrupted, "a client's first frame must be hello", EPROTO);
    }
    switch (h.type) {
      case FrameType::kHello: {
        if (!peer.id.empty()) throw Error(Errc::kCorrupted, "a second hello", EPROTO);
        const Json hello = parse_control(frame);
        std::string id = string_field(hello, "id", frame);
        check_name(id, "client id");
        peer.heaps = parse_heaps(hello, frame);
        // A link of the same client that broke, its end not read yet (with
        // rings, sockets are looked at once a millisecond): read it now, so
        // that its kDeath comes before anything this connection brings.
        std::vector<std::uint64_t> same_client;
        for (const auto& [other, p] : peers) {
          if (other != key && share_a_session(p.heaps, peer.heaps)) same_client.push_back(other);
        }
        for (const std::uint64_t other : same_client) drop_if_closed(other);
        came_back(peer.heaps);
        peer.id = std::move(id);
        if (hello.contains("token")) {
          std::string token = string_field(hello, "token", frame);
          if (!valid_token(token)) {
            throw Error(Errc::kCorrupted, "a hello's token is not 32 hex digits", EPROTO);
          }
          resumable[token].peer = key;  // a new token, or one back after a broken link
          peer.token = std::move(token);
        }
        if (hello.contains("rings") && hello["rings"].is_boolean() && hello["rings"].get<bool>()) {
          if (!peer.link.is_unix()) {
            throw Error(Errc::kCorrupted, "rings offered over TCP", EPROTO);
          }
          peer.link.accept_rings();
        }
        return true;
      }
      case FrameType::kPing:
        peer.link.send({FrameType::kPong, 0, 0, 0, h.request_id, h.value}, {},
                       deadline_after(kWriteTimeout));
        return true;
      case FrameType::kSend:
      case FrameType::kBufferedSend: {
        Resumable* r = nullptr;
        if (h.type == FrameType::kSend && !peer.token.empty()) {
          r = &resumable[peer.token];
          if (h.request_id <= r->last_request) {
            if (h.request_id < r->last_request) {
              throw Error(Errc::kCorrupted, "a client's request ids went backwards", EPROTO);
            }
            // Sent again after a reconnection: answered, not run again (its
            // payload is the one the first copy brought, taken then).
            if (r->reply) {
              if (peer.replied != h.request_id) {  // never twice on one link
                peer.replied = h.request_id;
                peer.link.send(r->reply->header, r->reply->payload, deadline_after(kWriteTimeout));
              }
            } else if (r->reply_not_kept) {
              peer.link.send({FrameType::kError, 0, 0, 0, h.request_id, ECONNRESET},
                             error_payload("channel " + name +
                                           ": the reply to this request was lost with a broken "
                                           "link and was too large to keep; it is not run again"),
                             deadline_after(kWriteTimeout));
            } else if (r->pending >= 0) {
              pending[r->pending].peer = key;
            }
            return true;
          }
        }
        Message m;
        m.event = h.type == FrameType::kSend ? Event::kMessage : Event::kBuffered;
        m.type = h.value;
        m.sender = peer.id;
        {
          std::lock_guard lock(client->mutex);
          m.payload = Receiver::take(frame, client->heaps);
        }
        if (m.event == Event::kMessage) {
          m.index = pending_slot(key, h.request_id, peer.token);
          if (r != nullptr) {
            r->last_request = h.request_id;
            r->reply.reset();
            r->reply_not_kept = false;
            r->pending = m.index;
          }
          queue.push_back({std::move(m), 0});
        } else {
          if (peer.queued_buffered >= options.max_buffered) {
            throw Error(Errc::kCorrupted, "a client sent beyond its credit", EPROTO);
          }
          ++peer.queued_buffered;
          queue.push_back({std::move(m), key});
        }
        return true;
      }
      case FrameType::kDisconnectChannel:
        drop_peer(key, Event::kDisconnect);
        return false;
      default:
        throw Error(Errc::kCorrupted,
                    std::string("a channel does not take '") + frame_type_name(h.type) + "' frames",
                    EPROTO);
    }
  }

  // The pending message `index` names, now answered; throws kNotFound.
  Pending take_pending(int index);

  int pending_slot(std::uint64_t peer, std::uint64_t request_id, const std::string& token) {
    for (std::size_t i = 0; i < pending.size(); ++i) {
      if (!pending[i].used) {
        pending[i] = {peer, request_id, true, token};
        return static_cast<int>(i);
      }
    }
    pending.push_back({peer, request_id, true, token});
    return static_cast<int>(pending.size() - 1);
  }

  // Where the reply to `p` goes: its sender's connection now, which may be
  // a newer one than it came on (none: nullptr); and, when its sender may
  // send it again, where the reply is kept for that.
  struct Route {
    std::uint64_t key = 0;
    Peer* to = nullptr;
    Resumable* keep = nullptr;
  };
  Route reply_route(const Pending& p, int index) {
    Route route;
    route.key = p.peer;
    if (auto found = resumable.find(p.token); found != resumable.end() && !p.token.empty()) {
      if (found->second.pending == index && found->second.last_request == p.request_id) {
        route.keep = &found->second;
        route.keep->pending = -1;
        route.key = route.keep->peer;
      }
    }
    if (auto it = peers.find(route.key); it != peers.end() && route.key != 0) {
      route.to = &it->second;
      route.to->replied = p.request_id;
    }
    return route;
  }

  // Keeps a reply for a copy of its request (kMaxKeptReply at most).
  static void keep_reply(Resumable* keep, const FrameHeader& header,
                         std::span<const std::byte> bytes) {
    if (keep == nullptr) return;
    if (bytes.size() > kMaxKeptReply) {
      keep->reply_not_kept = true;
      return;
    }
    keep->reply = Frame{header, {bytes.begin(), bytes.end()}};
  }

  // A reply that could not be written whole leaves the link unusable (a
  // torn frame): it is let go as a broken link, which its client may replace.
  void reply_failed(std::uint64_t key) { drop_peer(key, Event::kDeath); }

  // The credit a buffered message from `key` held goes back to its sender,
  // a quarter of the bound at a time. Never deadlocks: a sender out of credit
  // has bound messages unread here or owed back, and as we read them the
  // owed ones reach a quarter of the bound. (Returning credit at every read
  // would send a frame per message to a sender that reads none while it has
  // credit: its socket fills, and then ours.)
  void return_credit(std::uint64_t key) {
    auto it = peers.find(key);
    if (it == peers.end()) return;
    Peer& peer = it->second;
    --peer.queued_buffered;
    ++peer.credit_owed;
    if (peer.credit_owed >= std::max<std::uint32_t>(1, options.max_buffered / 4)) {
      try {
        peer.link.send(
            {FrameType::kCredit, 0, 0, 0, 0, static_cast<std::int32_t>(peer.credit_owed)}, {},
            deadline_after(kWriteTimeout));
        peer.credit_owed = 0;
      } catch (const Error&) {  // gone: its death is noticed when its socket is read
      }
    }
  }

  bool fire_timers() {
    const auto now = std::chrono::steady_clock::now();
    bool fired = false;
    for (auto it = timers.begin(); it != timers.end();) {
      if (it->due > now) {
        ++it;
        continue;
      }
      Message m;
      m.event = Event::kTimer;
      m.type = it->type;
      queue.push_back({std::move(m), 0});
      fired = true;
      if (it->period.count() > 0) {
        // A late receiver gets one tick, not a burst of the ones it missed.
        while (it->due <= now) it->due += it->period;
        ++it;
      } else {
        it = timers.erase(it);
      }
    }
    return fired;
  }

  std::chrono::steady_clock::time_point next_timer_due() const {
    auto due = std::chrono::steady_clock::time_point::max();
    for (const Timer& t : timers) due = std::min(due, t.due);
    return due;
  }

  // The manager went away (restarted, say): try to reach it again, now and
  // then, and register this client's channels anew. `readable`: its link
  // polled readable (the manager sends nothing unasked, so that means it
  // closed).
  void tend_manager(bool readable) {
    std::lock_guard lock(client->mutex);
    if (client->link) {
      if (!readable || client->link->read_available()) return;
      client->link.reset();
    }
    const auto now = std::chrono::steady_clock::now();
    if (now < next_manager_try) return;
    next_manager_try = now + kManagerRetry;
    try {
      client->connect_manager(deadline_after(Timeout(200)), true);
    } catch (const Error&) {  // not back yet
    }
  }

  Message pop() {
    Queued q = std::move(queue.front());
    queue.pop_front();
    if (q.message.event == Event::kBuffered) return_credit(q.peer);
    return std::move(q.message);
  }
};

namespace {

// What one entry of the poll set stands for.
struct Watched {
  Channel::State* channel;
  enum Kind { kAcceptor, kPeer, kRingPeerSocket, kManager } kind;
  std::uint64_t peer = 0;
};

// Clients on rings: spin a little on them first (a message is often a few
// microseconds away when both processes run), then announce the sleep.
// True if one has data, so poll() must not sleep. `counts`: see SpinBudget.
bool ring_data_soon(std::span<Channel::State* const> channels, Deadline until, SpinBudget& budget,
                    bool counts) {
  bool any = false;
  for (Channel::State* s : channels) {
    for (auto& [key, peer] : s->peers) any = any || peer.link.has_rings();
  }
  if (!any) return false;
  const auto ring_data = [&] {
    for (Channel::State* s : channels) {
      for (auto& [key, peer] : s->peers) {
        if (peer.link.ring_readable()) return true;
      }
    }
    return false;
  };
  if (budget.spin(ring_data, counts, until)) return true;
  bool ready = false;
  for (Channel::State* s : channels) {
    for (auto& [key, peer] : s->peers) {
      if (!peer.link.prepare_sleep()) ready = true;
    }
  }
  if (ready) budget.slept_until_ready();  // (it came as we were about to sleep)
  return ready;
}

// One wait over every channel's sockets, until something is ready, a timer
// or a retry of the manager is due, or the deadline; then each ready socket
// is served (and only those: a channel with many clients reads one).
void wait_and_serve(std::span<Channel::State* const> channels, Deadline deadline) {
  std::vector<pollfd> fds;
  std::vector<Watched> what;
  auto until = deadline;
  for (Channel::State* s : channels) {
    if (s->unix_acceptor) {
      fds.push_back({s->unix_acceptor->native_handle(), POLLIN, 0});
      what.push_back({s, Watched::kAcceptor});
    }
    if (s->tcp_acceptor) {
      fds.push_back({s->tcp_acceptor->native_handle(), POLLIN, 0});
      what.push_back({s, Watched::kAcceptor});
    }
    for (auto& [key, peer] : s->peers) {
      if (peer.link.has_rings()) {
        fds.push_back({peer.link.wake_fd(), POLLIN, 0});
        what.push_back({s, Watched::kPeer, key});
        fds.push_back({peer.link.fd(), POLLIN, 0});
        what.push_back({s, Watched::kRingPeerSocket, key});
      } else {
        fds.push_back({peer.link.fd(), POLLIN, 0});
        what.push_back({s, Watched::kPeer, key});
      }
      if (peer.challenge) until = std::min(until, peer.handshake_until);
    }
    until = std::min(until, s->next_timer_due());
    until = std::min(until, s->next_death_check());
    std::lock_guard lock(s->client->mutex);
    if (s->client->link) {
      fds.push_back({s->client->link->fd(), POLLIN, 0});
      what.push_back({s, Watched::kManager});
    } else {
      until = std::min(until, s->next_manager_try);
    }
  }
  // (The first channel's budget: one thread waits on them all, and usually
  // in the same order.) A peer mid-frame sends the rest at once: such a wait
  // says nothing about how long peers take.
  SpinBudget& spin = channels.front()->ring_spin;
  bool counts = true;
  for (Channel::State* s : channels) {
    for (auto& [key, peer] : s->peers) counts = counts && !peer.link.mid_frame();
  }
  const bool ring_ready = ring_data_soon(channels, until, spin, counts);
  // Ring data at hand: served without a system call, while the sockets (new
  // clients, deaths, the manager) are still looked at every millisecond.
  Channel::State& first = *channels.front();
  const auto now = std::chrono::steady_clock::now();
  if (!ring_ready || now - first.last_socket_poll >= std::chrono::milliseconds(1)) {
    first.last_socket_poll = now;
    const int n = ::poll(fds.data(), fds.size(), ring_ready ? 0 : poll_millis(until));
    if (n < 0 && errno != EINTR) throw Error::from_errno(errno, "poll");
  }
  for (Channel::State* s : channels) {
    for (auto& [key, peer] : s->peers) peer.link.finish_sleep();
  }
  bool ring_served = false;
  for (std::size_t i = 0; i < fds.size(); ++i) {
    Channel::State& s = *what[i].channel;
    const bool ring_has_data = what[i].kind == Watched::kPeer && [&] {
      auto it = s.peers.find(what[i].peer);
      return it != s.peers.end() && it->second.link.ring_readable();
    }();
    ring_served = ring_served || ring_has_data;
    if (fds[i].revents == 0 && !ring_has_data) continue;
    switch (what[i].kind) {
      case Watched::kAcceptor:
        s.accept_all();
        break;
      case Watched::kPeer:
        s.read_peer(what[i].peer);
        break;
      case Watched::kRingPeerSocket:
        s.drop_if_closed(what[i].peer);
        break;
      case Watched::kManager:
        s.tend_manager(true);
        break;
    }
  }
  // Only waits that ring data ended say how long the peers take.
  if (ring_served && !ring_ready) spin.slept_until_ready();
  for (Channel::State* s : channels) {
    s->tend_manager(false);  // a retry may be due
    s->refuse_slow_handshakes();
  }
}

}  // namespace

std::pair<std::size_t, Message> Channel::receive_any(std::span<Channel* const> channels,
                                                     Timeout timeout) {
  std::vector<State*> states;
  for (Channel* c : channels) states.push_back(c->state_.get());
  const Deadline deadline = deadline_after(timeout);
  for (bool waited = false;; waited = true) {
    for (std::size_t i = 0; i < states.size(); ++i) {
      State& s = *states[i];
      s.fire_timers();
      s.settle_deaths();
      if (!s.queue.empty()) return {i, s.pop()};
    }
    if (waited && deadline != Deadline::max() && std::chrono::steady_clock::now() >= deadline) {
      return {0, Message{}};  // Event::kTimeout
    }
    wait_and_serve(states, deadline);
  }
}

Message Channel::receive(Timeout timeout) {
  Channel* self = this;
  return receive_any(std::span<Channel* const>(&self, 1), timeout).second;
}

Channel::State::Pending Channel::State::take_pending(int index) {
  if (index < 0 || static_cast<std::size_t>(index) >= pending.size() || !pending[index].used) {
    throw Error(Errc::kNotFound, "channel " + name + ": no message " + std::to_string(index) +
                                     " awaits a reply (answered already)");
  }
  pending[index].used = false;
  return pending[index];
}

void Channel::reply(int index, std::int32_t answer, std::span<const std::byte> bytes) {
  State& s = *state_;
  const State::Pending p = s.take_pending(index);
  const FrameHeader header{FrameType::kReply, 0, 0, 0, p.request_id, answer};
  const State::Route route = s.reply_route(p, index);
  State::keep_reply(route.keep, header, bytes);
  if (route.to == nullptr) return;
  try {
    route.to->link.send(header, bytes, deadline_after(kWriteTimeout));
  } catch (const Error&) {
    s.reply_failed(route.key);
  }
}

void Channel::reply(int index, std::int32_t answer, Loan&& loan) {
  State& s = *state_;
  const State::Pending p = s.take_pending(index);
  const State::Route route = s.reply_route(p, index);
  if (route.to == nullptr && route.keep == nullptr) return;  // nobody to answer: the loan goes
  FrameHeader header{FrameType::kReply, 0, 0, 0, p.request_id, answer};
  std::vector<std::byte> copy;
  std::array<std::byte, kHeapRefBytes> ref;
  std::span<const std::byte> bytes;
  {
    // No live connection: kept as a copy (what the client maps then is unknown).
    static const std::vector<PeerHeap> kNone;
    std::lock_guard lock(s.client->mutex);
    bytes = Sender::prepare(loan, s.client->heaps, route.to != nullptr ? route.to->heaps : kNone,
                            header, copy, ref);
  }
  State::keep_reply(route.keep, header, bytes);
  if (route.to == nullptr) return;
  try {
    route.to->link.send(header, bytes, deadline_after(kWriteTimeout));
  } catch (const Error&) {
    s.reply_failed(route.key);
  }
}

int Channel::timer_create(std::int32_t type, Timeout first, Timeout repeat) {
  if (first.count() < 0 || repeat.count() < 0) {
    throw Error(Errc::kInvalidArgument,
                "channel " + state_->name + ": a timer's times must be >= 0");
  }
  State::Timer t;
  t.id = state_->next_timer++;
  t.type = type;
  t.due = std::chrono::steady_clock::now() + first;
  t.period = repeat;
  state_->timers.push_back(t);
  return t.id;
}

void Channel::timer_delete(int timer) {
  if (std::erase_if(state_->timers, [&](const State::Timer& t) { return t.id == timer; }) == 0) {
    throw Error(Errc::kNotFound, "channel " + state_->name + ": no timer " + std::to_string(timer));
  }
}

std::size_t Channel::clients() const {
  // Not those still proving who they are (clients of other hosts).
  return static_cast<std::size_t>(
      std::count_if(state_->peers.begin(), state_->peers.end(),
                    [](const auto& kv) { return !kv.second.challenge; }));
}

void Channel::join(const std::string& group) {
  check_name(group, "group name");
  Client::State& client = *state_->client;
  std::lock_guard lock(client.mutex);
  const Json request = join_request(group, state_->name);
  client.request({FrameType::kJoinGroup}, &request, deadline_after(client.timeout),
                 "channel " + state_->name + " joining group " + group);
  for (auto& r : client.channels) {
    if (r.name == state_->name &&
        std::find(r.groups.begin(), r.groups.end(), group) == r.groups.end()) {
      r.groups.push_back(group);  // (once: joined again after a manager restart)
    }
  }
}
const std::string& Channel::name() const {
  return state_->name;
}
const std::string& Channel::address() const {
  return state_->address;
}

Channel::Channel(std::unique_ptr<State> state) : state_(std::move(state)) {}
Channel::Channel(Channel&&) noexcept = default;
Channel& Channel::operator=(Channel&&) noexcept = default;
Channel::~Channel() = default;

Channel Client::create_channel(const std::string& name, const ChannelOptions& options) {
  check_name(name, "channel name");
  if (options.max_buffered > kMaxBufferedLimit) {
    throw Error(Errc::kInvalidArgument,
                "channel " + name + ": max_buffered above " + std::to_string(kMaxBufferedLimit));
  }
  auto state = std::make_unique<Channel::State>();
  state->name = name;
  state->options = options;
  // A Unix socket of our own, in the user's 0700 directory, itself 0600;
  // or, for a channel that lets a group in, in a 0750 directory of that
  // group, itself 0660 (the directory's and the socket's permissions are
  // the first gate, SO_PEERCRED in add_peer() the second).
  const bool for_group = options.allow_group >= 0;
  if (for_group && options.allow_group > std::numeric_limits<gid_t>::max()) {
    throw Error(Errc::kInvalidArgument, "channel " + name + ": allow_group " +
                                            std::to_string(options.allow_group) +
                                            " is no group id");
  }
  const auto group = static_cast<gid_t>(options.allow_group);
  const std::string dir = for_group ? group_runtime_dir(group) : runtime_dir();
  sweep_dead_sockets(dir);  // what owners killed before us left there
  state->socket_path =
      dir + "/c-" + std::to_string(::getpid()) + "-" + std::to_string(socket_counter++) + ".sock";
  ::unlink(state->socket_path.c_str());  // a dead process's, with our pid reused
  {
    // Its mode is set after bind(), not through the umask, which is the
    // whole process's (another thread's files would get ours meanwhile).
    // Until then the directory keeps others out, and until listen() no one
    // can connect anyway.
    asio::error_code ec;
    state->unix_acceptor.emplace(socket_context());
    state->unix_acceptor->open(asio::local::stream_protocol(), ec);
    if (!ec) state->unix_acceptor->bind(state->socket_path, ec);
    if (!ec && ::chmod(state->socket_path.c_str(), for_group ? 0660 : 0600) != 0) {
      ec = asio::error_code(errno, asio::error::get_system_category());
    }
    if (!ec && for_group &&
        ::chown(state->socket_path.c_str(), static_cast<uid_t>(-1), group) != 0) {
      ec = asio::error_code(errno, asio::error::get_system_category());
    }
    if (!ec) state->unix_acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (!ec) state->unix_acceptor->non_blocking(true, ec);
    if (ec) {
      throw Error(Errc::kSystem,
                  "channel " + name + ": socket " + state->socket_path + ": " + ec.message(),
                  ec.value());
    }
  }
  state->address = "unix:" + state->socket_path;
  if (!options.tcp_listen.empty()) {
    const asio::ip::tcp::endpoint endpoint = listen_endpoint(options.tcp_listen, "channel " + name);
    if (endpoint.address().is_unspecified()) {
      // Its address is what clients are told: one that means "this host"
      // to whoever reads it would send them to their own.
      throw Error(Errc::kInvalidArgument,
                  "channel " + name +
                      ": listen on the address other hosts reach this one at, not " +
                      options.tcp_listen);
    }
    if (!is_loopback(endpoint.address())) {
      state->secret = load_secret(state_->secret_file,
                                  "channel " + name + ": listening on " + options.tcp_listen +
                                      ", which other hosts can reach, needs a shared secret");
    }
    asio::error_code ec;
    state->tcp_acceptor.emplace(socket_context());
    state->tcp_acceptor->open(endpoint.protocol(), ec);
    if (!ec) state->tcp_acceptor->bind(endpoint, ec);
    if (!ec) state->tcp_acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (!ec) state->tcp_acceptor->non_blocking(true, ec);
    if (ec) {
      throw Error(Errc::kSystem,
                  "channel " + name + ": listen on " + options.tcp_listen + ": " + ec.message(),
                  ec.value());
    }
    const auto bound = state->tcp_acceptor->local_endpoint();
    state->address += " tcp:" + bound.address().to_string() + ":" + std::to_string(bound.port());
  }
  Client::State::Registration registration{name, state->address, options.max_buffered, {}, {}};
  {
    std::lock_guard lock(state_->mutex);
    registration.heaps = heaps_json(state_->heaps);
    const Json request = registration.create_request();
    state_->request(
        {FrameType::kCreateChannel, 0, 0, 0, 0, static_cast<std::int32_t>(options.max_buffered)},
        &request, deadline_after(state_->timeout), "creating channel " + name);
    state_->channels.push_back(registration);
  }
  state->client = state_;  // from here on, the destructor deletes the channel
  return Channel(std::move(state));
}

}  // namespace sheaf::msg
