"""`python -m sluiceway.worker`."""

from sluiceway.worker.main import main

main()
