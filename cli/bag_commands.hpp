// cli/bag_commands.hpp: `sheaf bag <verb>`, the commands for databags in a store.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

#include "output.hpp"
#include "sheaf/store.hpp"

namespace sheaf::cli {

// Adds the `bag` noun and its verbs (put, get, ls, info, verify, rm) to the
// application. Failures are thrown as sheaf::Error; `bag verify` reports a bad
// bag by throwing CLI::RuntimeError(kExitFailure).
void register_bag_commands(CLI::App& app);

// A bag as the listings show it: its header, or why it could not be read.
struct BagEntry {
  std::string name;
  std::optional<BagInfo> info;  // empty when the header is unreadable
  std::string problem;          // why, when it is
};

// Every bag in the store, sorted by name; reads only the headers, and an
// unreadable one becomes an entry with a problem instead of an error.
std::vector<BagEntry> list_bags(const Store& store);

// {"name", "size", "type", "element_size", "created", "created_ns", "tags"},
// or {"name", "problem"} for a bag whose header is unreadable.
Json bag_entry_json(const BagEntry& entry);

// The bags as a table under the heading name_heading, SIZE, TYPE, CREATED,
// TAGS (a count); an unreadable bag's row ends with "BAD: problem".
void print_bag_table(const std::vector<BagEntry>& entries, const std::string& name_heading);

}  // namespace sheaf::cli
