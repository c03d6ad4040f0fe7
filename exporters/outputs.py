"""Output folders of the export stage: create the missing ones, and remove them again on failure.

``vitcompress.io.check_writable_dir`` creates every missing parent of an output; when the export
fails afterwards, a path such as ``newdir/sub/m.onnx`` would leave the empty folders ``newdir/sub``
behind. ``created_dirs`` records which folders it created and removes them (deepest first, only
while they are empty) when the block it guards raises.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from vitcompress.io import check_writable_dir


def make_dirs(folder: str | os.PathLike) -> list[Path]:
    """Create ``folder`` and its missing parents and check that it is writable
    (``check_writable_dir``, which raises ``VitCompressError``); return the folders this call
    created, outermost first. Where the check fails, those folders are removed again."""
    folder = Path(folder)
    missing = []
    p = folder
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    missing.reverse()
    try:
        check_writable_dir(folder)
    except BaseException:
        remove_empty(missing)
        raise
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (outermost first, as ``make_dirs`` returns them) from the deepest up,
    stopping at the first one that is not empty: a folder that holds anything stays."""
    for d in reversed(folders):
        try:
            d.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty (so its parents are not either), or not ours to remove
            break


@contextlib.contextmanager
def created_dirs(folder: str | os.PathLike) -> Iterator[list[Path]]:
    """``make_dirs(folder)``; if the block raises, the folders it created are removed where empty."""
    made = make_dirs(folder)
    try:
        yield made
    except BaseException:
        remove_empty(made)
        raise
