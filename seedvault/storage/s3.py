"""S3 storage on boto3, written to the plain S3 API (AWS, MinIO, Ceph, any compatible endpoint).

Why it is built this way:

* **Streaming writes, bounded memory.** A writer buffers at most ``part_size`` bytes. An object that stays
  below ``part_size`` is sent with one ``PutObject`` at commit (the common case for key objects and
  manifests: one request, nothing to clean up). The first time the buffer fills, a multipart upload is
  created and full parts are handed to a thread pool of ``max_concurrency`` workers. Before a new part is
  submitted the writer waits until fewer than ``max_concurrency`` parts are in flight, so at most
  ``max_concurrency + 1`` part buffers (the in-flight ones plus the one being filled) exist at any time:
  memory is ``part_size * (max_concurrency + 1)`` whatever the object size. Parts are handed over without
  a copy; each byte the caller writes is copied exactly once, into the part buffer (it must be, since the
  upload runs after ``write()`` has returned and the caller may reuse its buffer). With the default 16 MiB
  parts an object may reach 160 GiB (S3 allows 10,000 parts); larger objects need a larger ``part_size``.
* **Nothing half-written is visible.** S3 only shows an object once ``PutObject`` or
  ``CompleteMultipartUpload`` succeeds. Any error, ``abort()`` or leaving the ``with`` block by an
  exception aborts the multipart upload (best effort, after in-flight parts have finished, never masking
  the original error). A writer killed outright leaves an unfinished multipart upload, which
  ``list_partial`` reports (with its start time) and ``abort_partial`` removes.
* **No overwrite, atomically.** Immutable objects are written with ``If-None-Match: *`` on ``PutObject``
  and on ``CompleteMultipartUpload`` (conditional writes, supported by AWS since 2024 and by MinIO): the
  server refuses (412) if the name exists, so two writers can never replace each other's object and
  there is no check-then-write race. A 412 becomes :class:`~seedvault.errors.ObjectExists`, except when
  it answers botocore's *retry* of a request whose first attempt did land (its response lost) and the
  stored ETag is exactly the one our bytes produce: that is our own object, so the write succeeded.
  *Fallback:* an endpoint that rejects the header as ``NotImplemented`` (HTTP 501) is remembered for the
  lifetime of this storage object; from then on the writer does a ``HeadObject`` immediately before the
  final ``PutObject``/``CompleteMultipartUpload`` and raises ``ObjectExists`` if the name is taken.
  That check is racy (two writers may both pass it), so ``capabilities.atomic_no_overwrite`` turns
  ``False``. An endpoint that silently *ignores* the header cannot be detected here.
* **Resumable reads.** ``open_read`` streams the body of a ``Range: bytes=0-`` GET, whose ``Content-Range``
  gives the object's size apart from the answer's length (see :func:`_object_size`). If the stream breaks
  (connection reset, incomplete read, read timeout, a body that ends short of that size), the reader
  continues with ``Range: bytes=<offset>-`` pinned to the first response's ETag with ``If-Match``; if the
  object changed meanwhile the server answers 412 and the reader raises
  :class:`~seedvault.errors.StorageError` rather than splicing two versions together.
* **Errors.** Every botocore failure goes through :func:`translate_error`, which maps it to the
  :mod:`seedvault.errors` storage family (the original chained) with a one-line lowercase message naming
  bucket and key. Messages are built from error *codes* only, never from server messages (a
  ``SignatureDoesNotMatch`` body echoes the string-to-sign) and never from credentials; endpoint URLs are
  shown without user-info or query string.
* **Checksums.** When the client computes request checksums (botocore's default ``when_supported``), the
  multipart upload is created with ``ChecksumAlgorithm=CRC32`` and every part's CRC32 is passed to
  ``CompleteMultipartUpload``, as ``s3transfer`` does. Endpoints that reject checksums can be served by
  setting ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required`` (the standard botocore setting).
* **Storage classes and Object Lock.** A writer's :class:`~seedvault.storage.base.WriteOptions` set the
  object's ``StorageClass`` (else ``storage_class``, the driver default) and an Object Lock retention
  (``ObjectLockMode``/``ObjectLockRetainUntilDate`` on ``PutObject`` and ``CreateMultipartUpload``). The first
  locked write of a storage object checks once that the bucket has Object Lock enabled (a clear ConfigError
  otherwise). S3 requires Content-MD5 or a checksum on such PUTs: botocore's CRC32 when request checksums are
  on, else the writer adds Content-MD5 (single PUT and every part). After a locked multipart upload one HEAD
  confirms the retention (and ``PutObjectRetention`` sets it where an endpoint ignored it). ``list`` carries
  each object's class from ListObjectsV2; ``retention`` reads the lock headers of one HEAD.
* **Addressing.** With an ``endpoint_url`` (MinIO and friends) path-style addressing is used unless
  ``addressing_style`` says otherwise; against AWS botocore's default (virtual-hosted) applies.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any, BinaryIO, NoReturn
from urllib.parse import urlsplit, urlunsplit

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from seedvault import faults
from seedvault.errors import (
    ConfigError,
    ObjectExists,
    ObjectNotFound,
    ObjectVanished,
    PermissionDenied,
    SeedvaultError,
    StorageError,
    StorageUnreachable,
    TransientStorageError,
)
from seedvault.storage.base import (
    Capabilities,
    ObjectInfo,
    ObjectWriter,
    PartialWrite,
    Storage,
    WriteOptions,
    redact_url,
    validate_key,
)
from seedvault.storagecost import check_storage_class

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3 minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
DELETE_BATCH = 1000
READ_RESUMES = 3  # consecutive broken-stream resumes without progress before a read gives up
FAULT_PART_UPLOADED = "s3-part-uploaded"

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "AccountProblem",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "KMS.AccessDeniedException",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "ConditionalRequestConflict",
    "OperationAborted",
}
_PRECONDITION_CODES = {"PreconditionFailed", "412"}
# Errors of a body stream that broke mid-way; a ranged GET can pick up where it stopped.
# A body whose checksum (x-amz-checksum-*, checked by botocore at its end) does not match broke too: cut short
# or garbled on the way. The read goes on from the last byte handed out (chunk tags authenticate every byte).
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    IncompleteReadError,
    FlexibleChecksumError,
    ReadTimeoutError,
    ResponseStreamingError,
    ConnectionClosedError,
    HTTPClientError,
    urllib3.exceptions.HTTPError,
    http.client.IncompleteRead,
    http.client.HTTPException,
    OSError,  # ConnectionResetError, TimeoutError, ...
)


def _safe_endpoint(url: str | None) -> str:
    """An endpoint URL fit for a message: no user-info, query or fragment (they may carry secrets)."""
    if not url:
        return "(default)"
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_url(url)
    if not parts.scheme or not parts.hostname:  # mistyped (http//KEY:SECRET@host): no parser to trust
        return redact_url(url)
    host = parts.hostname
    try:
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:  # a port that is not a number
        pass
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


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


def _access_key_id(client: Any) -> str | None:
    """The access key id ``client`` signs with (public, compared only), or None when it cannot be told.

    Read from the client itself (an injected one, e.g. a Prefect block's, has its own credentials, not the
    environment's), and only when a server-side copy is considered: resolving credentials can mean a request to
    the instance metadata service, which every short-lived wal-push must not pay.
    """
    try:
        credentials = client._request_signer._credentials  # botocore's signer holds the resolved credentials
        return None if credentials is None else credentials.get_frozen_credentials().access_key
    except Exception:  # noqa: BLE001 - cannot tell: no server-side copy, nothing else changes
        return None


def _utc(value: datetime) -> datetime:
    """botocore hands out tz-aware datetimes in tzlocal/tzutc; seedvault uses datetime.UTC throughout."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _content_md5(data: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _error_code(exc: ClientError) -> tuple[str, int]:
    err = exc.response.get("Error") or {}
    status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    code = str(err.get("Code") or status or "unknown")
    return code, status


def _is_precondition_failed(exc: BaseException) -> bool:
    if not isinstance(exc, ClientError):
        return False
    code, status = _error_code(exc)
    return code in _PRECONDITION_CODES or status == 412


def _is_not_implemented(exc: BaseException) -> bool:
    if not isinstance(exc, ClientError):
        return False
    code, status = _error_code(exc)
    return code == "NotImplemented" or status == 501


def translate_error(exc: BaseException, *, bucket: str, key: str | None, endpoint: str) -> SeedvaultError:
    """Map a boto3/botocore failure to the seedvault storage family. The one place this happens.

    ``key`` is the seedvault object name (without the storage prefix) or ``None`` for bucket-level calls.
    Messages use error codes only, never the server's message text or anything credential-shaped.
    """
    if isinstance(exc, SeedvaultError):
        return exc
    what = f"object {key} in bucket {bucket}" if key else f"bucket {bucket}"
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        if code == "NoSuchBucket":
            return StorageUnreachable(f"bucket {bucket} does not exist")
        if code in _NOT_FOUND_CODES or status == 404:
            if key is None:
                return StorageUnreachable(f"bucket {bucket} does not exist")
            return ObjectNotFound(f"object {key} not found in bucket {bucket}")
        if code in _DENIED_CODES or status == 403:
            return PermissionDenied(
                f"access denied to {what} ({code})",
                hint="check the credentials and the bucket/key policy",
            )
        if code == "NoSuchUpload":
            # Aborted under a running writer: by a cleanup/prune whose grace was shorter than the upload.
            return ObjectVanished(f"multipart upload of {what} no longer exists")
        if code in _PRECONDITION_CODES or status == 412:
            return StorageError(f"precondition failed on {what}")
        if code in _TRANSIENT_CODES or status == 429 or status >= 500:
            return TransientStorageError(f"s3 request on {what} kept failing ({code}) after retries")
        if code == "InvalidBucketName":
            return StorageError(f"invalid bucket name {bucket!r}")
        return StorageError(f"s3 error {code} on {what}")
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ProxyConnectionError):
        return StorageUnreachable(f"cannot reach S3 endpoint {endpoint}")
    if isinstance(exc, ConnectionClosedError):
        return StorageUnreachable(f"cannot reach S3 endpoint {endpoint} (connection closed)")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return PermissionDenied(
            f"no usable s3 credentials for bucket {bucket}",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role",
        )
    if isinstance(exc, _STREAM_ERRORS):
        return TransientStorageError(f"connection to S3 endpoint {endpoint} broke during {what}")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"s3 client error on {what} ({type(exc).__name__})")
    return StorageError(f"unexpected error on {what} ({type(exc).__name__})")


