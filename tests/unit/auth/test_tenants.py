from __future__ import annotations

from pathlib import Path

import pytest
from joserfc.jwk import KeySet

from ehrbridge.auth.credentials import CredentialsError, InMemoryCredentialStore, credentials_from_file
from ehrbridge.contracts.envelope import ContractError
from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.contracts.tenant_store import InMemoryTenantStore, TenantNotFound
from ehrbridge.tenants.keys import InMemoryJwksPublisher, RotationError, rotate
from ehrbridge.tenants.onboarding import onboard, remove, validate
from tests.conftest import REPO
from tests.unit.auth.helpers import pem, tenant


def test_sample_tenant_yamls_load_and_validate() -> None:
    files = sorted((REPO / "events" / "tenants").glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        config = TenantConfig.from_yaml(path)
        assert validate(config) == [], path.name


def test_plain_http_is_refused_except_on_loopback() -> None:
    problems = validate(tenant(fhir_base_url="http://ehr.example/fhir", token_url="http://ehr.example/t"))
    assert problems == ["fhir_base_url: must be https (TLS 1.2+) except for a loopback sandbox",
                        "token_url: must be https (TLS 1.2+) except for a loopback sandbox"]
    assert validate(tenant(fhir_base_url="http://127.0.0.1:8790/fhir", token_url=None)) == []


def test_athena_needs_its_practice_context() -> None:
    assert validate(tenant(vendor="athena")) == [
        "vendor_context.practice_context: required by athena for ah-practice"]
    assert validate(tenant(vendor="athena", vendor_context={"practice_context": "Organization/a-1.Practice-1"})) == []


def test_onboarding_puts_the_key_in_credentials_and_never_the_path_in_config(tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(pem("ES384"))
    tenants, creds = InMemoryTenantStore(), InMemoryCredentialStore()
    result = onboard(tenant(algorithm="ES384", private_key_file=key_file, key_id=None), tenants=tenants,
                     credentials=creds)
    stored = tenants.get("acme-health")
    assert stored.private_key_file is None and stored.key_id == result.kid and result.kid
    assert result.scopes == ["system/DiagnosticReport.rs", "system/Observation.rs", "system/Patient.rs"]
    key = creds.get("acme-health").active_key()
    assert key is not None and key.kid == result.kid and key.algorithm == "ES384"
    assert "PRIVATE" not in repr(creds.get("acme-health"))  # SecretStr hides key material


def test_onboarding_rejects_a_key_that_does_not_fit_the_algorithm() -> None:
    from ehrbridge.auth.keys import KeyMaterialError

    with pytest.raises(KeyMaterialError):
        onboard(tenant(algorithm="ES384"), tenants=InMemoryTenantStore(), credentials=InMemoryCredentialStore(),
                private_key_pem=pem("RS384"))


def test_onboarding_rejects_invalid_config_before_storing_anything() -> None:
    tenants, creds = InMemoryTenantStore(), InMemoryCredentialStore()
    with pytest.raises(ContractError):
        onboard(tenant(vendor="athena"), tenants=tenants, credentials=creds, private_key_pem=pem("RS384"))
    assert tenants.list() == []
    with pytest.raises(CredentialsError):
        creds.get("acme-health")


def test_remove_deletes_config_and_credentials() -> None:
    tenants, creds = InMemoryTenantStore(), InMemoryCredentialStore()
    onboard(tenant(), tenants=tenants, credentials=creds, private_key_pem=pem("RS384"))
    assert remove("acme-health", tenants=tenants, credentials=creds).found
    with pytest.raises(TenantNotFound):
        tenants.get("acme-health")
    with pytest.raises(CredentialsError):
        creds.get("acme-health")
    assert not remove("acme-health", tenants=tenants).found


def test_remove_revokes_and_deletes_a_live_token_and_add_again_needs_a_decision() -> None:
    import time

    from pydantic import SecretStr

    from ehrbridge.auth.credentials import SecretPendingDeletion
    from ehrbridge.auth.tokens import CachedToken, InMemoryTokenStore

    tenants, creds, tokens = InMemoryTenantStore(), InMemoryCredentialStore(), InMemoryTokenStore()
    onboard(tenant(), tenants=tenants, credentials=creds, private_key_pem=pem("RS384"), tokens=tokens)
    now = time.time()
    tokens.put("acme-health", CachedToken(access_token=SecretStr("live-1"), issued_at=now, expires_at=now + 300,
                                          expires_in=300))
    revoked: list[str] = []
    result = remove("acme-health", tenants=tenants, credentials=creds, tokens=tokens,
                    revoke=lambda cfg, cred, token: revoked.append(token) or "revoked")
    assert revoked == ["live-1"] and result.revocation == "revoked" and result.token_deleted
    assert tokens.get("acme-health") is None
    with pytest.raises(SecretPendingDeletion):
        onboard(tenant(), tenants=tenants, credentials=creds, private_key_pem=pem("RS384"))
    with pytest.raises(CredentialsError, match="needs new ones"):
        onboard(tenant(), tenants=tenants, credentials=creds, pending="replace")
    with pytest.raises(SecretPendingDeletion):  # the refused replace deleted nothing
        creds.get("acme-health")
    assert onboard(tenant(), tenants=tenants, credentials=creds, private_key_pem=pem("RS384"),
                   pending="restore").credentials_action == "restored"
    assert creds.get("acme-health").active_key() is not None


def test_rotation_publishes_old_and_new_until_retired() -> None:
    tenants, creds, published = InMemoryTenantStore(), InMemoryCredentialStore(), InMemoryJwksPublisher()
    onboard(tenant(key_id="old"), tenants=tenants, credentials=creds, private_key_pem=pem("RS384"))
    with pytest.raises(RotationError, match="no next key"):
        rotate("acme-health", "cutover", credentials=creds, publisher=published)

    added = rotate("acme-health", "add", credentials=creds, publisher=published, tenants=tenants, rsa_bits=2048)
    assert added.active_kid == "old" and len(added.published_kids) == 2
    new_kid = added.published_kids[1]
    jwks = published.documents["acme-health"]
    assert {k["kid"] for k in jwks["keys"]} == {"old", new_kid}
    KeySet.import_key_set(jwks)  # a valid JWKS
    assert all("d" not in k for k in jwks["keys"])
    with pytest.raises(RotationError, match="already published"):
        rotate("acme-health", "add", credentials=creds, publisher=published)

    cut = rotate("acme-health", "cutover", credentials=creds, publisher=published, tenants=tenants)
    assert cut.active_kid == new_kid and set(cut.published_kids) == {"old", new_kid}
    assert tenants.get("acme-health").key_id == new_kid
    statuses = {k.kid: k.status for k in creds.get("acme-health").keys}
    assert statuses == {"old": "retiring", new_kid: "active"}

    retired = rotate("acme-health", "retire", credentials=creds, publisher=published)
    assert retired.published_kids == [new_kid]
    assert [k["kid"] for k in published.documents["acme-health"]["keys"]] == [new_kid]


def test_credentials_from_file_needs_a_key_id(tmp_path: Path) -> None:
    key_file = tmp_path / "k.pem"
    key_file.write_text(pem("RS384"))
    with pytest.raises(CredentialsError, match="key_id is required"):
        credentials_from_file(tenant(private_key_file=key_file, key_id=None))
    assert credentials_from_file(tenant(private_key_file=key_file)).active_key().kid == "k1"  # type: ignore[union-attr]
