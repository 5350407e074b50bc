// cli/msg_bench.hpp: `sheaf msg bench`, payloads by heap reference beside copies.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sheaf::cli {

struct MsgBenchArgs {
  std::vector<std::uint64_t> sizes;
  int rounds = 20;
  std::string heap;     // empty: a temporary heap in /dev/shm
  std::string manager;  // empty: a manager of its own, on a thread
  std::string plot;     // a PNG to draw (gnuplot), or empty
  bool json = false;
  // Between two hosts, through a manager both reach, with the heap on a
  // filesystem both mount: one host runs `--serve CHANNEL` (the peer, with
  // `tcp` its TCP listener), the other `--to CHANNEL` (the measuring side).
  std::string serve;  // non-empty: be the peer, owning this channel
  std::string to;     // non-empty: measure against this channel's owner
  std::string tcp;    // the peer's TCP listener, HOST:PORT
  std::string secret_file;
};

// Runs it and prints the table (or JSON). Throws sheaf::Error.
void run_msg_bench(const MsgBenchArgs& args);

}  // namespace sheaf::cli
