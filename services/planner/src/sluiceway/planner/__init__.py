"""The planner: the Control gRPC API, introspection, chunk ranges and chunk tasks."""
