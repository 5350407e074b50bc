#include "sheaf/heap_report.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <utility>
#include <vector>

namespace sheaf {
namespace {

std::string features_text(const std::vector<std::string>& features) {
  if (features.empty()) return "none";
  std::string text;
  for (const std::string& feature : features) text += (text.empty() ? "" : ", ") + feature;
  return text;
}

}  // namespace

std::string format_size(std::uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes);
  std::size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f %s", value, kUnits[unit]);
  return text;
}

std::string size_field(std::uint64_t bytes) {
  return std::to_string(bytes) + " (" + format_size(bytes) + ")";
}

std::string heap_info_text(const HeapInfo& info) {
  const std::vector<std::pair<std::string, std::string>> fields = {
      {"path", info.path},
      {"uuid", info.uuid},
      {"format version", std::to_string(info.format_version)},
      {"features", features_text(info.features)},
      {"mode", lock_mode_name(info.mode)},
      {"size", size_field(info.size)},
      {"max size", info.max_size == 0 ? "none" : size_field(info.max_size)},
      {"growth limit",
       size_field(info.growth_limit) + " (for this process: max size, reservation)"},
      {"used", size_field(info.used)},
      {"free", size_field(info.free)},
      {"largest free", size_field(info.largest_free)},
      {"page size", std::to_string(info.page_size)},
      {"objects", std::to_string(info.objects)},
      {"generation", std::to_string(info.generation)},
      {"sessions", std::to_string(info.sessions)},
      {"recoveries", std::to_string(info.recoveries)},
      {"walked recoveries", std::to_string(info.walked_recoveries)}};
  std::size_t width = 0;
  for (const auto& field : fields) width = std::max(width, field.first.size());
  std::string text;
  for (const auto& [key, value] : fields) {
    text += key + ':' + std::string(width - key.size() + 1, ' ') + value + '\n';
  }
  return text;
}

std::string heap_info_json(const HeapInfo& info) {
  const nlohmann::ordered_json json = {{"path", info.path},
                                       {"uuid", info.uuid},
                                       {"format_version", info.format_version},
                                       {"features", info.features},
                                       {"mode", lock_mode_name(info.mode)},
                                       {"size", info.size},
                                       {"max_size", info.max_size},
                                       {"growth_limit", info.growth_limit},
                                       {"used", info.used},
                                       {"free", info.free},
                                       {"largest_free", info.largest_free},
                                       {"page_size", info.page_size},
                                       {"objects", info.objects},
                                       {"generation", info.generation},
                                       {"sessions", info.sessions},
                                       {"recoveries", info.recoveries},
                                       {"walked_recoveries", info.walked_recoveries}};
  return json.dump(2) + '\n';
}

}  // namespace sheaf
