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

import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
)

from seedvault.errors import (
    ConfigError,
    PermissionDenied,
    SeedvaultError,
    StorageError,
    TransientStorageError,
)
from seedvault.storage.base import (
    Capabilities,
    ObjectInfo,
    ObjectWriter,
    PartialWrite,
    Storage,
    WriteOptions,
    validate_key,
)
from seedvault.storage.s3errors import _DENIED_CODES, _TRANSIENT_CODES, _error_code, _safe_endpoint, translate_error
from seedvault.storage.s3io import (
    DELETE_BATCH,
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    READ_RESUMES,
    MiB,
    _S3Reader,
    _S3Writer,
    _utc,
)
from seedvault.storagecost import check_storage_class

__all__ = ["READ_RESUMES", "MiB", "S3Storage", "translate_error"]


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
