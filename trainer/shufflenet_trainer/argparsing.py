"""The argparse base of the package's command lines (shufflenet-train, snjob)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["StrictParser"]


class StrictParser(argparse.ArgumentParser):
    """argparse whose error for unknown words shows each word quoted.

    argparse joins the words it does not know with spaces; quoted, an empty or blank word is
    still seen in the error line. Subclasses decide what `error` does with the line.
    """

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(map(repr, extra))}")
        return ns
