"""``put`` and ``get``: protect any byte stream, and restore it to a writer or a file.

``get`` to a file writes a temporary name in the same directory and renames it only after the whole
object authenticated and matched its manifest digest, so a failed ``get`` leaves no file behind. To a
pipe, only authenticated chunks are ever written, but a failure part-way leaves a prefix; the exit code
says so and the error names the backup.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, TypeVar

from seedvault import audit
from seedvault.config import Settings
from seedvault.errors import StorageError, UsageError
from seedvault.repository import Repository
from seedvault.writer import ObjectStats

DATA_OBJECT = "data"
T = TypeVar("T")

STREAM_ZSTD_LEVEL = 3  # generic streams: no producer-speed limit to keep up with


def put(
    repo: Repository,
    reader: BinaryIO,
    settings: Settings,
    *,
    label: str,
    labels: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict, ObjectStats]:
    """Store one stream as a backup of kind ``put``; returns the manifest body and the object's stats."""
    with repo.begin(
        kind="put",
        labels={"name": label, **(labels or {})},
        source={"type": "stream"},
        compression=settings.compression,
        level=settings.zstd_level_for(STREAM_ZSTD_LEVEL),
        threads=settings.zstd_threads,
        chunk_size=settings.chunk_size,
    ) as backup:
        stats = backup.write_object(DATA_OBJECT, reader, progress=progress)
    assert backup.body is not None
    return backup.body, stats


def get(
    repo: Repository,
    backup_id: str,
    out: BinaryIO | Path,
    *,
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Restore one object of a backup (the only one, or ``name``); returns the bytes written (audited: get)."""
    with audit.audited(repo, "get", [backup_id]) as ev:
        written = _get(repo, backup_id, out, name=name, progress=progress)
        ev.details.update(object=name, raw_bytes=written)
    return written


def _get(
    repo: Repository, backup_id: str, out: BinaryIO | Path, *, name: str | None, progress: Callable[[int], None] | None
) -> int:
    data_key = repo.data_key(backup_id)
    body = repo.manifest(backup_id, data_key)
    names = [o["name"] for o in body["objects"]]
    if name is None:
        if len(names) != 1:
            raise UsageError(f"backup {backup_id} has objects {', '.join(names)}: name one with --object")
        name = names[0]
    pieces = repo.read_object(backup_id, name, body=body, data_key=data_key, progress=progress)
    if isinstance(out, Path):
        return _write_file(out, pieces)
    written = 0
    for piece in pieces:
        out.write(piece)
        written += len(piece)
    out.flush()
    return written


def _write_file(path: Path, pieces: Iterable[bytes]) -> int:
    def fill(fh: BinaryIO) -> int:
        written = 0
        for piece in pieces:
            fh.write(piece)
            written += len(piece)
        return written

    return write_atomically(path, fill)


def write_atomically(path: Path, fill: Callable[[BinaryIO], T]) -> T:
    """Create ``path`` only if ``fill`` succeeds: temporary name in the same directory, fsync, rename."""
    path = path.absolute()
    tmp = path.parent / f".{path.name}.seedvault-{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb") as fh:
            result = fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        _unlink(tmp)
        raise
    return result


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
