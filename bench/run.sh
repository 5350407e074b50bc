#!/usr/bin/env bash
# Builds the benchmarks in Release (-O2 -DNDEBUG, build/bench/) and runs all seven:
# sheaf_heap_bench (5 repetitions, medians, then its Sheaf/Boost and Sheaf/malloc table),
# sheaf_contention_bench (two processes, 5 rounds each, medians and Sheaf/Boost) and
# sheaf_bag_bench (5 repetitions, medians, then Put/cp and Verify/read throughput ratios) and
# sheaf_fs_bench (5 repetitions: a bag read and `ls -l` of 100,000 objects through a FUSE mount,
# beside the same done directly; needs /dev/fuse and, to widen the mount's readahead, root),
# sheaf_recovery_bench (a 4 GiB heap's first open, clean and after a kill, beside the walk;
# 5 rounds), sheaf_holds_bench (a block handed between two processes, held beside plain) and
# sheaf_cli_bench (`sheaf heap` commands on 100,000 objects beside an empty heap) and
# sheaf_msg_bench (message round trips beside raw Unix/TCP sockets and Boost message_queue;
# payloads by heap reference beside copies and iceoryx's loaned chunks, 64 B to 256 MiB,
# also paired with iceoryx's in one benchmark; 3 repetitions interleaved at random, medians).
#
#   bench/run.sh [extra flags for sheaf_heap_bench, e.g. --benchmark_filter=Find]
#
# SHEAF_BENCH_DIR: where the files go (they are removed after); default /dev/shm for the
#   heap benchmarks and /var/tmp for sheaf_bag_bench, which measures fsync and so wants a disk.
#   Set it to a directory on a disk (not tmpfs) if you set it at all.
# SHEAF_BAG_BENCH_BYTES: the bag and file size for sheaf_bag_bench (default 1G; e.g. 64M).
# SHEAF_BAG_BENCH_FLAGS: extra flags for sheaf_bag_bench (e.g. --benchmark_filter=Verify).
# SHEAF_BENCH_BUILD: the build directory (default <repo>/build/bench).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${SHEAF_BENCH_BUILD:-$root/build/bench}

cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DSHEAF_BUILD_BENCH=ON -DSHEAF_BUILD_TESTS=OFF -DSHEAF_BUILD_CLI=ON >/dev/null
ninja -C "$build" sheaf_heap_bench sheaf_contention_bench sheaf_bag_bench sheaf_fs_bench \
  sheaf_recovery_bench sheaf_holds_bench sheaf_cli_bench sheaf_msg_bench

flags=(--benchmark_repetitions=5 --benchmark_report_aggregates_only=true)
echo
echo "== sheaf_heap_bench =="
"$build/bench/sheaf_heap_bench" "${flags[@]}" "$@"
echo
echo "== sheaf_contention_bench =="
"$build/bench/sheaf_contention_bench" "${flags[@]}"
echo
echo "== sheaf_bag_bench =="
read -r -a bag_flags <<<"${SHEAF_BAG_BENCH_FLAGS:-}"
"$build/bench/sheaf_bag_bench" "${flags[@]}" "${bag_flags[@]}"
echo
echo "== sheaf_fs_bench =="
"$build/bench/sheaf_fs_bench" "${flags[@]}"
echo
echo "== sheaf_recovery_bench =="
"$build/bench/sheaf_recovery_bench" "${flags[@]}"
echo
echo "== sheaf_holds_bench =="
"$build/bench/sheaf_holds_bench" "${flags[@]}"
echo
echo "== sheaf_cli_bench =="
"$build/bench/sheaf_cli_bench" "${flags[@]}"
echo
echo "== sheaf_msg_bench =="
# Repetitions interleaved at random: this VM has slow spells (about twice the
# time per round trip, for Sheaf and iceoryx alike) lasting seconds; run one
# after the other, a benchmark that fell into one would be compared with one
# that did not. Interleaved, each median covers several moments of the run.
"$build/bench/sheaf_msg_bench" --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true \
  --benchmark_report_aggregates_only=true
