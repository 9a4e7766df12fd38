"""Queue-consumer plumbing shared by every stage function."""
