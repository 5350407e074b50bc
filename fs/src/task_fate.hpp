// task_fate.hpp: whether the task closing a file is dying of a signal.
//
// The kernel closes a killed process's files as it tears it down, and each
// close of a bag being written reaches the server as a FLUSH, like a real
// close. A half-written bag must not be published then. /proc/TID/stat tells:
// field 9 holds the task's flags (PF_EXITING = 0x4) and field 52 its exit
// code (the signal in its low 7 bits).
//
// Reading it can block: while a task executes a new program, the kernel
// holds a lock /proc/TID/stat needs, and closing the task's close-on-exec
// files (a FLUSH) happens under that lock, so the reply the exec waits for
// would wait for the exec. The read therefore runs on a thread of its own and
// is given up after `wait`: a task that cannot be read is executing, so
// living (kUnknown).
#pragma once

#include <sys/types.h>

#include <chrono>

namespace sheaf::fs {

enum class TaskFate {
  kLiving,         // running, or exiting normally (exit(), return from main)
  kDyingOfSignal,  // being torn down by a signal (SIGKILL, SIGSEGV, ...)
  kUnknown,        // gone already, unreadable, or not answering in time
};

TaskFate task_fate(pid_t tid, std::chrono::milliseconds wait);

}  // namespace sheaf::fs
