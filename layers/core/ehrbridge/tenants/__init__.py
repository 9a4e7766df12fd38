"""Tenant onboarding, credentials, key rotation and pre-go-live checks."""
