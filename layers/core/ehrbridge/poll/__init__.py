"""FHIR polling: the dispatcher's poll plan, the incremental poller, rate limits, bulk backfill.

Nothing here knows about Lambda: the handlers in functions/poll_dispatcher and functions/fhir_poller
wire these to SQS and the state table; the CLI (`ehrbridge poll`) wires them to files.
"""
