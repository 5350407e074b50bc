#!/usr/bin/env bash
# A throw-away GlusterFS volume mounted twice, so that two "hosts" (two FUSE
# mounts = two page caches, each client in its own network namespace) share
# one file. Used by the cross-host heap-file tests.
#
#   cluster.sh up   STATEDIR            bring everything up; the last lines on
#                                       stdout are MOUNT1=, MOUNT2= and (when
#                                       network namespaces are used) NS1=, NS2=,
#                                       HOST1_IP=, HOST2_IP=
#   cluster.sh down STATEDIR            tear everything down; idempotent, also
#                                       after an `up` that failed halfway
#   cluster.sh exec STATEDIR 1|2 CMD..  run CMD as host 1 or host 2
#
# Topology (default): three network namespaces created here, joined by veth
# pairs to a bridge inside the server namespace, private addresses only inside
# them:
#     sheaf-<tag>-srv  10.77.0.1   glusterd + the brick process (glusterfsd)
#     sheaf-<tag>-h1   10.77.0.11  FUSE client of mount 1
#     sheaf-<tag>-h2   10.77.0.12  FUSE client of mount 2
# <tag> is derived from STATEDIR, so `down` finds everything from STATEDIR
# alone. The mounts are made in the root *mount* namespace (nsenter --net only
# switches the network namespace), so MOUNT1/MOUNT2 are visible from the root
# and from `ip netns exec NS1|NS2` alike. Only the FUSE client process talks
# over the network, so its namespace is what makes the two mounts two hosts.
#
# Environment:
#   SHEAF_GLUSTER_NETNS=auto|1|0  auto (default): use namespaces, fall back to
#       two loopback mounts via 127.0.0.2 if namespaces cannot be created;
#       1: namespaces or fail; 0: loopback only.
#   SHEAF_GLUSTER_KEEP_ON_FAIL=1  do not tear down after a failed `up`.
#   SHEAF_GLUSTER_MOUNT_OPTS=...  extra mount options (comma-separated).
#
# Everything glusterd lets us relocate (working directory, run directory, CLI
# socket, pid files, logs) lives under STATEDIR. What it does not: the brick's
# socket in /var/run/gluster and a few empty directories it creates under
# /var/run/gluster and /var/lib/glusterd; `down` removes those it created.
# Requires root, FUSE, and the Debian packages glusterfs-server,
# glusterfs-client, iproute2.
set -euo pipefail

readonly VOL=sheafvol
readonly UP_BUDGET=55        # seconds; the whole `up` must stay under a minute

die() { echo "cluster.sh: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*" >&2; }

usage() {
    cat >&2 <<'EOF'
usage: cluster.sh up STATEDIR
       cluster.sh down STATEDIR
       cluster.sh exec STATEDIR 1|2 CMD [ARGS...]
EOF
    exit 2
}

# ---------------------------------------------------------------- naming ----

