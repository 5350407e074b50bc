// heap_file.cpp: creating, validating, mapping and closing heap files.
//
// Creation is atomic: the file is built under a temporary name in the same
// directory and link()ed into place, so no process ever opens a half-made heap
// and an existing file is never replaced. Opening validates the header with
// pread() before anything is mapped or written, so a file that is not a sound
// heap is refused and left byte-for-byte as it was.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <xxhash.h>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "impl.hpp"
#include "posix.hpp"
#include "registry.hpp"

namespace sheaf {
namespace {

using namespace format;

constexpr std::uint64_t kDefaultReserve = std::uint64_t{64} << 30;
constexpr std::uint64_t kMinInitialSize = kHeaderBytes + 4096;

// Filesystems whose page caches are per host, so mode kNetwork is needed.
bool is_network_filesystem(long type) {
  switch (static_cast<unsigned long>(type)) {
    case NFS_SUPER_MAGIC:
    case SMB_SUPER_MAGIC:
    case 0xFF534D42:  // CIFS
    case 0xFE534D42:  // SMB2
    case 0x00C36400:  // Ceph
    case 0x65735546:  // FUSE (GlusterFS, MooseFS, sshfs...)
    case 0x01161970:  // GFS2
    case 0x7461636F:  // OCFS2
    case V9FS_MAGIC:
    case AFS_SUPER_MAGIC:
    case CODA_SUPER_MAGIC:
      return true;
    default:
      return false;
  }
}

LockMode resolve_mode(LockMode requested, int fd, const std::string& path) {
  if (requested != LockMode::kAuto) return requested;
  if (const char* forced = std::getenv("SHEAF_HEAP_MODE"); forced && *forced) {
    if (std::strcmp(forced, "local") == 0) return LockMode::kLocal;
    if (std::strcmp(forced, "network") == 0) return LockMode::kNetwork;
    if (std::strcmp(forced, "auto") != 0) {
      throw Error(
          Errc::kInvalidArgument,
          std::string("SHEAF_HEAP_MODE must be local, network or auto, not '") + forced + "'");
    }
  }
  struct statfs fs {};
  if (fstatfs(fd, &fs) != 0) throw Error::from_errno(errno, "heap " + path + ": statfs");
  return is_network_filesystem(fs.f_type) ? LockMode::kNetwork : LockMode::kLocal;
}

// "incompatible bit 5, read-only compatible bit 9" for the bits of `id` this
// Sheaf does not know and must refuse the heap for, or "".
// No reader counted, none barred, no slot yet (State::readers).
void clear_readers(State& state) {
  std::memset(state.readers, 0, sizeof(state.readers));
  state.readers_barred = 0;
  state.reader_slots = 0;
}

std::string unknown_features(const Identity& id, bool read_only) {
  std::string text;
  const auto name = [&](std::uint64_t bits, const char* kind) {
    for (int bit = 0; bit < 64; ++bit) {
      if (!((bits >> bit) & 1)) continue;
      text += (text.empty() ? "" : ", ") + std::string(kind) + " bit " + std::to_string(bit);
    }
  };
  name(id.incompat_features & ~kKnownIncompat, "incompatible");
  // A reader may ignore what only a writer must know.
  if (!read_only) name(id.ro_compat_features & ~kKnownRoCompat, "read-only compatible");
  return text;
}

// Throws a clear Error unless `header`, read from a file of `file_size` bytes,
// is a heap this code can open.
void validate_header(const Header& header, std::uint64_t file_size, const std::string& path,
                     bool read_only) {
  const std::string where = "heap " + path + ": ";
  const Identity& id = header.identity;
  if (file_size < sizeof(id.magic) || std::memcmp(id.magic, kMagic, sizeof(kMagic)) != 0) {
    throw Error(Errc::kUnsupported, where + "not a Sheaf heap (no heap magic at the start)");
  }
  if (file_size < kHeaderBytes) {
    throw Error(Errc::kCorrupted, where + "truncated: " + std::to_string(file_size) +
                                      " bytes, shorter than a heap header (" +
                                      std::to_string(kHeaderBytes) + ")");
  }
  if (id.endian != posix::kEndianMark) {
    if (id.endian == posix::kEndianMarkSwapped) {
      throw Error(Errc::kUnsupported, where + "written on a machine of the other byte order");
    }
    throw Error(Errc::kCorrupted, where + "corrupted header (bad byte-order mark)");
  }
  if (checksum_identity(id) != id.checksum) {
    throw Error(Errc::kCorrupted, where + "header checksum mismatch (the file is corrupted)");
  }
  if (id.version > kVersion) {
    throw Error(Errc::kUnsupported, where + "format version " + std::to_string(id.version) +
                                        " is newer than this Sheaf reads (" +
                                        std::to_string(kVersion) + ")");
  }
  if (id.version < kOldestVersion || id.header_bytes != kHeaderBytes) {
    throw Error(Errc::kCorrupted, where + "corrupted header (version or header size)");
  }
  if (id.version == 1 && (id.compat_features | id.ro_compat_features | id.incompat_features)) {
    throw Error(Errc::kCorrupted, where + "corrupted header (feature bits in a version 1 heap)");
  }
  if (std::string unknown = unknown_features(id, read_only); !unknown.empty()) {
    throw Error(Errc::kUnsupported, where + "uses features this Sheaf does not know (" + unknown +
                                        "); open it with a newer Sheaf" +
                                        (read_only ? "" : ", or read-only"));
  }
  if (id.page_size != kPageSize || sysconf(_SC_PAGESIZE) != kPageSize) {
    throw Error(Errc::kUnsupported, where + "made for " + std::to_string(id.page_size) +
                                        "-byte pages; this machine has " +
                                        std::to_string(sysconf(_SC_PAGESIZE)));
  }
  const State& state = header.state;
  if (state.size < kHeaderBytes + kMinBlock || state.size % kAlign != 0) {
    throw Error(Errc::kCorrupted,
                where + "corrupted header (heap size " + std::to_string(state.size) + ")");
  }
  if (state.size > file_size) {
    throw Error(Errc::kCorrupted, where + "truncated: the heap spans " +
                                      std::to_string(state.size) + " bytes but the file has " +
                                      std::to_string(file_size));
  }
}

// Unlinks a temporary file on scope exit unless it was given its name.
struct TempName {
  std::string path;
  ~TempName() {
    if (!path.empty()) ::unlink(path.c_str());
  }
};

[[noreturn]] void throw_damaged(const std::string& where, const CheckReport& report) {
  std::string more;
  if (report.problems.size() > 1) {
    more = " (and " + std::to_string(report.problems.size() - 1) + " more)";
  }
  throw Error(Errc::kCorrupted, where + ": damaged: " + report.problems.front() + more +
                                    "; no crash leaves this. `sheaf heap check` lists the damage; "
                                    "`sheaf heap check --repair` rebuilds the heap from its "
                                    "blocks, dropping what the damage took");
}

}  // namespace

std::uint64_t hash_name(std::string_view name) {
  return XXH3_64bits(name.data(), name.size());
}

std::uint64_t checksum_identity(const Identity& identity) {
  return XXH64(&identity, offsetof(Identity, checksum), 0);
}

void Heap::Impl::create_file(const std::string& path, const CreateOptions& options) {
  const std::string where = "heap " + path;
  std::uint64_t size =
      align_up(std::max<std::uint64_t>(options.initial_size, kMinInitialSize), kPageSize);
  // Bins and block sizes reach 2^48 bytes: a larger limit could never be
  // honoured, so it is refused rather than quietly cut.
  constexpr std::uint64_t kLargestHeap = std::uint64_t{1} << 48;
  if (options.max_size > kLargestHeap || size > kLargestHeap) {
    throw Error(Errc::kInvalidArgument,
                where + ": " + (options.max_size > kLargestHeap ? "maximum" : "initial") +
                    " size " + std::to_string(std::max(options.max_size, size)) +
                    " bytes is beyond the largest heap Sheaf can address (256 TiB)");
  }
  if (options.max_size != 0 && size > options.max_size) {
    throw Error(Errc::kInvalidArgument, where + ": initial size " + std::to_string(size) +
                                            " exceeds the maximum size " +
                                            std::to_string(options.max_size));
  }
  std::uint8_t uuid[16];
  if (getrandom(uuid, sizeof(uuid), 0) != sizeof(uuid)) throw Error::from_errno(errno, "getrandom");
  uuid[6] = (uuid[6] & 0x0F) | 0x40;  // RFC 4122 version 4
  uuid[8] = (uuid[8] & 0x3F) | 0x80;

  struct stat existing {};
  if (::stat(path.c_str(), &existing) == 0) {
    throw Error(Errc::kAlreadyExists, where + ": already exists", EEXIST);
  }

  char suffix[17];
  std::snprintf(suffix, sizeof(suffix), "%02x%02x%02x%02x%02x%02x%02x%02x", uuid[0], uuid[1],
                uuid[2], uuid[3], uuid[4], uuid[5], uuid[9], uuid[10]);
  const std::string name = path.substr(path.rfind('/') + 1);
  const std::string temp_path = posix::directory_of(path) + "/." + name + ".creating-" + suffix;
  posix::Fd fd = posix::open_file(temp_path, O_RDWR | O_CREAT | O_EXCL, where + ": cannot create",
                                  options.file_mode);
  TempName temp{temp_path};
  if (fchmod(fd.get(), options.file_mode) != 0) throw Error::from_errno(errno, where + ": chmod");
  if (const int error = posix::allocate_range(fd.get(), 0, size); error != 0) {
    throw Error::from_errno(error, where + ": cannot reserve " + std::to_string(size) + " bytes");
  }

  void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (map == MAP_FAILED) throw Error::from_errno(errno, where + ": mmap");
  {
    Impl builder;
    builder.base = static_cast<std::uint8_t*>(map);
    Header* header = builder.header();
    std::memset(header, 0, kHeaderBytes);
    Identity& id = header->identity;
    std::memcpy(id.magic, kMagic, sizeof(kMagic));
    id.version = kVersion;
    id.endian = posix::kEndianMark;
    id.page_size = kPageSize;
    id.header_bytes = kHeaderBytes;
    std::memcpy(id.uuid, uuid, sizeof(uuid));
    id.created_ns = posix::realtime_ns();
    id.max_size = options.max_size;
    id.compat_features = kKnownCompat;
    id.ro_compat_features = kKnownRoCompat;
    id.incompat_features = kKnownIncompat;
    id.checksum = checksum_identity(id);

    State& state = header->state;
    state.size = size;
    state.generation = 1;
    state.clean = 1;
    state.next_session_id = 1;
    state.next_serial = 1;
    // One free block spans everything after the header.
    builder.block(kHeaderBytes)->size_and_state = (size - kHeaderBytes) | kFree;
    builder.held_lock();  // nobody else can see the file yet: as good as the lock
    builder.push_free(kHeaderBytes);
    builder.base = nullptr;  // ~Impl must not unmap
  }
  const int sync_error = posix::msync(map, size);
  munmap(map, size);
  if (sync_error != 0) throw Error::from_errno(sync_error, where + ": cannot write");
  posix::publish_file(fd.get(), temp_path, path, /*replace=*/false, where);
}

std::shared_ptr<Heap::Impl> Heap::Impl::open_file(const std::string& path,
                                                  const OpenOptions& options) {
  const std::string where = "heap " + path;
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  impl->fork_epoch = registry::fork_epoch();
  impl->lock_timeout_ns =
      options.lock_timeout.count() > 0
          ? std::chrono::duration_cast<std::chrono::nanoseconds>(options.lock_timeout).count()
          : -1;
  impl->read_only = options.read_only;
  impl->fd = posix::open_file(path, options.read_only ? O_RDONLY : O_RDWR, where).release();
  struct stat st {};
  if (fstat(impl->fd, &st) != 0) throw Error::from_errno(errno, where + ": stat");
  if (S_ISDIR(st.st_mode)) throw Error::from_errno(EISDIR, where);  // what O_RDWR would say
  if (!S_ISREG(st.st_mode)) throw Error(Errc::kInvalidArgument, where + ": not a regular file");

  impl->mode = resolve_mode(options.mode, impl->fd, path);
  if (impl->mode == LockMode::kNetwork) {
    // No readahead: a page whose read is still in flight when the next
    // acquirer invalidates survives the invalidation, and then holds bytes
    // from before another host's writes. Every read must happen, whole,
    // inside the section that needs it.
    posix_fadvise(impl->fd, 0, 0, POSIX_FADV_RANDOM);
    // Reads that bypass this host's cache, to check what it keeps (see
    // refresh_range); a filesystem without O_DIRECT relies on eviction alone.
    impl->direct_fd = posix::try_open(path, O_RDONLY | O_DIRECT).release();
    // Our host may cache pages another host has since rewritten.
    posix_fadvise(impl->fd, 0, 0, POSIX_FADV_DONTNEED);
  }
  std::uint64_t file_size = 0;
  {
    // The header first, then the file's size: a grower extends the file
    // before it publishes the heap's new size, so read in this order the
    // file always covers the size the header states.
    auto header = std::make_unique<Header>();
    std::memset(static_cast<void*>(header.get()), 0, sizeof(Header));
    posix::pread_all(impl->fd, std::as_writable_bytes(std::span(header.get(), 1)), 0, where);
    file_size = posix::file_size(impl->fd, where);
    // A kill inside an upgrade may have left the new identity staged but
    // not yet copied: judge the heap by what it is about to be.
    if (header->state.identity_staged == 1 && checksum_identity(header->state.staged_identity) ==
                                                  header->state.staged_identity.checksum) {
      header->identity = header->state.staged_identity;
    }
    if (impl->mode == LockMode::kNetwork) {
      struct statx fresh {};  // the server's size, not what this host last knew
      if (statx(impl->fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_SIZE, &fresh) == 0) {
        file_size = fresh.stx_size;
      }
      impl->known_file_size = file_size;
    }
    validate_header(*header, file_size, path, options.read_only);
  }

  impl->reserve =
      align_up(std::max(options.reserve ? options.reserve : kDefaultReserve, file_size), kPageSize);
  const int protection = options.read_only ? PROT_READ : PROT_READ | PROT_WRITE;
  void* map = mmap(nullptr, impl->reserve, protection, MAP_SHARED | MAP_NORESERVE, impl->fd, 0);
  if (map == MAP_FAILED) {
    throw Error::from_errno(
        errno, where + ": cannot map " + std::to_string(impl->reserve) + " bytes of address space");
  }
  impl->base = static_cast<std::uint8_t*>(map);
  {
    std::uint64_t halves[2];
    std::memcpy(halves, impl->header()->identity.uuid, sizeof(halves));
    impl->used_key = halves[0] ^ halves[1];
  }
  if (impl->mode == LockMode::kNetwork) madvise(map, impl->reserve, MADV_RANDOM);  // see above

  impl->claim_mode();
  impl->counted_readers =
      impl->mode == LockMode::kLocal && impl->has_feature(kFeatureSharedReaders);

  if (options.read_only) {
    // Nothing is written: no session, no repair, no first-opener duties
    // (only a writer can take the presence lock exclusively). In local mode
    // the lock is the mutex in the header's first page: map that page
    // writable if the file lets us, else read without the lock (lockless).
    if (impl->mode == LockMode::kLocal) {
      posix::Fd writable = posix::try_open(path, O_RDWR);
      void* page = writable.valid() ? mmap(nullptr, kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED,
                                           writable.get(), 0)
                                    : MAP_FAILED;
      if (page != MAP_FAILED) {
        impl->lock_page = static_cast<std::uint8_t*>(page);
      } else {
        impl->lockless = true;
      }
    }
    if (!posix::lock_range(impl->fd, F_RDLCK, kPresenceLock, 1, impl->lock_timeout_ns, where)) {
      throw Error(Errc::kTimedOut, where + ": another process is still opening it", ETIMEDOUT);
    }
    return impl;
  }

  // The first process to open the heap is alone with it. It resets the
  // lock, which a crashed machine may have left looking held, and decides
  // how much it must look at (recovery.cpp explains the undo log and the
  // ledgers that make a walk unnecessary):
  //   - local mode, same boot (the kernel kept every page every process
  //     wrote), or network mode and closed cleanly: the file is trusted.
  //     Closed cleanly, only the bins and the name table's place are
  //     checked, whatever the heap's size; after deaths, the next lock
  //     undoes the dead holder's operation from its log, and registering
  //     our session frees what dead sessions' ledgers list;
  //   - anything else (a restarted machine, network mode after deaths, a
  //     heap made before ledgers, OpenOptions::verify or repair_damage): the whole
  //     block chain is verified (a heap whose chain is broken is refused,
  //     untouched; other damage too, unless repair_damage) and the caches
  //     are rebuilt from it.
  // Later openers wait for the first on the presence lock, which the first
  // holds until its first section (its walk, if it walks) is done. One that
  // then finds itself alone (the first gave up, refusing a damaged heap, or
  // died) becomes the first itself rather than trust a heap nobody checked.
  bool first = posix::try_lock_range(impl->fd, F_WRLCK, kPresenceLock, 1, where);
  if (!first) {
    if (!posix::lock_range(impl->fd, F_RDLCK, kPresenceLock, 1, impl->lock_timeout_ns, where)) {
      throw Error(Errc::kTimedOut,
                  where + ": another process is still opening it (waited " +
                      std::to_string(impl->lock_timeout_ns / 1000000) + " ms)",
                  ETIMEDOUT);
    }
    first = posix::try_lock_range(impl->fd, F_WRLCK, kPresenceLock, 1, where);
  }
  bool rebuild_caches = false;
  bool quick_check = false;  // after the lock: see below
  const std::uint64_t boot = first ? posix::boot_id() : 0;
  if (first) {
    State& state = impl->state();
    const bool clean = state.clean == 1;
    const bool same_boot = impl->mode == LockMode::kLocal &&
                           impl->has_feature(kFeatureCacheLedgers) && state.boot_hash != 0 &&
                           state.boot_hash == boot;
    // In local mode even a clean close may not have reached the disk before
    // a power cut (nothing is msynced there), so only the same boot skips.
    const bool trusted = impl->mode == LockMode::kLocal ? same_boot : clean;
    const bool walk = !trusted || options.verify || options.repair_damage;
    if (walk) {
      bool chain_sound = false;
      CheckReport report = impl->check(true, &chain_sound);
      if (!chain_sound) throw Error(Errc::kCorrupted, where + ": " + report.problems.front());
      // Damage no crash explains is refused untouched: repairing it would
      // silently drop what it took (an object swallowed by a rewritten size).
      if (!report.ok() && !options.repair_damage) throw_damaged(where, report);
      rebuild_caches = !report.ok() || !report.repairs.empty() || !clean;
      // What the log says may not be what was written (pages lost): the
      // walk decides.
      impl->trust_undo_log = false;
    } else if (clean) {
      // Before anything is written, so that a refusal leaves the file as it was.
      // (A clean heap has no dead holder whose operation must be undone first.)
      if (std::string problem = impl->quick_check(); !problem.empty()) {
        CheckReport report;
        report.problems.push_back(problem);
        throw_damaged(where, report);
      }
    } else {
      quick_check = true;  // once the dead holder's operation is undone
    }
    if (impl->mode == LockMode::kLocal) {
      pthread_mutexattr_t attributes;
      pthread_mutexattr_init(&attributes);
      pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
      pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
      pthread_mutex_init(&state.mutex, &attributes);
      pthread_mutexattr_destroy(&attributes);
      // Nobody reads either: counts and a bar left by a crash go too.
      clear_readers(state);
    }
    if (impl->mode == LockMode::kNetwork) impl->unmap_pages();  // see unmap_pages()
  }
  // From here on others may be in the heap: write State only under the lock
  // (on a network filesystem a page written outside it can overwrite what
  // another host wrote under it).
  impl->walk_in_first_section = rebuild_caches;  // the log says "walk" until it is done
  ExclusiveSection lock(*impl);                  // undoes a dead holder's operation first
  impl->finish_identity_update();
  if (quick_check) {
    if (std::string problem = impl->quick_check(); !problem.empty()) {
      CheckReport report;
      report.problems.push_back(problem);
      throw_damaged(where, report);
    }
  }
  if (rebuild_caches) {
    impl->rebuild(Rebuild::kRecover);
    ++impl->state().walked_recoveries;
  }
  impl->trust_undo_log = true;
  if (first) {
    impl->state().clean = 0;
    impl->state().boot_hash = boot;
  }
  impl->register_session(rebuild_caches);
  if (const int error = lock.release(); error != 0) {
    throw Error::from_errno(error, where + ": cannot write to the server");
  }
  // Downgrade: the heap is checked (or repaired), others may come in.
  if (first) posix::try_lock_range(impl->fd, F_RDLCK, kPresenceLock, 1, where);
  return impl;
}

int Heap::Impl::close_file() noexcept {
  if (base == nullptr) return 0;
  int error = 0;
  if (!forked()) {  // a forked child leaves the parent's session, caches and locks alone
    retire_all_caches();
    if (session_slot >= 0) {
      try {
        // Under the heap lock, like every write to State: leave the session
        // table, and if no other process has the heap open (we get the
        // presence lock exclusively), mark it clean so the next first opener
        // can skip repairing it.
        ExclusiveSection lock(*this);
        // A process that closes the heap gives up its holds (the last one
        // of a block frees it), as one that dies does.
        reclaim_session(session_slot);
        unregister_session();
        if (posix::try_lock_range(fd, F_WRLCK, kPresenceLock, 1, "heap " + path)) {
          state().clean = 1;
        }
        error = lock.release();
      } catch (const Error& e) {
        // The scope released the lock. A heap left unclean is repaired by
        // its next first opener.
        error = e.sys_errno() ? e.sys_errno() : EIO;
      }
    }
  }
  munmap(base, reserve);
  base = nullptr;
  if (lock_page != nullptr) munmap(lock_page, kPageSize);
  lock_page = nullptr;
  ::close(fd);  // releases every byte-range lock we held (not a forked child's: shared)
  fd = -1;
  if (direct_fd >= 0) ::close(direct_fd);
  direct_fd = -1;
  return error;
}

// See State::staged_identity. Under the exclusive lock.
void Heap::Impl::finish_identity_update() {
  State& s = state();
  if (s.identity_staged != 1) return;
  if (checksum_identity(s.staged_identity) == s.staged_identity.checksum) {
    std::memcpy(&header()->identity, &s.staged_identity, sizeof(Identity));
    if (const int error = posix::msync(base, kPageSize); error != 0) {
      throw Error::from_errno(error, "heap " + path + ": cannot write its header");
    }
  }
  publish(s.identity_staged, 0);
}

bool Heap::Impl::upgrade() {
  require_exclusive();
  if (live_sessions() > 1) {
    throw Error(Errc::kBusy, "heap " + path +
                                 ": other processes have it open; close it everywhere else "
                                 "before upgrading it");
  }
  const Identity& id = header()->identity;
  if (id.version == kVersion && id.compat_features == kKnownCompat &&
      id.ro_compat_features == kKnownRoCompat && id.incompat_features == kKnownIncompat) {
    return false;
  }
  State& s = state();
  mark_unlogged();  // a walk: a death in it gets a walk too
  // 1. What the features need in the file, while the identity still says
  //    they are off (so nothing reads it yet): serials for existing objects.
  if (!(id.ro_compat_features & kFeatureObjectSerials)) {
    std::uint64_t serial = 1;
    for (std::uint64_t offset = kHeaderBytes; offset < s.size; offset += block(offset)->size()) {
      const std::uint64_t state_bits = block(offset)->state();
      if (state_bits == kNamed || state_bits == kPending) block(offset)->tag = serial++;
    }
    s.next_serial = serial;
  }
  //    Check words for the used blocks (this Sheaf writes them whether or
  //    not the feature is on, so only blocks an older one made lack them).
  if (!(id.ro_compat_features & kFeatureUsedTags)) {
    // An older Sheaf left 0, or the session id of the thread cache that
    // handed the block out. Not our own session's id: this process's
    // threads may be turning a block kCached (tag: our session) without the
    // lock right now, and that tag must win (hence the compare-and-swap).
    for (std::uint64_t offset = kHeaderBytes; offset < s.size; offset += block(offset)->size()) {
      if (block(offset)->state() != kUsed) continue;
      std::uint64_t seen = __atomic_load_n(&block(offset)->tag, __ATOMIC_ACQUIRE);
      if (seen == used_tag(offset) || seen == session_id) continue;
      __atomic_compare_exchange_n(&block(offset)->tag, &seen, used_tag(offset), false,
                                  __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
    }
  }
  //    Reader counts start at zero, and cover every slot in use.
  if (!(id.ro_compat_features & kFeatureSharedReaders)) {
    clear_readers(s);
    for (int i = 0; i < kMaxSessions; ++i) {
      if (s.sessions[i].id != 0) s.reader_slots = static_cast<std::uint32_t>(i + 1);
    }
  }
  // 2. The new identity, staged whole; 3. published; 4. copied into place.
  Identity fresh = id;
  fresh.version = kVersion;
  fresh.compat_features |= kKnownCompat;
  fresh.ro_compat_features |= kKnownRoCompat;
  fresh.incompat_features |= kKnownIncompat;
  fresh.checksum = checksum_identity(fresh);
  std::memcpy(&s.staged_identity, &fresh, sizeof(Identity));
  if (const int error = posix::msync(base, kHeaderBytes); error != 0) {
    throw Error::from_errno(error, "heap " + path + ": cannot write its header");
  }
  publish(s.identity_staged, 1);
  finish_identity_update();
  counted_readers = mode == LockMode::kLocal;
  return true;
}

std::uint64_t Heap::Impl::growth_limit() const {
  std::uint64_t limit = reserve;
  if (header()->identity.max_size != 0) limit = std::min(limit, header()->identity.max_size);
  return limit;
}

}  // namespace sheaf
