// sheaf/heap.hpp: a shared heap in a memory-mapped file.
//
// A Heap is a file that any number of processes map at once, on one host or
// on several through a network filesystem. Inside it: a malloc-style allocator
// and named objects, in the spirit of Boost.Interprocess managed segments.
//
//   auto heap = sheaf::Heap::create("/data/h.heap", {.initial_size = 64 << 20}).value();
//   auto* counter = heap.construct<std::int64_t>("counter")(0);
//   heap.exclusive([&] { ++*counter; });          // under the heap's lock
//   std::int64_t* same = heap.find<std::int64_t>("counter");
//
// The contract:
// - Every process may map the heap at a different address. Store offsets or
//   sheaf::offset_ptr (sheaf/containers.hpp) inside the heap, never raw pointers.
// - The heap grows on demand and never moves: the address space for
//   OpenOptions::reserve bytes is reserved at open, and growth extends the
//   file under the mapping. Other processes see the new size at once.
// - All calls are safe from any number of threads and processes at once; each
//   takes the heap's lock. The lock is recursive per thread, so a callback
//   passed to exclusive() may allocate, construct and find.
// - A Heap belongs to the process that opened it. After fork() the child
//   gets a clear Error from every call on the parent's Heap objects (open the
//   heap again in the child); the parent is unaffected.
// - Every call on a closed or moved-from Heap throws Error(kInvalidArgument).
// - A process killed at any instant, even inside the lock, leaves a heap that
//   the next locker repairs before it goes on (see docs/heap.md): every object
//   whose construct() returned is intact, and the allocator is consistent.
//   What a callback of exclusive() was doing to its own data when killed is
//   the caller's to make safe, as with any mutex.
// - On a network filesystem (mode kNetwork) a process sees what other hosts
//   wrote once it takes the lock, and what it wrote is on the server when it
//   releases the lock. Data read or written outside the lock has no guarantee.
#pragma once

#include <sys/types.h>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "sheaf/error.hpp"
#include "sheaf/type_name.hpp"

