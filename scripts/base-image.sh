#!/usr/bin/env bash
# base-image.sh - make a local Python 3.11 base image for the Dockerfile, without any registry.
#
# Usage: scripts/base-image.sh [--print-tag]
#
# Prints the image's tag on standard output (progress goes to standard error),
# so that a build can use it directly:
#
#   docker build --build-arg BASE="$(scripts/base-image.sh)" -t swarmkeeper:dev .
#
# --print-tag only prints the tag this script would make (or has made) and
# exits, building nothing.
#
# What it makes: Debian 12's own packages for a minimal Python 3.11 (the
# interpreter, its standard library, venv with the bundled pip and setuptools
# wheels) plus git, the OpenSSH client and gpg (the git source runs all
# three: fetch over ssh, `ssh-keygen -Y verify` for ssh signatures, gpg for
# gpg ones), each .deb fetched with `apt-get download` from the machine's
# package mirror and unpacked with `dpkg-deb -x` into one folder, which is
# turned into a merged-/usr tree and `docker import`ed into the engine that
# DOCKER_HOST (or the docker client's default) names. The host's CA bundle is
# copied in, so TLS through an intercepting proxy works inside builds.
#
# The image is named swarmkeeper-base/python:3.11-bookworm-<hash>, where the
# hash covers this script and the exact package files: the same inputs give
# the same tag, and an engine that already has it is left alone (a rerun
# takes about a second). The downloaded packages are kept in a cache folder.
#
# Not a general-purpose Debian: there is no dpkg database, no apt, no perl
# (git's core commands do not need it; `git add -p`, `git svn` and a few
# other perl-based commands are missing), no shadow tools. The Dockerfile
# works on it as on python:3.11-slim because it only needs sh, coreutils,
# python3 -m venv, git, ssh and gpg, and this script checks each of them in a
# container of the new image before tagging it.
#
# Environment:
#   SWARMKEEPER_BASE_CACHE  folder for downloaded packages
#                           (default ${XDG_CACHE_HOME:-~/.cache}/swarmkeeper/base-image)
#   DOCKER_HOST             the engine to import into, as for the docker client
set -euo pipefail
shopt -s inherit_errexit

