#!/bin/bash
# bench/setup.sh: install what the server benchmark needs, Debian's redis-server (the server)
# and redis-tools (redis-benchmark, its load generator). Benchmark-only: memtrace does not
# depend on them. bench/run_all.py runs this when they are missing. Run as root.
set -euo pipefail

if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
    echo "bench/setup.sh: redis-server and redis-benchmark are installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/setup.sh: needs root to install redis-server and redis-tools (apt-get)" >&2
    exit 1
fi
echo "bench/setup.sh: installing Debian's redis-server and redis-tools for the server benchmark"
# Was the redis-server service there before? The package may start (and enable) it on
# systemd hosts; the benchmark runs its own instance on a private port and needs neither.
had_unit=no
if systemctl cat redis-server.service >/dev/null 2>&1; then had_unit=yes; fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends redis-server redis-tools; then
    apt-get update
    apt-get install -y --no-install-recommends redis-server redis-tools
fi
if [ "$had_unit" = no ] && [ -d /run/systemd/system ]; then
    # Only the service this install just added: a redis someone had before is left alone.
    echo "bench/setup.sh: stopping and disabling the redis-server service the package started"
    systemctl disable --now redis-server.service || true
fi
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null
