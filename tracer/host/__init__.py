"""Readers of /proc and /sys: what the host offers (root, BPF, tracefs, headers), cgroups (ids, paths, memory cgroup counters) and memory state."""
