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

std::uint64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

// Throws a clear Error unless `header`, read from a file of `file_size` bytes,
// is a heap this code can open.
void validate_header(const Header& header, std::uint64_t file_size, const std::string& path) {
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
  if (id.endian != kEndianMark) {
    if (id.endian == __builtin_bswap32(kEndianMark)) {
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
  if (id.version == 0 || id.header_bytes != kHeaderBytes) {
    throw Error(Errc::kCorrupted, where + "corrupted header (version or header size)");
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

bool ofd_lock(int fd, short type, off_t start, off_t length, bool wait) {
  struct flock lock {};
  lock.l_type = type;
  lock.l_whence = SEEK_SET;
  lock.l_start = start;
  lock.l_len = length;
  for (;;) {
    if (fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &lock) == 0) return true;
    if (errno == EINTR) continue;
    if (!wait && (errno == EAGAIN || errno == EACCES)) return false;
    throw Error::from_errno(errno, "heap: byte-range lock");
  }
}

// Closes fd and unlinks path on scope exit unless released.
struct TempFile {
  std::string path;
  int fd = -1;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!path.empty()) ::unlink(path.c_str());
  }
};

std::string directory_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

std::uint64_t hash_name(std::string_view name) {
  return XXH3_64bits(name.data(), name.size());
}

std::uint64_t checksum_identity(const Identity& identity) {
  return XXH64(&identity, offsetof(Identity, checksum), 0);
}

bool lock_range(int fd, short type, off_t start, off_t length, bool wait) {
  return ofd_lock(fd, type, start, length, wait);
}

void Heap::Impl::create_file(const std::string& path, const CreateOptions& options) {
  const std::string where = "heap " + path;
  std::uint64_t size =
      align_up(std::max<std::uint64_t>(options.initial_size, kMinInitialSize), kPageSize);
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

  TempFile temp;
  char suffix[17];
  std::snprintf(suffix, sizeof(suffix), "%02x%02x%02x%02x%02x%02x%02x%02x", uuid[0], uuid[1],
                uuid[2], uuid[3], uuid[4], uuid[5], uuid[9], uuid[10]);
  std::string name = path.substr(path.rfind('/') + 1);
  temp.path = directory_of(path) + "/." + name + ".creating-" + suffix;
  temp.fd = ::open(temp.path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, options.file_mode);
  if (temp.fd < 0) {
    int err = errno;
    temp.path.clear();
    throw Error::from_errno(err, where + ": cannot create");
  }
  if (fchmod(temp.fd, options.file_mode) != 0) throw Error::from_errno(errno, where + ": chmod");
  // Claim the blocks now, so a full disk is an error here rather than SIGBUS
  // later; filesystems without fallocate get a sparse file.
  if (fallocate(temp.fd, 0, 0, static_cast<off_t>(size)) != 0) {
    if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL) {
      throw Error::from_errno(errno, where + ": cannot reserve " + std::to_string(size) + " bytes");
    }
    if (ftruncate(temp.fd, static_cast<off_t>(size)) != 0) {
      throw Error::from_errno(errno, where + ": cannot size the file");
    }
  }

  void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, temp.fd, 0);
  if (map == MAP_FAILED) throw Error::from_errno(errno, where + ": mmap");
  {
    Impl builder;
    builder.base = static_cast<std::uint8_t*>(map);
    Header* header = builder.header();
    std::memset(header, 0, kHeaderBytes);
    Identity& id = header->identity;
    std::memcpy(id.magic, kMagic, sizeof(kMagic));
    id.version = kVersion;
    id.endian = kEndianMark;
    id.page_size = kPageSize;
    id.header_bytes = kHeaderBytes;
    std::memcpy(id.uuid, uuid, sizeof(uuid));
    id.created_ns = now_ns();
    id.max_size = options.max_size;
    id.checksum = checksum_identity(id);

    State& state = header->state;
    state.size = size;
    state.generation = 1;
    state.clean = 1;
    state.next_session_id = 1;
    // One free block spans everything after the header.
    builder.block(kHeaderBytes)->size_and_state = (size - kHeaderBytes) | kFree;
    builder.push_free(kHeaderBytes);
    builder.base = nullptr;  // ~Impl must not unmap
  }
  int sync_error = msync(map, size, MS_SYNC) == 0 ? 0 : errno;
  munmap(map, size);
  if (sync_error != 0 || fsync(temp.fd) != 0) {
    throw Error::from_errno(sync_error ? sync_error : errno, where + ": cannot write");
  }
  if (::link(temp.path.c_str(), path.c_str()) != 0) {
    throw Error::from_errno(errno, where + ": cannot create");
  }
  int dir = ::open(directory_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    fsync(dir);  // make the new name durable; best effort on filesystems that refuse
    ::close(dir);
  }
}

