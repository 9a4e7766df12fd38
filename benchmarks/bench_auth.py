"""SMART auth benchmark against the sandbox EHR (athena profile: token endpoint 50/min -> 429).

Same run, same load (W worker threads = Lambda instances, each making N FHIR searches for one tenant):
- baseline: a naive client that gets a fresh token (new assertion) for every FHIR call, the
  pattern static-JWT and per-call-auth integrations end up with;
- ehrbridge: TokenRefresher + FhirClient, one shared token cache and refresh lock (as Secrets
  Manager + the state table give every instance), separate refresher objects per instance.

Prints FHIR calls/s, token requests, 429s and failed calls for both, and the ratios; then the cost
of signing one assertion (RS384 vs ES384). Loopback (127.0.0.1) only. Runs in well under a minute.

    python benchmarks/bench_auth.py [--workers 8] [--calls 40]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layers" / "core"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()

    import logging

    import httpx
    from pydantic import SecretStr

    from ehrbridge.auth.assertion import build_client_assertion
    from ehrbridge.auth.credentials import InMemoryCredentialStore, KeyMaterial, TenantCredentials
    from ehrbridge.auth.fhir_client import FhirClient
    from ehrbridge.auth.keys import generate_private_key, jwks, load_private_key, public_jwk_from_pem
    from ehrbridge.auth.refresher import RefreshFailed, TokenRefresher
    from ehrbridge.auth.scopes import scopes_for
    from ehrbridge.auth.state import InMemoryRefreshState
    from ehrbridge.auth.token_endpoint import TokenClient, TokenEndpointError
    from ehrbridge.auth.tokens import InMemoryTokenStore
    from ehrbridge.contracts.tenant import TenantConfig
    from ehrbridge.observability import logger
    from ehrbridge.sandbox.server import SandboxEHR

    logger.setLevel(logging.CRITICAL)
    import contextlib
    import io

    pem = generate_private_key("RS384", 2048)
    creds = TenantCredentials(keys=[KeyMaterial(kid="k1", algorithm="RS384", private_key_pem=SecretStr(pem))])

    def run(mode: str) -> dict[str, float]:
        with SandboxEHR("athena") as sandbox:
            sandbox.register_client("bench", jwks=jwks([public_jwk_from_pem(pem, "RS384", "k1")]))
            tenant = TenantConfig.model_validate({
                "tenant_id": "bench", "vendor": "athena", "fhir_base_url": sandbox.fhir_base_url,
                "client_id": "bench", "key_id": "k1", "workflows": ["labs"],
                "vendor_context": {"practice_context": "Organization/a-1.Practice-1"}})
            store, tokens, state = InMemoryCredentialStore(), InMemoryTokenStore(), InMemoryRefreshState()
            store.put("bench", creds)
            failed = [0]
            lock = threading.Lock()

            def worker() -> None:
                token_client = TokenClient(budget_s=0.0, max_attempts=1)  # no waiting: count what happens
                refresher = TokenRefresher(credentials=store, tokens=tokens, state=state, token_client=token_client)
                fhir = FhirClient(tenant, refresher)
                for _ in range(args.calls):
                    try:
                        if mode == "baseline":
                            response = token_client.request_token(tenant, creds, scopes_for(["labs"]))
                            httpx.get(f"{sandbox.fhir_base_url}/Patient", params={"_count": "1", "ah-practice":
                                      "Organization/a-1.Practice-1"}, timeout=10, headers={
                                      "Authorization": f"Bearer {response.access_token.get_secret_value()}"})
                        else:
                            fhir.search("Patient", {"_count": "1"})
                    except (TokenEndpointError, RefreshFailed):
                        with lock:
                            failed[0] += 1

            threads = [threading.Thread(target=worker) for _ in range(args.workers)]
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # EMF metric lines
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=120)
            elapsed = time.perf_counter() - start
            calls = args.workers * args.calls
            return {"calls": calls, "ok_calls": calls - failed[0], "calls_per_s": (calls - failed[0]) / elapsed,
                    "token_requests": sandbox.token_requests(), "http_429": sandbox.token_requests(status=429),
                    "failed": failed[0]}

    baseline, ours = run("baseline"), run("ehrbridge")
    print(f"load: {args.workers} workers x {args.calls} FHIR searches, athena profile (token endpoint 50/min)")
    for name, r in (("baseline (token per call)", baseline), ("ehrbridge (cached, single flight)", ours)):
        print(f"  {name:<34} ok calls/s {r['calls_per_s']:8.1f}  token requests {r['token_requests']:4d}  "
              f"429s {r['http_429']:4d}  failed calls {r['failed']:4d}/{r['calls']}")
    print(f"  ratio token requests ehrbridge/baseline: {ours['token_requests'] / baseline['token_requests']:.4f}")
    speedup = ours["calls_per_s"] / max(baseline["calls_per_s"], 1e-9)
    print(f"  ratio successful calls/s ehrbridge/baseline: {speedup:.2f}")

    for alg in ("RS384", "ES384"):
        key = load_private_key(generate_private_key(alg, 2048), alg)  # type: ignore[arg-type]
        n = 200
        start = time.perf_counter()
        for _ in range(n):
            build_client_assertion(key=key, kid="k", client_id="c", audience="https://ehr.example/token")
        per = (time.perf_counter() - start) / n * 1e6
        print(f"  sign one {alg} assertion: {per:8.1f} us")


if __name__ == "__main__":
    main()
