"""The mutable state the audit log describes: pins, last verified, last restore-tested (FORMAT.md 7.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from seedvault.audit.chain import AuditReport, verify_chain
from seedvault.audit.events import parse_time
from seedvault.errors import SeedvaultError, UsageError
from seedvault.repository import Repository


@dataclass(frozen=True)
class Pin:
    backup_id: str
    reason: str
    by: str  # user@host
    since: datetime
    until: datetime | None
    seq: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "reason": self.reason,
            "by": self.by,
            "since": _iso(self.since),
            "until": _iso(self.until) if self.until else None,
            "seq": self.seq,
        }


@dataclass(frozen=True)
class Outcome:
    time: datetime
    ok: bool
    seq: int

    def as_dict(self) -> dict[str, Any]:
        return {"time": _iso(self.time), "ok": self.ok, "seq": self.seq}


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class AuditState:
    """What the log says now, from its authentic events only; ``problems`` non-empty: the chain is broken.

    The retention planner must refuse to delete anything while ``problems`` is set (a removed unpin or a
    removed verify failure would otherwise decide).
    """

    pins: dict[str, Pin] = field(default_factory=dict)
    last_verified: dict[str, Outcome] = field(default_factory=dict)
    last_restore_tested: dict[str, Outcome] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    last_seq: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def of(self, backup_id: str) -> dict[str, Any]:
        """One backup's state for ``list``/``show`` (JSON-ready)."""
        pin = self.pins.get(backup_id)
        verified = self.last_verified.get(backup_id)
        tested = self.last_restore_tested.get(backup_id)
        return {
            "pin": pin.as_dict() if pin else None,
            "last_verified": verified.as_dict() if verified else None,
            "last_restore_tested": tested.as_dict() if tested else None,
        }


def restore_operation(purpose: str) -> str:
    """The event of a restore: ``restore``, or ``restore-test`` for a drill (scratch target, then dropped)."""
    if purpose == "restore":
        return "restore"
    if purpose in ("drill", "test"):
        return "restore-test"
    raise UsageError(f"unknown restore purpose {purpose!r} (restore or drill)")


VERIFY_OPERATIONS = ("verify",)
RESTORE_TEST_OPERATIONS = ("restore-test",)


def state(
    repo: Repository, *, now: datetime | None = None, report: AuditReport | None = None, full: bool = True
) -> AuditState:
    """Pins (those not expired at ``now``), last verification and last restore test per backup.

    ``full`` (the default, for a deleter): every event read and checked. ``full=False`` (list, show): the
    events this host verified before come from its cache, only new ones are read (see :func:`verify_chain`).
    """
    report = report or verify_chain(repo, full=full)
    now = now or datetime.now(UTC)
    out = AuditState(problems=list(report.problems), last_seq=report.last_seq)
    for ev in report.events:
        at = parse_time(ev.time)
        outcome = Outcome(at, ev.result == "ok", ev.seq)
        if ev.operation in VERIFY_OPERATIONS and ev.details.get("scope", "full") == "full":
            for bid in ev.backup_ids:
                out.last_verified[bid] = outcome
        elif ev.operation in RESTORE_TEST_OPERATIONS:
            for bid in ev.backup_ids:
                out.last_restore_tested[bid] = outcome
        elif ev.operation == "pin" and ev.result == "ok":
            until = ev.details.get("until")
            for bid in ev.backup_ids:
                out.pins[bid] = Pin(
                    bid, str(ev.details.get("reason", "")), ev.by, at, parse_time(until) if until else None, ev.seq
                )
        elif ev.operation == "unpin" and ev.result == "ok":
            for bid in ev.backup_ids:
                out.pins.pop(bid, None)
        elif ev.operation == "delete" and ev.result == "ok":
            for bid in ev.backup_ids:
                for table in (out.pins, out.last_verified, out.last_restore_tested):
                    table.pop(bid, None)  # type: ignore[attr-defined]
    out.pins = {bid: p for bid, p in out.pins.items() if p.until is None or p.until > now}
    return out


def state_or_empty(repo: Repository, *, full: bool = True) -> tuple[AuditState, str | None]:
    """:func:`state`, or an empty one and why (no key, no repository secret yet, unreadable log)."""
    try:
        return state(repo, full=full), None
    except SeedvaultError as exc:
        return AuditState(), exc.one_line()
