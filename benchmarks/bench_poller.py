"""FHIR poller benchmark: crawl 10,000 resources from the sandbox EHR while 10 % of requests get 429.

Same run, same server, same data, same page size (``_count``):
- baseline: a naive crawler (follows ``next`` links with one token, no retries) with faults off;
- ehrbridge: the Poller (token bucket, Retry-After, keyset re-query on offset paging, envelopes
  built for every resource as the function does) with 429s switched on (``Retry-After: 0`` so the
  figure measures the client, not the server's wait).

"10 % 429s" means exactly this: every 10th FHIR search request the server receives is answered 429
(deterministic, ``--throttle 0.1`` -> every 10th), so 10 % of the requests made are 429 answers.
Each 429 is itself a request, so no client can do better than minimum / (1 - 0.1) = 1.111x the
minimum; the bench prints the ratio with and without the 429 answers.

The minimum is one request per page of ``_count`` resources. Printed breakdown: the 429 answers,
extra pages (offset paging: the keyset re-query ``_lastUpdated=ge{last}`` re-reads the records that
share the page's last timestamp, the price of not trusting offsets on a mutable result set), other
failed calls, and the requests outside the search (CapabilityStatement, token) counted apart.
Missing resources (server set minus delivered set) must be 0. Loopback only; ~10-30 s.

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
        sandbox.faults.throttle_every = round(1 / args.throttle) if args.throttle > 0 else 0
        sandbox.faults.retry_after_s = 0
        sandbox.faults.retry_after_forms = ("delta",)
        before = len(sandbox.fhir_requests())
        before_other = {kind: sum(1 for r in sandbox.requests if r.kind == kind) for kind in ("discovery", "token")}
        metrics = PollMetrics(tenant.tenant_id, stream=None)
        publisher = InMemoryPublisher()
        calls = PollCalls(tenant, refresher, metrics, max_attempts=20)
        tally: dict[tuple[str, int | None], int] = {}
        record_call = metrics.call

        def counting_call(endpoint: str, resource_type: str, status: int | None, *rest: object, **kw: object) -> None:
            tally[(endpoint, status)] = tally.get((endpoint, status), 0) + 1
            record_call(endpoint, resource_type, status, *rest, **kw)  # type: ignore[arg-type]

        metrics.call = counting_call  # type: ignore[method-assign]
        poller = Poller(tenant, calls, InMemoryCursorStore(), QueueSink(publisher),
                        settings=PollSettings(page_size=args.count))
        started = time.perf_counter()
        outcome = poller.run(PollJob(tenant_id=tenant.tenant_id, resource_type="Observation", job_id="bench"))
        poller_s = time.perf_counter() - started
        calls.close()
        requests = len(sandbox.fhir_requests()) - before
        throttled = sum(1 for r in sandbox.fhir_requests()[before:] if r.status == 429)
        failed_other = sum(1 for r in sandbox.fhir_requests()[before:] if r.status != 429 and r.status >= 300)
        outside = {kind: sum(1 for r in sandbox.requests if r.kind == kind) - n for kind, n in before_other.items()}
        delivered = {resource_key(__import__("json").loads(e.body)) for e in publisher.sent if e.body}
        missing = len(server_set - delivered)
    finally:
        sandbox.stop()
        quiet.__exit__(None, None, None)

    baseline_rps, poller_rps = naive / baseline_s, outcome.resources / poller_s
    print(f"resources on the server: {total} (Observation), _count={args.count}, paging={args.paging}")
    print(f"baseline (naive crawl, no faults): {naive} resources in {baseline_s:.2f} s = {baseline_rps:,.0f} "
          f"resources/s, {minimum} requests")
    pages = requests - throttled - failed_other
    print(f"ehrbridge poller (every {sandbox.faults.throttle_every}th request answered 429): {outcome.resources} "
          f"resources in {poller_s:.2f} s = {poller_rps:,.0f} resources/s (status {outcome.status}, "
          f"{len(publisher.sent)} envelopes)")
    print(f"FHIR search requests: {requests} = minimum {minimum} + 429 answers {throttled} "
          f"({throttled / requests:.1%} of requests) + extra pages {pages - minimum} "
          f"(keyset re-reads of {outcome.duplicates} records already seen) + other failed calls {failed_other}")
    print(f"requests vs minimum: {requests / minimum:.3f}x with the 429 answers "
          f"(floor for this 429 share: {1 / (1 - throttled / requests):.3f}x), "
          f"{(requests - throttled) / minimum:.3f}x without them")
    print(f"outside the search (not in the ratio): CapabilityStatement {outside['discovery']}, "
          f"token {outside['token']}")
    print("calls by endpoint and status:", {f"{e} {st}": n for (e, st), n in sorted(tally.items(), key=str)})
    print(f"retries: {metrics.retries}, missing: {missing}")
    print(f"ratio to baseline (resources/s): {poller_rps / baseline_rps:.2f}")
    if missing or outcome.status != "done":
        raise SystemExit("FAILED: resources missing or window not closed")


if __name__ == "__main__":
    main()
