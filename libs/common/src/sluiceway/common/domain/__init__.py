"""Pure core shared by every service: events, ids, transition tables and the run fold (no I/O)."""
