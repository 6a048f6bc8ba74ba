#!/usr/bin/env bash
# test-deps.sh - install what the test suite needs beyond the engine (idempotent).
#
# Usage: scripts/test-deps.sh
#
# Installs, from Debian's packages:
#   prometheus   the server and promtool, for tests/test_daemon_prometheus.py
#   iproute2     ip, for the private engines of scripts/engine-node.sh (the
#                failover tests' several managers); nsenter, unshare and
#                flock come with util-linux, which every Debian has
#
# Quiet when everything is already there; says what it installs otherwise, and
# exits non-zero, naming what is missing, when it cannot install it. The engine
# and the test image are scripts/local-swarm.sh's business, not this script's.
set -euo pipefail

readonly PROG=${0##*/}
# Debian's packages and the commands that prove each one is installed.
readonly PACKAGES=(prometheus iproute2)
readonly COMMANDS=(prometheus promtool ip)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# Debian installs these in /usr/bin; keep sbin too for a minimal non-root PATH.
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

missing_commands() {
    local command
    for command in "${COMMANDS[@]}"; do
        command -v "$command" >/dev/null 2>&1 || printf '%s\n' "$command"
    done
}

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root privileges (not root and no sudo) to run: $*"
    fi
}

apt_install() {
    # No prompts, no daemon start-up by the package's maintainer scripts
    # (policy-rc.d is honoured only through invoke-rc.d; there is no init
    # system here anyway), and no recommended extras.
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
}

main() {
    [[ $# -eq 0 ]] || die "takes no arguments (usage: $PROG)"
    if [[ -z $(missing_commands) ]]; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found; install these yourself: ${PACKAGES[*]}"

    log "installing ${PACKAGES[*]} from Debian's packages"
    local output
    if ! output=$(apt_install 2>&1); then
        # The package lists may be missing or stale on a fresh machine.
        log "install failed; updating the package lists and trying again"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 \
            || log "apt-get update failed (continuing to show the install error)"
        if ! output=$(apt_install 2>&1); then
            printf '%s\n' "$output" >&2
            die "could not install ${PACKAGES[*]}"
        fi
    fi

    local still_missing
    still_missing=$(missing_commands)
    if [[ -n $still_missing ]]; then
        printf '%s\n' "$output" >&2
        die "installed ${PACKAGES[*]}, but these commands are still missing: $(echo "$still_missing" | tr '\n' ' ')"
    fi
    log "installed ${PACKAGES[*]} ($(prometheus --version 2>&1 | head -n 1))"
}

main "$@"
