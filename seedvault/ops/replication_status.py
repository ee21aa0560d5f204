"""``seedvault replicate --status``: what the replica lacks, how old and how big that is, and whether it alerts.

"Lacks" means what a ``replicate`` run now would copy: the source's backups and WAL files that the replica's own
retention policy keeps and the replica does not hold (a backup the replica pruned by its policy is not lacking).

The lag in time is the age of the **oldest** thing lacking (a backup's finish time, a WAL file's archive time):
how long a recovery point has existed in one place only. Zero when nothing is lacking, however long ago the
last run was: an idle source needs no copies. The lag in bytes is what the next run would copy. Both are
Prometheus gauges (``seedvault_replication_lag_seconds``, ``seedvault_replication_lag_bytes``), and a lag over
``replication_max_lag`` (``[status]``, default 2 h for an hourly schedule) is the alert ``replication-lag``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from seedvault import retention as rt
from seedvault.format import layout
from seedvault.ops.replicate import open_destination, plan
from seedvault.repository import Repository
from seedvault.sources.postgres.wal.plan import _parse_time
from seedvault.storage.base import redact_url
from seedvault.units import human_bytes, human_seconds


@dataclass
class ReplicationStatus:
    source: str
    destination: str
    backups_lacking: list[dict[str, Any]] = field(default_factory=list)  # id, kind, label, finished, bytes
    wal_lacking: dict[str, dict[str, Any]] = field(default_factory=dict)  # system id -> files, first, last, bytes
    lag_seconds: float = 0.0
    lag_bytes: int = 0
    max_lag_seconds: float = 7200.0
    backups_at_destination: int = 0
    newest_at_destination: str | None = None

    @property
    def alerting(self) -> bool:
        return self.lag_seconds > self.max_lag_seconds

    def line(self) -> str:
        if not self.backups_lacking and not self.wal_lacking:
            return f"the replica {self.destination} holds everything its policy keeps (lag 0 s)"
        wal = sum(int(w["files"]) for w in self.wal_lacking.values())
        return (
            f"the replica {self.destination} lacks {len(self.backups_lacking)} backups and {wal} WAL files "
            f"({human_bytes(self.lag_bytes)}), the oldest {human_seconds(self.lag_seconds)} old "
            f"(replication_max_lag {human_seconds(self.max_lag_seconds)})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "backups_lacking": self.backups_lacking,
            "wal_lacking": self.wal_lacking,
            "lag_seconds": round(self.lag_seconds, 3),
            "lag_bytes": self.lag_bytes,
            "max_lag_seconds": self.max_lag_seconds,
            "alerting": self.alerting,
            "backups_at_destination": self.backups_at_destination,
            "newest_at_destination": self.newest_at_destination,
        }


def replication_status(
    src: Repository, dst: Repository, policies: rt.Policies, *, max_lag: float, now: datetime | None = None
) -> ReplicationStatus:
    """Compare the two repositories (reads both catalogs and WAL listings; copies nothing)."""
    now = now or datetime.now(UTC)
    exists = dst.storage.exists(layout.CONFIG)  # an empty replica lacks everything; asking creates nothing
    if exists:
        open_destination(src, dst)
    wanted = plan(src, dst if exists else None, policies, now)
    present = {b.backup_id for b in wanted.dst.backups}
    out = ReplicationStatus(redact_url(src.storage.url), redact_url(dst.storage.url), max_lag_seconds=max_lag)
    out.backups_at_destination = len(present)
    out.newest_at_destination = max(present) if present else None
    oldest: datetime | None = None
    for bid in sorted(wanted.backups):
        if bid in present:
            continue
        body = wanted.backups[bid]
        finished = _parse_time(str(body.get("finished") or body.get("started")))
        size = int(body.get("stored_size") or 0)
        out.backups_lacking.append({
            "id": bid, "kind": body.get("kind"), "label": (body.get("labels") or {}).get("name"),
            "finished": body.get("finished"), "bytes": size})  # fmt: skip
        out.lag_bytes += size
        oldest = finished if oldest is None else min(oldest, finished)
    have = {w.key for w in wanted.dst.wal}
    for w in sorted(wanted.src.wal, key=lambda w: w.key):
        if w.key in have or w.key not in wanted.wal:
            continue
        size = wanted.src.wal_sizes.get(w.key, 0)
        entry = out.wal_lacking.setdefault(w.system_id, {"files": 0, "first": w.name, "last": w.name, "bytes": 0})
        entry["files"] += 1
        entry["last"] = w.name
        entry["bytes"] += size
        out.lag_bytes += size
        oldest = w.modified if oldest is None else min(oldest, w.modified)
    out.lag_seconds = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
    return out
