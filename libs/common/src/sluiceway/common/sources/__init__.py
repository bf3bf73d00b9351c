"""Row sources: introspection and Arrow batch readers, one module per engine."""
