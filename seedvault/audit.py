"""The audit log: an append-only, authenticated, hash-chained record of everything done to the repository.

Manifests are immutable (Object Lock friendly), so what changes about a backup later (verified, restore-tested,
pinned, deleted) lives here, as events (FORMAT.md "Audit log")::

    v1/audit/events/<seq:012d>.json    one event: canonical JSON, seq 1, 2, 3... with no gap

Each event names the previous one by the SHA-256 of its stored bytes (``prev``) and carries an HMAC-SHA256
(``mac``) under the repository's audit key (``repokey.subkey(repo, "audit")``: derived from the repository
secret, so it survives key rotation as data keys do). So an edited event fails its MAC, a removed one leaves a
gap in ``seq``, a reordered pair breaks ``prev``, and nobody without a master key can add one. What a hash
chain cannot show is a removed *tail* (the last events gone, the rest intact): each host remembers the newest
event it wrote or verified (seq and hash, in its cache directory) and ``verify_chain`` reports a log that is
now shorter, or whose event at that seq changed.

Events are written with no overwrite: two writers racing for seq N get one winner, the loser reads the tail
again and takes N+1. Auditing never fails an operation: an event that cannot be appended (read-only
credentials during an outage, no master key) is a warning on stderr saying the operation was not audited.
Events never hold secrets: the details are counts, sizes, ids and one-line error texts, which seedvault's
errors already keep free of key material.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import hmac
import importlib
import json
import logging
import os
import random
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from seedvault import repokey
from seedvault.errors import (
    ObjectExists,
    ObjectNotFound,
    SeedvaultError,
    StorageError,
    UsageError,
    VerificationFailed,
)
from seedvault.format import layout
from seedvault.format.manifest import canonical, without_floats
from seedvault.repository import Repository

log = logging.getLogger(__name__)

FORMAT = "seedvault-audit-event"
VERSION = 1
EVENTS = f"{layout.AUDIT}events/"
GENESIS = "0" * 64  # ``prev`` of seq 1
RESULTS = ("ok", "failed", "refused")
APPEND_RETRIES = 50
TIME_SKEW = timedelta(minutes=5)  # hosts' clocks differ: an event this much older than its predecessor is fine
MAX_TEXT = 500
WORKERS = 8


def event_key(seq: int) -> str:
    return f"{EVENTS}{seq:012d}.json"


def _seq_of(key: str) -> int | None:
    name = key[len(EVENTS) :]
    stem = name.removesuffix(".json")
    return int(stem) if name.endswith(".json") and len(stem) == 12 and stem.isdigit() and int(stem) > 0 else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


# --- who -----------------------------------------------------------------------------------------------------
def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no name for this uid (containers): the uid says enough
        return str(os.getuid())


def who() -> dict[str, Any]:
    """OS user, host, pid, and whether a Prefect flow run did it (prefect is never imported for this)."""
    out: dict[str, Any] = {"user": _user(), "host": socket.gethostname(), "pid": os.getpid(), "via": "cli"}
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not run_id and "prefect" in sys.modules:  # a flow run in this process: ask it (prefect is loaded)
        with contextlib.suppress(Exception):
            run_id = importlib.import_module("prefect.runtime.flow_run").id
    if run_id:
        out.update(via="prefect", flow_run_id=str(run_id))
    return out


# --- the local cache: the newest event this host wrote or verified ----------------------------------------
def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seedvault" / "audit"


class _Seen:
    """``<cache>/seedvault/audit/<repository id>.json``: {"seq": N, "sha256": hash of event N's bytes}.

    Best effort: an unwritable cache only costs a full listing to find the tail, and the removed-tail check.
    """

    def __init__(self, repo_id: str) -> None:
        self.path = _cache_dir() / f"{repo_id}.json"

    def read(self) -> tuple[int, str] | None:
        try:
            data = json.loads(self.path.read_text())
            seq, digest = data["seq"], data["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if isinstance(seq, int) and seq > 0 and isinstance(digest, str) and len(digest) == 64:
            return seq, digest
        return None

    def update(self, seq: int, digest: str) -> None:
        """Remember (seq, digest) if it is newer than what is remembered."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self.path.parent / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                known = self.read()
                if known is not None and known[0] >= seq:
                    return
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    json.dump({"seq": seq, "sha256": digest}, fh)
                os.replace(tmp, self.path)
        except OSError:
            pass


# --- events --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    seq: int
    time: str
    who: dict[str, Any]
    operation: str
    backup_ids: tuple[str, ...]
    result: str
    details: dict[str, Any]
    sha256: str  # of the stored bytes: the next event's ``prev``

    @property
    def by(self) -> str:
        return f"{self.who.get('user', '?')}@{self.who.get('host', '?')}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "who": self.who,
            "operation": self.operation,
            "backup_ids": list(self.backup_ids),
            "result": self.result,
            "details": self.details,
            "sha256": self.sha256,
        }

    def line(self) -> str:
        via = self.who.get("via", "?")
        run = f" run {self.who['flow_run_id']}" if self.who.get("flow_run_id") else ""
        ids = ",".join(self.backup_ids) or "-"
        return f"{self.seq:>6} {self.time} {self.by} ({via}{run}) {self.operation} {ids} {self.result}"


