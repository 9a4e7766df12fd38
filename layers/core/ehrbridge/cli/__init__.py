"""The `ehrbridge` command line."""
