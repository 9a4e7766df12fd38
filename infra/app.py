#!/usr/bin/env python3
"""CDK entry point: `python app.py` synthesizes offline into cdk.out (no Docker, no CLI needed)."""

from ehrbridge_infra.app import build_app

if __name__ == "__main__":
    build_app().synth()