# All names and paths derive from the absolute STATEDIR, so `down` needs no
# record written by `up` (which may have died before writing one).
set_names() {
    [[ $1 == /* ]] || set -- "$PWD/$1"
    S=$(realpath -m -- "$1")
    # Gluster brick paths and mount.glusterfs do not cope with odd characters.
    [[ $S =~ ^/[A-Za-z0-9._/-]+$ ]] || die "STATEDIR must match [A-Za-z0-9._/-]: $S"
    [[ $S != / ]] || die "STATEDIR must not be /"
    local tag
    tag=$(printf '%s' "$S" | md5sum | cut -c1-6)
    NS_SRV=sheaf-$tag-srv
    NS1=sheaf-$tag-h1
    NS2=sheaf-$tag-h2
    # veth ends live only inside our namespaces; the names carry the tag so
    # that a stray end in the root namespace would still be recognisably ours.
    VETH1=sh${tag}h1 VETH1_BR=sh${tag}s1
    VETH2=sh${tag}h2 VETH2_BR=sh${tag}s2
    BRIDGE=sh${tag}br
    WORKDIR=$S/glusterd RUNDIR=$S/run LOGDIR=$S/log BRICK=$S/brick
    MNT1=$S/mnt1 MNT2=$S/mnt2
    SOCK=$RUNDIR/glusterd.socket
    ENVFILE=$S/cluster.env
    FOOTPRINT=$S/footprint     # system paths that did not exist before `up`
}

# Paths outside STATEDIR that glusterd creates (hard-coded in glusterd.so).
SYSTEM_PATHS=(
    /var/run/gluster
    /var/run/gluster/snaps
    /var/lib/glusterd
    /var/lib/glusterd/geo-replication
    /var/lib/glusterd/geo-replication/gsyncd_template.conf
    /var/lib/glusterd/ss_brick
)

# ------------------------------------------------------------- processes ----

# True if PID exists and is not a zombie (pid 1 here reaps lazily, and a
# zombie holds no mounts, sockets or namespaces).
alive() {
    local st
    st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z ]]
}

cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# Gluster daemons whose command line names STATEDIR: ours, whichever mode.
our_gluster_pids() {
    local p
    for p in $(pgrep gluster || true); do
        case $(cat "/proc/$p/comm" 2>/dev/null) in
            glusterd | glusterfsd | glusterfs) ;;
            *) continue ;;
        esac
        [[ $(cmdline "$p") == *"$S/"* ]] && echo "$p"
    done
    return 0
}

ns_exists() { [[ -e /run/netns/$1 ]]; }

ns_pids() {
    if ns_exists "$1"; then ip netns pids "$1" 2>/dev/null || true; fi
}

# TERM, wait up to $1 seconds, then KILL and wait a little more. Never touches
# this script or its ancestors (a caller may run `down` from inside a host).
kill_wait() {
    local secs=$1 p i
    shift
    local -a pids=()
    for p in "$@"; do
        is_self_or_ancestor "$p" || pids+=("$p")
    done
    ((${#pids[@]})) || return 0
    KILLED+=("${pids[@]}")
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        any_alive "${pids[@]}" || return 0
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        any_alive "${pids[@]}" || return 0
        sleep 0.1
    done
    return 1
}

any_exists() {
    local p
    for p in "$@"; do [[ -e /proc/$p ]] && return 0; done
    return 1
}

any_alive() {
    local p
    for p in "$@"; do alive "$p" && return 0; done
    return 1
}

is_self_or_ancestor() {
    local p=$$
    while [[ -n $p && $p != 0 ]]; do
        [[ $p == "$1" ]] && return 0
        p=$(awk '/^PPid:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || return 1
    done
    return 1
}

# -------------------------------------------------------------- helpers ----

# wait_for SECONDS WHAT CMD...: poll CMD every 0.2 s; bounded by SECONDS and by
# the overall `up` budget.
wait_for() {
    local secs=$1 what=$2 end
    shift 2
    end=$((SECONDS + secs))
    ((end <= UP_DEADLINE)) || end=$UP_DEADLINE
    while ! "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || { say "timed out waiting for $what"; return 1; }
        sleep 0.2
    done
}

# Run in the server's / host N's network namespace, staying in the root mount
# namespace (unlike `ip netns exec`), so mounts and files are shared.
in_net() {
    local ns=$1
    shift
    if [[ -n $ns ]]; then nsenter --net="/run/netns/$ns" -- "$@"; else "$@"; fi
}

# The gluster CLI, talking to our glusterd over our own socket; bounded.
gcli() {
    timeout 20 gluster --mode=script --glusterd-sock="$SOCK" \
        --log-file="$LOGDIR/cli.log" "$@"
}

dump_logs() {
    local f
    [[ -d $LOGDIR ]] || return 0
    while IFS= read -r f; do
        [[ -s $f ]] || continue
        echo "===== last 30 lines of $f =====" >&2
        tail -n 30 "$f" >&2
    done < <(find "$LOGDIR" -type f -name '*.log' | sort)
}

# -------------------------------------------------------------- teardown ----

# Best effort throughout; verifies the result at the end.
teardown() {
    local m p f i ok=1
    local -a socks=()
    KILLED=()

    # Brick sockets sit in /var/run/gluster (not relocatable): note them from
    # the brick command lines before the processes go away.
    for p in $(our_gluster_pids); do
        f=$(cmdline "$p" | sed -n 's/.* -S \(\/var\/run\/gluster\/[0-9a-f]*\.socket\).*/\1/p')
        [[ -n $f ]] && socks+=("$f")
    done

    # 1. Unmount. A plain umount makes the FUSE client exit by itself; if the
    #    mount is busy, detach it lazily and kill its client below (which
    #    aborts the FUSE connection, so nothing can hang on it).
    for m in "$MNT1" "$MNT2"; do
        if mountpoint -q "$m" 2>/dev/null; then
            timeout 10 umount "$m" 2>/dev/null || timeout 10 umount -l "$m" || true
        fi
    done

    # 2. Everything in the client namespaces (FUSE clients, stray `exec`
    #    commands), then the server side and any of our gluster daemons left
    #    in the root namespace (loopback mode, or a namespace already gone).
    # shellcheck disable=SC2046  # word splitting of pid lists is intended
    kill_wait 3 $(ns_pids "$NS1") $(ns_pids "$NS2") || true
    # shellcheck disable=SC2046
    kill_wait 3 $(ns_pids "$NS_SRV") $(our_gluster_pids) || true

    # 3. Namespaces; their veth ends and the bridge go with them.
    for m in "$NS1" "$NS2" "$NS_SRV"; do
        ns_exists "$m" && { ip netns del "$m" || true; }
    done
    for m in "$VETH1" "$VETH1_BR" "$VETH2" "$VETH2_BR" "$BRIDGE"; do
        ip link show "$m" >/dev/null 2>&1 && { ip link del "$m" || true; }
    done

    # 4. Files outside STATEDIR: brick sockets, then the directories glusterd
    #    created (only those that did not exist before our `up`, only if empty).
    ((${#socks[@]})) && rm -f -- "${socks[@]}"
    if [[ -f $FOOTPRINT ]]; then
        # deepest first
        sort -r "$FOOTPRINT" | while IFS= read -r f; do
            if [[ -d $f ]]; then
                rmdir -- "$f" 2>/dev/null || true
            elif [[ -f $f && ! -s $f ]]; then
                rm -f -- "$f"
            fi
        done
        rm -f -- "$FOOTPRINT"
    fi

    # 5. State under STATEDIR; logs are kept for post-mortems (`up` clears
    #    them). Never remove a directory that is still a mount point.
    rm -f -- "$ENVFILE"
    for m in "$MNT1" "$MNT2"; do
        if mountpoint -q "$m" 2>/dev/null; then
            say "still mounted: $m"; ok=0
        elif [[ -d $m ]]; then
            rmdir -- "$m" 2>/dev/null || rm -rf -- "$m"
        fi
    done
    if ((ok)); then
        rm -rf -- "$WORKDIR" "$RUNDIR" "$BRICK" "$S/glusterd.pid"
    fi

    # 6. Verify. The dead daemons were re-parented to pid 1, which reaps
    #    lazily; wait a little so that `pgrep gluster` comes back empty, but
    #    a zombie holds nothing, so do not fail over one.
    for ((i = 0; i < 100; i++)); do
        any_exists "${KILLED[@]}" || break
        sleep 0.1
    done
    if any_exists "${KILLED[@]}"; then
        say "note: zombie processes await reaping by pid 1 (harmless)"
    fi
    p=$(our_gluster_pids)
    for m in $p; do
        alive "$m" && { say "still running: $m $(cmdline "$m")"; ok=0; }
    done
    for m in "$NS1" "$NS2" "$NS_SRV"; do
        ns_exists "$m" && { say "namespace still present: $m"; ok=0; }
    done
    ((ok))
}

# ------------------------------------------------------------------- up ----

# Only one glusterd per machine (its well-known port and /var/run/gluster are
# shared even though we give ours a private CLI socket): refuse to run beside
# one that is not ours.
check_foreign_glusterd() {
    local p c wd
    for p in $(pgrep -x glusterd || true); do
        alive "$p" || continue
        c=$(cmdline "$p")
        [[ $c == *"$S/"* ]] && continue
        wd=$(sed -n 's/.*working-directory=\([^ ]*\)\/glusterd .*/\1/p' <<<"$c")
        say "another glusterd is already running (pid $p): $c"
        [[ -n $wd ]] && say "it looks like a leftover of this script; stop it with: $0 down $wd"
        die "refusing to start a second glusterd on this machine"
    done
}

# Called after "$NS_SRV" was created successfully, outside any `if`, so that
# set -e stops at the first failing step.
setup_netns() {
    ip netns add "$NS1"
    ip netns add "$NS2"
    ip -n "$NS_SRV" link add "$BRIDGE" type bridge
    # Create each veth pair directly inside its two namespaces, so that no
    # end ever appears in the root namespace.
    ip link add "$VETH1" netns "$NS1" type veth peer name "$VETH1_BR" netns "$NS_SRV"
    ip link add "$VETH2" netns "$NS2" type veth peer name "$VETH2_BR" netns "$NS_SRV"
    ip -n "$NS_SRV" link set "$VETH1_BR" master "$BRIDGE"
    ip -n "$NS_SRV" link set "$VETH2_BR" master "$BRIDGE"
    ip -n "$NS_SRV" addr add "$SRV_IP/24" dev "$BRIDGE"
    ip -n "$NS1" addr add 10.77.0.11/24 dev "$VETH1"
    ip -n "$NS2" addr add 10.77.0.12/24 dev "$VETH2"
    local l
    for l in lo "$BRIDGE" "$VETH1_BR" "$VETH2_BR"; do ip -n "$NS_SRV" link set "$l" up; done
    for l in lo "$VETH1"; do ip -n "$NS1" link set "$l" up; done
    for l in lo "$VETH2"; do ip -n "$NS2" link set "$l" up; done
}

# Can host namespace $1 open a TCP connection to $2:$3? (no ping installed)
tcp_open() {
    # shellcheck disable=SC2016  # expanded by the inner bash
    in_net "$1" timeout 1 bash -c ': <"/dev/tcp/$0/$1"' "$2" "$3"
}

brick_online() {
    gcli volume status "$VOL" --xml | grep -q '<status>1</status>'
}

# The mount is usable when a file created through one mount can be read
# through the other (this also proves both clients reached the brick).
probe_ok() {
    local f=.cluster-sh-probe.$$
    echo ok >"$MNT1/$f" && [[ $(cat "$MNT2/$f") == ok ]] && rm -f "$MNT2/$f"
}

mount_one() { # NS MOUNTPOINT N
    local opts="log-file=$LOGDIR/mount$3.log"
    [[ -n ${SHEAF_GLUSTER_MOUNT_OPTS:-} ]] && opts+=",$SHEAF_GLUSTER_MOUNT_OPTS"
    # No direct-io-mode=enable: it makes mmap(MAP_SHARED) fail with ENODEV.
    in_net "$1" timeout 20 mount -t glusterfs -o "$opts" "$SRV_IP:/$VOL" "$2" >&2
}

on_up_exit() {
    local rc=$1
    ((rc == 0)) && return 0
    say "up failed (exit $rc); gluster logs follow"
    dump_logs
    if [[ ${SHEAF_GLUSTER_KEEP_ON_FAIL:-0} == 1 ]]; then
        say "leaving the half-built cluster in place; run: $0 down $S"
    else
        teardown >&2 || say "teardown after failure was incomplete; run: $0 down $S"
    fi
    exit "$rc"
}

cmd_up() {
    UP_DEADLINE=$((SECONDS + UP_BUDGET))
    [[ $(id -u) == 0 ]] || die "must run as root (namespaces, FUSE mounts)"
    local c
    for c in glusterd gluster glusterfsd mount.glusterfs ip nsenter mountpoint timeout; do
        command -v "$c" >/dev/null || die "missing command: $c (apt-get install glusterfs-server glusterfs-client iproute2)"
    done
    [[ -e /dev/fuse ]] || modprobe fuse 2>/dev/null || true
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing: FUSE is not available"

    check_foreign_glusterd
    # Start from a clean slate: leftovers of an earlier run on this STATEDIR.
    teardown >/dev/null 2>&1 || teardown || die "could not clean up an earlier run on $S"

    trap 'on_up_exit $?' EXIT
    mkdir -p "$S"
    rm -rf -- "$LOGDIR"
    mkdir -p "$WORKDIR" "$RUNDIR" "$LOGDIR" "$BRICK" "$MNT1" "$MNT2"

    local p
    : >"$FOOTPRINT"
    for p in "${SYSTEM_PATHS[@]}"; do
        [[ -e $p ]] || echo "$p" >>"$FOOTPRINT"
    done

    # ---- network
    # Creating the first namespace is the capability test for `auto`.
    local mode=${SHEAF_GLUSTER_NETNS:-auto} use_ns=0
    case $mode in
        0) ;;
        1) ip netns add "$NS_SRV" || die "could not create network namespaces"
           use_ns=1 ;;
        auto)
            if ip netns add "$NS_SRV" 2>"$LOGDIR/netns.err"; then
                use_ns=1
            else
                say "network namespaces unavailable ($(head -n1 "$LOGDIR/netns.err")); using loopback"
            fi ;;
        *) die "SHEAF_GLUSTER_NETNS must be auto, 1 or 0" ;;
    esac
    local srv_ns='' h1_ns='' h2_ns='' where=''
    if ((use_ns)); then
        SRV_IP=10.77.0.1 srv_ns=$NS_SRV h1_ns=$NS1 h2_ns=$NS2 where=" in $NS_SRV"
        setup_netns
    else
        # The gluster CLI refuses 127.0.0.1/localhost as a brick host.
        SRV_IP=127.0.0.2
    fi

    # ---- glusterd (daemonises itself)
    say "starting glusterd on $SRV_IP"
    in_net "$srv_ns" glusterd \
        -p "$S/glusterd.pid" -l "$LOGDIR/glusterd.log" \
        --xlator-option "management.working-directory=$WORKDIR" \
        --xlator-option "management.run-directory=$RUNDIR" \
        --xlator-option "management.logging-directory=$LOGDIR" \
        --xlator-option "management.glusterd-sockfile=$SOCK" \
        --xlator-option "management.transport.socket.bind-address=$SRV_IP"
    wait_for 20 "glusterd to answer" gcli pool list

    # ---- volume: one brick under STATEDIR (`force`: it is on the root fs)
    gcli volume create "$VOL" "$SRV_IP:$BRICK" force >&2
    # Every client-side cache off, or the two mounts are not coherent.
    gcli volume set "$VOL" \
        performance.quick-read off \
        performance.io-cache off \
        performance.read-ahead off \
        performance.readdir-ahead off \
        performance.open-behind off \
        performance.write-behind off \
        performance.stat-prefetch off \
        performance.nl-cache off >&2
    gcli volume start "$VOL" >&2
    wait_for 20 "the brick to come online" brick_online

    # ---- the two hosts' mounts
    if ((use_ns)); then
        wait_for 10 "host 1 to reach the server" tcp_open "$h1_ns" "$SRV_IP" 24007
        wait_for 10 "host 2 to reach the server" tcp_open "$h2_ns" "$SRV_IP" 24007
    fi
    say "mounting"
    mount_one "$h1_ns" "$MNT1" 1
    mount_one "$h2_ns" "$MNT2" 2
    wait_for 20 "the mounts to work" timeout 5 bash -c "$(declare -f probe_ok); MNT1=$MNT1 MNT2=$MNT2 probe_ok"

    {
        echo "MOUNT1=$MNT1"
        echo "MOUNT2=$MNT2"
        if ((use_ns)); then
            echo "NS1=$NS1"
            echo "NS2=$NS2"
            echo "HOST1_IP=10.77.0.11"
            echo "HOST2_IP=10.77.0.12"
        fi
    } >"$ENVFILE"
    say "up in ${SECONDS}s (volume $VOL, server $SRV_IP$where, logs in $LOGDIR)"
    trap - EXIT
    cat "$ENVFILE"
}

cmd_down() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    teardown || die "teardown incomplete (see messages above)"
    say "down"
}

cmd_exec() {
    local host=${1:-}
    shift || true
    [[ $host == 1 || $host == 2 ]] || usage
    (($#)) || usage
    [[ -f $ENVFILE ]] || die "cluster is not up ($ENVFILE missing); run: $0 up $S"
    local MOUNT1='' MOUNT2='' NS1='' NS2='' HOST1_IP='' HOST2_IP=''
    # shellcheck source=/dev/null
    . "$ENVFILE"
    local ns mnt
    if [[ $host == 1 ]]; then ns=$NS1 mnt=$MOUNT1; else ns=$NS2 mnt=$MOUNT2; fi
    # For the command's convenience: its own host's mount.
    export SHEAF_HOST=$host SHEAF_MOUNT=$mnt
    if [[ -n $ns ]]; then
        exec ip netns exec "$ns" "$@"
    fi
    exec "$@"
}

(($# >= 2)) || usage
action=$1
set_names "$2"
shift 2
case $action in
    up) (($# == 0)) || usage; cmd_up ;;
    down) (($# == 0)) || usage; cmd_down ;;
    exec) cmd_exec "$@" ;;
    *) usage ;;
esac
