// format.hpp: the heap file's layout on disk. Internal; never in public headers.
//
//   offset 0            kHeaderBytes                                   state.size
//   | Identity | State  | block | block | block | ...                  |
//
// Identity is written once, at creation, and checksummed (xxHash64). State is
// what the heap's lock protects. Blocks tile the rest of the file exactly: each
// starts with a BlockHeader whose size leads to the next one.
//
// THE INVARIANT everything else rests on: the chain of block headers is the
// only source of truth. Free lists, bins, the name table and the counters in
// State are caches that recovery rebuilds from the chain. Every change to the
// chain is ordered so that a process killed between any two instructions
// leaves a walkable chain: a new header is written where the walk cannot yet
// reach it, and then made reachable by one aligned 8-byte store (a split
// shrinks the block in front of it; a merge grows the block in front of it;
// growth extends State::size).
#pragma once

#include <pthread.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace sheaf::format {

inline constexpr char kMagic[8] = {'S', 'H', 'E', 'A', 'F', 'H', 'P', '\0'};
// Version 1: the first format, with no feature words (they were reserved,
// zero). Version 2: version 1 whose three feature words (Identity) say what
// the file uses. A newer Sheaf opens both; one that reads only version 1
// refuses version 2 by its number. From version 2 on, the format evolves by
// feature bits, not by version numbers.
inline constexpr std::uint32_t kVersion = 2;
inline constexpr std::uint32_t kOldestVersion = 1;

// Feature bits, after ext4 and PMDK. An opener that finds a bit it does not
// know in
//   compat_features     opens the heap anyway (the feature asks nothing of it);
//   ro_compat_features  may read but must not write it, so opens it only
//                       read-only (OpenOptions::read_only);
//   incompat_features   refuses to open it.
// A refusal names the unknown bits. `sheaf heap upgrade` (Heap::upgrade)
// turns on every feature this Sheaf knows in an older heap.
enum Feature : std::uint64_t {
  // Every named object carries a creation serial (in its block header's
  // `tag`), never reused in the heap, so an object destroyed and rebuilt at
  // the same offset is told apart. State::next_serial is the next one.
  // An older writer would create objects without serials: ro_compat.
  kFeatureObjectSerials = std::uint64_t{1} << 0,
  // Thread caches list their blocks in ledger blocks (CacheLedger), so a
  // dead session's blocks are found without a walk; allocator operations
  // keep an undo log (State::undo). An older writer would cache blocks
  // without ledgers, which only a walk finds: ro_compat. Without the bit, a
  // dead session is reclaimed by walking, as before.
  kFeatureCacheLedgers = std::uint64_t{1} << 1,
  // Blocks may be kHeld (holds.cpp), a state an older Sheaf cannot read:
  // incompat. (Bits are numbered across the three words, so that each
  // feature has one.)
  kFeatureHolds = std::uint64_t{1} << 2,
  // Every kUsed block's `tag` is its check word (used_tag()), so that
  // deallocate() tells a block it handed out from user bytes that merely
  // look like a block header. An older writer would leave the tags zero,
  // which this Sheaf's deallocate() would then refuse: ro_compat.
  kFeatureUsedTags = std::uint64_t{1} << 3,
  // Readers in local mode count themselves in State::readers instead of
  // taking the mutex, so they do not exclude one another; writers bar new
  // readers and wait for the counted ones (heap_lock.cpp). An older writer
  // would not wait for them: ro_compat.
  kFeatureSharedReaders = std::uint64_t{1} << 4,
  // A kHeld block's `tag` carries its serial (from State::next_serial) above
  // the hold count (hold_count(), held_serial()), so that a reference to a
  // block freed since and reused is told apart (the message layer's
  // HeapRef::serial). An older Sheaf would read the whole tag as the count:
  // incompat. Held blocks of a heap upgraded to it keep serial 0.
  kFeatureHeldSerials = std::uint64_t{1} << 5,
};
inline constexpr std::uint64_t kKnownCompat = 0;
inline constexpr std::uint64_t kKnownRoCompat =
    kFeatureObjectSerials | kFeatureCacheLedgers | kFeatureUsedTags | kFeatureSharedReaders;
