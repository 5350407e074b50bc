#include "store_fs.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <syslog.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <new>
#include <optional>
#include <variant>
#include <vector>

#include "bag_upload.hpp"
#include "bag_version.hpp"
#include "closer.hpp"
#include "handles.hpp"
#include "names.hpp"
#include "object_names.hpp"
#include "request.hpp"
#include "sheaf/bag.hpp"
#include "sheaf/heap_report.hpp"

namespace sheaf::fs {
namespace {

StoreFs& self(fuse_req_t req) {
  return *static_cast<StoreFs*>(fuse_req_userdata(req));
}

}  // namespace

// --- StoreFs ---------------------------------------------------------------------

StoreFs::StoreFs(Store store, MountOptions options)
    : store_(std::move(store)),
      options_(options),
      heaps_(store_),
      watch_(ListingWatch::Checks{[this](const Node& dir) { return directory_version(dir); },
                                  [this](const Node&, const ListingWatch::Entry& entry) {
                                    return still_true(entry);
                                  }},
             std::chrono::milliseconds(20)) {
  store_stat_ = stat_path(store_.path());
}

StoreFs::~StoreFs() = default;

void StoreFs::log(const std::string& message) const {
  if (syslog_) {
    ::syslog(LOG_ERR, "%s", message.c_str());
  } else {
    std::fprintf(stderr, "sheaf mount: %s\n", message.c_str());
  }
}

// --- Requests ----------------------------------------------------------------------

void StoreFs::init(fuse_conn_info* conn) {
  // Listings return attributes too (READDIRPLUS), always, not by heuristics:
  // that is what makes `ls -l` cheap while lookups stay uncached.
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  // open(O_TRUNC) arrives as one request, so replacing a bag is one step.
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  // Cached pages are only ever a bag's, whose bytes never change under one
  // inode number; objects and info files bypass the cache. So the kernel
  // need not ask for attributes before reading cached pages.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  conn->max_readahead = std::max<unsigned>(conn->max_readahead, 1u << 20);
}

void StoreFs::lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  guarded(*this, req, [&] {
    struct stat attr {};
    const Node node = child(node_of(parent), name, &attr);
    const fuse_entry_param e = entry(node, attr, lifetimes(node));
    fuse_reply_entry(req, &e);
  });
}

void StoreFs::forget(fuse_ino_t ino, std::uint64_t lookups) {
  nodes_.forget(ino, lookups);
}

void StoreFs::getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  guarded(*this, req, [&] {
    if (std::shared_ptr<BagUpload> upload = upload_for(ino, fi)) {
      // Being written, or written through this mount and published since.
      const struct stat attr = upload_attributes(*upload, ino);
      fuse_reply_attr(req, &attr, 0);
      return;
    }
    if (BagFile* bag = file_as<BagFile>(fi)) {
      // An open bag is the version that was opened, removed or replaced since
      // or not (st_nlink tells).
      struct stat now {};
      if (::fstat(bag->fd, &now) != 0) fail(errno);
      struct stat attr = bag_attr(now, bag->info.size);
      attr.st_nlink = now.st_nlink;
      attr.st_ino = ino;
      fuse_reply_attr(req, &attr, 0);
      return;
    }
    const Node node = node_of(ino);
    const struct stat attr = attributes(node, ino);
    fuse_reply_attr(req, &attr, lifetimes(node).attributes);
  });
}

namespace {

constexpr int kTimes = FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME |
                       FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME;

// Refuses (EPERM) a change of mode or owner that would change something: tools
// that copy attributes (cp -p, cp -a, install, tar x, mv from elsewhere) set
// them whether they differ or not, and only a real change cannot be kept.
void require_same_mode_and_owner(const struct stat& now, const struct stat& wanted, int to_set) {
  if ((to_set & FUSE_SET_ATTR_MODE) && (wanted.st_mode & 07777) != (now.st_mode & 07777)) {
    fail(EPERM);
  }
  if ((to_set & FUSE_SET_ATTR_UID) && wanted.st_uid != now.st_uid) fail(EPERM);
  if ((to_set & FUSE_SET_ATTR_GID) && wanted.st_gid != now.st_gid) fail(EPERM);
}

// The two times utimensat() takes for what setattr asked (UTIME_OMIT where
// it asked nothing, UTIME_NOW for "now").
std::array<timespec, 2> requested_times(const struct stat& wanted, int to_set) {
  std::array<timespec, 2> times{};
  times[0].tv_nsec = UTIME_OMIT;
  times[1].tv_nsec = UTIME_OMIT;
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
    times[0].tv_nsec = UTIME_NOW;
  } else if (to_set & FUSE_SET_ATTR_ATIME) {
    times[0] = wanted.st_atim;
  }
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
    times[1].tv_nsec = UTIME_NOW;
  } else if (to_set & FUSE_SET_ATTR_MTIME) {
    times[1] = wanted.st_mtim;
  }
  return times;
}

}  // namespace

