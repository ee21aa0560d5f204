"""``seedvault wal-receive``: streaming mode, a supervised ``pg_receivewal`` feeding the WAL store.

Why: ``archive_command`` only sees a segment once it is complete (or ``archive_timeout`` forces a
switch), so its recovery point lags by up to that timeout. ``pg_receivewal`` receives WAL over the
replication protocol as it is written, so the newest WAL sits in its ``.partial`` file within
milliseconds; with ``--synchronous`` and the slot named in ``synchronous_standby_names`` the server does
not even report a commit before pg_receivewal has flushed it (zero loss for acknowledged commits, at
the cost of commit latency and of blocking writes while the receiver is down).

The supervisor:

* creates (``--create-slot``) and uses a physical replication slot, so the server keeps WAL the receiver
  has not confirmed, across restarts of either side;
* pushes every completed segment (and ``.history`` file) into the same store as ``wal-push`` (an
  identical copy pushed by archive_command is a harmless duplicate), then deletes it locally - except the
  newest, from which pg_receivewal resumes;
* pushes the current ``.partial`` segment every ``partial_interval`` seconds when it changed, whenever
  pg_receivewal exits (the server went away: exactly when the newest WAL matters), and on shutdown;
  older partial objects of the segment are deleted once a newer one (or the full segment) is durable;
* restarts pg_receivewal with backoff when it exits, until stopped by SIGTERM/SIGINT.

Recovery uses a partial segment only for the segment where the archive ends (``wal-fetch`` serves the
newest partial when the full segment was never archived, and says so in the server log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from seedvault import process
from seedvault.errors import ConfigError, SeedvaultError, SourceError
from seedvault.repository import Repository
from seedvault.sources.postgres.binaries import find_client_binaries
from seedvault.sources.postgres.connection import PgTarget
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.store import WalStore

log = logging.getLogger(__name__)

_COMPLETE_RE = re.compile(r"\A[0-9A-F]{24}\Z|\A[0-9A-F]{8}\.history\Z")
_PARTIAL_RE = re.compile(r"\A([0-9A-F]{24})\.partial\Z")
_SLOT_RE = re.compile(r"\A[a-z0-9_]{1,63}\Z")


@dataclass
class ReceiverStats:
    segments: int = 0
    partials: int = 0
    restarts: int = 0
    last_pushed: str | None = None
    last_partial_bytes: int = 0
    errors: list[str] = field(default_factory=list)


def _server_facts(target: PgTarget) -> tuple[int, str]:
    with target.connect() as conn:
        try:
            row = conn.execute(
                "SELECT current_setting('server_version_num')::int, (SELECT system_identifier FROM pg_control_system())"
            ).fetchone()
        except psycopg.Error as exc:
            raise SourceError(f"cannot inspect {target.display()}: {str(exc).splitlines()[0]}") from None
    assert row is not None
    return int(row[0]) // 10000, str(row[1])


def ensure_slot(target: PgTarget, slot: str, *, create: bool) -> None:
    """The physical slot must exist (created with reserved WAL when ``create``)."""
    if not _SLOT_RE.fullmatch(slot):
        raise ConfigError(f"invalid replication slot name {slot!r} (lower-case letters, digits, underscore)")
    with target.connect() as conn:
        try:
            row = conn.execute("SELECT slot_type FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            if row is None and create:
                conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
                log.info("created physical replication slot %s", slot)
                return
        except psycopg.Error as exc:
            raise SourceError(f"cannot manage replication slot {slot}: {str(exc).splitlines()[0]}") from None
    if row is None:
        raise ConfigError(f"replication slot {slot} does not exist", hint="pass --create-slot once")
    if row[0] != "physical":
        raise ConfigError(f"replication slot {slot} is a {row[0]} slot; pg_receivewal needs a physical one")


class WalReceiver:
    """Run and supervise pg_receivewal into ``spool``, pushing what it receives into the store."""

    def __init__(
        self,
        repo: Repository,
        target: PgTarget,
        spool: str | os.PathLike[str],
        *,
        slot: str,
        synchronous: bool = False,
        partial_interval: float = 10.0,
        status_interval: int = 1,
        poll: float = 0.5,
        emit: Callable[[str], None] | None = None,
        zstd_level: int | None = None,
    ) -> None:
        self.repo, self.target, self.slot = repo, target, slot
        self.spool = Path(spool)
        self.synchronous = synchronous
        self.partial_interval = partial_interval
        self.status_interval = status_interval
        self.poll = poll
        self.emit = emit or (lambda line: log.info("%s", line))
        self.zstd_level = zstd_level
        self.stats = ReceiverStats()
        self._stop = False
        self._child: Any = None
        self._partial_sig: tuple[str, int, int] | None = None
        self._partial_pushed_at = 0.0
        self._pushed: set[str] = set()
        major, sid = _server_facts(target)
        if major < 13:
            raise SourceError(f"{target.display()} runs PostgreSQL {major}; streaming mode needs 13 or newer")
        self.major, self.system_id = major, sid
        self.store = WalStore(repo, sid)
        self.binaries = find_client_binaries(major, ("pg_receivewal",))

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def stop(self, *_: Any) -> None:
        self._stop = True
        child = self._child
        if child is not None and child.poll() is None:
            with contextlib.suppress(OSError):
                child.send_signal(signal.SIGTERM)  # pg_receivewal flushes and exits cleanly on SIGTERM

    # --- pg_receivewal ---------------------------------------------------------------------------
    def _start_child(self) -> Any:
        argv = [
            self.binaries.tool("pg_receivewal"),
            f"--directory={self.spool}",
            f"--slot={self.slot}",
            f"--dbname={self.target.conninfo()}",
            f"--status-interval={self.status_interval}",
            "--no-loop",  # we supervise restarts (and push the partial when it exits)
            "--no-password",
            "--verbose",
        ]
        if self.synchronous:
            argv.append("--synchronous")
        stderr_path = self.spool.parent / f"{self.spool.name}.pg_receivewal.log"
        with open(stderr_path, "ab") as err:
            return process.spawn(argv, extra_env=self.target.child_env(), stdout=err, stderr=err)

    def run(self) -> ReceiverStats:
        """Until :meth:`stop`: receive, push, restart with backoff. Returns the statistics."""
        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        backoff = 1.0
        while not self._stop:
            started = time.monotonic()
            self._child = self._start_child()
            self.emit(f"pg_receivewal started (slot {self.slot}{', synchronous' if self.synchronous else ''})")
            while self._child.poll() is None and not self._stop:
                self._sweep(final=False)
                time.sleep(self.poll)
            with contextlib.suppress(Exception):
                self._child.wait(timeout=60)
            code = self._child.returncode
            self._sweep(final=True)  # the server went away or we stop: the newest WAL goes up now
            if self._stop:
                break
            self.stats.restarts += 1
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            self.emit(f"pg_receivewal exited with code {code}; restarting in {backoff:.0f} s")
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline and not self._stop:
                time.sleep(0.2)
        self.emit(
            f"stopped; {self.stats.segments} segments and {self.stats.partials} partial pushes, "
            f"last {self.stats.last_pushed or 'none'}"
        )
        return self.stats

    # --- pushing ---------------------------------------------------------------------------------
    def _sweep(self, *, final: bool) -> None:
        try:
            names = sorted(os.listdir(self.spool))
        except OSError:
            return
        complete = [n for n in names if _COMPLETE_RE.fullmatch(n)]
        for n in sorted(complete, key=lambda x: (not x.endswith(".history"), x)):
            self._push_complete(n)
        segs = [n for n in complete if not n.endswith(".history")]
        for n in segs[:-1]:  # keep the newest: pg_receivewal resumes from the directory's contents
            if n in self._pushed:  # never delete what is not durable in the store
                with contextlib.suppress(OSError):
                    os.unlink(self.spool / n)
                self._pushed.discard(n)
        partials = [n for n in names if _PARTIAL_RE.fullmatch(n)]
        if partials:
            due = final or (
                self.partial_interval > 0 and time.monotonic() - self._partial_pushed_at >= self.partial_interval
            )
            if due:
                self._push_partial(partials[-1])

    def _push_complete(self, name: str) -> None:
        path = self.spool / name
        if name.endswith(".history"):
            marker = self.spool / f".{name}.pushed"
            if marker.exists():
                return
        elif name in self._pushed:
            return
        try:
            res = self.store.push(path, source="pg_receivewal", settings_level=self.zstd_level)
        except SeedvaultError as exc:
            self._error(f"push of {name} failed: {exc.one_line()}")
            return
        if name.endswith(".history"):
            marker.touch()
            return
        self._pushed.add(name)
        self.stats.segments += 1
        self.stats.last_pushed = name
        self.emit(f"pushed {name} ({res.result}, {res.seconds:.2f} s)")
        self._drop_partials(name)

    def _push_partial(self, fname: str) -> None:
        path = self.spool / fname
        try:
            st = path.stat()
        except OSError:
            return
        sig = (fname, st.st_size, st.st_mtime_ns)
        if sig == self._partial_sig:
            return
        segment = fname[: -len(".partial")]
        try:
            res = self.store.push(path, name=fname, source="pg_receivewal", settings_level=self.zstd_level)
        except SeedvaultError as exc:
            self._error(f"push of {fname} failed: {exc.one_line()}")
            return
        self._partial_sig = sig
        self._partial_pushed_at = time.monotonic()
        self.stats.partials += 1
        self.emit(f"pushed partial {fname} ({res.seconds:.2f} s)")
        self._drop_partials(segment, keep=res.key)

    def _drop_partials(self, segment: str, keep: str | None = None) -> None:
        """Older partial objects of ``segment`` go once a newer partial or the full segment is durable."""
        try:
            wal = wn.classify(segment + ".partial")
            base = self.store.partial_prefix(wal)
            stale = [o.key for o in self.repo.storage.list(base) if o.key != keep]
            if stale:
                self.repo.storage.delete(stale)
        except SeedvaultError as exc:
            self._error(f"cleanup of older partials of {segment} failed: {exc.one_line()}")

    def _error(self, message: str) -> None:
        self.stats.errors.append(message)
        del self.stats.errors[:-20]
        self.emit(message)
