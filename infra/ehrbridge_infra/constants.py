"""Names, sizes and defaults shared by the constructs."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYER_SOURCE = REPO_ROOT / "layers" / "core"
FUNCTIONS_DIR = REPO_ROOT / "functions"
BRIDGE_DIR = REPO_ROOT / "bridge"

LAMBDA_PYTHON_VERSION = "3.14"
LOG_RETENTION_DAYS = 365  # HIPAA: audit trail kept at least a year
STACK_NAME = "ehrbridge"