// What can be set: a bag's times (kept on its file, as tar x and cp -p want),
// a bag being written extended with zeros (cp of a sparse file does that),
// and, for everything, whatever changes nothing (the same mode, owner or
// size). Anything else is EPERM.
void StoreFs::setattr(fuse_req_t req, fuse_ino_t ino, struct stat* wanted, int to_set,
                      fuse_file_info* fi) {
  guarded(*this, req, [&] {
    if (options_.read_only) fail(EROFS);
    constexpr int kSettable =
        kTimes | FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID;
    if ((to_set & ~kSettable) != 0) fail(EPERM);
    // Bags are data: a mode keeps its read and write bits; execute, set-id
    // and sticky bits are dropped (rsync -a and install -m 755 of programs).
    std::shared_ptr<BagUpload> upload = upload_for(ino, fi);
    // A new version being written in place has the bag's inode: a change by
    // path from another process is about the bag as it is, not that upload.
    if (upload && fi == nullptr && upload->in_place &&
        process_of(fuse_req_ctx(req)->pid) != upload->opener) {
      upload = nullptr;
    }
    if (upload) {
      std::unique_lock lock(upload->mutex);
      if (!upload->published) {
        // A mode is kept, and given to the bag's file when it is published
        // (install sets 0600 on the open file, then the mode it was asked for).
        const struct stat now = file_attr(store_stat_, 0, wanted->st_mode & 0666);
        require_same_mode_and_owner(now, *wanted, to_set & ~FUSE_SET_ATTR_MODE);
        if (to_set & FUSE_SET_ATTR_MODE) {
          upload->mode = wanted->st_mode & 0666;
          upload->mode_set = true;
        }
        if (to_set & FUSE_SET_ATTR_SIZE) {
          extend(req, *upload, static_cast<std::uint64_t>(wanted->st_size));
          upload->size_set = true;
        }
        // Times asked of a bag not yet published are given to its file
        // when it is (commit_upload()).
        if (to_set & kTimes) upload->times = requested_times(*wanted, to_set);
        lock.unlock();
        const struct stat attr = upload_attributes(*upload, ino);
        fuse_reply_attr(req, &attr, 0);
        return;
      }
    }
    const Node node = node_of(ino);
    struct stat attr = attributes(node, ino);
    // A bag's mode is its file's (read and write bits: bags are data); an
    // object's is its heap's, shared with every other object.
    const bool bag_mode = node.kind == NodeKind::kBag && (to_set & FUSE_SET_ATTR_MODE);
    require_same_mode_and_owner(attr, *wanted, bag_mode ? to_set & ~FUSE_SET_ATTR_MODE : to_set);
    if (bag_mode && ::chmod(store_.bag_path(node.name).c_str(), wanted->st_mode & 0666) != 0) {
      fail(errno);
    }
    if ((to_set & FUSE_SET_ATTR_SIZE) && attr.st_size != wanted->st_size) fail(EPERM);
    if (to_set & kTimes) {
      // A bag's times are its file's, and the store's directories' are
      // theirs (rsync -a sets bags/'s); an object's are its heap's.
      std::string path;
      if (node.kind == NodeKind::kBag) {
        path = store_.bag_path(node.name);
      } else if (node.kind == NodeKind::kBagsDir) {
        path = store_.path() + "/bags";
      } else if (node.kind == NodeKind::kHeapsDir) {
        path = store_.path() + "/heaps";
      } else if (node.kind == NodeKind::kRoot) {
        path = store_.path();
      } else {
        fail(EPERM);
      }
      const std::array<timespec, 2> times = requested_times(*wanted, to_set);
      if (::utimensat(AT_FDCWD, path.c_str(), times.data(), 0) != 0) fail(errno);
    }
    if (bag_mode || (to_set & kTimes)) attr = attributes(node, ino);
    fuse_reply_attr(req, &attr, 0);
  });
}

void StoreFs::opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  guarded(*this, req, [&] {
    // The listing is taken now, whole: readdir pages through this snapshot,
    // so entries neither repeat nor vanish between pages.
    auto dir = std::make_unique<DirHandle>();
    const Node node = node_of(ino);
    const bool watched = node.kind == NodeKind::kObjectsDir || node.kind == NodeKind::kBagsDir;
    const std::uint64_t version = watched ? directory_version(node) : 0;
    fill_directory(*dir, node, ino);
    if (watched && options_.listing_ttl > 0) {
      std::vector<ListingWatch::Entry> entries;
      entries.reserve(dir->entries.size());
      for (const DirHandle::Entry& item : dir->entries) {
        if (item.node.kind != NodeKind::kObject && item.node.kind != NodeKind::kBag) continue;
        entries.push_back({item.name, item.node, static_cast<std::uint64_t>(item.attr.st_size)});
      }
      watch_.listed(ino, node, version, std::move(entries),
                    std::chrono::duration<double>(options_.listing_ttl));
    }
    fi->fh = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(dir.release()));
    if (fuse_reply_open(req, fi) != 0) {  // no releasedir will come
      delete reinterpret_cast<DirHandle*>(static_cast<std::uintptr_t>(fi->fh));
    }
  });
}

