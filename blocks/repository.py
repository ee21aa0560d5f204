"""The repository block: where backups live (a local directory or an S3 bucket) and how they are written.

S3 goes through prefect-aws's ``S3Bucket`` (bucket and key prefix) and its ``AwsCredentials`` (keys as secrets,
endpoint URL and botocore config in ``aws_client_parameters``): the credentials block hands out a ready boto3
client, which seedvault's S3 driver uses for everything, so the secret key never passes through seedvault.
S3 parts are retried individually by that client (botocore's retry policy, tunable through
``aws_client_parameters.config``); a whole backup is retried by the flow, never one part of a stream.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from prefect_aws import S3Bucket
from pydantic import ConfigDict, Field, model_validator

from seedvault.config import Settings
from seedvault.crypto.keys import KeySource
from seedvault.errors import ConfigError
from seedvault.repository import Repository
from seedvault.retention import policies_from
from seedvault.storage.base import Storage
from seedvault.storage.open import open_storage

MiB = 1024 * 1024


class SeedvaultRepository(Block):
    """A seedvault repository: exactly one of ``local_path`` or ``s3_bucket``, plus write settings."""

    _block_type_name = "Seedvault Repository"
    _block_type_slug = "seedvault-repository"
    _description = "Where seedvault stores backups (local directory or S3 via prefect-aws) and how it writes them."
    # A validation error must not echo the input: it holds the secret.
    model_config = ConfigDict(hide_input_in_errors=True)

    local_path: str | None = Field(default=None, description="Absolute path of a local repository directory.")
    s3_bucket: S3Bucket | None = Field(
        default=None, description="prefect-aws S3Bucket (bucket_folder is the key prefix) with its credentials."
    )
    s3_part_size: int = Field(default=16 * MiB, ge=5 * MiB, description="Multipart part size in bytes.")
    s3_max_concurrency: int = Field(default=4, ge=1, description="Parts uploaded in parallel per object.")
    s3_storage_class: str | None = None
    storage_class: dict[str, str] = Field(
        default_factory=dict,
        description="Storage class overrides: keys 'wal', a backup kind or 'label:<name>' (seedvault.storagecost).",
    )
    object_lock: str = Field(
        default="off", description="S3 Object Lock on immutable objects: off, governance, compliance"
    )
    object_lock_days: int = Field(default=30, ge=1, le=36500, description="Retention of each locked object in days.")
    s3_sse: str | None = Field(default=None, description="AES256 or aws:kms")
    s3_sse_kms_key_id: str | None = None
    compression: str = Field(default="zstd", description="zstd or none")
    zstd_level: int | None = Field(
        default=None, ge=-7, le=22, description="Empty: the source's default (1 for pg_dump, 3 for other streams)."
    )
    zstd_threads: int = Field(default=0, description="0: compress in the stage's own thread (fastest here)")
    chunk_size: int = Field(default=1 * MiB, ge=4096, description="Encrypted chunk size in bytes.")
    pushgateway_url: str | None = Field(
        default=None,
        description="Prometheus Pushgateway URL (e.g. http://pushgateway:9091): every backup, verify, drill and prune "
        "run pushes the repository's metrics there (job seedvault). Empty: no push.",
    )
    retention: dict[str, Any] | None = Field(
        default=None,
        description="What prune keeps, as the settings' [retention] table: keep_within (default 30d), keep_last/"
        "daily/weekly/monthly/yearly, min_verified (default 1), pitr_window; sub-tables per kind, 'label:<name>' "
        "or '<kind>:<name>'. Empty: the defaults.",
    )
    status: dict[str, Any] | None = Field(
        default=None,
        description="What the status view alerts on, as the settings' [status] table: size_band (0.5), "
        "size_window (7), key_max_age (90d), stale_margin (2h), wal_max_age (off), periods per kind or "
        '\'<kind>:<label>\' (e.g. {"neo4j": "off"}). Empty: the defaults (seedvault status --help).',
    )

    @model_validator(mode="after")
    def _one_location(self) -> SeedvaultRepository:
        if (self.local_path is None) == (self.s3_bucket is None):
            raise ValueError("set exactly one of local_path or s3_bucket")
        return self

    @model_validator(mode="after")
    def _valid_retention(self) -> SeedvaultRepository:
        try:
            policies_from(self.retention)
        except ConfigError as exc:
            raise ValueError(exc.one_line()) from None
        return self

    @property
    def url(self) -> str:
        """Where the repository is, for logs and artifacts (no credentials)."""
        if self.s3_bucket is not None:
            folder = (self.s3_bucket.bucket_folder or "").strip("/")
            return f"s3://{self.s3_bucket.bucket_name}/{folder}".rstrip("/")
        return f"file://{self.local_path}"

    def settings(self) -> Settings:
        """The engine settings this block stands for (compression, chunking, S3 tuning)."""
        return Settings(
            repository=self.url,
            s3_storage_class=self.s3_storage_class,
            storage_class=dict(self.storage_class),
            object_lock=self.object_lock,
            object_lock_days=self.object_lock_days,
            s3_sse=self.s3_sse,
            s3_sse_kms_key_id=self.s3_sse_kms_key_id,
            s3_part_size=self.s3_part_size,
            s3_max_concurrency=self.s3_max_concurrency,
            compression=self.compression,
            zstd_level=self.zstd_level,
            zstd_threads=self.zstd_threads,
            chunk_size=self.chunk_size,
            retention=self.retention,
            status=self.status,
        )

    def storage(self, *, create: bool = False) -> Storage:
        """The engine's driver for this location; S3 gets the credentials block's client (endpoint, region)."""
        client = self.s3_bucket.credentials.get_s3_client() if self.s3_bucket is not None else None
        return open_storage(self.settings(), create=create, client=client)

    def open(self, key: KeySource | None, *, create: bool = False) -> Repository:
        """The engine repository on this storage; ``create`` makes the directory (local) if missing."""
        return Repository(self.storage(create=create), key)
