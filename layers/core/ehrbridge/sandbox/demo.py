"""The token part of `make demo`: sandbox EHR + real onboarding + one scheduled refresh + probes.

Returns PHI-free figures only (counts, scopes, resource types, seconds). Never a token or a key.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ehrbridge.contracts.tenant import Algorithm, TenantConfig
from ehrbridge.contracts.vendors import Vendor

REPO_ROOT = Path(__file__).resolve().parents[4]
DEMO_TENANT = REPO_ROOT / "events" / "tenants" / "demo-health.yaml"
DEFAULT_WORKFLOWS = ("labs", "demographics")


@contextlib.contextmanager
def _environment(env: Mapping[str, str] | None) -> Iterator[None]:
    """Point this process at the twin for the duration of the call, then put things back."""
    from ehrbridge.aws.clients import reset_clients

    if not env:
        yield
        return
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_clients()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_clients()


def run_token_flow(twin_env: Mapping[str, str] | None = None, *, tenant_yaml: str | Path = DEMO_TENANT,
                   vendor: Vendor | None = None, algorithm: Algorithm = "ES384",
                   deny_types: Iterable[str] = ("DiagnosticReport",), keep_onboarded: bool = False) -> dict[str, Any]:
    """Sandbox on 127.0.0.1 -> register the tenant's key -> onboard (credentials into Secrets
    Manager, config into the state table) -> one scheduled refresh through the real refresher ->
    probe the workflows' resource types -> stop the sandbox. ``twin_env`` is the local twin's
    environment (``TwinResources.env``); without it the current environment must point at one.
    Unless ``keep_onboarded``, the tenant store gets its previous config for the tenant back (or
    none), so later demo stages never see a base URL of the stopped sandbox.
    """
    from ehrbridge.auth.credentials import SecretsManagerCredentialStore
    from ehrbridge.auth.keys import generate_private_key, jwks, public_jwk_from_pem, thumbprint_kid
    from ehrbridge.auth.keys import load_private_key as _load
    from ehrbridge.auth.refresher import TokenRefresher
    from ehrbridge.auth.scopes import resource_types_for
    from ehrbridge.auth.state import DynamoRefreshState
    from ehrbridge.auth.tokens import SecretsManagerTokenStore
    from ehrbridge.aws.settings import table_name
    from ehrbridge.contracts.tenant_store import DynamoTenantStore, TenantNotFound
    from ehrbridge.sandbox.server import SandboxEHR
    from ehrbridge.tenants.check import check_tenant
    from ehrbridge.tenants.onboarding import onboard

    base = TenantConfig.from_yaml(tenant_yaml)
    vendor = vendor or base.vendor
    workflows = base.workflows or DEFAULT_WORKFLOWS
    denied = set(deny_types)
    with _environment(twin_env), SandboxEHR(vendor) as sandbox:
        pem = generate_private_key(algorithm, rsa_bits=2048)
        kid = thumbprint_kid(_load(pem, algorithm))
        client_id = base.client_id or f"{base.tenant_id}-backend"
        # Epic takes EC keys only from a JWKS URL; the demo registers statically, so use RSA there.
        if algorithm == "ES384" and sandbox.profile.ec_keys_require_jwks_url:
            algorithm, pem = "RS384", generate_private_key("RS384", rsa_bits=2048)
            kid = thumbprint_kid(_load(pem, algorithm))
        sandbox.register_client(client_id, jwks=jwks([public_jwk_from_pem(pem, algorithm, kid)]),
                                grant_types=set(resource_types_for(workflows)) - denied)
        tenant = TenantConfig.model_validate({
            **base.model_dump(), "vendor": vendor, "fhir_base_url": sandbox.fhir_base_url, "token_url": None,
            "client_id": client_id,
            "key_id": kid, "algorithm": algorithm, "workflows": workflows, "private_key_file": None,
            "vendor_context": {"practice_context": "Organization/a-1.Practice-195900", **base.vendor_context}})
        state_table = table_name("state")
        tenants = DynamoTenantStore(state_table)
        try:
            previous: TenantConfig | None = tenants.get(tenant.tenant_id)
        except TenantNotFound:
            previous = None
        credentials = SecretsManagerCredentialStore()
        onboard(tenant, tenants=tenants, credentials=credentials, private_key_pem=pem)
        refresher = TokenRefresher(credentials=credentials, tokens=SecretsManagerTokenStore(),
                                   state=DynamoRefreshState(state_table))
        summary = refresher.refresh_due([tenants.get(tenant.tenant_id)], spread_s=0)
        report = check_tenant(tenants.get(tenant.tenant_id), refresher)
        status = refresher.state.status(tenant.tenant_id)
        if not keep_onboarded:
            if previous is not None:
                tenants.put(previous)
            else:
                tenants.delete(tenant.tenant_id)
        return {
            "tenant_id": tenant.tenant_id, "vendor": vendor, "algorithm": algorithm,
            "token_obtained": report.token_obtained, "token_lifetime_s": report.expires_in,
            "refresh": summary.counts(),
            "requested_scopes": report.requested_scopes, "granted_scopes": report.granted_scopes,
            "denied_types": status.denied_types,
            "probes": {p.resource_type: p.status for p in report.probes},
            "token_requests": sandbox.token_requests(),
            "fhir_requests": len(sandbox.fhir_requests()),
        }
