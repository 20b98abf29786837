"""The VM tier: tests that need a small machine of their own (run by tests/vm/run_vm.py)."""
