"""The retention planner: what a policy keeps and deletes, and why. Pure: no storage, no clock of its own.

``plan(backups, wal, policies, now)`` takes everything as plain data (gathered by :mod:`seedvault.ops.prune`)
and returns one decision per backup and per WAL file, each with every rule that keeps it (or the one reason
it goes). Being pure is what lets the property tests (tests/unit/test_retention_properties.py) throw random
histories at it and check the promises below, and lets ``prune`` print the whole plan before deleting.

The policy (per kind and label, ``[retention]`` in the settings): ``keep_within`` (default 30 days), GFS
counts (``keep_last/daily/weekly/monthly/yearly``: the newest backup of each of the last N days/weeks/...
that have one, as restic counts them), ``min_verified`` (default 1) and, for PostgreSQL base backups,
``pitr_window`` (default: ``keep_within``): every moment of the window stays recoverable, so the newest base
backup consistent before the window's start is kept, with all WAL from its start on; a base backup kept by
another rule keeps the WAL from its start to its stop (enough to make it consistent).

Never deleted, whatever the policy (the "never" rules, checked first and by the property tests):

* a backup pinned (``seedvault pin``; until its date, if it has one);
* anything an S3 Object Lock still protects (and the plan says when that conflicts with the policy);
* a parent of a kept backup (Neo4j DIFF chains: a child is useless without every ancestor);
* WAL a kept base backup needs, every timeline history file, all WAL of a system without a base backup;
* anything dated in the future (a clock that jumped must not make today's backups look old);
* the newest ``min_verified`` backups of each kind and label that passed verification, and every backup
  newer than the newest verified one: an older backup goes only once a newer one has been verified.

WAL is planned per system and timeline, with the same functions a point-in-time recovery uses to choose
its base backup and walk its segments (:func:`seedvault.sources.postgres.wal.plan.fits`,
:func:`~seedvault.sources.postgres.wal.plan.walk`), so "recoverable" here means exactly what
``restore postgres-pitr`` will accept.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from seedvault.errors import ConfigError
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.plan import Target, fits

PHYSICAL = "postgres-physical"
DEFAULT_KEEP_WITHIN = timedelta(days=30)
FUTURE_SKEW = timedelta(minutes=5)  # clocks of hosts disagree by this much without anything being wrong
GFS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


@dataclass(frozen=True)
class Policy:
    """What to keep of one kind and label. Counts of 0 switch a rule off; ``pitr_window`` None: keep_within."""

    keep_within: timedelta = DEFAULT_KEEP_WITHIN
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    min_verified: int = 1
    pitr_window: timedelta | None = None

    def window(self) -> timedelta:
        return self.keep_within if self.pitr_window is None else self.pitr_window

    def describe(self) -> str:
        parts = [f"keep_within {_span(self.keep_within)}"]
        parts += [f"{name} {getattr(self, name)}" for name in GFS if getattr(self, name)]
        parts.append(f"min_verified {self.min_verified}")
        if self.pitr_window is not None:
            parts.append(f"pitr_window {_span(self.pitr_window)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Policies:
    """The default policy and overrides by ``kind``, ``label:<name>`` or ``<kind>:<name>`` (most specific wins)."""

    default: Policy = field(default_factory=Policy)
    overrides: dict[str, Policy] = field(default_factory=dict)

    def for_(self, kind: str, label: str) -> Policy:
        for key in (f"{kind}:{label}", f"label:{label}", kind):
            if key in self.overrides:
                return self.overrides[key]
        return self.default


@dataclass(frozen=True)
class BackupItem:
    """One complete backup as the planner sees it (from its authenticated manifest and the audit log)."""

    backup_id: str
    kind: str
    label: str
    time: datetime  # when it became consistent (the manifest's ``finished``)
    parent: str | None = None
    pinned: str | None = None  # why, and by whom: set only while the pin holds
    locked_until: datetime | None = None  # S3 Object Lock retain-until of its objects
    verified: bool = False  # its last verification passed
    # base backups (postgres-physical) only:
    system_id: str | None = None
    source: dict[str, Any] | None = None  # the manifest's source: timeline, start/stop LSN, stop_time, segment size
    # platform groups only: the backups it holds, and (system id, timeline, LSN) of its restore point
    members: tuple[str, ...] = ()
    wal_until: tuple[str, int, str] | None = None


@dataclass(frozen=True)
class WalItem:
    """One archived WAL file of one system."""

    system_id: str
    key: str  # its storage key (what the executor deletes)
    name: str  # the PostgreSQL file name
    kind: str  # segment | partial | backup | history
    timeline: int
    segment: str | None
    modified: datetime
    locked_until: datetime | None = None


@dataclass
class Decision:
    """Keep or delete one item, and why (every keeping rule that applies, or the reason it goes)."""

    item: BackupItem | WalItem
    keep: bool
    reasons: list[str]

    @property
    def name(self) -> str:
        return self.item.backup_id if isinstance(self.item, BackupItem) else self.item.key


@dataclass
class RetentionPlan:
    backups: list[Decision] = field(default_factory=list)
    wal: list[Decision] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # Object Lock conflicts, systems planned conservatively

    def deletions(self) -> tuple[list[BackupItem], list[WalItem]]:
        return (
            [d.item for d in self.backups if not d.keep],  # type: ignore[misc]
            [d.item for d in self.wal if not d.keep],  # type: ignore[misc]
        )


# --- the planner ------------------------------------------------------------------------------------------
def plan(
    backups: Iterable[BackupItem],
    wal: Iterable[WalItem],
    policies: Policies,
    now: datetime,
    *,
    histories: dict[tuple[str, int], list[wn.HistoryEntry]] | None = None,
) -> RetentionPlan:
    """Decide every backup and WAL file. ``histories``: the parsed ancestry of each (system id, timeline)."""
    items = sorted(backups, key=lambda b: b.backup_id)
    keep: dict[str, list[str]] = defaultdict(list)
    out = RetentionPlan()

    groups: dict[tuple[str, str], list[BackupItem]] = defaultdict(list)
    for b in items:
        groups[(b.kind, b.label)].append(b)
    for (kind, label), members in groups.items():
        policy = policies.for_(kind, label)
        for b, why in _policy_keeps(members, policy, now):
            keep[b.backup_id].append(why)
    for b in items:
        keep[b.backup_id].extend(_never(b, now))
    by_id = {b.backup_id: b for b in items}

    # PITR windows: the anchor base backup of each system and timeline is kept (the WAL it needs, below).
    hist = histories or {}
    wal_items = sorted(wal, key=lambda w: w.key)
    wal_keep: dict[str, list[str]] = defaultdict(list)
    for sid in sorted(
        {b.system_id for b in items if b.kind == PHYSICAL and b.system_id} | {w.system_id for w in wal_items}
    ):
        bases = [b for b in items if b.kind == PHYSICAL and b.system_id == sid and b.source]
        segs = [w for w in wal_items if w.system_id == sid]
        _plan_system(sid, bases, segs, policies, now, hist, keep, wal_keep, out.warnings)

    # A kept platform group keeps its members (their parents follow below) and the WAL to its restore point.
    for b in items:
        if keep[b.backup_id] and b.members:
            for m in b.members:
                if m in by_id:
                    keep[m].append(f"member of kept group {b.backup_id}")
    # Parents of kept backups, to a fixed point (a kept child keeps its whole chain).
    changed = True
    while changed:
        changed = False
        for b in items:
            if keep[b.backup_id] and b.parent and b.parent in by_id and not keep[b.parent]:
                keep[b.parent].append(f"parent of kept {b.backup_id}")
                changed = True
    # Base backups kept by any rule keep the WAL that makes them consistent.
    for b in items:
        if b.kind == PHYSICAL and b.system_id and b.source and keep[b.backup_id]:
            for w in _consistency_wal(b, [w for w in wal_items if w.system_id == b.system_id], hist):
                wal_keep[w.key].append(f"makes kept base backup {b.backup_id} consistent")
    for g in items:
        if keep[g.backup_id] and g.wal_until:
            sid, tli, lsn = g.wal_until
            base = next((by_id[m] for m in g.members if m in by_id and by_id[m].kind == PHYSICAL), None)
            if base is None or base.source is None:
                continue
            segs = [w for w in wal_items if w.system_id == sid]
            for w in _consistency_wal(base, segs, hist, stop=(tli, wn.parse_lsn(lsn))):
                wal_keep[w.key].append(f"replays kept group {g.backup_id} to its restore point")

    for b in items:
        reasons = _dedup(keep[b.backup_id])
        if reasons:
            out.backups.append(Decision(b, True, reasons))
        else:
            out.backups.append(
                Decision(b, False, [f"outside the policy ({policies.for_(b.kind, b.label).describe()})"])
            )
        if _only_lock(reasons):
            assert b.locked_until is not None
            out.warnings.append(
                f"backup {b.backup_id} is outside the policy but under Object Lock until {_iso(b.locked_until)}: "
                "the lock period is longer than the policy keeps it"
            )
    for w in wal_items:
        reasons = wal_keep[w.key] + _never_wal(w, now)
        if reasons:
            out.wal.append(Decision(w, True, _dedup(reasons)))
        else:
            out.wal.append(Decision(w, False, ["not needed by any kept base backup or the PITR window"]))
    return out


def _policy_keeps(members: list[BackupItem], policy: Policy, now: datetime) -> Iterable[tuple[BackupItem, str]]:
    """The policy's keeping rules for one kind and label (newest first)."""
    newest_first = sorted(members, key=lambda b: (b.time, b.backup_id), reverse=True)
    for b in newest_first:
        if b.time > now - policy.keep_within:
            yield b, f"within keep_within {_span(policy.keep_within)}"
    for b in newest_first[: policy.keep_last]:
        yield b, f"keep_last {policy.keep_last}"
    for rule, bucket in (
        ("keep_daily", lambda t: t.strftime("%Y-%m-%d")),
        ("keep_weekly", lambda t: f"{t.isocalendar()[0]:04d}-W{t.isocalendar()[1]:02d}"),
        ("keep_monthly", lambda t: t.strftime("%Y-%m")),
        ("keep_yearly", lambda t: t.strftime("%Y")),
    ):
        count = getattr(policy, rule)
        seen: list[str] = []
        for b in newest_first:
            if len(seen) >= count:
                break
            key = bucket(b.time)
            if key not in seen:
                seen.append(key)
                yield b, f"{rule} {count} ({key})"
    verified = [b for b in newest_first if b.verified]
    for b in verified[: policy.min_verified]:
        yield b, f"newest verified (min_verified {policy.min_verified})"
    if policy.min_verified > 0:  # an older backup goes only once a newer one passed verification
        for b in newest_first:
            if not verified or (b.time, b.backup_id) > (verified[0].time, verified[0].backup_id):
                yield b, "no newer backup has been verified yet"


