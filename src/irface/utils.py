"""Small helpers shared by several modules (atomic writes, output checks)."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from irface.errors import OutputError


# A full or failing disk: the body's own writes may raise these, and they are the storage's fault.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside `path` (ending in `suffix`), synced and renamed over `path` only if the
    block succeeds, the folder synced after the rename: for writers that take a path (exporters, RecordIO). The one place files are made
    atomically.

    A crash or an exception leaves either the old file or nothing, never half a file. A folder that
    cannot be created or written, or a full disk, raises `OutputError` (one line naming `path`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(f"{path}: cannot write here ({_reason(e)})", _reason(e)) from None
    # mkstemp makes the file 0600; give it the permissions an ordinary open() would (0666 - umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    body_done = False
    try:
        yield Path(tmp)
        body_done = True
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        sync_folder(path.parent)  # the rename itself is on disk only once the folder is
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and (body_done or e.errno in _STORAGE_ERRNOS):
            raise OutputError(f"{path}: could not write ({_reason(e)}); nothing was written there",
                              _reason(e)) from None
        raise


def _temporary_name(path: Path, suffix: str = ".tmp") -> re.Pattern:
    # mkstemp's names in `atomic_path`: "." + the file's name + "." + 8 characters of its alphabet + suffix.
    return re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}{re.escape(suffix)}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete what `atomic_path(path)` left beside `path` when its process was killed mid-write.

    Only that file's own temporary names are touched, nothing else in the folder. Call it where no
    other process can be writing `path` (a server starting on a gallery it alone writes). Returns the
    files removed.
    """
    path = Path(path)
    pattern = _temporary_name(path)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """`open(path, mode)` through `atomic_path`: the file appears whole when the block succeeds, or not at all."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def sync_folder(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in `folder` durable: its entry is on disk only once the folder is synced
    (best effort: some file systems cannot sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output file that cannot be written: `OutputError` naming it and why.

    Missing folders are fine (`atomic_write` creates them); a folder given as the file, a file in the
    way of a folder, or a folder without write permission is not.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot write here ({parent} is a file, not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write here ({parent} is not writable)")
    return path


def lazy_exports(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A package's module `__getattr__` (PEP 562) that imports each name from its submodule on first use,
    so the package's light modules (defaults the CLI reads) load without its heavy ones (torch, numpy).
    `homes` maps each exported name to its submodule (or to a module's full dotted name)."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        home = homes[name]
        return getattr(importlib.import_module(home if "." in home else f"{package}.{home}"), name)

    return __getattr__
