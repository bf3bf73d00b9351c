"""Pure commit logic: the decision, the gates' verdicts and the manifest (no I/O)."""
