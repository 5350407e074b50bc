#include "closer.hpp"

#include <dirent.h>
#include <fcntl.h>

#include <condition_variable>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace sheaf::fs {
namespace {

// The fields of /proc/TID/stat from field 3 (the state) on: [0] is field 3,
// [n - 3] field n. Nothing if the task is gone or the line is malformed.
std::optional<std::vector<std::string>> stat_fields(pid_t tid) {
  std::ifstream in("/proc/" + std::to_string(tid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const std::size_t name_end = line.rfind(')');  // the command name may hold spaces
  if (name_end == std::string::npos || name_end + 2 > line.size()) return std::nullopt;
  std::istringstream stream(line.substr(name_end + 2));
  std::vector<std::string> fields;
  for (std::string f; stream >> f;) fields.push_back(f);
  return fields;
}

constexpr unsigned long kPfExiting = 0x4;  // field 9 (flags): the task is exiting

// Field 9 (flags) and 52 (exit code) of /proc/TID/stat.
bool read_dying(pid_t tid, bool* dying) {
  const std::optional<std::vector<std::string>> field = stat_fields(tid);
  if (!field || field->size() < 52 - 2) return false;
  try {
    const unsigned long flags = std::stoul((*field)[9 - 3]);
    const long exit_code = std::stol((*field)[52 - 3]);
    *dying = (flags & kPfExiting) != 0 && (exit_code & 0x7f) != 0;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// Whether a descriptor of the process of `tid` open for writing names
// `inode` (fdinfo's "flags:" line, in octal, and "ino:" line, in decimal;
// readers of the old version of a bag being rewritten share its inode and do
// not count). Reading fdinfo never calls into the file's filesystem, so this
// cannot wait on this server. Without an "ino:" line (kernels before 5.14)
// it cannot tell, and says yes.
bool holds_inode_for_writing(pid_t tid, std::uint64_t inode) {
  const std::string dir = "/proc/" + std::to_string(tid) + "/fdinfo";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return true;
  bool found = false;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream in(dir + "/" + e->d_name);
    std::optional<unsigned long> flags;
    std::optional<std::uint64_t> ino;
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("flags:", 0) == 0) flags = std::strtoul(line.c_str() + 6, nullptr, 8);
      if (line.rfind("ino:", 0) == 0) ino = std::strtoull(line.c_str() + 4, nullptr, 10);
    }
    if (!ino) {
      found = true;
      break;
    }
    if (*ino == inode && (!flags || (*flags & O_ACCMODE) != O_RDONLY)) {
      found = true;
      break;
    }
  }
  ::closedir(d);
  return found;
}

}  // namespace

pid_t process_of(pid_t tid) {
  std::ifstream in("/proc/" + std::to_string(tid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Tgid:", 0) == 0) return static_cast<pid_t>(std::atol(line.c_str() + 5));
  }
  return 0;
}

bool process_alive(pid_t pid) {
  if (pid <= 0) return false;
  const std::optional<std::vector<std::string>> field = stat_fields(pid);
  if (!field || field->size() < 9 - 2) return false;
  // Z (zombie) or X (dead): gone. PF_EXITING: its files are being closed by
  // the kernel as it exits, which is how a killed writer's last close
  // arrives: not alive either.
  const std::string& state = (*field)[0];
  if (state == "Z" || state == "X") return false;
  try {
    return (std::stoul((*field)[9 - 3]) & kPfExiting) == 0;
  } catch (const std::exception&) {
    return false;
  }
}

Closer inspect_closer(pid_t tid, std::uint64_t inode, std::chrono::milliseconds wait) {
  if (tid <= 0) return {};
  struct Answer {
    std::mutex mutex;
    std::condition_variable ready;
    bool done = false;
    Closer closer;
  };
  auto answer = std::make_shared<Answer>();
  // Detached: if a read blocks (an exec), it finishes once the exec does,
  // after this request was answered, and only its shared answer remains.
  std::thread([answer, tid, inode] {
    Closer closer;
    if (read_dying(tid, &closer.dying_of_signal)) {
      closer.process = process_of(tid);
      closer.holds_another = holds_inode_for_writing(tid, inode);
      closer.answered = closer.process != 0;
    }
    std::lock_guard lock(answer->mutex);
    answer->closer = closer;
    answer->done = true;
    answer->ready.notify_all();
  }).detach();
  std::unique_lock lock(answer->mutex);
  if (!answer->ready.wait_for(lock, wait, [&] { return answer->done; })) return {};
  return answer->closer;
}

}  // namespace sheaf::fs
