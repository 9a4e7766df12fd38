"""FHIR polling on the local twin: the sandbox EHR as the tenant's server, the real dispatcher and
poller handlers run the way Lambda runs them (`make demo` and the integration tests use this).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ehrbridge import resources
from ehrbridge.contracts.envelope import stable_id
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.local.runner import EventSourceMapping, LocalLambdaContext, load_handler
from ehrbridge.local.twin import TwinResources, local_client
from ehrbridge.sandbox.server import SandboxEHR

FUNCTIONS_DIR = Path(__file__).resolve().parents[4] / "functions"


def onboard_sandbox_tenant(sandbox: SandboxEHR, base: TenantConfig, *, workflows: Iterable[str] = ("labs",),
                           deny_types: Iterable[str] = ("DiagnosticReport",), algorithm: str = "ES384") -> TenantConfig:
    """Register a fresh key with the sandbox and onboard the tenant into the twin (config in the
    state table, credentials in Secrets Manager), pointed at the sandbox's FHIR base."""
    from ehrbridge.auth.credentials import SecretsManagerCredentialStore
    from ehrbridge.auth.keys import generate_private_key, jwks, load_private_key, public_jwk_from_pem, thumbprint_kid
    from ehrbridge.auth.scopes import resource_types_for
    from ehrbridge.aws.settings import table_name
    from ehrbridge.contracts.tenant_store import DynamoTenantStore
    from ehrbridge.tenants.onboarding import onboard

    # Epic takes EC keys only from a JWKS URL: a statically registered key must be RSA (RS384) there.
    pem = generate_private_key(algorithm, 2048)  # type: ignore[arg-type]
    kid = thumbprint_kid(load_private_key(pem, algorithm))  # type: ignore[arg-type]
    client_id = base.client_id or f"{base.tenant_id}-backend"
    workflows = tuple(base.workflows or workflows)
    sandbox.register_client(client_id, jwks=jwks([public_jwk_from_pem(pem, algorithm, kid)]),  # type: ignore[arg-type]
                            grant_types=set(resource_types_for(workflows)) - set(deny_types))
    tenant = TenantConfig.model_validate({
        **base.model_dump(), "fhir_base_url": sandbox.fhir_base_url, "token_url": None, "client_id": client_id,
        "key_id": kid, "algorithm": algorithm, "workflows": workflows, "private_key_file": None})
    onboard(tenant, tenants=DynamoTenantStore(table_name("state")), credentials=SecretsManagerCredentialStore(),
            private_key_pem=pem)
    return tenant


def dispatch_once() -> dict[str, int]:
    handler = load_handler(FUNCTIONS_DIR / "poll_dispatcher" / "handler.py")
    spec = resources.function("poll_dispatcher")
    return handler({}, LocalLambdaContext(function_name=spec.name, timeout_s=spec.timeout_s))  # type: ignore[no-any-return]


def poller_mapping(twin: TwinResources, *, timeout_s: int | None = None) -> EventSourceMapping:
    spec = resources.function("fhir_poller")
    return EventSourceMapping(
        local_client("sqs", twin.endpoint), queue_url=twin.queues["poll-jobs"], queue_arn=twin.queue_arns["poll-jobs"],
        handler=load_handler(FUNCTIONS_DIR / "fhir_poller" / "handler.py"), function_name=spec.name,
        batch_size=resources.queue("poll-jobs").batch_size, timeout_s=timeout_s or spec.timeout_s)


def expected_correlation_ids(tenant_id: str, versions: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """correlation id -> resource type, for every (type, id, version) the poller must deliver.

    The same stable id the poller's envelopes carry (ehrbridge.poll.sink.resource_envelope).
    """
    return {stable_id(tenant_id, "fhir", "resource", rt, rid, version): rt for rt, rid, version in versions}


def poll_state(twin: TwinResources, tenant_id: str) -> dict[str, Any]:
    """Watermarks per type, read back from the state table."""
    from ehrbridge.poll.cursor import DynamoCursorStore
    from ehrbridge.poll.jobs import poll_plan

    del twin
    from ehrbridge.aws.settings import table_name
    from ehrbridge.contracts.tenant_store import DynamoTenantStore

    cursors = DynamoCursorStore(table_name("state"))
    tenant = DynamoTenantStore(table_name("state")).get(tenant_id)
    return {e.resource_type: cursors.get(tenant_id, e.resource_type).watermark for e in poll_plan(tenant)}
