"""Tracker adapters: one external system each (DuckDB, gRPC, NATS)."""
