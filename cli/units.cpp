#include "units.hpp"

#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <system_error>

namespace sheaf::cli {
namespace {

std::invalid_argument bad_size(std::string_view text, std::string_view why) {
  return std::invalid_argument("invalid size '" + std::string(text) + "': " + std::string(why));
}

// The multiplier a suffix stands for, or 0 if it is not one.
std::uint64_t suffix_multiplier(std::string_view suffix) {
  std::string s;
  for (char c : suffix) s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s.empty() || s == "b") return 1;
  constexpr std::string_view kUnits = "kmgtp";
  auto unit = kUnits.find(s[0]);
  if (unit == std::string_view::npos) return 0;
  std::string_view rest = std::string_view(s).substr(1);
  if (!rest.empty() && rest != "b" && rest != "ib") return 0;
  return std::uint64_t{1} << (10 * (unit + 1));
}

}  // namespace

std::uint64_t parse_size(std::string_view text) {
  constexpr std::string_view kExpected =
      "expected a number of bytes with an optional K, M, G or T suffix (e.g. 4096, 64K, 1.5G)";
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };

  std::size_t end = 0;
  while (end < text.size() && is_digit(text[end])) ++end;
  std::string_view whole = text.substr(0, end);
  std::string_view fraction;
  if (end < text.size() && text[end] == '.') {
    std::size_t start = ++end;
    while (end < text.size() && is_digit(text[end])) ++end;
    fraction = text.substr(start, end - start);
  }
  if (whole.empty() && fraction.empty()) throw bad_size(text, kExpected);
  std::uint64_t multiplier = suffix_multiplier(text.substr(end));
  if (multiplier == 0) throw bad_size(text, kExpected);

  std::uint64_t count = 0;
  if (!whole.empty()) {
    auto [ptr, ec] = std::from_chars(whole.data(), whole.data() + whole.size(), count);
    if (ec == std::errc::result_out_of_range) throw bad_size(text, "too large");
  }
  if (count > std::numeric_limits<std::uint64_t>::max() / multiplier) {
    throw bad_size(text, "too large");
  }
  std::uint64_t bytes = count * multiplier;

  // The fraction, in bytes: 0.5 * G. Long double holds it exactly enough,
  // since multiplier is at most 2^50.
  long double part = 0;
  for (auto digit = fraction.rbegin(); digit != fraction.rend(); ++digit) {
    part = (part + static_cast<long double>(*digit - '0')) / 10;
  }
  part *= static_cast<long double>(multiplier);
  if (multiplier == 1 && part != 0) throw bad_size(text, "not a whole number of bytes");
  auto extra = static_cast<std::uint64_t>(std::llround(part));
  if (extra > std::numeric_limits<std::uint64_t>::max() - bytes) throw bad_size(text, "too large");
  return bytes + extra;
}

CLI::Validator size_value() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        try {
          text = std::to_string(parse_size(text));
          return {};
        } catch (const std::invalid_argument& e) {
          return e.what();
        }
      },
      "", "SIZE");
}

}  // namespace sheaf::cli
