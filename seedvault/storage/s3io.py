"""The S3 object writer (streaming multipart, no overwrite) and reader (resumed, ETag-pinned ranged GETs).

See :mod:`seedvault.storage.s3` for why they work as they do; :class:`~seedvault.storage.s3.S3Storage` hands
itself to them.
"""

from __future__ import annotations

import base64
import hashlib
import io
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from botocore.exceptions import (
    ClientError,
    IncompleteReadError,
)

from seedvault import faults
from seedvault.errors import (
    ObjectExists,
    SeedvaultError,
    StorageError,
    TransientStorageError,
)
from seedvault.storage.base import (
    ObjectInfo,
    ObjectWriter,
    WriteOptions,
)
from seedvault.storage.s3errors import (
    _NOT_FOUND_CODES,
    _STREAM_ERRORS,
    _error_code,
    _is_not_implemented,
    _is_precondition_failed,
)

if TYPE_CHECKING:
    from seedvault.storage.s3 import S3Storage


MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3 minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
DELETE_BATCH = 1000
READ_RESUMES = 3  # consecutive broken-stream resumes without progress before a read gives up
FAULT_PART_UPLOADED = "s3-part-uploaded"


def _object_size(response: dict[str, Any]) -> int:
    """The size of the whole object a GET answered, which is not always the length of the answer.

    Why reads ask for ``Range: bytes=0-``: a 206 names the object's size in ``Content-Range``
    (``bytes 0-99/100``), apart from the body's ``Content-Length``. A body cut short by a proxy or a broken
    front end *with a Content-Length to match* ends cleanly, so without the second number the reader would
    take it for the whole object and the backup for truncated (exit 23), when the stored object is intact
    and a ranged retry fetches the rest. An endpoint that ignores the range answers 200: Content-Length it is.
    """
    content_range = str(response.get("ContentRange") or "")
    total = content_range.rpartition("/")[2]
    if content_range.startswith("bytes ") and total.isdigit():
        return int(total)
    return int(response.get("ContentLength") or 0)


