"""Local-directory storage: temporary name, fsync, atomic link/rename, fsync of the directory.

Files are created 0600 and directories 0700 (existing directories keep their mode): a repository holds
only ciphertext, but its names, sizes and times still say what is backed up and when.

Immutable objects are published with ``link(2)`` from the temporary file, which fails if the name exists,
so two writers can never replace each other's object (the no-overwrite rule is enforced by the kernel,
not by a racy existence check). Temporary files carry ``.tmp.`` in their name, are invisible to
``list`` and are reported by ``list_partial`` for ``cleanup``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from seedvault.errors import (
    ConfigError,
    ObjectExists,
    ObjectNotFound,
    PermissionDenied,
    StorageError,
    StorageUnreachable,
)
from seedvault.storage.base import (
    TEMP_MARKER,
    Capabilities,
    ObjectInfo,
    ObjectWriter,
    PartialWrite,
    Storage,
    WriteOptions,
    validate_key,
)

FILE_MODE = 0o600
DIR_MODE = 0o700


def _make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700; directories that exist keep their mode.

    Why not ``mkdir(parents=True, mode=...)``: it gives the mode to the last directory only, the parents get
    the umask's 0755, and a repository made by seedvault should not be listable by other local users.
    """
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not directory.is_dir():
                raise


def _all_before(directory: str, start_after: str) -> bool:
    """Whether every key below ``directory`` (ending in "/") sorts at or before ``start_after``."""
    return directory < start_after and not start_after.startswith(directory)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _translate(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOENT:
        return ObjectNotFound(f"object {what} not found")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"permission denied on {what}")
    if exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on device while writing {what}")
    return StorageError(f"local storage error on {what}: {exc.strerror or exc}")


class _LocalWriter(ObjectWriter):
    def __init__(self, storage: LocalStorage, key: str, overwrite: bool) -> None:
        self.key = key
        self._storage = storage
        self._final = storage._path(key)
        self._overwrite = overwrite
        try:
            _make_dirs(self._final.parent)
            self._tmp = self._final.parent / f"{TEMP_MARKER}{self._final.name}.{os.getpid()}.{secrets.token_hex(4)}"
            # 0600 from the start (the object is published by link(2), so it keeps this inode and its mode)
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            self._fh = os.fdopen(fd, "wb")
        except OSError as exc:
            raise _translate(exc, key) from exc
        self._done = False

    def write(self, data: bytes | memoryview) -> None:
        if self._done:
            raise StorageError(f"object {self.key} already committed or aborted")
        try:
            self._fh.write(data)
        except OSError as exc:
            self.abort()
            raise _translate(exc, self.key) from exc
        self.bytes_written += len(data)

    def commit(self) -> ObjectInfo:
        if self._done:
            raise StorageError(f"object {self.key} already committed or aborted")
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            if self._overwrite:
                os.replace(self._tmp, self._final)
            else:
                try:
                    os.link(self._tmp, self._final)
                except FileExistsError:
                    raise ObjectExists(f"object {self.key} already exists; seedvault never overwrites") from None
                os.unlink(self._tmp)
            _fsync_dir(self._final.parent)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise _translate(exc, self.key) from exc
            raise
        self._done = True
        st = self._final.stat()
        return ObjectInfo(self.key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class LocalStorage(Storage):
    """Objects as files below a root directory; keys map to relative paths."""

    capabilities = Capabilities(atomic_no_overwrite=True, range_reads=True, multipart=False)

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        if create:
            try:
                _make_dirs(self.root)
            except OSError as exc:
                raise StorageUnreachable(f"cannot create repository directory {self.root}: {exc.strerror}") from exc
        elif not self.root.is_dir():
            raise StorageUnreachable(f"repository directory {self.root} does not exist")

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def open_write(self, key: str, *, overwrite: bool = False, options: WriteOptions | None = None) -> ObjectWriter:
        """Storage classes mean nothing here (ignored); a lock is refused rather than silently not applied."""
        if options is not None and options.lock is not None:
            raise ConfigError(
                f"object_lock is {options.lock.mode.lower()}, but {self.url} cannot lock objects",
                hint='Object Lock needs an S3 bucket created with it; set object_lock = "off" for file:// repositories',
            )
        return _LocalWriter(self, key, overwrite)

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise _translate(exc, key) from exc

    def head(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except OSError as exc:
            raise _translate(exc, key) from exc
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def _walk(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, os.stat_result, bool]]:
        """Files below ``prefix`` (key, stat, temporary?); with ``start_after`` only keys after it are stat()ed.

        Why the pruning: the audit log lists its prefix from the newest event it knows (``start_after``) before
        every append; stat()ing every older event made each append cost O(events), a sweep of thousands of
        operations quadratic. Directories whose every key sorts before ``start_after`` are not entered.
        """
        base = str(self.root)
        # Start from the deepest existing directory of the prefix to avoid walking the whole tree.
        start_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / start_rel if start_rel else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, base)
            head = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            if start_after:
                dirnames[:] = [d for d in dirnames if not _all_before(f"{head}{d}/", start_after)]
            dirnames.sort()
            for name in filenames:
                rel = head + name
                if not rel.startswith(prefix) or (start_after is not None and rel <= start_after):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield rel, st, TEMP_MARKER in name

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        try:
            rows = [(rel, st) for rel, st, tmp in self._walk(prefix, start_after) if not tmp]
        except OSError as exc:
            raise _translate(exc, prefix or "/") from exc
        for rel, st in sorted(rows):
            yield ObjectInfo(rel, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self._path(key)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _translate(exc, key) from exc
            self._prune_dirs(path.parent)

    def _prune_dirs(self, directory: Path) -> None:
        """Remove directories left empty by a delete, up to the root (keeps listings tidy)."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def list_partial(self, prefix: str = "") -> Iterator[PartialWrite]:
        for rel, st, tmp in self._walk(""):
            if tmp:
                name = rel.rsplit("/", 1)[-1][len(TEMP_MARKER) :].rsplit(".", 2)[0]
                key = (rel.rsplit("/", 1)[0] + "/" + name) if "/" in rel else name
                if key.startswith(prefix):
                    yield PartialWrite(key, datetime.fromtimestamp(st.st_mtime, UTC), rel)

    def abort_partial(self, partial: PartialWrite) -> None:
        path = self.root / partial.handle
        try:
            path.unlink()
        except FileNotFoundError:
            return
        self._prune_dirs(path.parent)
