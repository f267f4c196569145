"""Errors that end a run with a documented exit code.

The operator reads the exit code to decide whether a failed rank is worth a restart:
configuration and data errors are permanent, anything >= 128 is retryable. The codes are
the contract's (`shufflenet_contract.exitcodes`), which the operator reads too.
"""

from shufflenet_contract.exitcodes import EXIT_CONFIG, EXIT_DATA, EXIT_DIST, EXIT_SIGTERM

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DATA",
    "EXIT_DIST",
    "EXIT_SIGTERM",
    "ConfigError",
    "DataError",
    "DistributedError",
    "TrainerError",
    "first_line",
    "one_line",
]

# An error line stays readable whatever the user passed: a 3,000-character value or a list
# of every flag an abbreviation could mean is cut, a control character is escaped. The
# limits leave room for the longest messages of their own (a path, then how to fix it).
WORD_LIMIT = 200
LINE_LIMIT = 800


def first_line(exc: BaseException, limit: int | None = None, *, with_type: bool = True) -> str:
    """The first line of an exception's message for a one-line error, cut to `limit` chars.

    With `with_type`, prefixed by the exception's type name ("OSError: ..."; the bare name
    when the message is empty).
    """
    lines = str(exc).strip().splitlines()
    head = lines[0] if lines else ""
    if limit is not None and len(head) > limit:
        head = head[: limit - 3] + "..."
    if not with_type:
        return head
    return f"{type(exc).__name__}: {head}" if head else type(exc).__name__


def one_line(text: str) -> str:
    """`text` as one printable line of at most LINE_LIMIT characters: control characters
    (a newline or carriage return inside a value) escaped, words over WORD_LIMIT cut."""
    printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.strip())
    words = [
        w if len(w) <= WORD_LIMIT else f"{w[: WORD_LIMIT - 3]}..." for w in printable.split(" ")
    ]
    line = " ".join(words)
    return line if len(line) <= LINE_LIMIT else f"{line[: LINE_LIMIT - 3]}..."


class TrainerError(Exception):
    """A problem the user can fix; its message is one line naming the field and the fix."""

    exit_code = EXIT_CONFIG


class ConfigError(TrainerError):
    """Bad flags, an unknown arch, an impossible batch size, an unusable checkpoint."""

    exit_code = EXIT_CONFIG


class DataError(TrainerError):
    """A missing or empty data folder, a class without images, an unreadable image (strict)."""

    exit_code = EXIT_DATA


class DistributedError(TrainerError):
    """Peers lost or not reachable in time: retryable, the job restarts from its checkpoint."""

    exit_code = EXIT_DIST
