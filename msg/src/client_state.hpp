// client_state.hpp: what a Client, its Channels and Connections share.
// Internal.
#pragma once

#include <array>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "control.hpp"
#include "link.hpp"
#include "sheaf/error.hpp"
#include "sheaf/msg.hpp"

namespace sheaf::msg {

using Uuid = std::array<std::uint8_t, 16>;

// A heap this process attached (Client::attach).
struct LocalHeap {
  Heap* heap = nullptr;
  Uuid uuid{};
  std::uint64_t session = 0;
};
// A heap a peer said it maps, and its session there (what holds go to).
struct PeerHeap {
  Uuid uuid{};
  std::uint64_t session = 0;
};

// "0011...-..." (HeapInfo::uuid) or 32 hex digits into `uuid`; false if neither.
bool parse_uuid(const std::string& text, Uuid& uuid);

// [{"uuid": "...", "session": N}, ...]: the heaps a channel's owner maps
// (in its registration) and a client maps (in its hello to the owner).
Json heaps_json(const std::vector<LocalHeap>& heaps);
// Throws kCorrupted for a malformed list.
std::vector<PeerHeap> parse_heaps(const Json& json, const Frame& frame);

// Payloads: a Loan out (by reference when the peer maps its heap, else
// copied), and a frame's payload in (a view of a held block, or bytes).
struct Sender {
  // Fills `header.flags` and returns the bytes to send: a HeapRef, with the
  // hold handed to the peer's session, or the loan's bytes (copied into
  // `copy`, the hold released).
  static std::span<const std::byte> prepare(Loan& loan, const std::vector<LocalHeap>& mine,
                                            const std::vector<PeerHeap>& theirs,
                                            FrameHeader& header, std::vector<std::byte>& copy,
                                            std::array<std::byte, kHeapRefBytes>& ref);
};
struct Receiver {
  // Throws kCorrupted for a reference into a heap not attached here, or to
  // something that is not a block held by this process.
  static Payload take(Frame& frame, const std::vector<LocalHeap>& mine);
};

// A peer died: the holds its sessions had in the heaps we share with it are
// released (Heap::reclaim_session). Its socket closes a moment before the
// kernel has finished its exit, and meanwhile its sessions still count as
// alive: try_release_dead_peer() tries once and says whether none does any
// more; release_dead_peer() retries for up to kReclaimWait.
inline constexpr std::chrono::milliseconds kReclaimWait{200};
bool try_release_dead_peer(const std::vector<LocalHeap>& mine, const std::vector<PeerHeap>& theirs);
void release_dead_peer(const std::vector<LocalHeap>& mine, const std::vector<PeerHeap>& theirs);
// Whether `e` says the peer is gone (its socket closed or reset).
bool peer_gone(const Error& e);

struct Client::State {
  std::mutex mutex;  // the manager link: a Client's channels may live on several threads
  std::string id;
  std::string manager;
  std::string secret_file;  // ConnectOptions::secret_file
  Timeout timeout{5000};
  std::optional<Link> link;  // to the manager; empty while it is down
  std::uint64_t next_request = 1;
  std::vector<LocalHeap> heaps;
  struct Registration {
    std::string name;
    std::string address;
    std::uint32_t max_buffered = 0;
    Json heaps;                       // heaps_json() of the heaps attached when it was created
    std::vector<std::string> groups;  // joined, and joined again after a restart
    Json create_request() const;      // what kCreateChannel carries for it
  };
  std::vector<Registration> channels;  // registered, and registered again after a manager restart

  // Sends a request to the manager and returns its answer; an error frame
  // is thrown as the Error it names. Reconnects first if the link is down.
  Frame request(FrameHeader header, const Json* payload, Deadline deadline,
                const std::string& what);
  // (Re)connects to the manager and says hello; with `reregister`, creates
  // this client's channels again. Caller holds the mutex.
  void connect_manager(Deadline deadline, bool reregister);
};

// Asks the manager to create the channel and join its groups (on `link`,
// which said hello already).
// What kJoinGroup carries.
Json join_request(const std::string& group, const std::string& channel);
void register_channel(Link& link, std::uint64_t& next_request, const Client::State::Registration& r,
                      Deadline deadline);

}  // namespace sheaf::msg
