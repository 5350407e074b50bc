#include "bag_upload.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "errors.hpp"

namespace sheaf::fs {

void copy_old_bytes(BagUpload& upload, std::uint64_t size,
                    const std::function<bool()>& interrupted) {
  if (!upload.old) return;
  const std::uint64_t end = std::min(size, upload.old_size);
  std::vector<std::byte> buffer;
  for (std::uint64_t at = upload.writer->written(); at < end;) {
    if (interrupted && interrupted()) fail(EINTR);
    buffer.resize(static_cast<std::size_t>(std::min<std::uint64_t>(end - at, 1 << 20)));
    const std::size_t got = upload.old->read(buffer, at);
    if (got == 0) fail(EIO);  // the old version is shorter than its header said
    upload.writer->write(std::span(buffer.data(), got));
    at += got;
  }
}

void abandon(BagUpload& upload, int error) {
  upload.writer.reset();  // removes the temporary file
  if (upload.error == 0) upload.error = error;
}

namespace {

// Best effort: the bag is published whatever its times and mode (a later
// touch, chmod or tar x sets them again through setattr).
void apply_attributes(const BagUpload& upload, const std::string& path) {
  if (upload.times) (void)::utimensat(AT_FDCWD, path.c_str(), upload.times->data(), 0);
  if (upload.mode_set) (void)::chmod(path.c_str(), upload.mode);
}

}  // namespace

void commit_upload(BagUpload& upload, const Store& store,
                   const std::optional<std::string>& new_name, bool replace) {
  const std::string name = new_name.value_or(upload.name);
  const std::string path = store.bag_path(name);
  if (upload.in_place && !upload.size_set && upload.writer->written() == 0) {
    // Opened for writing and closed with nothing written (touch does that):
    // no new version; what was asked of its times goes to the bag as it is.
    upload.writer.reset();
    upload.published = true;
    apply_attributes(upload, path);
    return;
  }
  try {
    // Part of the bag rewritten in place: the rest is the old version's.
    if (upload.in_place && !upload.size_set) copy_old_bytes(upload, upload.old_size, {});
    if (new_name) {
      upload.writer->commit_as(*new_name, replace);
    } else {
      upload.writer->commit();
    }
  } catch (const Error& e) {
    abandon(upload, errno_for(e));
    throw;
  }
  upload.name = name;
  upload.hidden = false;
  upload.published = true;
  upload.writer.reset();
  apply_attributes(upload, path);
}

AtFlush at_flush(const BagUpload& upload, const Closer& closer) {
  if (!upload.writer) return AtFlush::kNothing;  // decided already
  if (closer.dying_of_signal && closer.process == upload.opener) return AtFlush::kAbandon;
  if (closer.answered && closer.process == upload.opener && !closer.holds_another &&
      !upload.hidden) {
    return AtFlush::kPublish;
  }
  // A dup, a forked child or an exec closed a copy (the opener's last close,
  // or the release after the last one, decides), or a hidden temporary.
  return AtFlush::kNothing;
}

AtRelease at_release(const BagUpload& upload, bool opener_alive) {
  // A close that could not be inspected may have been the opener's own,
  // killed mid-write: only a living opener vouches for the bytes.
  if (upload.uninspected_close && !opener_alive) return AtRelease::kAbandon;
  return upload.hidden ? AtRelease::kKeep : AtRelease::kPublish;
}

}  // namespace sheaf::fs
