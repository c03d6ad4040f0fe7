"""Atomic output: write to a temporary sibling, then rename, so a failure leaves nothing half-written."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import VitCompressError


def check_writable_dir(parent: Path) -> None:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VitCompressError(
            f"cannot create output folder {str(parent)!r}: {e.strerror}; choose a writable path"
        ) from None
    if not os.access(parent, os.W_OK):
        raise VitCompressError(f"output folder {str(parent)!r} is not writable; choose a writable path")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one atomic rename (or swap).

    An existing ``path`` is refused unless ``force``; on any exception the temporary folder is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    if path.exists() and not force:
        raise VitCompressError(
            f"output {str(path)!r} already exists; pass force=True to overwrite it or choose another path",
            params=["force"],
        )
    if path.exists() and not path.is_dir():
        raise VitCompressError(f"output {str(path)!r} is a file, not a folder; choose another path")
    check_writable_dir(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders; outputs are ordinary folders
    try:
        yield tmp
        if path.exists():
            if exchange(tmp, path):  # one atomic swap: ``path`` is never missing
                shutil.rmtree(tmp, ignore_errors=True)
            else:  # no renameat2: two renames; ``recover_dir`` undoes a crash between them
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.rename(path, old / "x")
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def recover_dir(path: str | os.PathLike) -> bool:
    """Put back an output folder that a crash left moved aside by ``atomic_dir``'s two-rename path.

    Returns True when ``path`` was missing and its previous version was restored."""
    path = Path(path)
    if path.exists() or not path.parent.is_dir():
        return False
    olds = sorted(path.parent.glob(f".{path.name}.old-*/x"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    os.rename(olds[-1], path)
    shutil.rmtree(olds[-1].parent, ignore_errors=True)
    return True


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    if path.exists() and not force:
        raise VitCompressError(
            f"output {str(path)!r} already exists; pass force=True to overwrite it", params=["force"]
        )
    check_writable_dir(path.parent)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp makes 0600 files; outputs are ordinary files
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
