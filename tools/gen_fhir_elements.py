"""Generate ``ehrbridge/normalize/fhir_elements.py``: the element table of the R4B models, as data.

The normalizer's fast validator (``normalize/validate.py``) walks every element of a bundle without
importing ``fhir.resources`` (too heavy for the function's import budget). It needs, per FHIR type,
the allowed JSON element names, their type (a primitive kind or another FHIR type), whether they
repeat, which are required and which form a choice group (``value[x]``). This script reads that
from the ``fhir.resources`` R4B models and writes it as a Python literal; a unit test regenerates
it in memory and fails when the checked-in table differs (a new fhir.resources release).

    .venv/bin/python tools/gen_fhir_elements.py            # rewrite the module
    .venv/bin/python tools/gen_fhir_elements.py --check    # exit 1 when it is out of date
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from pprint import pformat
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "layers" / "core" / "ehrbridge" / "normalize" / "fhir_elements.py"
# Every resource type the normalizer emits (top level or contained) and the Bundle around them.
RESOURCES = ("Bundle", "Patient", "Encounter", "Observation", "DiagnosticReport", "ServiceRequest", "Specimen",
             "Immunization", "MedicationRequest", "AllergyIntolerance", "Condition", "Procedure", "Appointment",
             "DocumentReference", "Provenance", "PractitionerRole", "Organization")
PRIMITIVE_BY_PYTHON = {bool: "boolean"}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner annotation, repeats) from Optional[List[X]] / X | None / List[X]."""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation, many
            continue
        if origin in (list, typing.List):  # noqa: UP006
            many = True
            annotation = typing.get_args(annotation)[0]
            continue
        return annotation, many


def _kind(annotation: Any) -> tuple[str, Any]:
    """('primitive', name) or ('complex', model class) or ('resource', None)."""
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in typing.get_args(annotation)[1:]:
            name = getattr(meta, "__visit_name__", None)
            if name:
                return "primitive", name
        base = typing.get_args(annotation)[0]
        if getattr(base, "__name__", "") == "UUID":
            return "primitive", "uuid"
        raise ValueError(f"no FHIR primitive in {annotation!r} ({base})")
    if annotation in PRIMITIVE_BY_PYTHON:
        return "primitive", PRIMITIVE_BY_PYTHON[annotation]
    klass = getattr(annotation, "_model_klass", None)
    if getattr(annotation, "__name__", "") == "ResourceType":
        return "resource", None
    if klass is None:
        raise ValueError(f"unknown annotation {annotation!r}")
    if isinstance(klass, str):
        import importlib

        module, _, cls = klass.rpartition(".")
        klass = getattr(importlib.import_module(module), cls)
    return "complex", klass


def build() -> dict[str, Any]:
    from fhir.resources.R4B import get_fhir_model_class

    elements: dict[str, dict[str, tuple[str, bool]]] = {}
    required: dict[str, tuple[str, ...]] = {}
    choices: dict[str, tuple[tuple[str, ...], ...]] = {}
    todo = [get_fhir_model_class(r) for r in RESOURCES]
    while todo:
        model = todo.pop()
        name = model.__name__
        if name in elements:
            continue
        spec: dict[str, tuple[str, bool]] = {}
        req: list[str] = []
        groups: dict[str, list[str]] = {}
        for field_name, info in model.model_fields.items():
            json_name = info.alias or field_name
            if json_name in ("fhir_comments", "resource_type"):
                continue  # not FHIR JSON; the normalizer never writes comments
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            inner, many = _unwrap(info.annotation)
            kind, target = _kind(inner)
            if kind == "primitive":
                spec[json_name] = (target, many)
            elif kind == "resource":
                spec[json_name] = ("Resource", many)
            else:
                spec[json_name] = (target.__name__, many)
                todo.append(target)
            if extra.get("element_required") or info.is_required():
                req.append(json_name)
            if extra.get("one_of_many"):
                group = groups.setdefault(str(extra["one_of_many"]), [str(bool(extra.get("one_of_many_required")))])
                group.append(json_name)
        elements[name] = spec
        if req:
            required[name] = tuple(req)
        if groups:
            # (required, names): at most one of the names; exactly one when required.
            choices[name] = tuple((g[0] == "True", tuple(g[1:])) for _, g in sorted(groups.items()))
    return {"ELEMENTS": dict(sorted(elements.items())), "REQUIRED": dict(sorted(required.items())),
            "CHOICES": dict(sorted(choices.items()))}


def render() -> str:
    import fhir.resources

    data = build()
    head = ('"""FHIR R4B element table for the fast validator (normalize/validate.py), generated from\n'
            f'fhir.resources {fhir.resources.__version__} by tools/gen_fhir_elements.py: do not edit.\n\n'
            "ELEMENTS[type][json name] = (primitive kind or FHIR type, repeats); REQUIRED[type] = required\n"
            "elements (min 1); CHOICES[type] = choice groups as (required, names): value[x] has at most one\n"
            'of the names, exactly one when required."""\n\n'
            "from __future__ import annotations\n\n"
            "from typing import Any\n\n")
    body = "".join(f"{key}: dict[str, Any] = {pformat(value, width=118, sort_dicts=True)}\n\n"
                   for key, value in data.items())
    return head + body.rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        return 0 if OUT.read_text(encoding="utf-8") == text else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
