"""Reading and checking the audit log: every problem named by its seq (FORMAT.md 7.4 "Verifying")."""

from __future__ import annotations

import hashlib
import hmac
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from seedvault import repokey
from seedvault.audit.cache import EventCache, Seen
from seedvault.audit.events import (
    EVENTS,
    FORMAT,
    GENESIS,
    TIME_SKEW,
    VERSION,
    WORKERS,
    Event,
    event_key,
    event_mac,
    parse_time,
    seq_of,
)
from seedvault.errors import ObjectNotFound, VerificationFailed
from seedvault.repository import Repository


@dataclass
class AuditReport:
    events: list[Event] = field(default_factory=list)  # the authentic ones, by seq
    problems: list[str] = field(default_factory=list)  # each names its seq
    last_seq: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.ok,
            "problems": self.problems,
            "last_seq": self.last_seq,
            "events": [e.as_dict() for e in self.events],
        }

    def raise_if_broken(self) -> None:
        if self.problems:
            raise VerificationFailed(
                f"the audit log is not intact ({len(self.problems)} problem(s)): {'; '.join(self.problems)}",
                hint="see 'seedvault audit'; FORMAT.md 'Audit log' says what each problem means",
            )


def _check_event(data: bytes, seq: int, key: bytes) -> tuple[Event | None, str, str | None]:
    """(the event, its prev, None) or (None, "", the problem)."""
    try:
        obj = json.loads(data)
    except ValueError:
        return None, "", f"seq {seq}: not JSON (damaged or replaced)"
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != VERSION:
        return None, "", f"seq {seq}: not a version-{VERSION} audit event"
    mac = obj.pop("mac", None)
    if not isinstance(mac, str) or not hmac.compare_digest(mac, event_mac(key, obj)):
        return None, "", f"seq {seq}: failed authentication (edited, or written without this repository's key)"
    if obj.get("seq") != seq:
        return None, "", f"seq {seq}: the event stored there is seq {obj.get('seq')} (moved or reordered)"
    try:
        event = Event(
            seq,
            str(obj["time"]),
            dict(obj["who"]),
            str(obj["operation"]),
            tuple(str(b) for b in obj["backup_ids"]),
            str(obj["result"]),
            dict(obj["details"]),
            hashlib.sha256(data).hexdigest(),
        )
        parse_time(event.time)
        prev = str(obj["prev"])
    except (KeyError, TypeError, ValueError):
        return None, "", f"seq {seq}: authentic but malformed"
    return event, prev, None


def verify_chain(repo: Repository, since: datetime | None = None, *, full: bool = True) -> AuditReport:
    """Read and check every event (format, MAC, seq contiguity, prev hash, time order, the remembered tail).

    ``since`` only limits which events the report lists; the whole chain is always checked. ``full=False``
    (what :func:`state` uses) takes the events this host already verified from its cache (events are
    immutable) and reads only the newest of them again and what came after it: one LIST and one GET plus one
    per new event, instead of one per event. Only ``full`` (``seedvault audit``) sees an old event edited or
    removed after this host cached it; the incremental state is computed from the authentic copies.
    """
    report = AuditReport()
    cache = EventCache(repo.config()["id"])
    cached = [] if full else cache.read()
    stored: dict[int, bytes | None] = dict(enumerate(cached, start=1))
    if cached and _digest(_get(repo, len(cached))) != _digest(cached[-1]):
        return verify_chain(repo, since)  # the cached tail changed or is gone: read everything, name it
    seqs: dict[int, str] = {}
    for info in repo.storage.list(EVENTS, start_after=event_key(len(cached)) if cached else None):
        seq = seq_of(info.key)
        if seq is None:
            report.problems.append(f"{info.key}: not an audit event name")
        else:
            seqs[seq] = info.key
    if not seqs and not stored:
        _check_seen(repo, report, {})
        return report
    key = repokey.subkey(repo, "audit")
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="seedvault-audit") as pool:
        stored.update(zip(sorted(seqs), pool.map(lambda seq: _get(repo, seq), sorted(seqs)), strict=True))
    digests = _check_all(report, stored, key, since)
    _check_seen(repo, report, digests)
    if not report.ok and not full:
        return verify_chain(repo, since)  # name the problems from the storage's bytes, not the cache's
    if report.ok:
        cache.store(stored)
    return report


def _get(repo: Repository, seq: int) -> bytes | None:
    try:
        return repo.storage.get_bytes(event_key(seq))
    except ObjectNotFound:
        return None


def _digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def _check_all(report: AuditReport, stored: dict[int, bytes | None], key: bytes, since: datetime | None) -> dict:
    """Check events 1..max(stored) in order into ``report``; returns seq -> SHA-256 of the stored bytes."""
    report.last_seq = max(stored)
    digests: dict[int, str] = {}
    previous: Event | None = None
    for seq in range(1, report.last_seq + 1):
        data = stored.get(seq)
        if data is None:
            report.problems.append(f"seq {seq}: missing (removed from the log)")
            previous = None
            continue
        digests[seq] = hashlib.sha256(data).hexdigest()
        event, prev, problem = _check_event(data, seq, key)
        if problem is not None or event is None:
            report.problems.append(problem or f"seq {seq}: unreadable")
            previous = None
            continue
        expected = GENESIS if seq == 1 else digests.get(seq - 1)
        if expected is not None and prev != expected:
            report.problems.append(
                f"seq {seq}: its prev hash does not match seq {seq - 1} (edited, removed or reordered)"
            )
        if previous is not None and parse_time(event.time) < parse_time(previous.time) - TIME_SKEW:
            report.problems.append(f"seq {seq}: dated {event.time}, before seq {seq - 1} ({previous.time})")
        previous = event
        if since is None or parse_time(event.time) >= since:
            report.events.append(event)
    return digests


def _check_seen(repo: Repository, report: AuditReport, digests: dict[int, str]) -> None:
    """The removed-tail check against what this host last wrote or verified; remembers the new tail if intact."""
    seen = Seen(repo.config()["id"])
    known = seen.read()
    if known is not None:
        seq, digest = known
        if seq > report.last_seq:
            report.problems.append(
                f"seq {seq}: missing: the log ends at seq {report.last_seq}, but this host saw seq {seq} "
                "(events removed from its end)"
            )
        elif digests.get(seq) not in (None, digest):
            report.problems.append(f"seq {seq}: differs from the event this host saw under that seq (replaced)")
    if report.ok and report.last_seq:
        seen.update(report.last_seq, digests[report.last_seq])
