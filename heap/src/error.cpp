// error.cpp: categories of sheaf::Error and the errno mapping.
#include "sheaf/error.hpp"

#include <cstring>

namespace sheaf {

const char* errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::kOk:
      return "ok";
    case Errc::kInvalidArgument:
      return "invalid argument";
    case Errc::kNotFound:
      return "not found";
    case Errc::kAlreadyExists:
      return "already exists";
    case Errc::kTypeMismatch:
      return "type mismatch";
    case Errc::kCorrupted:
      return "corrupted";
    case Errc::kUnsupported:
      return "unsupported";
    case Errc::kOutOfSpace:
      return "out of space";
    case Errc::kBusy:
      return "busy";
    case Errc::kTimedOut:
      return "timed out";
    case Errc::kSystem:
      return "system error";
  }
  return "unknown";
}

Error Error::from_errno(int sys_errno, const std::string& what) {
  Errc code = Errc::kSystem;
  switch (sys_errno) {
    case ENOENT:
      code = Errc::kNotFound;
      break;
    case EEXIST:
      code = Errc::kAlreadyExists;
      break;
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EFBIG:
      code = Errc::kOutOfSpace;
      break;
    case EBUSY:
    case ETXTBSY:
      code = Errc::kBusy;
      break;
    case EINVAL:
      code = Errc::kInvalidArgument;
      break;
    case ETIMEDOUT:
      code = Errc::kTimedOut;
      break;
    default:
      break;
  }
  return Error(code, what + ": " + std::strerror(sys_errno), sys_errno);
}

}  // namespace sheaf
