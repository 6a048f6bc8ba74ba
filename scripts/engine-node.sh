#!/usr/bin/env bash
# engine-node.sh - private Docker engines for tests, each in a network namespace of its own.
#
# Usage (as root):
#   scripts/engine-node.sh up NAME [--no-swarm] [--heartbeat DURATION]
#       create the node if needed (network namespace with its own address on
#       the hub bridge, cgroup, folders), start its engine and make it a
#       single-node swarm manager (--no-swarm: leave it out of any swarm, for
#       `join`). Idempotent: an existing node is started and checked.
#   scripts/engine-node.sh stop NAME [--timeout SECONDS]
#       stop the node's engine: SIGTERM, SIGKILL after SECONDS (default 30;
#       0 kills at once, like a crash), then kill whatever is left in its
#       cgroup (containerd, shims, containers). Namespace and data stay.
#   scripts/engine-node.sh start NAME
#       start the engine again on the same data (same swarm, same node ID)
#   scripts/engine-node.sh down NAME
#       kill everything of the node and remove its namespace, cgroups, mounts
#       and folders; the hub goes too once no node is left. Idempotent.
#   scripts/engine-node.sh status NAME
#       key=value lines; exit 0 when the engine answers, 3 when the node
#       exists but its engine does not answer, 4 when there is no such node
#   scripts/engine-node.sh socket NAME     print the engine's unix socket path
#   scripts/engine-node.sh address NAME    print the node's address on the hub
#   scripts/engine-node.sh join NAME MANAGER
#       make NAME (up with --no-swarm) a manager of MANAGER's swarm
#   scripts/engine-node.sh cut NAME | heal NAME
#       take the node's link to the hub down (a partition) or up again
#   scripts/engine-node.sh exec NAME COMMAND...
#       run COMMAND in the node's network namespace (the host cannot reach
#       node addresses)
#   scripts/engine-node.sh list            names of the existing nodes
#   scripts/engine-node.sh cluster up NAME... [--heartbeat DURATION] [--image IMAGE]
#       a swarm of several managers: the first NAME is up as a swarm of its
#       own, the others come up beside it and join it as managers (three or
#       five keep quorum when one fails). --image copies IMAGE from the
#       caller's default engine (docker save, read only) into every node.
#       Idempotent: nodes already up and joined are left as they are.
#   scripts/engine-node.sh cluster status NAME...
#       one line per node: name, engine, swarm state, leader, address;
#       exit 0 when exactly one answering node says it is the leader
#   scripts/engine-node.sh cluster down NAME...
#       down every node (the hub goes once no node is left)
#
#   Trying failover by hand, say with nodes m1 m2 m3:
#       engine-node.sh cluster up m1 m2 m3 --image swarmkeeper-test/busybox:latest
#       engine-node.sh cluster status m1 m2 m3      # who leads?
#       engine-node.sh stop m1 --timeout 5          # stop the leader's engine
#       engine-node.sh cluster status m1 m2 m3      # a new leader in 10-30 s
#       engine-node.sh start m1                     # back, as a follower
#       engine-node.sh cut m2; engine-node.sh heal m2   # a partition, and its end
#       DOCKER_HOST=unix://$(engine-node.sh socket m2) docker node ls
#       engine-node.sh cluster down m1 m2 m3
#
# Environment:
#   SKENG_RUN     run folder: sockets, pidfiles, exec roots (default /run/skeng)
#   SKENG_STATE   state folder: data roots, configs, logs (default /var/lib/skeng)
#   SKENG_SUBNET  first three octets of the hub's /24 (default 10.213.0)
#   SKENG_START_WAIT  seconds for a starting engine to answer (default 60)
#
# Why this exists: tests of failover, restarts and partitions need engines of
# their own, never the shared one on /var/run/docker.sock. Each node runs in
# its own network namespace, joined by a veth to a bridge in a separate "hub"
# namespace (the host's FORWARD policy never sees that traffic), in its own
# mount and UTS namespace (fresh sysfs with the cgroup mounts bound back, a
# private /run/containerd, its own hostname), and with its whole process tree
# (dockerd, containerd, shims, containers) in a cgroup of its own, by which it
# is stopped: processes are never found by name.
set -euo pipefail
shopt -s inherit_errexit

