"""`python -m sluiceway.planner`."""

from sluiceway.planner.main import main

if __name__ == "__main__":
    main()