def _never(b: BackupItem, now: datetime) -> list[str]:
    out = []
    if b.pinned:
        out.append(f"pinned: {b.pinned}")
    if b.locked_until and b.locked_until > now:
        out.append(f"Object Lock until {_iso(b.locked_until)}")
    if b.time > now + FUTURE_SKEW:
        out.append(f"dated in the future ({_iso(b.time)})")
    return out


def _never_wal(w: WalItem, now: datetime) -> list[str]:
    out = []
    if w.kind == "history":
        out.append("timeline history (always kept)")
    if w.locked_until and w.locked_until > now:
        out.append(f"Object Lock until {_iso(w.locked_until)}")
    if w.modified > now + FUTURE_SKEW:
        out.append(f"dated in the future ({_iso(w.modified)})")
    return out


def _only_lock(reasons: list[str]) -> bool:
    return bool(reasons) and all(r.startswith("Object Lock until") for r in reasons)


def _plan_system(
    sid: str,
    bases: list[BackupItem],
    segs: list[WalItem],
    policies: Policies,
    now: datetime,
    hist: dict[tuple[str, int], list[wn.HistoryEntry]],
    keep: dict[str, list[str]],
    wal_keep: dict[str, list[str]],
    warnings: list[str],
) -> None:
    """Keep each timeline's PITR anchor and all WAL from its start along that timeline's ancestry."""
    timelines = sorted({w.timeline for w in segs} | {int(b.source["timeline"]) for b in bases if b.source})
    if not bases:
        for w in segs:
            wal_keep[w.key].append(f"system {sid} has no base backup: its WAL is all there is")
        return
    for tli in timelines:
        ancestry = ancestry_of(sid, tli, hist)
        if ancestry is None:  # a timeline without its history file: cannot tell its ancestry, keep its WAL
            for w in segs:
                if w.timeline == tli:
                    wal_keep[w.key].append(f"timeline {tli} has no history file: its ancestry is unknown")
            warnings.append(f"system {sid}: timeline {tli} has no history file; its WAL is kept")
            continue
        fitting = [b for b in bases if b.source and fits(b.source, ancestry, Target("latest"))]
        if not fitting:
            for w in segs:
                if w.timeline in {e.tli for e in ancestry}:
                    wal_keep[w.key].append(f"no base backup reaches timeline {tli}")
            continue
        # The window per base backup's own policy (labels may differ); the widest applies to the system.
        window = max(policies.for_(PHYSICAL, b.label).window() for b in fitting)
        start = now - window
        before = [b for b in fitting if b.source and fits(b.source, ancestry, Target("time", time=start))]
        # None consistent before the window starts: the one consistent first (its stop), not the one started
        # first; two backups may start at the same LSN and stop hours apart (hypothesis found it).
        anchor = before[-1] if before else min(fitting, key=_consistent_from)
        keep[anchor.backup_id].append(
            f"PITR anchor of timeline {tli}: newest base backup consistent before the pitr_window "
            f"{_span(window)} starts ({_iso(start)})"
            if before
            else f"PITR anchor of timeline {tli}: the base backup consistent first (none is consistent before the"
            " window starts)"
        )
        assert anchor.source is not None
        seg_size = int(anchor.source["wal_segment_size"])
        first = wn.segno_of_lsn(wn.parse_lsn(anchor.source["start_lsn"]), seg_size)
        tlis = {e.tli for e in ancestry}
        for w in segs:
            if w.kind == "history" or w.timeline not in tlis or w.segment is None:
                continue
            if wn.segno_of(w.segment, seg_size) >= first:
                wal_keep[w.key].append(f"PITR window of timeline {tli} (from anchor {anchor.backup_id})")