readonly PROG=${0##*/}
SELF=$(readlink -f "$0")
readonly SELF
readonly RUN_BASE=${SKENG_RUN:-/run/skeng}
readonly STATE_BASE=${SKENG_STATE:-/var/lib/skeng}
readonly SUBNET=${SKENG_SUBNET:-10.213.0}
readonly START_WAIT=${SKENG_START_WAIT:-60}
readonly LOCK_FILE=$RUN_BASE.lock
readonly HUB_NS=skeng-hub
readonly BRIDGE=br0
readonly NS_PREFIX=skeng-
readonly CG_NAME=skeng          # top cgroup of all nodes, in every hierarchy
readonly FIRST_HOST=10          # node index K has address SUBNET.(FIRST_HOST+K)
readonly MAX_INDEX=200
readonly LEADER_WAIT=60

# dockerd finds containerd, runc and docker-proxy through PATH; Debian puts
# them in sbin folders that a caller's PATH may lack.
export PATH=${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/sbin:/sbin

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^# Why/{/^# Why/d;s/^# \{0,1\}//p}' "$0"
}

# ------------------------------------------------------------------- naming --

check_name() {
    [[ ${1-} =~ ^[a-z][a-z0-9-]{0,19}$ && $1 != hub && $1 != *- ]] ||
        die "bad node name '${1-}': use 1-20 of a-z, 0-9 and '-', starting with a letter (not 'hub')"
}

set_node() {
    check_name "$1"
    NAME=$1
    NS=$NS_PREFIX$NAME
    RUN_DIR=$RUN_BASE/$NAME
    STATE_DIR=$STATE_BASE/$NAME
    SOCKET=$RUN_DIR/docker.sock
    DOCKERD_PIDFILE=$RUN_DIR/dockerd.pid
    EXEC_ROOT=$RUN_DIR/x
    CONTAINERD_PIDFILE=$EXEC_ROOT/containerd/containerd.pid
    DATA_ROOT=$STATE_DIR/docker
    CONFIG=$STATE_DIR/daemon.json
    LOGFILE=$STATE_DIR/dockerd.log
    INDEX_FILE=$STATE_DIR/index
}

node_exists() { [[ -f $INDEX_FILE ]]; }

node_index() {
    local index
    index=$(cat "$INDEX_FILE" 2>/dev/null) || return 1
    [[ $index =~ ^[0-9]+$ ]] || return 1
    printf '%s\n' "$index"
}

node_address() {
    local index
    index=$(node_index) || return 1
    printf '%s.%s\n' "$SUBNET" "$((FIRST_HOST + index))"
}

hub_link() { printf 'skv%s\n' "$1"; }

# -------------------------------------------------------------------- locks --

# One lock for the structure shared by all nodes (hub, addresses, cgroup
# parents). Starting and waiting for engines happens outside it, so several
# nodes can come up at once.
# Not "cmd || ..." here: that would switch errexit off inside cmd. A failure
# exits the script, which drops the lock.
with_lock() {
    mkdir -p "${LOCK_FILE%/*}"
    exec 9>>"$LOCK_FILE"
    flock -w 120 9 || die "could not take $LOCK_FILE within 120 s"
    "$@"
    exec 9>&-
}

# ------------------------------------------------------------------ cgroups --

# The hierarchy that tracks processes: cgroup2 (the "unified" mount on hybrid
# machines), else the v1 pids hierarchy.
tracking_root() {
    local root
    root=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
    if [[ -z $root ]]; then
        root=$(awk '$9 == "cgroup" && $NF ~ /(^|,)pids(,|$)/ { print $5; exit }' /proc/self/mountinfo)
    fi
    [[ -n $root ]] || die "no cgroup2 or cgroup v1 pids hierarchy is mounted"
    printf '%s\n' "$root"
}

# Every cgroup hierarchy (v1 and v2) mounted on this machine.
all_cgroup_roots() {
    awk '$9 == "cgroup" || $9 == "cgroup2" { print $5 }' /proc/self/mountinfo
}

node_cgroup() { printf '%s/%s/%s\n' "$(tracking_root)" "$CG_NAME" "$NAME"; }

# cgroup_pids: every process in the node's cgroup tree.
cgroup_pids() {
    local cg
    cg=$(node_cgroup)
    [[ -d $cg ]] || return 0
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true
}

cgroup_empty() { [[ -z $(cgroup_pids) ]]; }

# kill_cgroup: SIGKILL everything in the node's cgroup tree, wait until empty.
kill_cgroup() {
    local cg i pid
    cg=$(node_cgroup)
    [[ -d $cg ]] || return 0
    for ((i = 0; i < 200; i++)); do
        cgroup_empty && return 0
        if [[ -e $cg/cgroup.kill ]]; then
            echo 1 >"$cg/cgroup.kill" 2>/dev/null || true
        else
            for pid in $(cgroup_pids); do
                kill -KILL "$pid" 2>/dev/null || true
            done
        fi
        sleep 0.1
    done
    die "processes still in $cg after SIGKILL: $(cgroup_pids | tr '\n' ' ')"
}

# remove_cgroups: the node's cgroup tree in every hierarchy, deepest first.
remove_cgroups() {
    local root dir i left
    for ((i = 0; i < 50; i++)); do
        left=0
        while read -r root; do
            [[ -d $root/$CG_NAME/$NAME ]] || continue
            while read -r dir; do
                rmdir "$dir" 2>/dev/null || left=1
            done < <(find "$root/$CG_NAME/$NAME" -depth -type d)
            rmdir "$root/$CG_NAME" 2>/dev/null || true   # only when no other node is left
        done < <(all_cgroup_roots)
        ((left)) || return 0
        sleep 0.1
    done
    die "could not remove the cgroups of $NAME"
}

# ---------------------------------------------------------------- processes --

read_pidfile() {
    local pid
    pid=$({ tr -dc '0-9' <"$1"; } 2>/dev/null) || return 1
    [[ -n $pid ]] && printf '%s\n' "$pid"
}

# engine_pid: the node's dockerd, by pidfile, and only while that pid is in
# the node's own cgroup (a reused pid never is).
engine_pid() {
    local pid
    pid=$(read_pidfile "$DOCKERD_PIDFILE") || return 1
    grep -qx "$pid" < <(cgroup_pids) || return 1
    printf '%s\n' "$pid"
}

pid_in_cgroup() { grep -qx "$1" < <(cgroup_pids); }

# pid_alive PID: running, not a zombie.
pid_alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

# ---------------------------------------------------------------- structure --

# netns_stale NS: a file in /run/netns that is no namespace any more (/run is
# not always a tmpfs: such files outlive a reboot).
netns_stale() {
    [[ -e /run/netns/$1 ]] && ! nsenter --net="/run/netns/$1" true 2>/dev/null
}

ensure_hub() {
    if netns_stale "$HUB_NS"; then
        rm -f "/run/netns/$HUB_NS"
    fi
    if [[ ! -e /run/netns/$HUB_NS ]]; then
        log "creating the hub namespace $HUB_NS with bridge $BRIDGE"
        ip netns add "$HUB_NS"
    fi
    ip -n "$HUB_NS" link set lo up
    if ! ip -n "$HUB_NS" link show "$BRIDGE" >/dev/null 2>&1; then
        ip -n "$HUB_NS" link add "$BRIDGE" type bridge
    fi
    ip -n "$HUB_NS" link set "$BRIDGE" up
}

remove_hub_if_unused() {
    local left
    left=$(list_nodes)
    [[ -z $left ]] || return 0
    if [[ -e /run/netns/$HUB_NS ]]; then
        ip netns del "$HUB_NS" 2>/dev/null || true
    fi
    # `ip netns add` made /run/netns a mount of its own; drop it once empty.
    if [[ -d /run/netns && -z $(ls -A /run/netns) ]]; then
        umount /run/netns 2>/dev/null || true
        rmdir /run/netns 2>/dev/null || true
    fi
    rmdir "$RUN_BASE" "$STATE_BASE" 2>/dev/null || true
}

allocate_index() {
    local used=" " file index
    for file in "$STATE_BASE"/*/index; do
        [[ -f $file ]] && used+="$(cat "$file") "
    done
    for ((index = 1; index <= MAX_INDEX; index++)); do
        if [[ $used != *" $index "* ]]; then
            printf '%s\n' "$index"
            return 0
        fi
    done
    die "no free node address left on $SUBNET.0/24"
}

write_config() {
    cat >"$CONFIG.tmp" <<EOF
{
  "data-root": "$DATA_ROOT",
  "exec-root": "$EXEC_ROOT",
  "pidfile": "$DOCKERD_PIDFILE",
  "hosts": ["unix://$SOCKET"],
  "deprecated-key-path": "$STATE_DIR/key.json",
  "cgroup-parent": "/$CG_NAME/$NAME/ct"
}
EOF
    mv -f "$CONFIG.tmp" "$CONFIG"
}

# ensure_node: everything but the engine process, idempotently (under the lock).
ensure_node() {
    local index link address cg
    ensure_hub
    mkdir -p "$STATE_DIR" "$RUN_DIR"
    if ! index=$(node_index); then
        index=$(allocate_index)
        echo "$index" >"$INDEX_FILE"
    fi
    link=$(hub_link "$index")
    address=$(node_address)

    if netns_stale "$NS"; then
        rm -f "/run/netns/$NS"
    fi
    [[ -e /run/netns/$NS ]] || ip netns add "$NS"
    ip -n "$NS" link set lo up
    if ! ip -n "$HUB_NS" link show "$link" >/dev/null 2>&1; then
        ip -n "$NS" link del eth0 2>/dev/null || true
        ip -n "$HUB_NS" link add "$link" type veth peer name eth0 netns "$NS"
    fi
    ip -n "$HUB_NS" link set "$link" master "$BRIDGE" up
    if ! ip -n "$NS" -4 addr show dev eth0 | grep -qF "inet $address/"; then
        ip -n "$NS" addr add "$address/24" dev eth0
    fi
    ip -n "$NS" link set eth0 up

    cg=$(node_cgroup)
    mkdir -p "$cg/engine"
    write_config
}

# ------------------------------------------------------------------- engine --

dk() { timeout 20 docker -H "unix://$SOCKET" "$@"; }

engine_answers() {
    local v
    v=$(timeout 5 docker -H "unix://$SOCKET" version --format '{{.Server.Version}}' 2>/dev/null) && [[ -n $v ]]
}

# launch_engine: start dockerd in the node's namespaces and cgroup, detached.
launch_engine() {
    local cg
    cg=$(node_cgroup)
    # Anything left from an engine that died would fight the new one (a
    # SIGKILL of dockerd takes its containerd along, but the shims and the
    # containers live on); a stale containerd pidfile can name a reused pid,
    # and dockerd then waits forever for that "containerd".
    kill_cgroup
    rm -f "$DOCKERD_PIDFILE" "$CONTAINERD_PIDFILE"
    [[ -f $LOGFILE ]] && mv -f "$LOGFILE" "$LOGFILE.prev"
    : >"$LOGFILE"
    log "starting the engine of $NAME on unix://$SOCKET (log: $LOGFILE)"
    (
        # Close every inherited descriptor above 2 (our lock on fd 9, and a
        # caller's pipes): a long-lived engine holding them deadlocks later
        # runs and keeps the caller's pipes open.
        for fd in /proc/"$BASHPID"/fd/*; do
            fd=${fd##*/}
            if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)); then
                eval "exec $fd>&-" 2>/dev/null || true
            fi
        done
        # Into the node's cgroup first: everything it starts inherits it.
        echo "$BASHPID" >"$cg/engine/cgroup.procs"
        exec setsid nsenter --net="/run/netns/$NS" -- \
            unshare --mount --uts --propagation slave -- \
            "$SELF" _exec "$NAME" </dev/null >>"$LOGFILE" 2>&1
    ) &
    LAUNCHER_PID=$!
}

