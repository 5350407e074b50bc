#!/usr/bin/env bash
# MESSIP programs (messip_programs.c) against a real manager: a server, a
# client, and a client that kills itself; each checks what it sees.
#   messip_test.sh PROGRAMS SHEAF
set -euo pipefail
programs=$1
sheaf=$2
out=$(mktemp -d /tmp/sheaf-messip-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT

"$sheaf" msg manager --listen 127.0.0.1:0 >"$out/manager" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q "listening on" "$out/manager" && break
  sleep 0.05
done
address=$(sed -n 's/.*listening on //p' "$out/manager")
[[ -n $address ]] || { echo "the manager did not start"; cat "$out/manager"; exit 1; }
export SHEAF_MANAGER=$address

"$programs" server >"$out/server" 2>&1 &
server=$!
pids+=($server)
timeout 30 "$programs" client
# The dying client's death must reach the server as MESSIP_MSG_DEATH_PROCESS.
status=0
timeout 30 "$programs" dying || status=$?
[[ $status -eq 137 ]] || { echo "the dying client exited $status, not by SIGKILL"; exit 1; }
if ! wait "$server"; then
  echo "the server failed:"
  cat "$out/server"
  exit 1
fi
# Without messip_death_notify, a client's death is a disconnection; and a
# channel whose client waits on it is not deleted.
"$programs" plain-server >"$out/plain-server" 2>&1 &
plain=$!
pids+=($plain)
status=0
timeout 30 "$programs" dying-unnoticed || status=$?
[[ $status -eq 137 ]] || { echo "the unnoticed dying client exited $status, not by SIGKILL"; exit 1; }
if ! wait "$plain"; then
  echo "the plain server failed:"
  cat "$out/plain-server"
  exit 1
fi
echo "MESSIP programs: server, client, dying clients (noticed and not) all passed"
