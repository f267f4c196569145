"""Hypothesis strategies: mutations of the example manifests (manifests/examples/*.yaml).

One mutated job is an example manifest with 1-3 changes: a field set to a value of any type
(huge and negative numbers, NaN, unicode and overlong strings, lists, mappings), a field
removed, an unknown field added, another volume source, podTemplate overrides, another name.
Fields are taken from the example itself and from the CRD schema, so optional fields the
examples leave out are mutated too. Both fuzz tiers (the operator's decision path in unit
tests, the real API server in tests/k8s) draw from here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from shufflenet_contract import crd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES: dict[str, dict[str, Any]] = {
    p.stem: yaml.safe_load(p.read_text())
    for p in sorted((ROOT / "manifests/examples").glob("*.yaml"))
}

Path_ = tuple[str, ...]


def _schema_paths(schema: dict[str, Any], prefix: Path_, depth: int) -> Iterator[Path_]:
    for key, sub in (schema.get("properties") or {}).items():
        path = (*prefix, key)
        yield path
        if depth > 1 and isinstance(sub, dict):
            yield from _schema_paths(sub, path, depth - 1)


def _manifest_paths(value: Any, prefix: Path_) -> Iterator[Path_]:
    if isinstance(value, dict):
        for key, sub in value.items():
            path = (*prefix, str(key))
            yield path
            yield from _manifest_paths(sub, path)


def _paths() -> list[Path_]:
    spec = crd.SCHEMA["properties"]["spec"]
    found = set(_schema_paths(spec, ("spec",), 3))
    for manifest in EXAMPLES.values():
        found.update(_manifest_paths(manifest, ()))
    return sorted(found)


PATHS = _paths()
# Where an unknown field can go: every mapping of the examples.
MAPPINGS = sorted(
    {p for m in EXAMPLES.values() for p in _manifest_paths(m, ()) if p[:1] in (("spec",),)}
    | {("spec",), ("metadata",)}
)

HUGE = [0, -1, 1, 2**31, 2**31 - 1, 2**53 + 1, 2**63 - 1, -(2**63), 10**30, 65536, 7201]
NAMES = [
    "",
    "a",
    "A-upper",
    "-leading",
    "trailing-",
    "dots.in.name",
    "x" * 53,
    "x" * 54,
    "x" * 64,
    "x" * 300,
    "ünïcødé",
    "名前",
    "job\n2",
    "rank-0",
]


def values(*, json_safe: bool) -> st.SearchStrategy[Any]:
    """Values of any type a hand-written YAML field could hold, with its edge cases."""
    floats = st.floats(allow_nan=not json_safe, allow_infinity=not json_safe)
    scalars = st.one_of(
        st.integers(),
        st.sampled_from(HUGE),
        floats,
        st.text(max_size=12),
        st.text(min_size=64, max_size=300),
        st.sampled_from(NAMES),
        st.booleans(),
        st.none(),
    )
    return st.one_of(
        scalars,
        st.lists(scalars, max_size=3),
        st.dictionaries(st.text(max_size=8), scalars, max_size=3),
    )


def _volumes() -> st.SearchStrategy[Any]:
    text = st.one_of(st.text(max_size=20), st.sampled_from(NAMES))
    return st.one_of(
        st.builds(lambda n: {"persistentVolumeClaim": {"claimName": n}}, text),
        st.builds(lambda n: {"persistentVolumeClaim": {"claimName": n, "readOnly": "yes"}}, text),
        st.builds(lambda p: {"hostPath": {"path": p}}, text),
        st.just({"emptyDir": {}}),
        st.just({"emptyDir": {"sizeLimit": "lots"}}),
        st.just({}),
        st.just({"nfs": {"server": "127.0.0.1", "path": "/x"}, "emptyDir": {}}),
        st.dictionaries(
            st.text(max_size=10), st.dictionaries(st.text(max_size=5), text), max_size=2
        ),
    )


def _pod_templates(json_safe: bool) -> st.SearchStrategy[Any]:
    text = st.one_of(st.text(max_size=20), st.sampled_from(NAMES))
    env = st.lists(
        st.fixed_dictionaries({"name": text, "value": st.one_of(text, st.integers())}), max_size=2
    )
    container = st.fixed_dictionaries(
        {"name": st.sampled_from(["trainer", "sidecar", "", "Trainer"])},
        optional={
            "env": env,
            "image": text,
            "resources": st.fixed_dictionaries(
                {
                    "limits": st.dictionaries(
                        st.sampled_from(["cpu", "memory", "huawei.com/npu"]), text
                    )
                }
            ),
        },
    )
    spec = st.fixed_dictionaries(
        {},
        optional={
            "containers": st.lists(container, max_size=2),
            "nodeSelector": st.dictionaries(text, text, max_size=2),
            "tolerations": st.lists(
                st.fixed_dictionaries({"key": text, "operator": text}), max_size=2
            ),
            "hostNetwork": st.one_of(st.booleans(), text),
            "priority": st.one_of(st.integers(), text),
            "volumes": st.lists(st.fixed_dictionaries({"name": text}), max_size=2),
            "restartPolicy": st.sampled_from(["Always", "Never", "OnFailure", "Sometimes"]),
        },
    )
    return st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "metadata": st.fixed_dictionaries(
                    {}, optional={"labels": st.dictionaries(text, text, max_size=2)}
                ),
                "spec": spec,
            },
        ),
        values(json_safe=json_safe),
    )


@dataclass(frozen=True)
class Mutation:
    kind: str  # set, delete, extra
    path: Path_
    value: Any = None

    def describe(self) -> str:
        where = ".".join(self.path)
        return f"{self.kind} {where}" + ("" if self.kind == "delete" else f" = {self.value!r:.60}")


def _mutation(json_safe: bool) -> st.SearchStrategy[Mutation]:
    data, ckpt = ("spec", "data", "volume"), ("spec", "checkpoint", "volume")
    return st.one_of(
        st.builds(Mutation, st.just("set"), st.sampled_from(PATHS), values(json_safe=json_safe)),
        st.builds(Mutation, st.just("delete"), st.sampled_from(PATHS)),
        st.builds(
            lambda parent, key, value: Mutation("extra", (*parent, key), value),
            st.sampled_from(MAPPINGS),
            st.text(min_size=1, max_size=12),
            values(json_safe=json_safe),
        ),
        st.builds(Mutation, st.just("set"), st.sampled_from([data, ckpt]), _volumes()),
        st.builds(
            Mutation, st.just("set"), st.just(("spec", "podTemplate")), _pod_templates(json_safe)
        ),
        st.builds(Mutation, st.just("set"), st.just(("metadata", "name")), st.sampled_from(NAMES)),
    )


def apply(manifest: dict[str, Any], mutation: Mutation) -> dict[str, Any]:
    """The manifest with the mutation applied (a path under a non-mapping is left alone)."""
    out = copy.deepcopy(manifest)
    node: Any = out
    for key in mutation.path[:-1]:
        if not isinstance(node, dict):
            return out
        node = node.setdefault(key, {}) if mutation.kind != "delete" else node.get(key)
    if not isinstance(node, dict):
        return out
    if mutation.kind == "delete":
        node.pop(mutation.path[-1], None)
    else:
        node[mutation.path[-1]] = copy.deepcopy(mutation.value)
    return out


@dataclass(frozen=True)
class Case:
    example: str
    mutations: tuple[Mutation, ...]
    manifest: dict[str, Any]

    def describe(self) -> str:
        return f"{self.example}: " + "; ".join(m.describe() for m in self.mutations)


@st.composite
def cases(draw: st.DrawFn, *, json_safe: bool = False) -> Case:
    example = draw(st.sampled_from(sorted(EXAMPLES)))
    mutations = tuple(draw(st.lists(_mutation(json_safe), min_size=1, max_size=3)))
    manifest = EXAMPLES[example]
    for m in mutations:
        manifest = apply(manifest, m)
    return Case(example, mutations, manifest)


def finite(value: Any) -> bool:
    """No NaN or infinity anywhere (JSON, and so the API server, has neither)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return True