def _utc(value: datetime) -> datetime:
    """botocore hands out tz-aware datetimes in tzlocal/tzutc; seedvault uses datetime.UTC throughout."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _content_md5(data: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


class _S3Writer(ObjectWriter):
    def __init__(self, storage: S3Storage, key: str, overwrite: bool, options: WriteOptions | None = None) -> None:
        self.key = key
        self.bytes_written = 0
        self._s = storage
        self._full = storage._full_key(key)
        self._overwrite = overwrite
        self._args: dict[str, Any] = dict(storage._write_args)  # StorageClass, SSE, Object Lock
        self._lock = options.lock if options is not None else None
        if options is not None and options.storage_class:
            self._args["StorageClass"] = options.storage_class
        if self._lock is not None:
            storage.require_object_lock()
            self._args["ObjectLockMode"] = self._lock.mode
            self._args["ObjectLockRetainUntilDate"] = self._lock.retain_until
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[Future[dict[str, str]], int] = {}
        self._parts: dict[int, dict[str, str]] = {}
        self._next_part = 1
        self._done = False
        self.parts_uploaded = 0  # observable by tests and progress reporting
        self.max_buffers_seen = 0  # peak of part buffers alive: in flight + the one being filled

    # -- public ----------------------------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        if self._done:
            raise StorageError(f"object {self.key} already committed or aborted")
        mv = data if isinstance(data, memoryview) else memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        total = len(mv)
        try:
            part_size = self._s.part_size
            while len(mv):
                room = part_size - len(self._buf)
                self._buf += mv[:room]  # the one copy: into the part buffer
                mv = mv[room:]
                if len(self._buf) >= part_size:
                    self._dispatch()
        except BaseException as exc:
            self._abort_quietly()
            self._reraise(exc)
        self.bytes_written += total

    def commit(self) -> ObjectInfo:
        if self._done:
            raise StorageError(f"object {self.key} already committed or aborted")
        try:
            if self._upload_id is None:
                self._put_single()
            else:
                if self._buf:
                    self._dispatch()
                while self._pending:
                    self._collect(block=True)
                self._complete()
        except BaseException as exc:
            self._abort_quietly()
            self._reraise(exc)
        self._done = True
        self._shutdown()
        self._buf = bytearray()
        # Neither PutObject nor CompleteMultipartUpload returns LastModified; a HEAD per object is not
        # worth it, so the commit time stands in for it.
        return ObjectInfo(self.key, self.bytes_written, datetime.now(UTC))

    def abort(self) -> None:
        self._abort_quietly()

    # -- internals -------------------------------------------------------------------------------------
    def _reraise(self, exc: BaseException) -> NoReturn:
        if isinstance(exc, SeedvaultError) or not isinstance(exc, Exception):
            raise exc  # already ours, or KeyboardInterrupt/SystemExit: as is
        raise self._s._translate(exc, self.key) from exc

    def _start_multipart(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self._s.bucket, "Key": self._full, **self._args}
        if self._s._part_checksums():
            kwargs["ChecksumAlgorithm"] = "CRC32"
        resp = self._s._client.create_multipart_upload(**kwargs)
        self._upload_id = resp["UploadId"]
        self._executor = ThreadPoolExecutor(max_workers=self._s.max_concurrency, thread_name_prefix="seedvault-s3-part")

    def _dispatch(self) -> None:
        """Hand the full buffer to the pool, first waiting for a free slot (this bounds memory)."""
        if self._upload_id is None:
            self._start_multipart()
        if self._next_part > MAX_PARTS:
            raise StorageError(
                f"object {self.key} needs more than {MAX_PARTS} parts of {self._s.part_size} bytes",
                hint="raise part_size",
            )
        self._collect(block=False)
        while len(self._pending) >= self._s.max_concurrency:
            self._collect(block=True)
        body, self._buf = self._buf, bytearray()
        number = self._next_part
        self._next_part += 1
        assert self._executor is not None
        future = self._executor.submit(self._upload_part, number, body)
        self._pending[future] = number
        # Part buffers alive from here on: the ones in flight plus the next one being filled.
        self.max_buffers_seen = max(self.max_buffers_seen, len(self._pending) + 1)

    def _upload_part(self, number: int, body: bytearray) -> dict[str, str]:
        kwargs: dict[str, Any] = {
            "Bucket": self._s.bucket,
            "Key": self._full,
            "UploadId": self._upload_id,
            "PartNumber": number,
            "Body": body,
        }
        checksums = self._s._part_checksums()
        if checksums:
            kwargs["ChecksumAlgorithm"] = "CRC32"
        elif self._lock is not None:
            kwargs["ContentMD5"] = _content_md5(body)  # a locked object's parts need one or a checksum
        resp = self._s._client.upload_part(**kwargs)
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        if checksums and resp.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = resp["ChecksumCRC32"]
        return part

    def _collect(self, *, block: bool) -> None:
        """Harvest finished part uploads (raising the first failure) and mark each for crash tests."""
        if not self._pending:
            return
        if block:
            done, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
        else:
            done = [f for f in self._pending if f.done()]
        for future in sorted(done, key=lambda f: self._pending[f]):
            number = self._pending.pop(future)
            self._parts[number] = future.result()
            self.parts_uploaded += 1
            faults.reached(FAULT_PART_UPLOADED)

    def _ensure_absent(self) -> None:
        """The racy fallback for endpoints without conditional writes: HEAD right before publishing."""
        try:
            self._s._client.head_object(Bucket=self._s.bucket, Key=self._full)
        except ClientError as exc:
            code, status = _error_code(exc)
            if code in _NOT_FOUND_CODES or status == 404:
                return
            raise
        raise self._exists()

    def _exists(self) -> ObjectExists:
        return ObjectExists(f"object {self.key} already exists in bucket {self._s.bucket}; seedvault never overwrites")

    def _conditional_call(self, call, kwargs: dict[str, Any]) -> None:
        """Publish with If-None-Match: * (or the head-check fallback) unless overwriting is allowed."""
        if self._overwrite:
            call(**kwargs)
            return
        if self._s._conditional_writes:
            try:
                call(**kwargs, IfNoneMatch="*")
                return
            except ClientError as exc:
                if _is_precondition_failed(exc) or _error_code(exc)[0] == "NoSuchUpload":
                    if self._landed_earlier(exc):
                        return
                    if _is_precondition_failed(exc):
                        raise self._exists() from exc
                    raise
                if not _is_not_implemented(exc):
                    raise
                self._s._disable_conditional_writes()
        self._ensure_absent()
        call(**kwargs)

    def _landed_earlier(self, exc: ClientError) -> bool:
        """Did an earlier attempt of this very request succeed, its response lost to a broken connection?

        botocore retries a request whose response never arrived; if the first attempt had in fact
        published the object, the retry meets our own object (412, or NoSuchUpload for a completed
        multipart upload). Only then, and only if the stored ETag is exactly what our bytes produce
        (MD5 for a single PUT; MD5 of the part MD5s plus ``-N`` for multipart), is it taken as success.
        A first-attempt 412 is always ``ObjectExists``, as with every other driver.
        """
        if not int((exc.response.get("ResponseMetadata") or {}).get("RetryAttempts") or 0):
            return False
        if self._upload_id is None:
            expected = hashlib.md5(self._buf, usedforsecurity=False).hexdigest()
        else:
            try:
                digests = b"".join(bytes.fromhex(self._parts[n]["ETag"].strip('"')) for n in sorted(self._parts))
            except ValueError:  # part ETags that are not MD5s (SSE-KMS, some gateways): cannot tell
                return False
            expected = f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(self._parts)}"
        try:
            head = self._s._client.head_object(Bucket=self._s.bucket, Key=self._full)
        except Exception:  # noqa: BLE001 - cannot confirm: report the original outcome
            return False
        return str(head.get("ETag", "")).strip('"') == expected

    def _put_single(self) -> None:
        kwargs: dict[str, Any] = {
            "Bucket": self._s.bucket,
            "Key": self._full,
            "Body": self._buf,
            **self._args,
        }
        if self._lock is not None and not self._s._part_checksums():
            # S3 refuses a PUT with a retention unless it carries Content-MD5 or a checksum header; botocore adds
            # the CRC32 header only when request checksums are on (the default "when_supported").
            kwargs["ContentMD5"] = _content_md5(self._buf)
        self._conditional_call(self._s._client.put_object, kwargs)

    def _complete(self) -> None:
        parts = [self._parts[n] for n in sorted(self._parts)]
        kwargs: dict[str, Any] = {
            "Bucket": self._s.bucket,
            "Key": self._full,
            "UploadId": self._upload_id,
            "MultipartUpload": {"Parts": parts},
        }
        self._conditional_call(self._s._client.complete_multipart_upload, kwargs)
        self._upload_id = None  # completed: nothing left to abort
        if self._lock is not None:
            self._confirm_lock()

    def _confirm_lock(self) -> None:
        """After a multipart upload: does the object carry the retention asked for on CreateMultipartUpload?

        Why: an endpoint may accept the lock headers there and not apply them (moto 5 does so); an unlocked
        object recorded as locked is a silent failure. One HEAD per multipart object; if the retention is
        missing or shorter, PutObjectRetention sets it (allowed: it only extends).
        """
        assert self._lock is not None
        self._s.confirm_lock(self._full, self._lock)

    def _shutdown(self) -> None:
        if self._executor is not None:
            # Let in-flight parts finish (S3 may keep parts uploaded after an abort otherwise).
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._pending.clear()

    def _abort_quietly(self) -> None:
        """Best effort, idempotent, never raises: the caller's error is the one that matters."""
        if self._done:
            return
        self._done = True
        self._buf = bytearray()
        try:
            self._shutdown()
        except Exception:  # noqa: BLE001 - best effort
            pass
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self._s._client.abort_multipart_upload(Bucket=self._s.bucket, Key=self._full, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - best effort; list_partial/cleanup catches leftovers
                pass
        self._parts.clear()


class _S3Reader(io.RawIOBase):
    """A streaming body that resumes with a ranged, ETag-pinned GET when the connection breaks."""

    def __init__(self, storage: S3Storage, key: str, response: dict[str, Any]) -> None:
        super().__init__()
        self.key = key
        self._s = storage
        self._full = storage._full_key(key)
        self._body = response["Body"]
        self.etag: str = response.get("ETag", "")
        self.size: int = _object_size(response)
        self._pos = 0
        self.resumes = 0  # total resumes, for tests and logs

    def readable(self) -> bool:
        return True

    def _read_some(self, n: int) -> bytes:
        failures = 0
        while True:
            if self._pos >= self.size:
                return b""
            try:
                chunk = self._body.read(n)
                if not chunk:
                    # StreamingBody normally raises IncompleteReadError itself; be defensive.
                    raise IncompleteReadError(actual_bytes=self._pos, expected_bytes=self.size)
            except _STREAM_ERRORS as exc:
                failures += 1
                if failures > READ_RESUMES:
                    raise TransientStorageError(
                        f"reading object {self.key} from bucket {self._s.bucket} broke off at byte "
                        f"{self._pos} of {self.size}; gave up after {READ_RESUMES} resumes"
                    ) from exc
                self._resume()
                continue
            self._pos += len(chunk)
            return chunk

    def _resume(self) -> None:
        try:
            self._body.close()
        except Exception:  # noqa: BLE001 - the old stream is dead anyway
            pass
        kwargs: dict[str, Any] = {"Bucket": self._s.bucket, "Key": self._full, "Range": f"bytes={self._pos}-"}
        if self.etag:
            kwargs["IfMatch"] = self.etag
        try:
            resp = self._s._client.get_object(**kwargs)
        except ClientError as exc:
            if _is_precondition_failed(exc):
                raise StorageError(
                    f"object {self.key} in bucket {self._s.bucket} changed while being read; "
                    "refusing to splice two versions"
                ) from exc
            raise self._s._translate(exc, self.key) from exc
        except Exception as exc:
            raise self._s._translate(exc, self.key) from exc
        content_range = str(resp.get("ContentRange") or "")
        if not content_range.startswith(f"bytes {self._pos}-"):
            resp["Body"].close()
            raise StorageError(f"s3 endpoint ignored the range request while resuming object {self.key}")
        if _object_size(resp) != self.size:
            resp["Body"].close()
            raise StorageError(
                f"object {self.key} in bucket {self._s.bucket} changed size while being read; "
                "refusing to splice two versions"
            )
        self._body = resp["Body"]
        self.resumes += 1

    def readinto(self, buffer) -> int:
        mv = memoryview(buffer).cast("B")
        data = self._read_some(len(mv))
        mv[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        self._checkClosed()
        if size is None or size < 0:
            return self.readall()
        return self._read_some(size) if size else b""

    def readall(self) -> bytes:
        self._checkClosed()
        out = bytearray()
        while True:
            chunk = self._read_some(max(1 * MiB, self.size - self._pos))
            if not chunk:
                return bytes(out)
            out += chunk

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            except Exception:  # noqa: BLE001
                pass
        super().close()
