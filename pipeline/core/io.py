"""Atomic file output: write to a temporary sibling, then rename, so a crash or a failed
check never leaves a half-written artifact for DVC to cache."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import PipelineError


class OutputError(PipelineError, OSError):
    """An output could not be written (full disk, read-only folder); the old file is intact."""


TMP_MARK = ".tmp-"  # temporaries are named .<stem>.tmp-<random><suffix>, beside their target


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it onto `path` only on success.

    A failed write (full disk, no permission) raises OutputError naming the file, and
    leaves the previous `path`, if any, untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}{TMP_MARK}", suffix=path.suffix, dir=path.parent)
    except OSError as e:
        raise output_error(path, e) from e
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as e:
        raise output_error(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def output_error(path: Path, e: BaseException) -> OutputError:
    why = getattr(e, "strerror", None) or str(e).splitlines()[0]
    kept = "the previous file is unchanged" if path.exists() else "nothing was written"
    return OutputError(f"could not write {path}: {why}; {kept}. Free disk space or fix the folder's permissions")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Deletes temporaries this project left behind in `folder` (a run killed mid-write)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and TMP_MARK in p.name and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Like atomic_path for a folder: built aside, swapped in whole on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256(path: str | Path) -> str:
    return _digest(path, hashlib.sha256())


def md5(path: str | Path) -> str:
    """The hash DVC records for a file (dvc.lock, `dvc exp show`), to tie a result to its model."""
    return _digest(path, hashlib.md5())


def _digest(path: str | Path, digest) -> str:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[None]:
    """Holds an exclusive lock on `<path>.lock` (a sibling), or fails at once naming the
    process that holds it: two writers of one output must not race."""
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise PipelineError(f"{path} is being written by {holder}; wait for it to finish, or stop it") from None
        f.seek(0)
        f.truncate()
        f.write(f"{what} (pid {os.getpid()})")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
