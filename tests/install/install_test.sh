#!/usr/bin/env bash
# Installs Sheaf from a build tree into a temporary prefix, builds a project
# outside the tree against it (tests/install: find_package(Sheaf), a C++
# program on Sheaf::sheaf and Sheaf::msg, the MESSIP C programs on
# messip.h), and runs both: the consumer sends a message by reference, and
# the MESSIP programs pass tests/msg/messip_test.sh against the installed
# `sheaf` command's manager.
#   install_test.sh BUILD_DIR CXX_COMPILER C_COMPILER SANITIZE
# (SANITIZE: the build's -fsanitize list, or empty; the consumer links the
# same runtime.)
set -euo pipefail
build=$1
cxx=$2
cc=$3
sanitize=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/sheaf-install-XXXXXX)
trap 'rm -rf "$work"' EXIT

cmake --install "$build" --prefix "$work/prefix" >/dev/null
flags=""
[[ -n $sanitize ]] && flags="-fsanitize=$sanitize"
cmake -S "$here" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" \
  -DMESSIP_PROGRAMS="$here/../msg/messip_programs.c" >/dev/null
cmake --build "$work/build" >/dev/null

# The headers and libraries came from the prefix, not the source tree.
grep -q -- "-isystem $work/prefix/include" "$work/build/build.ninja" ||
  { echo "the consumer was not built against the installed headers"; exit 1; }

"$work/build/consumer" "$work/consumer.heap"
"$here/../msg/messip_test.sh" "$work/build/messip_programs" "$work/prefix/bin/sheaf"
echo "installed Sheaf: find_package, Sheaf::sheaf, Sheaf::msg and messip.h work from outside the tree"