std::shared_ptr<Heap::Impl> Heap::Impl::open_file(const std::string& path,
                                                  const OpenOptions& options) {
  const std::string where = "heap " + path;
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  impl->fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (impl->fd < 0) throw Error::from_errno(errno, where);
  struct stat st {};
  if (fstat(impl->fd, &st) != 0) throw Error::from_errno(errno, where + ": stat");
  if (!S_ISREG(st.st_mode)) throw Error(Errc::kInvalidArgument, where + ": not a regular file");
  const auto file_size = static_cast<std::uint64_t>(st.st_size);

  impl->mode = resolve_mode(options.mode, impl->fd, path);
  if (impl->mode == LockMode::kNetwork) {
    // No readahead: a page whose read is still in flight when the next
    // acquirer invalidates survives the invalidation, and then holds bytes
    // from before another host's writes. Every read must happen, whole,
    // inside the section that needs it.
    posix_fadvise(impl->fd, 0, 0, POSIX_FADV_RANDOM);
    // Reads that bypass this host's cache, to check what it keeps (see
    // refresh_range); a filesystem without O_DIRECT relies on eviction alone.
    impl->direct_fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    // Our host may cache pages another host has since rewritten.
    posix_fadvise(impl->fd, 0, 0, POSIX_FADV_DONTNEED);
    impl->known_file_size = file_size;
  }
  {
    auto header = std::make_unique<Header>();
    std::memset(header.get(), 0, sizeof(Header));
    ssize_t got = pread(impl->fd, header.get(), sizeof(Header), 0);
    if (got < 0) throw Error::from_errno(errno, where + ": read");
    validate_header(*header, file_size, path);
  }

  impl->reserve =
      align_up(std::max(options.reserve ? options.reserve : kDefaultReserve, file_size), kPageSize);
  void* map =
      mmap(nullptr, impl->reserve, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, impl->fd, 0);
  if (map == MAP_FAILED) {
    throw Error::from_errno(
        errno, where + ": cannot map " + std::to_string(impl->reserve) + " bytes of address space");
  }
  impl->base = static_cast<std::uint8_t*>(map);
  if (impl->mode == LockMode::kNetwork) madvise(map, impl->reserve, MADV_RANDOM);  // see above

  impl->claim_mode();

  // The first process to open the heap is alone with it: it verifies the
  // whole block chain (refusing, untouched, a heap whose chain is broken),
  // resets the lock, which a crashed machine may have left looking held, and
  // repairs the caches if the heap was not closed cleanly. Later openers
  // wait for it on the presence lock.
  bool first = ofd_lock(impl->fd, F_WRLCK, kPresenceLock, 1, false);
  if (first) {
    bool chain_sound = false;
    CheckReport report = impl->check(true, &chain_sound);
    if (!chain_sound) throw Error(Errc::kCorrupted, where + ": " + report.problems.front());
    State& state = impl->state();
    if (impl->mode == LockMode::kLocal) {
      pthread_mutexattr_t attributes;
      pthread_mutexattr_init(&attributes);
      pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
      pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
      pthread_mutex_init(&state.mutex, &attributes);
      pthread_mutexattr_destroy(&attributes);
    }
    const bool repair = !report.ok() || state.clean != 1;
    if (impl->mode == LockMode::kNetwork) impl->unmap_pages();  // see unmap_pages()
    ofd_lock(impl->fd, F_RDLCK, kPresenceLock, 1, false);       // downgrade: others may come in
    // From here on others may be in the heap: write State only under the lock
    // (on a network filesystem a page written outside it can overwrite what
    // another host wrote under it).
    impl->acquire(true);
    if (repair) impl->rebuild(Rebuild::kRecover);
    impl->state().clean = 0;
  } else {
    ofd_lock(impl->fd, F_RDLCK, kPresenceLock, 1, true);
    impl->acquire(true);
  }
  try {
    impl->register_session();
  } catch (...) {
    impl->release();
    throw;
  }
  impl->release();
  return impl;
}

void Heap::Impl::close_file() noexcept {
  if (base == nullptr) return;
  retire_all_caches();
  if (session_slot >= 0) {
    try {
      // Under the heap lock, like every write to State: leave the session
      // table, and if no other process has the heap open (we get the
      // presence lock exclusively), mark it clean so the next first opener
      // can skip repairing it.
      acquire(true);
      unregister_session();
      if (lock_range(fd, F_WRLCK, kPresenceLock, 1, false)) state().clean = 1;
      release();
    } catch (...) {
      // A heap that cannot be locked any more is left for the next opener to repair.
    }
  }
  munmap(base, reserve);
  base = nullptr;
  ::close(fd);  // releases every byte-range lock we held
  fd = -1;
  if (direct_fd >= 0) ::close(direct_fd);
  direct_fd = -1;
}

std::uint64_t Heap::Impl::growth_limit() const {
  std::uint64_t limit = reserve;
  if (header()->identity.max_size != 0) limit = std::min(limit, header()->identity.max_size);
  return limit;
}

}  // namespace sheaf
