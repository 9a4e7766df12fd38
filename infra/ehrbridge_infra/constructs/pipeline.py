"""The queue-driven pipeline functions (hl7_ingest, normalizer, identity_matcher), one PipelineFunction each."""

from __future__ import annotations

from constructs import Construct

from ehrbridge import resources as spec
from ehrbridge_infra.constructs.core import CoreResources
from ehrbridge_infra.constructs.function import PipelineFunction


class PipelineFunctions(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, core: CoreResources) -> None:
        super().__init__(scope, construct_id)
        self.functions: dict[str, PipelineFunction] = {
            fn.name: PipelineFunction(self, fn.name, core=core, function=fn)
            for fn in spec.FUNCTIONS if fn.consumes is not None
        }
