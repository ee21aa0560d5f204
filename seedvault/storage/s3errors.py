"""S3 error codes and the one translation of botocore failures into the seedvault storage errors.

Messages are built from error *codes* only, never from a server's message text (a ``SignatureDoesNotMatch`` body
echoes the string-to-sign) nor from credentials; endpoint URLs are shown without user-info or query string.
"""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit, urlunsplit

import urllib3.exceptions
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

from seedvault.errors import (
    ObjectNotFound,
    ObjectVanished,
    PermissionDenied,
    SeedvaultError,
    StorageError,
    StorageUnreachable,
    TransientStorageError,
)
from seedvault.storage.base import (
    redact_url,
)

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
