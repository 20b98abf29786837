#!/usr/bin/env bash
# memtrace set-up: system packages, kernel headers, the developer venv and the installed `memtrace`.
# Shared by the Makefile (`sudo make setup`) and vagrant/Vagrantfile. Idempotent: a second
# run only checks, and reinstalls memtrace only when this checkout's code changed.
# Usage: setup.sh [--refresh | --uninstall | --help]
#
# Two Python environments, both from /usr/bin/python3 with --system-site-packages (bcc is the
# distribution's python3-bpfcc, not on PyPI):
#   .venv (in the checkout)        editable install + test tools, for the test runner and lint
#   /usr/local/lib/memtrace        a copy of the checkout (a wheel), world-readable, behind
#                                  /usr/local/bin/memtrace: any user may run it, wherever and
#                                  however privately the checkout was cloned.
set -euo pipefail
umask 022  # everything installed for all users must be readable by all users

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="$REPO/.venv"
STAMP="$VENV/.memtrace-installed"
PREFIX=/usr/local/lib/memtrace            # holds slot-a, slot-b and `current` -> one of them
LAUNCHER=/usr/local/bin/memtrace
MARKER="# managed-by: memtrace scripts/setup.sh"
PREFIX_MARKER="$PREFIX/.managed-by-memtrace-setup"
SOURCE_FILE=memtrace-source               # in a slot: the checkout and tree digest it was built from
LOCK=/run/lock/memtrace-setup.lock
SYS_PY=/usr/bin/python3

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOT
usage: $0 [--refresh | --uninstall]
  (no option)  install system packages, kernel headers, $VENV, memtrace in $PREFIX
               and $LAUNCHER
  --refresh    only the venvs: reinstall memtrace in $PREFIX if this checkout changed
               (what the e2e tier runs before it starts; no apt)
  --uninstall  remove $LAUNCHER and $PREFIX (only what this script created)
EOT
}

MODE=install
case "${1:-}" in
    "") ;;
    --refresh) MODE=refresh ;;
    --uninstall) MODE=uninstall ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac
[ "$#" -le 1 ] || { usage >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo make setup)"

# One set-up at a time: several checkouts (and the e2e tier's --refresh) share $PREFIX, and
# apt's own lock fails rather than waits. flock(1) holds the lock and runs this script again;
# -o keeps it out of the children (a daemon a package starts must not inherit it).
if [ "${MEMTRACE_SETUP_LOCK_HELD:-}" != 1 ]; then
    mkdir -p "$(dirname "$LOCK")"
    flock -n "$LOCK" true || say "waiting for another memtrace set-up to finish ($LOCK)"
    rc=0
    MEMTRACE_SETUP_LOCK_HELD=1 flock -o -E 75 -w 1800 "$LOCK" "$BASH" "${BASH_SOURCE[0]}" "$@" \
        || rc=$?
    [ "$rc" -ne 75 ] || die "another memtrace set-up still holds $LOCK after 30 minutes"
    exit "$rc"
fi

if [ "$MODE" = uninstall ]; then
    if [ -e "$LAUNCHER" ] && grep -qxF "$MARKER" "$LAUNCHER" 2>/dev/null; then
        rm -f "$LAUNCHER"
        say "removed $LAUNCHER"
    elif [ -e "$LAUNCHER" ]; then
        say "left $LAUNCHER alone: not created by memtrace setup"
    else
        say "nothing to remove ($LAUNCHER not present)"
    fi
    if [ -f "$PREFIX_MARKER" ]; then
        rm -rf "$PREFIX"
        say "removed $PREFIX"
    elif [ -e "$PREFIX" ]; then
        say "left $PREFIX alone: not created by memtrace setup"
    fi
    say "the checkout's venv ($VENV) and system packages are kept; 'make clean' removes the venv"
    exit 0
fi

