// cli/progress.hpp: a progress bar on standard error for long transfers.
//
// Shown only when a person is watching (standard output and standard error
// are both terminals) and the work is large (more than kProgressThreshold
// bytes, or an input of unknown size once that much has gone by); scripts
// see nothing.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sheaf::cli {

inline constexpr std::uint64_t kProgressThreshold = std::uint64_t{64} << 20;

// The bar's line, at most `width - 1` characters (so the terminal never
// wraps), from the bytes done, the bytes in all (0: unknown) and the seconds
// since the work began:
//   "put  1.2 GiB / 3.0 GiB  40%  412.3 MiB/s  0:04 left  [#####.......]"
//   "put  1.2 GiB  412.3 MiB/s"                  (total unknown)
std::string format_progress(std::string_view label, std::uint64_t done, std::uint64_t total,
                            double elapsed_seconds, std::size_t width);

// Whether to show a bar: on terminals, for large work (total 0: unknown).
bool progress_wanted(bool on_terminals, std::uint64_t done, std::uint64_t total);

class ProgressBar {
 public:
  // total 0: unknown. Whether it draws is decided by progress_wanted(), with
  // on_terminals = isatty(stdout) && isatty(stderr).
  ProgressBar(std::string label, std::uint64_t total);
  ~ProgressBar() { finish(); }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Reports progress; redraws at most ten times a second.
  void update(std::uint64_t done);
  void set_total(std::uint64_t total) { total_ = total; }
  // Starts the clock again (rate and time left count from now), with a new total.
  void restart(std::uint64_t total);
  // Shows "label  text" where the bar goes, for a stretch of work that has
  // no progress to report; only when a bar would be shown for the total.
  void status(std::string_view text);
  // Clears the line, if one was drawn.
  void finish();

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_;
  std::uint64_t total_;
  bool on_terminals_;
  bool drawn_ = false;
  Clock::time_point start_;
  Clock::time_point last_draw_;
};

}  // namespace sheaf::cli
