#!/usr/bin/env bash
# cross_host_test.sh WORKER SHEAF MSG_WORKER: two "hosts" (network namespaces,
# each with its own GlusterFS mount of one volume) update one heap at once; not
# one update may be lost, and `sheaf heap check` must pass on both mounts
# afterwards. Then a store on the volume is mounted with `sheaf mount` through
# host 1's mount, and every change host 2 makes must show in it at once. Then
# messages go between the hosts over TCP (a manager and a channel on host 1,
# authenticated with a shared secret), with payloads by heap reference both
# ways.
# Needs root. Exit 77 (skipped) when it cannot run here.
set -euo pipefail
worker=$1
sheaf=$2
msg_worker=$3
workers_per_host=${SHEAF_CROSS_HOST_WORKERS:-2}
rounds=${SHEAF_CROSS_HOST_ROUNDS:-100}
here=$(cd "$(dirname "$0")" && pwd)

if [[ $(id -u) -ne 0 ]]; then echo "skipped: needs root for namespaces and mounts"; exit 77; fi
if ! command -v glusterd >/dev/null; then echo "skipped: glusterfs-server is not installed"; exit 77; fi

state=$(mktemp -d /tmp/sheaf-cross-host-XXXXXX)
fsmnt=$state/fsmnt
cleanup() {
  if mountpoint -q "$fsmnt" 2>/dev/null; then "$sheaf" umount --lazy "$fsmnt" || true; fi
  "$here/cluster.sh" down "$state" >/dev/null 2>&1 || true
  rm -rf "$state"
}
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

# --- Strict turns between hosts, with an observer -----------------------------------
# Two processes on different hosts take turns through a counter (each loops on
# exclusive() until it is its turn, and reads 1 MiB in it); a third reads the
# counter under the lock once a second. Blocking lock requests once stalled
# this for 12-20 s; a wait over 5 s fails it.
turns=${SHEAF_CROSS_HOST_TURNS:-150}
"$here/cluster.sh" exec "$state" 1 "$worker" observe "$MOUNT1/shared.heap" 8 &
observer=$!
"$here/cluster.sh" exec "$state" 1 "$worker" turns "$MOUNT1/shared.heap" 0 2 "$turns" &
turn1=$!
"$here/cluster.sh" exec "$state" 2 "$worker" turns "$MOUNT2/shared.heap" 1 2 "$turns" &
turn2=$!
status=0
for pid in "$turn1" "$turn2" "$observer"; do wait "$pid" || status=1; done
[[ $status -eq 0 ]] || { echo "FAIL: strict turns between hosts stalled"; exit 1; }
echo "PASS: $((turns * 2)) strict turns between 2 hosts with an observer, no stall"

# --- The FUSE view on host 1 of what host 2 changes -------------------------------
# The server runs in the root namespaces but reads the store through host 1's
# GlusterFS mount (its own page cache); host 2 changes it through its own.
fail() { echo "FAIL: $*"; exit 1; }
on2() { "$here/cluster.sh" exec "$state" 2 "$sheaf" "$@"; }
"$sheaf" store init "$MOUNT1/store" >/dev/null
"$here/cluster.sh" exec "$state" 1 "$sheaf" heap create "$MOUNT1/store/h" --mode network >/dev/null
mkdir "$fsmnt"
"$sheaf" mount "$MOUNT1/store" "$fsmnt"
printf 'one' >"$state/v1"
printf 'two, longer' >"$state/v2"

on2 heap put "$MOUNT2/store/h" greeting "$state/v1"
[[ $(cat "$fsmnt/heaps/h/objects/greeting") == one ]] || fail "host 2's new object is not in host 1's mount"
ls -l "$fsmnt/heaps/h/objects" >/dev/null  # a listing: its attributes are now in host 1's kernel
on2 heap put --force "$MOUNT2/store/h" greeting "$state/v2"
sleep 0.1  # the listing watcher's period is 20 ms; the heap lock round trip a few ms
[[ $(stat -c %s "$fsmnt/heaps/h/objects/greeting") == 11 ]] || fail "stale size after host 2 replaced the object"
[[ $(cat "$fsmnt/heaps/h/objects/greeting") == "two, longer" ]] || fail "stale bytes after host 2 replaced the object"
on2 heap rm "$MOUNT2/store/h" greeting
if ls "$fsmnt/heaps/h/objects" | grep -q greeting; then fail "host 2 removed the object; host 1's listing still has it"; fi

on2 bag put "$MOUNT2/store" b "$state/v1"
cmp -s "$state/v1" "$fsmnt/bags/b" || fail "host 2's new bag does not read right on host 1"
on2 bag put "$MOUNT2/store" b "$state/v2"
cmp -s "$state/v2" "$fsmnt/bags/b" || fail "host 2 replaced the bag; host 1 reads the old one"
[[ $(getfattr --absolute-names --only-values -n user.sheaf.xxh128 "$fsmnt/bags/b") == $(on2 bag info --json "$MOUNT2/store" b | grep -o '"checksum": *"[0-9a-f]*"' | grep -o '[0-9a-f]\{32\}') ]] ||
  fail "host 1's checksum attribute differs from host 2's bag info"