void StoreFs::readdir(fuse_req_t req, fuse_ino_t, std::size_t size, off_t offset,
                      fuse_file_info* fi, bool plus) {
  guarded(*this, req, [&] {
    auto& dir = *reinterpret_cast<DirHandle*>(static_cast<std::uintptr_t>(fi->fh));
    std::vector<char> buffer(size);
    std::size_t used = 0;
    for (auto i = static_cast<std::size_t>(offset); i < dir.entries.size(); ++i) {
      const DirHandle::Entry& item = dir.entries[i];
      const auto next = static_cast<off_t>(i + 1);
      char* at = buffer.data() + used;
      const std::size_t room = size - used;
      std::size_t need = 0;
      if (plus) {
        need = fuse_add_direntry_plus(req, nullptr, 0, item.name.c_str(), nullptr, 0);
        if (need > room) break;
        fuse_entry_param e{};
        e.attr = item.attr;
        if (item.name != "." && item.name != "..") {
          // The kernel counts a lookup for each entry it is given, and may
          // keep its attributes for listing_ttl seconds.
          e = entry(item.node, item.attr, {options_.listing_ttl, options_.listing_ttl});
        }
        fuse_add_direntry_plus(req, at, room, item.name.c_str(), &e, next);
      } else {
        need = fuse_add_direntry(req, nullptr, 0, item.name.c_str(), nullptr, 0);
        if (need > room) break;
        fuse_add_direntry(req, at, room, item.name.c_str(), &item.attr, next);
      }
      used += need;
    }
    fuse_reply_buf(req, buffer.data(), used);
  });
}

void StoreFs::releasedir(fuse_req_t req, fuse_file_info* fi) {
  delete reinterpret_cast<DirHandle*>(static_cast<std::uintptr_t>(fi->fh));
  fuse_reply_err(req, 0);
}

std::shared_ptr<BagUpload> StoreFs::start_upload(const std::string& name, mode_t mode,
                                                 pid_t opener_thread, bool replace,
                                                 std::unique_ptr<BagFile> old, bool keep_mode) {
  auto upload = std::make_shared<BagUpload>();
  upload->name = name;
  upload->hidden = hidden_upload_name(name);
  upload->serial = next_upload_.fetch_add(1) + 1;
  upload->opener = process_of(opener_thread);  // it is in open(): no exec can block this
  BagWriteOptions write_options;
  write_options.replace = replace;  // O_EXCL: the publishing rename must not replace
  if (old) {
    // A new version in place: of the same type, with the same tags.
    write_options.element_type = old->info.element_type;
    write_options.element_size = old->info.element_size;
    write_options.tags = old->info.tags;
    upload->in_place = true;
    upload->old_size = old->info.size;
    upload->old = std::move(old);
  }
  upload->mode = mode;
  upload->mode_set = keep_mode;  // a rewritten bag keeps its mode
  ::clock_gettime(CLOCK_REALTIME, &upload->created);
  // Checked and registered under one lock, so of two exclusive creates of
  // one name racing here, exactly one goes on.
  std::lock_guard lock(uploads_mutex_);
  if (!replace) {
    // O_EXCL while another upload of the name is under way: that one will be
    // published, so this one would fail with EEXIST at close after writing
    // everything (cp's racing copies). Say so now.
    for (const auto& [serial, other] : uploads_) {
      if (other->name != name) continue;
      std::lock_guard other_lock(other->mutex);
      if (other->writer && other->error == 0) fail(EEXIST);
    }
  }
  // A hidden one's writer goes by the name without its dot until renamed.
  upload->writer.emplace(
      store_.create_bag(upload->hidden ? hidden_upload_writer_name(name) : name, write_options));
  uploads_[upload->serial] = upload;
  return upload;
}

// While being written: its size so far. Once published: the bag's.
struct stat StoreFs::upload_attributes(BagUpload& upload, fuse_ino_t ino) {
  std::unique_lock lock(upload.mutex);
  if (upload.published) {
    const std::string name = upload.name;
    lock.unlock();
    struct stat attr {};
    child(plain_node(NodeKind::kBagsDir), name, &attr);
    attr.st_ino = ino;
    return attr;
  }
  struct stat attr =
      file_attr(store_stat_, upload.writer ? upload.writer->written() : 0, upload.mode & 0666);
  attr.st_mtim = attr.st_ctim = attr.st_atim = upload.created;
  attr.st_ino = ino;
  return attr;
}

