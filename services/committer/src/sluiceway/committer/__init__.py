"""The committer: gates, the manifest, _SUCCESS and the run's outcome."""
