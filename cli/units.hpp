// cli/units.hpp: byte counts as people type and read them.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <string_view>

#include "sheaf/heap_report.hpp"  // format_size, size_field

namespace sheaf::cli {

// "4096", "64K", "64M", "1G", "1.5G", "2T": a number with an optional binary
// suffix (K = 1024, M, G, T, P; any case, optionally followed by "B" or "iB").
// Throws std::invalid_argument with a message that quotes the text.
std::uint64_t parse_size(std::string_view text);

// Sizes are printed with format_size and size_field (sheaf/heap_report.hpp).

// A CLI11 transform that accepts what parse_size does and hands the option
// the byte count, so that a std::uint64_t can be bound to the option.
CLI::Validator size_value();

}  // namespace sheaf::cli
