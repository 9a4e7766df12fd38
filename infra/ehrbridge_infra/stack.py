"""The ehrbridge stack: composes one construct per capability, nothing else."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import Acknowledgment, Validations
from constructs import Construct

from ehrbridge_infra.config import StageConfig
from ehrbridge_infra.constructs.core import CoreResources
from ehrbridge_infra.constructs.identity import IdentityExtras
from ehrbridge_infra.constructs.mllp_bridge import MllpBridgeService
from ehrbridge_infra.constructs.monitoring import PipelineMonitoring
from ehrbridge_infra.constructs.pipeline import PipelineFunctions
from ehrbridge_infra.constructs.polling import FhirPolling
from ehrbridge_infra.constructs.token_refresh import TokenRefresh


class EhrbridgeStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self.core = CoreResources(self, "Core", alarm_emails=config.alarm_emails)
        self.pipeline = PipelineFunctions(self, "Pipeline", core=self.core,
                                          roster_expiry_days=config.roster_expiry_days)
        self.identity = IdentityExtras(self, "Identity", core=self.core,
                                       function=self.pipeline.functions["identity_matcher"])
        self.monitoring = PipelineMonitoring(self, "Monitoring", core=self.core, tenants=config.tenant_ids())
        self.token_refresh = TokenRefresh(self, "TokenRefresh", core=self.core)
        self.mllp_bridge = MllpBridgeService(self, "MllpBridge", core=self.core,
                                            desired_count=config.bridge_desired_count)
        self.polling = FhirPolling(self, "Polling", core=self.core, monitoring=self.monitoring,
                                   roster_expiry_days=config.roster_expiry_days,
                                   reprobe_denied_s=config.poll_reprobe_denied_s)
        cdk.Tags.of(self).add("app", "ehrbridge")
        cdk.Tags.of(self).add("data-classification", "phi")
        if not cdk.Token.is_unresolved(self.region):
            Validations.of(self).acknowledge(Acknowledgment(
                id="CloudFormation-Validate::W3010",
                reason="The subnets' AZs are named on purpose (availability_zones below): a concrete-environment "
                       "synth must not depend on an account lookup that `cdk deploy --app cdk.out` cannot do."))

    @property
    def availability_zones(self) -> list[str]:
        """With a concrete region CDK would look the AZs up in the account at synth; without credentials it
        writes placeholders ("dummy1a") that `cdk deploy --app cdk.out` cannot resolve. Name them instead:
        the stage's, or "<region>a", "<region>b" (present in every region)."""
        if cdk.Token.is_unresolved(self.region):
            return super().availability_zones  # environment-agnostic: Fn::GetAZs at deploy
        return list(self.config.availability_zones) or [f"{self.region}a", f"{self.region}b"]
