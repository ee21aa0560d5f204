"""``verify wal``: read back every archived WAL file a recovery could need, before a recovery needs it.

PostgreSQL recycles a segment once ``archive_command`` said it was stored, so the archive is the only copy:
a segment that is missing or unreadable is found either here or during a restore at 3 a.m. This walks, per
database system, every timeline that no other timeline branched from (a *leaf*: the current history and any
diverged one), along its ancestry as recovery does (each segment from the newest timeline that began at or
before it, :func:`seedvault.sources.postgres.wal.names.timeline_of_segment`), from the start of the oldest base
backup of that system (or the oldest archived segment when there is none) to the newest archived segment on
that history. Every segment, history file and backup history file in that range is fetched and authenticated
completely (the same checks as ``wal-fetch``: header MAC, name, system, timeline, chunks, size, page header)
into a scratch file that is removed at once; a segment absent from the listing is *missing*. The anchor is
WAL-G's ``wal-verify integrity`` (gaps from the oldest backup to the newest segment), which does not read the
contents; this does.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedvault import audit
from seedvault.errors import SeedvaultError
from seedvault.repository import Repository
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.plan import physical_backups
from seedvault.sources.postgres.wal.store import WalObject, WalStore, system_ids

READERS = 4  # parallel fetches: S3 latency, not CPU, bounds a read of many 16 MiB segments


@dataclass
class WalProblem:
    name: str
    timeline: int
    problem: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "timeline": self.timeline, "problem": self.problem}


@dataclass
class WalVerifyReport:
    """What one system's walk covered and every problem it met (each named)."""

    system_id: str
    base_backup: str | None = None
    first: str | None = None
    last: str | None = None
    timelines: list[int] = field(default_factory=list)
    files: int = 0
    raw_bytes: int = 0
    problems: list[WalProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.files > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "system_id": self.system_id,
            "ok": self.ok,
            "base_backup": self.base_backup,
            "first_segment": self.first,
            "last_segment": self.last,
            "timelines": self.timelines,
            "files": self.files,
            "raw_bytes": self.raw_bytes,
            "problems": [p.as_dict() for p in self.problems],
        }


def verify_wal(
    repo: Repository, system_id: str | None = None, *, progress: Callable[[int], None] | None = None
) -> list[WalVerifyReport]:
    """One report per database system in the repository (or the one named); nothing archived is a problem."""
    sids = [system_id] if system_id else system_ids(repo)
    if not sids:
        report = WalVerifyReport(system_id="-")
        report.problems.append(WalProblem("-", 0, f"no WAL is archived in {repo.storage.url}"))
        audit.record(repo, "verify-wal", result="failed", details={"error": report.problems[0].problem})
        return [report]
    reports = []
    for sid in sids:
        with audit.audited(repo, "verify-wal") as ev:
            ev.details["system_id"] = sid
            report = _verify_system(repo, sid, progress)
            ev.result = "ok" if report.ok else "failed"
            ev.details.update(files=report.files, raw_bytes=report.raw_bytes, problems=len(report.problems),
                              base_backup=report.base_backup)  # fmt: skip
            if report.problems:
                ev.details["error"] = f"{report.problems[0].name}: {report.problems[0].problem}"
        reports.append(report)
    return reports


def _verify_system(repo: Repository, sid: str, progress: Callable[[int], None] | None) -> WalVerifyReport:
    report = WalVerifyReport(system_id=sid)
    store = WalStore(repo, sid)
    objects = store.list()
    if not any(o.kind == "segment" for o in objects):
        report.problems.append(WalProblem("-", 0, f"no WAL segment of system {sid} is archived"))
        return report
    histories = {o.timeline: o for o in objects if o.kind == "history"}
    ancestries, history_problems = _ancestries(store, objects, histories)
    report.problems += history_problems
    bases = physical_backups(repo, sid)
    seg_size = int(bases[0][1]["source"]["wal_segment_size"]) if bases else _segment_size(store, objects)
    segments = {(o.timeline, o.segment): o for o in objects if o.kind == "segment" and o.segment}
    wanted: dict[str, WalObject | None] = {}
    for ancestry in ancestries:
        tlis = {e.tli for e in ancestry}
        mine = [wn.segno_of(seg, seg_size) for (t, seg) in segments if t in tlis]
        if not mine:
            continue
        first, last = min(mine), max(mine)
        base = _oldest_base(bases, ancestry)
        if base is not None:
            report.base_backup = report.base_backup or base[0]
            first = wn.segno_of_lsn(wn.parse_lsn(base[1]["source"]["start_lsn"]), seg_size)
        for s in range(first, last + 1):
            tli = wn.timeline_of_segment(ancestry, s, seg_size)
            name = wn.segment_name(tli, s, seg_size)
            wanted[name] = segments.get((tli, name))
        report.timelines = sorted(set(report.timelines) | tlis)
    names = sorted(wanted)
    report.first, report.last = (names[0], names[-1]) if names else (None, None)
    for name in names:
        if wanted[name] is None:
            report.problems.append(WalProblem(name, wn.classify(name).timeline, "missing from the archive"))
    extras = [o for o in objects if o.kind in ("history", "backup") and o.timeline in set(report.timelines)]
    to_read = [(o.name, o.key) for o in extras] + [(n, o.key) for n, o in wanted.items() if o is not None]
    _read_all(store, sorted(to_read), report, progress)
    report.problems.sort(key=lambda p: p.name)
    return report


