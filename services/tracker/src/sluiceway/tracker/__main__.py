"""`python -m sluiceway.tracker`."""

from sluiceway.tracker.main import main

if __name__ == "__main__":
    main()
