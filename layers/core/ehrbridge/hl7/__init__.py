"""HL7 v2: wire-level reading (wire.py) and parsing/cleaning for normalization."""
