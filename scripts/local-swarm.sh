#!/usr/bin/env bash
# local-swarm.sh - a local single-node Docker Swarm for swarmkeeper development and CI.
#
# Usage:
#   scripts/local-swarm.sh up [--init-swarm]   engine + single-node swarm + test image (idempotent)
#   scripts/local-swarm.sh down [--leave-swarm] stop the engine, if (and only if) this script started it
#   scripts/local-swarm.sh status               exit 0 when the engine answers and is a swarm manager
#
# Environment:
#   DOCKER_HOST             engine to use/start (default unix:///var/run/docker.sock)
#   SWARMKEEPER_LOCAL_DIR   this script's state folder (default /var/lib/swarmkeeper-local)
#
# Why this exists: the machines swarmkeeper is developed and tested on have no
# init system and no reachable image registry. Every fresh session must install
# and start the engine itself, and the test image must be built from a Debian
# package instead of being pulled.
set -euo pipefail

readonly PROG=${0##*/}
readonly STATE_DIR=${SWARMKEEPER_LOCAL_DIR:-/var/lib/swarmkeeper-local}
# The record: it exists only while an engine started by this script may be running.
# It holds the dockerd pid and its start time, so a reused pid is never mistaken for it.
readonly RECORD=$STATE_DIR/engine-started-by-script
readonly DOCKERD_PIDFILE=$STATE_DIR/dockerd.pid
readonly DOCKERD_LOG=$STATE_DIR/dockerd.log
readonly LOCKFILE=$STATE_DIR/lock
# dockerd 20.10 starts and supervises its own containerd (no system containerd
# runs here) and keeps that containerd's pidfile under its default exec-root.
readonly CONTAINERD_PIDFILE=/var/run/docker/containerd/containerd.pid
readonly TEST_IMAGE=swarmkeeper-test/busybox:latest
# Applets the test image must have, whatever else busybox offers.
readonly REQUIRED_APPLETS=(sh sleep httpd echo cat ls true false wget nc env)
readonly ENGINE_WAIT=60  # seconds for a starting engine to answer
readonly STOP_WAIT=20    # seconds between SIGTERM and SIGKILL on `down`

# Honour DOCKER_HOST like the docker CLI does; export it so every docker call
# below talks to the same engine that we check (or start), whatever context
# the user's CLI config selects.
export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}
# dockerd finds containerd and runc through PATH, and Debian puts them (and
# dockerd itself) in sbin folders that a non-root PATH may lack.
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^# Why/{/^# Why/d;s/^# \{0,1\}//p}' "$0"
}

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root privileges (not root and no sudo) to run: $*"
    fi
}

# ---------------------------------------------------------------- processes --
# We never find processes by name: only by pidfile or by our own record, and
# we check that the pid really is the program it is claimed to be.

# proc_field PID N: field N of /proc/PID/stat (numbered as in proc(5): 3=state,
# 4=ppid, 6=session, 22=starttime). The command name (field 2) may contain
# spaces, so split after its closing parenthesis.
proc_field() {
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    read -r -a fields <<<"${stat##*) }"
    (($2 >= 3)) || return 1
    [[ -n ${fields[$2 - 3]-} ]] || return 1
    printf '%s\n' "${fields[$2 - 3]}"
}

# pid_alive PID: a running (not zombie) process.
pid_alive() {
    local state
    [[ ${1-} =~ ^[0-9]+$ ]] && (( $1 > 1 )) || return 1
    state=$(proc_field "$1" 3) || return 1
    [[ $state != Z && $state != X ]]
}