def _ancestries(
    store: WalStore, objects: list[WalObject], histories: dict[int, WalObject]
) -> tuple[list[list[wn.HistoryEntry]], list[WalProblem]]:
    """The ancestry of every leaf timeline (one that no other timeline branched from), and history problems."""
    problems: list[WalProblem] = []
    parsed: dict[int, list[wn.HistoryEntry]] = {1: [wn.HistoryEntry(1, 0, None)]}
    for tli in sorted(histories):
        try:
            parsed[tli] = wn.parse_history(store.read_history(tli), tli)
        except SeedvaultError as exc:
            problems.append(WalProblem(f"{tli:08X}.history", tli, exc.one_line()))
    for tli in sorted({o.timeline for o in objects if o.kind == "segment"} - set(parsed)):
        problems.append(
            WalProblem(f"{tli:08X}.history", tli, f"timeline {tli} has segments but its history file is missing")
        )
    parents = {e.tli for tli, anc in parsed.items() for e in anc if e.tli != tli}
    for tli, anc in sorted(parsed.items()):
        for e in anc[:-1]:
            if e.tli > 1 and e.tli not in histories:
                problems.append(
                    WalProblem(f"{e.tli:08X}.history", e.tli, f"ancestor of timeline {tli}: history file missing")
                )
    leaves = [anc for tli, anc in sorted(parsed.items()) if tli not in parents]
    return leaves, problems


def _oldest_base(bases: list[tuple[str, dict[str, Any]]], ancestry: list[wn.HistoryEntry]) -> tuple | None:
    """The oldest base backup whose timeline and start lie on ``ancestry`` (where this history's WAL must start)."""
    by_tli = {e.tli: e for e in ancestry}
    fitting = []
    for bid, body in bases:
        src = body["source"]
        e = by_tli.get(int(src["timeline"]))
        start = wn.parse_lsn(src["start_lsn"])
        if e is not None and start >= e.begin and (e.end is None or start < e.end):
            fitting.append((start, bid, body))
    if not fitting:
        return None
    _, bid, body = min(fitting)
    return bid, body


def _segment_size(store: WalStore, objects: list[WalObject]) -> int:
    """The segment size recorded in the oldest segment's authenticated header (no base backup to say it)."""
    oldest = min((o for o in objects if o.kind == "segment"), key=lambda o: o.name)
    try:
        return int(store.read_header(oldest.key).get("wal_segment_size") or wn.DEFAULT_SEGMENT_SIZE)
    except SeedvaultError:
        return wn.DEFAULT_SEGMENT_SIZE  # the walk reports that segment as unreadable anyway


def _read_all(
    store: WalStore, items: list[tuple[str, str]], report: WalVerifyReport, progress: Callable[[int], None] | None
) -> None:
    def one(item: tuple[str, str]) -> tuple[str, int | None, str | None]:
        name, key = item
        with tempfile.TemporaryDirectory(prefix="seedvault-verify-wal-") as scratch:
            try:
                header = store.fetch(name, Path(scratch) / "wal", key=key, partial=False)
            except SeedvaultError as exc:
                return name, None, exc.one_line()
        return name, int(header.get("raw_size") or 0), None

    with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="verify-wal") as pool:
        for name, size, problem in pool.map(one, items):
            if problem is not None:
                report.problems.append(WalProblem(name, _timeline(name), problem))
                continue
            report.files += 1
            report.raw_bytes += size or 0
            if progress:
                progress(size or 0)


def _timeline(name: str) -> int:
    try:
        return wn.classify(name).timeline
    except Exception:  # noqa: BLE001 - a name we listed ourselves; 0 only labels the report line
        return 0
