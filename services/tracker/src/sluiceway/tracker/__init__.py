"""The tracker: DuckDB read models of the run log and the Tracker gRPC API."""
