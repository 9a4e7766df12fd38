"""HL7 v2 over MLLP/TLS: framing, the asyncio bridge (commit-then-ACK), ACKs, the client.

Entry points: ``ehrbridge.mllp.app.build_bridge`` (the container), ``ehrbridge.mllp.local.feed_files``
(the local demo), ``ehrbridge.mllp.client.MllpClient`` (``ehrbridge send``).
"""
