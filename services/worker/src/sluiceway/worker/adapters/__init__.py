"""The worker's adapters: one external system each (sources + part files)."""
