// cli/exit_codes.hpp: what the sheaf command's exit status means.
//
// Scripts branch on these, so they are part of the command's interface:
// keep them in step with docs/cli.md and never renumber one.
#pragma once

#include "sheaf/error.hpp"

namespace sheaf::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,        // `heap check` or `bag verify` found problems, or an unexpected failure
  kExitUsage = 2,          // bad arguments or options
  kExitNotFound = 3,       // no such file, store, heap, object or bag
  kExitAlreadyExists = 4,  // the file or the name is taken
  kExitBadFile = 5,        // corrupted, unsupported, or an object of another type
  kExitOutOfSpace = 6,     // the heap or the filesystem is full
  kExitBusy = 7,    // the file is in use in a way that forbids the operation, or its lock timed out
  kExitSystem = 8,  // any other refusal by the operating system
};

// The exit status for a library error of this category.
constexpr int exit_code_for(Errc code) noexcept {
  switch (code) {
    case Errc::kInvalidArgument:
      return kExitUsage;
    case Errc::kNotFound:
      return kExitNotFound;
    case Errc::kAlreadyExists:
      return kExitAlreadyExists;
    case Errc::kTypeMismatch:
    case Errc::kCorrupted:
    case Errc::kUnsupported:
      return kExitBadFile;
    case Errc::kOutOfSpace:
      return kExitOutOfSpace;
    case Errc::kBusy:
    case Errc::kTimedOut:
      return kExitBusy;
    case Errc::kSystem:
      return kExitSystem;
    case Errc::kOk:
      break;
  }
  return kExitFailure;
}

// The table printed at the foot of every --help.
inline constexpr const char* kExitStatusHelp =
    "Exit status:\n"
    "  0  success\n"
    "  1  `heap check` or `bag verify` found problems, or an unexpected failure\n"
    "  2  usage error (bad arguments or options)\n"
    "  3  not found (file, store, heap, object or bag)\n"
    "  4  already exists (file, object or bag name)\n"
    "  5  bad file (corrupted, unsupported format, or type mismatch)\n"
    "  6  out of space\n"
    "  7  busy (or a lock not granted in time)\n"
    "  8  other operating-system error";

}  // namespace sheaf::cli
