// store.cpp: the store directory: layout, names, bags in it, heaps in it.
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "../posix.hpp"
#include "bag_impl.hpp"

namespace sheaf {
namespace {

constexpr const char* kMarker = ".sheaf-store";
constexpr const char* kMarkerFirstLine = "sheaf-store 1";

void make_directory(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    throw Error::from_errno(errno, "store: cannot create " + path);
  }
}

// Names of the files in dir ending in suffix, without it, sorted.
std::vector<std::string> names_in(const std::string& dir, const std::string& suffix) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) throw Error::from_errno(errno, "store: cannot list " + dir);
  while (const dirent* entry = ::readdir(d)) {
    const std::string file = entry->d_name;
    if (file.size() > suffix.size() && file[0] != '.' &&
        file.compare(file.size() - suffix.size(), suffix.size(), suffix) == 0) {
      names.push_back(file.substr(0, file.size() - suffix.size()));
    }
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// tmp/ itself is flock()ed: shared while a writer creates and locks its
// temporary, exclusive while Store::open sweeps, so the sweep never sees a
// temporary in the instant between its creation and its lock.
class TmpGuard {
 public:
  TmpGuard(const std::string& tmp, int operation)
      : fd_(::open(tmp.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {
    if (fd_ >= 0) flock(fd_, operation);
  }
  ~TmpGuard() {
    if (fd_ >= 0) ::close(fd_);  // releases the flock
  }
  TmpGuard(const TmpGuard&) = delete;
  TmpGuard& operator=(const TmpGuard&) = delete;

 private:
  int fd_;
};

// Removes the temporaries of writers that are gone: a live writer holds a
// byte-range lock on its file (BagWriter), a dead one's lock went with it.
void sweep_temporaries(const std::string& tmp) {
  TmpGuard exclusive(tmp, LOCK_EX);
  DIR* d = ::opendir(tmp.c_str());
  if (d == nullptr) return;
  while (const dirent* entry = ::readdir(d)) {
    if (entry->d_name[0] == '.') continue;
    const std::string path = tmp + "/" + entry->d_name;
    posix::Fd fd = posix::try_open(path, O_RDWR);
    if (!fd.valid()) continue;
    try {
      if (posix::try_lock_range(fd.get(), F_WRLCK, 0, 1, path)) ::unlink(path.c_str());
    } catch (const Error&) {
      // Cannot tell whether its writer lives: leave it.
    }
  }
  ::closedir(d);
}

bool valid_name(std::string_view name) {
  try {
    Store::check_name(name);
    return true;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

void Store::check_name(std::string_view name) {
  const auto bad = [&](const char* rule, int error = EINVAL) {
    throw Error(Errc::kInvalidArgument, "name '" + std::string(name) + "': " + rule, error);
  };
  if (name.empty()) bad("names have 1 to 200 bytes");
  if (name.size() > kMaxNameLength) bad("names have 1 to 200 bytes", ENAMETOOLONG);
  if (name[0] == '.') bad("names may not start with '.'");
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) {
      bad("names may hold only letters, digits, '.', '_' and '-'");
    }
  }
}

bool Store::is_store(const std::string& dir) {
  std::ifstream marker(dir + "/" + kMarker);
  std::string first;
  return std::getline(marker, first) && first == kMarkerFirstLine;
}

// True for a directory init() may make a store of: empty, or left half made
// by an init() that was interrupted (only empty heaps/ and bags/, and tmp/).
bool may_become_store(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) throw Error::from_errno(errno, "store " + dir);
  bool ok = true;
  while (const dirent* entry = ::readdir(d)) {
    const std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    if (name == "tmp") continue;
    if ((name == "heaps" || name == "bags") && names_in(dir + "/" + name, "").empty()) continue;
    ok = false;
  }
  ::closedir(d);
  return ok;
}

Result<Store> Store::init(const std::string& dir) {
  try {
    if (is_store(dir)) return open(dir);
    std::error_code error;
    std::filesystem::create_directories(dir, error);
    if (error) throw Error::from_errno(error.value(), "store " + dir + ": cannot create");
    if (!may_become_store(dir)) {
      throw Error(Errc::kAlreadyExists,
                  "store " + dir + ": the directory holds files but is not a store");
    }
    for (const char* sub : {"heaps", "bags", "tmp"}) make_directory(dir + "/" + sub);
    // The marker last, durably, by rename: a directory is a store once it is there.
    const std::string temp = dir + "/tmp/marker-" + posix::random_hex(8);
    const std::string text =
        std::string(kMarkerFirstLine) + "\nuuid " + posix::random_hex(16) + "\n";
    try {
      posix::Fd fd = posix::open_file(temp, O_WRONLY | O_CREAT | O_TRUNC,
                                      "store " + dir + ": cannot write the marker", 0644);
      posix::write_all(fd.get(), std::as_bytes(std::span(text)),
                       "store " + dir + ": cannot write the marker");
      posix::publish_file(fd.get(), temp, dir + "/" + kMarker, /*replace=*/true,
                          "store " + dir + ": the marker");
    } catch (...) {
      ::unlink(temp.c_str());
      throw;
    }
    return Store(dir);
  } catch (const Error& e) {
    return e;
  }
}

Result<Store> Store::open(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT)
      return Error(Errc::kNotFound, "store " + dir + ": no such directory", ENOENT);
    return Error::from_errno(errno, "store " + dir);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Error(
        Errc::kInvalidArgument,
        "store " + dir + ": not a directory (a store is a directory `sheaf store init` made)",
        ENOTDIR);
  }
  // A missing marker means "not a store"; one we may not read is said as such
  // (a store of another user's is not "not a store").
  if (posix::Fd marker = posix::try_open(dir + "/" + kMarker, O_RDONLY); !marker.valid()) {
    if (errno != ENOENT) {
      return Error::from_errno(errno, "store " + dir + ": cannot read its marker " + kMarker);
    }
  }
  if (!is_store(dir)) {
    return Error(Errc::kNotFound,
                 "store " + dir + ": not a Sheaf store (create one with `sheaf store init`)");
  }
  sweep_temporaries(dir + "/tmp");
  return Store(dir);
}

