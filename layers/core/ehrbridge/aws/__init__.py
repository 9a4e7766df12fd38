"""Small adapters between domain code and AWS. Domain code depends on the protocols, not boto3."""
