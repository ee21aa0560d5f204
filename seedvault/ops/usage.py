"""``seedvault usage``: what the repository stores, per kind, label and WAL system, and what it costs a month.

One listing of the whole repository (sizes and, on S3, each object's storage class come with it) plus one
manifest per backup for its kind and label (:func:`backup_bodies`, the one place manifests are read, to be
swapped for the catalog). Costs are estimates: bytes times the price per GB-month of the object's class
(``prices`` settings over :data:`seedvault.storagecost.DEFAULT_PRICES`, GB = 2^30 bytes as S3 bills), with
S3's minimum billable size of 128 KiB per object in the infrequent-access classes. Requests, retrieval,
transfer, early deletion and noncurrent versions are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from seedvault.errors import SeedvaultError
from seedvault.format import layout
from seedvault.format import manifest as mf
from seedvault.repository import Repository
from seedvault.storage.base import ObjectInfo
from seedvault.storagecost import DEFAULT_PRICES

GB = 1 << 30
KiB = 1024
# S3 bills each object in these classes as at least this many bytes (AWS pricing notes).
MIN_BILLABLE = {"STANDARD_IA": 128 * KiB, "ONEZONE_IA": 128 * KiB, "GLACIER_IR": 128 * KiB}
ARCHIVE_OVERHEAD = {"GLACIER": 40 * KiB, "DEEP_ARCHIVE": 40 * KiB}  # index and metadata per object
WAL_ROOT = layout.WAL
NO_CLASS = "(none)"  # storage without classes (file://): sizes only, no cost


@dataclass
class Tally:
    objects: int = 0
    bytes: int = 0
    usd_month: float = 0.0
    unpriced_bytes: int = 0  # in classes without a price: not in usd_month

    def add(self, size: int, cost: float | None) -> None:
        self.objects += 1
        self.bytes += size
        if cost is None:
            self.unpriced_bytes += size
        else:
            self.usd_month += cost

    def as_dict(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "bytes": self.bytes,
            "usd_month": round(self.usd_month, 6),
            "unpriced_bytes": self.unpriced_bytes,
        }


@dataclass
class UsageReport:
    repository: str
    authenticated: bool
    prices: dict[str, float]
    total: Tally = field(default_factory=Tally)
    kinds: dict[str, Tally] = field(default_factory=dict)
    labels: dict[str, Tally] = field(default_factory=dict)
    wal: dict[str, Tally] = field(default_factory=dict)
    classes: dict[str, Tally] = field(default_factory=dict)
    incomplete: Tally = field(default_factory=Tally)  # backup objects without a manifest (cleanup's business)
    unreadable: Tally = field(default_factory=Tally)  # backups whose manifest could not be read
    other: Tally = field(default_factory=Tally)  # config, leases, repository secret, catalog, audit
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def table(rows: Mapping[str, Tally]) -> dict[str, Any]:
            return {name: rows[name].as_dict() for name in sorted(rows)}

        return {
            "repository": self.repository,
            "estimate": True,
            "authenticated": self.authenticated,
            "prices_usd_per_gb_month": dict(sorted(self.prices.items())),
            "total": self.total.as_dict(),
            "kinds": table(self.kinds),
            "labels": table(self.labels),
            "wal": table(self.wal),
            "storage_classes": table(self.classes),
            "incomplete_backups": self.incomplete.as_dict(),
            "unreadable_backups": self.unreadable.as_dict(),
            "other": self.other.as_dict(),
            "problems": self.problems,
        }


def monthly_cost(size: int, storage_class: str, prices: Mapping[str, float]) -> float | None:
    """Estimated USD a month for one object of ``size`` bytes in ``storage_class``; None without a price."""
    price = prices.get(storage_class)
    if price is None:
        return None
    billable = max(size, MIN_BILLABLE.get(storage_class, 0)) + ARCHIVE_OVERHEAD.get(storage_class, 0)
    return billable / GB * price


def backup_bodies(repo: Repository, backup_ids: Iterable[str], *, authenticate: bool) -> dict[str, dict | str]:
    """Each backup's manifest body (authenticated when there is a key), or why it cannot be read.

    The one place ``usage`` reads manifests: a catalog of manifest bodies replaces it without touching the rest.
    """
    out: dict[str, dict | str] = {}
    for bid in backup_ids:
        try:
            if authenticate:
                out[bid] = repo.manifest(bid)
            else:
                out[bid] = mf.parse(repo.storage.get_bytes(layout.manifest_key(bid)), bid)[0]
        except SeedvaultError as exc:  # deleted meanwhile, damaged, another key: counted as unreadable
            out[bid] = exc.one_line()
    return out


def usage(
    repo: Repository, prices: Mapping[str, float] | None = None, *, listing: list[ObjectInfo] | None = None
) -> UsageReport:
    """Walk one listing of the repository and attribute every object to a backup, a WAL system or 'other'.

    ``listing``: that listing when the caller has it already (``seedvault metrics`` reads it once for both).
    """
    merged = {**DEFAULT_PRICES, **(prices or {})}
    authenticate = repo.key_source is not None
    objects = list(repo.storage.list("")) if listing is None else listing
    manifests = sorted(
        {bid for o in objects if (bid := layout.backup_id_of(o.key)) and o.key == layout.manifest_key(bid)}
    )
    bodies = backup_bodies(repo, manifests, authenticate=authenticate)
    report = UsageReport(repo.storage.url, authenticated=authenticate, prices=merged)
    report.problems = [body for body in bodies.values() if isinstance(body, str)]
    for info in objects:
        _attribute(report, info, bodies, merged)
    return report


def _attribute(
    report: UsageReport, info: ObjectInfo, bodies: Mapping[str, dict | str], prices: Mapping[str, float]
) -> None:
    storage_class = info.storage_class or NO_CLASS
    cost = None if storage_class == NO_CLASS else monthly_cost(info.size, storage_class, prices)
    targets = [report.total, report.classes.setdefault(storage_class, Tally())]
    bid = layout.backup_id_of(info.key)
    if bid is not None:
        body = bodies.get(bid)
        if body is None:
            targets.append(report.incomplete)
        elif isinstance(body, str):
            targets.append(report.unreadable)
        else:
            targets.append(report.kinds.setdefault(str(body.get("kind")), Tally()))
            name = (body.get("labels") or {}).get("name")
            if name:
                targets.append(report.labels.setdefault(str(name), Tally()))
    elif info.key.startswith(WAL_ROOT):
        system_id = info.key[len(WAL_ROOT) :].split("/", 1)[0]
        targets.append(report.wal.setdefault(system_id, Tally()))
    else:
        targets.append(report.other)
    for tally in targets:
        tally.add(info.size, cost)