inline constexpr std::uint64_t kKnownIncompat = kFeatureHolds | kFeatureHeldSerials;
inline constexpr std::uint32_t kPageSize = 4096;      // recorded; the heap refuses other page sizes
inline constexpr std::uint64_t kHeaderBytes = 16384;  // Identity + State; blocks start here

inline constexpr std::uint64_t kAlign = 16;  // every block and payload
inline constexpr std::uint64_t kBlockHeaderBytes = 16;
inline constexpr std::uint64_t kMinBlock = 32;  // header + a free block's two links
// Blocks up to this size have exact bins (and thread caches): a 1 KiB request,
// 1040 bytes with its header, stays on the fast path.
inline constexpr std::uint64_t kSmallMax = 1040;

// Byte-range (OFD) locks, far beyond any heap's data so they never cover it.
inline constexpr off_t kLockBase = off_t{1} << 60;
inline constexpr off_t kPresenceLock = kLockBase;            // read-held by every open heap
inline constexpr off_t kHeapLock = kLockBase + 4096;         // the heap lock in network mode
inline constexpr off_t kHeapLockLength = 4096;               // page-aligned, page-long
inline constexpr off_t kSessionLockBase = kLockBase + 8192;  // + slot: held by that session
inline constexpr off_t kModeLockBase = kLockBase + 16;  // + LockMode: read-held by every open heap

enum BlockState : std::uint64_t {
  kFree = 0,     // in a bin; payload holds FreeLinks
  kUsed = 1,     // allocate()d
  kNamed = 2,    // payload holds a NamedRecord, then the names, then the object
  kPending = 3,  // a named object whose constructor had not returned; freed by recovery
  kIndex = 4,    // the name table; every one but State::name_table is freed by recovery
  kCached = 5,   // in a thread's cache (thread_cache.cpp); `tag` names its session
  kHeld = 6,     // held by sessions (holds.cpp); `tag` counts the holds
};
inline constexpr std::uint64_t kLastState = kHeld;
inline constexpr std::uint64_t kStateMask = 0xF;

struct BlockHeader {
  std::uint64_t size_and_state;  // size (multiple of 16, header included) | BlockState
  // What the block's state makes it mean:
  //   kCached           the session whose thread cache holds it (thread_cache.cpp);
  //   kHeld             how many holds it has (holds.cpp), at least 1, in the
  //                     low kHoldCountBits; its serial above them
  //                     (kFeatureHeldSerials; 0 in heaps without the feature);
  //   kNamed, kPending  the object's creation serial (kFeatureObjectSerials; 0 in
  //                     heaps without the feature);
  //   kUsed             its check word, used_tag(offset, key) (kFeatureUsedTags);
  //   otherwise         nothing (zero, or left over from a previous state).
  // Written before the block is published in the state that gives it meaning.
  std::uint64_t tag;

  // Read atomically: a thread may flip its own cached block between kCached
  // and kUsed without the heap lock while a walk reads the chain.
  std::uint64_t word() const { return __atomic_load_n(&size_and_state, __ATOMIC_ACQUIRE); }
  std::uint64_t size() const { return word() & ~kStateMask; }
  std::uint64_t state() const { return word() & kStateMask; }
};
static_assert(sizeof(BlockHeader) == kBlockHeaderBytes);

// A kHeld block's tag: the count of its holds below, its serial above.
inline constexpr unsigned kHoldCountBits = 24;
inline constexpr std::uint64_t kMaxHolds = (std::uint64_t{1} << kHoldCountBits) - 1;
inline constexpr std::uint64_t hold_count(std::uint64_t tag) {
  return tag & kMaxHolds;
}
inline constexpr std::uint64_t held_serial(std::uint64_t tag) {
  return tag >> kHoldCountBits;
}

