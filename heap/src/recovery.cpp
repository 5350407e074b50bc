// recovery.cpp: walking the block chain, to repair or to verify.
//
// rebuild() runs under the exclusive lock, in two passes. The first only
// reads: it verifies that the chain is intact and stops with kCorrupted,
// having written nothing, if it is not. The second merges runs of free
// blocks (each merge one publish()), re-bins every free block and recounts.
// After a death inside the lock (kRecover) it also frees the named blocks
// whose constructor never returned and the name tables the dead process was
// building, then rebuilds the name table from the records.
//
// check() is the same walk, read-only, plus a comparison of every cache with
// what the walk found: that is the definition of a sound heap.
//
// The walk costs time in proportion to the heap (about 2 ms per 1,000
// blocks), with every other process waiting. So in local mode, where a
// process's death loses none of its stores (the kernel keeps its pages), the
// walk is the last resort; recovery is proportional to what the dead process
// was doing:
//
//   Operations. Each allocator operation (allocate, free, construct with its
//   constructor, destroy, a thread cache's refill or flush, a session's
//   registration) saves the old value of every word it is about to change
//   in State's undo log, each before the store (release order; a process
//   killed at any instant has stored a word only after logging it). A death
//   inside an operation is undone by putting the words back in reverse
//   order: the heap is as it was before the operation began, and the
//   operation never happened (its caller never returned). The stores that
//   need no saving: the payload of a block the operation itself took from a
//   bin (its free links are saved when it is taken), and a header written
//   where the chain cannot reach it yet (a split's tail, growth's new area).
//   An operation too big for the log (the sweep, a huge constructor) marks
//   the log overflowed, and a death there gets the walk.
//
//   Ledgers. Blocks in a thread's cache are not in any bin, and they belong
//   to a session that may die outside the lock. Each cache lists its blocks
//   in a ledger block in the file (format::CacheLedger), so a dead
//   session's blocks are found by reading its ledgers.
//
// A first opener that finds the heap unclean trusts the log and the ledgers
// only if the machine has not restarted since (State::boot_hash): a restart
// can lose pages the kernel had not written back, and then only the walk
// finds out what is left.
#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "impl.hpp"
#include "posix.hpp"

