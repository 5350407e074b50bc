// holds.cpp: held blocks, shared by reference between processes and freed
// exactly once.
//
// A held block says kHeld in its header and counts its holds in `tag`. Each
// hold belongs to a session and is listed in that session's hold ledger
// (format::HoldLedger), a block chained with the session's cache ledgers
// from State::session_ledgers[slot]. Every change (a hold taken, released,
// handed over; the ledger grown) is an Operation under the lock, so the
// count and the entries change together or not at all (recovery.cpp), and
// at every instant a block's count equals the entries naming it.
//
// When a session dies, recovery releases each hold its ledger lists, one
// operation per hold, from the last entry down (so a recovery killed in turn
// resumes where it stopped), and frees the blocks whose count reaches zero.
//
// This is what the message layer's heap references stand on: a sender
// allocates a held block, fills it, hands the hold to the receiver's
// session, and the receiver releases it when done; whoever dies first, the
// block is freed once.
#include <algorithm>
#include <cstring>

#include "impl.hpp"

namespace sheaf {
namespace {

using namespace format;

constexpr std::uint64_t kFirstLedgerEntries = 64;

std::uint64_t held_block_of(const Heap::Impl& impl, const void* p, const char* what) {
  const std::uint64_t offset = impl.offset_of(p);
  const std::uint64_t block = offset - kBlockHeaderBytes;
  if (p < impl.base || offset < kHeaderBytes + kBlockHeaderBytes || offset >= impl.heap_size() ||
      offset % kAlign != 0 || impl.block(block)->state() != kHeld) {
    throw Error(Errc::kInvalidArgument,
                "heap " + impl.path + ": " + what + ": not a held block of this heap");
  }
  return block;
}

[[noreturn]] void throw_holds_none(const Heap::Impl& impl, const char* what,
                                   const char* hint = "") {
  throw Error(Errc::kInvalidArgument, "heap " + impl.path + ": " + what +
                                          ": this process holds no hold on that block" + hint);
}

void require_holds(const Heap::Impl& impl) {
  if (!impl.has_feature(kFeatureHolds)) {
    throw Error(Errc::kUnsupported, "heap " + impl.path +
                                        " was made before held blocks; `sheaf heap upgrade` "
                                        "adds them (older Sheaf versions then refuse it)");
  }
}

}  // namespace

// Every offset of the chain is checked before it is followed (a chain that
// leads astray ends there, as one too long does), so that held_block(),
// which reads without the lock, never leaves the mapping.
HoldLedger* Heap::Impl::find_hold_ledger(int slot) {
  const State& s = state();
  const std::uint64_t size = heap_size();
  for (std::uint64_t at_block = s.session_ledgers[slot], guard = 0; at_block != 0 && guard < 100000;
       ++guard) {
    if (at_block % kAlign != 0 || at_block < kHeaderBytes ||
        at_block > size - kBlockHeaderBytes - sizeof(HoldLedger)) {
      return nullptr;
    }
    auto* head = at<LedgerHead>(at_block + kBlockHeaderBytes);
    if (head->magic == kHoldLedgerMagic) return reinterpret_cast<HoldLedger*>(head);
    at_block = head->next;
  }
  return nullptr;
}

HoldLedger* Heap::Impl::hold_ledger(int slot, std::uint64_t session, bool create) {
  if (HoldLedger* found = find_hold_ledger(slot)) return found;
  if (!create) return nullptr;
  State& s = state();
  const std::uint64_t fresh =
      allocate_block(sizeof(HoldLedger) + kFirstLedgerEntries * sizeof(std::uint64_t), kAlign);
  auto* ledger = at<HoldLedger>(fresh + kBlockHeaderBytes);
  // The payload of a block this operation took: nothing to save.
  std::memset(static_cast<void*>(ledger), 0, sizeof(HoldLedger));
  ledger->magic = kHoldLedgerMagic;
  ledger->session = session;
  ledger->next = s.session_ledgers[slot];
  ledger->capacity = kFirstLedgerEntries;
  store(s.session_ledgers[slot], fresh);
  return ledger;
}

void Heap::Impl::add_hold(int slot, std::uint64_t session, std::uint64_t block_offset) {
  HoldLedger* ledger = hold_ledger(slot, session, true);
  if (ledger->count == ledger->capacity) {
    // Copy it into a block twice the size, put that in its place in the
    // chain, free the old one.
    const std::uint64_t old_block = offset_of(ledger) - kBlockHeaderBytes;
    const std::uint64_t capacity = ledger->capacity * 2;
    const std::uint64_t fresh =
        allocate_block(sizeof(HoldLedger) + capacity * sizeof(std::uint64_t), kAlign);
    auto* bigger = at<HoldLedger>(fresh + kBlockHeaderBytes);
    std::memcpy(static_cast<void*>(bigger), ledger,
                sizeof(HoldLedger) + ledger->count * sizeof(std::uint64_t));
    bigger->capacity = capacity;
    std::uint64_t* link = &state().session_ledgers[slot];
    while (*link != old_block) link = &at<LedgerHead>(*link + kBlockHeaderBytes)->next;
    store(*link, fresh);
    free_block(old_block);
    ledger = bigger;
  }
  store(ledger->entries()[ledger->count], block_offset);
  store(ledger->count, ledger->count + 1);
}

bool Heap::Impl::drop_hold(int slot, std::uint64_t block_offset) {
  HoldLedger* ledger = hold_ledger(slot, 0, false);
  if (ledger == nullptr) return false;
  std::uint64_t* entries = ledger->entries();
  for (std::uint64_t i = ledger->count; i-- > 0;) {
    if (entries[i] != block_offset) continue;
    store(entries[i], entries[ledger->count - 1]);
    store(ledger->count, ledger->count - 1);
    return true;
  }
  return false;
}

bool Heap::Impl::holds_one(int slot, std::uint64_t block_offset) {
  const HoldLedger* ledger = find_hold_ledger(slot);
  if (ledger == nullptr) return false;
  const std::uint64_t* entries = ledger->entries();
  return std::find(entries, entries + ledger->count, block_offset) != entries + ledger->count;
}

void Heap::Impl::count_off_hold(std::uint64_t block_offset) {
  BlockHeader* header = block(block_offset);
  if (hold_count(header->tag) <= 1) {
    free_block(block_offset);
  } else {
    store(header->tag, header->tag - 1);
  }
}

// A session probed alive within the last 50 ms is taken for alive without
// another probe. One that died meanwhile gets the hold in its ledger anyway,
// and recovery releases it with the rest of that ledger (a session gone from
// its slot is not found at all: the lock orders the two).
int Heap::Impl::live_slot_of(std::uint64_t session) {
  constexpr std::uint64_t kTrustAliveNs = 50'000'000;
  const State& s = state();
  for (int i = 0; i < kMaxSessions; ++i) {
    if (session == 0 || s.sessions[i].id != session) continue;
    if (i == session_slot) return i;
    const std::uint64_t now = posix::monotonic_ns();
    SeenAlive& seen = seen_alive[static_cast<std::size_t>(i)];
    if (seen.session == session && now - seen.at_ns < kTrustAliveNs) return i;
    if (!session_alive(i)) return -1;
    seen = {session, now};
    return i;
  }
  return -1;
}

bool Heap::Impl::release_holds_of(std::uint64_t ledger_block) {
  auto* ledger = at<HoldLedger>(ledger_block + kBlockHeaderBytes);
  const std::uint64_t size = std::min(heap_size(), reserve);
  const std::uint64_t room =
      (block(ledger_block)->size() - kBlockHeaderBytes - sizeof(HoldLedger)) /
      sizeof(std::uint64_t);
  if (ledger->count > room) return false;
  while (ledger->count > 0) {
    const std::uint64_t held = ledger->entries()[ledger->count - 1];
    if (held % kAlign != 0 || held < kHeaderBytes || held > size || size - held < kMinBlock ||
        block(held)->state() != kHeld) {
      return false;
    }
    Operation op(*this);
    count_off_hold(held);
    store(ledger->count, ledger->count - 1);
    op.commit();
  }
  return true;
}

// --- The public calls ---

void* Heap::allocate_held(std::size_t bytes, std::size_t alignment) {
  Impl& impl = live();
  require_holds(impl);
  ExclusiveSection lock(impl);
  Impl::Operation op(impl);
  const std::uint64_t block = impl.allocate_block(bytes, alignment, kHeld);
  const std::uint64_t serial = impl.has_feature(kFeatureHeldSerials) ? impl.take_serial() : 0;
  // A block this operation took: not saved.
  publish(impl.block(block)->tag, (serial << kHoldCountBits) | 1);
  impl.add_hold(impl.session_slot, impl.session_id, block);
  return op.commit(impl.at(block + kBlockHeaderBytes));
}

void Heap::hold(const void* p) {
  Impl& impl = live();
  require_holds(impl);
  ExclusiveSection lock(impl);
  Impl::Operation op(impl);
  const std::uint64_t block = held_block_of(impl, p, "hold");
  // Like copying a shared_ptr: only a holder may add a hold. A process with
  // none has nothing keeping the block alive (it may be gone, its offset
  // reused), and bytes that merely look like a held block's header are
  // refused here rather than counted.
  if (!impl.holds_one(impl.session_slot, block)) {
    throw_holds_none(impl, "hold", " (take holds from a holder: hand_over)");
  }
  if (hold_count(impl.block(block)->tag) == kMaxHolds) {
    throw Error(Errc::kOutOfSpace, "heap " + impl.path + ": hold: the block has " +
                                       std::to_string(kMaxHolds) + " holds, the most it counts");
  }
  impl.store(impl.block(block)->tag, impl.block(block)->tag + 1);
  impl.add_hold(impl.session_slot, impl.session_id, block);
  op.commit();
}

void Heap::release(const void* p) {
  Impl& impl = live();
  require_holds(impl);
  ExclusiveSection lock(impl);
  Impl::Operation op(impl);
  const std::uint64_t block = held_block_of(impl, p, "release");
  if (!impl.drop_hold(impl.session_slot, block)) throw_holds_none(impl, "release");
  impl.count_off_hold(block);
  op.commit();
}

std::uint64_t Heap::hand_over(const void* p, std::uint64_t session) {
  Impl& impl = live();
  require_holds(impl);
  ExclusiveSection lock(impl);
  Impl::Operation op(impl);
  const std::uint64_t block = held_block_of(impl, p, "hand_over");
  const int slot = impl.live_slot_of(session);
  if (slot < 0) {
    throw Error(Errc::kNotFound, "heap " + impl.path + ": hand_over: no live session " +
                                     std::to_string(session) + " has the heap open");
  }
  if (!impl.drop_hold(impl.session_slot, block)) throw_holds_none(impl, "hand_over");
  impl.add_hold(slot, session, block);
  return op.commit(held_serial(impl.block(block)->tag));
}

std::uint64_t Heap::holds(const void* p) const {
  Impl& impl = live();
  SharedSection lock(impl);
  return hold_count(impl.block(held_block_of(impl, p, "holds"))->tag);
}

// Read under the lock or without it (Heap::held_block, read_consistently):
// every offset it follows is checked first, and what is torn by a writer
// throws kCorrupted, which there means "read again".
Heap::HeldBlock Heap::Impl::held_block(const void* p) {
  const std::uint64_t block = held_block_of(*this, p, "held_block");
  const HoldLedger* ledger = find_hold_ledger(session_slot);
  if (ledger == nullptr) return {};
  const std::uint64_t count = ledger->count;
  const std::uint64_t room =
      (heap_size() - offset_of(ledger) - sizeof(HoldLedger)) / sizeof(std::uint64_t);
  if (count > ledger->capacity || count > room) {
    throw Error(Errc::kCorrupted, "heap " + path + ": a hold ledger moved");  // read again
  }
  const std::uint64_t* entries = ledger->entries();
  if (std::find(entries, entries + count, block) == entries + count) return {};
  const BlockHeader* header = this->block(block);
  return {header->size() - kBlockHeaderBytes, held_serial(header->tag)};
}

std::uint64_t Heap::session() const {
  return live().session_id;
}

Heap::SessionFate Heap::reclaim_session(std::uint64_t session) {
  Impl& impl = live();
  ExclusiveSection lock(impl);
  State& s = impl.state();
  for (int i = 0; i < kMaxSessions; ++i) {
    if (s.sessions[i].id != session || session == 0) continue;
    if (i == impl.session_slot || impl.session_alive(i)) return SessionFate::kAlive;
    if (impl.reclaim_dead_sessions()) ++s.walked_recoveries;
    return SessionFate::kReclaimed;
  }
  return SessionFate::kNotListed;
}

}  // namespace sheaf
