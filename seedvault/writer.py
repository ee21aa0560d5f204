"""Writing one backup: key object first, then streamed data objects, then the manifest as commit marker.

The stream of each object goes source -> compressor -> chunk sealer -> SHA-256 -> storage writer, in
pieces of at most one chunk, so memory stays flat whatever the size. Each step's time is measured, so
the caller (CLI, Prefect artifact) can report where the seconds went.

If the writer is left by an exception, every object it wrote is deleted again (best effort); if the
process dies instead, nothing is deleted but no manifest exists either, so the backup is never listed,
and ``seedvault cleanup`` removes the leftovers after the grace period.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, BinaryIO

import seedvault
from seedvault import faults
from seedvault.crypto.keys import new_data_key
from seedvault.errors import FormatError, SeedvaultError
from seedvault.format import layout
from seedvault.format import manifest as mf
from seedvault.format.chunk import DEFAULT_CHUNK, ChunkSealer
from seedvault.stream.compress import compressor

if TYPE_CHECKING:
    from seedvault.repository import Repository

READ_SIZE = 1024 * 1024


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


class ObjectStream:
    """A writable stream for one data object of a backup in progress (``write`` plaintext, then ``close``).

    Two threads share the work so both cores stay busy: the caller's thread compresses (zstd releases
    the GIL), a worker thread seals chunks, hashes and writes them to storage. They are joined by a
    bounded queue, so memory stays at a few chunks whatever the stream size. An error on either side
    stops both; the storage writer is then aborted and nothing becomes visible.
    """

    QUEUE_DEPTH = 8

    def __init__(self, backup: BackupWriter, name: str) -> None:
        self.stats = ObjectStats(name)
        self._compress = compressor(backup.compression, level=backup.level, threads=backup.threads)
        self._seal = ChunkSealer(
            backup.data_key,
            backup.backup_id,
            name,
            compression=backup.compression,
            chunk_size=backup.chunk_size,
        )
        self._sha = hashlib.sha256()
        self._sink = backup.repo.storage.open_write(layout.data_key(backup.backup_id, name))
        self._started = time.perf_counter()
        self._closed = False
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.QUEUE_DEPTH)
        self._failure: BaseException | None = None
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._drain, name=f"seal-{name}", daemon=True)
        self._worker.start()

    # --- caller's thread ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        t0 = time.perf_counter()
        compressed = self._compress.feed(data)
        self.stats.times.compress += time.perf_counter() - t0
        self.stats.raw_size += len(data)
        if compressed:
            self._send(compressed)

    def _send(self, item: bytes | None) -> None:
        while True:
            if self._failure is not None:
                raise self._failure
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._worker.is_alive():
                    raise self._failure or FormatError("sealing worker stopped unexpectedly") from None

    def close(self) -> ObjectStats:
        if self._closed:
            return self.stats
        t0 = time.perf_counter()
        tail = self._compress.finish()
        self.stats.times.compress += time.perf_counter() - t0
        try:
            if tail:
                self._send(tail)
            self._send(None)
            self._worker.join()
            if self._failure is not None:
                raise self._failure
            self._sink.commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self.stats.sha256 = self._sha.hexdigest()
        self.stats.seconds = time.perf_counter() - self._started
        return self.stats

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._worker.join(timeout=30)
        self._sink.abort()

    # --- worker thread --------------------------------------------------------------------------------
    def _drain(self) -> None:
        t = self.stats.times
        announced = False
        try:
            while not self._stop.is_set():
                item = self._queue.get()
                t0 = time.perf_counter()
                if item is None:
                    pieces = self._seal.finish()
                else:
                    self.stats.compressed_size += len(item)
                    pieces = self._seal.feed(item)
                t.encrypt += time.perf_counter() - t0
                for piece in pieces:
                    t1 = time.perf_counter()
                    self._sha.update(piece)
                    t2 = time.perf_counter()
                    self._sink.write(piece)
                    t.hash += t2 - t1
                    t.upload += time.perf_counter() - t2
                    self.stats.stored_size += len(piece)
                self.stats.chunks = self._seal.chunks
                if not announced and self.stats.chunks >= 2:
                    announced = True
                    faults.reached("data-streaming")
                if item is None:
                    return
        except BaseException as exc:  # handed to the caller's thread
            self._failure = exc


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
        self.objects: list[ObjectStats] = []
        self._open: ObjectStream | None = None
        self.committed = False
        self.body: dict | None = None
        config = repo.config(create=True)
        self.master = repo.master
        self.data_key = new_data_key()
        self._kdf = config.get("kdf") if self.master.kind == "passphrase" else None
        repo.write_key_object(self.backup_id, self.data_key, self.master)
        faults.reached("key-object-written")

    def __enter__(self) -> BackupWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abandon()

    def open_object(self, name: str) -> ObjectStream:
        if not layout.OBJECT_NAME_RE.match(name) or any(o.name == name for o in self.objects):
            raise FormatError(f"invalid or duplicate object name {name!r}")
        if self._open is not None:
            raise FormatError("one object at a time: close the previous object first")
        self._open = ObjectStream(self, name)
        return self._open

    def close_object(self, stream: ObjectStream) -> ObjectStats:
        stats = stream.close()
        self.objects.append(stats)
        self._open = None
        return stats

    def write_object(
        self, name: str, reader: BinaryIO, *, progress: Callable[[int], None] | None = None
    ) -> ObjectStats:
        """Stream everything ``reader`` yields into object ``name``."""
        stream = self.open_object(name)
        read_time = 0.0
        while True:
            t0 = time.perf_counter()
            data = reader.read(READ_SIZE)
            read_time += time.perf_counter() - t0
            if not data:
                break
            stream.write(data)
            if progress:
                progress(len(data))
        stream.stats.times.read += read_time
        return self.close_object(stream)

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
        }

    def commit(self) -> dict:
        """Write the manifest: from now on the backup is complete and listed."""
        if self._open is not None:
            raise FormatError(f"object {self._open.stats.name} is still open")
        if not self.objects:
            raise FormatError("a backup needs at least one object")
        faults.reached("data-complete")
        body = self.manifest_body()
        data = mf.seal(body, self.data_key)
        writer = self.repo.storage.open_write(layout.manifest_key(self.backup_id))
        try:
            half = len(data) // 2
            writer.write(data[:half])
            faults.reached("manifest-writing")
            writer.write(data[half:])
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        self.committed = True
        self.body = body
        faults.reached("committed")
        return body

    def abandon(self) -> None:
        """Remove what this writer stored (best effort; cleanup catches the rest)."""
        if self._open is not None:
            self._open.abort()
            self._open = None
        if self.committed:
            return
        with contextlib.suppress(SeedvaultError):
            self.repo.delete_leftovers(self.backup_id)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
