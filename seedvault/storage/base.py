"""The storage interface every driver implements, and the rules for object names.

Drivers are deliberately dumb blob stores: they know nothing about encryption, chunks or manifests.
Their contract (checked for every driver by ``tests/contract/test_storage.py``):

* ``open_write(key)`` returns a writer. Bytes written are invisible under ``key`` until ``commit()``;
  ``abort()`` (or leaving the ``with`` block by an exception) leaves nothing visible. With
  ``overwrite=False`` (the default, used for every immutable object) an existing object is never
  replaced and :class:`~seedvault.errors.ObjectExists` is raised instead.
* ``open_read(key)`` returns a readable binary stream or raises ``ObjectNotFound``.
* ``list(prefix, start_after=None)`` yields :class:`ObjectInfo` sorted by key and never shows temporary or
  in-progress names; with ``start_after`` only keys greater than it (S3's ``StartAfter``: an index that knows
  the newest key it has seen lists only what came since, one request instead of a page per 1,000 objects).
* ``delete(keys)`` ignores keys that are already gone.
* ``open_write(key, options=WriteOptions(...))`` may ask for a storage class and an Object Lock retention
  (:class:`WriteOptions`); drivers without either ignore the class and refuse a lock (never a silent
  unlocked write); ``retention(key)`` says which lock an object carries. ``list`` reports each object's
  storage class where the driver has one (S3's ListObjectsV2 does, at no extra request).
* ``list_partial()`` shows what interrupted writers left behind (temporary files, unfinished multipart
  uploads) with their start time, so ``cleanup`` can remove those older than a grace period;
  ``partial_activity()`` says when one was last written to (a multipart upload still receiving parts).

Native errors are translated to the :mod:`seedvault.errors` storage family, the original chained.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, BinaryIO

from seedvault.errors import StorageError

if TYPE_CHECKING:
    from seedvault.storagecost import WritePolicy

_URL_HEAD = re.compile(r"\A[A-Za-z][A-Za-z0-9+.-]*:?/+")


def redact_url(url: str) -> str:
    """``url`` fit for a message: no user-info, query or fragment, even when the URL is mistyped.

    ``http://KEY:SECRET@host`` parses, but ``http//KEY:SECRET@host`` (a missing colon) does not, and a parser
    then sees no user-info to drop: so everything after the scheme up to the *last* ``@`` goes, whatever the
    shape (``http//***@host``), and so does everything from ``?`` or ``#``.
    """
    head = _URL_HEAD.match(url)
    start = head.end() if head else 0
    rest = url[start:].split("?", 1)[0].split("#", 1)[0]
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return url[:start] + rest


_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*(/[A-Za-z0-9][A-Za-z0-9._=-]*)*$")
TEMP_MARKER = ".tmp."


def validate_key(key: str) -> str:
    """Reject names that could escape a prefix or collide with temporary names, before any driver runs."""
    if not _KEY_RE.fullmatch(key) or ".." in key.split("/") or TEMP_MARKER in key or len(key) > 900:
        raise StorageError(f"invalid object name {key!r}")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime
    storage_class: str | None = None  # S3's StorageClass from the listing; None where storage has none


@dataclass(frozen=True)
class ObjectLock:
    """An S3 Object Lock retention: ``mode`` is ``GOVERNANCE`` or ``COMPLIANCE``, ``retain_until`` tz-aware UTC."""

    mode: str
    retain_until: datetime


@dataclass(frozen=True)
class WriteOptions:
    """How one object is stored: its storage class (None: the driver's default) and an optional lock."""

    storage_class: str | None = None
    lock: ObjectLock | None = None


@dataclass(frozen=True)
class PartialWrite:
    """Something an interrupted writer left behind: a temporary file or an unfinished multipart upload."""

    key: str
    started: datetime
    handle: str  # driver-specific: a temp path or an upload id


@dataclass(frozen=True)
class Capabilities:
    atomic_no_overwrite: bool
    range_reads: bool
    multipart: bool


class ObjectWriter(ABC):
    """A streaming writer for one object; use as a context manager (commit on success, abort on error)."""

    key: str
    bytes_written: int = 0

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None: ...

    @abstractmethod
    def commit(self) -> ObjectInfo: ...

    @abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Storage(ABC):
    """A flat namespace of immutable objects addressed by '/'-separated keys."""

    url: str
    capabilities: Capabilities

    # Set by open_storage from the settings (seedvault.storagecost.WritePolicy); the writers of backups and WAL
    # ask it which WriteOptions an object gets. The driver itself never reads it.
    write_policy: WritePolicy | None = None

    @abstractmethod
    def open_write(self, key: str, *, overwrite: bool = False, options: WriteOptions | None = None) -> ObjectWriter: ...

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO: ...

    @abstractmethod
    def head(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]: ...

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None: ...

    @abstractmethod
    def list_partial(self, prefix: str = "") -> Iterator[PartialWrite]: ...

    @abstractmethod
    def abort_partial(self, partial: PartialWrite) -> None: ...

    def partial_activity(self, partial: PartialWrite) -> datetime:
        """When ``partial`` was last written to (a running writer keeps this young); its start if unknown.

        ``cleanup`` asks only about partial writes older than its grace. Local temporary files report their
        modification time as ``started`` already; S3 overrides this with the newest part's time.
        """
        return partial.started

    def check(self) -> None:
        """Fail fast with a clear error when the storage is unreachable or unusable."""
        list(self.list("seedvault-probe-nothing-here/"))

    def retention(self, key: str) -> tuple[str, datetime] | None:
        """The Object Lock (mode, retain-until) ``key`` carries, or None (drivers without Object Lock: always).

        For objects no manifest describes (WAL): prune asks before deleting one.
        """
        self.head(key)  # a missing object is ObjectNotFound, as on S3
        return None

    def put_bytes(
        self, key: str, data: bytes, *, overwrite: bool = False, options: WriteOptions | None = None
    ) -> ObjectInfo:
        writer = self.open_write(key, overwrite=overwrite, options=options)
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        return writer.commit()

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        from seedvault.errors import ObjectNotFound

        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; drivers without any keep the default."""