namespace sheaf {

// How the heap keeps processes coherent. kLocal: one host, a robust mutex
// inside the file. kNetwork: several hosts, byte-range (OFD) locks on the file
// with cache invalidation on acquire and flush on release. kAuto picks by the
// filesystem the file lives on (NFS, CIFS, Ceph, FUSE such as GlusterFS ->
// kNetwork); the environment variable SHEAF_HEAP_MODE=local|network forces it.
enum class LockMode { kAuto, kLocal, kNetwork };

const char* lock_mode_name(LockMode mode) noexcept;

struct OpenOptions {
  // Address space reserved for the heap in this process; the heap cannot grow
  // beyond it while mapped. 0: 64 GiB or the file's size if larger.
  std::uint64_t reserve = 0;
  LockMode mode = LockMode::kAuto;
  // How long any call may wait for the heap's lock before it throws
  // Error(kTimedOut) naming the holder; zero waits for as long as it takes.
  // exclusive_for() sets its own limit for one section.
  std::chrono::milliseconds lock_timeout{0};
  // Open for reading only: nothing in the file is written (no session is
  // registered, nothing is repaired), so it works on a file this process may
  // only read. Calls that change the heap throw kInvalidArgument. Reads take
  // the lock as a reader: a shared byte-range lock in network mode, the
  // heap's mutex in local mode when the file is writable. In local mode on a
  // file it cannot write, no lock can be taken: info(), objects(), object(),
  // copy_object() and check() then read without it and retry until no
  // writer ran meanwhile; the other reads throw kUnsupported.
  bool read_only = false;
  // Repair a heap whose damage no crash of Sheaf's can explain (a rewritten
  // block size, a name table entry into the middle of a block...) by
  // rebuilding it from its block chain, dropping what the damage took. Off,
  // such a heap is refused with kCorrupted, untouched; `sheaf heap check
  // --repair` turns it on. What a crash leaves is always repaired.
  bool repair_damage = false;
  // Walk and verify every block when this process is the first to open the
  // heap, as `sheaf heap check` does, and refuse it (kCorrupted) if it is
  // damaged. Off, the first opener of a heap that was closed cleanly, or
  // whose processes died on this machine since it last started, checks only
  // the bins and the name table's place (microseconds, whatever the heap's
  // size), and damage elsewhere is found by check(). A heap whose machine
  // restarted, or one in network mode that was not closed cleanly, is
  // always walked.
  bool verify = false;
};

struct CreateOptions {
  std::uint64_t initial_size = 8 << 20;  // rounded up to whole pages
  std::uint64_t max_size = 0;            // growth limit; 0: the reservation
  mode_t file_mode = 0600;
  OpenOptions open{};
};

struct HeapInfo {
  std::string path;
  std::string uuid;
  std::uint32_t format_version = 0;
  std::vector<std::string> features;  // the file's format features ("object-serials")
  std::uint32_t page_size = 0;
  std::uint64_t size = 0;          // bytes in the file that the heap uses
  std::uint64_t used = 0;          // bytes in allocated blocks, headers included
  std::uint64_t free = 0;          // bytes in free blocks
  std::uint64_t largest_free = 0;  // the largest block an allocation could get without growth
  std::uint64_t objects = 0;       // named objects
  std::uint64_t generation = 0;    // bumped by every exclusive section (opens and closes too)
  std::uint64_t recoveries = 0;    // repairs after a lock holder died
  // Repairs that had to walk every block (the others undid the dead
  // holder's operation from its log and read its ledgers): after a machine
  // restart, in network mode, or when an operation was too big to log.
  std::uint64_t walked_recoveries = 0;
  std::uint64_t max_size = 0;      // the limit the heap was created with; 0: none
  std::uint64_t growth_limit = 0;  // what this process may grow it to (max_size, reservation)
  std::uint32_t sessions = 0;      // processes that have the heap open now
  LockMode mode = LockMode::kLocal;
};

struct ObjectInfo {
  std::string name;
  std::string type;          // the type's recorded name
  std::uint64_t size = 0;    // bytes: element size * count
  std::uint64_t count = 0;   // elements (1 unless constructed as an array)
  std::uint64_t offset = 0;  // from the heap's base, the same in every process
  // Unique in the heap for ever: an object destroyed and built again under the
  // same name, even at the same offset, has another serial. 0 in heaps made
  // before serials existed, until `sheaf heap upgrade`.
  std::uint64_t serial = 0;
};

struct CheckReport {
  // Damage: what no crash of Sheaf's can leave (bit rot, a stray write, a
  // bad tool). Empty when the heap is sound. Opening refuses such a heap
  // unless OpenOptions::repair_damage.
  std::vector<std::string> problems;
  // What a crashed process left, which the next process to open or lock the
  // heap repairs by itself ("3 named objects left half-constructed: freed").
  std::vector<std::string> repairs;
  std::uint64_t blocks = 0;
  std::uint64_t free_blocks = 0;
  std::uint64_t named_objects = 0;
  bool ok() const { return problems.empty(); }
};

class Heap;

// A heap this process has open, as diagnostics list it (open_heaps()).
struct OpenHeap {
  std::string path;
  std::string uuid;
  LockMode mode = LockMode::kLocal;
  bool read_only = false;
  std::uint64_t size = 0;      // State::size as last seen, read without the lock
  const void* base = nullptr;  // where this process maps it
};

// Every heap this process has open. Takes no heap's lock, so it answers
// while this process's own threads hold them (PSRP's `heaps`).
std::vector<OpenHeap> open_heaps();

namespace detail {
// Type-erased construction callback: builds `count` objects at `where`.
using InitFn = void (*)(void* where, std::size_t count, void* context);
using DestroyFn = void (*)(void* where, std::size_t count);
}  // namespace detail

// What heap.construct<T>(name) returns: call it with the constructor's
// arguments for one object, or index it for an array of n copies.
template <class T>
class Constructor {
 public:
  template <class... Args>
  T* operator()(Args&&... args) {
    return construct(1, std::forward<Args>(args)...);
  }