"$sheaf" umount "$fsmnt"
echo "PASS: host 2's changes to objects and bags show at once in host 1's FUSE view"

# --- Messages between the hosts, payloads by heap reference both ways --------------
# A manager and a channel owner on host 1 listen on host 1's address (not
# loopback: only clients that know the shared secret get in); host 2 sends
# loans of a heap both hosts map through their own mounts, and gets loans back.
if [[ -z ${HOST1_IP:-} ]]; then
  echo "SKIP: messages between hosts need the network namespaces (loopback fallback in use)"
  exit 0
fi
"$sheaf" msg secret "$state/secret" 2>/dev/null
"$here/cluster.sh" exec "$state" 1 "$sheaf" heap create "$MOUNT1/msg.heap" --mode network >/dev/null
used_before=$("$sheaf" heap info --json "$MOUNT1/msg.heap" | grep -o '"used": *[0-9]*' | grep -o '[0-9]*$')
manager="$HOST1_IP:9300"
"$here/cluster.sh" exec "$state" 1 "$sheaf" msg manager --listen "$manager" --secret-file "$state/secret" >"$state/manager.log" 2>&1 &
manager_pid=$!
stop_manager() { kill "$manager_pid" 2>/dev/null || true; wait "$manager_pid" 2>/dev/null || true; }
trap 'stop_manager; cleanup' EXIT
for _ in $(seq 50); do grep -q listening "$state/manager.log" && break; sleep 0.1; done
grep -q listening "$state/manager.log" || fail "the manager did not start: $(cat "$state/manager.log")"

# Without the secret, host 2 is turned away, with a message that says why.
if out=$("$here/cluster.sh" exec "$state" 2 "$sheaf" msg channels --manager "$manager" --secret-file /dev/null/none 2>&1); then
  fail "host 2 listed channels without the secret"
fi
[[ $out == *"shared secret"* ]] || fail "refusal without the secret does not say why: $out"

msg_rounds=${SHEAF_CROSS_HOST_MESSAGES:-44}
"$here/cluster.sh" exec "$state" 1 "$msg_worker" serve "$MOUNT1/msg.heap" "$manager" "$HOST1_IP:0" "$state/secret" "$msg_rounds" &
server=$!
"$here/cluster.sh" exec "$state" 2 "$msg_worker" send "$MOUNT2/msg.heap" "$manager" "$state/secret" "$msg_rounds" ||
  fail "host 2's sends by reference failed"
wait "$server" || fail "host 1's channel owner failed"
# `sheaf msg bench` between the hosts: host 1 serves, host 2 measures, by
# reference (through the heap on the volume) and by copy (over TCP).
"$here/cluster.sh" exec "$state" 1 "$sheaf" msg bench --serve xbench --heap "$MOUNT1/msg.heap" \
  --manager "$manager" --tcp "$HOST1_IP:0" --secret-file "$state/secret" >"$state/bench-serve.log" 2>&1 &
bench_server=$!
bench=$("$here/cluster.sh" exec "$state" 2 "$sheaf" msg bench --to xbench --heap "$MOUNT2/msg.heap" \
  --manager "$manager" --secret-file "$state/secret" --sizes 64,64K --rounds 3 --json) ||
  fail "sheaf msg bench from host 2 to host 1 failed: $bench $(cat "$state/bench-serve.log")"
wait "$bench_server" || fail "sheaf msg bench --serve on host 1 failed: $(cat "$state/bench-serve.log")"
[[ $bench == *'"by_reference_p50_us"'*'"by_reference_p50_us"'* ]] ||
  fail "sheaf msg bench between the hosts printed no results for both sizes: $bench"
echo "sheaf msg bench between the hosts: $bench"
stop_manager
check=$("$here/cluster.sh" exec "$state" 1 "$sheaf" heap check "$MOUNT1/msg.heap" 2>&1) ||
  fail "heap check on host 1 after the messages: $check"
check=$("$here/cluster.sh" exec "$state" 2 "$sheaf" heap check "$MOUNT2/msg.heap" 2>&1) ||
  fail "heap check on host 2 after the messages: $check"
used_after=$("$sheaf" heap info --json "$MOUNT1/msg.heap" | grep -o '"used": *[0-9]*' | grep -o '[0-9]*$')
[[ $used_after == "$used_before" ]] || fail "the heap uses $used_after bytes after the messages, $used_before before: references leaked"
echo "PASS: $msg_rounds messages from host 2 to host 1 and their replies, all by heap reference over authenticated TCP; nothing leaked"
