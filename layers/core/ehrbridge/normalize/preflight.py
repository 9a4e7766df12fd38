"""Go-live preflight: run a sender's de-identified samples through normalization and report.

Per message type: counts (ok / quarantined), segments mapped vs unmapped, fields not mapped,
invalid and repaired codes, time values that needed the configured zone (no offset sent) and
DST gaps, identifier/code systems without a URI mapping, quarantine reasons. JSON for machines,
HTML (inline SVG charts, no scripts, no external assets) for people. The report holds counts and
codes only, never message content.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ehrbridge.contracts.tenant import TenantConfig
from ehrbridge.hl7.message import split_messages
from ehrbridge.normalize.engine import NormalizeResult, normalize_hl7


@dataclass
class TypeStats:
    messages: int = 0
    ok: int = 0
    quarantined: int = 0
    segments: Counter[str] = field(default_factory=Counter)
    unmapped: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    repairs: Counter[str] = field(default_factory=Counter)
    invalid_codes: Counter[str] = field(default_factory=Counter)
    issues: Counter[str] = field(default_factory=Counter)
    zone_applied: int = 0
    zone_gaps: int = 0
    fields_mapped: int = 0
    unmapped_systems: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        unmapped_segments = {k: v for k, v in self.unmapped.items() if "-" not in k}
        unmapped_fields = {k: v for k, v in self.unmapped.items() if "-" in k}
        mapped_segments = sum(self.segments.values()) - sum(
            v for k, v in unmapped_segments.items() if k in self.segments)
        return {"messages": self.messages, "ok": self.ok, "quarantined": self.quarantined,
                "segments_total": sum(self.segments.values()), "segments_mapped": mapped_segments,
                "fields_mapped": self.fields_mapped, "fields_unmapped": sum(unmapped_fields.values()),
                "unmapped_segments": dict(sorted(unmapped_segments.items())),
                "unmapped_fields": dict(sorted(unmapped_fields.items())),
                "quarantine_reasons": dict(self.reasons.most_common()),
                "repairs": dict(self.repairs.most_common()), "invalid_codes": dict(self.invalid_codes.most_common()),
                "issues": dict(self.issues.most_common()),
                "times_without_offset": self.zone_applied, "times_in_dst_gap": self.zone_gaps,
                "systems_without_uri": dict(self.unmapped_systems.most_common())}


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(x for x in p.rglob("*") if x.is_file()
                              and x.suffix.lower() in (".hl7", ".txt", ".er7")))
        else:
            out.append(p)
    return out


def normalize_file(path: Path, tenant: TenantConfig) -> list[NormalizeResult]:
    """One result per message in the file (a batch/file gives several; .json is vendor FHIR).

    Never raises for a file's content, and never returns nothing: an empty (or whitespace-only) file is
    one quarantined result ("empty input"), so no input is passed over silently; one bad file never
    stops a preflight of many.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        return [NormalizeResult("quarantined", kind="UNREADABLE", reasons=[f"cannot read file: {err.strerror}"])]
    if not data.strip():
        return [NormalizeResult("quarantined", kind="EMPTY", reasons=["empty input"])]
    try:
        if path.suffix.lower() == ".json":
            from ehrbridge.normalize.fhir_input import normalize_fhir

            return [normalize_fhir(data, tenant)]
        return [normalize_hl7(message, tenant) for message in split_messages(data)] or [
            NormalizeResult("quarantined", kind="EMPTY", reasons=["empty input"])]
    except Exception as err:  # the last guard, as in normalize_hl7: report, never abort the run
        return [NormalizeResult("quarantined", reasons=[f"mapping failed: {type(err).__name__} (please report)"])]


def run(paths: Iterable[Path], tenant: TenantConfig) -> dict[str, Any]:
    by_type: dict[str, TypeStats] = defaultdict(TypeStats)
    files = _files(paths)
    for path in files:
        for result in normalize_file(path, tenant):
            add(by_type, result)
    total = TypeStats()
    for stats in by_type.values():
        total.messages += stats.messages
        total.ok += stats.ok
        total.quarantined += stats.quarantined
    from ehrbridge.terminology.conceptmap import concept_maps

    maps = concept_maps(tenant.tenant_id, tenant.code_maps)
    return {"tenant_id": tenant.tenant_id, "timezone": tenant.timezone, "files": len(files),
            "concept_maps": {m["url"]: len(m["group"][0]["element"]) for m in maps},
            "messages": total.messages, "ok": total.ok, "quarantined": total.quarantined,
            "by_type": {k: v.to_json() for k, v in sorted(by_type.items())}}


