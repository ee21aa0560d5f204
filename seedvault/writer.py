"""Writing one backup: key object first, then streamed data objects, then the manifest as commit marker.

The stream of each object goes source -> compressor -> chunk sealer -> SHA-256 -> storage writer, in
pieces of at most one chunk, so memory stays flat whatever the size. Each step's time is measured, so
the caller (CLI, Prefect artifact) can report where the seconds went.

If the writer is left by an exception, every object it wrote is deleted again (best effort); if the
process dies instead, nothing is deleted but no manifest exists either, so the backup is never listed,
and ``seedvault cleanup`` removes the leftovers after the grace period.

A cleanup (or prune) that runs with too short a grace can remove the objects of a backup that is still
being written; so just before the manifest is written, the writer checks (one HEAD per object) that its
key object and every data object are still stored with the sizes it wrote. If one is gone it does not
commit: it removes what is left and raises :class:`~seedvault.errors.ObjectVanished`, instead of
listing a backup that cannot be read.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, BinaryIO

import seedvault
from seedvault import audit, faults, leases, storagecost
from seedvault.crypto.keys import new_data_key
from seedvault.errors import (
    FormatError,
    IntegrityError,
    ObjectNotFound,
    ObjectVanished,
    SeedvaultError,
    TransientStorageError,
)
from seedvault.format import layout
from seedvault.format import manifest as mf
from seedvault.format.chunk import DEFAULT_CHUNK, ChunkSealer
from seedvault.stream.compress import compressor
from seedvault.stream.pipe import Pipe, PipeBroken

if TYPE_CHECKING:
    from seedvault.repository import Repository

READ_SIZE = 1024 * 1024
_VANISHED_HINT = (
    "a concurrent 'seedvault cleanup' (or prune) probably removed it: give cleanup a --grace longer than"
    " the longest running backup, then run the backup again"
)
log = logging.getLogger(__name__)


@dataclass
class StepTimes:
    """Seconds spent per step, summed over the stream (source read, compress, encrypt, hash, upload)."""

    read: float = 0.0
    compress: float = 0.0
    encrypt: float = 0.0
    hash: float = 0.0
    upload: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.__dict__.items()}


@dataclass
class ObjectStats:
    name: str
    raw_size: int = 0
    compressed_size: int = 0
    stored_size: int = 0
    sha256: str = ""
    chunks: int = 0
    seconds: float = 0.0
    times: StepTimes = field(default_factory=StepTimes)

    def manifest_entry(self) -> dict:
        return {
            "name": self.name,
            "raw_size": self.raw_size,
            "compressed_size": self.compressed_size,
            "stored_size": self.stored_size,
            "sha256": self.sha256,
            "chunks": self.chunks,
        }


class ObjectPlan:
    """The four streaming stages of one data object, to run concurrently joined by bounded pipes.

    ``read(reader, out)`` -> ``compress(inp, out)`` -> ``encrypt(inp, out)`` -> ``upload(inp)``.
    The CLI runs them as threads (:meth:`run`); the Prefect layer submits each as a task with the same
    functions. Each stage measures its own bytes and seconds. If any stage fails, the pipes carry the
    failure to every other stage, the storage writer is aborted and the object never becomes visible;
    a retry must start a new plan (fresh pipes, fresh salt), never resume one.
    """

    def __init__(self, backup: BackupWriter, name: str) -> None:
        self.backup = backup
        self.name = name
        self.stats = ObjectStats(name)
        self._compressor = compressor(backup.compression, level=backup.level, threads=backup.threads)
        self._sealer = ChunkSealer(
            backup.data_key, backup.backup_id, name, compression=backup.compression, chunk_size=backup.chunk_size
        )
        self._started = time.perf_counter()
        self.done = False

    def pipes(self) -> tuple[Pipe, Pipe, Pipe]:
        return Pipe(name=f"{self.name}:raw"), Pipe(name=f"{self.name}:compressed"), Pipe(name=f"{self.name}:sealed")

    def read(self, reader: BinaryIO, out: Pipe, progress: Callable[[int], None] | None = None) -> int:
        """Source stage: pull pieces from a file-like object (a dump's stdout, stdin, a file)."""
        t = self.stats.times
        with _stage(None, out):
            while True:
                t0 = time.perf_counter()
                data = reader.read(READ_SIZE)
                t.read += time.perf_counter() - t0
                if not data:
                    break
                out.put(data)
                self.stats.raw_size += len(data)
                if progress:
                    progress(len(data))
            out.close()
        return self.stats.raw_size

    def compress(self, inp: Pipe, out: Pipe) -> int:
        t = self.stats.times
        with _stage(inp, out):
            for data in inp:
                t0 = time.perf_counter()
                packed = self._compressor.feed(data)
                t.compress += time.perf_counter() - t0
                if packed:
                    out.put(packed)
                    self.stats.compressed_size += len(packed)
            t0 = time.perf_counter()
            tail = self._compressor.finish()
            t.compress += time.perf_counter() - t0
            if tail:
                out.put(tail)
                self.stats.compressed_size += len(tail)
            out.close()
        return self.stats.compressed_size

    def encrypt(self, inp: Pipe, out: Pipe) -> int:
        t = self.stats.times
        with _stage(inp, out):
            for data in inp:
                t0 = time.perf_counter()
                pieces = self._sealer.feed(data)
                t.encrypt += time.perf_counter() - t0
                for piece in pieces:
                    out.put(piece)
            t0 = time.perf_counter()
            pieces = self._sealer.finish()
            t.encrypt += time.perf_counter() - t0
            for piece in pieces:
                out.put(piece)
            out.close()
        self.stats.chunks = self._sealer.chunks
        return self.stats.chunks

    def upload(self, inp: Pipe) -> ObjectStats:
        """Sink stage: SHA-256 over the stored bytes, write to storage, commit only after a clean end."""
        t = self.stats.times
        sha = hashlib.sha256()
        key = layout.data_key(self.backup.backup_id, self.name)
        sink = self.backup.repo.storage.open_write(key, options=self.backup.write_options)
        announced = False
        try:
            with _stage(inp, None):
                for piece in inp:
                    t0 = time.perf_counter()
                    sha.update(piece)
                    t1 = time.perf_counter()
                    sink.write(piece)
                    t.hash += t1 - t0
                    t.upload += time.perf_counter() - t1
                    self.stats.stored_size += len(piece)
                    if not announced and self.stats.stored_size > 2 * self.backup.chunk_size:
                        announced = True
                        faults.reached("data-streaming")
                t0 = time.perf_counter()
                sink.commit()
                t.upload += time.perf_counter() - t0
        except (ObjectNotFound, ObjectVanished) as exc:
            # The unfinished write itself disappeared (a temp file or multipart upload a cleanup removed).
            sink.abort()
            raise ObjectVanished(
                f"backup {self.backup.backup_id}: object {sink.key} disappeared while it was being written"
                f" ({exc.one_line()})",
                hint=_VANISHED_HINT,
            ) from exc
        except BaseException:
            sink.abort()
            raise
        self.stats.sha256 = sha.hexdigest()
        self.stats.seconds = time.perf_counter() - self._started
        return self.stats

    def run(self, reader: BinaryIO, progress: Callable[[int], None] | None = None) -> ObjectStats:
        """Run all four stages: reading in this thread, the others in threads of their own."""
        raw, packed, sealed = self.pipes()
        errors: list[BaseException] = []

        def guard(fn: Callable[..., object], *args: object) -> None:
            try:
                fn(*args)
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=guard, args=(self.compress, raw, packed), name=f"compress-{self.name}"),
            threading.Thread(target=guard, args=(self.encrypt, packed, sealed), name=f"encrypt-{self.name}"),
            threading.Thread(target=guard, args=(self.upload, sealed), name=f"upload-{self.name}"),
        ]
        for th in threads:
            th.start()
        try:
            self.read(reader, raw, progress)
        except BaseException as exc:
            errors.insert(0, exc)
        for th in threads:
            th.join()
        if errors:
            raise root_cause(errors)
        return self.backup.finish_object(self)


