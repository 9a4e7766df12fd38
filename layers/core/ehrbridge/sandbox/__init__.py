"""The sandbox EHR (FHIR R4 + SMART Backend Services on 127.0.0.1) used by `make demo` and the tests."""
