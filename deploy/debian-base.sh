#!/usr/bin/env bash
# Makes the Dockerfile's base image, debian:RELEASE-slim, from Debian's package mirror alone,
# for hosts that reach no container registry: debootstrap --variant=minbase, trimmed the way
# the official slim image is, imported into podman. Root; needs debootstrap and podman.
#   usage: deploy/debian-base.sh [RELEASE] [MIRROR]     (default: bookworm, deb.debian.org)
# Does nothing if podman already has the image (delete it with `podman rmi` to remake it).
set -euo pipefail

release="${1:-bookworm}"
mirror="${2:-http://deb.debian.org/debian}"
security="${MEMTRACE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
image="debian:${release}-slim"

say() { printf 'debian-base: %s\n' "$*"; }

[ "$(id -u)" -eq 0 ] || { say "error: must run as root (debootstrap)" >&2; exit 1; }
for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { say "error: $tool not found" >&2; exit 1; }
done
if podman image exists "$image"; then
    say "$image is already there"
    exit 0
fi

rootfs="$(mktemp -d /var/tmp/memtrace-debian-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

say "debootstrap --variant=minbase $release ($mirror)"
debootstrap --variant=minbase "$release" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# As the official slim image: packages installed later leave out documentation, manual
# pages and translations too (copyright files stay).
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{man,groff,info,locale,lintian,linda}/*
# No package lists or caches in the image: every Dockerfile stage runs apt-get update first.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
# The host's name and resolver are the container engine's to provide.
rm -f "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
# The release, its updates and its security fixes, as the official image has them.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $release $release-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $release-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

say "podman import -> $image"
tar --numeric-owner -C "$rootfs" -c . \
    | podman import --change 'CMD ["bash"]' \
        --message "debootstrap --variant=minbase $release (memtrace deploy/debian-base.sh)" \
        - "$image" >/dev/null
podman image ls "$image"
