"""The ehrbridge stack: composes one construct per capability, nothing else."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from ehrbridge_infra.config import StageConfig
from ehrbridge_infra.constructs.core import CoreResources
from ehrbridge_infra.constructs.identity import IdentityExtras
from ehrbridge_infra.constructs.mllp_bridge import MllpBridgeService
from ehrbridge_infra.constructs.monitoring import PipelineMonitoring
from ehrbridge_infra.constructs.pipeline import PipelineFunctions
from ehrbridge_infra.constructs.token_refresh import TokenRefresh


class EhrbridgeStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self.core = CoreResources(self, "Core", alarm_emails=config.alarm_emails)
        self.pipeline = PipelineFunctions(self, "Pipeline", core=self.core)
        self.identity = IdentityExtras(self, "Identity", core=self.core,
                                       function=self.pipeline.functions["identity_matcher"])
        self.monitoring = PipelineMonitoring(self, "Monitoring", core=self.core, tenants=config.tenant_ids())
        self.token_refresh = TokenRefresh(self, "TokenRefresh", core=self.core)
        self.mllp_bridge = MllpBridgeService(self, "MllpBridge", core=self.core,
                                            desired_count=config.bridge_desired_count)
        cdk.Tags.of(self).add("app", "ehrbridge")
        cdk.Tags.of(self).add("data-classification", "phi")
