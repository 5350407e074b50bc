// cli/io.hpp: whole-file input and output for commands that move raw bytes.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

namespace sheaf::cli {

// All the bytes of a file, or of standard input when path is "-", however
// many there are. Throws sheaf::Error naming the file.
std::vector<std::byte> read_input(const std::string& path);

// Writes every byte to standard output. Throws sheaf::Error.
void write_output(std::span<const std::byte> bytes);

}  // namespace sheaf::cli
