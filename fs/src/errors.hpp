// errors.hpp: how the mount's code fails with an errno. Internal to fs/.
// (No libfuse here: request.hpp turns these into replies.)
#pragma once

#include <cerrno>

#include "sheaf/error.hpp"

namespace sheaf::fs {

// An errno to answer a request with. Thrown inside a handler, turned into
// fuse_reply_err by guarded().
struct Errno {
  int value;
};

[[noreturn]] inline void fail(int value) {
  throw Errno{value};
}

// The errno an Error stands for: the one the OS gave, else one by its code.
inline int errno_for(const Error& e) {
  if (e.sys_errno() != 0) return e.sys_errno();
  switch (e.code()) {
    case Errc::kInvalidArgument:
      return EINVAL;
    case Errc::kNotFound:
      return ENOENT;
    case Errc::kAlreadyExists:
      return EEXIST;
    case Errc::kOutOfSpace:
      return ENOSPC;
    case Errc::kBusy:
      return EBUSY;
    default:
      return EIO;  // corrupted, unsupported, type mismatch: the file is bad
  }
}

}  // namespace sheaf::fs