// Extends the upload with zeros to `size` bytes (a hole where the filesystem
// has them). Hashing zeros runs at memory speed, so the hole is bounded by
// the store filesystem's size, and hashed a slice at a time so that a killed
// caller (the kernel interrupts the request) is not kept waiting.
void StoreFs::extend(fuse_req_t req, BagUpload& upload, std::uint64_t size) {
  if (upload.error != 0) fail(upload.error);
  if (!upload.writer) fail(EPERM);  // published already
  const std::uint64_t written = upload.writer->written();
  if (size < written) {
    abandon(upload, ESPIPE);  // written front to back: what it holds is no longer what was asked
    fail(ESPIPE);
  }
  if (size == written) return;
  struct statvfs fs {};
  if (::statvfs(store_.path().c_str(), &fs) == 0 &&
      size / fs.f_frsize > static_cast<std::uint64_t>(fs.f_blocks)) {
    fail(EFBIG);
  }
  constexpr std::uint64_t kSlice = 256 << 20;
  try {
    copy_old_bytes(upload, size, [&] { return fuse_req_interrupted(req) != 0; });
    for (std::uint64_t at = upload.writer->written(); at < size;
         at += std::min(kSlice, size - at)) {
      if (fuse_req_interrupted(req)) fail(EINTR);
      upload.writer->skip_zeros(std::min(kSlice, size - at));
    }
  } catch (const Errno& e) {
    abandon(upload, e.value);
    throw;
  } catch (const Error& e) {
    abandon(upload, errno_for(e));
    throw;
  }
}

void StoreFs::open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  guarded(*this, req, [&] {
    const Node node = node_of(ino);
    const bool writing = (fi->flags & O_ACCMODE) != O_RDONLY;
    if (writing && options_.read_only) fail(EROFS);
    auto handle = std::make_unique<Handle>();
    switch (node.kind) {
      case NodeKind::kObject: {
        // An object's size is fixed when it is constructed.
        if (writing && (fi->flags & (O_TRUNC | O_APPEND))) fail(EPERM);
        attributes(node, ino);  // ESTALE if the name now means another object
        handle->file = ObjectFile{node.heap, node.name, node.identity};
        fi->direct_io = 1;  // every read asks the heap: never a stale byte
        break;
      }
      case NodeKind::kInfoText:
      case NodeKind::kInfoJson: {
        if (writing) fail(EPERM);
        const HeapInfo info = heaps_.get(node.heap)->info();
        handle->file = TextFile{node.kind == NodeKind::kInfoText ? heap_info_text(info)
                                                                 : heap_info_json(info)};
        fi->direct_io = 1;
        break;
      }
      case NodeKind::kBag: {
        if (writing) {
          // Bags are immutable: a write makes a whole new version, with the
          // bag's mode. Without O_TRUNC (rsync --inplace, dd conv=notrunc)
          // what the writer skips is the old version's (bag_upload.hpp).
          if (fi->flags & O_APPEND) fail(EPERM);
          const struct stat attr = attributes(node, ino);
          std::unique_ptr<BagFile> old;
          if (!(fi->flags & O_TRUNC)) {
            old = open_bag_version(store_.bag_path(node.name));
            if (old->identity() != node.identity) fail(ESTALE);  // replaced meanwhile
          }
          std::shared_ptr<BagUpload> upload =
              start_upload(node.name, attr.st_mode & 0666, fuse_req_ctx(req)->pid, true,
                           std::move(old), /*keep_mode=*/true);
          set_upload_inode(*upload, ino);
          handle->file = std::move(upload);
          fi->direct_io = 1;
          break;
        }
        if (node.upload != 0) fail(ESTALE);
        std::unique_ptr<BagFile> bag = open_bag_version(store_.bag_path(node.name));
        if (bag->identity() != node.identity) fail(ESTALE);  // replaced: look it up again
        handle->file = std::move(bag);
        // A bag's bytes never change under one inode number (a new version
        // is a new inode), so the kernel may keep what it has read.
        fi->keep_cache = 1;
        break;
      }
      default:
        fail(EISDIR);
    }
    set_handle(fi, std::move(handle));
    if (fuse_reply_open(req, fi) != 0) {  // the opener is gone: no release will come
      if (BagUpload* upload = file_as<BagUpload>(fi)) forget_upload(*upload);
      delete &handle_of(fi);
    }
  });
}