// The check word of a kUsed block at `offset` (kFeatureUsedTags): a mix of
// the offset with the heap's key (its UUID's two halves xored), so that bytes
// that were not written as this block's header match it by chance once in
// 2^64, and a real header copied elsewhere matches nowhere else. The mixer is
// the finalizer of MurmurHash3 (public domain): every input bit moves every
// output bit. Never zero, the tag of blocks written before the feature.
constexpr std::uint64_t used_tag(std::uint64_t offset, std::uint64_t key) {
  std::uint64_t x = offset ^ key;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x | 1;
}

// Payload of a free block: its neighbours in its bin (block offsets, 0 = none).
struct FreeLinks {
  std::uint64_t next;
  std::uint64_t prev;
};

// Payload head of a named (or pending) block. Name bytes follow it, then the
// type name's bytes, then padding up to the object's alignment, then the object.
struct NamedRecord {
  std::uint64_t name_hash;      // XXH3 of the name
  std::uint64_t object_offset;  // from the heap's base
  std::uint64_t element_size;
  std::uint64_t count;
  std::uint32_t name_length;
  std::uint32_t type_length;
  std::uint32_t element_alignment;
  std::uint32_t reserved;
  const char* name() const { return reinterpret_cast<const char*>(this + 1); }
  const char* type() const { return name() + name_length; }
};
static_assert(sizeof(NamedRecord) == 48);

inline constexpr std::uint32_t kMaxNameLength = 4096;
inline constexpr std::uint32_t kMaxTypeLength = 1024;

// Payload of the name table: open addressing, linear probing.
struct NameTable {
  std::uint64_t capacity;  // a power of two
  std::uint64_t count;     // live entries
  std::uint64_t tombstones;
  std::uint64_t reserved;
  // `capacity` slots follow: block offset of a named block, or kEmptySlot / kTombstone.
  std::uint64_t* slots() { return reinterpret_cast<std::uint64_t*>(this + 1); }
  const std::uint64_t* slots() const { return reinterpret_cast<const std::uint64_t*>(this + 1); }
};
inline constexpr std::uint64_t kEmptySlot = 0;
inline constexpr std::uint64_t kTombstone = 1;

// Bins: 64 exact ones for block sizes 32..1040 step 16, then four per power of two.
inline constexpr int kSmallBins = 64;
inline constexpr int kBinCount = kSmallBins + 4 * 38;  // up to 2^48-byte blocks
static_assert(kSmallBins == (kSmallMax - kMinBlock) / kAlign + 1);

// Bin of a free block of `size` bytes (size >= kMinBlock, a multiple of 16).
constexpr int bin_of(std::uint64_t size) {
  if (size <= kSmallMax) return static_cast<int>(size / kAlign) - 2;
  int power = 63 - __builtin_clzll(size);  // >= 10
  int quarter = static_cast<int>((size >> (power - 2)) & 3);
  int bin = kSmallBins + (power - 10) * 4 + quarter;
  return bin < kBinCount ? bin : kBinCount - 1;
}

inline constexpr int kMaxSessions = 128;
// The top bit of State::readers[i]: a writer sleeps on that count (futex).
inline constexpr std::uint32_t kReaderWaiter = std::uint32_t{1} << 31;
inline constexpr int kUndoEntries = 256;

// Thread caches (thread_cache.cpp) hold free blocks up to this size, header
// included, in bins 0..kCacheBins-1: at most kSmallCacheSlots blocks of each
// small size and kLargeCacheSlots of each larger bin.
inline constexpr std::uint64_t kCacheMax = std::uint64_t{1} << 20;
inline constexpr int kCacheBins = bin_of(kCacheMax) + 1;
// A bin keeps at most its depth (64 small, 4 larger) at rest; the one slot
// more holds a block a refill adds before the allocation takes it.
inline constexpr std::uint32_t kSmallCacheSlots = 65;
inline constexpr std::uint32_t kLargeCacheSlots = 5;
constexpr std::uint32_t cache_slots(int bin) {
  return bin < kSmallBins ? kSmallCacheSlots : kLargeCacheSlots;
}
// Index of a bin's first slot in CacheLedger::slots.
constexpr std::uint32_t cache_slot_base(int bin) {
  return bin < kSmallBins ? static_cast<std::uint32_t>(bin) * kSmallCacheSlots
                          : kSmallBins * kSmallCacheSlots +
                                static_cast<std::uint32_t>(bin - kSmallBins) * kLargeCacheSlots;
}
inline constexpr std::uint32_t kCacheLedgerSlots = cache_slot_base(kCacheBins);