engine_failed() {
    log "the engine of $NAME did not come up ($1); last 30 lines of $LOGFILE:"
    tail -n 30 "$LOGFILE" >&2 || true
    die "could not start the engine of $NAME"
}

wait_engine() {
    local deadline=$((SECONDS + START_WAIT))
    while ((SECONDS < deadline)); do
        engine_answers && return 0
        # The launcher is our child (its pid cannot be reused before we reap
        # it) and becomes dockerd: once it is gone, dockerd has exited.
        if [[ -n ${LAUNCHER_PID-} ]] && ! pid_alive "$LAUNCHER_PID"; then
            engine_failed "dockerd exited"
        fi
        sleep 0.1
    done
    engine_failed "no answer within ${START_WAIT} s"
}

# ensure_engine: running and answering, started when it is not.
ensure_engine() {
    LAUNCHER_PID=
    if engine_pid >/dev/null; then
        engine_answers && return 0
        log "the engine of $NAME is running but not answering yet; waiting"
    else
        launch_engine
    fi
    wait_engine
}

# _exec NAME: runs inside the node's new mount and UTS namespaces (and its
# network namespace), then becomes its dockerd.
cmd__exec() {
    set_node "$1"
    local hold=$RUN_DIR/cg
    # A fresh sysfs shows this namespace's network devices; it hides the
    # cgroup mounts, so bind those back (dockerd dies without them).
    mkdir -p "$hold"
    mount --rbind /sys/fs/cgroup "$hold"
    mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
    mount --move "$hold" /sys/fs/cgroup
    # containerd's shim sockets go to /run/containerd/s whatever the exec
    # root, and dockerd uses a "system" containerd it finds there.
    mkdir -p /run/containerd
    mount -t tmpfs -o mode=0711 tmpfs /run/containerd
    hostname "$NAME"
    exec env -u DOCKER_HOST -u DOCKER_CONTEXT -u DOCKER_CONFIG -u NOTIFY_SOCKET \
        dockerd --config-file "$CONFIG"
}