  class Array {
   public:
    template <class... Args>
    T* operator()(Args&&... args) {
      return owner_.construct(count_, std::forward<Args>(args)...);
    }

   private:
    friend class Constructor;
    Array(Constructor& owner, std::size_t count) : owner_(owner), count_(count) {}
    Constructor& owner_;
    std::size_t count_;
  };
  Array operator[](std::size_t count) { return Array(*this, count); }

 private:
  friend class Heap;
  Constructor(Heap& heap, std::string_view name, bool or_find)
      : heap_(heap), name_(name), or_find_(or_find) {}
  template <class... Args>
  T* construct(std::size_t count, Args&&... args);

  Heap& heap_;
  std::string name_;  // a copy: the caller's string may be gone when the Constructor is called
  bool or_find_;
};

class Heap {
 public:
  // Creates a new heap file (never replaces an existing one) and opens it.
  static Result<Heap> create(const std::string& path, const CreateOptions& options = {});
  // Opens an existing heap after validating its header; repairs it first if
  // the last lock holder died.
  static Result<Heap> open(const std::string& path, const OpenOptions& options = {});

  Heap(Heap&&) noexcept;
  Heap& operator=(Heap&&) noexcept;
  ~Heap();  // closes; an error closing is lost there, so call close() to see it
  // Unmaps and closes. Pointers into the heap are invalid afterwards. The
  // heap is closed even when this reports an error (a failed flush to the
  // server in network mode).
  Result<void> close() noexcept;
  bool is_open() const noexcept { return impl_ != nullptr; }

  // --- Anonymous blocks -------------------------------------------------------
  // Throws Error(kOutOfSpace) when the heap cannot grow enough.
  void* allocate(std::size_t bytes, std::size_t alignment = alignof(std::max_align_t));
  void deallocate(void* p);
  // Grows or shrinks in place when it can, else moves the bytes.
  void* reallocate(void* p, std::size_t bytes);
  // Bytes the caller may use at p, a block from allocate() or allocate_held()
  // (at least what was asked for).
  std::size_t usable_size(const void* p) const;

  // --- Held blocks: shared by reference, freed exactly once -------------------
  // A held block has one or more holds, each belonging to a session (one
  // process's open of the heap). It is freed when its last hold is released,
  // and the holds of a process that dies are released for it (by the next
  // process to lock or open the heap), so a block handed between processes
  // is freed exactly once however they end. Allocating and taking the first
  // hold are one step: a process killed right after allocate_held() leaks
  // nothing. Holds are counted in the file and listed per session; check()
  // verifies the two agree. A held block is not deallocate()d: release it.
  // These throw kInvalidArgument for a pointer that is not the start of a
  // held block (or, for release and hand_over, one this session does not
  // hold), and kUnsupported on a heap made before holds (`sheaf heap
  // upgrade` adds them).
  void* allocate_held(std::size_t bytes, std::size_t alignment = alignof(std::max_align_t));
  void hold(const void* p);     // one more hold on p for this session, which must hold one
  void release(const void* p);  // one of this session's holds on p gone; the last frees it
  // One of this session's holds on p becomes `session`'s (a live session of
  // this heap: kNotFound otherwise); the block's count does not change.
  // Returns the block's serial (as held_block() gives it), for the reference
  // that tells the receiver which block it was handed.
  std::uint64_t hand_over(const void* p, std::uint64_t session);
  std::uint64_t holds(const void* p) const;  // how many holds p has now
  // What the receiver of a reference checks before it reads, in one read
  // (without the lock in local mode): whether this session holds p (bytes 0
  // if not), its usable bytes, and its serial: a number given to each held
  // block at allocate_held(), never twice in the heap, so that a reference
  // to a block freed since and reused is told apart (0 in heaps made before
  // held serials, until `sheaf heap upgrade`).
  struct HeldBlock {
    std::size_t bytes = 0;
    std::uint64_t serial = 0;
  };
  HeldBlock held_block(const void* p) const;
  // This process's session in the heap: what a peer hands holds over to.
  std::uint64_t session() const;
  // What reclaim_session() found.
  enum class SessionFate { kNotListed, kAlive, kReclaimed };
  // If `session`'s process is gone, releases its holds and cached blocks now
  // (and those of any other dead session), instead of at the next open. For
  // a peer that learns of a death first (the message layer, at a socket's
  // close): a process that is exiting may still count as alive for a moment.
  SessionFate reclaim_session(std::uint64_t session);

