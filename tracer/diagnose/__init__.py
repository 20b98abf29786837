"""Why a failure happened: evidence (collected) and rules (pure), and the headroom of a process."""