void StoreFs::create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
                     fuse_file_info* fi) {
  guarded(*this, req, [&] {
    if (options_.read_only) fail(EROFS);
    const Node parent_node = node_of(parent);
    if (parent_node.kind != NodeKind::kBagsDir) fail(EPERM);  // only bags are made by writing
    const bool hidden = hidden_upload_name(name);
    if (!hidden && !valid_name(name)) fail(name_errno(name, EINVAL));
    if (!hidden && (fi->flags & O_EXCL) && ::access(store_.bag_path(name).c_str(), F_OK) == 0) {
      fail(EEXIST);
    }
    auto handle = std::make_unique<Handle>();
    auto upload = start_upload(name, mode, fuse_req_ctx(req)->pid, !(fi->flags & O_EXCL));
    struct stat attr = file_attr(store_stat_, 0, mode & 0666);
    attr.st_atim = attr.st_mtim = attr.st_ctim = upload->created;
    // Not cached: until it is committed, nobody else can look the bag up.
    const fuse_entry_param e =
        entry(Node{NodeKind::kBag, {}, name, 0, upload->serial}, attr, {0, 0});
    set_upload_inode(*upload, e.ino);
    handle->file = std::move(upload);
    fi->direct_io = 1;
    set_handle(fi, std::move(handle));
    if (fuse_reply_create(req, &e, fi) != 0) {
      forget_upload(*file_as<BagUpload>(fi));
      delete &handle_of(fi);  // the creator is gone: no release will come
    }
  });
}

void StoreFs::read(fuse_req_t req, std::size_t size, off_t offset, fuse_file_info* fi) {
  guarded(*this, req, [&] {
    const auto at = static_cast<std::uint64_t>(offset);
    if (BagFile* bag = file_as<BagFile>(fi)) {
      const std::uint64_t length =
          at >= bag->info.size ? 0 : std::min<std::uint64_t>(size, bag->info.size - at);
      // pread, not a mapping: a bag file cut short behind Sheaf's back then
      // gives a short read instead of a SIGBUS in the server. (Splicing the
      // file's pages measured no faster here.)
      thread_local std::vector<std::byte> buffer;
      buffer.resize(length);
      const std::size_t done = bag->read(buffer, at);
      fuse_reply_buf(req, reinterpret_cast<const char*>(buffer.data()), done);
    } else if (TextFile* text = file_as<TextFile>(fi)) {
      const std::size_t from = std::min<std::size_t>(at, text->text.size());
      const std::size_t length = std::min(size, text->text.size() - from);
      // A copy: once the reply is written the reader may close, and another
      // thread free the handle, before the write call has returned.
      const std::string part = text->text.substr(from, length);
      fuse_reply_buf(req, part.data(), part.size());
    } else if (ObjectFile* object = file_as<ObjectFile>(fi)) {
      std::shared_ptr<Heap> heap = heaps_.get(object->heap);
      std::vector<char> out;
      heap->shared([&] {
        std::optional<ObjectInfo> now = heap->object(object->name);
        // Destroyed since open, or replaced (even by one of the same size at
        // the same offset): each read checks, so a reader gets bytes of the
        // object it opened, or ESTALE, never some of each.
        if (!now || object_identity(*now) != object->identity) fail(ESTALE);
        const std::span<const std::byte> bytes = heap->object_bytes(object->name);
        if (at < bytes.size()) {
          const std::size_t length = std::min<std::uint64_t>(size, bytes.size() - at);
          out.resize(length);
          std::memcpy(out.data(), bytes.data() + at, length);
        }
      });
      fuse_reply_buf(req, out.data(), out.size());
    } else {
      fail(EBADF);
    }
  });
}

void StoreFs::write(fuse_req_t req, const char* data, std::size_t size, off_t offset,
                    fuse_file_info* fi) {
  guarded(*this, req, [&] {
    const auto at = static_cast<std::uint64_t>(offset);
    if (BagUpload* upload = file_as<BagUpload>(fi)) {
      {
        std::lock_guard lock(upload->mutex);
        extend(req, *upload, at);  // a hole of zeros if it skips ahead
        try {
          upload->writer->write({reinterpret_cast<const std::byte*>(data), size});
        } catch (const Error& e) {
          // The bag is not what its writer wrote, so it must never be published.
          abandon(*upload, errno_for(e));
          throw;
        } catch (...) {
          abandon(*upload, EIO);
          throw;
        }
      }
      fuse_reply_write(req, size);
    } else if (ObjectFile* object = file_as<ObjectFile>(fi)) {
      std::shared_ptr<Heap> heap = heaps_.get(object->heap);
      heap->exclusive([&] {
        std::optional<ObjectInfo> now = heap->object(object->name);
        if (!now || object_identity(*now) != object->identity) fail(ESTALE);
        const std::span<const std::byte> bytes = heap->object_bytes(object->name);
        if (at > bytes.size() || size > bytes.size() - at) fail(EFBIG);  // objects never grow
        std::memcpy(const_cast<std::byte*>(bytes.data()) + at, data, size);
      });
      fuse_reply_write(req, size);
    } else {
      fail(EBADF);
    }
  });
}

