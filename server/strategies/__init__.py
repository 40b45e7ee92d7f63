"""Aggregation strategies: one file per algorithm, pure functions plus state only where needed."""
