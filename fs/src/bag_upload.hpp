// bag_upload.hpp: a bag being written through the mount, and the policy that
// decides, at each close of its file, whether it is published, kept or
// abandoned. Internal to fs/; the policy is unit-tested on its own
// (tests/fs/bag_upload_test.cpp), the handlers in store_fs.cpp apply it.
//
// The life of an upload:
//   created (create, or open with O_TRUNC, or open for writing: in place)
//   -> written front to back (holes allowed)
//   -> at the opener's last close (FLUSH): published, unless the closer is
//      dying of a signal (abandoned) or the file is a hidden temporary (kept)
//   -> at the last RELEASE, if nobody decided before: published, unless a
//      close could not be inspected and the opener is gone (abandoned), or a
//      hidden temporary (kept until renamed to a bag's name, or removed).
#pragma once

#include <sys/stat.h>

#include <array>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "bag_version.hpp"
#include "closer.hpp"
#include "sheaf/bag.hpp"
#include "sheaf/store.hpp"

namespace sheaf::fs {

// A bag being written (closer.hpp says which close publishes it). Every
// field is guarded by `mutex`; the upload is shared by its handle and by the
// mount's table of uploads, so either may outlive the other.
struct BagUpload {
  std::mutex mutex;
  std::string name;
  std::uint64_t serial = 0;         // Node::upload: its own inode until published
  std::uint64_t ino = 0;            // the inode the kernel knows it by (set once, at open)
  pid_t opener = 0;                 // the process that created or opened it
  std::optional<BagWriter> writer;  // empty once published or abandoned
  bool published = false;
  int error = 0;  // why it was abandoned (0: not abandoned)
  mode_t mode = 0644;
  struct timespec created {};
  // Times asked for before it was published (cp -p sets them on the open
  // file), given to the bag's file when it is.
  std::optional<std::array<timespec, 2>> times;
  bool uninspected_close = false;  // a close whose closer could not be inspected in time
  bool mode_set = false;           // mode was set (chmod) and is given to the published file
  // A temporary of rsync's (or any tool's) named .NAME.XXXXXX: written like a
  // bag, kept after its close, and published only when it is renamed to a
  // bag name (or dropped when it is removed or the mount ends).
  bool hidden = false;
  // Opened for writing without O_TRUNC (rsync --inplace, dd conv=notrunc,
  // truncate): a new version of the bag, written front to back, in which
  // every byte the writer skips (a seek past it, a size set past it, or the
  // rest at close) is the old version's byte there, read from `old`, and
  // zero past its end. A write behind what was written is ESPIPE and
  // abandons the upload.
  bool in_place = false;
  std::unique_ptr<BagFile> old;  // the version being rewritten (in_place)
  std::uint64_t old_size = 0;
  bool size_set = false;  // a size was set (ftruncate): the new version ends there
  bool released = false;  // the last descriptor is gone (`released_now` is told)
  std::condition_variable released_now;
  bool writer_done = false;  // its opener closed its last descriptor of it (seen at a close)
};

// In place: copies the old version's bytes from what was written up to
// `size` (at most the old size) into the writer; `interrupted` is asked
// between slices. The caller abandons the upload if this throws.
void copy_old_bytes(BagUpload& upload, std::uint64_t size,
                    const std::function<bool()>& interrupted);

// Abandons the upload for good: nothing of it is ever published, and every
// later write and close reports `error`. Called with its mutex held.
void abandon(BagUpload& upload, int error);

// Publishes the upload under its name, or as `new_name` (a hidden
// temporary's rename; `replace` false: fail with EEXIST if taken), and gives
// the bag's file the times and mode asked of the upload. An in-place
// rewrite is published only if whole; one that wrote nothing publishes
// nothing and only sets times and mode. On failure the upload is abandoned
// and the error thrown. Called with its mutex held.
void commit_upload(BagUpload& upload, const Store& store,
                   const std::optional<std::string>& new_name = std::nullopt, bool replace = true);

// What a close (FLUSH) of the upload's file by `closer` means.
enum class AtFlush {
  kNothing,  // a copy of a descriptor, or a hidden temporary: decide later
  kAbandon,  // the opener is dying of a signal mid-write
  kPublish,  // the opener's last descriptor, closed by a living process
};
AtFlush at_flush(const BagUpload& upload, const Closer& closer);

// What the last release of the file means for an upload still being written.
enum class AtRelease {
  kPublish,  // nobody decided at a close: the last release publishes
  kAbandon,  // a close could not be inspected and the opener is gone
  kKeep,     // a hidden temporary, waiting for its rename
};
AtRelease at_release(const BagUpload& upload, bool opener_alive);

}  // namespace sheaf::fs
