"""Normalization: HL7 v2 and vendor FHIR -> canonical, validated FHIR R4 transaction Bundles."""
