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
# Inside the build tree, not /tmp: a run killed by ctest's timeout (no trap
# runs then) leaves nothing behind that the next run does not remove.
work=$build/install-test
rm -rf "$work"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"

# Quiet when it works, everything when it does not.
quiet() {
  if ! "$@" >"$work/log" 2>&1; then
    cat "$work/log"
    echo "failed: $*"
    exit 1
  fi
}

quiet cmake --install "$build" --prefix "$work/prefix"
flags=""
case $sanitize in "" | OFF | off | FALSE | false | 0 | NO | no) ;; *) flags="-fsanitize=$sanitize" ;; esac
quiet cmake -S "$here" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" \
  -DMESSIP_PROGRAMS="$here/../msg/messip_programs.c"
quiet cmake --build "$work/build"

# The headers came from the prefix, and so did the libraries.
grep -q -- "-isystem $work/prefix/include" "$work/build/build.ninja" ||
  { echo "the consumer was not built against the installed headers"; exit 1; }
grep -q -- "$work/prefix/lib[^ ]*/libsheaf_msg.a" "$work/build/build.ninja" ||
  { echo "the consumer was not linked with the installed libsheaf_msg"; exit 1; }

"$work/build/consumer" "$work/consumer.heap"
"$here/../msg/messip_test.sh" "$work/build/messip_programs" "$work/prefix/bin/sheaf"
echo "installed Sheaf: find_package, Sheaf::sheaf, Sheaf::msg and messip.h work from outside the tree"
