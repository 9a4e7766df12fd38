"""FHIR poller benchmark: crawl 10,000 resources from the sandbox EHR while 10 % of requests get 429.

Same run, same server, same data, same page size (``_count``):
- baseline: a naive crawler (follows ``next`` links with one token, no retries) with faults off;
- ehrbridge: the Poller (token bucket, Retry-After, keyset re-query on offset paging, envelopes
  built for every resource as the function does) with 10 % of FHIR requests answered 429 (random,
  seeded; ``Retry-After: 0`` so the figure measures the client, not the server's wait).

Prints resources/s for both and their ratio, requests made vs the minimum (one per page), the 429s,
and missing resources (server set minus delivered set; must be 0). Loopback only; ~10-30 s.

    python benchmarks/bench_poller.py [--resources 10000] [--count 100] [--throttle 0.1] [--paging offset]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layers" / "core"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--throttle", type=float, default=0.1)
    parser.add_argument("--paging", choices=["offset", "next_link"], default="offset")
    args = parser.parse_args()

    import contextlib
    import io
    import logging
    import os

    import httpx
    from pydantic import SecretStr

    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    from ehrbridge.auth.credentials import InMemoryCredentialStore, KeyMaterial, TenantCredentials
    from ehrbridge.auth.keys import generate_private_key, jwks, public_jwk_from_pem
    from ehrbridge.auth.refresher import TokenRefresher
    from ehrbridge.auth.state import InMemoryRefreshState
    from ehrbridge.auth.tokens import InMemoryTokenStore
    from ehrbridge.aws.sqs import InMemoryPublisher
    from ehrbridge.contracts.tenant import TenantConfig
    from ehrbridge.observability import logger
    from ehrbridge.poll.calls import PollCalls
    from ehrbridge.poll.cursor import InMemoryCursorStore
    from ehrbridge.poll.jobs import PollJob
    from ehrbridge.poll.metrics import PollMetrics
    from ehrbridge.poll.poller import Poller, PollSettings
    from ehrbridge.poll.sink import QueueSink, resource_key
    from ehrbridge.sandbox.faults import Faults
    from ehrbridge.sandbox.server import SandboxEHR

    logger.setLevel(logging.CRITICAL)
    # The SMART client writes EMF metric lines to stdout (CloudWatch reads them in Lambda): keep them out.
    quiet = contextlib.redirect_stdout(io.StringIO())
    quiet.__enter__()
    per_patient = 10
    patients = math.ceil(args.resources / per_patient)
    sandbox = SandboxEHR("generic", patients=patients, observations_per_patient=(per_patient, per_patient),
                         paging_style=args.paging, faults=Faults()).start()
    try:
        pem = generate_private_key("ES384")
        sandbox.register_client("bench", jwks=jwks([public_jwk_from_pem(pem, "ES384", "k1")]))
        tenant = TenantConfig.model_validate({
            "tenant_id": "bench-health", "vendor": "generic", "fhir_base_url": sandbox.fhir_base_url,
            "client_id": "bench", "key_id": "k1", "algorithm": "ES384", "workflows": ["labs"],
            "rate_limits": {"requests_per_second": 10_000}})
        store = InMemoryCredentialStore()
        store.put(tenant.tenant_id, TenantCredentials(keys=[KeyMaterial(kid="k1", algorithm="ES384",
                                                                         private_key_pem=SecretStr(pem))]))
        refresher = TokenRefresher(credentials=store, tokens=InMemoryTokenStore(), state=InMemoryRefreshState())
        server_set = sandbox.current_versions(["Observation"])
        total = len(server_set)
        minimum = math.ceil(total / args.count)

        # ---- baseline: naive crawl, no faults --------------------------------------------------
        token = refresher.get_token(tenant).access_token.get_secret_value()
        with httpx.Client(timeout=30) as http:
            started = time.perf_counter()
            url: str | None = f"{sandbox.fhir_base_url}/Observation?_count={args.count}"
            naive = 0
            while url:
                bundle = http.get(url, headers={"Authorization": f"Bearer {token}"}).json()
                naive += len(bundle.get("entry", []))
                url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
            baseline_s = time.perf_counter() - started

        # ---- ehrbridge poller with 10 % 429s --------------------------------------------------
        sandbox.faults.throttle_rate = args.throttle
        sandbox.faults.retry_after_s = 0
        sandbox.faults.retry_after_forms = ("delta",)
        before = len(sandbox.fhir_requests())
        metrics = PollMetrics(tenant.tenant_id, stream=None)
        publisher = InMemoryPublisher()
        calls = PollCalls(tenant, refresher, metrics, max_attempts=20)
        poller = Poller(tenant, calls, InMemoryCursorStore(), QueueSink(publisher),
                        settings=PollSettings(page_size=args.count))
        started = time.perf_counter()
        outcome = poller.run(PollJob(tenant_id=tenant.tenant_id, resource_type="Observation", job_id="bench"))
        poller_s = time.perf_counter() - started
        calls.close()
        requests = len(sandbox.fhir_requests()) - before
        throttled = sum(1 for r in sandbox.fhir_requests()[before:] if r.status == 429)
        delivered = {resource_key(__import__("json").loads(e.body)) for e in publisher.sent if e.body}
        missing = len(server_set - delivered)
    finally:
        sandbox.stop()
        quiet.__exit__(None, None, None)

    baseline_rps, poller_rps = naive / baseline_s, outcome.resources / poller_s
    print(f"resources on the server: {total} (Observation), _count={args.count}, paging={args.paging}")
    print(f"baseline (naive crawl, no faults): {naive} resources in {baseline_s:.2f} s = {baseline_rps:,.0f} "
          f"resources/s, {minimum} requests")
    print(f"ehrbridge poller ({args.throttle:.0%} of requests 429): {outcome.resources} resources in "
          f"{poller_s:.2f} s = {poller_rps:,.0f} resources/s (status {outcome.status}, "
          f"{len(publisher.sent)} envelopes)")
    print(f"requests: {requests} made vs {minimum} minimum = {requests / minimum:.3f}x "
          f"({throttled} answered 429; {requests - throttled} other = {(requests - throttled) / minimum:.3f}x)")
    print(f"retries: {metrics.retries}, duplicates dropped: {outcome.duplicates}, missing: {missing}")
    print(f"ratio to baseline (resources/s): {poller_rps / baseline_rps:.2f}")
    if missing or outcome.status != "done":
        raise SystemExit("FAILED: resources missing or window not closed")


if __name__ == "__main__":
    main()
