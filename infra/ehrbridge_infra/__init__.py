"""The ehrbridge CDK app: one construct per capability; the stack only composes."""
