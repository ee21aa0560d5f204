"""Prometheus metrics of a repository, derived from the repository alone (no Prefect, no database).

Everything comes from what the repository stores, so ``seedvault metrics`` answers during an outage from any
host with the key: the catalog (each backup's authenticated manifest: finish time, duration, stored bytes),
the audit log (failed backups, verifications, drills and restore tests), one listing of every object for
bytes and the estimated cost (:mod:`seedvault.ops.usage`) and for the newest archived WAL file per system id.

Series are per *group*, the low-cardinality labels ``store`` (postgres, neo4j, platform, stream), ``database``
(the database name; a physical PostgreSQL cluster and its WAL by system id; a platform group or a ``put``
by its name label) and ``kind`` (logical, physical, dump, online-full, online-diff, export, group, put).
Backup ids never become labels. Each use builds its own :class:`CollectorRegistry` (never the global one).
Names follow Prometheus' conventions: base units (seconds, bytes), ``_timestamp_seconds`` for Unix times,
``_total`` for the one counter (failed backups: counted from the audit log, so it only grows while the log
is intact; ``seedvault_audit_chain_ok`` says whether it is).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from seedvault import audit
from seedvault.errors import MetricsPushFailed, SeedvaultError
from seedvault.ops.usage import NO_CLASS, WAL_ROOT, Tally, UsageReport, usage
from seedvault.repository import Repository
from seedvault.storage.base import ObjectInfo

PREFIX = "seedvault_"
GROUP = ("store", "database", "kind")
WAL = ("store", "database")
REPOSITORY_GROUP = {"store": "repository", "database": "all"}  # Pushgateway grouping key of repository-wide series
JOB = "seedvault"
DRILL_OPERATIONS = ("drill", "restore-test")

Group = tuple[str, str, str]


def group_of(body: Mapping[str, Any]) -> Group:
    """(store, database, kind) of one backup, from its manifest body."""
    kind = str(body.get("kind") or "unknown")
    labels = body.get("labels") or {}
    source = body.get("source") or {}
    name = str(labels.get("name") or kind)
    if kind == "postgres-logical":
        return "postgres", str(labels.get("database") or source.get("database") or name), "logical"
    if kind == "postgres-physical":
        return "postgres", str(labels.get("system_id") or source.get("system_id") or name), "physical"
    if kind == "neo4j":
        mode = str(source.get("mode") or "dump")
        if mode == "online":
            mode = f"online-{str(source.get('backup_type') or 'full').lower()}"
        return "neo4j", str(labels.get("database") or source.get("database") or name), mode
    if kind == "platform":
        return "platform", name, "group"
    if kind == "put":
        return "stream", name, "put"
    store, _, sub = kind.partition("-")
    return store, name, sub or kind


def _time(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


@dataclass
class GroupFigures:
    backups: int = 0
    last_success: float | None = None  # the newest backup's finish time
    duration: float | None = None  # its finish minus start
    stored_bytes: int | None = None  # its stored size
    raw_bytes: int | None = None
    failures: int = 0  # failed ``backup`` events in the audit log
    last_failure: float | None = None
    last_verified: float | None = None  # newest successful full verification of any of its backups
    drill_last: float | None = None
    drill_last_success: float | None = None
    drill_passed: int | None = None
    drill_rto: float | None = None
    drill_rpo: float | None = None
    drill_rto_target: float | None = None
    drill_rpo_target: float | None = None


@dataclass
class Snapshot:
    """Every figure of one repository at ``now`` (what the registry exposes)."""

    now: float
    groups: dict[Group, GroupFigures] = field(default_factory=dict)
    wal_last_archived: dict[str, float] = field(default_factory=dict)  # system id -> newest WAL object's time
    usage: UsageReport | None = None
    audit_ok: bool = True
    problems: list[str] = field(default_factory=list)
    # destination (its URL) -> (the newest successful replicate's start and end, from the audit log)
    replicated: dict[str, tuple[float, float]] = field(default_factory=dict)
    # destination -> (lag seconds, lag bytes): what appeared in this repository since that replicate started
    replication_lag: dict[str, tuple[float, int]] = field(default_factory=dict)
    replicated_wal: set[str] = field(default_factory=set)  # destinations whose newest good run copied WAL too

    def group(self, key: Group) -> GroupFigures:
        return self.groups.setdefault(key, GroupFigures())


def collect(repo: Repository, *, now: datetime | None = None, prices: Mapping[str, float] | None = None) -> Snapshot:
    """Read the catalog, the audit log and one listing of every object: every figure of the repository."""
    from seedvault.catalog import Catalog

    snap = Snapshot((now or datetime.now(UTC)).timestamp())
    bodies = dict(Catalog(repo).bodies())
    groups_by_id: dict[str, Group] = {bid: group_of(body) for bid, body in bodies.items()}
    for bid, body in bodies.items():
        fig = snap.group(groups_by_id[bid])
        fig.backups += 1
        finished = _time(body.get("finished"))
        if finished is not None and (fig.last_success is None or finished >= fig.last_success):
            started = _time(body.get("started"))
            fig.last_success = finished
            fig.duration = finished - started if started is not None else None
            fig.stored_bytes = int(body.get("stored_size") or 0)
            fig.raw_bytes = int(body.get("raw_size") or 0)
    _from_audit(repo, snap, groups_by_id, bodies)
    listing = list(repo.storage.list(""))
    for info in listing:
        _note_wal(snap, info)
    _replication_lag(snap, bodies, listing)
    snap.usage = usage(repo, prices, listing=listing)
    snap.problems += snap.usage.problems
    return snap


def _note_wal(snap: Snapshot, info: ObjectInfo) -> None:
    """The newest WAL file (segment, partial or backup file) of each system id, by its stored time."""
    if not _is_wal_record(info):
        return  # segments live under <timeline>/<segment prefix>/; keys, epochs and histories do not count
    system_id = info.key[len(WAL_ROOT) :].split("/", 1)[0]
    t = info.modified.timestamp()
    if t > snap.wal_last_archived.get(system_id, 0.0):
        snap.wal_last_archived[system_id] = t


def _replication_lag(snap: Snapshot, bodies: dict[str, dict], listing: list[ObjectInfo]) -> None:
    """Per destination: the age and bytes of what reached this repository after its last good replicate began.

    Why this bound, from the source alone: a successful run copied everything that was there when it started
    (its destination's policy aside), so what is newer may be missing there. ``seedvault replicate --status``
    compares both repositories exactly; this is what a scrape can afford.
    """
    wal = [(info.modified.timestamp(), info.size) for info in listing if _is_wal_record(info)]
    times = [(t, int(b.get("stored_size") or 0)) for b in bodies.values() if (t := _time(b.get("finished")))]
    for destination, (started, _) in snap.replicated.items():
        # A run with --no-wal copied no WAL: all of it counts as possibly lacking then (from the first).
        wal_since = started if destination in snap.replicated_wal else float("-inf")
        newer = [(t, size) for t, size in times if t > started] + [(t, size) for t, size in wal if t > wal_since]
        oldest = min((t for t, _ in newer), default=None)
        lag = max(0.0, snap.now - oldest) if oldest is not None else 0.0
        snap.replication_lag[destination] = (lag, sum(size for _, size in newer))


def _is_wal_record(info: ObjectInfo) -> bool:
    if not info.key.startswith(WAL_ROOT):
        return False
    rest = info.key[len(WAL_ROOT) :].split("/")
    return len(rest) == 4 and rest[0].isdigit() and len(rest[1]) == 8


def _failed_group(details: Mapping[str, Any], by_label: Mapping[tuple[str, str], Group]) -> Group:
    """The group of a failed backup (no manifest): its kind and name label, matched to committed backups."""
    kind = str(details.get("kind") or "unknown")
    label = str(details.get("label") or kind)
    known = by_label.get((kind, label))
    if known is not None:
        return known
    labels: dict[str, Any] = {"name": label}
    if details.get("database"):
        labels["database"] = details["database"]
    return group_of({"kind": kind, "labels": labels})


def _from_audit(repo: Repository, snap: Snapshot, groups_by_id: dict[str, Group], bodies: dict[str, dict]) -> None:
    try:
        report = audit.verify_chain(repo, full=False)
    except SeedvaultError as exc:  # no key, no repository secret yet, unreadable log: no audit figures
        snap.audit_ok = False
        snap.problems.append(f"audit log: {exc.one_line()}")
        return
    snap.audit_ok = report.ok
    snap.problems += [f"audit log: {p}" for p in report.problems]
    by_label = {(str(b.get("kind")), str((b.get("labels") or {}).get("name"))): groups_by_id[bid]
                for bid, b in bodies.items()}  # fmt: skip
    for ev in report.events:
        at = audit.parse_time(ev.time).timestamp()
        if ev.operation == "backup" and ev.result != "ok":
            fig = snap.group(_failed_group(ev.details, by_label))
            fig.failures += 1
            fig.last_failure = max(fig.last_failure or 0.0, at)
        elif ev.operation == "verify" and ev.result == "ok" and ev.details.get("scope", "full") == "full":
            for bid in ev.backup_ids:
                if bid in groups_by_id:
                    fig = snap.group(groups_by_id[bid])
                    fig.last_verified = max(fig.last_verified or 0.0, at)
        elif ev.operation in DRILL_OPERATIONS:
            _drill(snap, ev, at, groups_by_id)
        elif ev.operation == "replicate" and ev.result == "ok" and isinstance(ev.details.get("to_url"), str):
            started = _time(ev.details.get("started"))
            snap.replicated[ev.details["to_url"]] = (started if started is not None else at, at)
            if ev.details.get("wal", True):
                snap.replicated_wal.add(ev.details["to_url"])
            else:
                snap.replicated_wal.discard(ev.details["to_url"])


def _drill(snap: Snapshot, ev: audit.Event, at: float, groups_by_id: dict[str, Group]) -> None:
    """A platform drill (``drill``: RTO, RPO, targets) or a one-store restore test (``restore-test``)."""
    ids = [b for b in ev.backup_ids if b in groups_by_id]
    if ev.operation == "drill":
        group_id = ev.details.get("group_id")
        key = groups_by_id.get(group_id) if isinstance(group_id, str) else None
        key = key or next((groups_by_id[b] for b in ids if groups_by_id[b][0] == "platform"), None)
        key = key or ("platform", "platform", "group")
    elif ids:
        key = groups_by_id[ids[0]]
    else:
        return
    fig = snap.group(key)
    ok = ev.result == "ok"
    fig.drill_last, fig.drill_passed = at, int(ok)
    if ok:
        fig.drill_last_success = at
    if ev.operation == "drill":
        d = ev.details

        def seconds(name: str) -> float | None:
            value = d.get(name)
            return int(value) / 1000 if isinstance(value, int) else None

        fig.drill_rto, fig.drill_rpo = seconds("rto_ms"), seconds("rpo_ms")
        fig.drill_rto_target, fig.drill_rpo_target = seconds("rto_target_ms"), seconds("rpo_target_ms")


# --- exposition ------------------------------------------------------------------------------------------
GROUP_GAUGES = (  # (name without the prefix, attribute, help)
    ("backups", "backups", "Complete backups in the repository."),
    ("backup_last_success_timestamp_seconds", "last_success", "Finish time of the newest complete backup."),
    ("backup_duration_seconds", "duration", "Duration (start to commit) of the newest complete backup."),
    ("backup_stored_bytes", "stored_bytes", "Stored (compressed, encrypted) bytes of the newest complete backup."),
    ("backup_raw_bytes", "raw_bytes", "Raw bytes the newest complete backup read from its source."),
    ("backup_last_failure_timestamp_seconds", "last_failure", "Time of the newest failed backup attempt (audit log)."),
    ("backup_last_verified_timestamp_seconds", "last_verified", "Newest successful full verification of a backup."),
    ("drill_last_timestamp_seconds", "drill_last", "Time of the newest DR drill or restore test."),
    ("drill_last_success_timestamp_seconds", "drill_last_success", "Time of the newest passed drill or restore test."),
    ("drill_passed", "drill_passed", "1 if the newest drill or restore test passed (targets met), else 0."),
    ("drill_rto_seconds", "drill_rto", "Recovery time measured by the newest platform drill."),
    ("drill_rpo_seconds", "drill_rpo", "Recovery point (data loss window) measured by the newest platform drill."),
    ("drill_rto_target_seconds", "drill_rto_target", "RTO target of the newest platform drill."),
    ("drill_rpo_target_seconds", "drill_rpo_target", "RPO target of the newest platform drill."),
)


class _SnapshotCollector:
    """``snap``'s series; ``only``: just those of these (store, database) pairs (one Pushgateway group)."""

    def __init__(self, snap: Snapshot, only: set[tuple[str, str]] | None = None, *, repository: bool = True) -> None:
        self.snap = snap
        self.only = only
        self.repository = repository

    def _wanted(self, store: str, database: str) -> bool:
        return self.only is None or (store, database) in self.only

    def collect(self) -> Iterable[Metric]:
        groups = [(k, v) for k, v in sorted(self.snap.groups.items()) if self._wanted(k[0], k[1])]
        for name, attr, text in GROUP_GAUGES:
            family = GaugeMetricFamily(PREFIX + name, text, labels=GROUP)
            for key, fig in groups:
                value = getattr(fig, attr)
                if value is not None:
                    family.add_metric(list(key), float(value))
            if family.samples:
                yield family
        failures = CounterMetricFamily(
            PREFIX + "backup_failures", "Failed backup attempts recorded in the audit log.", labels=GROUP
        )
        for key, fig in groups:
            failures.add_metric(list(key), float(fig.failures))
        if failures.samples:
            yield failures
        yield from self._wal()
        if self.repository:
            yield from self._repository()

    def _wal(self) -> Iterable[Metric]:
        snap = self.snap
        lag = GaugeMetricFamily(
            PREFIX + "wal_archive_lag_seconds", "Seconds since the newest WAL file reached the repository.", labels=WAL
        )
        last = GaugeMetricFamily(
            PREFIX + "wal_last_archived_timestamp_seconds", "When the newest WAL file reached the repository.",
            labels=WAL,
        )  # fmt: skip
        for system_id, t in sorted(snap.wal_last_archived.items()):
            if self._wanted("postgres", system_id):
                lag.add_metric(["postgres", system_id], max(0.0, snap.now - t))
                last.add_metric(["postgres", system_id], t)
        if lag.samples:
            yield lag
            yield last

    def _repository(self) -> Iterable[Metric]:
        snap = self.snap
        if snap.usage is not None:
            yield from _usage_families(snap.usage)
        yield from self._replication()
        ok = GaugeMetricFamily(PREFIX + "audit_chain_ok", "1 if the audit log is intact and readable, else 0.")
        ok.add_metric([], 1.0 if snap.audit_ok else 0.0)
        yield ok
        problems = GaugeMetricFamily(PREFIX + "metrics_problems", "Unreadable backups or audit problems seen.")
        problems.add_metric([], float(len(snap.problems)))
        yield problems
        at = GaugeMetricFamily(PREFIX + "metrics_generated_timestamp_seconds", "When these figures were read.")
        at.add_metric([], snap.now)
        yield at

    def _replication(self) -> Iterable[Metric]:
        label = ["destination"]
        last = GaugeMetricFamily(PREFIX + "replication_last_success_timestamp_seconds",
                                 "End of the newest good replicate to the destination.", labels=label)  # fmt: skip
        lag = GaugeMetricFamily(PREFIX + "replication_lag_seconds",
                                "Age of the oldest backup or WAL file newer than the last good replicate's start.",
                                labels=label)  # fmt: skip
        size = GaugeMetricFamily(PREFIX + "replication_lag_bytes",
                                 "Stored bytes newer than the last good replicate's start.", labels=label)  # fmt: skip
        for destination, (_, ended) in sorted(self.snap.replicated.items()):
            last.add_metric([destination], ended)
            seconds, nbytes = self.snap.replication_lag.get(destination, (0.0, 0))
            lag.add_metric([destination], seconds)
            size.add_metric([destination], float(nbytes))
        if last.samples:
            yield from (last, lag, size)


def _usage_families(report: UsageReport) -> Iterable[Metric]:
    parts = dict(report.kinds)
    if report.wal:
        total = Tally()
        for t in report.wal.values():
            total.objects += t.objects
            total.bytes += t.bytes
            total.usd_month += t.usd_month
        parts["wal"] = total
    for name, tally in (("incomplete", report.incomplete), ("unreadable", report.unreadable), ("other", report.other)):
        if tally.objects:
            parts[name] = tally
    stored = GaugeMetricFamily(
        PREFIX + "repository_stored_bytes", "Bytes stored in the repository, by part.", labels=("part",)
    )
    objects = GaugeMetricFamily(PREFIX + "repository_objects", "Objects in the repository, by part.", labels=("part",))
    for name, tally in sorted(parts.items()):
        stored.add_metric([name], float(tally.bytes))
        objects.add_metric([name], float(tally.objects))
    yield stored
    yield objects
    if any(c != NO_CLASS for c in report.classes):  # storage with classes (S3): a cost estimate
        cost = GaugeMetricFamily(
            PREFIX + "repository_cost_estimate_dollars",
            "ESTIMATED monthly storage cost in USD (list prices per storage class; no requests or transfer).",
            labels=("part",),
        )
        for name, tally in sorted(parts.items()):
            cost.add_metric([name], round(tally.usd_month, 6))
        yield cost


def registry(snap: Snapshot, only: set[tuple[str, str]] | None = None, *, repository: bool = True) -> CollectorRegistry:
    """A fresh registry (never the global one) with ``snap``'s series, or those of ``only`` (store, database)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_SnapshotCollector(snap, only, repository=repository))  # type: ignore[arg-type]
    return reg


def push_groups(snap: Snapshot) -> list[tuple[str, str]]:
    """The (store, database) pairs of ``snap``: one Pushgateway group each."""
    return sorted({(k[0], k[1]) for k in snap.groups} | {("postgres", sid) for sid in snap.wal_last_archived})


def exposition(snap: Snapshot) -> bytes:
    """The text exposition format (what node_exporter's textfile collector and ``/metrics`` serve)."""
    return generate_latest(registry(snap))


def write_textfile(snap: Snapshot, path: str | Path) -> None:
    """Write the exposition atomically (temp file in the same directory, fsync, rename): never half a file."""
    path = Path(path)
    data = exposition(snap)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # node_exporter runs as its own user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def push(snap: Snapshot, url: str, *, job: str = JOB, timeout: float = 10.0) -> int:
    """Push to a Pushgateway: one group per (store, database) plus the repository-wide group; returns pushes.

    Each group is replaced whole (PUT), so the gateway holds exactly the figures of this read. Raises
    :class:`MetricsPushFailed` (one line, the URL without credentials) when the gateway refuses or is down.
    """
    from prometheus_client.exposition import push_to_gateway

    pushes = [(registry(snap, {pair}, repository=False), {"store": pair[0], "database": pair[1]})
              for pair in push_groups(snap)]  # fmt: skip
    pushes.append((registry(snap, set(), repository=True), dict(REPOSITORY_GROUP)))
    for reg, grouping in pushes:
        try:
            push_to_gateway(url, job, reg, grouping_key=grouping, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - urllib's errors (HTTPError, URLError, timeouts) become one line
            raise MetricsPushFailed(f"push to the Pushgateway at {safe_url(url)} failed: {_reason(exc)}") from None
    return len(pushes)


def safe_url(url: str) -> str:
    """The URL without user:password or query (a gateway behind basic auth): for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _reason(exc: BaseException) -> str:
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return type(exc).__name__
