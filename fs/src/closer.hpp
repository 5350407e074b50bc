// closer.hpp: who is closing a bag being written, and what that close means.
//
// The kernel sends the server a FLUSH for every close() of a descriptor of an
// open file (dups and forked copies included), and one RELEASE, later and
// asynchronously, when the last goes. A bag is published at the close that
// ends the writer's work, so that `cp` returns once the bag is there; three
// things about the closing task decide which close that is:
//  - whether it is dying of a signal (the kernel closes a killed process's
//    files too, and a half-written bag must not be published then):
//    /proc/TID/stat field 9 holds the task's flags (PF_EXITING = 0x4) and
//    field 52 its exit code, the signal in its low 7 bits;
//  - its process (Tgid), to tell the opener from a forked child;
//  - whether that process still holds another descriptor of the same file
//    (a shell's `> FILE` opens, dups onto 1, and closes the first one):
//    /proc/TID/fdinfo/* name each descriptor's inode.
//
// Reading /proc/TID/stat can block: while a task executes a new program the
// kernel holds a lock that read needs, and closing the task's close-on-exec
// descriptors (a FLUSH) happens under that lock, so the reply the exec waits
// for would wait for the exec. The inspection therefore runs on a thread of
// its own and is given up after `wait`: then the closer is executing, so
// living, and is taken to hold another descriptor (publishing waits).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>

namespace sheaf::fs {

struct Closer {
  bool answered = false;         // false: the inspection timed out or failed
  bool dying_of_signal = false;  // torn down by SIGKILL, SIGSEGV, ...
  pid_t process = 0;             // its thread group (0 if unknown)
  bool holds_another = true;     // another descriptor of the file is open in it
};

// `inode` is the file's inode number as the kernel shows it (st_ino).
Closer inspect_closer(pid_t tid, std::uint64_t inode, std::chrono::milliseconds wait);

// The process (thread group) of a thread, from /proc/TID/status; 0 if unknown.
pid_t process_of(pid_t tid);

// Whether process `pid` still exists and is not exiting (a zombie, or a
// process whose files the kernel is closing as it exits, counts as gone).
bool process_alive(pid_t pid);

}  // namespace sheaf::fs
