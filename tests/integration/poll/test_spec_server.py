"""A SMART Backend Services server reached only through discovery, behind a rate-limiting proxy.

Nothing vendor-specific: the tenant gives a FHIR base URL (the proxy) and no token URL, so the
token endpoint comes from ``.well-known/smart-configuration`` and sits behind the same proxy (so the
client assertion's ``aud`` is the proxy's URL); the proxy answers 429 with ``Retry-After`` to any
request, FHIR read or token POST, whenever the client goes faster than it allows, and tokens live 10 s.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.poll.poller import PollSettings
from tests.integration.poll.conftest import Rig
from tests.integration.poll.test_poller_faults import job

pytestmark = pytest.mark.integration


class RateLimitingProxy:
    """At most ``per_second`` requests in any one-second slot; the rest get 429 + Retry-After: 1."""

    def __init__(self, upstream: str, per_second: int, *, rewrite_links: bool = True) -> None:
        self.upstream, self.per_second = upstream.rstrip("/"), per_second
        self.rewrite_links = rewrite_links
        self.slots: dict[int, int] = {}
        self.refused = 0
        self.requests: dict[str, int] = {}
        self.refused_by_method: dict[str, int] = {}
        self.forwarded_paths: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:  # the token endpoint sits behind the same proxy and the same limit
                self._forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def _forward(self, data: bytes | None) -> None:
                slot = int(time.monotonic())
                with proxy.lock:
                    proxy.slots[slot] = proxy.slots.get(slot, 0) + 1
                    over = proxy.slots[slot] > proxy.per_second
                    proxy.refused += over
                    if over:
                        proxy.refused_by_method[self.command] = proxy.refused_by_method.get(self.command, 0) + 1
                if over:
                    self._reply(429, b'{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
                                     b'"code":"throttled"}]}', {"Retry-After": "1"})
                    return
                proxy.requests[self.command] = proxy.requests.get(self.command, 0) + 1
                proxy.forwarded_paths.append(self.path)
                request = urllib.request.Request(proxy.upstream + self.path, data=data, headers={  # noqa: S310
                    k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept", "content-type")})
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
                        status, body, headers = response.status, response.read(), dict(response.headers)
                except urllib.error.HTTPError as err:
                    status, body, headers = err.code, err.read(), dict(err.headers)
                # FHIR bodies and the discovery document name the proxy, as a real deployment would: the
                # token endpoint found by discovery is reached through the proxy too.
                # A proxy that does not (rewrite_links=False) leaves the server's own address in Bundle links.
                if proxy.rewrite_links or "/.well-known/" in self.path:
                    body = body.replace(proxy.upstream.encode(), proxy.origin.encode())
                self._reply(status, body, {k: v for k, v in headers.items() if k in ("Retry-After", "Date")})

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_discovery_rate_limiting_proxy_and_short_tokens(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("generic", patients=12, token_lifetime_s=10, paging_style="offset")
    proxy = RateLimitingProxy(rig.sandbox.base_url, per_second=2)
    rig.sandbox.public_token_urls.add(proxy.origin + rig.sandbox.token_url.removeprefix(rig.sandbox.base_url))
    try:
        rig.tenant = TenantConfig.model_validate({**rig.tenant.model_dump(), "fhir_base_url": proxy.origin + "/fhir",
                                                  "token_url": None})
        rig.settings = PollSettings(page_size=5)
        poller = rig.poller(max_retry_after_s=1.5)
        for resource_type in ("Patient", "Observation"):
            assert poller.run(job(resource_type)).status == "done"
        assert set(rig.sink.delivered) >= rig.sandbox.current_versions(["Patient", "Observation"])
        # Every 429 on a FHIR read was seen and honoured by the poller (token 429s are the refresher's).
        assert proxy.refused > 0 and rig.metrics.throttled == proxy.refused_by_method.get("GET", 0)
        assert any(r.kind == "discovery" for r in rig.sandbox.requests)
        # Tokens (10 s) were fetched through the proxy's rate limit several times during the crawl.
        assert proxy.requests.get("POST", 0) >= 2 and sum(r.kind == "token" for r in rig.sandbox.requests) >= 2
    finally:
        proxy.stop()


def test_links_naming_the_servers_own_address_are_rebased_onto_the_proxy(make_rig: Callable[..., Rig],
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A server behind a proxy that builds ``next`` links from its internal address: the poller follows them
    through the configured base URL (the token never goes to the internal host) and misses nothing."""
    rig = make_rig("generic", patients=12, paging_style="next_link")
    proxy = RateLimitingProxy(rig.sandbox.base_url, per_second=1000, rewrite_links=False)
    rig.sandbox.public_token_urls.add(proxy.origin + rig.sandbox.token_url.removeprefix(rig.sandbox.base_url))
    try:
        rig.tenant = TenantConfig.model_validate({**rig.tenant.model_dump(), "fhir_base_url": proxy.origin + "/fhir",
                                                  "token_url": None})
        rig.settings = PollSettings(page_size=5)
        assert rig.poller().run(job("Patient")).status == "done"
        assert set(rig.sink.delivered) >= rig.sandbox.current_versions(["Patient"])
        searches = [r for r in rig.sandbox.fhir_requests("Patient") if r.status == 200]
        assert len(searches) >= 3  # several pages: the links were followed
        # Every FHIR request the server saw came through the proxy: none went to the address in the links.
        not_searches = ("/fhir/metadata", "/fhir/.well-known")
        searched_through_proxy = [p for p in proxy.forwarded_paths
                                  if p.startswith("/fhir") and not p.startswith(not_searches)]
        assert len(searched_through_proxy) == len(rig.sandbox.fhir_requests())
        assert '"FhirLinkRebased"' in capsys.readouterr().out
    finally:
        proxy.stop()


