"""Writing a file so that a kill or a concurrent writer never leaves a torn one.

`replace_atomically` writes to a unique temporary file beside the target, then renames it over
the target (`os.replace`, atomic on one file system): a reader sees the old file or the new one,
and concurrent writers each write their own temporary file; the last rename wins.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import IO


def replace_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Writes `path` through `write(binary_file)`; nothing is left behind if `write` raises."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as f:
        try:
            write(f)
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, path)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """`path` holds `text` (UTF-8), written by `replace_atomically`."""
    replace_atomically(path, lambda f: f.write(text.encode()))
