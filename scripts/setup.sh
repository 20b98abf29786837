#!/usr/bin/env bash
# memtrace set-up: system packages, kernel headers, the venv and the `memtrace` launcher.
# Shared by the Makefile (`sudo make setup`) and vagrant/Vagrantfile. Idempotent: a second
# run only checks and exits. Usage: setup.sh [--uninstall | --help]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="$REPO/.venv"
STAMP="$VENV/.memtrace-installed"
LAUNCHER=/usr/local/bin/memtrace
MARKER="# managed-by: memtrace scripts/setup.sh"
SYS_PY=/usr/bin/python3

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
usage: $0 [--uninstall]
  (no option)  install system packages, kernel headers, $VENV and $LAUNCHER
  --uninstall  remove $LAUNCHER (only if this script created it)
EOF
}

MODE=install
case "${1:-}" in
    "") ;;
    --uninstall) MODE=uninstall ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac
[ "$#" -le 1 ] || { usage >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo make setup)"

if [ "$MODE" = uninstall ]; then
    if [ -e "$LAUNCHER" ] && grep -qxF "$MARKER" "$LAUNCHER" 2>/dev/null; then
        rm -f "$LAUNCHER"
        say "removed $LAUNCHER"
    elif [ -e "$LAUNCHER" ]; then
        say "left $LAUNCHER alone: not created by memtrace setup"
    else
        say "nothing to remove ($LAUNCHER not present)"
    fi
    say "the venv ($VENV) and system packages are kept; 'make clean' removes the venv"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
command -v apt-get >/dev/null || die "apt-get not found: only Debian/Ubuntu are supported"

# ---------------------------------------------------------------- apt helpers
APT_UPDATED=0
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
apt_has() {  # is there an installable (non-virtual) package of this name?
    apt_lists_ready
    apt-cache show --no-all-versions "$1" 2>/dev/null | grep -q '^Package:'
}
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

# shellcheck disable=SC1091
OS_ID=$( . /etc/os-release 2>/dev/null && echo "${ID:-}" ) || OS_ID=""
KREL="$(uname -r)"

# ---------------------------------------------------------------- packages
REQUIRED=(python3-bpfcc python3-venv python3-pip gcc make tmux stress-ng procps util-linux)
mapfile -t TODO < <(missing "${REQUIRED[@]}")

# kernel headers
if [ -d "/lib/modules/$KREL/build/include" ]; then
    say "kernel headers: /lib/modules/$KREL/build is present"
else
    exact="linux-headers-$KREL"
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
OPTIONAL=()
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
# For the test tiers only: a browser for the flame graph, bcc's memleak to compare,
# a Prometheus server to scrape `memtrace export`.
for p in chromium bpfcc-tools prometheus; do
    if [ -z "$(installed "$p")" ] && apt_has "$p"; then OPTIONAL+=("$p"); fi
done
if [ "${#OPTIONAL[@]}" -gt 0 ]; then
    apt_update_once
    say "apt-get install ${OPTIONAL[*]} (optional)"
    apt-get install -y --no-install-recommends -qq "${OPTIONAL[@]}" >/dev/null \
        || say "note: could not install ${OPTIONAL[*]}; continuing without them"
fi

# ---------------------------------------------------------------- venv
# The venv must come from the distribution's python (bcc lives in its dist-packages) and
# see system site-packages; recreate it if it was made otherwise or by another python.
sys_ver="$("$SYS_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
venv_ok=0
if [ -x "$VENV/bin/python" ] && [ -f "$VENV/pyvenv.cfg" ] \
    && grep -Eq '^home *= */usr/bin$' "$VENV/pyvenv.cfg" \
    && grep -Eq '^include-system-site-packages *= *true$' "$VENV/pyvenv.cfg" \
    && grep -Eq "^version(_info)? *= *${sys_ver//./\\.}(\\.|$)" "$VENV/pyvenv.cfg"; then
    venv_ok=1
fi
if [ "$venv_ok" -eq 0 ]; then
    [ -e "$VENV" ] && say "recreating $VENV (not a --system-site-packages venv of $SYS_PY $sys_ver)"
    rm -rf "$VENV"
    say "creating $VENV"
    "$SYS_PY" -m venv --system-site-packages "$VENV"
fi

if [ ! -f "$STAMP" ] || [ "$REPO/pyproject.toml" -nt "$STAMP" ]; then
    say "pip install -e '${REPO}[test]'"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "${REPO}[test]"
    "$VENV/bin/python" -c 'import bcc' 2>/dev/null \
        || die "the venv cannot import bcc (is python3-bpfcc installed for $SYS_PY?)"
    touch "$STAMP"
fi

# ---------------------------------------------------------------- launcher
q_venv_bin=$(printf '%s' "$VENV/bin/memtrace" | sed "s/'/'\\\\''/g")
want="#!/bin/sh
$MARKER
# Runs memtrace from $REPO; remove with: sudo make uninstall
exec '$q_venv_bin' \"\$@\""
if [ -e "$LAUNCHER" ] && ! grep -qxF "$MARKER" "$LAUNCHER" 2>/dev/null; then
    say "note: $LAUNCHER exists and was not made by this script; leaving it alone"
elif [ ! -f "$LAUNCHER" ] || [ "$(cat "$LAUNCHER")" != "$want" ]; then
    mkdir -p "$(dirname "$LAUNCHER")"
    printf '%s\n' "$want" >"$LAUNCHER.tmp.$$"
    chmod 755 "$LAUNCHER.tmp.$$"
    mv -f "$LAUNCHER.tmp.$$" "$LAUNCHER"
    say "wrote $LAUNCHER -> $VENV/bin/memtrace"
fi

say "ready (run: sudo memtrace --help)"