// The payload of a ledger block (a kUsed block): the record, in the file, of
// one thread's cache of one heap, so that a session that dies is reclaimed
// by reading its ledgers instead of walking the heap. Only the thread whose
// cache it is writes it, without the lock, in an order that keeps this
// invariant at every instant: every kCached block whose tag is `session` is
// in slots[] (below its bin's count) or is in_flight. in_flight is the block
// moving between the cache and its user; if it says kUsed, the user never
// had it (in_flight is cleared before the block is handed over, and set
// before a freed one is taken). Ledgers of one session are chained through
// `next` from State::session_ledgers[slot]; the chain changes under the lock.
inline constexpr std::uint64_t kLedgerMagic = 0x5245474445444c53;  // "SLDEDGER"
// What every ledger block of a session starts with, whatever its kind.
struct LedgerHead {
  std::uint64_t magic;    // kLedgerMagic or kHoldLedgerMagic
  std::uint64_t session;  // whose
  std::uint64_t next;     // the session's next ledger block, 0 if none
};
struct CacheLedger {
  std::uint64_t magic;      // kLedgerMagic
  std::uint64_t session;    // the session whose thread's cache this is
  std::uint64_t next;       // the session's next ledger block, 0 if none
  std::uint64_t in_flight;  // block offset, 0 if none
  std::uint32_t counts[kCacheBins];
  std::uint64_t slots[kCacheLedgerSlots];  // block offsets, cache_slots(bin) per bin
};
static_assert(offsetof(CacheLedger, magic) == offsetof(LedgerHead, magic) &&
              offsetof(CacheLedger, session) == offsetof(LedgerHead, session) &&
              offsetof(CacheLedger, next) == offsetof(LedgerHead, next));

// The payload of a hold ledger block (a kUsed block): the holds one session
// has (holds.cpp), one entry per hold, so a block held twice is listed
// twice. Written under the lock, by operations (undo-logged), so at every
// instant a kHeld block's `tag` equals the number of entries naming it in all
// hold ledgers. A session has at most one; it grows by being copied into a
// bigger block.
inline constexpr std::uint64_t kHoldLedgerMagic = 0x53444c4f48444c53;  // "SLDHOLDS"
struct HoldLedger {
  std::uint64_t magic;  // kHoldLedgerMagic
  std::uint64_t session;
  std::uint64_t next;
  std::uint64_t capacity;  // entries it has room for
  std::uint64_t count;     // entries in use
  std::uint64_t reserved;
  // `capacity` entries follow: block offsets of held blocks.
  std::uint64_t* entries() { return reinterpret_cast<std::uint64_t*>(this + 1); }
  const std::uint64_t* entries() const { return reinterpret_cast<const std::uint64_t*>(this + 1); }
};
static_assert(offsetof(HoldLedger, next) == offsetof(LedgerHead, next));

struct Session {
  std::uint64_t id;  // 0: the slot is free
  std::uint32_t pid;
  std::uint32_t mode;  // LockMode
  std::uint64_t opened_ns;
  char host[40];
};
static_assert(sizeof(Session) == 64);

struct Identity {
  char magic[8];
  std::uint32_t version;
  std::uint32_t endian;  // kEndianMark as the creating machine stored it
  std::uint32_t page_size;
  std::uint32_t header_bytes;
  std::uint8_t uuid[16];
  std::uint64_t created_ns;
  std::uint64_t max_size;  // 0: no limit but the reservation
  // Version 2 on (zero in version 1): see Feature.
  std::uint64_t compat_features;
  std::uint64_t ro_compat_features;
  std::uint64_t incompat_features;
  std::uint64_t reserved[5];
  std::uint64_t checksum;  // XXH64 of every byte above
};

