#include "progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <utility>

#include "units.hpp"

namespace sheaf::cli {
namespace {

constexpr std::size_t kMinBar = 10;  // narrower than this, the bar is left out

std::string rate_text(std::uint64_t done, double elapsed) {
  if (elapsed <= 0) return "-- MiB/s";
  std::array<char, 32> text{};
  std::snprintf(text.data(), text.size(), "%.1f MiB/s",
                static_cast<double>(done) / elapsed / (1024.0 * 1024.0));
  return text.data();
}

// "0:04", "12:34", "1:02:03".
std::string duration_text(double seconds) {
  const auto total = static_cast<std::uint64_t>(seconds + 0.5);
  std::array<char, 32> text{};
  if (total >= 3600) {
    std::snprintf(text.data(), text.size(), "%llu:%02llu:%02llu",
                  static_cast<unsigned long long>(total / 3600),
                  static_cast<unsigned long long>(total / 60 % 60),
                  static_cast<unsigned long long>(total % 60));
  } else {
    std::snprintf(text.data(), text.size(), "%llu:%02llu",
                  static_cast<unsigned long long>(total / 60),
                  static_cast<unsigned long long>(total % 60));
  }
  return text.data();
}

std::size_t terminal_width() {
  winsize size{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  return 80;
}

}  // namespace

std::string format_progress(std::string_view label, std::uint64_t done, std::uint64_t total,
                            double elapsed_seconds, std::size_t width) {
  const std::size_t room = width > 0 ? width - 1 : 0;
  std::string line(label);
  if (total == 0) {
    line += "  " + format_size(done) + "  " + rate_text(done, elapsed_seconds);
    return line.substr(0, room);
  }
  done = std::min(done, total);
  const double fraction = static_cast<double>(done) / static_cast<double>(total);
  line += "  " + format_size(done) + " / " + format_size(total);
  line += "  " + std::to_string(static_cast<int>(fraction * 100)) + "%";
  line += "  " + rate_text(done, elapsed_seconds);
  if (done > 0 && elapsed_seconds > 0) {
    const double rate = static_cast<double>(done) / elapsed_seconds;
    line += "  " + duration_text(static_cast<double>(total - done) / rate) + " left";
  }
  // The bar takes the rest of the line: "  [" + cells + "]".
  if (room >= line.size() + 4 + kMinBar) {
    const std::size_t cells = room - line.size() - 4;
    const auto full = static_cast<std::size_t>(fraction * static_cast<double>(cells));
    line += "  [" + std::string(full, '#') + std::string(cells - full, '.') + "]";
  }
  return line.substr(0, room);
}

bool progress_wanted(bool on_terminals, std::uint64_t done, std::uint64_t total) {
  if (!on_terminals) return false;
  return total == 0 ? done > kProgressThreshold : total > kProgressThreshold;
}

ProgressBar::ProgressBar(std::string label, std::uint64_t total)
    : label_(std::move(label)),
      total_(total),
      on_terminals_(::isatty(STDOUT_FILENO) == 1 && ::isatty(STDERR_FILENO) == 1),
      start_(Clock::now()),
      last_draw_(start_) {}

void ProgressBar::update(std::uint64_t done) {
  if (!progress_wanted(on_terminals_, done, total_)) return;
  const Clock::time_point now = Clock::now();
  if (drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  drawn_ = true;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const std::string line = "\r" + format_progress(label_, done, total_, elapsed, terminal_width());
  // Erase whatever a longer earlier line left to the right ("\033[K").
  std::fprintf(stderr, "%s\033[K", line.c_str());
  std::fflush(stderr);
}

void ProgressBar::restart(std::uint64_t total) {
  total_ = total;
  start_ = Clock::now();
}

void ProgressBar::status(std::string_view text) {
  if (!progress_wanted(on_terminals_, 0, total_)) return;
  drawn_ = true;
  const std::string line = label_ + "  " + std::string(text);
  std::fprintf(stderr, "\r%s\033[K", line.substr(0, terminal_width() - 1).c_str());
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (!drawn_) return;
  std::fputs("\r\033[K", stderr);
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace sheaf::cli
