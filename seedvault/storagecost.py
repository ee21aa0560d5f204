"""What storage costs and how long it must stay: S3 storage classes per kind/label/WAL, and Object Lock on write.

Settings (``seedvault.config``; FORMAT.md section 5 ``object_lock``, RUNBOOK "Storage cost")::

    s3_storage_class = "STANDARD"          # every object that no override below names (S3's default)
    object_lock = "off"                    # "off" | "governance" | "compliance"
    object_lock_days = 30                  # retention of each locked object, from its backup's start

    [storage_class]                        # overrides; the most specific wins: label, then kind, then default
    wal = "STANDARD"                       # every WAL file (segments, history, backup history, partial)
    "postgres-logical" = "STANDARD_IA"     # a backup kind (postgres-logical, postgres-physical, neo4j, put)
    "label:orders-monthly" = "GLACIER_IR"  # backups whose name label (labels.name, --label) is orders-monthly

Why the class is chosen at write time and not by a lifecycle transition: backup keys carry no kind or
label (``v1/backups/<id>/...``), so a lifecycle rule cannot tell a monthly from a daily; the writer knows.
GLACIER and DEEP_ARCHIVE are refused: their objects cannot be read without a restore request first, so
``verify``, ``restore`` and a PITR would fail exactly when needed. GLACIER_IR reads like STANDARD.

Object Lock applies to immutable objects only: data objects, manifests and WAL files. Key objects (key
retirement deletes them), leases, the repository secret (``v1/repokey/``), the repository config and the
catalog/audit working objects stay unlocked: they must stay deletable or replaceable. Every object of one
backup carries the same retain-until date (its start plus ``object_lock_days``), recorded in its manifest
(``object_lock``), so prune knows without a request per object; WAL files are locked from their push and
``Storage.retention(key)`` tells.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from seedvault.errors import ConfigError
from seedvault.storage.base import ObjectLock, WriteOptions

# Classes an object may be written with; each reads back at once (GET works without a restore request).
WRITABLE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "REDUCED_REDUNDANCY",
    "EXPRESS_ONEZONE",
)
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")  # need a RestoreObject before any read
LOCK_MODES = ("off", "governance", "compliance")
WAL = "wal"
LABEL_PREFIX = "label:"
MAX_LOCK_DAYS = 36500


def check_storage_class(value: object, setting: str) -> str:
    """``value`` as an S3 storage class seedvault can read back, or a ConfigError naming the setting."""
    text = str(value).strip().upper() if isinstance(value, str) else None
    if text in WRITABLE_CLASSES:
        return text
    if text in ARCHIVE_CLASSES:
        raise ConfigError(
            f"{setting}: {text} objects cannot be read without a restore request, so verify and restore would fail",
            hint="use GLACIER_IR (instant retrieval) for rarely read backups",
        )
    raise ConfigError(f"{setting}: unknown s3 storage class {value!r}; use one of {', '.join(WRITABLE_CLASSES)}")


def check_class_table(table: Mapping[str, object]) -> dict[str, str]:
    """The ``[storage_class]`` table checked: keys ``wal``, a kind, or ``label:<name>``; values writable classes."""
    out: dict[str, str] = {}
    for key, value in table.items():
        name = str(key).strip()
        target = name[len(LABEL_PREFIX) :] if name.startswith(LABEL_PREFIX) else name
        if not target or any(c.isspace() for c in target):
            raise ConfigError(f"storage_class: invalid key {key!r}; use 'wal', a backup kind or 'label:<name>'")
        out[name] = check_storage_class(value, f"storage_class.{name}")
    return out


def parse_pairs(text: str, setting: str) -> dict[str, str]:
    """``"wal=STANDARD,label:monthly=GLACIER_IR"`` (the environment form of a TOML table) as a dict."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{setting}: expected key=value pairs separated by commas, not {item!r}")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class WritePolicy:
    """Which :class:`WriteOptions` each immutable object gets, from the settings (see the module docstring)."""

    default_class: str | None = None
    classes: Mapping[str, str] = field(default_factory=dict)
    lock_mode: str = "off"
    lock_days: int = 30

    @classmethod
    def from_settings(cls, settings: Any) -> WritePolicy:
        return cls(
            default_class=settings.s3_storage_class,
            classes=dict(settings.storage_class or {}),
            lock_mode=settings.object_lock,
            lock_days=settings.object_lock_days,
        )

    def storage_class(self, kind: str | None, labels: Mapping[str, str] | None = None) -> str | None:
        """The class for a backup of ``kind`` with ``labels`` (``kind=None``: a WAL file); None: the default."""
        name = (labels or {}).get("name")
        if kind is None:
            return self.classes.get(WAL, self.default_class)
        if name and LABEL_PREFIX + name in self.classes:
            return self.classes[LABEL_PREFIX + name]
        return self.classes.get(kind, self.default_class)

    def lock(self, start: datetime) -> ObjectLock | None:
        """The retention for objects written from ``start`` on, or None with ``object_lock = "off"``."""
        if self.lock_mode == "off":
            return None
        until = (start.astimezone(UTC) + timedelta(days=self.lock_days)).replace(microsecond=0)
        return ObjectLock(self.lock_mode.upper(), until)

    def backup(self, kind: str, labels: Mapping[str, str] | None, start: datetime) -> WriteOptions:
        """Options for a backup's data objects and manifest (never its key objects: those stay deletable)."""
        return WriteOptions(self.storage_class(kind, labels), self.lock(start))

    def wal(self, now: datetime | None = None) -> WriteOptions:
        return WriteOptions(self.storage_class(None), self.lock(now or datetime.now(UTC)))


