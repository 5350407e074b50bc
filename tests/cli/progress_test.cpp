// Unit tests of the progress bar's line (cli/progress.hpp): a pure function
// of the bytes done, the total and the time taken.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "progress.hpp"

namespace {

using sheaf::cli::format_progress;
using sheaf::cli::kProgressThreshold;
using sheaf::cli::progress_wanted;

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;

std::size_t count(const std::string& text, char c) {
  return static_cast<std::size_t>(std::count(text.begin(), text.end(), c));
}

TEST(ProgressLine, KnownTotalShowsSizesPercentRateTimeLeftAndBar) {
  const std::string line = format_progress("put x", kGiB, 3 * kGiB, 2.0, 80);
  EXPECT_EQ(line.rfind("put x  1.0 GiB / 3.0 GiB  33%  512.0 MiB/s  0:04 left  [", 0), 0u) << line;
  EXPECT_EQ(line.size(), 79u) << line;  // the whole width but the last column
  EXPECT_EQ(line.back(), ']');
  const std::string bar = line.substr(line.find('[') + 1, line.size() - line.find('[') - 2);
  EXPECT_EQ(count(bar, '#') + count(bar, '.'), bar.size()) << bar;
  EXPECT_NEAR(static_cast<double>(count(bar, '#')), static_cast<double>(bar.size()) / 3, 1.0)
      << bar;
}

TEST(ProgressLine, FinishedIsFullBar) {
  const std::string line = format_progress("get", 100 * kMiB, 100 * kMiB, 1.0, 80);
  EXPECT_NE(line.find("100%"), std::string::npos) << line;
  EXPECT_NE(line.find("0:00 left"), std::string::npos) << line;
  const std::size_t open = line.find('[');
  ASSERT_NE(open, std::string::npos) << line;
  EXPECT_EQ(line.find('.', open), std::string::npos) << line;
  EXPECT_EQ(line.size(), 79u);
}

TEST(ProgressLine, MoreThanTotalIsClamped) {
  const std::string line = format_progress("get", 200 * kMiB, 100 * kMiB, 1.0, 80);
  EXPECT_NE(line.find("100.0 MiB / 100.0 MiB  100%"), std::string::npos) << line;
}

TEST(ProgressLine, UnknownTotalShowsBytesAndRateOnly) {
  EXPECT_EQ(format_progress("put x", 100 * kMiB, 0, 2.0, 80), "put x  100.0 MiB  50.0 MiB/s");
}

TEST(ProgressLine, NoTimeYetMeansNoRateAndNoEstimate) {
  const std::string line = format_progress("verify", 0, kGiB, 0.0, 80);
  EXPECT_NE(line.find("0 B / 1.0 GiB  0%  -- MiB/s"), std::string::npos) << line;
  EXPECT_EQ(line.find("left"), std::string::npos) << line;
}

TEST(ProgressLine, LongEstimatesUseHours) {
  const std::string line = format_progress("put", kMiB, 3601 * kMiB, 1.0, 100);
  EXPECT_NE(line.find("1.0 MiB/s  1:00:00 left"), std::string::npos) << line;
}

TEST(ProgressLine, NarrowTerminalDropsTheBarThenTruncates) {
  const std::string wide = format_progress("put x", kGiB, 3 * kGiB, 2.0, 200);
  const std::string narrow = format_progress("put x", kGiB, 3 * kGiB, 2.0, 50);
  EXPECT_NE(wide.find('['), std::string::npos) << wide;
  EXPECT_EQ(narrow.find('['), std::string::npos) << narrow;
  EXPECT_LE(narrow.size(), 49u);
  EXPECT_EQ(format_progress("put x", kGiB, 3 * kGiB, 2.0, 10), "put x  1.");
  EXPECT_EQ(format_progress("put x", kGiB, 3 * kGiB, 2.0, 0), "");
}

TEST(ProgressPolicy, OnlyOnTerminalsAndOnlyForLargeWork) {
  EXPECT_FALSE(progress_wanted(false, 0, 10 * kGiB));
  EXPECT_FALSE(progress_wanted(false, 10 * kGiB, 0));
  EXPECT_TRUE(progress_wanted(true, 0, 10 * kGiB));
  EXPECT_TRUE(progress_wanted(true, 0, kProgressThreshold + 1));
  EXPECT_FALSE(progress_wanted(true, 0, kProgressThreshold));
  EXPECT_FALSE(progress_wanted(true, kMiB, 10 * kMiB));
  // Unknown size: shown once that much has gone by.
  EXPECT_FALSE(progress_wanted(true, kProgressThreshold, 0));
  EXPECT_TRUE(progress_wanted(true, kProgressThreshold + 1, 0));
}

}  // namespace