# -------------------------------------------------------------------- swarm --

swarm_state() { dk info --format '{{.Swarm.LocalNodeState}}|{{.Swarm.ControlAvailable}}' 2>/dev/null; }

is_leader() {
    [[ $(dk node inspect self --format '{{if .ManagerStatus}}{{.ManagerStatus.Leader}}{{end}}' 2>/dev/null) == true ]]
}

# wait_swarm_settled: past "pending" (a restarting manager rejoining).
wait_swarm_settled() {
    local deadline=$((SECONDS + LEADER_WAIT)) state
    while ((SECONDS < deadline)); do
        state=$(swarm_state) || state=
        [[ -n $state && $state != pending* ]] && { printf '%s\n' "$state"; return 0; }
        sleep 0.1
    done
    die "the engine of $NAME stayed in swarm state '${state:-unknown}'"
}

wait_leader() {
    local deadline=$((SECONDS + LEADER_WAIT))
    while ((SECONDS < deadline)); do
        is_leader && return 0
        sleep 0.1
    done
    die "$NAME is not the swarm leader after $LEADER_WAIT s"
}

ensure_swarm() {
    local heartbeat=$1 state address args=()
    state=$(wait_swarm_settled)
    case $state in
        inactive*)
            address=$(node_address)
            args=(--advertise-addr "$address" --listen-addr "$address:2377")
            [[ -n $heartbeat ]] && args+=(--dispatcher-heartbeat "$heartbeat")
            log "making $NAME a single-node swarm manager on $address"
            dk swarm init "${args[@]}" >/dev/null
            wait_leader
            ;;
        active\|true)
            # A lone manager elects itself; in a larger swarm another may lead.
            ;;
        active*) die "$NAME is a swarm worker, not a manager" ;;
        *) die "the swarm state of $NAME is '$state'" ;;
    esac
}