std::string Store::bag_path(std::string_view name) const {
  check_name(name);
  return path_ + "/bags/" + std::string(name) + ".bag";
}

std::string Store::heap_path(std::string_view name) const {
  check_name(name);
  return path_ + "/heaps/" + std::string(name) + ".heap";
}

Result<Bag> Store::open_bag(std::string_view name, const BagOpenOptions& options) const {
  try {
    return Bag(map_bag(bag_path(name), std::string(name), options));
  } catch (const Error& e) {
    return e;
  }
}

BagWriter Store::create_bag(std::string_view name, const BagWriteOptions& options) {
  auto impl = std::make_unique<BagWriter::Impl>();
  impl->final_path = bag_path(name);
  impl->replace = options.replace;
  impl->info.name = std::string(name);
  impl->info.element_type = options.element_type;
  impl->info.element_size = options.element_type.empty() ? 0 : options.element_size;
  impl->info.tags = options.tags;
  if (!options.element_type.empty() && options.element_size == 0) {
    throw Error(Errc::kInvalidArgument,
                "bag " + impl->info.name + ": a typed bag needs its element size");
  }
  impl->header_bytes = bag_header_bytes(impl->info);
  encode_bag_header(impl->info);  // refuses bad types and tags now, not at commit
  if (!options.replace && ::access(impl->final_path.c_str(), F_OK) == 0) {
    throw Error(Errc::kAlreadyExists, "bag " + impl->info.name + ": already exists", EEXIST);
  }
  impl->temp_path = path_ + "/tmp/" + impl->info.name + "." + posix::random_hex(8) + ".writing";
  TmpGuard creating(path_ + "/tmp", LOCK_SH);
  impl->fd = posix::try_open(impl->temp_path, O_RDWR | O_CREAT | O_EXCL, 0644).release();
  if (impl->fd < 0) {
    const int err = errno;
    impl->temp_path.clear();
    throw Error::from_errno(err, "bag " + impl->info.name + ": cannot create");
  }
  // Held until the writer is gone: tells sweep_temporaries we are alive.
  if (!posix::try_lock_range(impl->fd, F_WRLCK, 0, 1, "bag " + impl->info.name)) {
    throw Error(Errc::kBusy, "bag " + impl->info.name + ": cannot lock its temporary file");
  }
  impl->open_direct();
  return BagWriter(std::move(impl));
}

BagInfo Store::put_bag(std::string_view name, std::span<const std::byte> payload,
                       const BagWriteOptions& options) {
  BagWriter writer = create_bag(name, options);
  writer.write(payload);
  return writer.commit();
}