def add(by_type: dict[str, TypeStats], result: NormalizeResult) -> None:
    stats = by_type[result.kind]
    stats.messages += 1
    if result.ok:
        stats.ok += 1
    else:
        stats.quarantined += 1
        stats.reasons.update(result.reasons)
    stats.segments.update(result.segments)
    for item in result.unmapped:
        name, _, count = item.partition(" x")
        stats.unmapped[name] += int(count) if count.isdigit() else 1
    for r in result.repairs:
        stats.repairs[f"{r['kind']}: {r['detail']}"] += 1
    for i in result.issues:
        if i["code"] == "invalid-code":
            stats.invalid_codes[f"{i['where']}: {i.get('detail', '')}"] += 1
        else:
            stats.issues[f"{i['code']} ({i['where']})"] += 1
    stats.zone_applied += result.zone_applied
    stats.zone_gaps += result.zone_gaps
    stats.fields_mapped += result.fields_mapped
    stats.unmapped_systems.update(result.unmapped_systems)


# ------------------------------------------------------------------ HTML
def _bar_chart(title: str, data: dict[str, int], color: str = "#3b6ea5", limit: int = 15) -> str:
    items = sorted(data.items(), key=lambda kv: -kv[1])[:limit]
    if not items:
        return f"<h4>{html.escape(title)}</h4><p class='none'>none</p>"
    width, bar_h, label_w = 720, 18, 260
    top = max(v for _, v in items) or 1
    rows = []
    for i, (label, value) in enumerate(items):
        y = i * (bar_h + 6)
        w = max(2, int((width - label_w - 60) * value / top))
        rows.append(f"<text x='0' y='{y + 13}' font-size='12'>{html.escape(label[:40])}</text>"
                    f"<rect x='{label_w}' y='{y}' width='{w}' height='{bar_h}' fill='{color}'/>"
                    f"<text x='{label_w + w + 6}' y='{y + 13}' font-size='12'>{value}</text>")
    height = len(items) * (bar_h + 6)
    return (f"<h4>{html.escape(title)}</h4><svg role='img' aria-label='{html.escape(title)}' width='{width}' "
            f"height='{height}' xmlns='http://www.w3.org/2000/svg'>{''.join(rows)}</svg>")


def _table(data: dict[str, int]) -> str:
    if not data:
        return "<p class='none'>none</p>"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in data.items())
    return f"<table><tr><th>item</th><th>count</th></tr>{rows}</table>"


def to_html(report: dict[str, Any]) -> str:
    overview = {k: v["messages"] for k, v in report["by_type"].items()}
    quarantined = {k: v["quarantined"] for k, v in report["by_type"].items() if v["quarantined"]}
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>ehrbridge preflight</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}.none{color:#888}"
        ".ok{color:#2a7d2a}.bad{color:#b03030}section{border-top:2px solid #ddd;margin-top:2em}</style></head><body>",
        f"<h1>Go-live preflight: {html.escape(report['tenant_id'])}</h1>",
        f"<p>{report['files']} files, {report['messages']} messages: <span class='ok'>{report['ok']} ok</span>, "
        f"<span class='bad'>{report['quarantined']} quarantined</span>. Sender zone for times without offset: "
        f"{html.escape(report['timezone'])}.</p>",
        _bar_chart("Messages per type", overview),
        _bar_chart("Quarantined per type", quarantined, "#b03030"),
    ]
    for kind, stats in report["by_type"].items():
        parts.append(f"<section><h2>{html.escape(kind)}</h2><p>{stats['messages']} messages, {stats['ok']} ok, "
                     f"{stats['quarantined']} quarantined; segments mapped {stats['segments_mapped']} of "
                     f"{stats['segments_total']}; times without offset {stats['times_without_offset']}, "
                     f"in a DST gap {stats['times_in_dst_gap']}.</p>")
        parts.append(_bar_chart("Mapped vs unmapped segments", {
            "mapped": stats["segments_mapped"],
            "unmapped": stats["segments_total"] - stats["segments_mapped"]}, "#5a9a5a"))
        parts.append(_bar_chart("Mapped vs unmapped fields", {
            "mapped": stats["fields_mapped"], "unmapped": stats["fields_unmapped"]}, "#5a9a5a"))
        parts.append(_bar_chart("Unmapped fields (top 15)", stats["unmapped_fields"], "#c08a2a"))
        for title, key in (("Quarantine reasons", "quarantine_reasons"), ("Unmapped segments", "unmapped_segments"),
                           ("Invalid codes", "invalid_codes"), ("Repairs", "repairs"), ("Other issues", "issues"),
                           ("Identifier/code systems without a URI mapping", "systems_without_uri")):
            parts.append(f"<h4>{title}</h4>{_table(stats[key])}")
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)


def write_html(report: dict[str, Any], out: Path) -> None:
    out.write_text(to_html(report), encoding="utf-8")
