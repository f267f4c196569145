"""Write-then-rename: a file is either its old complete self or its new complete self."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], *, previous: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it replaces `path`.

    The new content is fsynced before the rename and the folder after it. With `previous`,
    the old file is moved there first, so that two generations exist and at every moment one
    of them is complete. On any failure the temporary file is removed and `path` is intact.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp, os.O_RDONLY)
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # Makes the rename itself durable; not every file system allows opening a folder.
    with contextlib.suppress(OSError):
        _fsync(path.parent, os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
