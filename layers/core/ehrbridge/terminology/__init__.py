"""Offline terminology: code-system URIs, code checks and repairs, UCUM, tenant ConceptMaps."""

from ehrbridge.terminology.checks import CVX, LOINC, RXNORM, SNOMED, UCUM, CodeCheck, check_code

__all__ = ["CVX", "LOINC", "RXNORM", "SNOMED", "UCUM", "CodeCheck", "check_code"]