# ----------------------------------------------------------------- commands --

require_root() { [[ $EUID -eq 0 ]] || die "must run as root"; }

require_tools() {
    local tool missing=()
    for tool in dockerd containerd runc docker ip nsenter unshare setsid flock mount timeout; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}"
}

list_nodes() {
    local file
    for file in "$STATE_BASE"/*/index; do
        [[ -f $file ]] || continue
        file=${file%/index}
        printf '%s\n' "${file##*/}"
    done
}

cmd_up() {
    local swarm=1 heartbeat=
    set_node "${1-}"; shift
    while (($#)); do
        case $1 in
            --no-swarm) swarm=0 ;;
            --heartbeat) heartbeat=${2-}; shift ;;
            *) die "unknown option for up: $1" ;;
        esac
        shift
    done
    require_root; require_tools
    with_lock ensure_node
    ensure_engine
    ((swarm)) && ensure_swarm "$heartbeat"
    log "$NAME is up: unix://$SOCKET, address $(node_address)"
}

cmd_start() {
    set_node "${1-}"
    require_root; require_tools
    node_exists || die "no node $NAME: use '$PROG up $NAME'"
    with_lock ensure_node
    ensure_engine
    wait_swarm_settled >/dev/null
}

# stop_engine SECONDS: SIGTERM to dockerd, SIGKILL after SECONDS, then the rest
# of the cgroup.
stop_engine() {
    local wait=$1 pid deadline
    if pid=$(engine_pid); then
        if ((wait > 0)); then
            log "stopping the engine of $NAME (pid $pid) with SIGTERM"
            kill -TERM "$pid" 2>/dev/null || true
            deadline=$((SECONDS + wait))
            while pid_in_cgroup "$pid" && ((SECONDS < deadline)); do
                sleep 0.1
            done
        fi
        if pid_in_cgroup "$pid"; then
            log "killing the engine of $NAME (pid $pid)"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    kill_cgroup
    rm -f "$DOCKERD_PIDFILE" "$CONTAINERD_PIDFILE"
}