namespace sheaf {
namespace {

using namespace format;

struct ChainSummary {
  std::uint64_t blocks = 0;
  std::uint64_t free_blocks = 0;
  std::uint64_t free_bytes = 0;
  std::uint64_t used_bytes = 0;
  std::uint64_t named = 0;
  std::uint64_t pending = 0;
  std::uint64_t index_blocks = 0;
  bool table_found = false;  // State::name_table is the start of a kIndex block
};

std::string at_offset(std::uint64_t offset) {
  return "block at offset " + std::to_string(offset);
}

}  // namespace

// Why the named record of the block at `offset` (of `size` bytes, inside the
// heap) is unsound, or nullptr. Without `check_hash`, only whether every length
// and offset in it stays inside the block (enough to read it safely).
// `copy`: a copy of the record taken once, which is what is checked (a
// reader without the lock checks and then uses only its copy).
const char* Heap::Impl::record_problem(std::uint64_t offset, std::uint64_t size, bool check_hash,
                                       const NamedRecord* copy) const {
  if (sizeof(NamedRecord) + kBlockHeaderBytes > size) return "too small for a named record";
  const NamedRecord* r = copy != nullptr ? copy : record(offset);
  const std::uint64_t payload_end = offset + size;
  const std::uint64_t names_end = offset + kBlockHeaderBytes + sizeof(NamedRecord) +
                                  std::uint64_t{r->name_length} + r->type_length;
  if (r->name_length == 0 || r->name_length > kMaxNameLength || r->type_length > kMaxTypeLength ||
      names_end > payload_end) {
    return "name or type length out of range";
  }
  if (r->element_alignment == 0 || (r->element_alignment & (r->element_alignment - 1)) != 0 ||
      r->element_alignment > kPageSize || (r->object_offset & (r->element_alignment - 1)) != 0) {
    return "object misaligned";
  }
  if (r->object_offset < names_end || r->object_offset > payload_end)
    return "object outside its block";
  // (No division: every find and destroy checks this.)
  std::uint64_t object_bytes = 0;
  if (__builtin_mul_overflow(r->element_size, r->count, &object_bytes) ||
      object_bytes > payload_end - r->object_offset) {
    return "object larger than its block";
  }
  if (check_hash &&
      r->name_hash != hash_name(std::string_view(record_names(offset), r->name_length))) {
    return "name hash mismatch";
  }
  return nullptr;
}

namespace {

// Walks the chain; returns the first structural problem, or "".
std::string walk_chain(const Heap::Impl& impl, ChainSummary& summary,
                       std::vector<std::uint64_t>* starts) {
  const std::uint64_t end = impl.state().size;
  for (std::uint64_t offset = kHeaderBytes; offset < end;) {
    if (end - offset < kMinBlock) return at_offset(offset) + ": runs past the end of the heap";
    const BlockHeader* header = impl.block(offset);
    const std::uint64_t size = header->size();
    const std::uint64_t state = header->state();
    if (size < kMinBlock) return at_offset(offset) + ": invalid size " + std::to_string(size);
    if (size > end - offset) {
      return at_offset(offset) + ": size " + std::to_string(size) +
             " runs past the end of the heap";
    }
    if (state > kLastState) return at_offset(offset) + ": invalid state " + std::to_string(state);
    // A pending block's record may be half written (its constructor had not
    // returned); recovery frees it whatever it says, so only named ones count.
    if (state == kNamed) {
      if (const char* why = impl.record_problem(offset, size, true); why != nullptr) {
        return at_offset(offset) + ": named record: " + why;
      }
    }
    if (state == kIndex && offset == impl.state().name_table) {
      summary.table_found = true;
      if (size < kBlockHeaderBytes + sizeof(NameTable))
        return at_offset(offset) + ": name table too small";
      const auto* table = impl.at<NameTable>(offset + kBlockHeaderBytes);
      const std::uint64_t room = (size - kBlockHeaderBytes - sizeof(NameTable)) / 8;
      if (table->capacity == 0 || (table->capacity & (table->capacity - 1)) != 0 ||
          table->capacity > room) {
        return at_offset(offset) + ": name table malformed";
      }
    }
    ++summary.blocks;
    if (starts) starts->push_back(offset);
    switch (state) {
      case kFree:
        ++summary.free_blocks;
        summary.free_bytes += size;
        break;
      case kNamed:
        ++summary.named;
        [[fallthrough]];
      default:
        summary.used_bytes += size;
        break;
    }
    if (state == kPending) ++summary.pending;
    if (state == kIndex) ++summary.index_blocks;
    offset += size;
  }
  return "";
}

}  // namespace

// --- Operations and the undo log ---

// ~Operation()'s rare paths (the rest is inline in impl.hpp).
void Heap::Impl::Operation::abort_uncommitted() {
  std::fputs("sheaf: an Operation ended without commit() and without an exception\n", stderr);
  std::abort();
}

void Heap::Impl::roll_back() {
  if (undo_next == kOverflowed) return;  // too big to log: it stands (see impl.hpp)
  State& s = state();
  for (std::uint64_t i = undo_next; i-- > 0;) {
    publish(*at<std::uint64_t>(s.undo[i].offset), s.undo[i].old_value);
  }
}

void Heap::Impl::save_past_the_end() {
  if (undo_next == kNotLogging) return;
  posix::crash_point();  // a walk's stores too
  if (undo_next == format::kUndoEntries) {
    publish(state().undo_overflow, std::uint64_t{1});
    undo_next = kOverflowed;
  }
}

void Heap::Impl::save_range(const void* start, std::size_t bytes) {
  const auto* word = static_cast<const std::uint64_t*>(start);
  for (std::size_t i = 0; i < bytes / sizeof(std::uint64_t); ++i) save(word + i);
  // The caller writes these words with plain stores, which the compiler
  // could otherwise move above the log's: a death is observed like a
  // signal is, in this thread's program order.
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

void Heap::Impl::mark_unlogged() {
  if (!undo_active()) return;
  publish(state().undo_overflow, 1);
  undo_next = kOverflowed;
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

// begin_undo_log(), end_undo_log() and disown_undo_log() are inline in impl.hpp.

bool Heap::Impl::replay_undo_log(std::uint64_t dead_holder) {
  State& s = state();
  // Only in heaps whose writers all keep the log (an older Sheaf refuses to
  // write a heap with cache-ledgers).
  if (mode != LockMode::kLocal || !has_feature(kFeatureCacheLedgers) || dead_holder == 0 ||
      s.undo_owner != dead_holder || s.undo_overflow != 0 || s.undo_count > kUndoEntries) {
    return false;
  }
  // Every entry must name a word of State or of the blocks; one that does
  // not means the log is not what we wrote, and only the walk can tell.
  const std::uint64_t size = std::min(heap_size(), reserve);
  const std::uint64_t n = s.undo_count;
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint64_t offset = s.undo[i].offset;
    const bool in_state = offset >= offsetof(Header, state) &&
                          offset + 8 <= offsetof(Header, state) + offsetof(State, undo_owner);
    const bool in_blocks = offset >= kHeaderBytes && offset + 8 <= size;
    const bool in_ledgers = offset >= offsetof(Header, state) + offsetof(State, session_ledgers) &&
                            offset + 8 <= offsetof(Header, state) +
                                              offsetof(State, session_ledgers) +
                                              sizeof(s.session_ledgers);
    if (offset % 8 != 0 || !(in_state || in_blocks || in_ledgers)) return false;
  }
  for (std::uint64_t i = n; i-- > 0;)
    publish(*at<std::uint64_t>(s.undo[i].offset), s.undo[i].old_value);
  // A death from here on finds the log replayed again: the same words, the
  // same values.
  publish(s.undo_count, 0);
  return true;
}

namespace {

// The ledger (of either kind) in the block at `offset`, whole inside its
// block and the heap, or nullptr if that is not one.
const LedgerHead* ledger_at(const Heap::Impl& impl, std::uint64_t offset) {
  const std::uint64_t size = std::min(impl.heap_size(), impl.reserve);
  constexpr std::uint64_t kLeast = kBlockHeaderBytes + sizeof(HoldLedger);
  if (offset % kAlign != 0 || offset < kHeaderBytes || offset > size || size - offset < kLeast) {
    return nullptr;
  }
  const BlockHeader* header = impl.block(offset);
  const std::uint64_t room = header->size();
  if (header->state() != kUsed || room < kLeast || room > size - offset) return nullptr;
  const auto* head = impl.at<LedgerHead>(offset + kBlockHeaderBytes);
  if (head->magic == kLedgerMagic) {
    return room >= kBlockHeaderBytes + sizeof(CacheLedger) ? head : nullptr;
  }
  if (head->magic == kHoldLedgerMagic) {
    const auto* holds = reinterpret_cast<const HoldLedger*>(head);
    const std::uint64_t entries = (room - kLeast) / sizeof(std::uint64_t);
    return holds->capacity <= entries && holds->count <= holds->capacity ? head : nullptr;
  }
  return nullptr;
}

const CacheLedger* as_cache_ledger(const LedgerHead* head) {
  return head != nullptr && head->magic == kLedgerMagic ? reinterpret_cast<const CacheLedger*>(head)
                                                        : nullptr;
}

const HoldLedger* as_hold_ledger(const LedgerHead* head) {
  return head != nullptr && head->magic == kHoldLedgerMagic
             ? reinterpret_cast<const HoldLedger*>(head)
             : nullptr;
}

}  // namespace

bool Heap::Impl::reclaim_session(int slot) {
  State& s = state();
  const std::uint64_t size = std::min(heap_size(), reserve);
  // A bound on the chain, so that a damaged one cannot loop.
  for (int guard = 0; s.session_ledgers[slot] != 0; ++guard) {
    const std::uint64_t ledger_block = s.session_ledgers[slot];
    const LedgerHead* head = ledger_at(*this, ledger_block);
    if (head == nullptr || guard > 100000) return false;
    if (as_hold_ledger(head) != nullptr) {
      if (!release_holds_of(ledger_block)) return false;
      Operation op(*this);
      store(s.session_ledgers[slot], head->next);
      free_block(ledger_block);
      op.commit();
      continue;
    }
    const CacheLedger* ledger = as_cache_ledger(head);
    // Each block freed is an operation of its own: a death in the middle of
    // this leaves the rest listed, and the freed ones no longer kCached.
    const auto reclaim = [&](std::uint64_t offset, bool in_flight) {
      if (offset % kAlign != 0 || offset < kHeaderBytes || offset > size ||
          size - offset < kMinBlock) {
        return;
      }
      const BlockHeader* header = block(offset);
      if (header->size() < kMinBlock || header->size() > size - offset) return;
      // (In flight, a block a previous Sheaf left may carry its check word.)
      const bool cached =
          header->state() == kCached && (header->tag == ledger->session || in_flight);
      if (cached || (in_flight && header->state() == kUsed)) {
        held_lock();  // a lambda: analysed alone, it runs inside our section
        Operation op(*this);
        free_block(offset);
        op.commit();
      }
    };
    reclaim(ledger->in_flight, true);
    for (int bin = 0; bin < kCacheBins; ++bin) {
      const std::uint32_t count = std::min(ledger->counts[bin], cache_slots(bin));
      for (std::uint32_t i = 0; i < count; ++i) {
        reclaim(ledger->slots[cache_slot_base(bin) + i], false);
      }
    }
    Operation op(*this);
    store(s.session_ledgers[slot], ledger->next);
    free_block(ledger_block);
    op.commit();
  }
  return true;
}

bool Heap::Impl::reclaim_dead_sessions(bool walked) {
  State& s = state();
  std::vector<int> dead;
  for (int i = 0; i < kMaxSessions; ++i) {
    if (i == session_slot) continue;
    const bool listed = s.sessions[i].id != 0;
    if (listed ? !session_survives(i) : s.session_ledgers[i] != 0) dead.push_back(i);
  }
  if (dead.empty()) return false;
  // A heap without the feature may have had sessions of an older Sheaf,
  // which kept no ledgers: only the walk finds their blocks.
  bool walk = !walked && !has_feature(kFeatureCacheLedgers);
  for (int i : dead) {
    if (!walk && !reclaim_session(i)) walk = true;
  }
  if (walk) rebuild(Rebuild::kRecover);  // frees dead sessions' cached blocks and ledgers
  Operation op(*this);
  for (int i : dead) {
    save_range(&s.sessions[i], sizeof(Session));
    s.sessions[i] = Session{};
  }
  return op.commit(walk);
}

std::string Heap::Impl::quick_check() const {
  const State& s = state();
  const std::uint64_t size = heap_size();
  const auto block_at = [&](std::uint64_t offset) -> const BlockHeader* {
    if (offset % kAlign != 0 || offset < kHeaderBytes || offset > size || size - offset < kMinBlock)
      return nullptr;
    const BlockHeader* header = block(offset);
    if (header->size() < kMinBlock || header->size() > size - offset) return nullptr;
    return header;
  };
  std::uint64_t nonempty[4] = {0, 0, 0, 0};
  for (int bin = 0; bin < kBinCount; ++bin) {
    const std::uint64_t head = s.bins[bin];
    if (head == 0) continue;
    nonempty[bin / 64] |= std::uint64_t{1} << (bin % 64);
    const BlockHeader* header = block_at(head);
    if (header == nullptr || header->state() != kFree || bin_of(header->size()) != bin ||
        at<FreeLinks>(head + kBlockHeaderBytes)->prev != 0) {
      return "bin " + std::to_string(bin) + " leads to offset " + std::to_string(head) +
             ", which is not the first free block of that bin";
    }
  }
  for (int word = 0; word < 4; ++word) {
    if (nonempty[word] != s.bin_bitmap[word]) {
      const int bin = word * 64 + std::countr_zero(nonempty[word] ^ s.bin_bitmap[word]);
      return "the bitmap of non-empty bins says bin " + std::to_string(bin) + " is " +
             (nonempty[word] >> (bin % 64) & 1 ? "empty" : "not empty") + "; it is not";
    }
  }
  if (s.name_table != 0) {
    const BlockHeader* header = block_at(s.name_table);
    if (header == nullptr || header->state() != kIndex || name_table() == nullptr)
      return "the name table's offset " + std::to_string(s.name_table) + " is not a name table";
  }
  if (s.used_bytes + s.free_bytes > size) return "the byte counts exceed the heap's size";
  return "";
}

void Heap::Impl::rebuild(Rebuild kind) {
  posix::crash_point();  // a death before the walk begins (tests)
  // Too much to log: a death anywhere in the walk, even in its first pass,
  // gets another walk (the log says so from here on).
  mark_unlogged();
  ChainSummary summary;
  if (std::string problem = walk_chain(*this, summary, nullptr); !problem.empty()) {
    throw Error(Errc::kCorrupted, "heap " + path + ": " + problem);
  }
  State& s = state();
  const bool recovering = kind == Rebuild::kRecover;
  // Recovery keeps the current name table when it is big enough, so that it
  // never needs more room than the heap had.
  bool reuse_table = false;
  if (recovering && summary.table_found) {
    const auto* table = at<NameTable>(s.name_table + kBlockHeaderBytes);
    reuse_table = table->capacity >= 2 * summary.named;  // insert_name() will not resize it
  }
  // Cached blocks of sessions that are gone go back to the heap on recovery,
  // and so do their ledgers (the walk finds the blocks they list).
  std::vector<std::uint64_t> live;
  // Blocks a dead session's caches had in flight: if still kUsed, their
  // user never had them (or had freed them), so they are free.
  std::unordered_set<std::uint64_t> dead_in_flight;
  if (recovering) {
    for (int i = 0; i < kMaxSessions; ++i) {
      const std::uint64_t id = s.sessions[i].id;
      if (id != 0 && (i == session_slot || session_survives(i))) {
        live.push_back(id);
        continue;
      }
      for (int guard = 0; s.session_ledgers[i] != 0 && guard < 100000; ++guard) {
        const std::uint64_t ledger_block = s.session_ledgers[i];
        const LedgerHead* ledger = ledger_at(*this, ledger_block);
        if (ledger == nullptr) break;
        if (const CacheLedger* cache = as_cache_ledger(ledger); cache && cache->in_flight != 0) {
          dead_in_flight.insert(cache->in_flight);
        }
        publish(s.session_ledgers[i], ledger->next);
        publish(block(ledger_block)->size_and_state, block(ledger_block)->size() | kFree);
      }
      publish(s.session_ledgers[i], 0);
    }
  }
  // Holds are recounted from the ledgers of the sessions that live (a dead
  // one's just went): a held block keeps that many, and one with none is
  // freed. Idempotent, so a walk killed halfway is simply walked again.
  std::unordered_map<std::uint64_t, std::uint64_t> holds_listed;
  if (recovering) {
    for (int i = 0; i < kMaxSessions; ++i) {
      std::uint64_t at_ledger = s.session_ledgers[i];
      for (int guard = 0; at_ledger != 0 && guard < 100000; ++guard) {
        const LedgerHead* ledger = ledger_at(*this, at_ledger);
        if (ledger == nullptr) break;
        if (const HoldLedger* holds = as_hold_ledger(ledger)) {
          for (std::uint64_t k = 0; k < holds->count; ++k) ++holds_listed[holds->entries()[k]];
        }
        at_ledger = ledger->next;
      }
    }
  }
  const auto holds_of = [&](std::uint64_t offset) {
    const auto it = holds_listed.find(offset);
    return it == holds_listed.end() ? std::uint64_t{0} : it->second;
  };
  const auto owner_gone = [&](const BlockHeader* header) {
    const std::uint64_t before = header->word();
    const std::uint64_t owner = __atomic_load_n(&header->tag, __ATOMIC_ACQUIRE);
    // A header that changed under us belongs to a thread that is running.
    if (header->word() != before) return false;
    return std::find(live.begin(), live.end(), owner) == live.end();
  };
  reset_bins();
  std::uint64_t used = 0;
  std::uint64_t named = 0;
  std::uint64_t run = 0;  // first block of the current run of free blocks
  const auto close_run = [&] {
    held_lock();  // a lambda: analysed alone, it runs inside our section
    if (run != 0) push_free(run);
    run = 0;
  };
  for (std::uint64_t offset = kHeaderBytes; offset < s.size;) {
    BlockHeader* header = block(offset);
    const std::uint64_t size = header->size();
    const std::uint64_t state_bits = header->state();
    const bool kept_table = reuse_table && offset == s.name_table;
    const bool reclaim =
        state_bits == kFree ||
        (recovering && (state_bits == kPending || (state_bits == kIndex && !kept_table) ||
                        (state_bits == kCached && owner_gone(header)) ||
                        (state_bits == kUsed && dead_in_flight.count(offset) != 0) ||
                        (state_bits == kHeld && holds_of(offset) == 0)));
    if (recovering && state_bits == kHeld && !reclaim &&
        hold_count(header->tag) != holds_of(offset)) {
      publish(header->tag, (header->tag & ~kMaxHolds) | holds_of(offset));  // the serial stays
    }
    if (reclaim) {
      if (run == 0) {
        run = offset;
        if (state_bits != kFree) publish(header->size_and_state, size | kFree);
      } else {
        publish(block(run)->size_and_state, (block(run)->size() + size) | kFree);
      }
    } else {
      close_run();
      used += size;
      if (state_bits == kNamed) ++named;
    }
    offset += size;
  }
  close_run();
  s.used_bytes = used;
  s.small_freed = 0;
  // A sweep may run inside construct(), whose pending object is counted
  // already though not yet named: only recovery recounts.
  if (!recovering) return;
  s.named_count = named;

  if (reuse_table) {
    auto* table = at<NameTable>(s.name_table + kBlockHeaderBytes);
    std::fill_n(table->slots(), table->capacity, kEmptySlot);
    table->count = 0;
    table->tombstones = 0;
  } else {
    publish(s.name_table, 0);
    if (named == 0) return;
    build_name_table(named);
  }
  for (std::uint64_t offset = kHeaderBytes; offset < s.size; offset += block(offset)->size()) {
    if (block(offset)->state() == kNamed) insert_name(offset);
  }
}

CheckReport Heap::Impl::check(bool full, bool* chain_sound) const {
  if (outgrown()) throw_outgrown("checking it");
  CheckReport report;
  ChainSummary summary;
  std::vector<std::uint64_t> starts;
  std::string broken = walk_chain(*this, summary, full ? &starts : nullptr);
  if (chain_sound) *chain_sound = broken.empty();
  if (!broken.empty()) {
    report.problems.push_back(broken);
    return report;
  }
  report.blocks = summary.blocks;
  report.free_blocks = summary.free_blocks;
  report.named_objects = summary.named;
  // Each finding is either damage (problem) or what a crash of Sheaf's can
  // leave (repair): invariants 2 and 3 of format.hpp say which. A crash
  // leaves caches (counters, bins, links, the name table's counts) half
  // updated and pending or cached blocks behind; it never leaves a list or
  // table entry pointing into the middle of a block or at a block of the
  // wrong kind, nor a reused serial.
  auto problem = [&](std::string text) { report.problems.push_back(std::move(text)); };
  auto repair = [&](std::string text) { report.repairs.push_back(std::move(text)); };

  const State& s = state();
  if (checksum_identity(header()->identity) != header()->identity.checksum) {
    if (s.identity_staged == 1 &&
        checksum_identity(s.staged_identity) == s.staged_identity.checksum) {
      repair("an upgrade was cut short while rewriting the header: to be finished");
    } else {
      problem("header checksum mismatch");
    }
  }
  // (A counted reader holds no mutex, and outer_exclusive may be left over
  // from an earlier section: only this thread's exclusive section counts.)
  if (s.lock_holder != 0 && !exclusive_by_this_thread()) {
    repair("a process died inside the lock: the next lock repairs the heap");
  }
  if (summary.pending != 0) {
    repair(std::to_string(summary.pending) +
           " named objects left half-constructed by a process that died: to be freed");
  }
  if (s.used_bytes != summary.used_bytes) {
    repair("used bytes recorded as " + std::to_string(s.used_bytes) + ", found " +
           std::to_string(summary.used_bytes) + ": to be recounted");
  }
  if (s.free_bytes != summary.free_bytes) {
    repair("free bytes recorded as " + std::to_string(s.free_bytes) + ", found " +
           std::to_string(summary.free_bytes) + ": to be recounted");
  }
  if (s.named_count != summary.named) {
    repair("object count recorded as " + std::to_string(s.named_count) + ", found " +
           std::to_string(summary.named) + ": to be recounted");
  }
  const bool has_table = s.name_table != 0;
  if (summary.named != 0 && !has_table) repair("named objects but no name table: to be rebuilt");
  if (has_table && !summary.table_found) {
    problem("name table offset " + std::to_string(s.name_table) + " is not a name table block");
    return report;
  }
  if (!full) return report;

  // Every free block in exactly one list, the right one, with sound links.
  const auto is_block = [&](std::uint64_t offset) {
    return std::binary_search(starts.begin(), starts.end(), offset);
  };
  std::unordered_set<std::uint64_t> listed;
  for (int bin = 0; bin < kBinCount; ++bin) {
    const bool marked = (s.bin_bitmap[bin / 64] >> (bin % 64)) & 1;
    if (marked != (s.bins[bin] != 0)) {
      repair("bin " + std::to_string(bin) + ": bitmap disagrees: to be rebuilt");
    }
    std::uint64_t previous = 0;
    for (std::uint64_t offset = s.bins[bin]; offset != 0;) {
      if (!is_block(offset) || block(offset)->state() != kFree) {
        problem("bin " + std::to_string(bin) + " lists " + std::to_string(offset) +
                ", which is not a free block");
        break;
      }
      if (bin_of(block(offset)->size()) != bin) {
        problem("free block at offset " + std::to_string(offset) + " is in the wrong bin");
      }
      if (!listed.insert(offset).second) {
        problem("free block at offset " + std::to_string(offset) + " is listed twice");
        break;
      }
      const auto* links = at<FreeLinks>(offset + kBlockHeaderBytes);
      if (links->prev != previous) {
        repair("free block at offset " + std::to_string(offset) +
               " has a wrong back link: bins to be rebuilt");
      }
      previous = offset;
      offset = links->next;
    }
  }
  if (listed.size() < summary.free_blocks) {
    repair(std::to_string(summary.free_blocks - listed.size()) +
           " free blocks are in no bin: bins to be rebuilt");
  }
  // Blocks in the thread caches of processes that are gone.
  std::vector<std::uint64_t> live_sessions_ids;
  for (int i = 0; i < kMaxSessions; ++i) {
    const std::uint64_t id = s.sessions[i].id;
    if (id != 0 && (i == session_slot || session_alive(i))) live_sessions_ids.push_back(id);
  }
  std::uint64_t orphans = 0;
  for (std::uint64_t offset : starts) {
    if (block(offset)->state() != kCached) continue;
    const std::uint64_t owner = __atomic_load_n(&block(offset)->tag, __ATOMIC_ACQUIRE);
    if (std::find(live_sessions_ids.begin(), live_sessions_ids.end(), owner) ==
        live_sessions_ids.end()) {
      ++orphans;
    }
  }
  if (orphans != 0) {
    repair(std::to_string(orphans) + " blocks cached by processes that are gone: to be freed");
  }

  // Ledgers: each slot's chain is made of ledgers of that slot's session,
  // and every entry below a bin's count is a block. The blocks a session
  // that is gone cached must all be listed (or in flight): recovery finds
  // them only there. A live session's threads change their caches without
  // the lock, so only the shape of its ledgers is checked.
  // Holds: every kHeld block counts exactly the entries naming it in all
  // hold ledgers; those of sessions that are gone are released by the next
  // writer.
  std::unordered_map<std::uint64_t, std::uint64_t> held_entries;  // block -> entries
  std::uint64_t dead_holds = 0;
  if (has_feature(kFeatureCacheLedgers)) {
    for (int i = 0; i < kMaxSessions; ++i) {
      const std::uint64_t id = s.sessions[i].id;
      const bool gone = id != 0 && i != session_slot && !session_alive(i);
      std::unordered_set<std::uint64_t> listed_blocks;
      std::uint64_t at_ledger = s.session_ledgers[i];
      for (int guard = 0; at_ledger != 0; ++guard) {
        const LedgerHead* head = ledger_at(*this, at_ledger);
        const std::string where = "the ledger at offset " + std::to_string(at_ledger);
        if (head == nullptr || !is_block(at_ledger) || guard > kMaxSessions * 1024) {
          problem("session slot " + std::to_string(i) + ": its chain of ledgers leads to offset " +
                  std::to_string(at_ledger) + ", which is not a ledger");
          break;
        }
        if (id != 0 && head->session != id) {
          problem(where + " belongs to session " + std::to_string(head->session) +
                  ", not to slot " + std::to_string(i) + "'s session " + std::to_string(id));
        }
        if (const HoldLedger* holds = as_hold_ledger(head)) {
          for (std::uint64_t k = 0; k < holds->count; ++k) {
            const std::uint64_t held = holds->entries()[k];
            if (!is_block(held) || block(held)->state() != kHeld) {
              problem(where + " holds offset " + std::to_string(held) +
                      ", which is not a held block");
              continue;
            }
            ++held_entries[held];
            if (gone || id == 0) ++dead_holds;
          }
          at_ledger = head->next;
          continue;
        }
        const CacheLedger* ledger = as_cache_ledger(head);
        listed_blocks.insert(ledger->in_flight);
        for (int bin = 0; bin < kCacheBins; ++bin) {
          if (ledger->counts[bin] > cache_slots(bin)) {
            problem(where + ": bin " + std::to_string(bin) + " counts " +
                    std::to_string(ledger->counts[bin]) + " blocks, more than it has room for");
            continue;
          }
          for (std::uint32_t k = 0; k < ledger->counts[bin]; ++k) {
            const std::uint64_t entry = ledger->slots[cache_slot_base(bin) + k];
            listed_blocks.insert(entry);
            if (!is_block(entry)) {
              problem(where + " lists offset " + std::to_string(entry) + ", which is not a block");
            }
          }
        }
        at_ledger = ledger->next;
      }
      if (!gone) continue;
      std::uint64_t unlisted = 0;
      for (std::uint64_t offset : starts) {
        if (block(offset)->state() == kCached && block(offset)->tag == id &&
            listed_blocks.count(offset) == 0) {
          ++unlisted;
        }
      }
      if (unlisted != 0) {
        problem(std::to_string(unlisted) + " blocks cached by session " + std::to_string(id) +
                ", which is gone, are in none of its ledgers");
      }
    }
  }
  for (std::uint64_t offset : starts) {
    if (block(offset)->state() != kHeld) continue;
    const auto it = held_entries.find(offset);
    const std::uint64_t listed = it == held_entries.end() ? 0 : it->second;
    if (hold_count(block(offset)->tag) != listed) {
      problem(at_offset(offset) + ": counts " + std::to_string(hold_count(block(offset)->tag)) +
              " holds, but " + std::to_string(listed) + " are listed");
    }
    if (has_feature(kFeatureHeldSerials) && held_serial(block(offset)->tag) >= s.next_serial &&
        held_serial(block(offset)->tag) != 0) {
      problem(at_offset(offset) + ": a held block's serial " +
              std::to_string(held_serial(block(offset)->tag)) + " was never given (next is " +
              std::to_string(s.next_serial) + ")");
    }
  }
  if (dead_holds != 0) {
    repair(std::to_string(dead_holds) + " holds of processes that are gone: to be released");
  }

  // Serials: every named object has one, none is reused, all are below the next.
  if (has_feature(kFeatureObjectSerials)) {
    std::unordered_set<std::uint64_t> serials;
    for (std::uint64_t offset : starts) {
      if (block(offset)->state() != kNamed) continue;
      const std::uint64_t serial = block(offset)->tag;
      if (serial == 0 || serial >= s.next_serial) {
        problem(at_offset(offset) + ": object serial " + std::to_string(serial) + " outside 1.." +
                std::to_string(s.next_serial - 1));
      } else if (!serials.insert(serial).second) {
        problem(at_offset(offset) + ": object serial " + std::to_string(serial) + " used twice");
      }
    }
  }

  // Every name-table entry a named block, every named block found by its name.
  if (has_table) {
    const auto* table = at<NameTable>(s.name_table + kBlockHeaderBytes);
    std::uint64_t live = 0;
    for (std::uint64_t i = 0; i < table->capacity; ++i) {
      const std::uint64_t slot = table->slots()[i];
      if (slot == kEmptySlot || slot == kTombstone) continue;
      ++live;
      if (!is_block(slot)) {
        problem("name table entry " + std::to_string(i) + " points into the middle of a block");
      } else if (block(slot)->state() == kPending) {
        --live;  // counted with the pending objects above
      } else if (block(slot)->state() != kNamed) {
        problem("name table entry " + std::to_string(i) +
                " points at a block that is not a "
                "named object");
      }
    }
    if (live != table->count || live != summary.named) {
      repair("name table holds " + std::to_string(live) + " names for " +
             std::to_string(summary.named) + " objects: to be rebuilt");
    }
    if (table->count * 2 > table->capacity) repair("name table overfull: to be rebuilt");
    if (report.ok()) {
      for (std::uint64_t offset : starts) {
        if (block(offset)->state() != kNamed) continue;
        const NamedRecord* r = record(offset);
        if (lookup(std::string_view(r->name(), r->name_length)) != offset) {
          repair("object '" + std::string(r->name(), r->name_length) +
                 "' cannot be found by its name: name table to be rebuilt");
        }
      }
    }
  }
  return report;
}

}  // namespace sheaf
