#include "task_fate.hpp"

#include <condition_variable>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace sheaf::fs {
namespace {

TaskFate read_fate(pid_t tid) {
  std::ifstream in("/proc/" + std::to_string(tid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return TaskFate::kUnknown;
  const std::size_t name_end = line.rfind(')');  // the command name may hold spaces
  if (name_end == std::string::npos || name_end + 2 > line.size()) return TaskFate::kUnknown;
  std::istringstream fields(line.substr(name_end + 2));
  std::vector<std::string> field;  // field[0] is field 3, the state
  for (std::string f; fields >> f;) field.push_back(f);
  if (field.size() < 52 - 2) return TaskFate::kUnknown;
  try {
    constexpr unsigned long kPfExiting = 0x4;
    const unsigned long flags = std::stoul(field[9 - 3]);
    const long exit_code = std::stol(field[52 - 3]);
    const bool signalled = (flags & kPfExiting) != 0 && (exit_code & 0x7f) != 0;
    return signalled ? TaskFate::kDyingOfSignal : TaskFate::kLiving;
  } catch (const std::exception&) {
    return TaskFate::kUnknown;
  }
}

}  // namespace

TaskFate task_fate(pid_t tid, std::chrono::milliseconds wait) {
  if (tid <= 0) return TaskFate::kUnknown;
  struct Answer {
    std::mutex mutex;
    std::condition_variable ready;
    bool done = false;
    TaskFate fate = TaskFate::kUnknown;
  };
  auto answer = std::make_shared<Answer>();
  // Detached: if the read blocks (an exec), it finishes once the exec does,
  // after this request was answered, and only its shared answer remains.
  std::thread([answer, tid] {
    const TaskFate fate = read_fate(tid);
    std::lock_guard lock(answer->mutex);
    answer->fate = fate;
    answer->done = true;
    answer->ready.notify_all();
  }).detach();
  std::unique_lock lock(answer->mutex);
  if (!answer->ready.wait_for(lock, wait, [&] { return answer->done; })) return TaskFate::kUnknown;
  return answer->fate;
}

}  // namespace sheaf::fs