void StoreFs::flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  guarded(*this, req, [&] {
    if (BagUpload* upload = file_as<BagUpload>(fi)) {
      const Closer closer = inspect_closer(fuse_req_ctx(req)->pid, ino, options_.closer_wait);
      std::lock_guard lock(upload->mutex);
      if (!closer.answered) upload->uninspected_close = true;
      if (closer.answered && closer.process == upload->opener && !closer.holds_another) {
        upload->writer_done = true;  // (its release may come later: it is asynchronous)
      }
      if (upload->error != 0) fail(upload->error);  // close() reports what went wrong
      switch (at_flush(*upload, closer)) {
        case AtFlush::kAbandon:
          abandon(*upload, EIO);  // the writer was killed mid-write: nothing is published
          break;
        case AtFlush::kPublish:
          // Now, so that `cp` returns once the bag is there, and close()
          // reports a failure (ENOSPC).
          commit_upload(*upload, store_);
          break;
        case AtFlush::kNothing:
          break;
      }
    }
    fuse_reply_err(req, 0);
  });
}

void StoreFs::release(fuse_req_t req, fuse_file_info* fi) {
  if (BagUpload* upload = file_as<BagUpload>(fi)) {
    std::unique_lock lock(upload->mutex);
    const AtRelease action =
        upload->writer
            // (The opener's liveness matters only after an uninspected close.)
            ? at_release(*upload, !upload->uninspected_close || process_alive(upload->opener))
            : AtRelease::kPublish;
    upload->released = true;
    upload->released_now.notify_all();
    if (upload->writer && action == AtRelease::kKeep) {
      // A hidden temporary, kept written until it is renamed to a bag's name
      // or removed (rename_hidden, unlink); it stays in uploads_ meanwhile.
      lock.unlock();
    } else {
      lock.unlock();
      forget_upload(*upload);
      lock.lock();
      if (upload->writer && action == AtRelease::kAbandon) {
        abandon(*upload, EIO);
        log(upload->name + ": not published: its writer (pid " + std::to_string(upload->opener) +
            ") is gone and its close could not be inspected, so it may have been killed "
            "mid-write");
      }
      // Nobody can be told of a failure now.
      if (upload->writer) {
        try {
          commit_upload(*upload, store_);
        } catch (const std::exception& e) {
          log(upload->name + ": not published: " + e.what());
        } catch (const Errno& e) {
          log(upload->name + ": not published: " + std::strerror(e.value));
        }
      }
    }
  }
  delete &handle_of(fi);
  fuse_reply_err(req, 0);
}

// The hidden upload (see BagUpload::hidden) called `name`, if any.
std::shared_ptr<BagUpload> StoreFs::hidden_upload(const std::string& name) {
  std::lock_guard lock(uploads_mutex_);
  for (const auto& [serial, upload] : uploads_) {
    if (upload->hidden && upload->name == name) {
      std::lock_guard upload_lock(upload->mutex);
      if (upload->writer) return upload;
    }
  }
  return nullptr;
}

// rsync's last step: its temporary .NAME.XXXXXX renamed to NAME. The bag is
// published under the new name then (replacing one unless RENAME_NOREPLACE),
// with the times and mode set on the temporary.
void StoreFs::rename_hidden(fuse_req_t req, const std::string& name, const std::string& new_name,
                            unsigned int flags) {
  if (flags & RENAME_EXCHANGE) fail(EINVAL);
  if (!valid_name(new_name)) fail(name_errno(new_name, EPERM));
  const std::shared_ptr<BagUpload> upload = hidden_upload(name);
  if (!upload) fail(ENOENT);
  {
    std::unique_lock lock(upload->mutex);
    // Its writer may still add to it: published now, it would be cut short.
    // A writer that closed it but whose close could not be inspected is
    // followed by the release, asynchronously and soon: wait for it a little.
    upload->released_now.wait_for(lock, std::chrono::seconds(2),
                                  [&] { return upload->released || upload->writer_done; });
    if (upload->error != 0) fail(upload->error);
    if (!upload->writer) fail(ENOENT);
    if (!upload->released && !upload->writer_done) fail(EBUSY);
    commit_upload(*upload, store_, new_name, !(flags & RENAME_NOREPLACE));
  }
  forget_upload(*upload);
  fuse_reply_err(req, 0);
}

// The upload behind a request: its handle's, or (the kernel asks by inode
// number too) the one the inode was made for, if it is still open.
std::shared_ptr<BagUpload> StoreFs::upload_for(fuse_ino_t ino, fuse_file_info* fi) {
  if (fi != nullptr && fi->fh != 0) {
    if (auto* p = std::get_if<std::shared_ptr<BagUpload>>(&handle_of(fi).file)) return *p;
  }
  // By inode: a new bag's own, or an existing bag's that is being rewritten
  // (open with O_TRUNC); an unpublished upload first. Few are ever open.
  std::lock_guard lock(uploads_mutex_);
  std::shared_ptr<BagUpload> found;
  for (const auto& [serial, upload] : uploads_) {
    if (upload->ino != ino) continue;
    std::lock_guard upload_lock(upload->mutex);
    if (!found || !upload->published) found = upload;
  }
  return found;
}

