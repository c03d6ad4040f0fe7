"""Safe output: atomic writes, one writer per output, no leftovers, ordinary file modes.

- ``atomic_dir`` / ``atomic_file``: write to a temporary sibling (``.NAME.tmp-XXXXXXXX``), then
  rename, so a failure or a kill leaves nothing half-written;
- ``output_lock``: an exclusive lock (``flock``) on ``.NAME.lock`` beside an output for a whole
  run, so a second writer of the same output fails in one line instead of silently replacing the
  first one's result; taking it removes the temporary siblings killed runs left behind;
- ``check_output_path``: refuses output paths that cannot be replaced safely (empty, the working
  folder or one of its ancestors);
- a write that fails for the disk (full, read-only, over quota; whether the writer raised
  ``OSError``, safetensors' ``SafetensorError`` or torch's ``RuntimeError``) is a one-line
  ``DiskError`` naming the output and the bytes needed where known, with nothing left behind;
- files and folders are created with the modes the umask gives (0644 and 0755 under umask 022),
  whatever the library that wrote them chose.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import VitCompressError

try:
    import fcntl
except ImportError:  # no flock (Windows): outputs are written atomically but not locked
    fcntl = None  # type: ignore[assignment]

_HELD: dict[str, int] = {}  # lock files this process holds -> nesting depth

#: the longest output name: the file system's 255 bytes less the temporary sibling's additions
MAX_NAME = 255 - len(".") - len(".tmp-XXXXXXXX")

#: errors of the disk a write can meet: full, over quota, read-only
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class DiskError(VitCompressError):
    """A write failed for the disk (``DISK_ERRNOS``): the output is named, nothing was left."""

    def __init__(self, path: str | os.PathLike, code: int, need: int | None = None):
        self.path, self.code, self.need = str(path), code, need
        needed = f" ({_size(need)} needed)" if need else ""
        super().__init__(
            f"cannot write {self.path!r}: {os.strerror(code)}{needed}; nothing was written, free space or "
            "choose a writable path"
        )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def disk_errno(e: BaseException) -> int | None:
    """The ``DISK_ERRNOS`` code of a failed write, whoever raised it (an ``OSError``, safetensors'
    ``SafetensorError`` with the OS error in its text, torch's ``RuntimeError`` from its zip
    writer); None for any other error."""
    if isinstance(e, DiskError):
        return e.code
    if isinstance(e, OSError):
        return e.errno if e.errno in DISK_ERRNOS else None
    if isinstance(e, VitCompressError) or not isinstance(e, Exception):
        return None
    text = str(e)
    m = re.search(r"\bcode: (\d+)", text)  # safetensors: IoError(Os { code: 28, kind: StorageFull, ... })
    if m and int(m.group(1)) in DISK_ERRNOS:
        return int(m.group(1))
    for code in DISK_ERRNOS:
        if os.strerror(code) in text:
            return code
    if "PytorchStreamWriter failed" in text or "inline_container.cc" in text:  # torch.save on a full disk
        return errno.ENOSPC
    return None


def disk_error(e: BaseException, path: str | os.PathLike, need: int | None = None) -> DiskError | None:
    """``e`` as a ``DiskError`` naming output ``path`` (an inner one keeps its bytes needed), or None."""
    code = disk_errno(e)
    if code is None:
        return None
    return DiskError(path, code, need if need is not None else getattr(e, "need", None))


def umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new output file: 0666 less the umask (0644 under umask 022)."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """Mode of a new output folder: 0777 less the umask (0755 under umask 022)."""
    return 0o777 & ~umask()


def normalise_modes(root: Path) -> None:
    """Give every file and folder under ``root`` (``root`` included) the umask's modes: writers such
    as ``mkstemp`` or safetensors create 0600 files, outputs are ordinary files."""
    fmode, dmode = file_mode(), dir_mode()
    if root.is_file():
        os.chmod(root, fmode)
        return
    os.chmod(root, dmode)
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(folder, d), dmode)
        for f in files:
            p = os.path.join(folder, f)
            if not os.path.islink(p):
                os.chmod(p, fmode)


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` as a ``Path``; a one-line error for a path no command may replace: an empty one, the
    working folder or any folder that contains it, the filesystem root."""
    if not str(path).strip():
        raise VitCompressError(f"{what} path is empty; pass a path such as runs/out")
    p = Path(path)
    name = os.fsencode(Path(os.path.abspath(p)).name)
    if len(name) > MAX_NAME:  # the lock and temporary siblings add to it: ``.NAME.tmp-XXXXXXXX``
        raise VitCompressError(
            f"{what} name {str(p.name)[:40]!r}... is {len(name)} bytes long, longer than the {MAX_NAME} an output "
            "name may have here; choose a shorter name"
        )
    cwd = Path(os.getcwd())
    for target, here in ((Path(os.path.abspath(p)), cwd), (Path(os.path.realpath(p)), Path(os.path.realpath(cwd)))):
        if target == here or target in here.parents or target.parent == target:
            raise VitCompressError(
                f"{what} {str(path)!r} is the working folder or contains it, and writing it would replace that "
                "folder; choose a new path such as ./out"
            )
    return p


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: ``.NAME.lock`` beside it."""
    p = Path(os.path.abspath(path))
    return p.parent / f".{p.name}.lock"


def _temp_re(name: str, kind: str) -> re.Pattern:
    """Names ``tempfile`` gives the temporary siblings of output ``name`` (``.NAME.tmp-XXXXXXXX``)."""
    return re.compile(rf"\.{re.escape(name)}\.{kind}-[a-z0-9_]{{8}}")


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings killed runs left for output ``path`` (``.NAME.tmp-*``, and
    ``.NAME.old-*`` where ``path`` itself exists, so nothing ``recover_dir`` could restore is lost).
    Call it holding ``path``'s lock: no live run is then writing them. Returns what was removed."""
    p = Path(os.path.abspath(path))
    if not p.parent.is_dir():
        return []
    kinds = ["tmp", "old"] if os.path.lexists(p) else ["tmp"]
    pats = [_temp_re(p.name, k) for k in kinds]
    removed = []
    for entry in p.parent.iterdir():
        if any(pat.fullmatch(entry.name) for pat in pats):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def missing_parents(folder: Path) -> list[Path]:
    out = []
    while not os.path.lexists(folder) and folder != folder.parent:
        out.append(folder)
        folder = folder.parent
    return out[::-1]