cmd_stop() {
    local wait=30
    set_node "${1-}"; shift
    while (($#)); do
        case $1 in
            --timeout) wait=${2-}; shift ;;
            *) die "unknown option for stop: $1" ;;
        esac
        shift
    done
    [[ $wait =~ ^[0-9]+$ ]] || die "--timeout takes whole seconds"
    require_root
    node_exists || die "no node $NAME"
    stop_engine "$wait"
}

# Unmount whatever the host still has mounted below PATH (normally nothing:
# the engine's mounts live in its own mount namespace).
unmount_below() {
    local path=$1 mnt
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v p="$path" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
}

remove_node() {
    local index
    if index=$(node_index); then
        ip -n "$HUB_NS" link del "$(hub_link "$index")" 2>/dev/null || true
    fi
    if [[ -e /run/netns/$NS ]]; then
        ip netns del "$NS" 2>/dev/null || { umount -l "/run/netns/$NS" 2>/dev/null || true; rm -f "/run/netns/$NS"; }
    fi
    remove_cgroups
    unmount_below "$RUN_DIR"
    unmount_below "$STATE_DIR"
    rm -rf --one-file-system "$RUN_DIR" "$STATE_DIR"
    remove_hub_if_unused
}

cmd_down() {
    set_node "${1-}"
    require_root
    # No grace: the data goes too. SIGKILL of the whole tree is the quickest.
    stop_engine 0
    with_lock remove_node
    log "$NAME is down"
}

