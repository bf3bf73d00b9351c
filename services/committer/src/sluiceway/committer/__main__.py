"""`python -m sluiceway.committer`."""

from sluiceway.committer.main import main

if __name__ == "__main__":
    main()
