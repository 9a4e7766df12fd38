"""The sandbox EHR: a FHIR R4 server with a SMART Backend Services token endpoint, on 127.0.0.1.

Built on the stdlib ``ThreadingHTTPServer`` (no new dependency). It behaves like the vendors
document (contracts/vendors.py, the one vendor table), strictly enough to catch client bugs:

- token endpoint: verifies client assertions against the client's registered JWKS (static or a
  JWKS URL it fetches) and rejects bad ``alg``/``typ``/``kid``, wrong ``iss``/``sub``/``aud``,
  expired or over-long (> 300 s) assertions, ``iat`` in the future and replayed ``jti``; also
  client_secret_basic and rotating refresh tokens where the vendor profile allows them;
  grants a configurable subset of the requested scopes, written in the vendor's style
  (SMART v2, v1 or Epic's ``X.read X.search``); token-endpoint rate limit -> 429 + Retry-After
  for the rest of the window (athena: 50/min).
- FHIR API: 401 for missing/expired tokens, 403 for types the token does not cover (or a
  policy denies), 404 for unsupported types, 400 for missing vendor-required search params,
  paging per vendor style (server-side sessions, offsets or keyset tokens).

Every request is recorded (kind, path, status; never bodies or tokens) so tests can count them.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import extract_compact

from ehrbridge.auth.scopes import WORKFLOW_RESOURCES, parse_scope
from ehrbridge.contracts.vendors import PagingStyle, Vendor, VendorProfile, profile_for
from ehrbridge.sandbox.bulk import BulkExports
from ehrbridge.sandbox.data import generate
from ehrbridge.sandbox.faults import FaultInjector, Faults, Injected

MAX_ASSERTION_LIFETIME_S = 300
CLOCK_SKEW_S = 5
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_PATH = "/auth/token"  # noqa: S105 - a URL path
FHIR_PATH = "/fhir"
ALL_TYPES = sorted({rt for entries in WORKFLOW_RESOURCES.values() for rt, _ in entries} | {"Encounter"})


@dataclass
class SandboxClient:
    client_id: str
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    client_secret: str | None = None
    # Resource types this client may be granted (None: whatever it asks for).
    grant_types: set[str] | None = None
    # Granted in the token, but a site policy answers 403 anyway.
    policy_denied_types: set[str] = field(default_factory=set)
    # A user-facing app the vendor issues (rotating) refresh tokens to.
    refresh_token: str | None = None
    token_lifetime_s: int | None = None
    # Simulates a revoked app: every token of this client answers 401.
    tokens_rejected: bool = False


@dataclass
class IssuedToken:
    client_id: str
    perms: dict[str, str]
    expires_at: float


@dataclass(frozen=True)
class AssertionRecord:
    """Facts about an accepted assertion (no signature, so it cannot be replayed from here)."""

    client_id: str
    kid: str
    alg: str
    jti: str
    lifetime_s: float  # exp - iat
    expires_in_s: float  # exp - now at verification


@dataclass(frozen=True)
class RequestRecord:
    kind: str  # token | fhir | discovery
    method: str
    path: str
    status: int
    client_id: str | None = None
    resource_type: str | None = None
    error: str | None = None
    # Query parameters of an answered FHIR request (last value of each), for tests asking "who was searched".
    params: dict[str, str] = field(default_factory=dict)


class SandboxEHR:
    def __init__(self, vendor: Vendor = "generic", *, token_lifetime_s: int | None = None,
                 token_limit_per_min: int | None = None, rate_window_s: float = 60.0, patients: int = 20,
                 seed: int = 7, unsupported_types: Iterable[str] = (), clock: Callable[[], float] = time.time,
                 host: str = "127.0.0.1", port: int = 0, paging_session_ttl_s: float = 600.0,
                 jwks_cache_s: float = 0.0, token_delay_s: float = 0.0, paging_style: PagingStyle | None = None,
                 faults: Faults | None = None, observations_per_patient: tuple[int, int] = (3, 8),
                 bulk_redirect_files: bool | None = None, bulk_status_polls: int = 2,
                 max_page_size: int | None = None) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the sandbox binds to loopback only")
        self.profile: VendorProfile = profile_for(vendor)
        self.token_lifetime_s = token_lifetime_s or self.profile.token_lifetime_s
        self.token_limit_per_min = (token_limit_per_min if token_limit_per_min is not None
                                    else self.profile.token_endpoint_limit_per_min)
        self.rate_window_s = rate_window_s
        self.clock = clock
        self.unsupported_types = set(unsupported_types)
        self.paging_session_ttl_s = paging_session_ttl_s
        self.jwks_cache_s = jwks_cache_s
        self.token_delay_s = token_delay_s  # widens race windows in concurrency tests
        self.assertions: list[AssertionRecord] = []
        self.resources = generate(patients, seed=seed, observations_per_patient=observations_per_patient)
        self.paging_style: PagingStyle = paging_style or self.profile.paging_style
        # Servers may page smaller than `_count` asks (the spec makes it a hint): small pages, many of them.
        self.max_page_size = min(max_page_size or self.profile.max_page_size, self.profile.max_page_size)
        self.faults = faults or Faults()
        self.injector = FaultInjector(self)
        # Many servers leave the common parameters out of each type's searchParam list: switch off to be one.
        self.declares_last_updated = True
        # A strict server that does not implement _sort answers 400 to it (switch on to be one).
        self.refuses_sort = False
        # Every (type, id, versionId) that ever existed: what a poller may legitimately deliver.
        self.history: set[tuple[str, str, str]] = {(r["resourceType"], r["id"], r["meta"]["versionId"])
                                                   for items in self.resources.values() for r in items}
        self._last_stamp = ""
        # Hard deletions (type, id, when): searches no longer find them; type history lists them as DELETE.
        self.deleted: list[tuple[str, str, str]] = []
        # Oracle Health answers a bulk-file GET with a 307 to storage that must not see our token.
        redirect = self.profile.vendor == "oracle_health" if bulk_redirect_files is None else bulk_redirect_files
        self.bulk = BulkExports(self, status_polls=bulk_status_polls, redirect_files=redirect)
        self.clients: dict[str, SandboxClient] = {}
        self.tokens: dict[str, IssuedToken] = {}
        self.requests: list[RequestRecord] = []
        self._seen_jti: dict[tuple[str, str], float] = {}
        self._rate: dict[tuple[str, int], int] = {}
        self._sessions: dict[str, tuple[float, list[dict[str, Any]], int, str]] = {}
        self._jwks_cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.sandbox = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None
        host_, port_ = self._server.server_address[:2]
        self.base_url = f"http://{host_}:{port_}"
        # The token endpoint's public URLs when the sandbox sits behind a proxy: a client's assertion names
        # the URL it was sent to (``aud``), as a server behind a reverse proxy must accept.
        self.public_token_urls: set[str] = set()

    # ---- lifecycle ----------------------------------------------------------------
    @property
    def fhir_base_url(self) -> str:
        return self.base_url + FHIR_PATH

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    def start(self) -> SandboxEHR:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="sandbox-ehr", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SandboxEHR:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- administration (Python API, not HTTP) ---------------------------------------
    def register_client(self, client_id: str, *, jwks: dict[str, Any] | None = None, jwks_url: str | None = None,
                        client_secret: str | None = None, grant_types: Iterable[str] | None = None,
                        policy_denied_types: Iterable[str] = (), refresh_token: str | None = None,
                        token_lifetime_s: int | None = None, tokens_rejected: bool = False) -> SandboxClient:
        if jwks is None and jwks_url is None and client_secret is None:
            raise ValueError("register a JWKS, a JWKS URL or a client secret")
        client = SandboxClient(client_id, jwks=jwks, jwks_url=jwks_url, client_secret=client_secret,
                               grant_types=set(grant_types) if grant_types is not None else None,
                               policy_denied_types=set(policy_denied_types), refresh_token=refresh_token,
                               token_lifetime_s=token_lifetime_s, tokens_rejected=tokens_rejected)
        with self._lock:
            self.clients[client_id] = client
        return client

    def expire_tokens(self, client_id: str | None = None) -> int:
        """Make issued access tokens expire now (the next FHIR call gets 401)."""
        with self._lock:
            hit = [t for t in self.tokens.values() if client_id is None or t.client_id == client_id]
            for token in hit:
                token.expires_at = self.clock() - 1
            return len(hit)

    def add_resource(self, resource: dict[str, Any]) -> None:
        with self._lock:
            items = self.resources.setdefault(resource["resourceType"], [])
            items[:] = [r for r in items if r["id"] != resource["id"]]
            items.append(resource)
            self.history.add((resource["resourceType"], resource["id"], str(resource.get("meta", {}).get(
                "versionId", ""))))

    def mutate(self, resource_type: str, count: int, rng: Any) -> list[str]:
        """Update ``count`` resources of the type now: new versionId, lastUpdated = server time."""
        with self._lock:
            items = self.resources.get(resource_type, [])
            chosen = rng.sample(items, min(count, len(items))) if items else []
            ids = []
            for old in chosen:
                new = json.loads(json.dumps(old))
                new["meta"]["versionId"] = str(int(old["meta"].get("versionId", "1")) + 1)
                new["meta"]["lastUpdated"] = self.next_stamp()
                items[items.index(old)] = new
                self.history.add((resource_type, new["id"], new["meta"]["versionId"]))
                ids.append(new["id"])
            return ids

    def delete(self, resource_type: str, resource_id: str) -> bool:
        """Hard-delete a resource now (gone from searches; a DELETE entry in the type's ``_history``)."""
        stamp = self.next_stamp()
        with self._lock:
            items = self.resources.get(resource_type, [])
            kept = [r for r in items if r["id"] != resource_id]
            if len(kept) == len(items):
                return False
            items[:] = kept
            self.deleted.append((resource_type, resource_id, stamp))
            return True

    def type_history(self, token: IssuedToken, resource_type: str,
                     query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """``GET [type]/_history?_since=``: every current version and every deletion after ``_since``, oldest
        first, paged by offset (a history bundle: ``request.method`` PUT or DELETE)."""
        denied = self._access(token, resource_type, "s")
        if denied:
            return denied
        since = query.get("_since", [""])[0]
        with self._lock:
            versions = [(r["meta"]["lastUpdated"], "PUT", r) for r in self.resources.get(resource_type, [])
                        if r["meta"]["lastUpdated"] > since]
            deletions = [(stamp, "DELETE", {"resourceType": resource_type, "id": rid})
                         for rt, rid, stamp in self.deleted if rt == resource_type and stamp > since]
        rows = sorted(versions + deletions, key=lambda row: (row[0], row[2]["id"]))
        count = max(1, min(int(query.get("_count", [str(self.max_page_size)])[0] or 1), self.max_page_size))
        offset = int(query.get("_offset", ["0"])[0])
        base = f"{self.fhir_base_url}/{resource_type}/_history"
        links = [{"relation": "self", "url": base}]
        if offset + count < len(rows):
            params = {k: v[-1] for k, v in query.items() if k != "_offset"}
            links.append({"relation": "next", "url": f"{base}?" + urlencode({**params, "_offset": offset + count})})
        entries = []
        for stamp, method, resource in rows[offset:offset + count]:
            url = f"{resource_type}/{resource['id']}"
            entry: dict[str, Any] = {"fullUrl": f"{self.fhir_base_url}/{url}", "request": {"method": method,
                                                                                            "url": url}}
            if method == "DELETE":
                entry["response"] = {"status": "204", "lastModified": stamp}
            else:
                entry["resource"] = resource
                entry["response"] = {"status": "200", "lastModified": stamp}
            entries.append(entry)
        return 200, {"resourceType": "Bundle", "type": "history", "meta": {"lastUpdated": _now_iso(self.clock())},
                     "total": len(rows), "link": links, "entry": entries}

    def next_stamp(self) -> str:
        """A lastUpdated for a write now, strictly after the previous one (like a database sequence)."""
        with self._lock:
            stamp = _now_iso(self.clock())
            if stamp <= self._last_stamp:
                stamp = _now_iso(_parse_instant(self._last_stamp).timestamp() + 0.001)
            self._last_stamp = stamp
            return stamp

    def current_versions(self, types: Iterable[str] | None = None) -> set[tuple[str, str, str]]:
        with self._lock:
            return {(rt, r["id"], r["meta"]["versionId"]) for rt, items in self.resources.items()
                    if types is None or rt in types for r in items}

    def token_requests(self, client_id: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.kind == "token"
                       and (client_id is None or r.client_id == client_id) and (status is None or r.status == status))

    def fhir_requests(self, resource_type: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.kind == "fhir"
                    and (resource_type is None or r.resource_type == resource_type)]

    def supported_types(self) -> list[str]:
        return [t for t in ALL_TYPES if t not in self.unsupported_types]

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    # ---- discovery ----------------------------------------------------------------
    def smart_configuration(self) -> dict[str, Any]:
        methods = ["private_key_jwt" if m == "private_key_jwt" else "client_secret_basic"
                   for m in self.profile.token_auth_methods]
        version = self.profile.default_scope_version
        return {"token_endpoint": self.token_url, "token_endpoint_auth_methods_supported": methods,
                "token_endpoint_auth_signing_alg_values_supported": sorted(self.profile.assertion_algorithms),
                "grant_types_supported": ["client_credentials", "refresh_token"],
                "scopes_supported": [f"system/{t}.{'rs' if version == 2 else 'read'}" for t in self.supported_types()],
                "capabilities": ["client-confidential-asymmetric", f"permission-v{version}"]}

    def capability_statement(self) -> dict[str, Any]:
        resources = []
        for resource_type in self.supported_types():
            params = [{"name": "_id", "type": "token"}, {"name": "_count", "type": "number"}]
            if resource_type not in self.profile.last_updated_unsupported and self.declares_last_updated:
                params.append({"name": "_lastUpdated", "type": "date"})
            if resource_type != "Patient":
                params.append({"name": "patient", "type": "reference"})
            else:
                params.append({"name": "identifier", "type": "token"})
            resources.append({"type": resource_type, "interaction": [{"code": "read"}, {"code": "search-type"},
                                                                     {"code": "history-type"}],
                              "searchParam": params})
        return {"resourceType": "CapabilityStatement", "status": "active", "date": _now_iso(self.clock()),
                "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"],
                "software": {"name": self.profile.software_name, "version": "sandbox"},
                "rest": [{"mode": "server", "resource": resources}]}

    # ---- token endpoint -----------------------------------------------------------
    def token(self, form: dict[str, str], basic: tuple[str, str] | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self.token_delay_s:
            time.sleep(self.token_delay_s)
        client, error = self._authenticate(form, basic)
        if client is None:
            return 400, {"error": "invalid_client", "error_description": error}, {}
        now = self.clock()
        with self._lock:
            window = int(now // self.rate_window_s)
            if self.token_limit_per_min is not None:
                used = self._rate.get((client.client_id, window), 0)
                if used >= self.token_limit_per_min:
                    wait = math.ceil((window + 1) * self.rate_window_s - now)
                    return 429, {"error": "rate_limited", "error_description": "token endpoint limit reached"}, \
                        {"Retry-After": str(max(1, wait))}
                self._rate[(client.client_id, window)] = used + 1
        grant_type = form.get("grant_type")
        new_refresh: str | None = None
        if grant_type == "refresh_token":
            with self._lock:
                if client.refresh_token is None or form.get("refresh_token") != client.refresh_token:
                    return 400, {"error": "invalid_grant", "error_description": "refresh token unknown or used"}, {}
                new_refresh = client.refresh_token = secrets.token_urlsafe(32)  # rotate: the old one is dead
        elif grant_type != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}, {}
        scope = form.get("scope")
        if not scope:
            return 400, {"error": "invalid_request", "error_description": "scope is required"}, {}
        perms = self._grant(client, scope)
        access_token = secrets.token_urlsafe(32)
        lifetime = client.token_lifetime_s or self.token_lifetime_s
        with self._lock:
            self.tokens[access_token] = IssuedToken(client.client_id, perms, now + lifetime)
        body: dict[str, Any] = {"access_token": access_token, "token_type": "bearer", "expires_in": lifetime,
                                "scope": self._format_scope(perms)}
        if new_refresh:
            body["refresh_token"] = new_refresh
        return 200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"}

    def _authenticate(self, form: dict[str, str], basic: tuple[str, str] | None) -> tuple[SandboxClient | None, str]:
        if basic is not None:
            if "client_secret_basic" not in self.profile.token_auth_methods:
                return None, "client_secret_basic not supported"
            client = self.clients.get(basic[0])
            if client is None or client.client_secret is None or \
                    not secrets.compare_digest(client.client_secret, basic[1]):
                return None, "unknown client or wrong secret"
            return client, ""
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            return None, "client_assertion missing"
        return self._verify_assertion(form["client_assertion"])

    def _verify_assertion(self, assertion: str) -> tuple[SandboxClient | None, str]:
        try:
            compact = extract_compact(assertion.encode("ascii"))
            header = compact.headers()
            claims = json.loads(compact.payload)
        except (JoseError, ValueError, UnicodeError):
            return None, "assertion is not a JWS"
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.profile.assertion_algorithms:
            return None, f"alg {alg} not accepted"
        if header.get("typ") != "JWT":
            return None, "typ must be JWT"
        if not kid:
            return None, "kid is required"
        iss = claims.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None or (client.jwks is None and client.jwks_url is None):
            return None, "unknown client"
        if "jku" in header and header["jku"] != client.jwks_url:
            return None, "jku does not match the registered JWKS URL"
        if alg.startswith("ES") and self.profile.ec_keys_require_jwks_url and client.jwks_url is None:
            return None, "EC keys need a registered JWKS URL"
        try:
            key_set = self._client_jwks(client)
        except OSError:
            return None, "JWKS URL unreachable"
        kty = "RSA" if alg.startswith("RS") else "EC"
        matches = [k for k in key_set.get("keys", []) if k.get("kid") == kid and k.get("kty") == kty]
        if len(matches) != 1:
            return None, f"{len(matches)} keys match kid"
        try:
            key = (RSAKey if kty == "RSA" else ECKey).import_key(matches[0])
            jwt.decode(assertion, key, algorithms=[alg])
        except (JoseError, ValueError):
            return None, "signature does not verify"
        now = self.clock()
        if claims.get("sub") != iss:
            return None, "sub must equal iss"
        aud = claims.get("aud")
        if not ({self.token_url} | self.public_token_urls) & set(aud if isinstance(aud, list) else [aud]):
            return None, "aud is not this token endpoint"
        exp, iat, jti = claims.get("exp"), claims.get("iat"), claims.get("jti")
        if not isinstance(exp, int | float):
            return None, "exp is required"
        if exp <= now - CLOCK_SKEW_S:
            return None, "assertion expired"
        if exp - now > MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S:
            return None, "exp more than five minutes ahead"
        if isinstance(iat, int | float):
            if iat > now + CLOCK_SKEW_S:
                return None, "iat in the future"
            if exp - iat > MAX_ASSERTION_LIFETIME_S:
                return None, "exp - iat over five minutes"
        if not isinstance(jti, str) or not jti:
            return None, "jti is required"
        if self.profile.max_jti_length is not None and len(jti) > self.profile.max_jti_length:
            return None, "jti too long"
        with self._lock:
            self._seen_jti = {k: v for k, v in self._seen_jti.items() if v > now}
            if (iss, jti) in self._seen_jti:
                return None, "jti already used"
            self._seen_jti[(iss, jti)] = float(exp) + CLOCK_SKEW_S
            self.assertions.append(AssertionRecord(iss, kid, alg, jti, exp - (iat if isinstance(iat, int | float)
                                                                                else now), exp - now))
        return client, ""

    def _client_jwks(self, client: SandboxClient) -> dict[str, Any]:
        if client.jwks_url is None:
            return client.jwks or {"keys": []}
        cached = self._jwks_cache.get(client.jwks_url)
        if cached and time.monotonic() - cached[0] < self.jwks_cache_s:
            return cached[1]
        if urlsplit(client.jwks_url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise OSError("the sandbox fetches JWKS from loopback only")
        with urllib.request.urlopen(client.jwks_url, timeout=5) as response:  # noqa: S310 - loopback only
            data = json.loads(response.read())
        self._jwks_cache[client.jwks_url] = (time.monotonic(), data)
        return data

    def _grant(self, client: SandboxClient, scope: str) -> dict[str, str]:
        perms: dict[str, str] = {}
        for text in scope.split():
            parsed = parse_scope(text)
            if parsed is None or parsed.context != "system":
                continue
            if client.grant_types is not None and parsed.resource_type not in client.grant_types:
                continue
            letters = "".join(c for c in parsed.perms if c in "rs")  # the sandbox is read-only
            if letters:
                merged = set(perms.get(parsed.resource_type, "")) | set(letters)
                perms[parsed.resource_type] = "".join(c for c in "rs" if c in merged)
        return perms

    def _format_scope(self, perms: dict[str, str]) -> str:
        style = self.profile.granted_scope_style
        out = []
        for resource_type, letters in sorted(perms.items()):
            if style == "smart_v2":
                out.append(f"system/{resource_type}.{letters}")
            elif style == "smart_v1":
                out.append(f"system/{resource_type}.read")
            else:
                out.extend(f"{resource_type}.{'read' if c == 'r' else 'search'}" for c in letters)
        return " ".join(out)

    # ---- FHIR API -----------------------------------------------------------------
    def authorize(self, authorization: str | None) -> tuple[IssuedToken | None, str]:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None, "missing bearer token"
        with self._lock:
            token = self.tokens.get(authorization[7:].strip())
        if token is None:
            return None, "unknown token"
        if token.expires_at <= self.clock():
            return None, "token expired"
        client = self.clients.get(token.client_id)
        if client is not None and client.tokens_rejected:
            return None, "token revoked"
        return token, ""

    def search(self, token: IssuedToken, resource_type: str,
               query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        denied = self._access(token, resource_type, "s")
        if denied:
            return denied
        if "_getpages" in query:
            return self._session_page(token, query)
        missing = [p for p in self.profile.required_search_params.get(resource_type, ())
                   if p not in query and not (p == "patient" and "subject" in query)]
        missing += [p for p in self.profile.extra_query_params if p not in query]
        if missing:
            return 400, _outcome("required", f"required search parameter missing: {', '.join(missing)}")
        if self.refuses_sort and "_sort" in query:
            return 400, _outcome("not-supported", "_sort is not supported")
        warnings: list[str] = []
        matches = self._filter(resource_type, query, warnings)
        count = min(int(query.get("_count", [str(self.max_page_size)])[0] or 1), self.max_page_size)
        count = max(count, 1)
        style = self.paging_style
        if style == "next_link":
            session = secrets.token_urlsafe(12)
            with self._lock:
                self._sessions[session] = (self.clock(), matches, count, resource_type)
            return 200, self._bundle(resource_type, matches, 0, count, warnings, session=session)
        if style == "offset":
            offset = int(query.get("_offset", ["0"])[0])
            return 200, self._bundle(resource_type, matches, offset, count, warnings, query=query)
        # page_token: keyset on (lastUpdated, id), stable under concurrent updates.
        if "_page_token" in query:
            after = base64.urlsafe_b64decode(query["_page_token"][0].encode()).decode().split("|", 1)
            matches = [r for r in matches if (r["meta"]["lastUpdated"], r["id"]) > (after[0], after[1])]
        return 200, self._bundle(resource_type, matches, 0, count, warnings, query=query, keyset=True)

    def read(self, token: IssuedToken, resource_type: str, resource_id: str) -> tuple[int, dict[str, Any]]:
        denied = self._access(token, resource_type, "r")
        if denied:
            return denied
        with self._lock:
            found = next((r for r in self.resources.get(resource_type, []) if r["id"] == resource_id), None)
        if found is None:
            return 404, _outcome("not-found", f"{resource_type}/{resource_id} not found")
        return 200, found

    def _access(self, token: IssuedToken, resource_type: str, letter: str) -> tuple[int, dict[str, Any]] | None:
        if resource_type in self.unsupported_types or resource_type not in ALL_TYPES:
            return 404, _outcome("not-supported", f"resource type {resource_type} is not supported")
        client = self.clients.get(token.client_id)
        allowed = letter in token.perms.get(resource_type, "") or letter in token.perms.get("*", "")
        if not allowed or (client is not None and resource_type in client.policy_denied_types):
            return 403, _outcome("forbidden", f"access to {resource_type} is not granted")
        return None

    def _filter(self, resource_type: str, query: dict[str, list[str]], warnings: list[str]) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self.resources.get(resource_type, []))
        if "_id" in query:
            ids = {i for v in query["_id"] for i in v.split(",")}
            items = [r for r in items if r["id"] in ids]
        for name in ("patient", "subject"):
            for value in query.get(name, []):
                ref = value if "/" in value else f"Patient/{value}"
                items = [r for r in items if r.get("subject", {}).get("reference") == ref
                         or (resource_type == "Patient" and f"Patient/{r['id']}" == ref)]
        for value in query.get("identifier", []):  # token search: system|value, |value or value
            system, _, wanted = value.rpartition("|") if "|" in value else (None, "", value)
            items = [r for r in items if any(i.get("value") == wanted and (system is None or (i.get("system") or "")
                                                                           == system) for i in r.get("identifier", []))]
        for value in query.get("code", []):
            code = value.split("|")[-1]
            items = [r for r in items if any(c.get("code") == code for c in r.get("code", {}).get("coding", []))]
        for value in query.get("category", []):
            items = [r for r in items if any(c.get("code") == value.split("|")[-1]
                                             for cat in r.get("category", []) for c in cat.get("coding", []))]
        if "_lastUpdated" in query:
            if resource_type in self.profile.last_updated_unsupported:
                warnings.append("_lastUpdated is not supported for this resource type and was ignored")
            else:
                for value in query["_lastUpdated"]:
                    items = [r for r in items if _date_matches(r["meta"]["lastUpdated"], value)]
        return sorted(items, key=lambda r: (r["meta"]["lastUpdated"], r["id"]))

    def session_page(self, token: IssuedToken, query: dict[str, list[str]]) -> tuple[int, dict[str, Any], str | None]:
        """A later page of a server-side paging session (the token must still cover the type)."""
        session = query["_getpages"][0]
        with self._lock:
            found = self._sessions.get(session)
        if found is None or self.clock() - found[0] > self.paging_session_ttl_s:
            return 410, _outcome("expired", "paging session expired; restart the search"), None
        _, matches, count, resource_type = found
        denied = self._access(token, resource_type, "s")
        if denied:
            return *denied, resource_type
        offset = int(query.get("_getpagesoffset", ["0"])[0])
        return 200, self._bundle(resource_type, matches, offset, count, [], session=session), resource_type

    def _session_page(self, token: IssuedToken, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        status, body, _ = self.session_page(token, query)
        return status, body

    def _bundle(self, resource_type: str, matches: list[dict[str, Any]], offset: int, count: int,
                warnings: list[str], *, session: str | None = None, query: dict[str, list[str]] | None = None,
                keyset: bool = False) -> dict[str, Any]:
        page = matches[offset:offset + count]
        base = f"{self.fhir_base_url}/{resource_type}"
        links = [{"relation": "self", "url": base}]
        more = offset + count < len(matches)
        if more and session is not None:
            links.append({"relation": "next", "url": f"{self.fhir_base_url}?" + urlencode(
                {"_getpages": session, "_getpagesoffset": offset + count, "_count": count})})
        elif more and keyset and page:
            token = base64.urlsafe_b64encode(f"{page[-1]['meta']['lastUpdated']}|{page[-1]['id']}".encode()).decode()
            params = {k: v for k, v in (query or {}).items() if k != "_page_token"}
            links.append({"relation": "next", "url": f"{base}?" + urlencode(
                [*((k, x) for k, vs in params.items() for x in vs), ("_page_token", token)])})
        elif more:
            params = {k: v for k, v in (query or {}).items() if k != "_offset"}
            links.append({"relation": "next", "url": f"{base}?" + urlencode(
                [*((k, x) for k, vs in params.items() for x in vs), ("_offset", str(offset + count))])})
        entries: list[dict[str, Any]] = [{"fullUrl": f"{base}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                                         for r in page]
        for text in warnings:
            entries.append({"resource": _outcome("not-supported", text, severity="warning"),
                            "search": {"mode": "outcome"}})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                                  "meta": {"lastUpdated": _now_iso(self.clock())}, "link": links, "entry": entries}
        if not keyset:
            bundle["total"] = len(matches)
        return bundle


class _Handler(BaseHTTPRequestHandler):
    server_version = "ehrbridge-sandbox/1"
    protocol_version = "HTTP/1.1"

    @property
    def sandbox(self) -> SandboxEHR:
        return self.server.sandbox  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines carry query strings; the sandbox keeps its own PHI-free record

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path != TOKEN_PATH:
            self._send(404, _outcome("not-found", "no such endpoint"))
            return
        form = {k: v[0] for k, v in parse_qs(raw.decode("ascii", "replace"), keep_blank_values=True).items()}
        basic = _basic_auth(self.headers.get("Authorization"))
        status, body, headers = self.sandbox.token(form, basic)
        client_id = basic[0] if basic else _unverified_iss(form.get("client_assertion"))
        self.sandbox.record(RequestRecord("token", "POST", path, status, client_id, None, body.get("error")))
        self._send(status, body, headers, content_type="application/json")

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        sandbox = self.sandbox
        if path == f"{FHIR_PATH}/.well-known/smart-configuration":
            sandbox.record(RequestRecord("discovery", "GET", path, 200))
            self._send(200, sandbox.smart_configuration(), content_type="application/json")
            return
        if path.startswith("/bulk/"):
            self._bulk(path, query)
            return
        if path == f"{FHIR_PATH}/metadata":
            sandbox.record(RequestRecord("discovery", "GET", path, 200))
            self._send(200, sandbox.capability_statement())
            return
        if not path.startswith(FHIR_PATH):
            self._send(404, _outcome("not-found", "no such endpoint"))
            return
        segments = [s for s in path[len(FHIR_PATH):].split("/") if s]
        sandbox.injector.before_auth()
        token, why = sandbox.authorize(self.headers.get("Authorization"))
        resource_type = segments[0] if segments else None
        if token is None:
            sandbox.record(RequestRecord("fhir", "GET", path, 401, None, resource_type, why))
            challenge = f'Bearer realm="sandbox", error="invalid_token", error_description="{why}"'
            self._send(401, _outcome("login", why), {"WWW-Authenticate": challenge})
            return
        if segments and segments[-1] == "$export":
            group = segments[1] if len(segments) == 3 and segments[0] == "Group" else None
            status, body, headers = sandbox.bulk.kickoff(token, query, self.headers.get("Prefer"), group)
            sandbox.record(RequestRecord("bulk", "GET", path, status, token.client_id))
            self._send(status, body, headers)
            return
        injected = sandbox.injector.before_answer()
        if injected is not None:
            sandbox.record(RequestRecord("fhir", "GET", path, injected.status, token.client_id, resource_type,
                                         "injected"))
            self._send_raw(injected)
            return
        searched = None
        if not segments and "_getpages" in query:
            status, body, resource_type = sandbox.session_page(token, query)
            searched = resource_type
        elif len(segments) == 1:
            status, body = sandbox.search(token, segments[0], query)
            searched = segments[0]
        elif len(segments) == 2 and segments[1] == "_history":
            status, body = sandbox.type_history(token, segments[0], query)
        elif len(segments) == 2:
            status, body = sandbox.read(token, segments[0], segments[1])
        else:
            status, body = 404, _outcome("not-found", "no such endpoint")
        if searched and status == 200:
            broken = sandbox.injector.after_search(body)
            sandbox.injector.after_page(searched)
            if broken is not None:
                sandbox.record(RequestRecord("fhir", "GET", path, 200, token.client_id, resource_type, "injected"))
                self._send_raw(broken)
                return
        sandbox.record(RequestRecord("fhir", "GET", path, status, token.client_id, resource_type,
                                     params={k: v[-1] for k, v in query.items() if v}))
        self._send(status, body)

    def _bulk(self, path: str, query: dict[str, list[str]]) -> None:
        sandbox = self.sandbox
        parts = [p for p in path.split("/") if p]  # bulk, status|files|store, job, [file]
        if parts[1] == "store" and len(parts) == 4:
            status, data, headers = sandbox.bulk.stored(parts[2], parts[3], (query.get("sig") or [None])[0],
                                                        self.headers.get("Authorization"))
            sandbox.record(RequestRecord("bulk", "GET", "/bulk/store", status))
            self._send_raw(Injected(status, data, headers), content_type="application/fhir+ndjson")
            return
        token, why = sandbox.authorize(self.headers.get("Authorization"))
        if token is None:
            sandbox.record(RequestRecord("bulk", "GET", path, 401, None, None, why))
            self._send(401, _outcome("login", why))
            return
        if parts[1] == "status" and len(parts) == 3:
            status, body, headers = sandbox.bulk.status(token, parts[2])
            sandbox.record(RequestRecord("bulk", "GET", "/bulk/status", status, token.client_id))
            self._send(status, body, headers, content_type="application/json")
            return
        if parts[1] == "files" and len(parts) == 4:
            status, data, headers = sandbox.bulk.file(token, parts[2], parts[3])
            sandbox.record(RequestRecord("bulk", "GET", "/bulk/files", status, token.client_id))
            self._send_raw(Injected(status, data, headers), content_type="application/fhir+ndjson")
            return
        self._send(404, _outcome("not-found", "no such endpoint"))

    def _send_raw(self, injected: Injected, content_type: str = "application/fhir+json") -> None:
        self.send_response(injected.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(injected.body)))
        for name, value in injected.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(injected.body)

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None,
              content_type: str = "application/fhir+json") -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _outcome(code: str, text: str, severity: str = "error") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code,
                                                           "diagnostics": text}]}


def _now_iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _date_matches(value: str, criterion: str) -> bool:
    prefix, target = (criterion[:2], criterion[2:]) if criterion[:2] in ("gt", "ge", "lt", "le", "eq") \
        else ("eq", criterion)
    left, right = _parse_instant(value), _parse_instant(target)
    return {"gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right,
            "eq": left == right}[prefix]


def _parse_instant(value: str) -> datetime:
    text = value.replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text) if "T" in text else datetime.fromisoformat(text + "T00:00:00+00:00")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (ValueError, UnicodeError):
        return None
    from urllib.parse import unquote

    return unquote(user), unquote(password)


def _unverified_iss(assertion: str | None) -> str | None:
    if not assertion:
        return None
    try:
        claims = json.loads(extract_compact(assertion.encode("ascii")).payload)
        return str(claims.get("iss"))[:256]
    except (JoseError, ValueError, UnicodeError, AttributeError):
        return None
