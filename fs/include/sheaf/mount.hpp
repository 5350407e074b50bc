// sheaf/mount.hpp: a store as a filesystem (libfuse3), for shell tools.
//
//   MOUNT/
//     heaps/<heap>/objects/<name>   the bytes of a named object; size = the object's size
//     heaps/<heap>/info             what `sheaf heap info` prints
//     heaps/<heap>/info.json        what `sheaf heap info --json` prints
//     bags/<bag>                    the bag's payload; xattrs user.sheaf.xxh128,
//                                   user.sheaf.type, user.sheaf.element_size,
//                                   user.sheaf.created, user.sheaf.tag.<key>
//
// The contract (docs/fs.md has the whole of it):
//  - Fresh: every directory listing and every read of an object or info file
//    asks the store, so a change made by any process shows on the next
//    listing or read. Attributes that a listing returned may be reused by the
//    kernel for `listing_ttl` (so that `ls -l` costs one request per page of
//    names, not three per name); a lookup outside a listing is never cached.
//  - Bags are immutable: `cp FILE MOUNT/bags/NAME` (or any create, or an
//    open with O_TRUNC) writes a new bag that appears, checksummed and
//    durable, when the writer closes the file; a writer killed before then
//    leaves nothing. Bags are written front to back (holes allowed).
//  - Objects keep their size: writes inside an object change its bytes under
//    the heap's lock; writes past its end fail with EFBIG, truncation and
//    O_APPEND with EPERM. `rm` frees an object or deletes a bag.
//  - What cannot be honoured fails with an errno and changes nothing: EROFS
//    on a read-only mount, EXDEV for a rename between directories, EPERM for
//    new directories, links, chmod and the like, ENOSPC when the store's
//    filesystem is full.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "sheaf/error.hpp"

namespace sheaf {

struct MountOptions {
  bool read_only = false;
  // Seconds the kernel may keep attributes a directory listing returned.
  double listing_ttl = 1.0;
  // Threads serving requests at most (libfuse's multi-threaded loop).
  unsigned max_threads = 8;
  // Whether `rm` of a file under heaps/H/objects/ frees the object. Off by
  // default: `rm -rf MOUNT/heaps/H` would free every object of the heap,
  // which the programs that use it may not survive; without it, such an
  // unlink fails with EPERM and frees nothing. Bags can always be removed.
  bool allow_object_removal = false;
  // How long a close of a bag being written waits to learn whether its
  // process is dying of a signal (fs/src/closer.hpp). A close that cannot be
  // inspected in time never publishes a bag whose writer is then gone.
  // Tests set 0 to take that path.
  std::chrono::milliseconds closer_wait{100};
};

// Mounts the store at `mountpoint` (an existing empty directory) and serves it
// on this thread until the filesystem is unmounted or the process gets
// SIGINT, SIGTERM or SIGHUP. With `daemonize`, returns in the parent once the
// mount is up and serves from a child process detached from the terminal.
Result<void> serve_mount(const std::string& store, const std::string& mountpoint,
                         const MountOptions& options, bool daemonize = false);

// Unmounts a Sheaf mount. Refuses with Error(kBusy) while files under it are
// open, unless `lazy`: then the mount disappears from the namespace at once
// and is torn down when the last open file is closed. Error(kNotFound) if
// `mountpoint` is not a Sheaf mount.
Result<void> unmount(const std::string& mountpoint, bool lazy = false);

// A mount served by threads of this process, for programs that embed a view
// of their store. Unmounts (lazily) when destroyed, which waits until no file
// under the mount is open. Beware: a process that serves a mount and also
// uses it cannot die cleanly while one of its threads waits on the mount
// (the kernel waits for the server, which is exiting); killed at such a
// moment it hangs until the connection is aborted through
// /sys/fs/fuse/connections. Tests serve from a child process for that reason.
class Mount {
 public:
  static Result<Mount> start(const std::string& store, const std::string& mountpoint,
                             const MountOptions& options = {});
  Mount(Mount&&) noexcept;
  Mount& operator=(Mount&&) noexcept;
  ~Mount();

  const std::string& mountpoint() const noexcept;
  // Unmounts and waits for the serving threads; like unmount(mountpoint, lazy).
  Result<void> stop(bool lazy = false);

  struct Impl;

 private:
  explicit Mount(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sheaf
