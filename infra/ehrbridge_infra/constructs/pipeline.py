"""The queue-driven pipeline functions (hl7_ingest, normalizer, identity_matcher), one PipelineFunction each."""

from __future__ import annotations

from constructs import Construct

from ehrbridge import resources as spec
from ehrbridge.poll.cursor import DEFAULT_ROSTER_EXPIRY_DAYS, ROSTER_EXPIRY_ENV
from ehrbridge_infra.constructs.core import CoreResources
from ehrbridge_infra.constructs.function import PipelineFunction


class PipelineFunctions(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, core: CoreResources,
                 roster_expiry_days: int = int(DEFAULT_ROSTER_EXPIRY_DAYS)) -> None:
        super().__init__(scope, construct_id)
        self.functions: dict[str, PipelineFunction] = {
            fn.name: PipelineFunction(self, fn.name, core=core, function=fn)
            for fn in spec.FUNCTIONS if fn.consumes is not None
        }
        # The normalizer adds ADT patients to per-patient crawl rosters with this expiry; the poller must
        # use the same value (FhirPolling's roster_expiry_days), or one side would cut entries short.
        self.functions["normalizer"].function.add_environment(ROSTER_EXPIRY_ENV, str(roster_expiry_days))