def _mac(key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def _clean_details(details: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (details or {}).items():
        v = without_floats(v)
        if isinstance(v, str) and len(v) > MAX_TEXT:
            v = v[: MAX_TEXT - 3] + "..."
        out[str(k)] = v
    return out


def _tail(repo: Repository, seen: _Seen, after: int = 0) -> tuple[int, str]:
    """The newest event's (seq, sha256): listed from the newest one known, one request when nothing is new."""
    hint = max(after, (seen.read() or (0, ""))[0])
    for start in ([event_key(hint)] if hint else []) + [None]:
        seqs = [s for info in repo.storage.list(EVENTS, start_after=start) if (s := _seq_of(info.key))]
        last = max(seqs, default=hint if start else 0)
        if last == 0:
            return 0, GENESIS
        try:
            return last, hashlib.sha256(repo.storage.get_bytes(event_key(last))).hexdigest()
        except ObjectNotFound:  # the remembered tail is gone (verify_chain reports it): list everything
            continue
    return 0, GENESIS


def append(
    repo: Repository,
    operation: str,
    *,
    backup_ids: Iterable[str] = (),
    result: str = "ok",
    details: dict[str, Any] | None = None,
) -> Event:
    """Append one event (raises when it cannot: for operations whose record *is* the operation, like pin)."""
    if result not in RESULTS:
        raise ValueError(f"unknown audit result {result!r}")
    key = repokey.subkey(repo, "audit", create=True)
    seen = _Seen(repo.config()["id"])
    who_ = who()
    ids = [b for b in backup_ids if b]
    seq, prev = _tail(repo, seen)
    for _attempt in range(APPEND_RETRIES):
        body = {
            "format": FORMAT,
            "version": VERSION,
            "seq": seq + 1,
            "prev": prev,
            "time": _now(),
            "who": who_,
            "operation": operation,
            "backup_ids": ids,
            "result": result,
            "details": _clean_details(details),
        }
        data = canonical({**body, "mac": _mac(key, body)})
        try:
            repo.storage.put_bytes(event_key(seq + 1), data)
        except ObjectExists:  # another writer took seq + 1: read the tail again
            time.sleep(random.uniform(0, 0.05))
            seq, prev = _tail(repo, seen, after=seq + 1)
            continue
        digest = hashlib.sha256(data).hexdigest()
        seen.update(seq + 1, digest)
        return Event(seq + 1, body["time"], who_, operation, tuple(ids), result, body["details"], digest)
    raise StorageError(f"could not append to the audit log: seq {seq + 1} was taken {APPEND_RETRIES} times in a row")


def record(
    repo: Repository,
    operation: str,
    *,
    backup_ids: Iterable[str] = (),
    result: str = "ok",
    details: dict[str, Any] | None = None,
) -> Event | None:
    """Append one event; when that fails, warn on stderr that ``operation`` was not audited (never raise)."""
    try:
        return append(repo, operation, backup_ids=backup_ids, result=result, details=details)
    except SeedvaultError as exc:
        log.warning("seedvault: warning: %s was not audited: %s", operation, exc.one_line())
    except Exception as exc:  # noqa: BLE001 - auditing must never break the operation it records
        log.warning("seedvault: warning: %s was not audited: %s", operation, type(exc).__name__)
    return None


@dataclass
class Audited:
    """What :func:`audited` yields: fill ``details`` (and ``backup_ids``) as the operation learns them."""

    backup_ids: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    result: str | None = None  # override the outcome ("refused", or "failed" for a report that found problems)


def error_line(exc: BaseException) -> str:
    if isinstance(exc, SeedvaultError):
        return exc.one_line()
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"unexpected {type(exc).__name__}"  # no message: a foreign exception's text may hold anything


@contextlib.contextmanager
def audited(repo: Repository, operation: str, backup_ids: Iterable[str] = ()) -> Iterator[Audited]:
    """Append one event around an operation: ok when it returns, failed (with the error's line) when it raises."""
    ev = Audited(list(backup_ids))
    try:
        yield ev
    except BaseException as exc:
        details = {**ev.details, "error": error_line(exc)}
        record(repo, operation, backup_ids=ev.backup_ids, result="failed", details=details)
        raise
    record(repo, operation, backup_ids=ev.backup_ids, result=ev.result or "ok", details=ev.details)


# --- reading and verifying -----------------------------------------------------------------------------------
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
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(key, obj)):
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
    cache = _EventCache(repo.config()["id"])
    cached = [] if full else cache.read()
    stored: dict[int, bytes | None] = dict(enumerate(cached, start=1))
    if cached and _digest(_get(repo, len(cached))) != _digest(cached[-1]):
        return verify_chain(repo, since)  # the cached tail changed or is gone: read everything, name it
    seqs: dict[int, str] = {}
    for info in repo.storage.list(EVENTS, start_after=event_key(len(cached)) if cached else None):
        seq = _seq_of(info.key)
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


class _EventCache:
    """``<cache>/seedvault/audit/<repository id>.events``: the stored bytes of events 1..K this host verified,
    one per line (canonical JSON has no line break). Best effort, like :class:`_Seen`."""

    def __init__(self, repo_id: str) -> None:
        self.path = _cache_dir() / f"{repo_id}.events"

    def read(self) -> list[bytes]:
        try:
            return self.path.read_bytes().splitlines()
        except OSError:
            return []

    def store(self, stored: dict[int, bytes | None]) -> None:
        """Remember the verified events 1..max(stored): appended when the file holds a prefix, else rewritten."""
        events = [stored.get(s) for s in range(1, max(stored, default=0) + 1)]
        if not events or any(d is None or b"\n" in d for d in events):
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(self.path.parent / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = self.read()
                if len(current) >= len(events):
                    return
                prefix = current == events[: len(current)]
                target = self.path if prefix else self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if prefix else os.O_TRUNC)
                with os.fdopen(os.open(target, flags, 0o600), "ab") as fh:
                    fh.write(b"".join(d + b"\n" for d in events[len(current) if prefix else 0 :] if d is not None))
                if not prefix:
                    os.replace(target, self.path)
        except OSError:
            pass


def _check_seen(repo: Repository, report: AuditReport, digests: dict[int, str]) -> None:
    """The removed-tail check against what this host last wrote or verified; remembers the new tail if intact."""
    seen = _Seen(repo.config()["id"])
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


# --- the mutable state -------------------------------------------------------------------------------------
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