# pid_is NAME PID: a running process whose executable is NAME.
pid_is() {
    local want=$1 pid=${2-} exe
    pid_alive "$pid" || return 1
    # /proc/PID/exe is only readable for our own processes when not root;
    # fall back to the command name then.
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || exe=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    exe=${exe% (deleted)}  # binary replaced by a package upgrade
    [[ ${exe##*/} == "$want" ]]
}

read_pidfile() {
    local pid
    [[ -f $1 ]] || return 1
    pid=$(tr -dc '0-9' <"$1" 2>/dev/null) || return 1
    [[ -n $pid ]] && printf '%s\n' "$pid"
}

# remove_stale_pidfile FILE NAME: a pidfile that names no running NAME blocks
# a restart (dockerd refuses to start while its pidfile names a live pid, and
# dockerd reuses "its" containerd from a pidfile that names any live pid - even
# a recycled one - then waits forever for a socket that never comes).
remove_stale_pidfile() {
    local file=$1 name=$2 pid
    [[ -e $file ]] || return 0
    pid=$(read_pidfile "$file") || pid=
    if pid_is "$name" "$pid"; then
        return 0
    fi
    log "removing stale $name pidfile $file (pid ${pid:-?} is not a running $name)"
    as_root rm -f "$file"
}

record_get() {
    [[ -f $RECORD ]] && sed -n "s/^$1=//p" "$RECORD"
}

# recorded_engine_pid: print the pid of the dockerd this script started, if the
# record names a process that is still that dockerd (same pid, same start time).
recorded_engine_pid() {
    local pid
    pid=$(record_get pid) || return 1
    pid_is dockerd "$pid" || return 1
    [[ $(proc_field "$pid" 22) == "$(record_get starttime)" ]] || return 1
    printf '%s\n' "$pid"
}

# our_engine_pid: as recorded_engine_pid, and that engine serves $DOCKER_HOST.
our_engine_pid() {
    [[ $(record_get docker_host) == "$DOCKER_HOST" ]] || return 1
    recorded_engine_pid
}

write_record() {
    local pid=$1
    {
        echo "# written by $PROG: this script started the engine below; '$PROG down' stops it"
        echo "pid=$pid"
        echo "starttime=$(proc_field "$pid" 22)"
        echo "docker_host=$DOCKER_HOST"
        echo "started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$RECORD.tmp"
    mv -f "$RECORD.tmp" "$RECORD"
}

# stop_pid NAME PID SECONDS: SIGTERM, wait, then SIGKILL. The start time is
# taken first so that a pid recycled while we wait is never signalled.
stop_pid() {
    local name=$1 pid=$2 wait=$3 start i
    start=$(proc_field "$pid" 22) || return 0
    still_running() { pid_is "$name" "$pid" && [[ $(proc_field "$pid" 22) == "$start" ]]; }
    log "stopping $name (pid $pid) with SIGTERM"
    as_root kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait * 5; i++)); do
        still_running || return 0
        sleep 0.2
    done
    if still_running; then
        log "$name (pid $pid) still running after ${wait}s: SIGKILL"
        as_root kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
}

# ------------------------------------------------------------------- engine --

# engine_info FORMAT: query the engine; fails when it does not answer.
engine_info() {
    timeout 15 docker info --format "$1" 2>/dev/null
}

engine_reachable() {
    local v
    v=$(engine_info '{{.ServerVersion}}') && [[ -n $v ]]
}

ensure_dockerd_installed() {
    command -v dockerd >/dev/null 2>&1 && return 0
    log "dockerd is not installed: installing Debian's docker.io (apt-get update + install, about 15-30 s)"
    local apt_log=$STATE_DIR/apt.log
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update >"$apt_log" 2>&1 ||
        ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io >>"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2 || true
        die "installing docker.io failed (full log: $apt_log)"
    fi
    command -v dockerd >/dev/null 2>&1 || die "docker.io installed but no dockerd on PATH"
    command -v docker >/dev/null 2>&1 || die "no docker client on PATH"
}

# Start dockerd in the background, detached from this shell.
launch_dockerd() {
    local socket_args=() dockerd_bin
    dockerd_bin=$(command -v dockerd)
    case $DOCKER_HOST in
        unix://*) socket_args=(-H "$DOCKER_HOST") ;;
        *) die "DOCKER_HOST=$DOCKER_HOST is not reachable, and this script only starts engines on a unix socket" ;;
    esac

    remove_stale_pidfile "$DOCKERD_PIDFILE" dockerd
    remove_stale_pidfile "$CONTAINERD_PIDFILE" containerd
    rm -f "$RECORD"
    # Keep the previous log for post-mortems, start the new one empty.
    [[ -f $DOCKERD_LOG ]] && mv -f "$DOCKERD_LOG" "$DOCKERD_LOG.prev"
    : >"$DOCKERD_LOG"

    if [[ $EUID -ne 0 ]]; then
        # Ask for a sudo password (if any) now, in the foreground: the
        # background start below has no terminal to prompt on.
        command -v sudo >/dev/null 2>&1 || die "starting dockerd needs root: run as root (no sudo here)"
        sudo -v || die "sudo refused: cannot start dockerd"
    fi
    log "starting dockerd on $DOCKER_HOST (log: $DOCKERD_LOG)"
    (
        # Close every inherited descriptor above 2 (our own lock on fd 9, and
        # whatever the caller had open, such as a CI runner's pipes or lock
        # files). A long-lived engine holding them keeps pipes open and can
        # deadlock later runs that wait on those locks.
        for fd in /proc/"$BASHPID"/fd/*; do
            fd=${fd##*/}
            if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)); then
                eval "exec $fd>&-" 2>/dev/null || true
            fi
        done
        # setsid: its own session, so it outlives this shell and its terminal;
        # the session id then also equals dockerd's pid.
        if [[ $EUID -eq 0 ]]; then
            exec setsid "$dockerd_bin" --pidfile "$DOCKERD_PIDFILE" "${socket_args[@]}" \
                </dev/null >>"$DOCKERD_LOG" 2>&1
        else
            exec sudo -n setsid "$dockerd_bin" --pidfile "$DOCKERD_PIDFILE" "${socket_args[@]}" \
                </dev/null >>"$DOCKERD_LOG" 2>&1
        fi
    ) &
    LAUNCHER_PID=$!
}

