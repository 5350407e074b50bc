// heap.cpp: the public Heap class, on top of Heap::Impl.
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <new>
#include <optional>
#include <stdexcept>
#include <thread>

#include "impl.hpp"
#include "registry.hpp"
#include "sheaf/containers.hpp"

namespace sheaf {
namespace {

using namespace format;

// The block an allocate()d pointer belongs to, after checking it is one.
// `or_held`: a held block (Heap::allocate_held) is accepted too; its tag
// counts its holds, so only a used block's tag is checked.
std::uint64_t used_block_of(const Heap::Impl& impl, const void* p, const char* what,
                            bool or_held = false) {
  const std::uint64_t offset = impl.offset_of(p);
  const std::uint64_t block = offset - kBlockHeaderBytes;
  if (!impl.base || p < impl.base || offset < kHeaderBytes + kBlockHeaderBytes ||
      offset >= impl.heap_size() || offset % kAlign != 0) {
    throw Error(Errc::kInvalidArgument,
                "heap " + impl.path + ": " + what + ": not a block allocated in this heap");
  }
  const std::uint64_t state = impl.block(block)->state();
  if (or_held && state == kHeld) return block;
  if (state != kUsed ||
      (impl.has_feature(kFeatureUsedTags) && impl.block(block)->tag != impl.used_tag(block))) {
    throw Error(Errc::kInvalidArgument,
                "heap " + impl.path + ": " + what + ": not a block allocated in this heap");
  }
  return block;
}

// `r`: the block's record as checked_record() copied it.
void check_type(const Heap::Impl& impl, std::uint64_t block, const NamedRecord& r,
                const TypeTag& type) {
  const char* names = impl.record_names(block);
  if (r.type_length == type.name.size() &&
      same_bytes(names + r.name_length, type.name.data(), type.name.size()) &&
      r.element_size == type.size) {
    return;
  }
  throw Error(Errc::kTypeMismatch,
              "heap " + impl.path + ": object '" + std::string(names, r.name_length) + "' is a " +
                  std::string(names + r.name_length, r.type_length) + " (" +
                  std::to_string(r.element_size) + " bytes), not a " + std::string(type.name) +
                  " (" + std::to_string(type.size) + " bytes)");
}

// Under the lock, where nobody rewrites the record while we read it.
void check_type(const Heap::Impl& impl, std::uint64_t block, const TypeTag& type) {
  check_type(impl, block, *impl.record(block), type);
}

void check_name(const Heap::Impl& impl, std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) {
    throw Error(Errc::kInvalidArgument, "heap " + impl.path + ": an object name must have 1 to " +
                                            std::to_string(kMaxNameLength) + " bytes");
  }
}

}  // namespace

const char* lock_mode_name(LockMode mode) noexcept {
  switch (mode) {
    case LockMode::kAuto:
      return "auto";
    case LockMode::kLocal:
      return "local";
    case LockMode::kNetwork:
      return "network";
  }
  return "unknown";
}

Heap::Impl::~Impl() {
  if (base != nullptr) munmap(base, reserve);
  if (lock_page != nullptr) munmap(lock_page, kPageSize);
  if (fd >= 0) ::close(fd);
  if (direct_fd >= 0) ::close(direct_fd);
}

