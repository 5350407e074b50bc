// sheaf/error.hpp: the one error type of the Sheaf library.
//
// Every failure the library reports is a sheaf::Error: a category (what kind of
// failure), the errno the operating system gave when there was one, and a
// message that names what was wrong ("heap /x/y: header checksum mismatch").
// Functions at the library's boundaries (opening and creating files) return a
// Result<T>; everything else throws Error, the way Boost.Interprocess throws,
// because allocators inside STL containers have no other way to fail.
#pragma once

#include <cerrno>
#include <exception>
#include <string>
#include <utility>
#include <variant>

namespace sheaf {

enum class Errc {
  kOk = 0,
  kInvalidArgument,  // the caller passed something unusable (bad name, bad size, ...)
  kNotFound,         // no such file, object or name
  kAlreadyExists,    // a file or a name is taken
  kTypeMismatch,     // an object was asked for as a type it was not created as
  kCorrupted,        // a file failed validation (checksum, bounds, invariants)
  kUnsupported,      // a foreign, newer or otherwise unreadable file format
  kOutOfSpace,       // the heap, its reservation or the filesystem is full
  kBusy,             // the file is in use in a way that forbids the operation
  kTimedOut,         // a lock was not granted in the time allowed (the message names its holder)
  kSystem,           // the operating system refused (see sys_errno())
};

// Short lower-case name of a category ("corrupted", "not found", ...).
const char* errc_name(Errc code) noexcept;

class Error : public std::exception {
 public:
  Error(Errc code, std::string message, int sys_errno = 0)
      : code_(code), sys_errno_(sys_errno), message_(std::move(message)) {}

  // An Error built from errno: category kSystem unless errno maps to a more
  // precise one (ENOENT -> kNotFound, EEXIST -> kAlreadyExists, ENOSPC -> ...).
  static Error from_errno(int sys_errno, const std::string& what);

  Errc code() const noexcept { return code_; }
  int sys_errno() const noexcept { return sys_errno_; }
  const std::string& message() const noexcept { return message_; }
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  Errc code_;
  int sys_errno_;
  std::string message_;
};

// Either a value or an Error, for functions at the library's boundaries.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}
  Result(Error error) : state_(std::move(error)) {}

  bool ok() const noexcept { return std::holds_alternative<T>(state_); }
  explicit operator bool() const noexcept { return ok(); }

  // The error; only valid when !ok().
  const Error& error() const { return std::get<Error>(state_); }

  // The value, or throws the Error.
  T& value() & {
    if (!ok()) throw std::get<Error>(state_);
    return std::get<T>(state_);
  }
  T&& value() && {
    if (!ok()) throw std::get<Error>(std::move(state_));
    return std::get<T>(std::move(state_));
  }

 private:
  std::variant<T, Error> state_;
};

// Success or an Error, for boundary functions that return nothing else.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), failed_(true) {}

  bool ok() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return ok(); }
  const Error& error() const { return error_; }
  // Throws the Error if there was one.
  void value() const {
    if (failed_) throw error_;
  }

 private:
  Error error_{Errc::kOk, ""};
  bool failed_ = false;
};

}  // namespace sheaf
