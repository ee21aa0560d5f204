"""The recovery plan: which base backup, which timeline, and proof that every needed WAL segment exists.

PostgreSQL itself cannot tell "the archive ends here" from "a segment is missing": both are a
``restore_command`` answering "not found", after which it promotes at whatever point it reached. So
before anything is laid out, seedvault walks its own catalog from the base backup's start along the
target timeline's ancestry (as PostgreSQL's ``XLogFileReadAnyTLI`` would: each segment from the newest
timeline that began at or before it) and stops the restore with the first missing segment's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from seedvault.errors import BackupNotFound, UsageError, WalGap
from seedvault.repository import Repository
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.store import WalStore, system_ids

PHYSICAL = "postgres-physical"


@dataclass
class Target:
    kind: str  # time | lsn | name | latest | immediate
    value: str | None = None
    inclusive: bool = True
    time: datetime | None = None
    lsn: int | None = None


@dataclass
class Plan:
    system_id: str
    backup_id: str
    backup: dict[str, Any]
    timeline: int
    ancestry: list[wn.HistoryEntry]
    segments: list[str] = field(default_factory=list)
    seg_size: int = wn.DEFAULT_SEGMENT_SIZE
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "system_id": self.system_id,
            "backup_id": self.backup_id,
            "timeline": self.timeline,
            "ancestry": [
                (e.tli, wn.format_lsn(e.begin), None if e.end is None else wn.format_lsn(e.end)) for e in self.ancestry
            ],
            "first_segment": self.segments[0] if self.segments else None,
            "last_segment": self.segments[-1] if self.segments else None,
            "segments": len(self.segments),
            "warnings": self.warnings,
        }


def _parse_time(text: str) -> datetime:
    from datetime import UTC

    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def physical_backups(repo: Repository, system_id: str | None) -> list[tuple[str, dict[str, Any]]]:
    """Base backups (of ``system_id``), oldest first, as the catalog knows them."""
    from seedvault.catalog import Catalog

    return Catalog(repo).physical_backups(system_id, PHYSICAL)


def resolve_system_id(repo: Repository, backup_id: str | None, system_id: str | None) -> str:
    if system_id:
        return system_id
    if backup_id:
        return str(repo.manifest(backup_id)["source"]["system_id"])
    ids = sorted({b["source"]["system_id"] for _, b in physical_backups(repo, None)})
    if not ids:
        ids = system_ids(repo)
        if not ids:
            raise BackupNotFound(
                f"no physical base backup in {repo.storage.url}", hint="run 'seedvault backup postgres-base'"
            )
    if len(ids) > 1:
        raise UsageError(f"the repository holds WAL of several database systems ({', '.join(ids)}); pass --system-id")
    return ids[0]


def make_plan(
    repo: Repository,
    target: Target,
    *,
    backup_id: str | None = None,
    system_id: str | None = None,
    timeline: int | None = None,
) -> Plan:
    sid = resolve_system_id(repo, backup_id, system_id)
    store = WalStore(repo, sid)
    history_objs = {o.timeline: o for o in store.list_histories()}
    histories = set(history_objs)
    tli = timeline or max(histories | {1})
    if tli > 1:
        if tli not in histories:
            raise WalGap(f"timeline history {tli:08X}.history is not archived for system {sid}")
        ancestry = wn.parse_history(store.read_history(tli), tli)
    else:
        ancestry = [wn.HistoryEntry(1, 0, None)]
    candidates = physical_backups(repo, sid)
    bid, body = choose_backup(candidates, ancestry, target, backup_id=backup_id, what=f"system {sid}")
    src = body["source"]
    seg_size = int(src["wal_segment_size"])
    if timeline is None:
        _refuse_diverged(store, ancestry, history_objs, seg_size)
    plan = Plan(sid, bid, body, tli, ancestry, seg_size=seg_size)
    names = {e.tli: {o.name for o in store.list(e.tli) if o.kind == "segment"} for e in ancestry}
    plan.segments = walk(bid, src, ancestry, names, target, where=repo.storage.url)
    return plan


# --- the pure core: the same code answers a recovery and the retention planner's "is this moment reachable" ---
def fits(src: dict[str, Any], ancestry: list[wn.HistoryEntry], target: Target) -> bool:
    """Whether a base backup (its manifest ``source``) can start a recovery to ``target`` along ``ancestry``.

    It must lie wholly on one timeline of the ancestry, before that timeline's switch point, and be
    consistent (its stop) before the target.
    """
    e = next((x for x in ancestry if x.tli == int(src["timeline"])), None)
    if e is None:
        return False
    start, stop = wn.parse_lsn(src["start_lsn"]), wn.parse_lsn(src["stop_lsn"])
    if start < e.begin or (e.end is not None and stop > e.end):
        return False
    if target.kind == "lsn" and target.lsn is not None and stop > target.lsn:
        return False
    late = target.kind == "time" and target.time is not None and _parse_time(src["stop_time"]) >= target.time
    return not late


def choose_backup(
    candidates: list[tuple[str, dict[str, Any]]],
    ancestry: list[wn.HistoryEntry],
    target: Target,
    *,
    backup_id: str | None = None,
    what: str = "this system",
) -> tuple[str, dict[str, Any]]:
    """The base backup a recovery to ``target`` starts from: ``backup_id``, else the newest that fits."""
    tli = ancestry[-1].tli
    if backup_id:
        chosen = [(b, body) for b, body in candidates if b == backup_id]
        if not chosen:
            raise BackupNotFound(f"backup {backup_id} is not a physical base backup of {what}")
        if not fits(chosen[0][1]["source"], ancestry, target):
            raise UsageError(f"backup {backup_id} cannot reach the target on timeline {tli}")
        return chosen[0]
    chosen = [c for c in sorted(candidates, key=lambda c: c[0]) if fits(c[1]["source"], ancestry, target)]
    if not chosen:
        raise BackupNotFound(
            f"no physical base backup of {what} ends before the target on timeline {tli}",
            hint="'seedvault list' shows the backups; a base backup must finish before the recovery target "
            "(older ones may have been pruned: see the retention pitr_window)",
        )
    return chosen[-1]


def _refuse_diverged(
    store: WalStore, ancestry: list[wn.HistoryEntry], histories: dict[int, Any], seg_size: int
) -> None:
    """Refuse to pick the newest timeline by default when an older one kept running after the branch.

    Why: "newest timeline" is PostgreSQL's default, and right after a recovery. But a copy restored for a
    test that archives, or an old primary that was restarted, leaves two live histories: following the
    newer one would silently drop everything the other server committed since. Segments of an ancestor
    timeline past its switch point that were archived *after* the branch's history file say exactly that.
    (Segments past the switch point archived *before* it are the discarded future of a point-in-time
    recovery, the normal case.)
    """
    for parent, child in zip(ancestry, ancestry[1:], strict=False):
        if parent.end is None or child.tli not in histories:
            continue
        branched = histories[child.tli].modified
        objs = [o for o in store.list(parent.tli) if o.kind in ("segment", "partial") and o.segment]
        if not objs:
            continue
        switch = wn.segno_of_lsn(parent.end, seg_size)
        later = sorted(
            (o for o in objs if wn.segno_of(o.segment, seg_size) >= switch and o.modified > branched),
            key=lambda o: o.name,
        )
        if later:
            raise UsageError(
                f"timeline {child.tli} branched from timeline {parent.tli} at {wn.format_lsn(parent.end)}, but "
                f"timeline {parent.tli} kept archiving after that (up to {later[-1].name}): two servers have "
                "diverged, so there is no single 'latest'",
                hint=f"pass --timeline {parent.tli} (the server that kept running) or --timeline {child.tli}",
            )


def walk(
    backup_id: str,
    src: dict[str, Any],
    ancestry: list[wn.HistoryEntry],
    names: dict[int, set[str]],
    target: Target,
    *,
    where: str = "the repository",
) -> list[str]:
    """Every segment a recovery from this base backup replays, in order; WalGap at the first one missing.

    ``names``: the archived segment names per timeline of the ancestry. The walk goes from the backup's
    start to the end of the archive (to the target LSN's segment, or to the backup's stop for ``immediate``);
    a missing segment before the backup's stop (or the target LSN) is a gap, and so is a missing segment
    with later WAL archived after it (PostgreSQL would stop at the hole and promote there).
    """
    seg = int(src["wal_segment_size"])
    first = wn.segno_of_lsn(wn.parse_lsn(src["start_lsn"]), seg)
    stop_seg = wn.segno_of_lsn(wn.parse_lsn(src["stop_lsn"]), seg)
    horizon = wn.segno_of_lsn(target.lsn, seg) if target.kind == "lsn" and target.lsn is not None else None
    if target.kind == "immediate":
        horizon = stop_seg  # consistency is all it replays to: WAL after the stop is not needed
    segments: list[str] = []
    s = first
    while True:
        tli = wn.timeline_of_segment(ancestry, s, seg)
        name = wn.segment_name(tli, s, seg)
        if name not in names.get(tli, set()):
            if s <= stop_seg or (horizon is not None and s <= horizon):
                need_to = stop_seg if horizon is None else max(stop_seg, horizon)
                raise WalGap(
                    f"WAL segment {name} (timeline {tli}) is missing from {where}; recovery from "
                    f"backup {backup_id} needs every segment from {segments[0] if segments else name} "
                    f"to {wn.segment_name(wn.timeline_of_segment(ancestry, need_to, seg), need_to, seg)}",
                )
            later = sorted(n for t, ns in names.items() for n in ns if t >= tli and wn.segno_of(n, seg) > s)
            if later:
                raise WalGap(
                    f"WAL segment {name} (timeline {tli}) is missing from {where}, but later WAL "
                    f"({later[0]}...) is archived: recovery would stop at the hole",
                    hint="if the server is still archiving in parallel, retry; if it was pruned (outside the "
                    "retention pitr_window), choose a later target or --immediate; else choose --to-lsn before it",
                )
            break
        segments.append(name)
        if horizon is not None and s >= horizon:
            break
        s += 1
    return segments
