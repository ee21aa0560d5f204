"""Settings: command-line options over ``SEEDVAULT_*`` environment variables over the TOML file over defaults.

The names are a contract (operators' scripts, the runbook and the Prefect blocks rely on them):
``SEEDVAULT_REPOSITORY`` (``file:///path`` or ``s3://bucket/prefix``), ``SEEDVAULT_S3_ENDPOINT``,
``SEEDVAULT_KEY_FILE`` or ``SEEDVAULT_PASSPHRASE_FILE``, and ``SEEDVAULT_CONFIG`` naming a TOML file whose
keys are the same settings in lower case without the prefix (``repository = "s3://..."``). S3
credentials are never seedvault settings: they come from the standard AWS chain (environment, shared
config/credentials files, instance roles), so they stay out of seedvault's files and arguments.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from seedvault.crypto.keys import KeySource
from seedvault.errors import ConfigError, KeyMissing
from seedvault.units import parse_duration

ENV_PREFIX = "SEEDVAULT_"


@dataclass
class Settings:
    repository: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_storage_class: str | None = None
    s3_sse: str | None = None
    s3_sse_kms_key_id: str | None = None
    s3_part_size: int = 16 * 1024 * 1024
    s3_max_concurrency: int = 4
    s3_max_attempts: int = 5
    # A shared-credentials file (path, never the secret): for archive_command, whose environment is the
    # postmaster's and carries no AWS_* variables.
    s3_credentials_file: str | None = None
    key_file: str | None = None
    passphrase_file: str | None = None
    compression: str = "zstd"
    zstd_level: int | None = None  # None: the source's own default, see zstd_level_for()
    zstd_threads: int = 0
    chunk_size: int = 1024 * 1024
    cleanup_grace: str = "24h"
    # A lease not refreshed for this long belongs to a process that died (holders refresh every minute).
    lease_stale: str = "15m"
    # What prune keeps: the TOML table [retention] (sub-tables per kind / label:<name> / <kind>:<name>), or
    # the same as JSON in SEEDVAULT_RETENTION (the Prefect blocks pass it so). See seedvault.retention.
    retention: dict[str, Any] | str | None = None
    # The catalog's local cache of authenticated manifest bodies (seedvault.catalog); "off" disables it.
    # Default: $XDG_CACHE_HOME/seedvault/catalog (or ~/.cache/seedvault/catalog).
    catalog_cache: str | None = None
    # wal-push caches its current (wrapped) WAL epoch key here, saving a request per segment.
    wal_state_dir: str | None = None
    # The unix socket of `seedvault wal-daemon`; wal-push/wal-fetch hand their file to it when it runs.
    wal_socket: str | None = None
    # "auto": a wal-push that finds no daemon on wal_socket starts one (as pgBackRest's archive-async
    # starts its async process), which exits after wal_daemon_idle seconds without requests. "off": never.
    wal_daemon: str = "off"
    wal_daemon_idle: int = 600
    # Storage cost (seedvault.storagecost): class overrides per kind, "label:<name>" and "wal"; S3 Object Lock
    # on immutable objects; prices per storage class (USD per GB-month) for `seedvault usage` estimates.
    # In the environment a table is "key=value,key=value" (SEEDVAULT_STORAGE_CLASS, SEEDVAULT_PRICES).
    storage_class: dict[str, str] = field(default_factory=dict)
    object_lock: str = "off"
    object_lock_days: int = 30
    prices: dict[str, float] = field(default_factory=dict)
    # What `seedvault status` alerts on: the TOML table [status] (size_band, size_window, key_max_age,
    # stale_margin, wal_max_age, [status.periods] per kind or "<kind>:<label>"), or the same as JSON in
    # SEEDVAULT_STATUS. See seedvault.ops.status.
    status: dict[str, Any] | str | None = None
    # The second repository (another region, other credentials): the TOML table [replica] with the same keys as
    # here (repository, s3_endpoint, s3_credentials_file, retention, object_lock, ...), or that table as JSON
    # in SEEDVAULT_REPLICA. `seedvault replicate` copies to it; restores fall back to it when this repository
    # is unreachable. See replica_settings().
    replica: dict[str, Any] | str | None = None
    # "on": every command works on the replica instead (its settings from [replica]); `seedvault --replica ...`
    # sets it, and a PITR read from the replica sets it for its restore_command (SEEDVAULT_USE_REPLICA=on).
    use_replica: str = "off"

    @property
    def is_replica(self) -> bool:
        """Whether these are the replica's settings (from :meth:`replica_settings`)."""
        return bool(getattr(self, "_is_replica", False))

    def __post_init__(self) -> None:
        from seedvault.storagecost import check_settings

        check_settings(self)
        if self.wal_daemon not in ("off", "auto"):
            raise ConfigError(f"wal_daemon must be 'off' or 'auto', not {self.wal_daemon!r}")
        if parse_duration(self.lease_stale) < 300:
            raise ConfigError(f"lease_stale must be at least 5m (holders refresh every minute), not {self.lease_stale}")

    def replica_settings(self, repository: str | None = None) -> Settings | None:
        """The settings of the second repository (``[replica]``), or None when there is none.

        Why not inherit everything: a replica lives elsewhere. Where it is and how it is stored (the
        repository URL, the S3 endpoint, region, credentials file, encryption, storage classes, Object Lock,
        retention, prices) come only from ``[replica]``, so a primary's endpoint or 30-day lock never leaks
        onto it; the rest (chunking, caches, lease timing, status thresholds) is inherited. The master key is
        always the primary's: the copied objects open only with it. ``repository`` (``--to``) replaces the
        table's URL.
        """
        table = settings_table(self.replica, "replica", "SEEDVAULT_REPLICA")
        if repository:
            table["repository"] = repository
        if not table.get("repository"):
            return None
        for name in table:
            if name not in _FIELDS or name in REPLICA_FORBIDDEN:
                raise ConfigError(f"[replica]: setting {name!r} cannot be set for the replica")
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in REPLICA_LOCAL}
        values["replica"] = None
        values["use_replica"] = "off"
        for name, value in table.items():
            values[name] = _coerce(name, value, "[replica]")
        out = Settings(**values)
        object.__setattr__(out, "_is_replica", True)
        return out

    def lease_stale_after(self) -> timedelta:
        return timedelta(seconds=parse_duration(self.lease_stale))

    def zstd_level_for(self, source_default: int) -> int:
        """The configured zstd level, else the default of the source being backed up.

        Sources differ in how fast they produce bytes: pg_dump streams ~80 MB/s here, faster than zstd level 3
        compresses in one thread (~65 MB/s), so PostgreSQL dumps default to level 1, which keeps up with
        pg_dump (and on dump data compresses about as well); generic streams keep level 3.
        Measured by ``bench/postgres.py`` and ``bench/engine.py``.
        """
        return source_default if self.zstd_level is None else self.zstd_level

    def key_source(self, *, required: bool = True) -> KeySource | None:
        if self.key_file and self.passphrase_file:
            raise ConfigError("set either SEEDVAULT_KEY_FILE or SEEDVAULT_PASSPHRASE_FILE, not both")
        if self.key_file:
            return KeySource("raw", origin=f"key file {self.key_file}", path=Path(self.key_file))
        if self.passphrase_file:
            return KeySource(
                "passphrase",
                origin=f"passphrase file {self.passphrase_file}",
                path=Path(self.passphrase_file),
            )
        if required:
            raise KeyMissing("no master key configured", hint="set SEEDVAULT_KEY_FILE or SEEDVAULT_PASSPHRASE_FILE")
        return None