engine_start_failed() {
    log "the engine did not come up ($1); last 30 lines of $DOCKERD_LOG:"
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    die "could not start the Docker engine"
}

# wait_for_engine: until `docker info` answers, recording our dockerd as soon
# as its pidfile appears (so `down` can stop it even if it never answers).
wait_for_engine() {
    local deadline=$((SECONDS + ENGINE_WAIT)) pid=
    while ((SECONDS < deadline)); do
        if [[ ! -f $RECORD ]] && pid=$(read_pidfile "$DOCKERD_PIDFILE") && pid_is dockerd "$pid"; then
            write_record "$pid"
        fi
        engine_reachable && return 0
        # Fail fast when dockerd already died instead of waiting out the timeout.
        if [[ -n ${LAUNCHER_PID-} ]] && ! pid_alive "$LAUNCHER_PID" && ! our_engine_pid >/dev/null; then
            engine_start_failed "dockerd exited"
        fi
        sleep 0.2
    done
    engine_start_failed "no answer within ${ENGINE_WAIT}s"
}

# ensure_engine: sets STARTED_BY_US=1 when the engine is (now) one this script started.
ensure_engine() {
    STARTED_BY_US=0
    if engine_reachable; then
        if our_engine_pid >/dev/null; then
            STARTED_BY_US=1
        elif [[ -f $RECORD ]] && ! recorded_engine_pid >/dev/null; then
            # Our engine died and someone else's answers now: forget ours.
            log "an engine answers on $DOCKER_HOST but it is not the one this script started; dropping the stale record"
            rm -f "$RECORD"
        fi
        return 0
    fi
    # A socket we may not use: waiting or starting another engine cannot help.
    if [[ $DOCKER_HOST == unix://* && -S ${DOCKER_HOST#unix://} && ! -w ${DOCKER_HOST#unix://} ]]; then
        die "no permission to use ${DOCKER_HOST#unix://}: run as root or join the socket's group (docker)"
    fi
    if ! our_engine_pid >/dev/null && recorded_engine_pid >/dev/null; then
        # A second dockerd would fight the first over /var/lib/docker.
        die "the engine this script started serves $(record_get docker_host), not DOCKER_HOST=$DOCKER_HOST: use that, or run '$PROG down' first"
    fi
    if our_engine_pid >/dev/null; then
        # Ours is running but not answering (yet): wait for it, never start a second one.
        log "dockerd started by this script is running but not answering yet; waiting"
    else
        ensure_dockerd_installed
        launch_dockerd
    fi
    wait_for_engine
    our_engine_pid >/dev/null || die "the engine answers, but its dockerd is not the one this script started"
    STARTED_BY_US=1
}

# -------------------------------------------------------------------- swarm --

ensure_swarm() {
    local init_swarm=$1 state manager i
    # A restarting manager reports "pending" for a moment while it rejoins.
    for ((i = 0; i < 100; i++)); do
        IFS='|' read -r state manager < <(engine_info '{{.Swarm.LocalNodeState}}|{{.Swarm.ControlAvailable}}') ||
            die "the engine stopped answering"
        [[ $state == pending ]] || break
        sleep 0.2
    done
    case $state in
        inactive)
            if ((STARTED_BY_US)) || ((init_swarm)); then
                log "making this engine a single-node swarm manager"
                docker swarm init --advertise-addr 127.0.0.1 >/dev/null
            else
                die "the engine on $DOCKER_HOST was already running (not started by this script) and is not in a swarm; pass --init-swarm to 'up' to make it a single-node swarm"
            fi
            ;;
        active)
            [[ $manager == true ]] ||
                die "this engine is a swarm worker, not a manager: swarmkeeper needs a manager (promote it, or leave that swarm)"
            ;;
        locked)
            die "the swarm is locked (autolock): run 'docker swarm unlock' first"
            ;;
        pending | error | *)
            die "swarm state of this engine is '$state': fix it (e.g. 'docker swarm leave --force') and retry"
            ;;
    esac
    # Commands that change the swarm need a leader; after a restart the single
    # manager takes a few seconds to elect itself.
    for ((i = 0; i < 150; i++)); do
        timeout 10 docker node ls -q >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "the swarm has no leader after 30 s"
}

