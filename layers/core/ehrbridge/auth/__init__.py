"""SMART Backend Services auth: assertions, token endpoint, token cache, refresh, FHIR-call client.

Import submodules directly (``ehrbridge.auth.refresher`` ...); this package imports nothing heavy.
"""