_FIELDS = {f.name: f for f in fields(Settings)}
# Where and how a repository is stored: a replica never inherits these from the primary (Settings.replica_settings).
REPLICA_LOCAL = {
    "repository", "s3_endpoint", "s3_region", "s3_storage_class", "s3_sse", "s3_sse_kms_key_id",
    "s3_credentials_file", "storage_class", "object_lock", "object_lock_days", "retention", "prices",
}  # fmt: skip
REPLICA_FORBIDDEN = {"key_file", "passphrase_file", "replica", "use_replica"}
_ON = ("on", "1", "true", "yes")


def settings_table(value: dict[str, Any] | str | None, name: str, env: str) -> dict[str, Any]:
    """A settings table given as a TOML table or (from the environment or a block) as a JSON object."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    import json

    try:
        table = json.loads(value)
    except ValueError:
        raise ConfigError(f"{env} is not valid JSON (an object of {name} settings)") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{env} must be a JSON object of {name} settings")
    return table


def _coerce(name: str, value: Any, origin: str) -> Any:
    kind = _FIELDS[name].type
    if value is None:
        return None
    if isinstance(value, dict):  # a TOML table ([retention], [storage_class], [prices])
        if "dict" not in str(kind):
            raise ConfigError(f"{origin}: {name} must be a single value, not a table")
        return dict(value)
    if str(kind).startswith("dict") and "| str" not in str(kind):  # "key=value,..." from the environment
        from seedvault.storagecost import parse_pairs

        return parse_pairs(str(value), origin)
    if "int" in str(kind) and not isinstance(value, int):
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{origin}: {name} must be an integer") from None
    return value if isinstance(value, int) else str(value)


def load(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Resolve settings from defaults, the TOML file, the environment and explicit overrides."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    config_path = (overrides or {}).get("config") or env.get(ENV_PREFIX + "CONFIG")
    if config_path:
        path = Path(config_path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except PermissionError:
            raise ConfigError(f"config file {path} is not readable (permission denied)") from None
        except OSError as exc:  # a directory, an I/O error...: the setting is wrong, not seedvault
            reason = (exc.strerror or type(exc).__name__).lower()
            raise ConfigError(f"config file {path} cannot be read: {reason}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        section = data.get("seedvault", data)
        for key, value in section.items():
            if key not in _FIELDS:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[key] = _coerce(key, value, f"config file {path}")
    for name in _FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw not in (None, ""):
            values[name] = _coerce(name, raw, ENV_PREFIX + name.upper())
    for name, value in (overrides or {}).items():
        if name in _FIELDS and value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    settings = Settings(**values)
    if str(settings.use_replica).lower() in _ON:
        replica = settings.replica_settings()
        if replica is None:
            raise ConfigError("use_replica is on (--replica) but no [replica] repository is configured",
                              hint="set [replica] repository in the config file, or SEEDVAULT_REPLICA")  # fmt: skip
        return replica
    return settings