cmd_status() {
    local rc=4 pid state node_id leader procs
    set_node "${1-}"
    echo "name=$NAME"
    echo "socket=$SOCKET"
    echo "docker_host=unix://$SOCKET"
    echo "netns=$NS"
    echo "cgroup=$(node_cgroup)"
    echo "run_dir=$RUN_DIR"
    echo "state_dir=$STATE_DIR"
    echo "log=$LOGFILE"
    if ! node_exists; then
        echo "exists=no"
        return 4
    fi
    rc=3
    echo "exists=yes"
    echo "address=$(node_address)"
    echo "hub_link=$(hub_link "$(node_index)")"
    pid=$(engine_pid) || pid=
    echo "pid=$pid"
    procs=$(cgroup_pids | wc -l)
    echo "processes=$procs"
    if [[ -n $pid ]] && engine_answers; then
        rc=0
        echo "engine=answering"
        IFS='|' read -r state node_id < <(dk info --format '{{.Swarm.LocalNodeState}}|{{.Swarm.NodeID}}' 2>/dev/null) || true
        echo "swarm=${state-}"
        echo "node_id=${node_id-}"
        leader=false
        is_leader && leader=true
        echo "leader=$leader"
    elif [[ -n $pid ]] || ((procs > 0)); then
        echo "engine=not-answering"   # starting, hung, or leftovers of a dead one
    else
        echo "engine=stopped"
    fi
    return "$rc"
}

cmd_join() {
    local manager=${2-} token manager_address
    [[ -n $manager ]] || die "usage: $PROG join NAME MANAGER"
    set_node "$manager"
    node_exists || die "no node $manager"
    token=$(dk swarm join-token -q manager) || die "cannot get a join token from $manager"
    manager_address=$(node_address)
    set_node "$1"
    node_exists || die "no node $NAME: use '$PROG up $NAME --no-swarm' first"
    case $(wait_swarm_settled) in
        inactive*)
            log "joining $NAME to the swarm of $manager as a manager"
            dk swarm join --token "$token" --advertise-addr "$(node_address)" \
                --listen-addr "$(node_address):2377" "$manager_address:2377" >/dev/null
            ;;
        active\|true) log "$NAME is already a manager" ;;
        *) die "$NAME is in another swarm state: leave it first" ;;
    esac
}

cmd_link() {
    local updown=$1
    set_node "${2-}"
    node_exists || die "no node $NAME"
    ip -n "$HUB_NS" link set "$(hub_link "$(node_index)")" "$updown"
}

