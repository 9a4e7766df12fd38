"""ehrbridge: the domain library shipped to every function as one Lambda layer."""

__version__ = "0.1.0"
