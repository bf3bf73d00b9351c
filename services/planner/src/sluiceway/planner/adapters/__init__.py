"""The planner's adapters: the Control gRPC servicer, the run-event consumer, sources."""