  // --- Named objects -----------------------------------------------------------
  // construct<T>(name)(args...) or construct<T>(name)[n](args...). Throws
  // Error(kAlreadyExists) if the name is taken. T's constructor runs under
  // the heap's lock, so it may itself allocate in the heap.
  template <class T>
  Constructor<T> construct(std::string_view name) {
    return Constructor<T>(*this, name, false);
  }
  // An array of `count` T built by fill(T* first, std::size_t count), which
  // must construct every element (placement new). Runs under the heap's lock,
  // and the name becomes visible only once fill returns: a process killed
  // inside fill leaves no object behind. For bytes copied in from elsewhere.
  template <class T, class Fill>
  T* construct_with(std::string_view name, std::size_t count, Fill&& fill) {
    detail::InitFn init = [](void* where, std::size_t n, void* context) {
      (*static_cast<std::remove_reference_t<Fill>*>(context))(static_cast<T*>(where), n);
    };
    return static_cast<T*>(construct_named(name, type_tag<T>(), count, false, init, &fill));
  }
  // The existing object if there is one of that type, else a new one.
  template <class T>
  Constructor<T> find_or_construct(std::string_view name) {
    return Constructor<T>(*this, name, true);
  }
  // The object, or nullptr if there is none by that name. Throws
  // Error(kTypeMismatch) if it was constructed as another type.
  template <class T>
  T* find(std::string_view name) {
    std::size_t count = 0;
    return static_cast<T*>(find_named(name, type_tag<T>(), &count));
  }
  // The whole array constructed under that name (empty if absent).
  template <class T>
  std::span<T> find_array(std::string_view name) {
    std::size_t count = 0;
    T* first = static_cast<T*>(find_named(name, type_tag<T>(), &count));
    return first ? std::span<T>(first, count) : std::span<T>();
  }
  // Runs the destructors and frees the object. False if there was none.
  template <class T>
  bool destroy(std::string_view name) {
    return destroy_named(name, type_tag<T>(), [](void* where, std::size_t count) {
      T* first = static_cast<T*>(where);
      for (std::size_t i = count; i > 0; --i) first[i - 1].~T();
    });
  }
  // Frees a named object without knowing its type: no destructor runs, so
  // anything it allocated stays allocated. For tools (`sheaf heap rm`).
  bool erase(std::string_view name);

  // A copy of a named object's description, or nothing.
  std::optional<ObjectInfo> object(std::string_view name) const;
  // Every named object, in no particular order.
  std::vector<ObjectInfo> objects() const;
  // The bytes of a named object, for tools that do not know its type
  // (`sheaf heap cat`). Valid while the object exists. Throws
  // Error(kNotFound) if there is none by that name.
  std::span<const std::byte> object_bytes(std::string_view name) const;
  // A copy of a named object's bytes, taken under the lock (or, read-only
  // without it, retried until consistent). Throws kNotFound if absent.
  std::vector<std::byte> copy_object(std::string_view name) const;

  // --- Locking -----------------------------------------------------------------
  // Runs fn under the heap's lock. exclusive(): writers; on a network
  // filesystem its writes reach the server before the lock is released.
  // shared(): readers, who do not exclude one another (in any process; a
  // heap opened read_only in local mode reads under the writers' mutex).
  // Opening a heap writes, so it waits for the readers inside.
  // A section that reports an error (a failed flush) throws it when it ends.
  template <class F>
  decltype(auto) exclusive(F&& fn) {
    LockScope scope(live(), true);
    return std::forward<F>(fn)();
  }
  template <class F>
  decltype(auto) shared(F&& fn) const {
    LockScope scope(live(), false);
    return std::forward<F>(fn)();
  }
  // exclusive(), but if the lock is not granted within `timeout` it throws
  // Error(kTimedOut) naming the holder's pid and host, and fn does not run.
  template <class F>
  decltype(auto) exclusive_for(std::chrono::nanoseconds timeout, F&& fn) {
    LockScope scope(live(), true, timeout);
    return std::forward<F>(fn)();
  }