readonly PROG=${0##*/}
SELF=$(readlink -f "$0")
readonly SELF
readonly REPOSITORY=swarmkeeper-base/python
readonly CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
CACHE=${SWARMKEEPER_BASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/swarmkeeper/base-image}
readonly CACHE

# What the image is for; the packages these need are found by apt-cache.
readonly ROOTS=(
    dash coreutils ca-certificates
    python3-minimal python3.11-minimal libpython3.11-stdlib python3.11-venv
    python3-pip-whl python3-setuptools-whl
    git openssh-client gpg
)
# Dependencies that only matter to a system managed with dpkg (maintainer
# scripts, PAM, user management) or only to git's perl-based extras: leaving
# them out keeps the image small. The checks at the end prove the rest runs.
readonly LEFT_OUT=(
    adduser cdebconf debconf dpkg install-info passwd tar
    libdebian-installer4 libnewt0.52 libslang2 libtextwrap1
    libpam-modules libpam-modules-bin libpam0g
    libsemanage-common libsemanage2 libsepol2 libaudit-common libaudit1 libcap-ng0
    perl perl-base perl-modules-5.36 libperl5.36 liberror-perl
    libgdbm6 libgdbm-compat4 git-man mailcap mime-support
)

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

package_names() {
    # Every package the roots depend on, recursively (pre-depends included),
    # without recommends and suggests; the alternatives apt lists for a
    # dependency come along too, which LEFT_OUT trims where unneeded.
    local names
    names=$(apt-cache depends --recurse --no-recommends --no-suggests \
        --no-conflicts --no-breaks --no-replaces --no-enhances "${ROOTS[@]}" \
        | grep -v '^[ <]' | sort -u) || die "apt-cache could not resolve ${ROOTS[*]} (run apt-get update?)"
    grep -vxF -f <(printf '%s\n' "${LEFT_OUT[@]}") <<<"$names"
}

download() {
    # Only the files not in the cache yet; apt-get prints each package's URI
    # and file name without downloading.
    local -a names missing=()
    mapfile -t names < <(package_names)
    mkdir -p "$CACHE/debs"
    local uri file rest
    while read -r uri file rest; do
        [[ -f $CACHE/debs/$file ]] || missing+=("$(sed -E 's/_.*//' <<<"$file")")
    done < <(apt-get download --print-uris "${names[@]}" | tr -d "'")
    if ((${#missing[@]})); then
        log "downloading ${#missing[@]} Debian packages into $CACHE/debs"
        # As root, apt hands downloads to its _apt user, who cannot write
        # into a cache under /root: download as root instead.
        local -a sandbox=()
        [[ $EUID -ne 0 ]] || sandbox=(-o APT::Sandbox::User=root)
        (cd "$CACHE/debs" && apt-get download -q "${sandbox[@]}" "${missing[@]}" >/dev/null) \
            || die "apt-get download failed (run apt-get update?)"
    fi
    # The file names of this set, for the tag and the unpacking.
    apt-get download --print-uris "${names[@]}" | awk '{print $2}' | sort
}

image_tag() {
    local files=$1
    local digest
    digest=$( { cat "$SELF" "$CA_BUNDLE"; printf '%s\n' "$files"; } | sha256sum | cut -c1-12)
    printf '%s:3.11-bookworm-%s\n' "$REPOSITORY" "$digest"
}

make_tree() {
    local root=$1 files=$2 file
    while read -r file; do
        dpkg-deb -x "$CACHE/debs/$file" "$root"
    done <<<"$files"

    # Merged /usr, as Debian 12 installs it: the packages still ship some
    # files under /bin, /sbin and /lib, which move into /usr before the links
    # take their place (binaries look for /lib64/ld-linux-x86-64.so.2).
    local dir
    for dir in bin sbin lib lib32 lib64 libx32; do
        if [[ -d $root/$dir && ! -L $root/$dir ]]; then
            mkdir -p "$root/usr/$dir"
            cp -a "$root/$dir/." "$root/usr/$dir/"
            rm -rf "${root:?}/$dir"
        fi
        [[ -d $root/usr/$dir ]] && ln -s "usr/$dir" "$root/$dir"
    done
    ln -sf dash "$root/usr/bin/sh"

    mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/root" "$root/var/tmp" "$root/run"
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 0700 "$root/root"
    cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
        'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >"$root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$root/etc/group"
    # Some packages' postinst scripts (which do not run here) would make these.
    [[ -e $root/usr/sbin/nologin ]] || ln -s ../bin/false "$root/usr/sbin/nologin"
    printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
}

check_image() {
    # Everything the Dockerfile and the git source rely on, run for real.
    local tag=$1
    docker run --rm --network none "$tag" sh -c '
        set -e
        python3 -c "import ssl, sqlite3, ctypes, venv, ensurepip, json, urllib.request"
        python3 -m venv /tmp/venv
        /tmp/venv/bin/pip --version
        git --version
        ssh -V
        command -v ssh-keygen
        gpg --version | head -n 1
        chown --version | head -n 1
    ' >&2
}

main() {
    local print_only=false
    case ${1-} in
        --print-tag) print_only=true ;;
        '') ;;
        *) die "unknown argument '$1' (usage: $PROG [--print-tag])" ;;
    esac
    [[ $# -le 1 ]] || die "too many arguments (usage: $PROG [--print-tag])"
    local tool
    for tool in apt-cache apt-get dpkg-deb docker sha256sum; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found (a Debian-like host is needed)"
    done
    [[ -f $CA_BUNDLE ]] || die "$CA_BUNDLE is missing"

    local files tag
    files=$(download)
    tag=$(image_tag "$files")
    if $print_only || docker image inspect "$tag" >/dev/null 2>&1; then
        printf '%s\n' "$tag"
        return 0
    fi

    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    local work=$WORK
    log "unpacking $(wc -l <<<"$files") packages"
    make_tree "$work/root" "$files"

    log "importing $tag"
    tar -C "$work/root" --numeric-owner -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' \
        -c "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
        -c 'CMD ["python3"]' \
        - "$tag.unchecked" >/dev/null
    if ! check_image "$tag.unchecked"; then
        docker image rm "$tag.unchecked" >/dev/null 2>&1 || true
        die "the new image fails its checks (see above); nothing was tagged"
    fi
    docker tag "$tag.unchecked" "$tag"
    docker image rm "$tag.unchecked" >/dev/null
    log "made $tag"
    printf '%s\n' "$tag"
}

main "$@"
