#!/usr/bin/env bash
# cross_host_test.sh WORKER SHEAF: two "hosts" (network namespaces, each with its
# own GlusterFS mount of one volume) update one heap at once; not one update may
# be lost, and `sheaf heap check` must pass on both mounts afterwards.
# Needs root. Exit 77 (skipped) when it cannot run here.
set -euo pipefail
worker=$1
sheaf=$2
workers_per_host=${SHEAF_CROSS_HOST_WORKERS:-2}
rounds=${SHEAF_CROSS_HOST_ROUNDS:-100}
here=$(cd "$(dirname "$0")" && pwd)

if [[ $(id -u) -ne 0 ]]; then echo "skipped: needs root for namespaces and mounts"; exit 77; fi
if ! command -v glusterd >/dev/null; then echo "skipped: glusterfs-server is not installed"; exit 77; fi

state=$(mktemp -d /tmp/sheaf-cross-host-XXXXXX)
cleanup() { "$here/cluster.sh" down "$state" >/dev/null 2>&1 || true; rm -rf "$state"; }
trap cleanup EXIT

"$here/cluster.sh" up "$state" >/dev/null
# shellcheck disable=SC1091
source "$state/cluster.env"
echo "volume mounted at $MOUNT1 (host 1) and $MOUNT2 (host 2)"

# Sanitizer runtimes may not reserve the address space a heap wants inside
# the namespaces' processes; nothing here depends on them.
"$here/cluster.sh" exec "$state" 1 "$worker" init "$MOUNT1/shared.heap"

mounts=([1]="$MOUNT1" [2]="$MOUNT2")
pids=()
id=0
for host in 1 2; do
  for _ in $(seq "$workers_per_host"); do
    id=$((id + 1))
    "$here/cluster.sh" exec "$state" "$host" "$worker" add "${mounts[$host]}/shared.heap" "$id" "$rounds" &
    pids+=($!)
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[[ $status -eq 0 ]] || { echo "FAIL: a worker failed"; exit 1; }

total=$((workers_per_host * 2))
"$here/cluster.sh" exec "$state" 2 "$worker" verify "$MOUNT2/shared.heap" "$total" "$rounds"
"$here/cluster.sh" exec "$state" 1 "$worker" verify "$MOUNT1/shared.heap" "$total" "$rounds"
"$here/cluster.sh" exec "$state" 1 "$sheaf" heap check "$MOUNT1/shared.heap"
"$here/cluster.sh" exec "$state" 2 "$sheaf" heap check "$MOUNT2/shared.heap"
"$here/cluster.sh" exec "$state" 2 "$sheaf" heap info "$MOUNT2/shared.heap"
echo "PASS: $total workers on 2 hosts, $((total * rounds)) locked updates, none lost"
