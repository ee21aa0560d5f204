"""Writing the audit log: the event format, who did it, appending with no overwrite (FORMAT.md 7.4)."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import importlib
import logging
import os
import random
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from seedvault import repokey
from seedvault.audit.cache import Seen
from seedvault.errors import ObjectExists, ObjectNotFound, SeedvaultError, StorageError
from seedvault.format import layout
from seedvault.format.manifest import canonical, without_floats
from seedvault.repository import Repository

log = logging.getLogger("seedvault.audit")

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


def seq_of(key: str) -> int | None:
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


def event_mac(key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def _clean_details(details: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (details or {}).items():
        v = without_floats(v)
        if isinstance(v, str) and len(v) > MAX_TEXT:
            v = v[: MAX_TEXT - 3] + "..."
        out[str(k)] = v
    return out


def _tail(repo: Repository, seen: Seen, after: int = 0) -> tuple[int, str]:
    """The newest event's (seq, sha256): listed from the newest one known, one request when nothing is new."""
    hint = max(after, (seen.read() or (0, ""))[0])
    for start in ([event_key(hint)] if hint else []) + [None]:
        seqs = [s for info in repo.storage.list(EVENTS, start_after=start) if (s := seq_of(info.key))]
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
    seen = Seen(repo.config()["id"])
    who_ = who()
    ids = [b for b in backup_ids if layout.is_backup_id(b)]  # never free text typed as an id
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
        data = canonical({**body, "mac": event_mac(key, body)})
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
    failed_with: BaseException | None = None,
) -> Event | None:
    """Append one event; when that fails, warn on stderr that ``operation`` was not audited (never raise).

    ``failed_with`` is the operation's own error: when the event cannot be written for the same reason (a wrong
    key cannot authenticate an event either), that error's one line already says everything, so the warning is
    logged at debug level and the operator still sees exactly one line.
    """
    try:
        return append(repo, operation, backup_ids=backup_ids, result=result, details=details)
    except SeedvaultError as exc:
        same_cause = failed_with is not None and type(exc) is type(failed_with)
        log.log(
            logging.DEBUG if same_cause else logging.WARNING,
            "seedvault: warning: %s was not audited: %s",
            operation,
            exc.one_line(),
        )
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
        record(repo, operation, backup_ids=ev.backup_ids, result="failed", details=details, failed_with=exc)
        raise
    record(repo, operation, backup_ids=ev.backup_ids, result=ev.result or "ok", details=ev.details)
