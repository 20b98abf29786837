"""memtrace: a live eBPF tracer for Linux memory-allocation failures."""

__version__ = "0.1.0"
