// cli/output.hpp: how the verbs print: JSON, aligned fields, tables, sizes, times.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "sheaf/heap_report.hpp"  // size_field

namespace CLI {
class App;
}  // namespace CLI

namespace sheaf::cli {

// Keys stay in the order the verb writes them.
using Json = nlohmann::ordered_json;

// The JSON on standard output, indented, with a final newline.
void print_json(const Json& json);
// The --json flag every read command has.
void add_json_flag(CLI::App& verb, bool& json);

// Prints "key: value" lines with the values lined up.
void print_fields(const std::vector<std::pair<std::string, std::string>>& fields);

// Prints rows as columns two spaces apart: the first row is the heading.
// Columns marked in right_aligned (numbers) are padded on the left; the last
// cell of a row is never padded on the right. Rows may be longer than the
// heading (a trailing note) or shorter.
void print_table(std::vector<std::vector<std::string>> rows,
                 const std::vector<bool>& right_aligned);

// Nanoseconds since the epoch as local time, "2024-05-01 12:34:56", for people.
std::string local_time(std::uint64_t ns);

// The same instant in UTC, ISO 8601, "2024-05-01T10:34:56Z", for --json.
std::string utc_time(std::uint64_t ns);

}  // namespace sheaf::cli