Heap::Heap(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Heap::Heap(Heap&&) noexcept = default;
Heap& Heap::operator=(Heap&& other) noexcept {
  if (this != &other) {
    (void)close();
    impl_ = std::move(other.impl_);
  }
  return *this;
}
Heap::~Heap() {
  (void)close();
}

namespace {

[[noreturn, gnu::noinline]] void throw_not_live(const Heap::Impl* impl) {
  if (impl == nullptr) {
    throw Error(Errc::kInvalidArgument, "heap: used after close() or after being moved from");
  }
  throw Error(
      Errc::kInvalidArgument,
      "heap " + impl->path + ": opened before this process was forked; open it again in the child");
}

}  // namespace

Heap::Impl& Heap::live() const {
  if (!impl_ || impl_->forked()) [[unlikely]]
    throw_not_live(impl_.get());
  return *impl_;
}

Result<Heap> Heap::create(const std::string& path, const CreateOptions& options) {
  try {
    Impl::create_file(path, options);
  } catch (const Error& e) {
    return e;
  }
  return open(path, options.open);
}

Result<Heap> Heap::open(const std::string& path, const OpenOptions& options) {
  try {
    std::shared_ptr<Impl> impl(Impl::open_file(path, options));
    registry::add(impl);
    return Heap(std::move(impl));
  } catch (const Error& e) {
    return e;
  }
}

Result<void> Heap::close() noexcept {
  if (!impl_) return {};
  registry::remove(impl_.get());
  const int error = impl_->close_file();
  const std::string path = impl_->path;
  impl_.reset();
  if (error != 0) {
    return Error::from_errno(error, "heap " + path + ": closing: cannot write to the server");
  }
  return {};
}

Heap::LockScope::LockScope(Impl& impl, bool exclusive, std::chrono::nanoseconds timeout)
    : impl_(&impl) {
  impl.acquire(exclusive, timeout.count());
}

int Heap::LockScope::release() noexcept {
  if (impl_ == nullptr) return 0;
  const int error = impl_->release();
  impl_ = nullptr;
  return error;
}

Heap::LockScope::~LockScope() noexcept(false) {
  if (impl_ == nullptr) return;
  const std::string& path = impl_->path;
  const int error = release();
  if (error != 0 && std::uncaught_exceptions() == 0) {
    throw Error::from_errno(error, "heap " + path + ": cannot write to the server");
  }
}

namespace {

// The allocation paths shared by Heap and the in-heap Allocator: small
// blocks through this thread's cache where there is one, the rest under the lock.
// Inside a locked section the caches are not used: the section already pays
// for the lock, and so caches_mutex is never taken under the heap lock.
bool use_cache(const Heap::Impl& impl) {
  return impl.thread_caching() && !impl.held_by_this_thread();
}

// Out of line: the callers' fast paths (the thread caches) stay small.
[[gnu::noinline]] void* allocate_locked(Heap::Impl& impl, std::size_t bytes,
                                        std::size_t alignment) {
  ExclusiveSection lock(impl);
  Heap::Impl::Operation op(impl);
  return op.commit(impl.at(impl.allocate_block(bytes, alignment) + kBlockHeaderBytes));
}

[[gnu::noinline]] void deallocate_locked(Heap::Impl& impl, void* p) {
  ExclusiveSection lock(impl);
  Heap::Impl::Operation op(impl);
  impl.free_block(used_block_of(impl, p, "deallocate"));
  op.commit();
}

void* allocate_in(Heap::Impl& impl, std::size_t bytes, std::size_t alignment) {
  if (use_cache(impl) && alignment <= kAlign && bytes <= kCacheMax - kBlockHeaderBytes) {
    return impl.at(impl.cached_allocate(Heap::Impl::block_size_for(bytes)) + kBlockHeaderBytes);
  }
  return allocate_locked(impl, bytes, alignment);
}

void deallocate_in(Heap::Impl& impl, void* p) {
  if (use_cache(impl)) {
    const std::uint64_t block = used_block_of(impl, p, "deallocate");
    if (impl.block(block)->size() <= kCacheMax) return impl.cached_free(block);
  }
  deallocate_locked(impl, p);
}

// Runs `read`, which only reads, so that it sees the heap between two
// exclusive sections, never in the middle of one. Three ways:
//   - under the lock, as a reader;
//   - without it, on a heap opened read-only that cannot be locked
//     (Impl::lockless), again and again until no exclusive section began or
//     ended while it ran (a seqlock: every section sets State::lock_holder
//     first and bumps State::generation last);
//   - `optimistic` (lookups by name, in local mode): once or twice the same
//     way, then under the lock. A reader then costs two loads instead of a
//     mutex's lock and unlock, and readers do not exclude one another. (Not
//     under ThreadSanitizer, which rightly calls the unlocked reads races.)
// Reads meeting a half-changed heap throw kCorrupted from their bounds
// checks, which here only means "try again". Every offset they follow is
// checked to lie inside the heap, so they never leave the mapping.
template <class Read>
auto read_consistently(Heap::Impl& impl, Read&& read, bool optimistic = false) -> decltype(read()) {
#if defined(__SANITIZE_THREAD__)
  optimistic = false;
#endif
  const bool unlocked =
      impl.lockless || (optimistic && impl.mode == LockMode::kLocal && !impl.held_by_this_thread());
  if (!unlocked) {
    SharedSection lock(impl);
    return read();
  }
  const int attempts = impl.lockless ? 2000 : 2;  // lockless: about 2 s of naps
  const State& s = impl.state();
  const auto generation = [&] { return __atomic_load_n(&s.generation, __ATOMIC_ACQUIRE); };
  const auto holder = [&] { return __atomic_load_n(&s.lock_holder, __ATOMIC_ACQUIRE); };
  std::string last;
  for (int attempt = 0; attempt < attempts; ++attempt) {
    if (attempt >= 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const std::uint64_t before = generation();
    if (holder() != 0) {
      last = "a process is inside the lock (or died there and awaits a writer's repair)";
      continue;
    }
    // The reads happen before the second look at the generation.
    const auto unchanged = [&] {
#if !defined(__SANITIZE_THREAD__)
      std::atomic_thread_fence(std::memory_order_acquire);
#endif
      return holder() == 0 && generation() == before;
    };
    try {
      auto result = read();
      if (unchanged()) return result;
      last = "writers changed it while it was read";
    } catch (const Error& e) {
      // An answer (not found, say) counts only if no writer ran meanwhile.
      if (e.code() != Errc::kCorrupted && unchanged()) throw;
      last = e.message();
    } catch (const std::length_error& e) {  // a size read torn: try again
      if (unchanged()) throw;
      last = e.what();
    } catch (const std::bad_alloc& e) {
      if (unchanged()) throw;
      last = e.what();
    }
  }
  if (!impl.lockless) {  // optimistic: writers are busy; wait for them as a reader
    SharedSection lock(impl);
    return read();
  }
  throw Error(Errc::kBusy, "heap " + impl.path +
                               ": no consistent read without the lock (read-only, local mode) "
                               "in 2 s: " +
                               last);
}

// The alignment a block's payload has: its offset's lowest set bit (the
// mapping is page-aligned), up to a page. reallocate() keeps at least it.
std::uint64_t alignment_of(std::uint64_t payload_offset) {
  return std::min<std::uint64_t>(kPageSize, payload_offset & (~payload_offset + 1));
}

}  // namespace

void* Heap::allocate(std::size_t bytes, std::size_t alignment) {
  return allocate_in(live(), bytes, alignment);
}

void Heap::deallocate(void* p) {
  Impl& impl = live();
  if (p == nullptr) return;
  deallocate_in(impl, p);
}

void* Heap::reallocate(void* p, std::size_t bytes) {
  Impl& impl = live();
  if (p == nullptr) return allocate(bytes);
  ExclusiveSection lock(impl);
  Impl::Operation op(impl);
  const std::uint64_t block = used_block_of(impl, p, "reallocate");
  if (impl.resize_in_place(block, bytes)) return op.commit(p);
  const std::uint64_t old_bytes = impl.block(block)->size() - kBlockHeaderBytes;
  const std::uint64_t alignment = std::max(kAlign, alignment_of(block + kBlockHeaderBytes));
  const std::uint64_t fresh = impl.allocate_block(bytes, alignment);
  void* moved = impl.at(fresh + kBlockHeaderBytes);
  std::memcpy(moved, p, std::min<std::uint64_t>(old_bytes, bytes));
  impl.free_block(block);
  return op.commit(moved);
}

std::size_t Heap::usable_size(const void* p) const {
  Impl& impl = live();
  SharedSection lock(impl);
  return impl.block(used_block_of(impl, p, "usable_size", true))->size() - kBlockHeaderBytes;
}

void* Heap::construct_named(std::string_view name, const TypeTag& type, std::size_t count,
                            bool or_find, detail::InitFn init, void* context) {
  Impl& impl = live();
  check_name(impl, name);
  if (type.name.size() > kMaxTypeLength || type.alignment > kPageSize) {
    throw Error(Errc::kInvalidArgument, "heap " + impl.path + ": type " + std::string(type.name) +
                                            " cannot be stored by name");
  }
  if (type.size != 0 && count > impl.growth_limit() / type.size) {
    throw Error(Errc::kOutOfSpace, "heap " + impl.path + ": " + std::to_string(count) + " " +
                                       std::string(type.name) + " objects do not fit");
  }
  const std::uint64_t name_hash = hash_name(name);
  // Before the lock: finding the cache may take caches_mutex. (Only a
  // destroy makes one: a thread that only constructs has nothing to keep.)
  ThreadCache* cache = use_cache(impl) ? impl.thread_cache(false) : nullptr;
  ExclusiveSection lock(impl);
  if (std::uint64_t existing = impl.lookup_exclusive(name, name_hash); existing != 0) {
    if (!or_find) {
      throw Error(Errc::kAlreadyExists,
                  "heap " + impl.path + ": an object named '" + std::string(name) + "' exists");
    }
    check_type(impl, existing, type);
    return impl.at(impl.record(existing)->object_offset);
  }

  // One operation, the constructor and what it allocates included: a death
  // anywhere in it undoes the whole construct (recovery.cpp).
  Impl::Operation op(impl);
  const std::uint64_t alignment = std::max<std::uint64_t>(kAlign, type.alignment);
  const std::uint64_t head = sizeof(NamedRecord) + name.size() + type.name.size();
  const std::uint64_t bytes = std::uint64_t{type.size} * count;
  const std::uint64_t payload = align_up(head, kAlign) + (alignment - kAlign) + bytes;
  // A block a destroy left in this thread's cache, else one from the bins.
  std::uint64_t block =
      cache == nullptr ? 0 : impl.take_cached_for_named(*cache, Impl::block_size_for(payload));
  const bool from_cache = block != 0;
  if (!from_cache) block = impl.allocate_block(payload, kAlign, kPending);
  // If the object cannot be finished: the block goes back where it came from.
  const auto give_back_block = [&]() REQUIRES(impl.heap_lock) {
    if (!from_cache || !impl.keep_in_cache(*cache, block, false)) impl.free_block(block);
  };
  // Pending blocks carry their serial too: a serial is never reused, even
  // when the object is never finished. Not saved: the tag of a block this
  // operation took means nothing once undone (and one from the cache was
  // saved as it left it).
  publish(impl.block(block)->tag,
          impl.has_feature(kFeatureObjectSerials) ? impl.take_serial() : std::uint64_t{0});
  NamedRecord* r = impl.record(block);
  r->name_hash = name_hash;
  r->element_size = type.size;
  r->count = count;
  r->name_length = static_cast<std::uint32_t>(name.size());
  r->type_length = static_cast<std::uint32_t>(type.name.size());
  r->element_alignment = static_cast<std::uint32_t>(alignment);
  r->reserved = 0;
  std::memcpy(const_cast<char*>(r->name()), name.data(), name.size());
  std::memcpy(const_cast<char*>(r->type()), type.name.data(), type.name.size());
  r->object_offset = align_up(block + kBlockHeaderBytes + head, alignment);
  try {
    impl.insert_name(block);  // may need a bigger name table, and so may run out of space
  } catch (...) {
    give_back_block();
    throw;
  }
  impl.store_counter(impl.state().named_count, impl.state().named_count + 1);

  void* object = impl.at(r->object_offset);
  try {
    init(object, count, context);
  } catch (...) {
    if (impl.forked()) throw;  // a child the constructor forked: the operation is the parent's
    impl.remove_name(block);
    impl.store_counter(impl.state().named_count, impl.state().named_count - 1);
    give_back_block();
    throw;
  }
  if (impl.forked()) return object;  // (as above) the parent finishes its construct
  BlockHeader* header = impl.block(block);
  impl.store(header->size_and_state, header->size() | kNamed);
  return op.commit(object);
}

void* Heap::find_named(std::string_view name, const TypeTag& type, std::size_t* count) const {
  Impl& impl = live();
  const std::uint64_t hash = hash_name(name);
  const auto [object, found] = read_consistently(
      impl,
      [&]() -> std::pair<void*, std::size_t> {
        const std::uint64_t block = impl.lookup(name, hash);
        // A pending object's constructor has not returned (it may be the caller).
        if (block == 0 || impl.block(block)->state() != kNamed) return {nullptr, 0};
        // A copy, checked before it is followed, for a reader without the
        // lock that met a record being rewritten.
        const NamedRecord r = impl.checked_record(block);
        check_type(impl, block, r, type);
        return {impl.at(r.object_offset), r.count};
      },
      true);
  *count = found;
  return object;
}

bool Heap::destroy_named(std::string_view name, const TypeTag& type, detail::DestroyFn destroy) {
  Impl& impl = live();
  // Before the lock: making the cache takes caches_mutex, then the lock.
  ThreadCache* cache = use_cache(impl) ? impl.thread_cache() : nullptr;
  ExclusiveSection lock(impl);
  const std::uint64_t block = impl.lookup_exclusive(name);
  if (block == 0) return false;
  check_type(impl, block, type);
  const NamedRecord* r = impl.record(block);
  // The destructor frees what the object owns, each free an operation of its
  // own; then the name and the block go in one.
  destroy(impl.at(r->object_offset), r->count);
  if (impl.forked()) return true;  // a child the destructor forked: the parent destroys it
  Impl::Operation op(impl);
  impl.remove_name(block);
  impl.store_counter(impl.state().named_count, impl.state().named_count - 1);
  // Kept in this thread's cache if it has room, for the next construct.
  if (cache == nullptr || !impl.keep_in_cache(*cache, block, true)) impl.free_block(block);
  return op.commit(true);
}

bool Heap::erase(std::string_view name) {
  Impl& impl = live();
  ExclusiveSection lock(impl);
  const std::uint64_t block = impl.lookup_exclusive(name);
  if (block == 0) return false;
  Impl::Operation op(impl);
  impl.remove_name(block);
  impl.store_counter(impl.state().named_count, impl.state().named_count - 1);
  impl.free_block(block);
  return op.commit(true);
}

std::optional<ObjectInfo> Heap::object(std::string_view name) const {
  Impl& impl = live();
  return read_consistently(
      impl,
      [&]() -> std::optional<ObjectInfo> {
        const std::uint64_t block = impl.lookup(name);
        if (block == 0) return std::nullopt;
        return impl.describe(block);
      },
      true);
}

std::vector<ObjectInfo> Heap::objects() const {
  Impl& impl = live();
  return read_consistently(
      impl,
      [&] {
        std::vector<ObjectInfo> found;
        std::uint64_t capacity = 0;  // as checked: a writer may rewrite the table's
        const NameTable* table = impl.name_table(&capacity);
        if (table == nullptr) return found;
        found.reserve(std::min<std::uint64_t>(__atomic_load_n(&table->count, __ATOMIC_RELAXED),
                                              capacity / 2));
        for (std::uint64_t i = 0; i < capacity; ++i) {
          const std::uint64_t slot = __atomic_load_n(&table->slots()[i], __ATOMIC_RELAXED);
          if (slot == kEmptySlot || slot == kTombstone) continue;
          // A constructor still running: not an object yet.
          impl.require_record_inside(slot, 0);
          if (impl.block(slot)->state() != kNamed) continue;
          found.push_back(impl.describe(slot));
        }
        return found;
      },
      true);
}

std::vector<std::byte> Heap::copy_object(std::string_view name) const {
  Impl& impl = live();
  return read_consistently(
      impl,
      [&] {
        const std::uint64_t block = impl.lookup(name);
        if (block == 0) {
          throw Error(Errc::kNotFound,
                      "heap " + impl.path + ": no object named '" + std::string(name) + "'");
        }
        const ObjectInfo info = impl.describe(block);  // checks the bytes lie inside the block
        const auto* first = impl.at<const std::byte>(info.offset);
        return std::vector<std::byte>(first, first + info.size);
      },
      true);
}

std::span<const std::byte> Heap::object_bytes(std::string_view name) const {
  Impl& impl = live();
  SharedSection lock(impl);
  const std::uint64_t block = impl.lookup(name);
  if (block == 0) {
    throw Error(Errc::kNotFound,
                "heap " + impl.path + ": no object named '" + std::string(name) + "'");
  }
  const NamedRecord* r = impl.record(block);
  return {impl.at<const std::byte>(r->object_offset), r->element_size * r->count};
}

std::uint64_t Heap::offset_of(const void* p) const {
  Impl& impl = live();
  if (!contains(p)) {
    throw Error(Errc::kInvalidArgument, "heap " + impl.path + ": pointer outside the heap");
  }
  return impl.offset_of(p);
}

void* Heap::pointer_at(std::uint64_t offset) const {
  Impl& impl = live();
  if (impl.beyond_mapping(offset + 1)) impl.throw_outgrown("an address there");
  if (offset < kHeaderBytes || offset >= impl.heap_size()) {
    throw Error(Errc::kInvalidArgument, "heap " + impl.path + ": offset " + std::to_string(offset) +
                                            " is outside the heap");
  }
  return impl.at(offset);
}

void* Heap::base() const noexcept {
  return impl_ ? impl_->base : nullptr;
}

bool Heap::contains(const void* p) const noexcept {
  if (!impl_) return false;
  const auto* byte = static_cast<const std::uint8_t*>(p);
  return byte >= impl_->base + kHeaderBytes && byte < impl_->base + impl_->heap_size();
}

std::uint64_t Heap::generation() const {
  Impl& impl = live();
  constexpr std::uint64_t kAt = offsetof(Header, state) + offsetof(State, generation);
  static_assert(kAt + sizeof(std::uint64_t) <= kPageSize);
  if (impl.mode == LockMode::kLocal)
    return __atomic_load_n(&impl.state().generation, __ATOMIC_ACQUIRE);
  // Network mode: our mapping may be stale outside the lock; ask the server.
  const auto page = impl.read_from_server(kPageSize);
  std::uint64_t value = 0;
  std::memcpy(&value, page.get() + kAt, sizeof(value));
  return value;
}

Heap::HeldBlock Heap::held_block(const void* p) const {
  Impl& impl = live();
  // Without the lock when it can (a receiver checks each reference it gets:
  // the lock would bounce between sender and receiver once more per message).
  return read_consistently(
      impl, [&] { return impl.held_block(p); }, true);
}

HeapInfo Heap::info() const {
  Impl& impl = live();
  return read_consistently(impl, [&] { return impl.info(); });
}

HeapInfo Heap::Impl::info() const {
  const Impl& impl = *this;
  const State& s = impl.state();
  const Identity& id = impl.header()->identity;
  HeapInfo info;
  info.path = impl.path;
  info.uuid = uuid_text(id.uuid);
  info.format_version = id.version;
  if (impl.has_feature(kFeatureObjectSerials)) info.features.push_back("object-serials");
  if (impl.has_feature(kFeatureCacheLedgers)) info.features.push_back("cache-ledgers");
  if (impl.has_feature(kFeatureHolds)) info.features.push_back("holds");
  if (impl.has_feature(kFeatureUsedTags)) info.features.push_back("used-tags");
  if (impl.has_feature(kFeatureSharedReaders)) info.features.push_back("shared-readers");
  if (impl.has_feature(kFeatureHeldSerials)) info.features.push_back("held-serials");
  info.page_size = id.page_size;
  info.size = s.size;
  info.used = s.used_bytes;
  info.free = s.free_bytes;
  info.largest_free = impl.largest_free();
  info.objects = s.named_count;
  info.generation = s.generation;
  info.recoveries = s.recoveries;
  info.walked_recoveries = s.walked_recoveries;
  info.max_size = impl.header()->identity.max_size;
  info.growth_limit = impl.growth_limit();
  info.sessions = impl.live_sessions();
  info.mode = impl.mode;
  return info;
}

Result<bool> Heap::upgrade() {
  try {
    Impl& impl = live();
    ExclusiveSection lock(impl);
    const bool changed = impl.upgrade();
    if (const int error = lock.release(); error != 0) {
      throw Error::from_errno(error, "heap " + impl.path + ": cannot write to the server");
    }
    return changed;
  } catch (const Error& e) {
    return e;
  }
}

CheckReport Heap::check() const {
  Impl& impl = live();
  return read_consistently(impl, [&] { return impl.check(true); });
}

const std::string& Heap::path() const noexcept {
  static const std::string closed;
  return impl_ ? impl_->path : closed;
}

LockMode Heap::mode() const noexcept {
  return impl_ ? impl_->mode : LockMode::kAuto;
}

std::string Heap::Impl::uuid_text(const std::uint8_t (&u)[16]) {
  char text[37];
  std::snprintf(text, sizeof(text),
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
                u[15]);
  return text;
}

std::vector<OpenHeap> open_heaps() {
  std::vector<OpenHeap> found;
  for (const std::shared_ptr<Heap::Impl>& impl : registry::all()) {
    found.push_back(OpenHeap{impl->path, Heap::Impl::uuid_text(impl->header()->identity.uuid),
                             impl->mode, impl->read_only, impl->heap_size(), impl->base});
  }
  return found;
}

namespace detail {

void* allocate_at_base(const void* base, std::size_t bytes, std::size_t alignment) {
  return allocate_in(registry::at_base(base), bytes, alignment);
}

void deallocate_at_base(const void* base, void* p) {
  deallocate_in(registry::at_base(base), p);
}

}  // namespace detail
}  // namespace sheaf