  // --- Addresses ---------------------------------------------------------------
  // Offsets are the same in every process; addresses are not.
  std::uint64_t offset_of(const void* p) const;
  void* pointer_at(std::uint64_t offset) const;
  void* base() const noexcept;
  bool contains(const void* p) const noexcept;

  // --- Inspection --------------------------------------------------------------
  HeapInfo info() const;
  // HeapInfo::generation, read without the lock: it moves whenever an
  // exclusive section ends (in any process). One load in local mode; one
  // read of the header's first page from the server in network mode. For
  // watchers that poll for change (the FUSE view's listings).
  std::uint64_t generation() const;
  // Verifies every invariant of the file (see docs/heap.md); changes nothing.
  CheckReport check() const;
  // Brings a heap made by an older Sheaf to this Sheaf's format (every
  // feature it knows; see docs/heap.md). True if anything changed. Refused
  // with kBusy while other processes have the heap open. Crash-safe: a kill
  // leaves the old format or the new one.
  Result<bool> upgrade();
  const std::string& path() const noexcept;
  LockMode mode() const noexcept;

  struct Impl;

  // The heap's lock for the length of a scope: the one guard every path
  // uses (exclusive(), shared(), each call, and inside the library opening,
  // closing and the thread caches). Its destructor throws a failed flush to
  // the server unless an exception is already on its way out; code that must
  // not throw calls release() and reports the errno another way.
  class LockScope {
   public:
    // A negative timeout uses the heap's OpenOptions::lock_timeout.
    LockScope(Impl& impl, bool exclusive,
              std::chrono::nanoseconds timeout = std::chrono::nanoseconds(-1));
    ~LockScope() noexcept(false);
    LockScope(const LockScope&) = delete;
    LockScope& operator=(const LockScope&) = delete;
    // Releases now: 0, or the errno of a failed flush. Idempotent.
    int release() noexcept;

   private:
    Impl* impl_;
  };

 private:
  template <class T>
  friend class Constructor;
  explicit Heap(std::shared_ptr<Impl> impl);
  // The open heap, or throws: closed, moved from, or opened before a fork().
  Impl& live() const;

  void* construct_named(std::string_view name, const TypeTag& type, std::size_t count, bool or_find,
                        detail::InitFn init, void* context);
  void* find_named(std::string_view name, const TypeTag& type, std::size_t* count) const;
  bool destroy_named(std::string_view name, const TypeTag& type, detail::DestroyFn destroy);

  std::shared_ptr<Impl> impl_;  // shared with this process's thread caches (weakly)
};

template <class T>
template <class... Args>
T* Constructor<T>::construct(std::size_t count, Args&&... args) {
  struct Context {
    std::tuple<Args&&...> args;
  } context{std::forward_as_tuple(std::forward<Args>(args)...)};
  detail::InitFn init = [](void* where, std::size_t n, void* raw) {
    auto& ctx = *static_cast<Context*>(raw);
    T* first = static_cast<T*>(where);
    std::size_t built = 0;
    try {
      if (n == 1) {  // a single object gets the arguments as they were passed
        std::apply(
            [&](auto&&... a) { ::new (static_cast<void*>(first)) T(std::forward<Args>(a)...); },
            std::move(ctx.args));
        built = 1;
      }
      for (; built < n; ++built) {  // an array gets n copies built from the same arguments
        std::apply([&](auto&... a) { ::new (static_cast<void*>(first + built)) T(a...); },
                   ctx.args);
      }
    } catch (...) {
      while (built > 0) first[--built].~T();
      throw;
    }
  };
  return static_cast<T*>(
      heap_.construct_named(name_, type_tag<T>(), count, or_find_, init, &context));
}

}  // namespace sheaf
