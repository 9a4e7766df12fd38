"""What the fuzz targets saw: counts per target and the worst cases (PHI-free: sizes and counts only)."""

from __future__ import annotations

from typing import Any

FIGURES: dict[str, dict[str, Any]] = {}


def count(target: str, name: str, value: int = 1) -> None:
    figures = FIGURES.setdefault(target, {})
    figures[name] = figures.get(name, 0) + value


def maximum(target: str, name: str, value: float, **context: Any) -> None:
    figures = FIGURES.setdefault(target, {})
    best = figures.get(name)
    if best is None or value > best["value"]:
        figures[name] = {"value": value, **context}


def merge(into: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]]) -> None:
    for target, figures in other.items():
        mine = into.setdefault(target, {})
        for name, value in figures.items():
            if isinstance(value, dict):
                if name not in mine or value["value"] > mine[name]["value"]:
                    mine[name] = value
            else:
                mine[name] = mine.get(name, 0) + value


def report(figures: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for target in sorted(figures):
        parts = []
        for name, value in sorted(figures[target].items()):
            if isinstance(value, dict):
                extra = ", ".join(f"{k}={v}" for k, v in value.items() if k != "value")
                parts.append(f"{name}={value['value']}" + (f" ({extra})" if extra else ""))
            else:
                parts.append(f"{name}={value}")
        lines.append(f"{target}: " + "; ".join(parts))
    return lines