def _consistent_from(b: BackupItem) -> tuple[int, str]:
    """Sort key: where a base backup becomes consistent (its stop LSN), then its id."""
    assert b.source is not None
    return wn.parse_lsn(b.source["stop_lsn"]), b.backup_id


def _consistency_wal(
    b: BackupItem,
    segs: list[WalItem],
    hist: dict[tuple[str, int], list[wn.HistoryEntry]],
    stop: tuple[int, int] | None = None,
) -> list[WalItem]:
    """The WAL files from a base backup's start to its stop on its timeline (or to ``stop``: timeline, LSN)."""
    assert b.source is not None and b.system_id is not None
    seg_size = int(b.source["wal_segment_size"])
    tli = int(b.source["timeline"]) if stop is None else stop[0]
    first = wn.segno_of_lsn(wn.parse_lsn(b.source["start_lsn"]), seg_size)
    last = wn.segno_of_lsn(wn.parse_lsn(b.source["stop_lsn"]) if stop is None else stop[1], seg_size)
    ancestry = ancestry_of(b.system_id, tli, hist) or [wn.HistoryEntry(tli, 0, None)]
    needed = {(wn.timeline_of_segment(ancestry, s, seg_size), s) for s in range(first, last + 1)}
    return [
        w
        for w in segs
        if w.segment is not None and w.kind != "history" and (w.timeline, wn.segno_of(w.segment, seg_size)) in needed
    ]