void StoreFs::set_upload_inode(BagUpload& upload, fuse_ino_t ino) {
  std::lock_guard lock(uploads_mutex_);
  upload.ino = ino;
}

void StoreFs::forget_upload(const BagUpload& upload) {
  std::lock_guard lock(uploads_mutex_);
  uploads_.erase(upload.serial);
}

void StoreFs::unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  guarded(*this, req, [&] {
    if (options_.read_only) fail(EROFS);
    const Node parent_node = node_of(parent);
    bool removed = false;
    if (parent_node.kind == NodeKind::kBagsDir && hidden_upload_name(name)) {
      const std::shared_ptr<BagUpload> upload = hidden_upload(name);
      if (upload) {
        {
          std::lock_guard lock(upload->mutex);
          abandon(*upload, ENOENT);  // a writer still at it gets ENOENT from now on
        }
        forget_upload(*upload);
      }
      removed = upload != nullptr;
    } else if (parent_node.kind == NodeKind::kBagsDir) {
      if (!valid_name(name)) fail(ENOENT);
      removed = store_.remove_bag(name);
      // A bag being written under that name goes too, as a file being
      // written does when it is removed: it will never be published.
      std::lock_guard lock(uploads_mutex_);
      for (const auto& [serial, upload] : uploads_) {
        std::lock_guard upload_lock(upload->mutex);
        if (upload->name != name || upload->hidden || !upload->writer) continue;
        abandon(*upload, ENOENT);
        removed = true;
      }
    } else if (parent_node.kind == NodeKind::kObjectsDir) {
      const std::optional<std::string> object_name = object_name_of(name);
      if (!object_name) fail(ENOENT);
      if (!options_.allow_object_removal) fail(EPERM);  // see MountOptions
      removed = heaps_.get(parent_node.heap)->erase(*object_name);
    } else {
      fail(EPERM);  // info files and the fixed directories stay
    }
    if (!removed) fail(ENOENT);
    fuse_reply_err(req, 0);
  });
}

void StoreFs::rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
                     const char* new_name, unsigned int flags) {
  guarded(*this, req, [&] {
    if (options_.read_only) fail(EROFS);
    const Node from = node_of(parent);
    const Node to = node_of(new_parent);
    const bool from_bags = from.kind == NodeKind::kBagsDir;
    const bool from_objects = from.kind == NodeKind::kObjectsDir;
    if (!from_bags && !from_objects) fail(EPERM);
    // Between bags and objects, or between heaps: the names live in
    // different places, so it would be a copy, which rename is not.
    if (from.kind != to.kind || from.heap != to.heap) fail(EXDEV);
    if (from_objects) fail(EPERM);  // a heap's names are fixed at construction
    if (hidden_upload_name(name)) return rename_hidden(req, name, new_name, flags);
    if (!valid_name(name)) fail(ENOENT);
    // Not EINVAL, which mv explains as "a subdirectory of itself".
    if (!valid_name(new_name)) fail(name_errno(new_name, EPERM));
    if (flags & ~RENAME_NOREPLACE) fail(EINVAL);  // RENAME_EXCHANGE, RENAME_WHITEOUT
    store_.rename_bag(name, new_name, !(flags & RENAME_NOREPLACE));
    fuse_reply_err(req, 0);
  });
}

void StoreFs::statfs(fuse_req_t req) {
  guarded(*this, req, [&] {
    struct statvfs st {};
    if (::statvfs(store_.path().c_str(), &st) != 0) fail(errno);
    fuse_reply_statfs(req, &st);
  });
}

namespace {

// Namespaces this filesystem has nothing in. Answering "not supported"
// (rather than "no such attribute") lets ls and cp stop asking for every
// file: coreutils remembers it per filesystem.
bool unsupported_namespace(const std::string& name) {
  return name.rfind("user.", 0) != 0;
}

}  // namespace

void StoreFs::getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, std::size_t size) {
  guarded(*this, req, [&] {
    if (unsupported_namespace(name)) fail(EOPNOTSUPP);
    const std::map<std::string, std::string> attrs = xattrs(node_of(ino));
    auto it = attrs.find(name);
    if (it == attrs.end()) fail(ENODATA);
    if (size == 0) {
      fuse_reply_xattr(req, it->second.size());
    } else if (size < it->second.size()) {
      fail(ERANGE);
    } else {
      fuse_reply_buf(req, it->second.data(), it->second.size());
    }
  });
}

