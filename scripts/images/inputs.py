"""What the image builds take from the repository, for scripts/images/build.sh.

    inputs.py requirements ROOT   # the wheelhouse's requirements, one a line
    inputs.py context ROOT        # the files the build context admits, one a line
    inputs.py blobs LAYOUT        # the blobs an OCI layout's index refers to, one a line

`requirements` reads pyproject.toml (the build backend's requirements, the base dependencies
and the `trainer` and `operator` extras) and constraints.txt, so the wheelhouse follows the
same single source of truth as `pip install .[trainer]`. `context` applies .dockerignore the
way Docker and buildah do (last matching pattern wins; a pattern also matches everything
below a matched directory), so the build script can key each image by exactly the files
the builder will see. `blobs` lists what an OCI image layout's images need (indexes,
manifests, configs, layers) as paths under the layout, so the import into containerd can
drop stale blobs and send only the ones containerd lacks.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import tomllib

EXTRAS = ("trainer", "operator")


def requirements(root: Path) -> list[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())
    reqs = list(project["build-system"]["requires"])
    reqs += project["project"].get("dependencies", [])
    for extra in EXTRAS:
        reqs += project["project"]["optional-dependencies"][extra]
    pins = [
        line.split("#")[0].strip() for line in (root / "constraints.txt").read_text().splitlines()
    ]
    return sorted(set(reqs)) + [p for p in pins if p]


def _pattern(text: str) -> re.Pattern[str]:
    # Go's filepath.Match plus Docker's `**` (any number of directories).
    out, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        elif text[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif text[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out + r"\Z")


def _rules(root: Path) -> list[tuple[bool, re.Pattern[str], str]]:
    rules = []
    ignore = root / ".dockerignore"
    for raw in ignore.read_text().splitlines() if ignore.exists() else []:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        text = os.path.normpath(line[1:] if negate else line).strip("/")
        rules.append((negate, _pattern(text), text))
    return rules


def _excluded(rel: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, pattern, _ in rules:
        if any(pattern.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def context(root: Path) -> list[str]:
    rules = _rules(root)
    negations = [text for negate, _, text in rules if negate]
    files = []
    for top, dirs, names in os.walk(root):
        rel_top = os.path.relpath(top, root)
        rel_top = "" if rel_top == "." else rel_top + "/"
        # Walk into an excluded directory only if a `!` pattern could bring back part of it.
        dirs[:] = sorted(
            d
            for d in dirs
            if not _excluded(rel_top + d, rules)
            or any(n.startswith(rel_top + d + "/") or "*" in n for n in negations)
        )
        files += [rel_top + n for n in names if not _excluded(rel_top + n, rules)]
    return sorted(files)


def blobs(layout: Path) -> list[str]:
    found: set[str] = set()
    todo = json.loads((layout / "index.json").read_text()).get("manifests", [])
    while todo:
        desc = todo.pop()
        digest = desc["digest"]
        if digest in found:
            continue
        found.add(digest)
        if desc.get("mediaType", "").endswith(("manifest.v1+json", "index.v1+json")):
            doc = json.loads((layout / "blobs" / digest.replace(":", "/")).read_text())
            todo += doc.get("manifests", []) + doc.get("layers", [])
            todo += [doc["config"]] if "config" in doc else []
    return sorted("blobs/" + d.replace(":", "/") for d in found)


COMMANDS = {"requirements": requirements, "context": context, "blobs": blobs}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in COMMANDS:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    lines = COMMANDS[argv[1]](Path(argv[2]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