def ancestry_of(sid: str, tli: int, hist: dict[tuple[str, int], list[wn.HistoryEntry]]) -> list[wn.HistoryEntry] | None:
    """Timeline ``tli``'s ancestry (oldest first); timeline 1 has none to read; None when its history is unknown."""
    if tli == 1:
        return [wn.HistoryEntry(1, 0, None)]
    return hist.get((sid, tli))


# --- settings ------------------------------------------------------------------------------------------------
POLICY_KEYS = {"keep_within", "pitr_window", "min_verified", *GFS}


def policies_of(settings: Any) -> Policies:
    """The retention policies of ``settings`` (its ``retention``: a TOML table, or the same as JSON from
    ``SEEDVAULT_RETENTION`` or a block); ConfigError naming the bad key or value."""
    from seedvault.config import settings_table

    return policies_from(settings_table(settings.retention, "retention", "SEEDVAULT_RETENTION"))


def policies_from(table: dict[str, Any] | None, origin: str = "retention") -> Policies:
    """``[retention]`` from the settings: default keys at the top, overrides in sub-tables.

    ``[retention]`` keep_within = "30d", keep_daily = 7, ...;  ``[retention."postgres-physical"]``
    pitr_window = "7d";  ``[retention."label:orders-db"]`` keep_monthly = 12;  ``[retention."neo4j:graph"]``.
    An override starts from the default policy and changes only the keys it names.
    """
    table = dict(table or {})
    subs = {k: v for k, v in table.items() if isinstance(v, dict)}
    default = _policy(Policy(), {k: v for k, v in table.items() if k not in subs}, origin)
    return Policies(default, {k: _policy(default, v, f"{origin}.{k}") for k, v in subs.items()})


def _policy(base: Policy, values: dict[str, Any], origin: str) -> Policy:
    from seedvault.units import parse_duration

    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in POLICY_KEYS:
            raise ConfigError(f"{origin}: unknown retention setting {key!r} (known: {', '.join(sorted(POLICY_KEYS))})")
        if key in ("keep_within", "pitr_window"):
            seconds = parse_duration(str(value))
            if seconds < 0:
                raise ConfigError(f"{origin}: {key} must not be negative")
            changes[key] = timedelta(seconds=seconds)
        else:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{origin}: {key} must be a whole number >= 0, not {value!r}")
            changes[key] = value
    return replace(base, **changes)


def _dedup(reasons: list[str]) -> list[str]:
    return list(dict.fromkeys(reasons))


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(d: timedelta) -> str:
    s = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"
