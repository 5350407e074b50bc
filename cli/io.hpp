// cli/io.hpp: input and output for commands that move raw bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "sheaf/bag.hpp"

namespace sheaf::cli {

// All the bytes of a file, or of standard input when path is "-", however
// many there are. Throws sheaf::Error naming the file.
std::vector<std::byte> read_input(const std::string& path);

// Writes every byte to standard output. Throws sheaf::Error.
void write_output(std::span<const std::byte> bytes);

// A file opened for reading, or standard input when path is "-"; closes what
// it opened. Throws sheaf::Error naming the file.
class InputFile {
 public:
  explicit InputFile(const std::string& path);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  int fd() const { return fd_; }
  // The path, or "standard input", for messages.
  const std::string& what() const { return what_; }

  // Reads until buffer is full or the input ends; returns the bytes read.
  std::size_t read_full(std::span<std::byte> buffer);

 private:
  int fd_ = -1;
  std::string what_;
};

// Splits bytes into maximal runs of whole 4 KiB pages (counted from the start
// of bytes; the last page may be short) that are all zero or not, and calls
// fn(run, all_zero) for each in order.
void for_each_zero_run(std::span<const std::byte> bytes,
                       const std::function<void(std::span<const std::byte>, bool)>& fn);

// Where output goes: standard output for "-"; for the path of a device or a
// FIFO, that (written in place); else a regular file, replaced atomically.
// The file's bytes go to a temporary file in the same directory (the link's
// target's, for a symbolic link), with zero pages left as holes, and commit()
// renames it over the path; destroyed uncommitted, it removes the temporary
// and the path is untouched.
class OutputFile {
 public:
  explicit OutputFile(const std::string& path);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  // Appends bytes. Throws sheaf::Error.
  void write(std::span<const std::byte> bytes);
  // True when the output is a regular file (written to a temporary first).
  bool is_file() const noexcept { return !path_.empty(); }
  // A regular file only, written nothing yet: the bag's payload, copied
  // from its file (Bag::copy_payload); throws, leaving the path untouched,
  // if `verify` finds the payload damaged.
  void copy_bag_payload(const Bag& bag, bool verify, const Progress& progress);
  // Sizes a regular file and renames it into place; with `durable`, fsyncs
  // it and its directory too (without, it is as safe as what cp writes).
  void commit(bool durable = true);

 private:
  std::string path_;  // the file replaced; empty when writing in place
  std::string what_;  // for messages
  std::string temp_;  // the temporary, until committed
  int fd_ = -1;
  bool owns_fd_ = false;
  std::uint64_t size_ = 0;
};

}  // namespace sheaf::cli
