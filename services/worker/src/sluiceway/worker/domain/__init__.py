"""Pure decisions of the worker: what to run, what to append and how to settle a task (no I/O)."""
