// client.cpp: Client (the manager connection), Connection (a client's side
// of a channel), and the payload types Loan and Payload.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <thread>

#include "addresses.hpp"
#include "auth.hpp"
#include "client_state.hpp"
#include "posix.hpp"
#include "sheaf/error.hpp"
#include "sheaf/heap.hpp"

namespace sheaf::msg {

// --- Payloads -----------------------------------------------------------------

Loan Loan::allocate(Heap& heap, std::size_t bytes) {
  void* p = heap.allocate_held(bytes == 0 ? 1 : bytes);
  return Loan(&heap, static_cast<std::byte*>(p), bytes);
}

Loan::Loan(Loan&& other) noexcept
    : heap_(std::exchange(other.heap_, nullptr)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

Loan& Loan::operator=(Loan&& other) noexcept {
  if (this != &other) {
    reset();
    heap_ = std::exchange(other.heap_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

Loan::~Loan() {
  reset();
}

void Loan::reset() noexcept {
  if (data_ != nullptr && heap_ != nullptr && heap_->is_open()) {
    try {
      heap_->release(data_);
    } catch (...) {  // (a heap closed under us: its session's holds go with it)
    }
  }
  heap_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

Payload::Payload(Payload&& other) noexcept
    : copy_(std::move(other.copy_)),
      heap_(std::exchange(other.heap_, nullptr)),
      view_(std::exchange(other.view_, nullptr)),
      ref_(std::exchange(other.ref_, Ref{})) {}

Payload& Payload::operator=(Payload&& other) noexcept {
  if (this != &other) {
    reset();
    copy_ = std::move(other.copy_);
    heap_ = std::exchange(other.heap_, nullptr);
    view_ = std::exchange(other.view_, nullptr);
    ref_ = std::exchange(other.ref_, Ref{});
  }
  return *this;
}

Payload::~Payload() {
  reset();
}

void Payload::reset() noexcept {
  if (heap_ != nullptr && heap_->is_open()) {
    try {
      heap_->release(view_);
    } catch (...) {
    }
  }
  heap_ = nullptr;
  view_ = nullptr;
  ref_ = Ref{};
  copy_.clear();
}

namespace {

std::string uuid_hex(const Uuid& uuid) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string text;
  for (const std::uint8_t b : uuid) {
    text += kHex[b >> 4];
    text += kHex[b & 15];
  }
  return text;
}

const PeerHeap* peer_heap(const std::vector<PeerHeap>& theirs, const Uuid& uuid) {
  for (const PeerHeap& h : theirs) {
    if (h.uuid == uuid) return &h;
  }
  return nullptr;
}

// Whether a "tcp:HOST:PORT" address names a loopback address.
bool names_loopback(const std::string& address) {
  try {
    const Address where = parse_address(address);
    if (where.kind != Address::kTcp) return false;
    asio::error_code ec;
    const auto host = asio::ip::make_address(where.host, ec);
    return !ec && is_loopback(host);
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

bool parse_uuid(const std::string& text, Uuid& uuid) {
  std::string digits;
  for (const char c : text) {
    if (c != '-') digits += c;
  }
  if (digits.size() != 32) return false;
  for (std::size_t i = 0; i < 16; ++i) {
    const auto [end, error] =
        std::from_chars(digits.data() + 2 * i, digits.data() + 2 * i + 2, uuid[i], 16);
    if (error != std::errc() || end != digits.data() + 2 * i + 2) return false;
  }
  return true;
}

Json heaps_json(const std::vector<LocalHeap>& heaps) {
  Json list = Json::array();
  for (const LocalHeap& h : heaps)
    list.push_back({{"uuid", uuid_hex(h.uuid)}, {"session", h.session}});
  return list;
}

std::vector<PeerHeap> parse_heaps(const Json& json, const Frame& frame) {
  std::vector<PeerHeap> out;
  if (!json.is_object() || !json.contains("heaps")) return out;
  const Json& list = json["heaps"];
  if (!list.is_array() || list.size() > 1024) {
    throw Error(Errc::kCorrupted,
                "message frame '" + std::string(frame_type_name(frame.header.type)) +
                    "': 'heaps' is not a list",
                EPROTO);
  }
  for (const Json& entry : list) {
    PeerHeap h;
    if (!entry.is_object() || !entry.contains("uuid") || !entry["uuid"].is_string() ||
        !parse_uuid(entry["uuid"].get<std::string>(), h.uuid) || !entry.contains("session") ||
        !entry["session"].is_number_unsigned()) {
      throw Error(Errc::kCorrupted,
                  "message frame '" + std::string(frame_type_name(frame.header.type)) +
                      "': a malformed entry in 'heaps'",
                  EPROTO);
    }
    h.session = entry["session"].get<std::uint64_t>();
    out.push_back(h);
  }
  return out;
}

std::span<const std::byte> Sender::prepare(Loan& loan, const std::vector<LocalHeap>& mine,
                                           const std::vector<PeerHeap>& theirs, FrameHeader& header,
                                           std::vector<std::byte>& copy,
                                           std::array<std::byte, kHeapRefBytes>& ref) {
  if (!loan) throw Error(Errc::kInvalidArgument, "sending an empty (moved-from or sent) loan");
  const LocalHeap* local = nullptr;
  for (const LocalHeap& h : mine) {
    if (h.heap == loan.heap_) local = &h;
  }
  const PeerHeap* peer = local != nullptr ? peer_heap(theirs, local->uuid) : nullptr;
  if (peer == nullptr) {  // the peer does not map it: the bytes travel
    copy.assign(loan.data_, loan.data_ + loan.size_);
    loan.reset();
    header.flags = 0;
    return copy;
  }
  HeapRef r;
  r.heap_uuid = local->uuid;
  r.offset = loan.heap_->offset_of(loan.data_);
  r.length = loan.size_;
  // The hold is the receiver's from here on: if it dies before it reads the
  // message, recovery releases the hold with its session.
  r.serial = loan.heap_->hand_over(loan.data_, peer->session);
  loan.heap_ = nullptr;
  loan.data_ = nullptr;
  loan.size_ = 0;
  ref = encode_heap_ref(r);
  header.flags = kFlagHeapRef;
  return ref;
}

Payload Receiver::take(Frame& frame, const std::vector<LocalHeap>& mine) {
  if ((frame.header.flags & kFlagHeapRef) == 0) return Payload(std::move(frame.payload));
  const HeapRef r = decode_heap_ref(frame.payload);
  for (const LocalHeap& h : mine) {
    if (h.uuid != r.heap_uuid) continue;
    void* p = nullptr;
    Heap::HeldBlock held;
    try {
      p = h.heap->pointer_at(r.offset);
      // Handed to this process (Sender::prepare), and long enough.
      held = h.heap->held_block(p);
      if (held.bytes < std::max<std::uint64_t>(r.length, 1)) p = nullptr;
    } catch (const Error&) {
      p = nullptr;
    }
    if (p != nullptr && held.serial != r.serial) {
      throw Error(Errc::kCorrupted,
                  "a stale heap reference: the block at offset " + std::to_string(r.offset) +
                      " is not the one it named (serial " + std::to_string(held.serial) +
                      ", the reference says " + std::to_string(r.serial) + ")",
                  EPROTO);
    }
    if (p == nullptr) {
      throw Error(Errc::kCorrupted,
                  "a heap reference names no held block of that length (offset " +
                      std::to_string(r.offset) + ", " + std::to_string(r.length) + " bytes)",
                  EPROTO);
    }
    Payload payload;
    payload.heap_ = h.heap;
    payload.view_ = static_cast<const std::byte*>(p);
    payload.ref_ = r;
    return payload;
  }
  throw Error(Errc::kCorrupted,
              "a heap reference into heap " + uuid_hex(r.heap_uuid) +
                  ", which this process has not attached",
              EPROTO);
}

bool try_release_dead_peer(const std::vector<LocalHeap>& mine,
                           const std::vector<PeerHeap>& theirs) {
  bool settled = true;
  for (const PeerHeap& peer : theirs) {
    for (const LocalHeap& local : mine) {
      if (local.uuid != peer.uuid) continue;
      try {
        if (local.heap->reclaim_session(peer.session) == Heap::SessionFate::kAlive) settled = false;
      } catch (const Error&) {  // the heap's own trouble; the next opener reclaims
      }
    }
  }
  return settled;
}

void release_dead_peer(const std::vector<LocalHeap>& mine, const std::vector<PeerHeap>& theirs) {
  const auto until = std::chrono::steady_clock::now() + kReclaimWait;
  while (!try_release_dead_peer(mine, theirs) && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

bool peer_gone(const Error& e) {
  return e.code() == Errc::kSystem && (e.sys_errno() == ECONNRESET || e.sys_errno() == EPIPE);
}

// --- Client --------------------------------------------------------------------

void Client::State::connect_manager(Deadline deadline, bool reregister) {
  link.reset();
  std::optional<Link> reached;
  try {
    reached.emplace(Link::connect("tcp:" + manager, deadline, secret_file));
  } catch (const Error& e) {
    throw Error(e.code(),
                "no manager answers at " + manager +
                    " (start one with `sheaf msg manager`, or say where it is with "
                    "SHEAF_MANAGER=HOST:PORT): " +
                    e.message(),
                e.sys_errno());
  }
  Link& fresh = *reached;
  const Json hello{{"id", id}, {"pid", static_cast<std::int64_t>(::getpid())}};
  const std::uint64_t request_id = next_request++;
  fresh.send({FrameType::kHello, 0, 0, 0, request_id, 0}, to_payload(hello), deadline);
  for (;;) {
    auto answer = fresh.receive(deadline);
    if (!answer) {
      throw Error(Errc::kTimedOut, "manager " + manager + ": no answer to hello", ETIMEDOUT);
    }
    if (answer->header.request_id != request_id) continue;
    if (answer->header.type == FrameType::kError) throw_error_frame(*answer, "manager " + manager);
    if (answer->header.type != FrameType::kWelcome) {
      throw Error(Errc::kCorrupted,
                  "manager " + manager + ": answered hello with '" +
                      frame_type_name(answer->header.type) + "'",
                  EPROTO);
    }
    break;
  }
  // A manager that restarted knows none of our channels: tell it again.
  // (Messages never went through it, so no client of ours noticed.)
  if (reregister) {
    for (const Registration& r : channels) register_channel(fresh, next_request, r, deadline);
  }
  link.emplace(std::move(fresh));
}

namespace {

// Sends one request on a manager link and waits for its answer (an error
// frame is thrown as the Error it names).
Frame ask(Link& link, const FrameHeader& header, std::span<const std::byte> payload,
          Deadline deadline, const std::string& what) {
  link.send(header, payload, deadline);
  for (;;) {
    auto answer = link.receive(deadline);
    if (!answer) throw Error(Errc::kTimedOut, what + ": the manager did not answer", ETIMEDOUT);
    if (answer->header.request_id != header.request_id) continue;  // one given up on
    if (answer->header.type == FrameType::kError) throw_error_frame(*answer, what);
    return std::move(*answer);
  }
}

}  // namespace

Json Client::State::Registration::create_request() const {
  return {{"name", name}, {"address", address}, {"host", host_identity()}, {"heaps", heaps}};
}

Json join_request(const std::string& group, const std::string& channel) {
  return {{"group", group}, {"channel", channel}};
}

void register_channel(Link& link, std::uint64_t& next_request, const Client::State::Registration& r,
                      Deadline deadline) {
  ask(link,
      {FrameType::kCreateChannel, 0, 0, 0, next_request++,
       static_cast<std::int32_t>(r.max_buffered)},
      to_payload(r.create_request()), deadline, "creating channel " + r.name);
  for (const std::string& group : r.groups) {
    ask(link, {FrameType::kJoinGroup, 0, 0, 0, next_request++, 0},
        to_payload(join_request(group, r.name)), deadline,
        "channel " + r.name + " joining group " + group);
  }
}

Frame Client::State::request(FrameHeader header, const Json* payload, Deadline deadline,
                             const std::string& what) {
  if (!link) connect_manager(deadline, true);
  header.request_id = next_request++;
  const std::vector<std::byte> bytes =
      payload != nullptr ? to_payload(*payload) : std::vector<std::byte>{};
  try {
    return ask(*link, header, bytes, deadline, what);
  } catch (const Error& e) {
    if (e.code() == Errc::kSystem || e.code() == Errc::kCorrupted)
      link.reset();  // reconnect next time
    throw;
  }
}

Client::Client(std::shared_ptr<State> state) : state_(std::move(state)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

Client Client::connect(const std::string& id, const ConnectOptions& options) {
  check_name(id, "client id");
  auto state = std::make_shared<State>();
  state->id = id;
  state->manager = manager_address(options.manager);
  state->secret_file = options.secret_file;
  state->timeout = options.timeout;
  std::lock_guard lock(state->mutex);
  state->connect_manager(deadline_after(options.timeout), false);
  return Client(std::move(state));
}

const std::string& Client::id() const {
  return state_->id;
}

void Client::attach(Heap& heap) {
  LocalHeap h;
  h.heap = &heap;
  const HeapInfo info = heap.info();
  if (!parse_uuid(info.uuid, h.uuid)) {
    throw Error(Errc::kInvalidArgument, "heap " + info.path + ": unreadable uuid " + info.uuid);
  }
  h.session = heap.session();
  std::lock_guard lock(state_->mutex);
  for (const LocalHeap& existing : state_->heaps) {
    if (existing.uuid == h.uuid) return;
  }
  state_->heaps.push_back(h);
}

std::vector<ChannelInfo> Client::channels(Timeout timeout) {
  std::lock_guard lock(state_->mutex);
  Frame answer = state_->request({FrameType::kListChannels}, nullptr, deadline_after(timeout),
                                 "listing channels");
  const Json list = parse_control(answer);
  std::vector<ChannelInfo> out;
  if (!list.is_array()) return out;
  for (const Json& entry : list) {
    ChannelInfo info;
    info.name = string_field(entry, "name", answer);
    info.owner = string_field(entry, "owner", answer);
    info.pid = int_field(entry, "pid", answer);
    info.address = string_field(entry, "address", answer);
    info.max_buffered = static_cast<std::uint32_t>(int_field(entry, "max_buffered", answer));
    out.push_back(std::move(info));
  }
  return out;
}

std::chrono::nanoseconds Client::ping(Timeout timeout) {
  std::lock_guard lock(state_->mutex);
  const auto start = std::chrono::steady_clock::now();
  state_->request({FrameType::kPing}, nullptr, deadline_after(timeout), "pinging the manager");
  return std::chrono::steady_clock::now() - start;
}

// --- Connection ------------------------------------------------------------------

struct Connection::State {
  std::shared_ptr<Client::State> client;
  std::string channel;
  std::string addresses;  // the owner's, from the manager: reconnections go there
  bool same_host = true;  // the owner's host_identity() is ours: its Unix socket is usable
  // Names this connection to the owner across reconnections, so that a
  // request sent again after one is executed at most once (docs/msg.md).
  std::string token;
  std::optional<Link> link;
  std::vector<PeerHeap> peer_heaps;
  std::uint64_t next_request = 1;  // counts on across reconnections
  std::int64_t credits = 0;        // buffered sends the receiver has room for
  std::uint32_t max_buffered = 0;

  // Connects to the owner (its Unix socket first, if this host can reach
  // it) and says hello. Called with the client's mutex held.
  void open_link(Deadline deadline) {
    std::optional<Error> last_error;
    for (const std::string& address : split_addresses(addresses)) {
      // Another host's Unix socket, or its loopback address, would be ours.
      if (!same_host && (address.starts_with("unix:") || names_loopback(address))) continue;
      try {
        link.emplace(Link::connect(address, deadline, client->secret_file));
        break;
      } catch (const Error& e) {
        last_error = e;
      }
    }
    if (!link) {
      if (!last_error) throw Error(Errc::kCorrupted, "channel " + channel + ": no address", EPROTO);
      throw Error(last_error->code(),
                  "channel " + channel + ": cannot reach its owner: " + last_error->message(),
                  last_error->sys_errno());
    }
    Json hello{{"id", client->id},
               {"pid", static_cast<std::int64_t>(::getpid())},
               {"token", token},
               {"heaps", heaps_json(client->heaps)}};
    // On one host, frames move into shared-memory rings after the hello
    // (ring.hpp) unless SHEAF_MSG_RINGS=0.
    const char* rings = std::getenv("SHEAF_MSG_RINGS");
    if (link->is_unix() && (rings == nullptr || std::string_view(rings) != "0")) {
      hello["rings"] = true;
      link->offer_rings({FrameType::kHello, 0, 0, 0, 0, 0}, to_payload(hello), deadline);
    } else {
      link->send({FrameType::kHello, 0, 0, 0, 0, 0}, to_payload(hello), deadline);
    }
    // The owner counts buffered messages per connection.
    credits = max_buffered;
  }

  // The link broke while both ends may live (a reset, a dropped TCP
  // connection): connect again, before the deadline. False if the owner
  // cannot be reached (it is gone, most likely).
  bool reconnect(const Error& why, Deadline deadline) {
    link->close();
    link.reset();
    lost = why;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    try {
      std::lock_guard lock(client->mutex);
      open_link(deadline);
      lost.reset();
      return true;
    } catch (const Error&) {
      return false;
    }
  }

  std::optional<Error> lost;  // why the link is gone, when it broke

  Link& live_link() {
    if (lost) throw *lost;
    if (!link) {
      throw Error(Errc::kInvalidArgument, "channel " + channel + ": disconnected");
    }
    return *link;
  }

  // Runs `work` on the link; if the owner turns out to be dead, what it held
  // of ours is released before the error goes on.
  template <class Work>
  auto guarded(Work&& work) -> decltype(work()) {
    try {
      return work();
    } catch (const Error& e) {
      if (peer_gone(e)) {
        throw_refusal_if_any();  // it did not die: it refused us, and said why
        std::lock_guard lock(client->mutex);
        release_dead_peer(client->heaps, peer_heaps);
      }
      throw;
    }
  }

  // An owner that refuses a client (another user's, say) says why in an
  // error frame and hangs up; a client that was sending meanwhile meets the
  // hang-up first. The frame may still be unread: then that is the error.
  // Other frames read meanwhile are dealt with as ever (absorb()); any other
  // error here leaves the first one (the hang-up) to be reported.
  void throw_refusal_if_any() {
    if (!link) return;
    std::optional<Frame> refusal;
    try {
      while (std::optional<Frame> frame = link->receive(deadline_after(Timeout(0)))) {
        if (frame->header.type == FrameType::kError && frame->header.request_id == 0) {
          refusal = std::move(frame);
          break;
        }
        absorb(*frame);
      }
    } catch (const Error&) {  // nothing more could be read
    }
    if (refusal) throw_error_frame(*refusal, "channel " + channel);
  }

  // Handles a frame that is not the answer awaited: credits, and late answers.
  void absorb(Frame& frame) {
    if (frame.header.type == FrameType::kError && frame.header.request_id == 0) {
      throw_error_frame(frame, "channel " + channel);  // the owner refused us
    }
    if (frame.header.type == FrameType::kCredit && frame.header.value > 0) {
      credits += frame.header.value;
    } else if (frame.header.type == FrameType::kReply) {
      // The reply to a send that timed out: dropped (its payload released).
      // Any other is a copy of a reply taken already (the owner answered
      // both a request and its copy sent after a reconnection): not taken
      // again, since a heap reference's hold is released once.
      const auto it = std::find(abandoned.begin(), abandoned.end(), frame.header.request_id);
      if (it == abandoned.end()) return;
      abandoned.erase(it);
      std::lock_guard lock(client->mutex);
      try {
        Payload dropped = Receiver::take(frame, client->heaps);
      } catch (const Error&) {
      }
    }
  }

  // Sends a request and waits for the frame answering it. If the link
  // breaks meanwhile, it connects again and sends the same request (same
  // id): the owner runs it at most once and answers the copy with the
  // reply it gave, or will give, to the first (channel.cpp).
  Frame round_trip(FrameHeader header, std::span<const std::byte> payload, Deadline deadline,
                   const char* what) {
    header.request_id = next_request++;
    live_link();
    for (int attempt = 0;; ++attempt) {
      try {
        return send_and_wait(header, payload, deadline, what);
      } catch (const Error& e) {
        if (e.code() == Errc::kTimedOut) {
          // Its reply may still come: recognised then, and released.
          if (abandoned.size() == kMaxAbandoned) abandoned.erase(abandoned.begin());
          abandoned.push_back(header.request_id);
          throw;
        }
        if (!peer_gone(e) || attempt == kMaxReconnects || !reconnect(e, deadline)) throw;
      }
    }
  }
  std::vector<std::uint64_t> abandoned;  // requests that timed out, newest last
  static constexpr std::size_t kMaxAbandoned = 64;
  static constexpr int kMaxReconnects = 3;

  Frame send_and_wait(const FrameHeader& header, std::span<const std::byte> payload,
                      Deadline deadline, const char* what) {
    Link& l = live_link();
    l.send(header, payload, deadline);
    for (;;) {
      auto frame = l.receive(deadline);
      if (!frame) {
        throw Error(Errc::kTimedOut, "channel " + channel + ": " + what + ": no answer in time",
                    ETIMEDOUT);
      }
      if (frame->header.request_id == header.request_id &&
          (frame->header.type == FrameType::kReply || frame->header.type == FrameType::kPong)) {
        return std::move(*frame);
      }
      if (frame->header.type == FrameType::kError &&
          (frame->header.request_id == header.request_id || frame->header.request_id == 0)) {
        throw_error_frame(*frame, "channel " + channel);  // ours, or a refusal
      }
      absorb(*frame);
    }
  }

  Reply finish(Frame frame) {
    Reply reply;
    reply.answer = frame.header.value;
    std::lock_guard lock(client->mutex);
    reply.payload = Receiver::take(frame, client->heaps);
    return reply;
  }

  void wait_for_credit(Deadline deadline, std::chrono::milliseconds timeout) {
    Link& l = live_link();
    // Credits the receiver sent while we were not reading.
    if (!l.read_available()) {
      throw Error(Errc::kSystem, "channel " + channel + ": the server is gone", ECONNRESET);
    }
    while (auto frame = l.next_frame()) absorb(*frame);
    while (credits <= 0) {
      auto frame = l.receive(deadline);
      if (!frame) {
        throw Error(Errc::kBusy,
                    "channel " + channel + ": the receiver holds " + std::to_string(max_buffered) +
                        " unread buffered messages from this client (its bound); waited " +
                        std::to_string(timeout.count()) + " ms for it to read some",
                    EAGAIN);
      }
      absorb(*frame);
    }
  }
};

namespace {

// A connection, not open yet, to the channel the manager described in
// `where` (its answer to kConnectChannel, or an entry of a group's list).
std::unique_ptr<Connection::State> connection_to(std::shared_ptr<Client::State> client,
                                                 const std::string& name, const Json& where,
                                                 const Frame& answer) {
  auto state = std::make_unique<Connection::State>();
  state->client = std::move(client);
  state->channel = name;
  state->max_buffered = static_cast<std::uint32_t>(
      std::max<std::int64_t>(0, int_field(where, "max_buffered", answer)));
  // Sends start before the owner has read our hello: what it maps and how
  // much it buffers come from its registration.
  state->peer_heaps = parse_heaps(where, answer);
  state->addresses = string_field(where, "address", answer);
  state->same_host = !where.contains("host") || where["host"] == host_identity();
  state->token = posix::random_hex(16);  // 128 bits: unique across processes and hosts
  return state;
}

}  // namespace

Connection Client::connect_channel(const std::string& name, Timeout timeout, bool wait) {
  check_name(name, "channel name");
  const Deadline deadline = deadline_after(timeout);
  std::unique_ptr<Connection::State> state;
  {
    std::lock_guard lock(state_->mutex);
    const Json request{{"name", name}};
    Frame answer = state_->request({FrameType::kConnectChannel, 0, 0, 0, 0, wait ? 1 : 0}, &request,
                                   deadline, "connecting to channel " + name);
    state = connection_to(state_, name, parse_control(answer), answer);
    state->open_link(deadline);
  }
  return Connection(std::move(state));
}

Client::GroupSend Client::group_send(const std::string& group, std::int32_t type,
                                     std::span<const std::byte> bytes, Timeout timeout) {
  check_name(group, "group name");
  Frame answer;
  Json list;
  {
    std::lock_guard lock(state_->mutex);
    const Json request{{"group", group}};
    answer = state_->request({FrameType::kListGroup}, &request, deadline_after(timeout),
                             "listing group " + group);
    list = parse_control(answer);
    if (!list.is_array()) throw Error(Errc::kCorrupted, "group " + group + ": not a list", EPROTO);
  }
  GroupSend result;
  for (const Json& entry : list) {
    // The list describes each member as a kConnectChannel answer would: no
    // second question to the manager per member.
    const std::string member = string_field(entry, "name", answer);
    try {
      const Deadline deadline = deadline_after(timeout);
      std::unique_ptr<Connection::State> state = connection_to(state_, member, entry, answer);
      {
        std::lock_guard lock(state_->mutex);
        state->open_link(deadline);
      }
      Connection to(std::move(state));
      to.buffered_send(type, bytes, timeout);
      result.delivered.push_back(member);
    } catch (const Error& e) {
      result.failures.push_back(member + ": " + e.message());
    }
  }
  return result;
}

Connection::Connection(std::unique_ptr<State> state) : state_(std::move(state)) {}
Connection::Connection(Connection&&) noexcept = default;
Connection& Connection::operator=(Connection&&) noexcept = default;
Connection::~Connection() {
  if (state_) disconnect();
}

const std::string& Connection::channel() const {
  return state_->channel;
}

Reply Connection::send(std::int32_t type, std::span<const std::byte> bytes, Timeout timeout) {
  FrameHeader header{FrameType::kSend, 0, 0, 0, 0, type};
  return state_->guarded([&] {
    return state_->finish(state_->round_trip(header, bytes, deadline_after(timeout), "send"));
  });
}

Reply Connection::send(std::int32_t type, Loan&& loan, Timeout timeout) {
  FrameHeader header{FrameType::kSend, 0, 0, 0, 0, type};
  std::vector<std::byte> copy;
  std::array<std::byte, kHeapRefBytes> ref;
  std::span<const std::byte> bytes;
  {
    std::lock_guard lock(state_->client->mutex);
    bytes = Sender::prepare(loan, state_->client->heaps, state_->peer_heaps, header, copy, ref);
  }
  return state_->guarded([&] {
    return state_->finish(state_->round_trip(header, bytes, deadline_after(timeout), "send"));
  });
}

void Connection::buffered_send(std::int32_t type, std::span<const std::byte> bytes,
                               Timeout timeout) {
  const Deadline deadline = deadline_after(timeout);
  state_->guarded([&] {
    if (state_->credits <= 0) state_->wait_for_credit(deadline, timeout);
    state_->live_link().send({FrameType::kBufferedSend, 0, 0, 0, 0, type}, bytes, deadline);
  });
  --state_->credits;
}

void Connection::buffered_send(std::int32_t type, Loan&& loan, Timeout timeout) {
  const Deadline deadline = deadline_after(timeout);
  state_->guarded([&] {
    if (state_->credits <= 0) state_->wait_for_credit(deadline, timeout);
  });
  FrameHeader header{FrameType::kBufferedSend, 0, 0, 0, 0, type};
  std::vector<std::byte> copy;
  std::array<std::byte, kHeapRefBytes> ref;
  std::span<const std::byte> bytes;
  {
    std::lock_guard lock(state_->client->mutex);
    bytes = Sender::prepare(loan, state_->client->heaps, state_->peer_heaps, header, copy, ref);
  }
  state_->guarded([&] { state_->live_link().send(header, bytes, deadline); });
  --state_->credits;
}

std::chrono::nanoseconds Connection::ping(Timeout timeout) {
  const auto start = std::chrono::steady_clock::now();
  state_->guarded(
      [&] { return state_->round_trip({FrameType::kPing}, {}, deadline_after(timeout), "ping"); });
  return std::chrono::steady_clock::now() - start;
}

bool Connection::by_reference(const Heap& heap) const {
  std::lock_guard lock(state_->client->mutex);
  for (const LocalHeap& h : state_->client->heaps) {
    if (h.heap == &heap) return peer_heap(state_->peer_heaps, h.uuid) != nullptr;
  }
  return false;
}

Loan Connection::loan(std::size_t bytes) {
  Heap* chosen = nullptr;
  {
    std::lock_guard lock(state_->client->mutex);
    for (const LocalHeap& h : state_->client->heaps) {
      if (peer_heap(state_->peer_heaps, h.uuid) != nullptr) {
        chosen = h.heap;
        break;
      }
    }
    if (chosen == nullptr && !state_->client->heaps.empty())
      chosen = state_->client->heaps.front().heap;
  }
  if (chosen == nullptr) {
    throw Error(Errc::kInvalidArgument,
                "channel " + state_->channel + ": a loan needs a heap (Client::attach)");
  }
  return Loan::allocate(*chosen, bytes);
}

void Connection::disconnect() {
  if (!state_->link) return;
  try {
    state_->link->send({FrameType::kDisconnectChannel}, {}, deadline_after(Timeout(100)));
  } catch (const Error&) {  // gone already: nothing to say goodbye to
  }
  state_->link->close();
  state_->link.reset();
}

}  // namespace sheaf::msg