void StoreFs::listxattr(fuse_req_t req, fuse_ino_t ino, std::size_t size) {
  guarded(*this, req, [&] {
    std::string names;
    for (const auto& [name, value] : xattrs(node_of(ino))) names += name + '\0';
    if (size == 0) {
      fuse_reply_xattr(req, names.size());
    } else if (size < names.size()) {
      fail(ERANGE);
    } else {
      fuse_reply_buf(req, names.data(), names.size());
    }
  });
}

void StoreFs::setxattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  guarded(*this, req, [&] {
    if (options_.read_only) fail(EROFS);
    if (unsupported_namespace(name)) fail(EOPNOTSUPP);
    node_of(ino);
    fail(EPERM);  // a bag's metadata is part of its checksummed header: immutable
  });
}

// --- The operation table -------------------------------------------------------------

namespace {

void refuse(fuse_req_t req) {
  fuse_reply_err(req, EPERM);
}

const fuse_lowlevel_ops kOperations = [] {
  fuse_lowlevel_ops ops{};
  ops.init = [](void* userdata, fuse_conn_info* conn) {
    static_cast<StoreFs*>(userdata)->init(conn);
  };
  ops.lookup = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
    self(req).lookup(req, parent, name);
  };
  ops.forget = [](fuse_req_t req, fuse_ino_t ino, std::uint64_t lookups) {
    self(req).forget(ino, lookups);
    fuse_reply_none(req);
  };
  ops.forget_multi = [](fuse_req_t req, std::size_t count, fuse_forget_data* forgets) {
    for (std::size_t i = 0; i < count; ++i) self(req).forget(forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
  };
  ops.getattr = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    self(req).getattr(req, ino, fi);
  };
  ops.setattr = [](fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                   fuse_file_info* fi) { self(req).setattr(req, ino, attr, to_set, fi); };
  ops.opendir = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    self(req).opendir(req, ino, fi);
  };
  ops.readdir = [](fuse_req_t req, fuse_ino_t ino, std::size_t size, off_t offset,
                   fuse_file_info* fi) { self(req).readdir(req, ino, size, offset, fi, false); };
  ops.readdirplus = [](fuse_req_t req, fuse_ino_t ino, std::size_t size, off_t offset,
                       fuse_file_info* fi) { self(req).readdir(req, ino, size, offset, fi, true); };
  ops.releasedir = [](fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
    self(req).releasedir(req, fi);
  };
  ops.open = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    self(req).open(req, ino, fi);
  };
  ops.create = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
                  fuse_file_info* fi) { self(req).create(req, parent, name, mode, fi); };
  ops.read = [](fuse_req_t req, fuse_ino_t, std::size_t size, off_t offset, fuse_file_info* fi) {
    self(req).read(req, size, offset, fi);
  };
  ops.write = [](fuse_req_t req, fuse_ino_t, const char* data, std::size_t size, off_t offset,
                 fuse_file_info* fi) { self(req).write(req, data, size, offset, fi); };
  ops.flush = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    self(req).flush(req, ino, fi);
  };
  ops.release = [](fuse_req_t req, fuse_ino_t, fuse_file_info* fi) { self(req).release(req, fi); };
  // Bags are durable once closed; until then there is nothing to sync.
  ops.fsync = [](fuse_req_t req, fuse_ino_t, int, fuse_file_info*) { fuse_reply_err(req, 0); };
  ops.unlink = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
    self(req).unlink(req, parent, name);
  };
  ops.rename = [](fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
                  const char* new_name, unsigned int flags) {
    self(req).rename(req, parent, name, new_parent, new_name, flags);
  };
  ops.statfs = [](fuse_req_t req, fuse_ino_t) { self(req).statfs(req); };
  ops.getxattr = [](fuse_req_t req, fuse_ino_t ino, const char* name, std::size_t size) {
    self(req).getxattr(req, ino, name, size);
  };
  ops.listxattr = [](fuse_req_t req, fuse_ino_t ino, std::size_t size) {
    self(req).listxattr(req, ino, size);
  };
  ops.setxattr = [](fuse_req_t req, fuse_ino_t ino, const char* name, const char*, std::size_t,
                    int) { self(req).setxattr(req, ino, name); };
  ops.removexattr = [](fuse_req_t req, fuse_ino_t ino, const char* name) {
    self(req).setxattr(req, ino, name);
  };
  // New directories, links and device files have no place in a store.
  ops.mkdir = [](fuse_req_t req, fuse_ino_t, const char*, mode_t) { refuse(req); };
  ops.rmdir = [](fuse_req_t req, fuse_ino_t, const char*) { refuse(req); };
  ops.mknod = [](fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) { refuse(req); };
  ops.symlink = [](fuse_req_t req, const char*, fuse_ino_t, const char*) { refuse(req); };
  ops.link = [](fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) { refuse(req); };
  return ops;
}();

}  // namespace

const fuse_lowlevel_ops& StoreFs::operations() {
  return kOperations;
}

}  // namespace sheaf::fs