# ---------------------------------------------------------------- packages
# (skipped by --refresh)
install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    command -v apt-get >/dev/null || die "apt-get not found: only Debian/Ubuntu are supported"

    local APT_UPDATED=0
    apt_update_once() {
        if [ "$APT_UPDATED" -eq 0 ]; then
            say "apt-get update"
            apt-get update -qq
            APT_UPDATED=1
        fi
    }
    # apt-cache only knows what the package lists say: with no lists at all (fresh container
    # images) refresh them first, else use the cached lists.
    apt_lists_ready() {
        if [ "$APT_UPDATED" -eq 0 ] && ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
            apt_update_once
        fi
    }
    # The version apt would install, or nothing (unknown or purely virtual package). The
    # whole output is read before it is parsed: a reader that stops early (grep -q) kills
    # apt-cache with SIGPIPE, which `set -o pipefail` turns into "no such package".
    apt_candidate() {
        local policy
        apt_lists_ready
        policy="$(LC_ALL=C apt-cache policy "$1" 2>/dev/null)" || true
        policy="$(sed -n 's/^ *Candidate: *//p' <<<"$policy")"
        if [ -n "$policy" ] && [ "$policy" != "(none)" ]; then printf '%s\n' "$policy"; fi
    }
    apt_has() { [ -n "$(apt_candidate "$1")" ]; }
    installed() {  # prints those of the given packages that are installed
        dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null \
            | awk '$NF == "installed" && $(NF-1) == "ok" {print $1}' || true
    }
    missing() {  # prints those of the given packages that are not installed
        local have p
        have=" $(installed "$@" | tr '\n' ' ') "
        for p in "$@"; do
            case "$have" in *" $p "*) ;; *) printf '%s\n' "$p" ;; esac
        done
    }

    local OS_ID KREL
    # shellcheck disable=SC1091
    OS_ID=$( . /etc/os-release 2>/dev/null && echo "${ID:-}" ) || OS_ID=""
    KREL="$(uname -r)"

    local REQUIRED=(python3-bpfcc python3-venv python3-pip gcc make tmux stress-ng procps util-linux)
    local TODO=()
    mapfile -t TODO < <(missing "${REQUIRED[@]}")

    # kernel headers
    if [ -d "/lib/modules/$KREL/build/include" ]; then
        say "kernel headers: /lib/modules/$KREL/build is present"
    else
        local exact="linux-headers-$KREL" generic arch
        if [ -n "$(installed "$exact")" ]; then
            say "kernel headers: $exact is installed"
        elif apt_has "$exact"; then
            say "kernel headers: installing $exact (matches the running kernel)"
            TODO+=("$exact")
        else
            if [ "$OS_ID" = ubuntu ]; then
                generic=linux-headers-generic
            else
                arch="$(dpkg --print-architecture)"
                case "$arch" in
                    amd64|arm64) generic="linux-headers-$arch" ;;
                    *) die "no kernel headers for $KREL and no generic headers known for $arch" ;;
                esac
            fi
            say "kernel headers: no package for $KREL; using generic $generic" \
                "(memtrace links it into /lib/modules at run time)"
            mapfile -t -O "${#TODO[@]}" TODO < <(missing "$generic")
        fi
    fi

    # bpftool is optional: Debian has a `bpftool` package, Ubuntu ships it in linux-tools-*.
    local OPTIONAL=()
    if ! command -v bpftool >/dev/null && [ -z "$(installed bpftool linux-tools-common)" ]; then
        if apt_has bpftool; then
            OPTIONAL=(bpftool)
        elif apt_has linux-tools-common; then
            OPTIONAL=(linux-tools-common)
            if apt_has "linux-tools-$KREL"; then OPTIONAL+=("linux-tools-$KREL"); fi
        else
            say "note: no bpftool package found; skipping it (optional)"
        fi
    fi

    if [ "${#TODO[@]}" -gt 0 ]; then
        apt_update_once
        say "apt-get install ${TODO[*]}"
        apt-get install -y --no-install-recommends -qq "${TODO[@]}" >/dev/null
    fi

    # For the test tiers: a browser for the flame graph, bcc's memleak to compare, a
    # Prometheus server to scrape `memtrace export`. Their tests fail when a package is
    # missing that this distribution has (tests/needs.py), and skip only when it has none.
    local p
    for p in chromium bpfcc-tools prometheus golang-go; do
        [ -z "$(installed "$p")" ] || continue
        if apt_has "$p"; then
            OPTIONAL+=("$p")
        else
            say "note: this distribution has no '$p' package (apt-cache policy $p): the tests that need it will skip"
        fi
    done
    if [ "${#OPTIONAL[@]}" -gt 0 ]; then
        apt_update_once
        say "apt-get install ${OPTIONAL[*]} (for the test tiers)"
        if ! apt-get install -y --no-install-recommends -qq "${OPTIONAL[@]}" >/dev/null; then
            for p in "${OPTIONAL[@]}"; do  # one at a time: install every one that can be
                apt-get install -y --no-install-recommends -qq "$p" >/dev/null \
                    || say "warning: could not install $p: the tests that need it will fail"
            done
        fi
    fi
}

