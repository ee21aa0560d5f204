"""Server-side copy between two S3 locations on one endpoint (replication, :mod:`seedvault.ops.replicate`).

Why server-side: the bytes never leave the storage service, so copying a 100 GiB base backup between two
buckets of one endpoint costs requests, not the replicator's bandwidth. ``CopyObject`` copies up to 5 GiB in
one request; larger objects are copied as a multipart upload whose parts are ``UploadPartCopy`` ranges of the
source. Both publish with ``If-None-Match: *`` (CopyObject and CompleteMultipartUpload accept it on AWS since
2024), so a copy never replaces an object; where the endpoint answers ``NotImplemented`` the copy falls back to
a HEAD right before publishing, as the streaming writer does.

The destination's own :class:`~seedvault.storage.base.WriteOptions` (storage class, Object Lock retention)
are applied: the copy is a new object of the destination, not a clone of the source's metadata. The retention
is set right after the copy (HEAD, then PutObjectRetention when missing) rather than with lock headers on the
copy request: a request with lock headers must carry a checksum of a body that a copy does not send, and some
endpoints (moto) refuse it.

The caller verifies what arrived (reads it back); nothing here trusts the copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from seedvault.errors import ObjectExists
from seedvault.storage.base import WriteOptions
from seedvault.storage.s3errors import _is_not_implemented, _is_precondition_failed

if TYPE_CHECKING:
    from seedvault.storage.s3 import S3Storage

MiB = 1024 * 1024
SINGLE_COPY_MAX = 5 * 1024 * MiB  # CopyObject's limit


def same_service(dst: S3Storage, src: S3Storage) -> bool:
    """Can ``dst`` copy from ``src`` server-side: one endpoint, one region, one set of credentials."""
    return (
        dst.endpoint == src.endpoint
        and dst.region == src.region
        and dst.access_key_id is not None
        and dst.access_key_id == src.access_key_id
    )


def copy_object(
    dst: S3Storage,
    src: S3Storage,
    key: str,
    size: int,
    options: WriteOptions | None,
    *,
    single_max: int | None = None,
) -> None:
    """Copy ``key`` of ``src`` to the same key of ``dst``; ObjectExists if it is there already."""
    source = {"Bucket": src.bucket, "Key": src.full_key(key)}
    args: dict[str, Any] = dict(dst.write_args)
    lock = options.lock if options is not None else None
    if options is not None and options.storage_class:
        args["StorageClass"] = options.storage_class
    if lock is not None:
        dst.require_object_lock()
    full = dst.full_key(key)
    try:
        if size <= (single_max or SINGLE_COPY_MAX):
            _conditional(
                dst,
                key,
                dst.client.copy_object,
                {"Bucket": dst.bucket, "Key": full, "CopySource": source, "MetadataDirective": "REPLACE", **args},
            )
        else:
            _multipart(dst, key, full, source, size, args)
        if lock is not None:  # both ways: the copy request carries no lock headers (module docstring)
            dst.confirm_lock(full, lock)
    except ObjectExists:
        raise
    except Exception as exc:
        raise dst.translate(exc, key) from exc


def _multipart(dst: S3Storage, key: str, full: str, source: dict[str, str], size: int, args: dict[str, Any]) -> None:
    part = max(dst.part_size, -(-size // 10_000))
    upload = dst.client.create_multipart_upload(Bucket=dst.bucket, Key=full, **args)["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, size, part), start=1):
            end = min(start + part, size) - 1
            resp = dst.client.upload_part_copy(
                Bucket=dst.bucket,
                Key=full,
                UploadId=upload,
                PartNumber=number,
                CopySource=source,
                CopySourceRange=f"bytes={start}-{end}",
            )
            parts.append({"PartNumber": number, "ETag": resp["CopyPartResult"]["ETag"]})
        _conditional(
            dst,
            key,
            dst.client.complete_multipart_upload,
            {"Bucket": dst.bucket, "Key": full, "UploadId": upload, "MultipartUpload": {"Parts": parts}},
        )
    except BaseException:
        try:
            dst.client.abort_multipart_upload(Bucket=dst.bucket, Key=full, UploadId=upload)
        except Exception:  # noqa: BLE001 - never mask the original error; cleanup removes the upload later
            pass
        raise


def _conditional(dst: S3Storage, key: str, call: Any, kwargs: dict[str, Any]) -> None:
    exists = ObjectExists(f"object {key} already exists in bucket {dst.bucket}; seedvault never overwrites")
    if dst.conditional_writes:
        try:
            call(**kwargs, IfNoneMatch="*")
            return
        except ClientError as exc:  # the streaming writer's rules (s3errors): 412 taken, 501 no conditional writes
            if _is_precondition_failed(exc):
                raise exists from exc
            if not _is_not_implemented(exc):
                raise
            dst.disable_conditional_writes()
    if dst.exists(key):
        raise exists
    call(**kwargs)
