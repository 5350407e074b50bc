// names.cpp: named objects and the table that finds them.
//
// A named object is one block: its header, a NamedRecord (hash, sizes, where
// the object starts), the name's bytes, the type name's bytes, padding, then
// the object. The record is the truth; the name table (open addressing,
// linear probing, at most half full, no tombstones) only finds records fast, and recovery
// rebuilds it from the records it walks over.
#include <algorithm>
#include <bit>
#include <cstring>

#include "impl.hpp"

namespace sheaf {
namespace {

using namespace format;

NameTable* table_at(const Heap::Impl& impl, std::uint64_t block_offset) {
  return impl.at<NameTable>(block_offset + kBlockHeaderBytes);
}

}  // namespace

// The name table, or nullptr when there is none. Throws kCorrupted when
// State points it outside the heap: readers must never follow an offset out
// of the file (a read-only reader without the lock can meet a half-made
// table; heap.cpp retries it). Inline into the lookups; the throws are not.
[[gnu::always_inline]] inline const NameTable* Heap::Impl::checked_name_table(
    std::uint64_t* checked_capacity) const {
  const State& s = state();
  const std::uint64_t at = __atomic_load_n(&s.name_table, __ATOMIC_ACQUIRE);
  if (at == 0) return nullptr;
  const std::uint64_t size = heap_size();
  const std::uint64_t head = at + kBlockHeaderBytes + sizeof(NameTable);
  if (at < kHeaderBytes || at > size || head > size) [[unlikely]] {
    refuse_name_table(at, true);
  }
  const NameTable* table = table_at(*this, at);
  const std::uint64_t capacity = __atomic_load_n(&table->capacity, __ATOMIC_RELAXED);
  if (capacity == 0 || (capacity & (capacity - 1)) != 0 || capacity > (size - head) / 8)
      [[unlikely]] {
    refuse_name_table(at, false, capacity);
  }
  *checked_capacity = capacity;
  return table;
}

const NameTable* Heap::Impl::name_table(std::uint64_t* checked_capacity) const {
  std::uint64_t capacity = 0;
  const NameTable* table = checked_name_table(&capacity);
  if (checked_capacity != nullptr) *checked_capacity = capacity;
  return table;
}

void Heap::Impl::refuse_name_table(std::uint64_t at, bool outside, std::uint64_t capacity) const {
  const std::uint64_t head = at + kBlockHeaderBytes + sizeof(NameTable);
  if (outside) {
    if (at >= kHeaderBytes && beyond_mapping(head)) throw_outgrown("finding names");
    throw Error(Errc::kCorrupted, "heap " + path + ": name table outside the heap");
  }
  if (capacity != 0 && beyond_mapping(head + capacity * 8)) throw_outgrown("finding names");
  throw Error(Errc::kCorrupted, "heap " + path + ": name table malformed");
}

// Why a record at `slot` of `need` bytes is unreadable: past this process's
// mapping (the heap grew beyond it), or outside the heap. (Checked without
// overflow: a reader without the lock may meet any value.)
void Heap::Impl::refuse_record_at(std::uint64_t slot, std::uint64_t need) const {
  const std::uint64_t full = full_size();
  if (slot < full && full - slot >= need && beyond_mapping(slot + need)) {
    throw_outgrown("an object there");
  }
  throw Error(Errc::kCorrupted, "heap " + path + ": name table entry outside the heap");
}

// Inline into both lookups (a call costs a third of a probe): each probes on
// every find, construct and destroy.
[[gnu::always_inline]] inline std::uint64_t Heap::Impl::probe(const NameTable& table,
                                                              std::uint64_t capacity,
                                                              std::string_view name,
                                                              std::uint64_t hash) const {
  const std::uint64_t mask = capacity - 1;
  for (std::uint64_t i = hash & mask, probes = 0; probes < capacity; i = (i + 1) & mask, ++probes) {
    const std::uint64_t slot = __atomic_load_n(&table.slots()[i], __ATOMIC_RELAXED);
    if (slot == kEmptySlot) return 0;
    if (slot == kTombstone) continue;
    require_record_inside(slot, name.size());
    const NamedRecord* found = record(slot);
    if (found->name_hash == hash && found->name_length == name.size() &&
        same_bytes(found->name(), name.data(), name.size())) {
      return slot;
    }
  }
  return 0;
}

std::uint64_t Heap::Impl::lookup(std::string_view name, std::uint64_t hash) const {
  std::uint64_t capacity = 0;
  const NameTable* table = checked_name_table(&capacity);
  return table == nullptr ? 0 : probe(*table, capacity, name, hash);
}

// Writers are serialised by the lock, and the heap never shrinks: a table
// name_table() found sound stays sound while it keeps its place and its
// capacity, so a writer checks each table once, not at every lookup.
std::uint64_t Heap::Impl::lookup_exclusive(std::string_view name, std::uint64_t hash) {
  const std::uint64_t at = state().name_table;
  const NameTable* table = table_at(*this, at);
  if (at == 0 || at != checked_table_at || table->capacity != checked_table_capacity) {
    std::uint64_t capacity = 0;
    table = checked_name_table(&capacity);
    if (table == nullptr) return 0;
    checked_table_at = at;
    checked_table_capacity = capacity;
  }
  return probe(*table, checked_table_capacity, name, hash);
}

void Heap::Impl::build_name_table(std::uint64_t entries) {
  State& s = state();
  const std::uint64_t capacity = std::max<std::uint64_t>(64, std::bit_ceil(entries * 2 + 2));
  const std::uint64_t fresh =
      allocate_block(sizeof(NameTable) + capacity * sizeof(std::uint64_t), kAlign, kIndex);
  NameTable* table = table_at(*this, fresh);
  table->capacity = capacity;
  table->count = 0;
  table->tombstones = 0;
  table->reserved = 0;
  std::fill_n(table->slots(), capacity, kEmptySlot);
  const std::uint64_t old = s.name_table;
  if (old != 0) {
    const NameTable* previous = table_at(*this, old);
    for (std::uint64_t i = 0; i < previous->capacity; ++i) {
      const std::uint64_t slot = previous->slots()[i];
      if (slot == kEmptySlot || slot == kTombstone) continue;
      const std::uint64_t mask = capacity - 1;
      std::uint64_t at_index = record(slot)->name_hash & mask;
      while (table->slots()[at_index] != kEmptySlot) at_index = (at_index + 1) & mask;
      table->slots()[at_index] = slot;
      ++table->count;
    }
  }
  store(s.name_table, fresh);  // the new table is whole before it is reachable
  if (old != 0) free_block(old);
}

void Heap::Impl::insert_name(std::uint64_t block_offset) {
  State& s = state();
  if (s.name_table == 0) {
    build_name_table(1);
  } else {
    const NameTable* table = table_at(*this, s.name_table);
    if ((table->count + table->tombstones + 1) * 2 > table->capacity) {
      build_name_table(table->count + 1);
    }
  }
  NameTable* table = table_at(*this, s.name_table);
  const std::uint64_t mask = table->capacity - 1;
  std::uint64_t i = record(block_offset)->name_hash & mask;
  while (table->slots()[i] != kEmptySlot && table->slots()[i] != kTombstone) i = (i + 1) & mask;
  if (table->slots()[i] == kTombstone) store(table->tombstones, table->tombstones - 1);
  store(table->slots()[i], block_offset);
  store(table->count, table->count + 1);
}

// Backward-shift deletion (Knuth's Algorithm R): the entries after the
// removed one that probed past its slot move back, so the table keeps no
// tombstone for it and a lookup that misses stops at the first empty slot.
// Tables written by older versions may hold tombstones; they stay where they
// are (a tombstone never moves, and a probe steps over it).
void Heap::Impl::remove_name(std::uint64_t block_offset) {
  NameTable* table = table_at(*this, state().name_table);
  std::uint64_t* slots = table->slots();
  const std::uint64_t mask = table->capacity - 1;
  std::uint64_t hole = table->capacity;  // not found yet
  for (std::uint64_t i = record(block_offset)->name_hash & mask, probes = 0;
       probes < table->capacity && slots[i] != kEmptySlot; i = (i + 1) & mask, ++probes) {
    if (slots[i] == block_offset) {
      hole = i;
      break;
    }
  }
  if (hole == table->capacity) return;
  store(table->count, table->count - 1);
  // Each entry from the hole to the next empty slot may fill it if its home
  // slot does not lie cyclically in (hole, here]; the hole then moves to here.
  for (std::uint64_t here = (hole + 1) & mask, probes = 0;
       probes < table->capacity && slots[here] != kEmptySlot; here = (here + 1) & mask, ++probes) {
    const std::uint64_t entry = slots[here];
    if (entry == kTombstone) continue;
    const std::uint64_t home = record(entry)->name_hash & mask;
    const bool stays = ((here - home) & mask) < ((here - hole) & mask);
    if (stays) continue;
    store(slots[hole], entry);
    hole = here;
  }
  store(slots[hole], kEmptySlot);
}

NamedRecord Heap::Impl::checked_record(std::uint64_t block_offset) const {
  require_record_inside(block_offset, 0);
  const std::uint64_t size = block(block_offset)->size();
  if (beyond_mapping(block_offset + size)) throw_outgrown("an object there");
  if (size > heap_size() - block_offset) {
    throw Error(Errc::kCorrupted, "heap " + path + ": named block runs past the heap's end");
  }
  NamedRecord copy;
  std::memcpy(&copy, record(block_offset), sizeof(copy));
  // Bounds only: the name's hash is check()'s business, not every listing's.
  if (const char* why = record_problem(block_offset, size, false, &copy); why != nullptr) {
    throw Error(Errc::kCorrupted, "heap " + path + ": block at offset " +
                                      std::to_string(block_offset) + ": named record: " + why);
  }
  return copy;
}

ObjectInfo Heap::Impl::describe(std::uint64_t block_offset) const {
  const NamedRecord r = checked_record(block_offset);
  const char* names = record_names(block_offset);
  ObjectInfo info;
  info.name.assign(names, r.name_length);
  info.type.assign(names + r.name_length, r.type_length);
  info.count = r.count;
  info.size = r.element_size * r.count;
  info.offset = r.object_offset;
  info.serial = has_feature(kFeatureObjectSerials) ? block(block_offset)->tag : 0;
  return info;
}

}  // namespace sheaf
