"""FHIR poller benchmark: crawl 10,000 resources from the sandbox EHR with 10 % 429s.

Same run, same server, same data, same page size (``_count``):
- baseline: a naive crawler (follows ``next`` links with one token, no retries) with faults off;
- ehrbridge: the Poller (token bucket, Retry-After, keyset re-query on offset paging, envelopes
  built for every resource as the function does) with 429s switched on (``Retry-After: 0`` so the
  figure measures the client, not the server's wait).

The minimum is one request per page of ``_count`` resources. "10 % 429s" is measured two ways:
- *pages* (the acceptance case): 1 in 10 of the pages the crawl needs is refused once with 429
  (the sandbox's ``throttle_pages_every``). The 429 answers are 10 % of the minimum, so a client
  that wastes nothing makes exactly 1.10x the minimum.
- *requests*: every 10th request the server receives is refused (``throttle_every``); each 429 is
  itself a request, so no client can do better than 1 / (1 - 0.1) = 1.111x.

Both run on the sandbox's default paging (opaque ``next`` links, as HAPI and the vendors page), and
the pages case again on offset paging, where the poller does not trust offsets and re-queries by
keyset (``_lastUpdated=ge{last}``). That re-reads the records sharing the page's last timestamp
(at least the last record). The poller asks for that many more (within the vendor's page cap), so
a page still brings ``_count`` new records. Only when ``_count`` is already the cap does this cost
about 1 % extra pages; ``--count 50`` shows the uncapped case.

Printed per run: the 429 answers, extra pages, other failed calls, the requests outside the search
(CapabilityStatement, token) counted apart, and whether the acceptance holds. Missing resources
(server set minus delivered set) must be 0, or the bench fails. Loopback only; ~10-30 s.

    python benchmarks/bench_poller.py [--resources 10000] [--count 100] [--throttle 0.1]
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
    args = parser.parse_args()

    import contextlib
    import io
    import json
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
                         faults=Faults()).start()
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

        def crawl(paging: str, throttle: str) -> dict[str, object]:
            """One full crawl by the Poller, fresh cursor, with the 429s switched on the given way."""
            sandbox.paging_style = paging  # type: ignore[assignment]
            every = round(1 / args.throttle) if args.throttle > 0 else 0
            sandbox.faults.throttle_every = every if throttle == "requests" else 0
            sandbox.faults.throttle_pages_every = every if throttle == "pages" else 0
            sandbox.faults.retry_after_s = 0
            sandbox.faults.retry_after_forms = ("delta",)
            before = len(sandbox.fhir_requests())
            before_other = {kind: sum(1 for r in sandbox.requests if r.kind == kind) for kind in ("discovery", "token")}
            metrics = PollMetrics(tenant.tenant_id, stream=None)
            publisher = InMemoryPublisher()
            calls = PollCalls(tenant, refresher, metrics, max_attempts=20)
            tally: dict[tuple[str, int | None], int] = {}
            record_call = metrics.call

            def counting_call(endpoint: str, resource_type: str, status: int | None, *rest: object,
                              **kw: object) -> None:
                tally[(endpoint, status)] = tally.get((endpoint, status), 0) + 1
                record_call(endpoint, resource_type, status, *rest, **kw)  # type: ignore[arg-type]

            metrics.call = counting_call  # type: ignore[method-assign]
            poller = Poller(tenant, calls, InMemoryCursorStore(), QueueSink(publisher),
                            settings=PollSettings(page_size=args.count))
            started = time.perf_counter()
            outcome = poller.run(PollJob(tenant_id=tenant.tenant_id, resource_type="Observation", job_id="bench"))
            seconds = time.perf_counter() - started
            calls.close()
            made = sandbox.fhir_requests()[before:]
            delivered = {resource_key(json.loads(e.body)) for e in publisher.sent if e.body}
            return {"outcome": outcome, "seconds": seconds, "requests": len(made),
                    "throttled": sum(1 for r in made if r.status == 429),
                    "failed_other": sum(1 for r in made if r.status != 429 and r.status >= 300),
                    "outside": {kind: sum(1 for r in sandbox.requests if r.kind == kind) - n
                                for kind, n in before_other.items()},
                    "envelopes": len(publisher.sent), "tally": tally, "retries": metrics.retries,
                    "missing": len(server_set - delivered)}

        runs = {(paging, throttle): crawl(paging, throttle) for paging, throttle in (
            ("next_link", "pages"), ("next_link", "requests"), ("offset", "pages"))}
    finally:
        sandbox.stop()
        quiet.__exit__(None, None, None)

    baseline_rps = naive / baseline_s
    print(f"resources on the server: {total} (Observation), _count={args.count}, "
          f"server page cap {sandbox.max_page_size}")
    print(f"baseline (naive crawl, no faults): {naive} resources in {baseline_s:.2f} s = {baseline_rps:,.0f} "
          f"resources/s, {minimum} requests")
    failed = False
    for (paging, throttle), run in runs.items():
        outcome = run["outcome"]
        requests, throttled, failed_other = run["requests"], run["throttled"], run["failed_other"]
        assert isinstance(requests, int) and isinstance(throttled, int) and isinstance(failed_other, int)
        poller_rps = outcome.resources / run["seconds"]  # type: ignore[attr-defined, operator]
        pages = requests - throttled - failed_other
        ratio = requests / minimum
        what = (f"1 in {round(1 / args.throttle)} of the pages needed refused once with 429"
                if throttle == "pages" else
                f"every {round(1 / args.throttle)}th request refused with 429 (floor {1 / (1 - args.throttle):.3f}x)")
        print(f"\n== ehrbridge poller, {paging} paging, {what}")
        print(f"{outcome.resources} resources in {run['seconds']:.2f} s = {poller_rps:,.0f} resources/s "  # type: ignore[attr-defined]
              f"(status {outcome.status}, {run['envelopes']} envelopes)")  # type: ignore[attr-defined]
        print(f"FHIR search requests: {requests} = minimum {minimum} + 429 answers {throttled} "
              f"({throttled / requests:.1%} of requests, {throttled / minimum:.1%} of the minimum) "
              f"+ extra pages {pages - minimum} (keyset re-reads of {outcome.duplicates} records already seen) "  # type: ignore[attr-defined]
              f"+ other failed calls {failed_other}")
        bound = 1 + args.throttle if throttle == "pages" else 1 / (1 - args.throttle)
        print(f"requests vs minimum: {ratio:.3f}x with the 429 answers (bound {bound:.3f}x), "
              f"{(requests - throttled) / minimum:.3f}x without them")
        outside = run["outside"]
        print(f"outside the search (not in the ratio): CapabilityStatement {outside['discovery']}, "  # type: ignore[index]
              f"token {outside['token']}")  # type: ignore[index]
        print("calls by endpoint and status:",
              {f"{e} {st}": n for (e, st), n in sorted(run["tally"].items(), key=str)})  # type: ignore[attr-defined]
        print(f"retries: {run['retries']}, missing: {run['missing']}")
        print(f"ratio to baseline (resources/s): {poller_rps / baseline_rps:.2f}")
        if throttle == "pages" and paging == "next_link":
            print(f"acceptance, the sandbox's default paging (requests <= {bound:.2f}x the minimum, 0 missing): "
                  f"{'met' if ratio <= bound + 1e-9 and not run['missing'] else 'NOT met'}")
        elif throttle == "pages":
            # A client that does not trust offsets needs an overlap to see a shift: with _count at the
            # server's cap, at least one record per page comes again (more where timestamps tie).
            cap = sandbox.max_page_size
            floor_pages = 1 + math.ceil(max(0, total - cap) / (cap - 1)) if args.count >= cap else minimum
            print(f"offset paging at this page cap: a keyset crawl needs >= {floor_pages} pages "
                  f"({floor_pages / minimum:.3f}x) before 429s; made {pages} "
                  f"({pages - floor_pages} more, from timestamps shared across a page boundary)")
        failed |= bool(run["missing"]) or outcome.status != "done"  # type: ignore[attr-defined]
    if failed:
        raise SystemExit("FAILED: resources missing or window not closed")


if __name__ == "__main__":
    main()
