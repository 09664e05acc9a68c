#!/usr/bin/env bash
# Create (or verify) the Python 3.14 virtualenvs of the current releases, inside the Debian sid
# root of scripts/sid-root.sh (called by scripts/real-envs.sh; runs alone too):
#   session-buddy-0.36.0-<hash>  session-buddy==0.36.0, pinned by constraints/session-buddy-0.36.0.txt
#   oneiric-0.33.3-<hash>        oneiric==0.33.3 pinned by constraints/oneiric-0.33.3.txt, then this
#                                checkout by a plain `pip install -e` (no overlay: the tree has mcp 2.3.0)
#   py314-suite                  this checkout with its test extras: the unit suite on Python 3.14
# They live in /opt/real-envs inside the root (<root>/opt/real-envs on the host); <hash> is the first
# 12 hex of the sha256 of the constraints file, so a changed pin makes a new venv, and a venv whose
# stamp matches is only verified. On success, eval-able assignments go to stdout (interpreter paths
# as seen inside the root, where they run: scripts/in-sid.sh PATH ...); progress goes to stderr.
# tests/integration/conftest_current.py computes the same names: keep them in step.
set -euo pipefail

scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$scripts")
sb_constraints=$repo/constraints/session-buddy-0.36.0.txt
on_constraints=$repo/constraints/oneiric-0.33.3.txt
envs=/opt/real-envs # inside the root

die() { echo "real-envs-current: error: $*" >&2; exit 1; }
log() { echo "real-envs-current: $*" >&2; }

for f in "$sb_constraints" "$on_constraints"; do
    [[ -f $f ]] || die "missing constraints file $f"
done
sid_root=$(bash "$scripts/sid-root.sh" | sed -n 's/^ONEIRIC_SESSION_SID_ROOT=//p')
[[ -n $sid_root ]] || die "scripts/sid-root.sh gave no root"
export ONEIRIC_SESSION_SID_ROOT=$sid_root
host() { echo "$sid_root$1"; } # a path inside the root, seen from the host
in_sid() { bash "$scripts/in-sid.sh" "$@"; }
# Bytecode is compiled at install (pip's default): where PYTHONDONTWRITEBYTECODE is set, nothing
# would be cached later, and every import of Oneiric would compile it again (seconds each).
pip_in() { in_sid "$1/bin/python" -m pip install --quiet --disable-pip-version-check "${@:2}" >&2; }

stamp_of() { cat "$@" | sha256sum | cut -c1-12; }
installed_version() {
    in_sid "$1/bin/python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$2" \
        2>/dev/null || true
}
# What this checkout installs as: its path and its pyproject.toml (the entry points live there).
project_stamp() { echo "$repo $(sha256sum <"$repo/pyproject.toml" | cut -c1-12)"; }

exec 7>"$(dirname "$sid_root")/.real-envs-current.lock"
flock 7

# ensure_venv314 NAME DIST VERSION HASH CONSTRAINTS
ensure_venv314() {
    local name=$1 dist=$2 version=$3 hash=$4 constraints=$5
    local dir=$envs/$name-$hash
    if [[ -f $(host "$dir")/.real-envs-stamp && $(<"$(host "$dir")/.real-envs-stamp") == "$hash" ]]; then
        [[ $(installed_version "$dir" "$dist") == "$version" ]] \
            || die "$(host "$dir") is stamped but $dist $version does not load; delete it and re-run"
        log "$name: up to date ($(host "$dir"))"
        return 0
    fi
    log "$name: building $(host "$dir") (pip install -c $(basename "$constraints") $dist==$version)"
    rm -rf "$(host "$dir")"
    in_sid python3.14 -m venv "$dir" || die "cannot create venv $dir in the sid root"
    if ! pip_in "$dir" -c "$constraints" "$dist==$version"; then
        rm -rf "$(host "$dir")"
        die "pip install $dist==$version failed"
    fi
    [[ $(installed_version "$dir" "$dist") == "$version" ]] \
        || { rm -rf "$(host "$dir")"; die "$dist $version missing after install"; }
    echo "$hash" >"$(host "$dir")/.real-envs-stamp"
}

# ensure_checkout DIR SPEC [PIP ARGS...]: this checkout installed editable as SPEC, once per stamp.
ensure_checkout() {
    local dir=$1 spec=$2 want have
    want=$(project_stamp)
    have=$(cat "$(host "$dir")/.oneiric-session-stamp" 2>/dev/null || true)
    if [[ $have == "$want" && -n $(installed_version "$dir" oneiric-session) ]]; then
        log "oneiric-session: up to date in $(host "$dir")"
        return 0
    fi
    log "oneiric-session: installing $spec (editable) into $(host "$dir")"
    pip_in "$dir" "${@:3}" -e "$spec" || die "pip install -e $spec into $dir failed"
    echo "$want" >"$(host "$dir")/.oneiric-session-stamp"
}

sb_hash=$(stamp_of "$sb_constraints")
on_hash=$(stamp_of "$on_constraints")
ensure_venv314 session-buddy-0.36.0 session-buddy 0.36.0 "$sb_hash" "$sb_constraints"
ensure_venv314 oneiric-0.33.3 oneiric 0.33.3 "$on_hash" "$on_constraints"
ensure_checkout "$envs/oneiric-0.33.3-$on_hash" "$repo" -c "$on_constraints"
[[ $(installed_version "$envs/oneiric-0.33.3-$on_hash" oneiric) == 0.33.3 ]] \
    || die "installing oneiric-session moved oneiric off 0.33.3"

suite=$envs/py314-suite
if [[ ! -x $(host "$suite")/bin/python ]]; then
    log "py314-suite: creating $(host "$suite")"
    in_sid python3.14 -m venv "$suite" || die "cannot create venv $suite in the sid root"
fi
ensure_checkout "$suite" "$repo[test,ipython,jwt]"

echo "ONEIRIC_SESSION_SID_ROOT=$sid_root"
echo "SESSION_BUDDY_314_PYTHON=$envs/session-buddy-0.36.0-$sb_hash/bin/python"
echo "ONEIRIC_314_PYTHON=$envs/oneiric-0.33.3-$on_hash/bin/python"
echo "PYTHON314_SUITE=$suite/bin/python"
