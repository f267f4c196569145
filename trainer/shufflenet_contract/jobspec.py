"""docs/job-spec.md, generated from the CRD's schema (`crd.SCHEMA`) and its descriptions.

The reference is the schema itself: types, defaults, allowed values and limits, and the
field descriptions that `kubectl explain` shows, so the two cannot drift apart; a test
checks the committed file against `render_markdown()` (`snjob render job-spec`, `make
manifests`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from . import crd

HEADER = (
    "<!-- Generated from trainer/shufflenet_contract/crd.py by `snjob render job-spec`\n"
    "     (or `make manifests`): edit the schema's descriptions there, not this file. -->\n"
)


def fields(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(dotted path, schema, required) of every field under `schema`, depth first."""
    required = set(schema.get("required") or [])
    for name, sub in (schema.get("properties") or {}).items():
        here = f"{path}.{name}"
        yield here, sub, name in required
        if sub.get("type") == "object":
            yield from fields(sub, here)
        elif sub.get("type") == "array" and (sub.get("items") or {}).get("properties"):
            yield from fields(sub["items"], here + "[]")


def _type(schema: dict[str, Any]) -> str:
    kind = str(schema.get("type", "object"))
    if kind == "array":
        return f"list of {_type(schema.get('items') or {})}"
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return "object (Kubernetes)"
    if "additionalProperties" in schema:
        return f"map of {_type(schema['additionalProperties'])}"
    return kind + (", nullable" if schema.get("nullable") else "")


def _limits(schema: dict[str, Any], required: bool) -> str:
    parts = ["required"] if required else []
    if "enum" in schema:
        parts.append(", ".join(f"`{v}`" for v in schema["enum"]))
    for key, word in (("minimum", ">"), ("maximum", "<")):
        if key in schema:
            exclusive = schema.get("exclusive" + key[0].upper() + key[1:])
            parts.append(f"{word}{'' if exclusive else '='} {schema[key]}")
    if "minLength" in schema:
        length = schema["minLength"]
        parts.append("not empty" if length == 1 else f"length >= {length}")
    if "format" in schema:
        parts.append(str(schema["format"]))
    return "; ".join(parts)


def _default(schema: dict[str, Any]) -> str:
    if "default" not in schema or schema["default"] == {}:
        return ""
    return f"`{json.dumps(schema['default'])}`"


def _table(schema: dict[str, Any], root: str) -> list[str]:
    lines = [
        "| field | type | default | allowed | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for path, sub, required in fields(schema, root):
        description = str(sub.get("description", "")).replace("|", "\\|")
        row = [f"`{path}`", _type(sub), _default(sub), _limits(sub, required), description]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def render_markdown() -> str:
    """The job spec reference as committed in docs/job-spec.md."""
    columns = ", ".join(c["name"] for c in crd.PRINTER_COLUMNS if not c.get("priority"))
    wide = ", ".join(c["name"] for c in crd.PRINTER_COLUMNS if c.get("priority"))
    lines = [
        HEADER,
        f"# {crd.KIND} reference",
        "",
        f"`apiVersion: {crd.API_VERSION}`, `kind: {crd.KIND}`, plural `{crd.PLURAL}`, short "
        f"names {', '.join(f'`{n}`' for n in crd.SHORT_NAMES)}. `kubectl get snjob` shows "
        f"{columns}; `-o wide` adds {wide}. Examples: `manifests/examples/`; what the "
        "operator makes of a job: "
        "[operator.md](operator.md).",
        "",
        "A default applies when the field is absent; objects with defaults inside are filled "
        "in even when absent. `snjob run-local` validates against the same schema, with the "
        "same defaults, and also refuses fields the schema does not know.",
        "",
        "## spec",
        "",
        *_table(crd.SPEC, "spec"),
        "",
        "## status",
        "",
        "Written by the operator only.",
        "",
        *_table(crd.STATUS, "status"),
        "",
    ]
    return "\n".join(lines)
