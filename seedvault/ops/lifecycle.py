"""``seedvault lifecycle``: an S3 lifecycle configuration consistent with the settings, for an operator to apply.

Rules (all below the repository's prefix):

* abort incomplete multipart uploads after ``cleanup_grace`` rounded up to whole days (at least 1): what an
  interrupted writer left behind, as ``seedvault cleanup`` would (S3 does not see leases: the grace must
  exceed the longest single upload, as for cleanup);
* a transition of WAL files (``v1/wal/``) to ``storage_class.wal``, and of backups (``v1/backups/``) to
  ``s3_storage_class`` when no kind or label override would be moved by it: for objects written before the
  setting (new ones are written in their class already). Per-kind and per-label classes cannot be expressed
  by prefix (backup keys carry no kind or label), so they are applied at write time only;
* on versioned buckets (Object Lock buckets always are), noncurrent versions expire ``object_lock_days`` + 7
  days after they stopped being current (a locked version is kept by S3 until its retention ends anyway), and
  delete markers left without versions are removed.

Never an ``Expiration`` of current objects: which backup and WAL file may go is decided by ``seedvault prune``
(retention policy, PITR window, pins, DIFF chains, verified backups); an age-based expiry would delete a
backup that a kept backup or the PITR window still needs, with no record of it.
"""

from __future__ import annotations

import math
from typing import Any

from seedvault.config import Settings, parse_duration
from seedvault.format import layout

NONCURRENT_MARGIN_DAYS = 7
MIN_TRANSITION_SIZE = 128 * 1024 - 1  # ObjectSizeGreaterThan: S3's own default floor; small objects cost more moved
# Classes a lifecycle transition may target, in S3's waterfall order (objects only move down it).
WATERFALL = ("STANDARD_IA", "INTELLIGENT_TIERING", "ONEZONE_IA", "GLACIER_IR")
# S3 refuses transitions to the infrequent-access classes before an object is 30 days old.
MIN_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30}


def _rank(storage_class: str | None) -> int:
    return WATERFALL.index(storage_class) + 1 if storage_class in WATERFALL else 0


def _transition(rule_id: str, prefix: str, storage_class: str) -> dict[str, Any]:
    return {
        "ID": rule_id,
        "Status": "Enabled",
        "Filter": {"And": {"Prefix": prefix, "ObjectSizeGreaterThan": MIN_TRANSITION_SIZE}},
        "Transitions": [{"Days": MIN_DAYS.get(storage_class, 0), "StorageClass": storage_class}],
    }


def lifecycle_rules(settings: Settings, prefix: str) -> tuple[dict[str, Any], list[str]]:
    """(the lifecycle configuration, one explanatory line per decision) for a repository at ``prefix``.

    ``prefix`` is the repository's key prefix in its bucket, ``""`` or ending with ``/``.
    """
    notes: list[str] = []
    grace_days = max(1, math.ceil(parse_duration(settings.cleanup_grace) / 86400))
    rules: list[dict[str, Any]] = [
        {
            "ID": "seedvault-abort-incomplete-uploads",
            "Status": "Enabled",
            "Filter": {"Prefix": prefix},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": grace_days},
        }
    ]
    notes.append(
        f"multipart uploads unfinished after {grace_days} day(s) are aborted (cleanup_grace {settings.cleanup_grace});"
        " S3 does not see leases, so no single upload may take longer"
    )
    default = settings.s3_storage_class or "STANDARD"
    wal_class = settings.storage_class.get("wal", default)
    if _rank(wal_class):
        rules.append(_transition("seedvault-wal-storage-class", f"{prefix}{layout.WAL}", wal_class))
        notes.append(f"WAL files of 128 KiB and more move to {wal_class} (new ones are written in it already)")
    backup_overrides = {k: v for k, v in settings.storage_class.items() if k != "wal"}
    warmer = sorted(k for k, v in backup_overrides.items() if _rank(v) < _rank(default))
    if _rank(default) and not warmer:
        rules.append(_transition("seedvault-backups-storage-class", f"{prefix}{layout.BACKUPS}", default))
        notes.append(f"backup objects of 128 KiB and more move to {default} (s3_storage_class)")
    elif _rank(default):
        notes.append(
            f"no transition of v1/backups/ to {default}: it would also move the backups of {', '.join(warmer)},"
            " which are set to a warmer class"
        )
    if backup_overrides:
        notes.append(
            "classes per kind and label ("
            + ", ".join(f"{k}={v}" for k, v in sorted(backup_overrides.items()))
            + ") are applied when objects are written: backup keys carry no kind or label a rule could match"
        )
    noncurrent = settings.object_lock_days + NONCURRENT_MARGIN_DAYS
    rules.append(
        {
            "ID": "seedvault-noncurrent-versions",
            "Status": "Enabled",
            "Filter": {"Prefix": prefix},
            "NoncurrentVersionExpiration": {"NoncurrentDays": noncurrent},
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        }
    )
    notes.append(
        f"versioned buckets: a deleted object's old version goes {noncurrent} days after the delete"
        f" (object_lock_days {settings.object_lock_days} + {NONCURRENT_MARGIN_DAYS}), and so do lone delete markers"
    )
    notes.append(
        "no Expiration of current objects: 'seedvault prune' decides what may be deleted (retention policy, PITR"
        " window, pins, DIFF chains, verification); an age-based expiry would break chains and the PITR window"
    )
    return {"Rules": rules}, notes
