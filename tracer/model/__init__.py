"""Plain values: failures with the kernel's numbers, exact counters, leak profiles, probe outcomes; decoding of errno, GFP and syscalls; pure aggregation."""
