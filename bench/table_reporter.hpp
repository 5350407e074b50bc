// table_reporter.hpp: what both benchmark programs use to print their ratio tables.
//
// Google Benchmark's console output as usual; every run is also handed to
// collect(), and print_table() runs once all are in.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <optional>
#include <ostream>
#include <vector>

namespace sheaf_bench {

// One measurement's median: the "median" aggregate when the benchmark ran
// with repetitions, else the median of its single runs.
struct Median {
  std::optional<double> aggregate;
  std::vector<double> samples;

  void add(const benchmark::BenchmarkReporter::Run& run, double value) {
    if (run.run_type == benchmark::BenchmarkReporter::Run::RT_Aggregate) {
      aggregate = value;
    } else {
      samples.push_back(value);
    }
  }
  double value() const {  // -1 when nothing was measured
    if (aggregate) return *aggregate;
    if (samples.empty()) return -1;
    std::vector<double> s = samples;
    std::sort(s.begin(), s.end());
    const std::size_t n = s.size();
    return n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
  }
};

class TableReporter : public benchmark::ConsoleReporter {
 public:
  using benchmark::ConsoleReporter::ConsoleReporter;

  void ReportRuns(const std::vector<Run>& runs) override {
    benchmark::ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (tabled(run)) collect(run);
    }
  }
  void Finalize() override {
    benchmark::ConsoleReporter::Finalize();
    print_table(GetOutputStream());
  }

 protected:
  // Only runs without errors that are single runs or the time median.
  virtual void collect(const Run& run) = 0;
  virtual void print_table(std::ostream& out) const = 0;

 private:
  static bool tabled(const Run& run) {
    if (run.error_occurred) return false;
    return run.run_type != Run::RT_Aggregate ||
           (run.aggregate_name == "median" && run.aggregate_unit == benchmark::kTime);
  }
};

}  // namespace sheaf_bench
