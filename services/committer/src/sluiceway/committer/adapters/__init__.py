"""The committer's adapters: the destination's files and the run-event consumer."""
