"""Operator tooling: status, DLQ redrive, archive replay, the quarantine work list."""
