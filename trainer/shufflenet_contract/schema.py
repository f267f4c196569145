"""Validate and default an object against a Kubernetes structural (OpenAPI v3) schema.

Covers the subset that CRD schemas use: type, nullable, properties, required,
additionalProperties, items, enum, minimum/maximum (with exclusive*), minLength/maxLength,
pattern, minItems, default and x-kubernetes-preserve-unknown-fields. Defaults are applied
as the API server does: a missing property with a `default` gets a copy of it, and the
defaults inside that copy apply too.

Unlike the API server, which silently prunes unknown fields, an unknown field is an error
here (as `kubectl apply --validate=strict` makes it): a typo such as `devices.cout` should
not quietly fall back to a default. The first error is reported as one line naming the
field path, e.g. `spec.devices.count: must be >= 1`.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


class SchemaError(ValueError):
    """The object does not fit the schema; `path` is the dotted path of the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '(root)'}: {message}")
        self.path = path


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def _check_type(value: Any, schema: dict[str, Any], path: str) -> None:
    kind = schema.get("type")
    if kind is None:
        return
    ok = isinstance(value, _TYPES[kind])
    # bool is an int in Python but never an integer/number in JSON.
    if kind in ("integer", "number") and isinstance(value, bool):
        ok = False
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        ok = True
    if not ok:
        raise SchemaError(
            path, f"must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {_show(value)}"
        )


def _check_bounds(value: Any, schema: dict[str, Any], path: str) -> None:
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(
            path, f"{_show(value)} is not one of {', '.join(map(str, schema['enum']))}"
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            lo = schema["minimum"]
            if schema.get("exclusiveMinimum") and not value > lo:
                raise SchemaError(path, f"must be > {lo}")
            if value < lo:
                raise SchemaError(path, f"must be >= {lo}")
        if "maximum" in schema:
            hi = schema["maximum"]
            if schema.get("exclusiveMaximum") and not value < hi:
                raise SchemaError(path, f"must be < {hi}")
            if value > hi:
                raise SchemaError(path, f"must be <= {hi}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise SchemaError(path, f"must have at least {schema['minLength']} character(s)")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise SchemaError(path, f"must have at most {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise SchemaError(path, f"{value!r} does not match {schema['pattern']}")
    if isinstance(value, list) and len(value) < schema.get("minItems", 0):
        raise SchemaError(path, f"must have at least {schema['minItems']} item(s)")


def apply(value: Any, schema: dict[str, Any], path: str = "") -> Any:
    """A defaulted copy of `value`; SchemaError names the first field that does not fit."""
    if value is None:
        if schema.get("nullable"):
            return None
        raise SchemaError(path, "must not be null")
    _check_type(value, schema, path)
    _check_bounds(value, schema, path)
    if isinstance(value, dict) and schema.get("type") == "object":
        return _apply_object(value, schema, path)
    if isinstance(value, list) and "items" in schema:
        return [apply(v, schema["items"], _join(path, i)) for i, v in enumerate(value)]
    return copy.deepcopy(value)


def _apply_object(value: dict[str, Any], schema: dict[str, Any], path: str) -> dict[str, Any]:
    props: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
    out: dict[str, Any] = {}
    for key, item in value.items():
        sub = _join(path, key)
        if key in props:
            out[key] = apply(item, props[key], sub)
        elif isinstance(extra, dict):
            out[key] = apply(item, extra, sub)
        elif preserve or extra is True or (not props and extra is None):
            out[key] = copy.deepcopy(item)
        else:
            known = ", ".join(props)
            raise SchemaError(sub, f"unknown field (known here: {known})")
    for key, sub_schema in props.items():
        if key not in out and "default" in sub_schema:
            out[key] = apply(copy.deepcopy(sub_schema["default"]), sub_schema, _join(path, key))
    for key in schema.get("required", []):
        if key not in out:
            raise SchemaError(_join(path, key), "is required")
    return out
