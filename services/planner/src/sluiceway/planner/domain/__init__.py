"""Pure planning: chunk ranges, plan ids and what to append for a run (no I/O)."""
