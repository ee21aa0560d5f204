"""Turn a repository URL into a storage driver: ``file:///path`` (or a plain path) and ``s3://bucket/prefix``."""

from __future__ import annotations

import re
from urllib.parse import urlparse

from seedvault.config import Settings
from seedvault.errors import ConfigError
from seedvault.storage.base import Storage, redact_url

# "s3//bucket/prefix" would otherwise be taken for a relative directory (and echoed in errors as one)
_MISTYPED_SCHEME = re.compile(r"\A(?:s3|file|https?)//", re.IGNORECASE)


def open_storage(settings: Settings, *, create: bool = False, client=None) -> Storage:
    """The driver for ``settings.repository``, carrying the settings' write policy (seedvault.storagecost)."""
    from seedvault.storagecost import WritePolicy

    storage = _open(settings, create=create, client=client)
    storage.write_policy = WritePolicy.from_settings(settings)
    return storage


def _open(settings: Settings, *, create: bool, client) -> Storage:
    url = settings.repository
    if not url:
        raise ConfigError(
            "no repository configured", hint="set SEEDVAULT_REPOSITORY to file:///path or s3://bucket/prefix"
        )
    try:
        parsed = urlparse(url)
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        raise ConfigError(f"repository URL {redact_url(url)!r} cannot be parsed") from None
    if not parsed.scheme and _MISTYPED_SCHEME.match(url):
        raise ConfigError(
            f"repository URL {redact_url(url)!r} lacks the ':' after its scheme",
            hint="use s3://bucket/prefix or file:///absolute/path",
        )
    if parsed.scheme in ("", "file"):
        from seedvault.storage.local import LocalStorage

        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"repository URL {redact_url(url)!r}: use file:///absolute/path")
        return LocalStorage(parsed.path if parsed.scheme else url, create=create)
    if parsed.scheme == "s3":
        from seedvault.storage.s3 import S3Storage

        if not parsed.netloc:
            raise ConfigError(f"repository URL {redact_url(url)!r} names no bucket")
        if parsed.username or parsed.password:
            raise ConfigError("repository URL must not carry credentials; use the AWS environment or config")
        session = None
        if settings.s3_credentials_file:
            import boto3
            import botocore.session

            core = botocore.session.Session()
            core.set_config_variable("credentials_file", settings.s3_credentials_file)
            session = boto3.Session(botocore_session=core)
        return S3Storage(
            parsed.netloc,
            parsed.path.strip("/"),
            endpoint_url=settings.s3_endpoint,
            region=settings.s3_region,
            storage_class=settings.s3_storage_class,
            sse=settings.s3_sse,
            sse_kms_key_id=settings.s3_sse_kms_key_id,
            part_size=settings.s3_part_size,
            max_concurrency=settings.s3_max_concurrency,
            max_attempts=settings.s3_max_attempts,
            session=session,
            client=client,
        )
    raise ConfigError(f"unsupported repository URL scheme {parsed.scheme!r}; use file:// or s3://")