struct State {
  // Local mode's lock: a robust, process-shared mutex. Reinitialised by the
  // first process to open the heap, since no one else can hold it then.
  alignas(64) pthread_mutex_t mutex;
  // Session id of the process inside an exclusive section; 0 outside. Found
  // non-zero by the next locker, it means the holder died inside: recover.
  alignas(64) std::uint64_t lock_holder;
  std::uint64_t size;  // bytes of the file the blocks tile
  std::uint64_t generation;
  std::uint64_t recoveries;
  std::uint64_t clean;  // 1 when the last process to close it closed it normally
  std::uint64_t next_session_id;
  // Caches, rebuilt by recovery.
  std::uint64_t used_bytes;
  std::uint64_t free_bytes;
  std::uint64_t named_count;
  std::uint64_t name_table;   // block offset of the kIndex block, 0 before the first name
  std::uint64_t small_freed;  // bytes freed into small bins since the last coalescing sweep
  std::uint64_t bin_bitmap[4];
  std::uint64_t bins[kBinCount];
  Session sessions[kMaxSessions];
  // kFeatureObjectSerials: the serial the next named object gets (from 1).
  std::uint64_t next_serial;
  // An Identity being rewritten (Heap::upgrade): the new one is written here
  // whole, then identity_staged is published as 1, then it is copied over
  // Identity and identity_staged is published as 0. An opener that finds
  // identity_staged set finishes the copy, so a kill at any instant leaves
  // the old identity or the new one, never a torn one.
  alignas(64) Identity staged_identity;
  std::uint64_t identity_staged;

  // --- Fast recovery (local mode). Zero in files made before them; an older
  // Sheaf never writes them, which is safe: see the replay rule below. ---

  // The undo log of the allocator operation in flight (recovery.cpp,
  // "Operations"). Each exclusive section makes it its own (undo_owner = the
  // section's lock_holder token, undo_count = undo_overflow = 0); an
  // operation saves each word's old value here before its first store to
  // it, and empties the log when it ends. A process that dies inside an
  // operation leaves the log for the next locker, which puts the words back
  // in reverse order: the heap is then as it was before the operation began.
  // Replay rule: only a log whose undo_owner equals the dead lock_holder is
  // replayed; any other death (an older Sheaf, a log that overflowed) gets
  // the full walk of rebuild().
  alignas(64) std::uint64_t undo_owner;
  std::uint64_t undo_count;     // entries in undo[] that are valid
  std::uint64_t undo_overflow;  // 1: the operation outgrew undo[]; recovery must walk
  struct UndoEntry {
    std::uint64_t offset;  // of the word, from the heap's base
    std::uint64_t old_value;
  } undo[kUndoEntries];
  // The kernel's boot id (folded) when the heap was last opened by a first
  // opener. In local mode a first opener trusts the file (the bins and
  // counters, the undo log, the ledgers) without walking it only if the
  // machine has not restarted since: a restart may have lost pages the
  // kernel had not written back, even after a clean close.
  std::uint64_t boot_hash;
  // Per session slot: block offset of the first of that session's ledger
  // blocks (CacheLedger), 0 if none. Written under the lock.
  std::uint64_t session_ledgers[kMaxSessions];
  // Recoveries (counted in `recoveries` too) that had to walk the heap.
  std::uint64_t walked_recoveries;

  // --- Readers (kFeatureSharedReaders, local mode; heap_lock.cpp) ---
  // Per session slot: how many of that session's threads are inside a
  // shared section. A reader adds itself, then enters only if
  // readers_barred is 0; a writer, holding the mutex, sets readers_barred,
  // then waits until every count below reader_slots is 0 (resetting the
  // counts of dead sessions). Both with sequentially consistent atomics, so
  // one of the two always sees the other. The top bit (kReaderWaiter) says a
  // writer sleeps on the count (futex) and must be woken as it falls; the
  // count is the other 31 bits.
  alignas(64) std::uint32_t readers[kMaxSessions];
  std::uint32_t readers_barred;  // 1 from a writer's mutex until the next reader's (or a death)
  std::uint32_t reader_slots;    // every slot ever registered is below it
};

struct Header {
  Identity identity;
  alignas(64) State state;
};
static_assert(sizeof(Header) <= kHeaderBytes);

}  // namespace sheaf::format
