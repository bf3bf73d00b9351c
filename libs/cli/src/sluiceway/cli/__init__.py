"""The `sluiceway` command line: start a local stack, submit and follow runs."""
