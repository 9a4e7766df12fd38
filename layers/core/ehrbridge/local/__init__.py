"""Local mode: the moto-based twin of the AWS pipeline, the event-source runner and the demo."""
