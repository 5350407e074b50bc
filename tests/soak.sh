#!/usr/bin/env bash
# soak.sh [KILLS] [BUILD_DIR]: the crash test for a long run (default 5000 SIGKILLs).
# Builds the heap tests in Release unless BUILD_DIR already has them.
set -euo pipefail
kills=${1:-5000}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${2:-$root/build/soak}
if [[ ! -x $build/tests/sheaf_heap_tests ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DSHEAF_BUILD_BENCH=OFF -DSHEAF_BUILD_CLI=OFF >/dev/null
  cmake --build "$build" --target sheaf_heap_tests
fi
SHEAF_CRASH_KILLS=$kills "$build/tests/sheaf_heap_tests" \
  --gtest_filter='HeapCrash.*' --gtest_brief=1