def remove_empty(folders: list[Path]) -> None:
    for d in reversed(folders):
        try:
            d.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            break


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Hold the exclusive lock of output ``path`` for the block (``flock`` on ``lock_path(path)``).

    A second process asking for the same output while the block runs gets a one-line
    ``VitCompressError``; the kernel releases the lock when the holder exits or is killed. The
    lock is re-entrant within a process. Taking it removes the stale temporary siblings of
    ``path`` (``remove_stale``). Missing parent folders are created, and removed again (where
    empty) on the way out, as is the lock file: the lock itself leaves nothing behind."""
    lock = lock_path(path)
    key = str(lock)
    if key in _HELD or fcntl is None:
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield lock
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    made = missing_parents(lock.parent)
    try:
        check_writable_dir(lock.parent)
    except BaseException:
        remove_empty(made)
        raise
    fd = _acquire(lock, path, what, made)
    _HELD[key] = 1
    try:
        remove_stale(path)
        yield lock
    finally:
        _release(lock, fd, key)
        remove_empty(made)


def _acquire(lock: Path, path, what: str, made: list[Path]) -> int:
    """Open and lock ``lock``; retried when a holder removed the file between our open and lock."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            remove_empty(made)
            raise VitCompressError(
                f"{what} {str(path)!r} is being written by another run{f' (process {holder})' if holder else ''}; "
                "wait for it to finish or choose another path"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        os.close(fd)  # the previous holder removed this file as we opened it: take the new one


def _release(lock: Path, fd: int, key: str) -> None:
    _HELD.pop(key, None)
    with contextlib.suppress(OSError):
        lock.unlink()  # while still holding it: a waiter that opened this file sees it is gone
    os.close(fd)


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
def atomic_dir(path: str | os.PathLike, force: bool = False, need: int | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one atomic rename (or swap).

    An existing ``path`` is refused unless ``force``; on any exception the temporary folder is
    removed and ``path`` is left as it was (a disk error becomes a ``DiskError`` naming ``path``
    and ``need``, the bytes the folder takes where the caller knows them).
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
    os.chmod(tmp, dir_mode())  # mkdtemp makes 0700 folders; outputs are ordinary folders
    try:
        yield tmp
        normalise_modes(tmp)
        if path.exists():
            if exchange(tmp, path):  # one atomic swap: ``path`` is never missing
                _remove(tmp)  # the old output, now at ``tmp`` (a symlink ``path`` was: the link itself)
            else:  # no renameat2: two renames; ``recover_dir`` undoes a crash between them
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.rename(path, old / "x")
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = disk_error(e, path, need)
        if err is not None:
            raise err from None
        raise


def _remove(path: Path) -> None:
    """Remove ``path``: a folder with its contents, a file or a symlink (never what it points at)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


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
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # mkstemp makes 0600 files; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        err = disk_error(e, path)
        if err is not None:
            raise err from None
        raise
