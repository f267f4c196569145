"""Console progress: a live bar on a terminal, plain log lines everywhere else.

Jobs on Kubernetes write to a pipe that `kubectl logs` collects, where carriage-return bars
turn into noise; a person at a terminal wants one line that moves. The choice is made once,
from whether the stream is a TTY.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

BAR_WIDTH = 24
# Redraw the bar at most this often: writing to a terminal every step costs throughput.
MIN_REDRAW_SECONDS = 0.1


class Progress:
    """Shows per-step progress and prints whole lines; safe to use with or without a TTY."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self._bar_shown = False
        self._last_draw = 0.0
        self._suffix = ""

    def line(self, text: str) -> None:
        """Print a whole line (clearing a bar that is showing)."""
        self._clear_bar()
        self.stream.write(text + "\n")
        self.stream.flush()

    def step_line(self, text: str, bar_text: str | None = None) -> None:
        """A print-step line: a plain line without a TTY; with one, the bar shows `bar_text`."""
        if self.tty:
            self._suffix = text if bar_text is None else bar_text
            self._last_draw = 0.0  # show fresh figures at once
        else:
            self.line(text)

    def advance(self, label: str, done: int, total: int) -> None:
        """Move the bar; does nothing without a TTY."""
        if not self.tty:
            return
        now = time.monotonic()
        if done < total and now - self._last_draw < MIN_REDRAW_SECONDS:
            return
        self._last_draw = now
        filled = BAR_WIDTH * done // max(1, total)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        text = f"{label} [{bar}] {done}/{total} {self._suffix}"
        # A line longer than the terminal wraps, and "\r" then redraws only its last part.
        width = shutil.get_terminal_size((120, 24)).columns - 1
        self.stream.write("\r\033[K" + text[:width])
        self.stream.flush()
        self._bar_shown = True

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.stream.write("\r\033[K")
            self._bar_shown = False
            self._suffix = ""
