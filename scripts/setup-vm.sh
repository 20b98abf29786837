#!/usr/bin/env bash
# memtrace VM-tier set-up: qemu, Debian's generic stock kernel (+ modules, headers), virtme-ng.
# Called by scripts/setup.sh (after the venv exists); idempotent: a second run only checks.
# The kernel is only a guest image for `make test-vm`: it is installed where no boot loader
# would pick it up (a VM given its kernel from outside) or where it is already installed;
# elsewhere only with MEMTRACE_VM_INSTALL_KERNEL=1. Other than Debian on amd64: skipped.
# Usage: setup-vm.sh [--help]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="$REPO/.venv"
VNG_VENV="$REPO/.venv-vng"  # only used when virtme-ng cannot live in the project venv
VNG_VERSION="${MEMTRACE_VNG_VERSION:-1.42}"  # pinned: its command line is what tests/vm uses

say() { printf 'setup-vm: %s\n' "$*"; }
die() { printf 'setup-vm: error: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
    "") ;;
    -h|--help) echo "usage: $0   (installs qemu, linux-image-amd64 + headers, virtme-ng)"; exit 0 ;;
    *) echo "usage: $0" >&2; exit 2 ;;
esac

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo make setup)"
command -v apt-get >/dev/null || die "apt-get not found: the VM tier needs Debian's packages"
export DEBIAN_FRONTEND=noninteractive

# shellcheck disable=SC1091
OS_ID=$( . /etc/os-release 2>/dev/null && echo "${ID:-}" ) || OS_ID=""
if [ "$OS_ID" != debian ] || [ "$(dpkg --print-architecture)" != amd64 ]; then
    say "skipped: the VM tier boots Debian's amd64 stock kernel (this is ${OS_ID:-unknown}" \
        "$(dpkg --print-architecture)); make test-vm will say so"
    exit 0
fi

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
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

# ---------------------------------------------------------------- which kernel
# linux-image-amd64 is a meta-package depending on exactly one linux-image-<ver>-amd64;
# the headers must be that same <ver> so bcc in the guest compiles against its own kernel.
kernel_package() {
    local dep
    dep="$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')"
    if [ -z "$dep" ]; then
        apt_update_once
        dep="$(apt-cache depends linux-image-amd64 2>/dev/null \
            | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')"
    fi
    [ -n "$dep" ] || die "apt knows no linux-image-amd64 (is this Debian?)"
    printf '%s\n' "$dep"
}

KPKG="$(kernel_package)"          # e.g. linux-image-6.1.0-57-amd64
KVER="${KPKG#linux-image-}"       # e.g. 6.1.0-57-amd64

LOADERS=(grub-pc grub-efi-amd64 grub-efi-amd64-signed systemd-boot extlinux syslinux lilo)
# Where a boot loader would pick up a newly installed kernel at the next boot, install one
# only when asked: the tier must never change what a machine boots.
if [ -n "$(installed "${LOADERS[@]}")" ] && [ -z "$(installed "$KPKG")" ] \
    && [ "${MEMTRACE_VM_INSTALL_KERNEL:-0}" != 1 ]; then
    say "skipped: this host has a boot loader ($(installed "${LOADERS[@]}" | tr '\n' ' '))" \
        "and $KPKG is not installed; installing it could change what it boots." \
        "Set MEMTRACE_VM_INSTALL_KERNEL=1 to install it anyway"
    exit 0
fi

# busybox-static: virtme-ng's initramfs (it loads the kernel's 9p/overlay modules with it).
# An initramfs generator is a dependency of every Debian kernel: keep the one present, else
# take tiny-initramfs, the smallest (initramfs-tools drags in udev and a systemd upgrade).
WANT=(qemu-system-x86 busybox-static linux-image-amd64 "$KPKG" "linux-headers-$KVER")
if [ -z "$(installed initramfs-tools dracut tiny-initramfs)" ]; then
    WANT+=(tiny-initramfs)
fi
mapfile -t TODO < <(missing "${WANT[@]}")
if [ "${#TODO[@]}" -gt 0 ]; then
    apt_update_once
    say "apt-get install ${TODO[*]}"
    apt-get install -y --no-install-recommends -qq "${TODO[@]}" >/dev/null
else
    say "qemu, busybox-static, $KPKG and its headers are installed"
fi

[ -f "/boot/vmlinuz-$KVER" ] || die "/boot/vmlinuz-$KVER missing after installing $KPKG"
[ -d "/lib/modules/$KVER/kernel/fs/9p" ] || die "$KPKG has no 9p modules (a -cloud kernel?)"
[ -e "/lib/modules/$KVER/build/include" ] || die "linux-headers-$KVER not linked into /lib/modules"

if [ -z "$(installed "${LOADERS[@]}")" ]; then
    say "no boot loader on this host: $KPKG is only a guest image (this host boots $(uname -r))"
fi

# ---------------------------------------------------------------- virtme-ng
# In the project venv when it fits there (needs Python >= 3.10); otherwise a venv of its own.
vng_ok() { [ -x "$1/bin/vng" ] && "$1/bin/vng" --version 2>/dev/null | grep -qF "$VNG_VERSION"; }
if vng_ok "$VENV" || vng_ok "$VNG_VENV"; then
    say "virtme-ng $VNG_VERSION is installed"
else
    [ -x "$VENV/bin/python" ] || die "$VENV missing: run scripts/setup.sh first"
    if "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        say "pip install virtme-ng==$VNG_VERSION into $VENV"
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q "virtme-ng==$VNG_VERSION"
    fi
    if ! vng_ok "$VENV"; then
        say "virtme-ng does not fit $VENV: giving it $VNG_VENV"
        python3 -m venv "$VNG_VENV"
        "$VNG_VENV/bin/python" -m pip install --disable-pip-version-check -q \
            "virtme-ng==$VNG_VERSION"
        vng_ok "$VNG_VENV" || die "virtme-ng $VNG_VERSION did not install"
    fi
fi

say "ready: guest kernel /boot/vmlinuz-$KVER (run: sudo make test-vm)"
