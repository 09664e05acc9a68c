#!/usr/bin/env bash
# Create (or verify) the two Python 3.13 virtualenvs the integration tests run the real
# systems in: session-buddy==0.23.0, and oneiric==0.17.0 with oneiric-session beside it (no
# overlay: oneiric-session runs on the mcp 1.30 that Oneiric's tree pins).
#
# Each venv lives in $ONEIRIC_SESSION_REAL_ENVS (default ~/.cache/oneiric-session/real-envs)
# under <name>-<first 12 hex of the sha256 of its constraints files>, so a changed pin makes
# a new venv. A venv whose stamp matches is only verified. On success the two interpreters
# are printed on stdout as shell assignments (eval-able); progress goes to stderr.
#
# Environment: ONEIRIC_SESSION_REAL_ENVS (cache dir), ONEIRIC_SESSION_PYTHON313 (interpreter).
# tests/integration/conftest.py computes the same directory names: keep them in step.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
base=${ONEIRIC_SESSION_REAL_ENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/oneiric-session/real-envs}
sb_constraints=$repo/constraints/session-buddy-0.23.0.txt
on_constraints=$repo/constraints/oneiric-0.17.0.txt

die() { echo "real-envs: error: $*" >&2; exit 1; }
log() { echo "real-envs: $*" >&2; }

find_python313() {
    local candidate
    for candidate in "${ONEIRIC_SESSION_PYTHON313:-}" python3.13 /root/.pyenv/versions/3.13.*/bin/python \
        /usr/bin/python3.13 /usr/local/bin/python3.13; do
        [[ -n $candidate ]] || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    return 1
}

stamp_of() { cat "$@" | sha256sum | cut -c1-12; }

# Installed distribution's version, or nothing: a cheap check that the venv still works.
installed_version() {
    "$1/bin/python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$2" 2>/dev/null || true
}

# ensure_venv NAME DIST VERSION HASH CONSTRAINTS: build DIR/NAME-HASH unless its stamp matches.
ensure_venv() {
    local name=$1 dist=$2 version=$3 hash=$4 constraints=$5
    local dir=$base/$name-$hash
    if [[ -f $dir/.real-envs-stamp && $(<"$dir/.real-envs-stamp") == "$hash" ]]; then
        [[ $(installed_version "$dir" "$dist") == "$version" ]] \
            || die "$dir is stamped but $dist $version does not load; delete it and re-run"
        log "$name: up to date ($dir)"
        return 0
    fi
    log "$name: building $dir (pip install -c $(basename "$constraints") $dist==$version)"
    rm -rf "$dir"
    "$python313" -m venv "$dir" || die "cannot create venv $dir"
    if ! "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$constraints" "$dist==$version" >&2; then
        rm -rf "$dir"
        die "pip install $dist==$version failed"
    fi
    [[ $(installed_version "$dir" "$dist") == "$version" ]] || { rm -rf "$dir"; die "$dist $version missing after install"; }
    echo "$hash" >"$dir/.real-envs-stamp"
}

# Our package goes into the Oneiric venv editable, so tests see the checkout's code; it is
# reinstalled when the checkout or its pyproject.toml changes (the entry points live there).
# It is installed as a user's pip would, with Oneiric's own pins as the only constraints, so
# the venv keeps Oneiric's mcp 1.x; the test extras let scripts/test run the MCP unit tests
# there too (both SDK majors stay tested).
ensure_project() {
    local dir=$1 want have
    want="$repo $(sha256sum <"$repo/pyproject.toml" | cut -c1-12)"
    have=$(cat "$dir/.oneiric-session-stamp" 2>/dev/null || true)
    if [[ $have == "$want" && -n $(installed_version "$dir" oneiric-session) ]]; then
        log "oneiric-session: up to date in $dir"
        return 0
    fi
    log "oneiric-session: installing $repo[test,jwt] (editable) into $dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$on_constraints" -e "$repo[test,jwt]" >&2 || die "pip install -e $repo into $dir failed"
    local mcp_version
    mcp_version=$(installed_version "$dir" mcp)
    [[ $mcp_version == 1.* ]] || die "$dir has mcp $mcp_version, not Oneiric 0.17.0's mcp 1.x"
    "$dir/bin/python" -m pip check >&2 || die "pip check fails in $dir"
    echo "$want" >"$dir/.oneiric-session-stamp"
}

for f in "$sb_constraints" "$on_constraints"; do
    [[ -f $f ]] || die "missing constraints file $f"
done
python313=$(find_python313) || die "Python 3.13 not found (set ONEIRIC_SESSION_PYTHON313)"
mkdir -p "$base"

# One builder at a time (parallel CI jobs, pytest workers).
exec 9>"$base/.lock"
flock 9

sb_hash=$(stamp_of "$sb_constraints")
on_hash=$(stamp_of "$on_constraints")
ensure_venv session-buddy-0.23.0 session-buddy 0.23.0 "$sb_hash" "$sb_constraints"
ensure_venv oneiric-0.17.0 oneiric 0.17.0 "$on_hash" "$on_constraints"
ensure_project "$base/oneiric-0.17.0-$on_hash"

echo "SESSION_BUDDY_PYTHON=$base/session-buddy-0.23.0-$sb_hash/bin/python"
echo "ONEIRIC_PYTHON=$base/oneiric-0.17.0-$on_hash/bin/python"

# Python 3.14 in a Debian sid root, with Session-Buddy 0.36.0, Oneiric 0.33.3 and the suite's
# venv (scripts/real-envs-current.sh); ONEIRIC_SESSION_PY314=0 leaves it out.
if [[ ${ONEIRIC_SESSION_PY314:-1} != 0 ]]; then
    bash "$repo/scripts/real-envs-current.sh"
fi