@contextlib.contextmanager
def _stage(inp: Pipe | None, out: Pipe | None) -> Iterator[None]:
    """Propagate a stage's failure both ways along its pipes."""
    try:
        yield
    except BaseException as exc:
        if inp is not None:
            inp.abandon(exc)
        if out is not None:
            out.fail(exc)
        raise


def root_cause(errors: list[BaseException]) -> BaseException:
    """Of the errors the stages raised, the one that started it (not the PipeBroken echoes)."""
    for exc in errors:
        if not isinstance(exc, PipeBroken):
            return exc
    first = errors[0]
    while isinstance(first, PipeBroken) and first.__cause__ is not None:
        first = first.__cause__
    return first


class BackupWriter:
    """Context manager writing one backup; commits (writes the manifest) only on a clean exit."""

    def __init__(
        self,
        repo: Repository,
        *,
        kind: str,
        labels: dict[str, str] | None = None,
        source: dict | None = None,
        parent: str | None = None,
        compression: str = "zstd",
        level: int = 3,
        threads: int = 0,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        self.repo = repo
        self.kind = kind
        self.labels = dict(labels or {})
        self.source = dict(source or {})
        self.parent = parent
        self.compression, self.level, self.threads, self.chunk_size = compression, level, threads, chunk_size
        compressor(compression, level=level, threads=threads)  # validate settings before touching storage
        self.backup_id = layout.new_backup_id()
        self.started = _now()
        # Storage class and Object Lock of the data objects and the manifest (not the key objects: deletable).
        self.write_options = storagecost.policy_of(repo.storage).backup(kind, self.labels, datetime.now(UTC))
        self.objects: list[ObjectStats] = []
        self.committed = False
        self._audited = False  # its one backup event (ok or failed) was recorded
        self.body: dict | None = None
        config = repo.config(create=True)
        self.master = repo.master
        self.data_key = new_data_key()
        self._kdf = config.get("kdf") if self.master.kind == "passphrase" else None
        # The lease comes before the first object: cleanup lists objects before leases (seedvault.leases).
        self._lease = leases.shared(repo, f"backup {kind}", [self.backup_id], reader=False)
        weakref.finalize(self, self._lease.release)  # a writer dropped without commit/abandon stops refreshing
        try:
            repo.write_key_object(self.backup_id, self.data_key, self.master)
        except BaseException:
            self._lease.release()
            raise
        self._key_object = layout.key_object(self.backup_id, self.master.key_id)
        faults.reached("key-object-written")

    def __enter__(self) -> BackupWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abandon(exc)

    def plan_object(self, name: str) -> ObjectPlan:
        """Prepare the streaming stages of a new data object (see :class:`ObjectPlan`)."""
        if not layout.OBJECT_NAME_RE.match(name) or any(o.name == name for o in self.objects):
            raise FormatError(f"invalid or duplicate object name {name!r}")
        return ObjectPlan(self, name)

    def finish_object(self, plan: ObjectPlan) -> ObjectStats:
        """Record a fully uploaded object (all four stages finished) for the manifest."""
        if plan.done or not plan.stats.sha256:
            raise FormatError(f"object {plan.name} is not completely uploaded")
        plan.done = True
        self.objects.append(plan.stats)
        return plan.stats

    def write_object(
        self, name: str, reader: BinaryIO, *, progress: Callable[[int], None] | None = None
    ) -> ObjectStats:
        """Stream everything ``reader`` yields into object ``name``."""
        return self.plan_object(name).run(reader, progress)

    def manifest_body(self) -> dict:
        master = self.master
        return {
            "format": mf.FORMAT,
            "version": mf.VERSION,
            "id": self.backup_id,
            "kind": self.kind,
            "labels": self.labels,
            "source": self.source,
            "parent": self.parent,
            "started": self.started,
            "finished": _now(),
            "tool": {"name": "seedvault", "version": seedvault.__version__},
            "cipher": "aes-256-gcm",
            "chunk_size": self.chunk_size,
            "compression": {
                "name": self.compression,
                "level": self.level if self.compression == "zstd" else None,
            },
            "key": {
                "key_id": master.key_id,
                "kind": master.kind,
                "kdf": self._kdf,
                "wrap": "aes-256-gcm",
                "key_objects": layout.keys_prefix(self.backup_id),
            },
            "features": [],
            "objects": [o.manifest_entry() for o in self.objects],
            "raw_size": sum(o.raw_size for o in self.objects),
            "compressed_size": sum(o.compressed_size for o in self.objects),
            "stored_size": sum(o.stored_size for o in self.objects),
            **storagecost.manifest_fields(self.write_options),
        }

    def commit(self) -> dict:
        """Write the manifest: from now on the backup is complete and listed."""
        if not self.objects:
            raise FormatError("a backup needs at least one object")
        faults.reached("data-complete")
        self._confirm_objects()
        body = self.manifest_body()
        data = mf.seal(body, self.data_key)
        writer = self.repo.storage.open_write(layout.manifest_key(self.backup_id), options=self.write_options)
        try:
            half = len(data) // 2
            writer.write(data[:half])
            faults.reached("manifest-writing")
            writer.write(data[half:])
            writer.commit()
        except BaseException as exc:
            writer.abort()
            if not isinstance(exc, SeedvaultError) or not self._landed(data, exc):
                raise
            log.warning("backup %s: the manifest write reported %s, but the manifest is stored intact", self.backup_id,
                        exc.one_line())  # fmt: skip
        self.committed = True
        self.body = body
        self._index(body)
        self._lease.release()
        faults.reached("committed")
        self._audit("ok")
        return body

    def _index(self, body: dict) -> None:
        """Append the catalog entry (seedvault.catalog), still under the lease; never fails the committed backup."""
        from seedvault import catalog

        catalog.record(self.repo, body)

    def _audit(self, result: str, error: BaseException | None = None) -> None:
        """One ``backup`` event: committed (ok) or abandoned (failed, with the error's line when known)."""
        if self._audited:
            return
        self._audited = True
        details = {"kind": self.kind, "label": self.labels.get("name"), "objects": len(self.objects),
                   "raw_size": sum(o.raw_size for o in self.objects),
                   "stored_size": sum(o.stored_size for o in self.objects)}  # fmt: skip
        if result != "ok":
            details["error"] = audit.error_line(error) if error is not None else "abandoned"
        audit.record(self.repo, "backup", backup_ids=[self.backup_id], result=result, details=details)

    def _confirm_objects(self) -> None:
        """Before the commit: are the key object and every data object still stored, at the sizes written?

        Why: a cleanup or prune that runs while this backup is written (a grace shorter than the backup)
        removes its objects; a manifest written after that lists a backup that cannot be read. One HEAD
        per object. If one is gone (or the check itself fails) nothing is committed, what is left is
        removed and :class:`ObjectVanished` (or the check's error) is raised.
        """
        expected: list[tuple[str, int | None]] = [(self._key_object, None)]
        expected += [(layout.data_key(self.backup_id, o.name), o.stored_size) for o in self.objects]
        for key, size in expected:
            try:
                info = self.repo.storage.head(key)
            except ObjectNotFound:
                problem = "is gone"
            except BaseException:
                self.abandon()
                raise
            else:
                if (size is None and info.size > 0) or info.size == size:
                    continue
                problem = f"has {info.size} bytes, not the {size} written" if size is not None else "is empty"
            self.abandon()
            raise ObjectVanished(
                f"backup {self.backup_id}: its object {key} {problem} before the commit; the backup was not"
                " committed and what was left of it is removed",
                hint=_VANISHED_HINT,
            )

    def _landed(self, data: bytes, failure: SeedvaultError) -> bool:
        """After a failed manifest write: is the manifest stored anyway (the answer was lost, not the write)?

        Why: a PUT can reach the storage while every answer to it fails; the backup is then listed although
        the write "failed". One outcome must hold: True (stored intact: the backup is committed) or, after
        removing every trace of it, False; if neither can be established, a :class:`TransientStorageError`
        that says the backup may be listed and what to do.
        """
        key = layout.manifest_key(self.backup_id)
        try:
            stored = self.repo.storage.get_bytes(key)
        except ObjectNotFound:
            self.abandon()
            return False
        except SeedvaultError as check:
            unknown = check
        else:
            if stored == data:
                return True
            unknown = IntegrityError(f"another manifest is stored under {key}")
        try:
            self._remove()
        except SeedvaultError:
            raise TransientStorageError(
                f"backup {self.backup_id}: writing its manifest failed ({failure.one_line()}) and whether it was"
                f" stored could not be checked ({unknown.one_line()})",
                hint=f"it may be listed: run 'seedvault verify {self.backup_id}' and delete it if it fails",
            ) from None
        return False

    def abandon(self, error: BaseException | None = None) -> None:
        """Remove what this writer stored (best effort; cleanup catches the rest), the manifest first."""
        if self.committed:
            return
        with contextlib.suppress(SeedvaultError):
            self._remove()
        self._lease.release()
        self._audit("failed", error)

    def _remove(self) -> None:
        """Delete every trace of this backup, the manifest first (unlisted at once); raises on failure."""
        self.repo.storage.delete([layout.manifest_key(self.backup_id)])
        self.repo.delete_leftovers(self.backup_id)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
