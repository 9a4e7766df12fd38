"""The one list of metric names and the dimension sets they are emitted with.

Alarms and dashboards (infra/) are built from these entries, and tests check both directions: every
entry is emitted by the code with exactly these dimensions (tests/unit/test_metric_names.py), and every
alarm and widget in the synthesized template refers to an entry (tests/infra/test_observability.py).
A CloudWatch metric is its name *and* its full dimension set: a graph of ``StageFailed`` without
dimensions is a different, empty series.

Three emitters:
- ``emit_metric`` (functions, and the bridge for quarantines): ``service, tenant`` plus at most one
  secondary dimension.
- the MLLP bridge's aggregated EMF (``ehrbridge.mllp.metrics``): each counter twice, per tenant and
  fleet-wide (``service`` [, ``message_type``]), so alarms need no tenant list.
- the FHIR poller's EMF (``ehrbridge.poll.metrics``): ``service, tenant, endpoint, resource_type`` on
  every value; call latency also fleet-wide (``service``) for percentile alarms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NAMESPACE = "ehrbridge"
SECONDARY_DIMENSIONS = frozenset({"resource_type", "endpoint", "message_type", "reason"})

Emitter = Literal["function", "bridge_counter", "bridge_latency", "bridge_gauge", "poller", "poller_latency"]
# The poller's one detailed dimension set (endpoint: search, next-page, keyset, bulk, metadata, dispatch).
POLL_DIMENSIONS = ("service", "tenant", "endpoint", "resource_type")
# Outcomes of a FHIR call as the poller counts them (``PollCall<outcome>``).
POLL_OUTCOMES = ("2xx", "401", "403", "404", "429", "5xx", "4xx", "timeout", "network")


@dataclass(frozen=True)
class MetricName:
    name: str
    secondary: str | None = None  # the one secondary dimension it is always emitted with
    emitter: Emitter = "function"
    optional_secondary: bool = False  # emitted both with and without the secondary dimension

    @property
    def dimension_sets(self) -> tuple[tuple[str, ...], ...]:
        """Every dimension set a series of this metric exists under."""
        extra = (self.secondary,) if self.secondary else ()
        if self.emitter == "poller":
            return (POLL_DIMENSIONS,)
        if self.emitter == "poller_latency":
            return (POLL_DIMENSIONS, ("service",))
        if self.emitter == "function":
            sets = [("service", "tenant", *extra)]
            if self.optional_secondary:
                sets.append(("service", "tenant"))
            return tuple(sets)
        if self.emitter == "bridge_gauge":
            return (("service",),)
        return (("service", "tenant", *extra), ("service", *extra))

    def __str__(self) -> str:
        return self.name


# ---- pipeline stages ---------------------------------------------------------------------------
HL7_INGESTED = MetricName("Hl7Ingested", "message_type")
STAGE_FAILED = MetricName("StageFailed", "message_type")
INVALID_ENVELOPE = MetricName("InvalidEnvelope", "message_type")  # tenant "unknown"; message_type = stage
QUARANTINED = MetricName("Quarantined", "reason")  # reason = "<stage>:<reason class>", low cardinality
NORMALIZED = MetricName("Normalized", "message_type")
UNMAPPED_SEGMENTS = MetricName("UnmappedSegments", "message_type")
CODE_REPAIRS = MetricName("CodeRepairs", "message_type")
# An ADT recorded a patient identifier on the tenant's FHIR poll roster (new entries only) / had none to record.
ROSTER_FED = MetricName("RosterFed", "message_type")
ROSTER_FEED_SKIPPED = MetricName("RosterFeedSkipped", "message_type")
ROSTER_RETIRED = MetricName("RosterRetired", "message_type")  # A40: the merged-away patient's entry dropped

# ---- identity ----------------------------------------------------------------------------------
IDENTITY_MATCH_SCORE = MetricName("IdentityMatchScore")  # percent, high resolution
IDENTITY_LINKED = MetricName("IdentityLinked")
IDENTITY_REVIEW = MetricName("IdentityReview")
IDENTITY_NEW = MetricName("IdentityNew")
IDENTITY_CANDIDATES = MetricName("IdentityCandidates")
IDENTITY_STORE_ROUND_TRIPS = MetricName("IdentityStoreRoundTrips")
IDENTITY_REVIEW_BACKLOG = MetricName("IdentityReviewBacklog")
IDENTITY_REVIEW_OLDEST_AGE = MetricName("IdentityReviewOldestAge")
IDENTITY_MERGE_CHANGES = MetricName("IdentityMergeChanges")
IDENTITY_MERGE_REFUSED = MetricName("IdentityMergeRefused")
IDENTITY_RESOLVE_LATENCY = MetricName("IdentityResolveLatency")
IDENTITY_LINK_EVENTS = MetricName("IdentityLinkEvents")

# ---- SMART tokens and FHIR calls -----------------------------------------------------------------
TOKEN_REFRESHED = MetricName("TokenRefreshed")
TOKEN_REFRESH_FAILED = MetricName("TokenRefreshFailed")
TOKEN_REFRESH_CONSECUTIVE_FAILURES = MetricName("TokenRefreshConsecutiveFailures")
TOKEN_LIFETIME_SECONDS = MetricName("TokenLifetimeSeconds")
TOKEN_SECONDS_REMAINING = MetricName("TokenSecondsRemaining")
TOKEN_AGE_SECONDS = MetricName("TokenAgeSeconds")
# Seconds left / the token's own lifetime (0..1): token health judged against each tenant's lifetime,
# so a vendor issuing 30 s tokens is not permanently "about to expire".
TOKEN_LIFETIME_REMAINING_RATIO = MetricName("TokenLifetimeRemainingRatio")
# A tenant whose tokens live shorter than the schedule can bridge: refreshed on demand by the FHIR client.
TOKEN_ON_DEMAND = MetricName("TokenOnDemand")
SCOPE_DENIED_RESOURCE_TYPES = MetricName("ScopeDeniedResourceTypes")
TOKEN_ENDPOINT_RESPONSE = MetricName("TokenEndpointResponse", "endpoint")
UNAUTHORIZED_401 = MetricName("Unauthorized401")
UNAUTHORIZED_AFTER_REFRESH = MetricName("UnauthorizedAfterRefresh")
RESOURCE_DENIED = MetricName("ResourceDenied", "resource_type")
RESOURCE_SKIPPED = MetricName("ResourceSkipped", "resource_type")
FHIR_CALL_LATENCY = MetricName("FhirCallLatency", "resource_type", optional_secondary=True)
FHIR_CALL_NETWORK_ERROR = MetricName("FhirCallNetworkError", "resource_type", optional_secondary=True)
FHIR_CALL_2XX = MetricName("FhirCall2xx", "resource_type", optional_secondary=True)
FHIR_CALL_3XX = MetricName("FhirCall3xx", "resource_type", optional_secondary=True)
FHIR_CALL_4XX = MetricName("FhirCall4xx", "resource_type", optional_secondary=True)
FHIR_CALL_5XX = MetricName("FhirCall5xx", "resource_type", optional_secondary=True)
# A next link on another origin under the tenant's base path, re-based onto it (server behind a proxy).
FHIR_LINK_REBASED = MetricName("FhirLinkRebased")

# ---- FHIR poller (names from ehrbridge.poll.metrics; PollMetrics is the emitter) ---------------------
# secondary = "resource_type" (with "endpoint" beside it): the dimension the infra helpers select on.
POLL_CALLS = MetricName("PollCalls", "resource_type", "poller")
POLL_CALL_FAILED = MetricName("PollCallFailed", "resource_type", "poller")  # 0/1 per call: AVG = failed rate
POLL_CALL_LATENCY = MetricName("PollCallLatency", "resource_type", "poller_latency")  # ms, high resolution
POLL_CALL_OUTCOMES: dict[str, MetricName] = {
    outcome: MetricName(f"PollCall{outcome}", "resource_type", "poller") for outcome in POLL_OUTCOMES}
POLL_CALL_401 = POLL_CALL_OUTCOMES["401"]
POLL_RETRIES = MetricName("PollRetries", "resource_type", "poller")
POLL_THROTTLE_WAIT_MS = MetricName("PollThrottleWaitMs", "resource_type", "poller")
POLL_RESOURCES = MetricName("PollResources", "resource_type", "poller")
POLL_DUPLICATES = MetricName("PollDuplicates", "resource_type", "poller")
POLL_FRESHNESS_SECONDS = MetricName("PollFreshnessSeconds", "resource_type", "poller")
POLL_TYPE_DENIED = MetricName("PollTypeDenied", "resource_type", "poller")
# A 403-denied type asked again (every interval, or when the grant changes); reinstated 1 = polled again.
POLL_TYPE_REPROBED = MetricName("PollTypeReprobed", "resource_type", "poller")
POLL_TYPE_REINSTATED = MetricName("PollTypeReinstated", "resource_type", "poller")
# Opt-in (poll_plan detect_deletions): hard deletions a type's _history listed for a window; not delivered.
POLL_DELETIONS_SEEN = MetricName("PollDeletionsSeen", "resource_type", "poller")
# ADT-fed roster identifiers (per-patient vendors): resolved to a Patient id, not resolved this step, and
# the gauge of entries that keep failing (pending ≥ 1 h after several attempts): the alarm's metric.
POLL_ROSTER_RESOLVED = MetricName("PollRosterResolved", "resource_type", "poller")
POLL_ROSTER_UNRESOLVED = MetricName("PollRosterUnresolved", "resource_type", "poller")
POLL_ROSTER_STUCK = MetricName("PollRosterStuck", "resource_type", "poller")
POLL_STALENESS_RATIO = MetricName("PollStalenessRatio", "resource_type", "poller")  # written by the dispatcher

# ---- MLLP bridge (names from ehrbridge.mllp.metrics; the bridge is the emitter) -----------------------
MLLP_ACKS = MetricName("MllpAcks", "message_type", "bridge_counter")  # message_type = ACK code
MLLP_MESSAGES = MetricName("MllpMessages", "message_type", "bridge_counter")
MLLP_DUPLICATES = MetricName("MllpDuplicates", "message_type", "bridge_counter")
MLLP_COMMIT_FAILED = MetricName("MllpCommitFailed", "message_type", "bridge_counter")
MLLP_ACK_STORE_FAILED = MetricName("MllpAckStoreFailed", "message_type", "bridge_counter")
MLLP_QUARANTINED = MetricName("MllpQuarantined", None, "bridge_counter")
MLLP_CONNECTIONS_OPENED = MetricName("MllpConnectionsOpened", None, "bridge_counter")
MLLP_CONNECTIONS_REFUSED = MetricName("MllpConnectionsRefused", "message_type", "bridge_counter")
MLLP_TLS_HANDSHAKE_FAILED = MetricName("MllpTlsHandshakeFailed", "message_type", "bridge_counter")
MLLP_FRAMING_ERRORS = MetricName("MllpFramingErrors", "message_type", "bridge_counter")
MLLP_ACK_LATENCY = MetricName("MllpAckLatency", None, "bridge_latency")
MLLP_CERT_DAYS_TO_EXPIRY = MetricName("MllpCertDaysToExpiry", None, "bridge_gauge")

ALL: tuple[MetricName, ...] = (*(v for v in dict(globals()).values() if isinstance(v, MetricName)),
                               *(v for v in POLL_CALL_OUTCOMES.values() if v is not POLL_CALL_401))
BY_NAME: dict[str, MetricName] = {metric.name: metric for metric in ALL}

# ACK codes the bridge sends (MSH-18 style: original and enhanced acknowledgment modes).
ACK_CODES_OK = ("AA", "CA")
ACK_CODES_NACK = ("AE", "AR", "CE", "CR")

# ---- quarantine reasons ------------------------------------------------------------------------------
_REASON_PREFIXES = ("unsupported message type", "unparseable HL7", "invalid FHIR", "mapping failed",
                    "tenant is not configured")


def reason_class(reason: str) -> str:
    """A low-cardinality label for a reason (metric dimension values must not explode)."""
    head = reason.split(":")[0].strip()
    for prefix in _REASON_PREFIXES:
        if head.startswith(prefix):
            return prefix
    return head.split(" ")[0][:40] or "other"


def quarantine_reason(stage: str, reasons: list[str] | tuple[str, ...]) -> str:
    """The ``reason`` dimension of ``Quarantined``: the stage and the class of the first reason."""
    return f"{stage}:{reason_class(reasons[0]) if reasons else 'other'}"


__all__ = ["ALL", "BY_NAME", "NAMESPACE", "POLL_DIMENSIONS", "POLL_OUTCOMES", "SECONDARY_DIMENSIONS",
           "MetricName", "quarantine_reason",
           "reason_class"]
