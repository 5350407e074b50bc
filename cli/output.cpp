#include "output.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <array>
#include <ctime>
#include <iostream>

#include "units.hpp"

namespace sheaf::cli {
namespace {

std::string format_time(std::uint64_t ns, bool utc, const char* format) {
  const auto seconds = static_cast<std::time_t>(ns / 1000000000u);
  std::tm parts{};
  if ((utc ? ::gmtime_r(&seconds, &parts) : ::localtime_r(&seconds, &parts)) == nullptr) {
    return std::to_string(ns) + " ns";
  }
  std::array<char, 64> text{};
  const std::size_t length = std::strftime(text.data(), text.size(), format, &parts);
  return std::string(text.data(), length);
}

}  // namespace

void add_json_flag(CLI::App& verb, bool& json) {
  verb.add_flag("--json", json, "Print JSON on standard output");
}

void print_json(const Json& json) {
  std::cout << json.dump(2) << '\n';
}

void print_fields(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::size_t width = 0;
  for (const auto& field : fields) width = std::max(width, field.first.size());
  for (const auto& [key, value] : fields) {
    std::cout << key << ':' << std::string(width - key.size() + 1, ' ') << value << '\n';
  }
}

void print_table(std::vector<std::vector<std::string>> rows,
                 const std::vector<bool>& right_aligned) {
  // Long cells after the first column (C++ type names can run to hundreds of
  // bytes) are cut, so the table stays readable; --json has them whole.
  constexpr std::size_t kMaxCell = 48;
  for (auto& row : rows) {
    for (std::size_t i = 1; i < row.size(); ++i) {
      if (row[i].size() > kMaxCell) row[i] = row[i].substr(0, kMaxCell - 3) + "...";
    }
  }
  std::vector<std::size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      const std::string padding(width[i] - row[i].size(), ' ');
      const bool right = i < right_aligned.size() && right_aligned[i];
      if (i != 0) line += "  ";
      if (right) line += padding;
      line += row[i];
      if (!right && i + 1 < row.size()) line += padding;
    }
    std::cout << line << '\n';
  }
}

std::string local_time(std::uint64_t ns) {
  return format_time(ns, /*utc=*/false, "%Y-%m-%d %H:%M:%S");
}

std::string utc_time(std::uint64_t ns) {
  return format_time(ns, /*utc=*/true, "%Y-%m-%dT%H:%M:%SZ");
}

}  // namespace sheaf::cli
