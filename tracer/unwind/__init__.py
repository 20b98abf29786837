"""User-space unwinding of stack snapshots captured in BPF: process maps, .eh_frame CFI, ELF symbols and line tables."""
