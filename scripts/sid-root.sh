#!/usr/bin/env bash
# Build (or verify) a Debian sid root with Python 3.14, the Python the current Oneiric 0.33.3,
# Session-Buddy 0.36.0 and Mahavishnu 0.36.0 require, and mount what runs in it need.
#
#   scripts/sid-root.sh            build or verify the root, mount, print ONEIRIC_SESSION_SID_ROOT=...
#   scripts/sid-root.sh --mount    only (re)mount an already built root (idempotent)
#   scripts/sid-root.sh --unmount  unmount everything under the root (lazily if busy)
#   scripts/sid-root.sh --remove   unmount, then delete the root
#
# The root is $ONEIRIC_SESSION_REAL_ENVS/sid-root (default ~/.cache/oneiric-session/real-envs),
# stamped with the sha256 of its package list, so a warm run only verifies it. Inside: the host's
# pip settings (config files, CA bundle, constraint files copied; directories of wheels and local
# indexes bind-mounted read-only at their host paths), /proc, /dev, /sys, /tmp and this repository
# at the same path as on the host. A root is never deleted while anything is mounted in it.
# Run commands inside with scripts/in-sid.sh. Progress goes to stderr. Needs root (chroot, mount).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
base=${ONEIRIC_SESSION_REAL_ENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/oneiric-session/real-envs}
root=$base/sid-root
mirror=${ONEIRIC_SESSION_SID_MIRROR:-http://deb.debian.org/debian}
# passwd: useradd for tests about other users; the rest is what the suite and pip need.
packages=python3.14,python3.14-venv,ca-certificates,passwd
stamp=$(printf '%s\n' "sid-root v1" "$packages" | sha256sum | cut -c1-12)

die() { echo "sid-root: error: $*" >&2; exit 1; }
log() { echo "sid-root: $*" >&2; }

[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, mount)"

# Mount points under $root, deepest first (from /proc/mounts; octal escapes decoded).
mounts_under() {
    local dir
    dir=$(realpath -m "$root")
    while read -r _ mountpoint _; do
        mountpoint=$(printf '%b' "$mountpoint")
        [[ $mountpoint == "$dir" || $mountpoint == "$dir"/* ]] && echo "$mountpoint"
    done </proc/mounts | sort -r
}

is_mounted() {
    local target
    target=$(realpath -m "$1")
    while read -r _ mountpoint _; do
        [[ $(printf '%b' "$mountpoint") == "$target" ]] && return 0
    done </proc/mounts
    return 1
}

unmount_all() {
    local mountpoint
    while read -r mountpoint; do
        [[ -n $mountpoint ]] || continue
        umount "$mountpoint" 2>/dev/null || umount -l "$mountpoint" || die "cannot unmount $mountpoint"
    done < <(mounts_under)
    [[ -z $(mounts_under) ]] || die "still mounted under $root: $(mounts_under | tr '\n' ' ')"
}

remove_root() {
    unmount_all
    # Only now, with nothing mounted in it, may the root go.
    [[ -z $(mounts_under) ]] || die "refusing to delete $root: something is mounted in it"
    rm -rf --one-file-system "$root"
}

# Whether DST shows the very directory SRC is now (a bind mount has its inode); a mount of a
# checkout that was deleted and cloned again at the same path shows the deleted one.
same_inode() { [[ $(stat -c %d:%i "$1" 2>/dev/null) == "$(stat -c %d:%i "$2" 2>/dev/null)" ]]; }

# bind SRC [ro]: SRC at the same path inside the root, once (again if the mount went stale).
bind() {
    local src=$1 mode=${2:-rw} dst=$root$1
    if is_mounted "$dst"; then
        same_inode "$src" "$dst" && return 0
        log "re-mounting $src (the mount at $dst shows a directory since replaced)"
        umount -R "$dst" 2>/dev/null || umount -R -l "$dst" || die "cannot unmount the stale $dst"
    fi
    if [[ -d $src ]]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")" && touch "$dst"; fi
    mount --rbind "$src" "$dst"
    mount --make-rslave "$dst"
    if [[ $mode == ro ]]; then
        mount -o remount,bind,ro "$dst"
    fi
}

# Host pip settings: absolute paths named in pip's configuration and PIP_* variables
# (for a local index, .../simple, the directory above it).
pip_paths() {
    {
        python3 -m pip config list 2>/dev/null | sed -E "s/^[^=]+=//; s/^'//; s/'$//"
        env | sed -nE 's/^PIP_[A-Z_]+=//p'
    } | tr ' ' '\n' | sed -E 's#^file://##; s#/+$##' | grep '^/' \
        | sed -E 's#/simple$##' | sort -u # a local index links ../../files/: take its parent whole
}

pip_config_files() {
    python3 -m pip config debug 2>/dev/null | sed -nE 's/^ +(\/[^,]+), exists: True$/\1/p' | sort -u
}

copy_pip_settings() {
    local path
    while read -r path; do
        [[ -n $path ]] || continue
        mkdir -p "$root$(dirname "$path")"
        cp -L "$path" "$root$path"
    done < <(pip_config_files)
    while read -r path; do
        if [[ -f $path ]]; then
            mkdir -p "$root$(dirname "$path")"
            cp -L "$path" "$root$path"
        fi
    done < <(pip_paths)
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    [[ -f /etc/hosts ]] && cp -L /etc/hosts "$root/etc/hosts"
    true
}

mount_all() {
    local path
    [[ -x $root/usr/bin/python3.14 ]] || die "no root at $root (run scripts/sid-root.sh)"
    exec 8>"$base/.sid-mount.lock"
    flock 8
    # The root is a mount point of its own, so that `/` inside is one: unshare(1) (a PID namespace
    # with its own /proc, as two tests use) makes `/` private first, which fails on a plain directory.
    # Made first: mounts already under a root that is not one yet would be hidden by it.
    if ! is_mounted "$root"; then
        unmount_all
        mount --bind "$root" "$root"
        mount --make-private "$root"
    fi
    if ! is_mounted "$root/proc"; then
        mount -t proc proc "$root/proc"
    fi
    bind /dev
    bind /sys
    bind /tmp
    bind "$repo"
    while read -r path; do
        [[ -d $path ]] && bind "$path" ro
    done < <(pip_paths)
    copy_pip_settings
    flock -u 8
}

build_root() {
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2 \
            || die "cannot install debootstrap"
    fi
    remove_root
    local partial=$root.partial
    [[ -z $(root=$partial mounts_under) ]] || die "something is mounted under $partial"
    rm -rf --one-file-system "$partial"
    mkdir -p "$base"
    log "debootstrap sid into $root (about a minute)"
    debootstrap --variant=minbase --include="$packages" sid "$partial" "$mirror" >&2 \
        || { rm -rf --one-file-system "$partial"; die "debootstrap failed (see above)"; }
    mv "$partial" "$root"
    echo "$stamp" >"$root/.sid-root-stamp"
}

case ${1:-} in
    --unmount) unmount_all; exit 0 ;;
    --remove) remove_root; exit 0 ;;
    --mount) mount_all; exit 0 ;;
    "") ;;
    *) die "unknown argument $1" ;;
esac

mkdir -p "$base"
exec 9>"$base/.sid-root.lock"
flock 9
if [[ -f $root/.sid-root-stamp && $(<"$root/.sid-root-stamp") == "$stamp" ]]; then
    log "up to date ($root)"
else
    build_root
fi
mount_all
version=$(chroot "$root" /usr/bin/python3.14 -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    || die "python3.14 does not run in $root; run scripts/sid-root.sh --remove and re-run"
[[ $version == 3.14 ]] || die "$root has Python $version, not 3.14"
echo "ONEIRIC_SESSION_SID_ROOT=$root"
