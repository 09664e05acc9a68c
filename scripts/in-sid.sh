#!/usr/bin/env bash
# Run a command inside the Debian sid root (Python 3.14) that scripts/sid-root.sh builds:
#   scripts/in-sid.sh python3.14 -c 'import sys; print(sys.version)'
# The root is mounted first if it is not (idempotent). The command runs as the caller, with the
# caller's environment (PIP_*, proxies, CI) and PATH reset to the root's, in the caller's working
# directory when that exists inside (the repository and /tmp are at their host paths), else in /.
set -euo pipefail

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$scripts")
base=${ONEIRIC_SESSION_REAL_ENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/oneiric-session/real-envs}
root=${ONEIRIC_SESSION_SID_ROOT:-$base/sid-root}

[[ $# -gt 0 ]] || { echo "usage: in-sid.sh COMMAND [ARG...]" >&2; exit 2; }
[[ -x $root/usr/bin/python3.14 ]] || { echo "in-sid: no sid root at $root: run scripts/sid-root.sh" >&2; exit 125; }

# Cheap check (one read of /proc/mounts) before the full, locked mount.
mounted() {
    awk -v s="$root" -v p="$root/proc" -v t="$root/tmp" -v d="$root/dev" -v r="$root$repo" \
        '$2 == s || $2 == p || $2 == t || $2 == d || $2 == r { n++ } END { exit !(n >= 5) }' /proc/mounts \
        && [[ $(stat -c %d:%i "$repo") == "$(stat -c %d:%i "$root$repo" 2>/dev/null)" ]] # not a stale mount
}
if ! mounted; then
    ONEIRIC_SESSION_REAL_ENVS=$(dirname "$root") bash "$scripts/sid-root.sh" --mount
fi

cwd=$PWD
[[ -d $root$cwd ]] || cwd=/
exec chroot "$root" /usr/bin/env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/sh -c 'cd "$1" || exit 125; shift; exec "$@"' in-sid "$cwd" "$@"
