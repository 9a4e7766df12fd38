"""Builds the CDK app: one stage per environment, one stack per stage, cdk-nag on everything."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import Validations
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

from ehrbridge_infra.config import StageConfig, load_stage
from ehrbridge_infra.constants import STACK_NAME
from ehrbridge_infra.stack import EhrbridgeStack

# Env-agnostic by default so synth needs no AWS account; deployers set CDK_DEFAULT_ACCOUNT/REGION
# (or account/region in infra/stages/<stage>.yaml). Synth never looks anything up in the account.


def add_compliance_checks(app: cdk.App) -> None:
    """cdk-nag AwsSolutions + HIPAA Security: any unacknowledged finding fails synth."""
    Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app))


class EhrbridgeStage(cdk.Stage):
    def __init__(self, scope: cdk.App, construct_id: str, *, config: StageConfig | None = None,
                 **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.stack = EhrbridgeStack(self, STACK_NAME, config=config or StageConfig(name=construct_id))


def build_app(outdir: str | Path | None = None, *, skip_bundling: bool = False, stage_name: str | None = None,
              account: str | None = None, region: str | None = None,
              config: StageConfig | None = None) -> cdk.App:
    config = config or load_stage(stage_name or os.environ.get("EHRBRIDGE_STAGE", "dev"))
    context: dict[str, Any] = dict(config.context())
    if skip_bundling:
        # Tests synthesize without building the layer (no registry access, fast).
        context["aws:cdk:bundling-stacks"] = []
    app = cdk.App(outdir=str(outdir or os.environ.get("CDK_OUTDIR", "cdk.out")), context=context)
    add_compliance_checks(app)
    EhrbridgeStage(app, config.name, config=config,
                   env=cdk.Environment(account=account or config.account or os.environ.get("CDK_DEFAULT_ACCOUNT"),
                                       region=region or config.region or os.environ.get("CDK_DEFAULT_REGION")))
    return app