BagInfo Store::bag_info(std::string_view name) const {
  const std::string what = "bag " + std::string(name);
  const std::string path = bag_path(name);
  posix::Fd fd = posix::try_open(path, O_RDONLY);
  if (!fd.valid() && errno == ENOENT) throw Error(Errc::kNotFound, what + ": no such bag", ENOENT);
  if (!fd.valid()) throw Error::from_errno(errno, what);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw Error::from_errno(errno, what + ": stat");
  if (!S_ISREG(st.st_mode)) {
    throw Error(Errc::kUnsupported, what + ": not a regular file, so not a bag (" + path + ")",
                S_ISDIR(st.st_mode) ? EISDIR : EINVAL);
  }
  BagInfo info = read_bag_header(fd.get(), static_cast<std::uint64_t>(st.st_size), what);
  info.name = std::string(name);
  return info;
}

std::vector<std::string> Store::bag_names() const {
  std::vector<std::string> names = names_in(path_ + "/bags", ".bag");
  std::erase_if(names, [](const std::string& name) { return !valid_name(name); });  // strays
  return names;
}

bool Store::remove_bag(std::string_view name) {
  const std::string path = bag_path(name);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return false;
    throw Error::from_errno(errno, "bag " + std::string(name) + ": cannot remove");
  }
  posix::fsync_directory(posix::directory_of(path));
  return true;
}

void Store::rename_bag(std::string_view from, std::string_view to, bool replace) {
  const std::string from_path = bag_path(from);
  const std::string to_path = bag_path(to);
  const std::string what = "bag " + std::string(from) + " -> " + std::string(to);
  if (::renameat2(AT_FDCWD, from_path.c_str(), AT_FDCWD, to_path.c_str(),
                  replace ? 0 : RENAME_NOREPLACE) != 0) {
    const int error = errno;
    if (error == ENOENT) throw Error(Errc::kNotFound, what + ": no such bag", ENOENT);
    if (error == EEXIST) throw Error(Errc::kAlreadyExists, what + ": already exists", EEXIST);
    throw Error::from_errno(error, what + ": cannot rename");
  }
  posix::fsync_directory(posix::directory_of(to_path));
}

std::vector<BagCheck> Store::verify(std::optional<std::string_view> name,
                                    const Progress& progress) const {
  if (name && ::access(bag_path(*name).c_str(), F_OK) != 0) {
    throw Error(Errc::kNotFound, "bag " + std::string(*name) + ": no such bag in store " + path_,
                ENOENT);
  }
  std::vector<std::string> names =
      name ? std::vector<std::string>{std::string(*name)} : bag_names();
  std::uint64_t total = 0;
  std::uint64_t base = 0;
  for (const auto& n : names) {
    struct stat st {};
    if (::stat(bag_path(n).c_str(), &st) == 0) total += static_cast<std::uint64_t>(st.st_size);
  }
  std::vector<BagCheck> checks;
  for (const auto& n : names) {
    BagCheck check{n, ""};
    struct stat st {};
    const std::uint64_t file_size =
        ::stat(bag_path(n).c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
    try {
      BagOpenOptions header_only;
      header_only.verify_payload = false;
      Bag bag = open_bag(n, header_only).value();
      const std::uint64_t header_bytes =
          file_size > bag.info().size ? file_size - bag.info().size : 0;  // (progress only)
      const BagChecksum actual = bag.compute_checksum([&](std::uint64_t done, std::uint64_t) {
        if (progress) progress(base + header_bytes + done, total);
      });
      if (actual != bag.info().checksum) check.problem = "bag " + n + ": payload checksum mismatch";
    } catch (const Error& e) {
      check.problem = e.message();
    }
    base += file_size;
    if (progress) progress(base, total);
    checks.push_back(std::move(check));
  }
  return checks;
}

std::vector<HeapEntry> Store::heaps() const {
  std::vector<HeapEntry> entries;
  for (auto& name : names_in(path_ + "/heaps", ".heap")) {
    struct stat st {};
    ::stat(heap_path(name).c_str(), &st);
    entries.push_back({std::move(name), static_cast<std::uint64_t>(st.st_size)});
  }
  return entries;
}

std::string Store::resolve_heap(const std::string& spec) {
  struct stat st {};
  if (::stat(spec.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) return spec;
  const auto slash = spec.rfind('/');
  if (slash == std::string::npos || slash == 0) return spec;
  const std::string dir = spec.substr(0, slash);
  const std::string name = spec.substr(slash + 1);
  if (!is_store(dir)) return spec;
  return Store(dir).heap_path(name);
}

}  // namespace sheaf