# --------------------------------------------------------------- test image --

build_test_image() {
    local tmp applet applets out
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: $tmp is local
    trap "rm -rf '$tmp'" EXIT
    log "building $TEST_IMAGE from Debian's busybox-static (no registry needed)"
    # Sandbox user root: apt's _apt user cannot write into our private temp dir.
    if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root busybox-static >/dev/null 2>&1); then
        log "apt-get download failed; running apt-get update and retrying"
        as_root apt-get update -q >/dev/null
        (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root busybox-static >/dev/null) ||
            die "cannot download busybox-static"
    fi
    dpkg -x "$tmp"/busybox-static_*.deb "$tmp/pkg"
    mkdir -p "$tmp/rootfs/bin" "$tmp/rootfs/etc" "$tmp/rootfs/tmp" "$tmp/rootfs/root"
    chmod 1777 "$tmp/rootfs/tmp"
    cp "$tmp/pkg/bin/busybox" "$tmp/rootfs/bin/busybox"
    # A link in bin/ for every applet this busybox has; the required ones must be among them.
    applets=$("$tmp/rootfs/bin/busybox" --list)
    for applet in "${REQUIRED_APPLETS[@]}"; do
        grep -qx "$applet" <<<"$applets" || die "busybox-static lacks the applet $applet"
    done
    for applet in $applets; do
        [[ $applet == busybox || -e $tmp/rootfs/bin/$applet ]] || ln -s busybox "$tmp/rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$tmp/rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/rootfs/etc/group"
    tar --numeric-owner --owner=0 --group=0 -C "$tmp/rootfs" -c . |
        docker import --change 'CMD ["/bin/sh"]' - "$TEST_IMAGE" >/dev/null
    rm -rf "$tmp"
    trap - EXIT
    # Prove the image runs (a plain container: no swarm involved).
    out=$(docker run --rm --network none "$TEST_IMAGE" /bin/echo ok 2>&1) || out="failed: $out"
    if [[ $out != ok ]]; then
        docker image rm -f "$TEST_IMAGE" >/dev/null 2>&1 || true
        die "the test image does not run: $out"
    fi
}

ensure_test_image() {
    docker image inspect "$TEST_IMAGE" >/dev/null 2>&1 || build_test_image
}

# ----------------------------------------------------------------- commands --

take_lock() {
    mkdir -p "$STATE_DIR" 2>/dev/null || as_root mkdir -p "$STATE_DIR"
    [[ -w $STATE_DIR ]] || die "state folder $STATE_DIR is not writable (set SWARMKEEPER_LOCAL_DIR)"
    # Serialise concurrent up/down runs. fd 9 is closed in dockerd (see launch_dockerd).
    exec 9>>"$LOCKFILE"
    flock -w 300 9 || die "another $PROG is still running (lock $LOCKFILE)"
}

print_summary() {
    local version node_id leader image_id who
    version=$(engine_info '{{.ServerVersion}}')
    node_id=$(engine_info '{{.Swarm.NodeID}}')
    leader=$(timeout 10 docker node inspect self --format '{{if .ManagerStatus}}{{.ManagerStatus.Leader}}{{end}}' 2>/dev/null) || leader=false
    image_id=$(docker image inspect --format '{{.Id}}' "$TEST_IMAGE" 2>/dev/null) || image_id=missing
    if ((STARTED_BY_US)); then
        who="started by this script, pid $(our_engine_pid || echo '?')"
    else
        who="not started by this script"
    fi
    echo "engine:     dockerd $version on $DOCKER_HOST ($who)"
    echo "swarm node: $node_id (manager, leader: $([[ $leader == true ]] && echo yes || echo no))"
    image_id=${image_id#sha256:}
    echo "test image: $TEST_IMAGE (${image_id:0:12})"
}

cmd_up() {
    local init_swarm=0
    while (($#)); do
        case $1 in
            --init-swarm) init_swarm=1 ;;
            -h | --help) usage; exit 0 ;;
            *) die "up: unknown argument '$1'" ;;
        esac
        shift
    done
    take_lock
    ensure_engine
    ensure_swarm "$init_swarm"
    ensure_test_image
    print_summary
}

