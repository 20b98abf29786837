#!/usr/bin/env bash
# memtrace set-up for the `deploy` test tier: podman, runc and debootstrap (Debian, root).
# Called by scripts/setup.sh; safe to run alone. Idempotent: a second run only checks.
#
# Why these: the tier builds deploy/Dockerfile with podman and runs it as the DaemonSet
# runs it. runc, not crun, because crun refuses a hybrid cgroup v1 + v2 layout. No
# container registry is needed: tests/deploy builds the Dockerfile's debian base with
# debootstrap from Debian's package mirror. The tier's own podman settings (containers.conf)
# live in tests/deploy, so nothing under /etc/containers is changed here.
set -euo pipefail

say() { printf 'setup-deploy: %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || { say "error: must run as root" >&2; exit 1; }
if ! command -v apt-get >/dev/null; then
    say "note: apt-get not found; the deploy tier needs podman, runc and debootstrap"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive

WANT=(podman runc debootstrap)
have=" $(dpkg-query -W -f='${Package} ${Status}\n' "${WANT[@]}" 2>/dev/null \
    | awk '$NF == "installed" && $(NF-1) == "ok" {printf "%s ", $1}' || true) "
TODO=()
for p in "${WANT[@]}"; do
    case "$have" in *" $p "*) ;; *) TODO+=("$p") ;; esac
done
if [ "${#TODO[@]}" -eq 0 ]; then
    say "podman, runc and debootstrap are installed"
    exit 0
fi
# podman recommends crun and a handful of network helpers: only what the tier uses
# (runc as the runtime, --network host) is installed.
say "apt-get install ${TODO[*]}"
apt-get update -qq
if ! apt-get install -y --no-install-recommends -qq "${TODO[@]}" >/dev/null; then
    # Set-up goes on (the other tiers need none of these); the deploy tier fails without them.
    say "note: could not install ${TODO[*]}; make test-deploy fails until they are installed"
fi