cmd_exec() {
    set_node "${1-}"; shift
    node_exists || die "no node $NAME"
    (($#)) || die "usage: $PROG exec NAME COMMAND..."
    exec nsenter --net="/run/netns/$NS" -- "$@"
}

# ------------------------------------------------------------------ cluster --

# cluster_up NAME... [options]: see the usage at the top.
cluster_up() {
    local heartbeat='' image='' names=() name first pid pids=() failed=0
    while (($#)); do
        case $1 in
            --heartbeat) heartbeat=${2-}; shift ;;
            --image) image=${2-}; shift ;;
            -*) die "unknown option for cluster up: $1" ;;
            *) check_name "$1"; names+=("$1") ;;
        esac
        shift
    done
    ((${#names[@]} >= 1)) || die "usage: $PROG cluster up NAME... [--heartbeat D] [--image IMAGE]"
    require_root; require_tools
    first=${names[0]}

    # Every engine starts at once (the script locks only the shared structure);
    # only the first makes a swarm, the others wait for `join`.
    local up_args=()
    [[ -n $heartbeat ]] && up_args+=(--heartbeat "$heartbeat")
    "$SELF" up "$first" "${up_args[@]}" & pids+=($!)
    for name in "${names[@]:1}"; do
        set_node "$name"
        if node_exists && engine_pid >/dev/null && [[ $(swarm_state) == active* ]]; then
            continue   # already a member of a swarm: leave it
        fi
        "$SELF" up "$name" --no-swarm & pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    ((failed == 0)) || die "a node of the cluster did not come up"

    for name in "${names[@]:1}"; do
        "$SELF" join "$name" "$first"
        set_node "$name"
        wait_swarm_settled >/dev/null
    done

    if [[ -n $image ]]; then
        local archive=$RUN_BASE/image.$$.tar
        log "copying $image into ${names[*]}"
        timeout 120 docker save -o "$archive" "$image" || { rm -f "$archive"; die "cannot save $image from the default engine"; }
        for name in "${names[@]}"; do
            set_node "$name"
            timeout 120 docker -H "unix://$SOCKET" load -q -i "$archive" >/dev/null ||
                { rm -f "$archive"; die "cannot load $image into $name"; }
        done
        rm -f "$archive"
    fi
    log "cluster of ${names[*]} is up"
}

cluster_status() {
    local name line leaders=0 state leader flags
    (($#)) || die "usage: $PROG cluster status NAME..."
    for name in "$@"; do
        set_node "$name"
        line="$NAME"
        if ! node_exists; then
            printf '%s exists=no\n' "$NAME"
            continue
        fi
        line+=" address=$(node_address)"
        if engine_pid >/dev/null && engine_answers; then
            state=$(timeout 5 docker -H "unix://$SOCKET" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null) || state=unknown
            leader=false
            if timeout 5 docker -H "unix://$SOCKET" node inspect self --format '{{if .ManagerStatus}}{{.ManagerStatus.Leader}}{{end}}' 2>/dev/null | grep -qx true; then
                leader=true
                leaders=$((leaders + 1))
            fi
            line+=" engine=answering swarm=$state leader=$leader"
        else
            line+=" engine=stopped"
        fi
        # `cut` clears the UP flag of the node's link on the hub side.
        flags=$(ip -n "$HUB_NS" -o link show "$(hub_link "$(node_index)")" 2>/dev/null) || flags=
        if [[ $flags == *"<UP"* || $flags == *",UP"* ]]; then
            line+=" link=up"
        else
            line+=" link=cut"
        fi
        printf '%s\n' "$line"
    done
    ((leaders == 1))
}

cluster_down() {
    local name pids=() pid failed=0
    (($#)) || die "usage: $PROG cluster down NAME..."
    for name in "$@"; do
        check_name "$name"
        "$SELF" down "$name" & pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    ((failed == 0)) || die "a node of the cluster could not be taken down"
}

cmd_cluster() {
    local sub=${1-}
    (($#)) && shift
    case $sub in
        up) cluster_up "$@" ;;
        status) cluster_status "$@" ;;
        down) cluster_down "$@" ;;
        *) die "usage: $PROG cluster up|status|down NAME..." ;;
    esac
}

main() {
    local cmd=${1-}
    (($#)) && shift
    case $cmd in
        up) cmd_up "$@" ;;
        stop) cmd_stop "$@" ;;
        start) cmd_start "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        socket) set_node "${1-}"; printf '%s\n' "$SOCKET" ;;
        address) set_node "${1-}"; node_exists || die "no node $NAME"; node_address ;;
        join) cmd_join "$@" ;;
        cut) cmd_link down "$@" ;;
        heal) cmd_link up "$@" ;;
        exec) cmd_exec "$@" ;;
        list) list_nodes ;;
        cluster) cmd_cluster "$@" ;;
        _exec) cmd__exec "$@" ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