def test_a_statement_silent_on_last_updated_is_probed_once_then_polled_incrementally(
        make_rig: Callable[..., Rig]) -> None:
    """``_lastUpdated`` is common to every resource and often left out of a type's searchParam list: the
    poller asks the server once instead of falling back to full re-reads or an export."""
    rig = make_rig("generic", patients=8)
    rig.sandbox.declares_last_updated = False
    poller = rig.poller()
    assert poller.mode_for("Patient") == "incremental"
    for step in range(2):
        assert poller.run(job("Patient", step)).status == "done"
    probes = [r for r in rig.sandbox.fhir_requests("Patient") if "_lastUpdated" in (r.params or {})
              and r.params["_lastUpdated"].startswith("gt20") and r.params["_lastUpdated"][2:6] > "2030"]
    assert len(probes) == 1  # asked once per client, not per window
    second_window = [r for r in rig.sandbox.fhir_requests("Patient") if r not in probes][-1]
    assert (second_window.params or {}).get("_lastUpdated", "").startswith("gt")  # incremental, not a full read
    assert set(rig.sink.delivered) >= rig.sandbox.current_versions(["Patient"])


def test_a_server_refusing_the_sort_is_searched_unsorted_without_keyset(make_rig: Callable[..., Rig]) -> None:
    """A strict server answers 400 to ``_sort``: the crawl goes on unsorted (asked once), following the offset
    links as given, and never re-queries by keyset, which needs results in _lastUpdated order."""
    rig = make_rig("generic", patients=12, paging_style="offset", settings=PollSettings(page_size=5))
    rig.sandbox.refuses_sort = True
    poller = rig.poller()
    for step, resource_type in enumerate(("Patient", "Patient")):
        assert poller.run(job(resource_type, step)).status == "done"
    made = rig.sandbox.fhir_requests("Patient")
    refused = [r for r in made if r.status == 400]
    assert len(refused) == 1 and [r for r in made if "_sort" in (r.params or {})] == refused  # asked once
    assert not any((r.params or {}).get("_lastUpdated", "").startswith("ge") for r in made)  # no keyset
    assert set(rig.sink.delivered) >= rig.sandbox.current_versions(["Patient"])