# ---------------------------------------------------------------- the developer venv
# Editable, with the test tools and hatchling (the build backend, which builds the wheel
# installed below). It must come from the distribution's python (bcc lives in its
# dist-packages) and see system site-packages; recreate it if it was made otherwise.
SYS_VER=""  # set once the packages (which bring $SYS_PY on a bare system) are in place
venv_is_ours() {  # a --system-site-packages venv of $SYS_PY $SYS_VER?
    [ -x "$1/bin/python" ] && [ -f "$1/pyvenv.cfg" ] \
        && grep -Eq '^home *= */usr/bin$' "$1/pyvenv.cfg" \
        && grep -Eq '^include-system-site-packages *= *true$' "$1/pyvenv.cfg" \
        && grep -Eq "^version(_info)? *= *${SYS_VER//./\\.}(\\.|$)" "$1/pyvenv.cfg"
}

dev_venv() {
    if ! venv_is_ours "$VENV"; then
        [ -e "$VENV" ] && say "recreating $VENV (not a --system-site-packages venv of $SYS_PY $SYS_VER)"
        rm -rf "$VENV"
        say "creating $VENV"
        "$SYS_PY" -m venv --system-site-packages "$VENV"
    fi
    if [ ! -f "$STAMP" ] || [ "$REPO/pyproject.toml" -nt "$STAMP" ] \
        || ! "$VENV/bin/python" -c 'import hatchling' 2>/dev/null; then
        # pip >= 22.3 for `pip --python`, which installs into the system copy's venv below
        say "pip install -e '${REPO}[test]' hatchling (into $VENV)"
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "${REPO}[test]" \
            hatchling 'pip>=22.3'
        "$VENV/bin/python" -c 'import bcc' 2>/dev/null \
            || die "the venv cannot import bcc (is python3-bpfcc installed for $SYS_PY?)"
        touch "$STAMP"
    fi
}

# ---------------------------------------------------------------- the installed memtrace
# What the installed copy was built from: this checkout's path and a digest of every file
# the wheel takes (tracer/, bpf/, pyproject.toml). Names are part of the digest, so added,
# removed and renamed files count; compiled caches do not. A file that vanishes while it is
# read (an editor's temporary file) only makes the digest differ from any later one.
tree_digest() {
    (
        cd "$REPO"
        find tracer bpf pyproject.toml -name __pycache__ -prune -o -type f ! -name '*.pyc' -print0 \
            | LC_ALL=C sort -z | { xargs -0 sha256sum 2>/dev/null || true; } \
            | sha256sum | cut -d' ' -f1
    )
}

