"""Pure tracker logic: run summaries and journal lines (no I/O)."""