cmd_down() {
    local leave_swarm=0 pid cpid cparent
    while (($#)); do
        case $1 in
            --leave-swarm) leave_swarm=1 ;;
            -h | --help) usage; exit 0 ;;
            *) die "down: unknown argument '$1'" ;;
        esac
        shift
    done
    take_lock
    if [[ -f $RECORD && $(record_get docker_host) != "$DOCKER_HOST" ]]; then
        # `down` is about the engine this script started, wherever it listens.
        DOCKER_HOST=$(record_get docker_host)
        log "the engine this script started serves $DOCKER_HOST: stopping that one"
    fi
    if ! pid=$(our_engine_pid); then
        if [[ ! -f $RECORD ]]; then
            ((leave_swarm)) && log "not leaving the swarm: this script did not start the engine"
            log "this script did not start the engine on $DOCKER_HOST (no record in $STATE_DIR): nothing to do"
            return 0
        fi
        # The record outlived its dockerd (killed, or crashed): only clean up below.
        log "the dockerd this script started is no longer running; cleaning up after it"
        ((leave_swarm)) && log "not leaving the swarm: its engine is not running"
        pid=
    fi
    if [[ -n $pid ]]; then
        if ((leave_swarm)); then
            log "leaving the swarm (docker swarm leave --force)"
            docker swarm leave --force >/dev/null 2>&1 || log "swarm leave failed (not in a swarm?)"
        fi
        stop_pid dockerd "$pid" "$STOP_WAIT"
    fi
    # A dockerd that dies abruptly can leave its containerd running, adopted by
    # init. Stop it - by its pidfile only, and only when no dockerd owns it.
    if cpid=$(read_pidfile "$CONTAINERD_PIDFILE") && pid_is containerd "$cpid"; then
        cparent=$(proc_field "$cpid" 4) || cparent=
        if ! pid_is dockerd "$cparent"; then
            stop_pid containerd "$cpid" 10
        fi
    fi
    remove_stale_pidfile "$DOCKERD_PIDFILE" dockerd
    remove_stale_pidfile "$CONTAINERD_PIDFILE" containerd
    rm -f "$RECORD"
    log "engine stopped"
}

cmd_status() {
    local version state manager node_id leader pid rc=1
    [[ $# -eq 0 ]] || die "status takes no arguments"
    if version=$(engine_info '{{.ServerVersion}}') && [[ -n $version ]]; then
        echo "engine:     reachable at $DOCKER_HOST (dockerd $version)"
    elif [[ $DOCKER_HOST == unix://* && -S ${DOCKER_HOST#unix://} && ! -w ${DOCKER_HOST#unix://} ]]; then
        echo "engine:     not usable at $DOCKER_HOST (permission denied: run as root or join the docker group)"
        version=
    else
        echo "engine:     not reachable at $DOCKER_HOST"
        version=
    fi
    if pid=$(our_engine_pid); then
        echo "started by: this script (dockerd pid $pid, $(record_get started_at))"
    elif pid=$(recorded_engine_pid); then
        echo "started by: not this script (this script's engine, pid $pid, serves $(record_get docker_host))"
    elif [[ -f $RECORD ]]; then
        echo "started by: this script, but that dockerd is no longer running (stale record $RECORD)"
    elif [[ -n $version ]]; then
        echo "started by: not this script"
    else
        echo "started by: -"
    fi
    if [[ -n $version ]]; then
        IFS='|' read -r state manager node_id < <(engine_info '{{.Swarm.LocalNodeState}}|{{.Swarm.ControlAvailable}}|{{.Swarm.NodeID}}') || true
        leader=$(timeout 10 docker node inspect self --format '{{if .ManagerStatus}}{{.ManagerStatus.Leader}}{{end}}' 2>/dev/null) || leader=
        echo "swarm:      ${state:-unknown}, manager: $([[ ${manager-} == true ]] && echo yes || echo no), leader: $([[ $leader == true ]] && echo yes || echo no)${node_id:+, node $node_id}"
        if docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
            echo "test image: $TEST_IMAGE present"
        else
            echo "test image: $TEST_IMAGE missing (run '$PROG up')"
        fi
        [[ ${state-} == active && ${manager-} == true ]] && rc=0
    else
        echo "swarm:      unknown (engine not reachable)"
        echo "test image: unknown (engine not reachable)"
    fi
    return "$rc"
}

main() {
    local cmd=${1-}
    (($#)) && shift
    case $cmd in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