def policy_of(storage: Any) -> WritePolicy:
    """The policy ``open_storage`` attached to ``storage``; a plain one (default class, no lock) otherwise."""
    policy = getattr(storage, "write_policy", None)
    return policy if isinstance(policy, WritePolicy) else WritePolicy()


# --- the manifest record (FORMAT.md section 5, "object_lock") ------------------------------------------------
def lock_record(lock: ObjectLock | None) -> dict[str, str] | None:
    """The manifest's ``object_lock`` value: ``{"mode": "GOVERNANCE", "retain_until": "2027-01-02T07:48:32Z"}``."""
    if lock is None:
        return None
    return {"mode": lock.mode, "retain_until": lock.retain_until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def parse_lock_time(text: str) -> datetime:
    """``YYYY-MM-DDTHH:MM:SSZ`` (the manifest's form) as a UTC datetime; ValueError otherwise."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def manifest_lock(body: Mapping[str, Any]) -> tuple[str, datetime] | None:
    """(mode, retain-until) recorded in a manifest body, or None: what prune asks before deleting a backup.

    The record holds for every data object and the manifest of that backup (all written with that date).
    """
    record = body.get("object_lock")
    if not record:
        return None
    return str(record["mode"]), parse_lock_time(str(record["retain_until"]))


def locked(retention: tuple[str, datetime] | None, now: datetime | None = None) -> bool:
    """Is an object with this retention still undeletable at ``now``?"""
    return retention is not None and retention[1] > (now or datetime.now(UTC))


# --- settings ------------------------------------------------------------------------------------------------
# USD per GB-month (GB = 2^30 bytes, as S3 bills), AWS us-east-1 list prices of 2026; estimates only.
DEFAULT_PRICES: dict[str, float] = {
    "STANDARD": 0.023,
    "INTELLIGENT_TIERING": 0.023,  # the frequent-access tier; colder tiers cost less
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
    "REDUCED_REDUNDANCY": 0.024,
    "EXPRESS_ONEZONE": 0.11,
}


def check_prices(table: Mapping[str, object]) -> dict[str, float]:
    """The ``[prices]`` table: storage class -> non-negative USD per GB-month."""
    out: dict[str, float] = {}
    for key, value in table.items():
        name = str(key).strip().upper()
        if name not in DEFAULT_PRICES:
            raise ConfigError(f"prices: unknown s3 storage class {key!r}; use one of {', '.join(DEFAULT_PRICES)}")
        try:
            price = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"prices.{name}: {value!r} is not a number (USD per GB-month)") from None
        if not 0 <= price < 1000:
            raise ConfigError(f"prices.{name}: {value!r} is not a price per GB-month")
        out[name] = price
    return out


def check_settings(settings: Any) -> None:
    """Validate (and normalise) the storage-cost settings up front, before any storage is touched."""
    if settings.s3_storage_class is not None:
        settings.s3_storage_class = check_storage_class(settings.s3_storage_class, "s3_storage_class")
    if not isinstance(settings.storage_class, Mapping):
        raise ConfigError("storage_class must be a table of kind, 'label:<name>' or 'wal' to a storage class")
    settings.storage_class = check_class_table(settings.storage_class)
    mode = str(settings.object_lock).strip().lower()
    if mode not in LOCK_MODES:
        raise ConfigError(f"object_lock must be one of {', '.join(LOCK_MODES)}, not {settings.object_lock!r}")
    settings.object_lock = mode
    if not isinstance(settings.object_lock_days, int) or not 1 <= settings.object_lock_days <= MAX_LOCK_DAYS:
        raise ConfigError(f"object_lock_days must be a whole number of days from 1 to {MAX_LOCK_DAYS}")
    if not isinstance(settings.prices, Mapping):
        raise ConfigError("prices must be a table of storage class to USD per GB-month")
    settings.prices = check_prices(settings.prices)


def manifest_fields(options: WriteOptions) -> dict[str, Any]:
    """What a backup's manifest body gains from its write options: ``object_lock`` when locked, else nothing."""
    record = lock_record(options.lock)
    return {"object_lock": record} if record else {}


def refuse_locked_delete(stored_manifest: bytes, backup_id: str, now: datetime | None = None) -> None:
    """``seedvault delete`` of a backup its manifest records as locked: a clear UsageError instead of a no-op.

    Why: on a lock-enabled (so versioned) bucket a delete by key succeeds but only adds delete markers; the
    locked versions stay, billed, until their retention ends. The backup would vanish from ``list`` and free
    nothing. A manifest that cannot be parsed does not stop the delete (a damaged backup must stay deletable).
    """
    from seedvault.errors import SeedvaultError, UsageError
    from seedvault.format import manifest as mf

    try:
        retention = manifest_lock(mf.parse(stored_manifest, backup_id)[0])
    except (SeedvaultError, ValueError, KeyError):
        return
    if retention is not None and locked(retention, now):
        mode, until = retention
        raise UsageError(
            f"backup {backup_id} is under S3 Object Lock ({mode.lower()}) until {until:%Y-%m-%dT%H:%M:%SZ}; deleting"
            " it now would only hide it behind delete markers and free nothing",
            hint="delete it after that date (prune skips it until then too)",
        )


def lock_policy_conflict(lock_mode: str, lock_days: int, keep_within: timedelta) -> str | None:
    """What prune should report when the lock outlasts the retention policy (None when it does not).

    Locked backups cannot be deleted before their date, so with ``object_lock_days`` above ``keep_within``
    the repository keeps (and bills) every backup for the lock period, whatever the policy says.
    """
    if lock_mode == "off" or timedelta(days=lock_days) <= keep_within:
        return None
    return (
        f"object_lock_days ({lock_days}) is longer than keep_within ({keep_within.days} days): every backup stays"
        f" locked, and stored, for {lock_days} days"
    )