# Two slots, so a reinstall never touches the copy that running memtrace processes and
# concurrent e2e tests use: the new one is built beside it and `current` is switched to it
# in one rename.
install_memtrace() {
    local digest want slot next tmp wheel out
    digest="$(tree_digest)"
    want="checkout=$REPO
digest=$digest"
    slot="$(readlink "$PREFIX/current" 2>/dev/null || true)"
    if [ -n "$slot" ] && venv_is_ours "$PREFIX/$slot" && [ -x "$PREFIX/$slot/bin/memtrace" ] \
        && [ "$(cat "$PREFIX/$slot/$SOURCE_FILE" 2>/dev/null)" = "$want" ]; then
        say "memtrace in $PREFIX/$slot is this checkout's code"
        return 0
    fi
    if [ -e "$PREFIX" ] && [ ! -f "$PREFIX_MARKER" ]; then
        die "$PREFIX exists and was not made by this script; move it away first"
    fi
    next="slot-a"
    [ "$slot" != "slot-a" ] || next="slot-b"

    mkdir -p "$PREFIX"
    touch "$PREFIX_MARKER"
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    say "building memtrace from $REPO"
    if ! out="$(cd "$REPO" && "$VENV/bin/python" -m hatchling build -t wheel -d "$tmp" 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "hatchling could not build a wheel of $REPO"
    fi
    wheel="$(find "$tmp" -maxdepth 1 -name 'memtrace-*.whl' -print)"
    [ -n "$wheel" ] || die "hatchling built no wheel in $tmp"

    say "installing it in $PREFIX/$next"
    rm -rf "${PREFIX:?}/$next"
    "$SYS_PY" -m venv --system-site-packages --without-pip "$PREFIX/$next"
    "$VENV/bin/python" -m pip --python "$PREFIX/$next/bin/python" install \
        --disable-pip-version-check -q "$wheel"
    # The BPF sources must come from the install itself (the wheel's tracer/bpf), not from
    # a checkout that other users may not be able to read. Run from / with -I: the
    # checkout in the current directory must not be what gets imported.
    (cd / && "$PREFIX/$next/bin/python" -I -c '
import sys
import bcc  # noqa: F401  (the distribution bcc, seen through --system-site-packages)
from tracer.kernel.abi import bpf_dir
assert str(bpf_dir()).startswith(sys.prefix + "/"), bpf_dir()
') || die "the new install in $PREFIX/$next cannot import bcc or find its BPF sources"
    printf '%s\n' "$want" >"$PREFIX/$next/$SOURCE_FILE"
    chmod -R a+rX "$PREFIX/$next"
    ln -sfn "$next" "$PREFIX/current.new"
    mv -Tf "$PREFIX/current.new" "$PREFIX/current"
    say "memtrace installed in $PREFIX/$next (now $PREFIX/current)"
}

write_launcher() {
    local want
    want="#!/bin/sh
$MARKER
# Runs the copy of memtrace that setup.sh installed in $PREFIX; remove with: sudo make uninstall
exec $PREFIX/current/bin/memtrace \"\$@\""
    if [ -e "$LAUNCHER" ] && ! grep -qxF "$MARKER" "$LAUNCHER" 2>/dev/null; then
        say "note: $LAUNCHER exists and was not made by this script; leaving it alone"
    elif [ ! -f "$LAUNCHER" ] || [ "$(cat "$LAUNCHER")" != "$want" ]; then
        mkdir -p "$(dirname "$LAUNCHER")"
        printf '%s\n' "$want" >"$LAUNCHER.tmp.$$"
        chmod 755 "$LAUNCHER.tmp.$$"
        mv -f "$LAUNCHER.tmp.$$" "$LAUNCHER"
        say "wrote $LAUNCHER -> $PREFIX/current/bin/memtrace"
    fi
}

if [ "$MODE" = install ]; then
    install_packages
fi
[ -x "$SYS_PY" ] || die "$SYS_PY not found (sudo make setup installs it)"
SYS_VER="$("$SYS_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
dev_venv
install_memtrace
write_launcher
if [ "$MODE" = install ]; then bash "$REPO/scripts/setup-vm.sh"; fi  # the VM tier (make test-vm)
if [ "$MODE" = install ]; then bash "$REPO/scripts/setup-deploy.sh"; fi  # make test-deploy
say "ready (run: sudo memtrace --help)"