# --- writer --------------------------------------------------------------------------------------------


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


# --- reader --------------------------------------------------------------------------------------------


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


# --- storage -------------------------------------------------------------------------------------------


class S3Storage(Storage):
    """Objects in one S3 bucket below an optional prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        storage_class: str | None = None,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        part_size: int = 16 * MiB,
        max_concurrency: int = 4,
        max_attempts: int = 5,
        connect_timeout: float = 5,
        read_timeout: float = 60,
        addressing_style: str | None = None,
        session: boto3.Session | None = None,
        client: Any = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ConfigError(f"invalid s3 bucket name {bucket!r}")
        if sse not in (None, "AES256", "aws:kms"):
            raise ConfigError(f"unsupported s3 server-side encryption {sse!r} (use AES256 or aws:kms)")
        if sse_kms_key_id and sse != "aws:kms":
            raise ConfigError("sse_kms_key_id needs sse='aws:kms'")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ConfigError(f"s3 part size must be between 5 MiB and 5 GiB, not {part_size} bytes")
        if max_concurrency < 1:
            raise ConfigError("s3 max_concurrency must be at least 1")
        segments = [p for p in prefix.split("/") if p]
        if any(p in (".", "..") for p in segments):
            raise ConfigError(f"invalid s3 prefix {prefix!r}")
        self.bucket = bucket
        self.prefix = "/".join(segments)
        self._key_prefix = self.prefix + "/" if self.prefix else ""
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.capabilities = Capabilities(atomic_no_overwrite=True, range_reads=True, multipart=True)
        self._conditional_writes = True
        self._object_lock_checked = False
        self._lock = threading.Lock()
        self._write_args: dict[str, str] = {}
        if storage_class:
            self._write_args["StorageClass"] = check_storage_class(storage_class, "s3_storage_class")
        if sse:
            self._write_args["ServerSideEncryption"] = sse
        if sse_kms_key_id:
            self._write_args["SSEKMSKeyId"] = sse_kms_key_id
        self._owns_client = client is None
        if client is None:
            style = addressing_style or ("path" if endpoint_url else None)
            config = Config(
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=max(10, max_concurrency + 2),
                s3={"addressing_style": style} if style else None,
            )
            try:
                client = (session or boto3.Session()).client(
                    "s3", endpoint_url=endpoint_url, region_name=region, config=config
                )
            except Exception as exc:  # invalid endpoint URL, unknown region, bad config file ...
                raise ConfigError(
                    f"cannot set up s3 client for bucket {bucket} at {_safe_endpoint(endpoint_url)} "
                    f"({type(exc).__name__})"
                ) from exc
        self._client = client
        self.endpoint = _safe_endpoint(endpoint_url or getattr(getattr(client, "meta", None), "endpoint_url", None))
        self.region = getattr(getattr(client, "meta", None), "region_name", region)

    @property
    def access_key_id(self) -> str | None:
        """The access key id of this storage's client (compared by :meth:`can_copy_from`, never shown)."""
        return _access_key_id(self._client)

    # -- server-side copy (seedvault.storage.s3copy) -------------------------------------------------------
    @property
    def client(self) -> Any:
        return self._client

    @property
    def write_args(self) -> dict[str, str]:
        return dict(self._write_args)

    @property
    def conditional_writes(self) -> bool:
        return self._conditional_writes

    def disable_conditional_writes(self) -> None:
        self._disable_conditional_writes()

    def full_key(self, key: str) -> str:
        return self._full_key(key)

    def translate(self, exc: BaseException, key: str | None) -> SeedvaultError:
        return self._translate(exc, key)

    def can_copy_from(self, source: Storage) -> bool:
        """Whether :meth:`copy_from` can copy from ``source`` without the bytes passing through this host."""
        from seedvault.storage import s3copy

        return isinstance(source, S3Storage) and s3copy.same_service(self, source)

    def copy_from(self, source: S3Storage, key: str, size: int, options: WriteOptions | None = None) -> None:
        """Server-side copy of ``key`` (``size`` bytes) from ``source``; never overwrites (ObjectExists)."""
        from seedvault.storage import s3copy

        s3copy.copy_object(self, source, key, size, options)

    def confirm_lock(self, full: str, lock: Any) -> None:
        """Make sure the object carries ``lock`` (PutObjectRetention where the endpoint ignored it)."""
        resp = self._client.head_object(Bucket=self.bucket, Key=full)
        until = resp.get("ObjectLockRetainUntilDate")
        if resp.get("ObjectLockMode") == lock.mode and until is not None and _utc(until) >= lock.retain_until:
            return
        self._client.put_object_retention(
            Bucket=self.bucket, Key=full, Retention={"Mode": lock.mode, "RetainUntilDate": lock.retain_until}
        )

    # -- helpers ---------------------------------------------------------------------------------------
    def _full_key(self, key: str) -> str:
        return self._key_prefix + validate_key(key)

    def _strip(self, full: str) -> str:
        return full[len(self._key_prefix) :]

    def _translate(self, exc: BaseException, key: str | None) -> SeedvaultError:
        return translate_error(exc, bucket=self.bucket, key=key, endpoint=self.endpoint)

    def _part_checksums(self) -> bool:
        config = getattr(getattr(self._client, "meta", None), "config", None)
        return getattr(config, "request_checksum_calculation", None) == "when_supported"

    def _disable_conditional_writes(self) -> None:
        with self._lock:
            self._conditional_writes = False
            self.capabilities = Capabilities(atomic_no_overwrite=False, range_reads=True, multipart=True)

    def _list_prefix(self, prefix: str) -> str:
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise StorageError(f"invalid listing prefix {prefix!r}")
        return self._key_prefix + prefix

    # -- Storage ---------------------------------------------------------------------------------------
    def open_write(self, key: str, *, overwrite: bool = False, options: WriteOptions | None = None) -> ObjectWriter:
        return _S3Writer(self, key, overwrite, options)

    def require_object_lock(self) -> None:
        """Refuse locked writes to a bucket without Object Lock (one GetObjectLockConfiguration per storage object).

        Why up front: S3 answers such a PUT with a generic InvalidRequest, which cannot be told apart from
        other mistakes without reading the server's message (which seedvault never shows).
        """
        if self._object_lock_checked:
            return
        try:
            resp = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc)[0] == "ObjectLockConfigurationNotFoundError":
                raise self._no_object_lock() from None
            raise self._translate(exc, None) from exc
        except Exception as exc:
            raise self._translate(exc, None) from exc
        if (resp.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") != "Enabled":
            raise self._no_object_lock()
        self._object_lock_checked = True

    def _no_object_lock(self) -> ConfigError:
        return ConfigError(
            f"bucket {self.bucket} has no Object Lock enabled, so object_lock cannot be applied",
            hint="use a bucket created with Object Lock (it cannot be added later on every endpoint), "
            'or set object_lock = "off"',
        )

    def retention(self, key: str) -> tuple[str, datetime] | None:
        """The object's Object Lock from one HEAD (x-amz-object-lock-mode / -retain-until-date), or None.

        HEAD rather than GetObjectRetention: the same answer (S3 shows the headers to callers allowed
        s3:GetObjectRetention), no error on buckets without Object Lock, and moto implements it.
        """
        full = self._full_key(key)
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            raise self._translate(exc, key) from exc
        mode, until = resp.get("ObjectLockMode"), resp.get("ObjectLockRetainUntilDate")
        return (str(mode), _utc(until)) if mode and until is not None else None

    def open_read(self, key: str) -> BinaryIO:
        """The object's body, read to its full size (see :func:`_object_size`), resumed where it breaks."""
        full = self._full_key(key)
        try:
            try:
                resp = self._client.get_object(Bucket=self.bucket, Key=full, Range="bytes=0-")
            except ClientError as exc:
                if _error_code(exc)[1] != 416:
                    raise
                resp = self._client.get_object(Bucket=self.bucket, Key=full)  # empty: it has no byte 0
        except Exception as exc:
            raise self._translate(exc, key) from exc
        return _S3Reader(self, key, resp)  # type: ignore[return-value]

    def head(self, key: str) -> ObjectInfo:
        full = self._full_key(key)
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            raise self._translate(exc, key) from exc
        storage_class = resp.get("StorageClass", "STANDARD")  # HEAD names the class only when it is not STANDARD
        return ObjectInfo(key, int(resp["ContentLength"]), _utc(resp["LastModified"]), storage_class)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        full_prefix = self._list_prefix(prefix)
        rows: list[ObjectInfo] = []
        extra = {"StartAfter": self._key_prefix + start_after} if start_after else {}  # a bound, not a name
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full_prefix, **extra
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    name = self._strip(item["Key"])
                    if not name or name.endswith("/"):
                        continue  # "folder" markers made by consoles
                    if start_after and name <= start_after:
                        continue  # directory buckets ignore StartAfter
                    info = ObjectInfo(name, int(item["Size"]), _utc(item["LastModified"]), item.get("StorageClass"))
                    rows.append(info)
        except Exception as exc:
            raise self._translate(exc, None) from exc
        rows.sort(key=lambda info: info.key)  # S3 sorts by UTF-8 bytes, but directory buckets do not
        yield from rows

    def delete(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(self._full_key(key))
            if len(batch) == DELETE_BATCH:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, fulls: list[str]) -> None:
        try:
            resp = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in fulls], "Quiet": True}
            )
        except Exception as exc:
            raise self._translate(exc, None) from exc
        failed = [e for e in resp.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
        if not failed:
            return
        names = ", ".join(f"{self._strip(e.get('Key', '?'))} ({e.get('Code', 'unknown')})" for e in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        message = f"could not delete {len(failed)} object(s) from bucket {self.bucket}: {names}{more}"
        if all(e.get("Code") in _DENIED_CODES for e in failed):
            raise PermissionDenied(message)
        if all(e.get("Code") in _TRANSIENT_CODES for e in failed):
            raise TransientStorageError(message)
        raise StorageError(message)

    def list_partial(self, prefix: str = "") -> Iterator[PartialWrite]:
        full_prefix = self._list_prefix(prefix)
        rows: list[PartialWrite] = []
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=full_prefix
            )
            for page in pages:
                for up in page.get("Uploads", ()):
                    rows.append(PartialWrite(self._strip(up["Key"]), _utc(up["Initiated"]), up["UploadId"]))
        except Exception as exc:
            raise self._translate(exc, None) from exc
        rows.sort(key=lambda p: (p.key, p.started))
        yield from rows

    def partial_activity(self, partial: PartialWrite) -> datetime:
        """The newest part's upload time (one ListParts request): a running upload keeps adding parts."""
        newest = partial.started
        try:
            pages = self._client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=self._key_prefix + partial.key, UploadId=partial.handle
            )
            for page in pages:
                for part in page.get("Parts", ()):
                    if part.get("LastModified") is not None:
                        newest = max(newest, _utc(part["LastModified"]))
        except ClientError as exc:
            code, status = _error_code(exc)
            if code == "NoSuchUpload" or (status == 404 and code != "NoSuchBucket"):
                return newest  # completed or aborted meanwhile: abort_partial ignores it
            raise self._translate(exc, partial.key) from exc
        except Exception as exc:
            raise self._translate(exc, partial.key) from exc
        return newest

    def abort_partial(self, partial: PartialWrite) -> None:
        try:
            self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=self._key_prefix + partial.key, UploadId=partial.handle
            )
        except ClientError as exc:
            code, status = _error_code(exc)
            if code == "NoSuchUpload" or (status == 404 and code != "NoSuchBucket"):
                return
            raise self._translate(exc, partial.key) from exc
        except Exception as exc:
            raise self._translate(exc, partial.key) from exc

    def check(self) -> None:
        """One cheap list call below the prefix: proves endpoint, bucket, credentials and list rights."""
        try:
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self._key_prefix, MaxKeys=1)
        except Exception as exc:
            raise self._translate(exc, None) from exc

    def close(self) -> None:
        if self._owns_client:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
