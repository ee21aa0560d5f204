"""Issue 5 acceptance, the archiver: PostgreSQL's own archiver calling ``seedvault wal-push %p`` while a
``seedvault wal-daemon`` runs as the server's OS user; the daemon killed with SIGKILL in the middle of a
push (before and after the object is published) loses nothing, and with no daemon wal-push still works.

The kill is a real SIGKILL of the daemon process at a named point of the push (seedvault.faults), so the
test hits "mid-push" deterministically instead of racing a timer.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedvault.config import load
from seedvault.repository import Repository
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.daemon import daemon_pids
from seedvault.sources.postgres.wal.store import WalStore
from seedvault.storage.open import open_storage
from tests.fixtures.walenv import WalEnv


class Daemon:
    def __init__(self, env: WalEnv, sock: Path, log: Path, kill_at: str | None = None) -> None:
        pw = pwd.getpwnam(env.primary.run_as)
        child_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        if kill_at:
            child_env["SEEDVAULT_FAULT_KILL_AT"] = kill_at
        self.log = log
        log.write_bytes(b"")
        out = open(log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [str(env.exe), "--config", str(env.config), "wal-daemon", "--pgdata", str(env.primary.data_dir),
             "--socket", str(sock), "--workers", "2"],
            env=child_env, stdout=out, stderr=out, cwd="/", user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + 30
        while "serving" not in log.read_text():  # a stale socket file may already exist
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"wal-daemon did not start: {log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.fixture
def sock(wal_env: WalEnv) -> Iterator[Path]:
    run = wal_env.base / "run"
    run.mkdir(exist_ok=True)
    pw = pwd.getpwnam(wal_env.primary.run_as)
    os.chown(run, pw.pw_uid, pw.pw_gid)
    os.chmod(run, 0o700)
    path = run / "wal.sock"
    original = wal_env.config.read_text()
    wal_env.config.write_text(original + f'wal_socket = "{path}"\n')  # archive_command re-reads it each call
    try:
        yield path
    finally:
        wal_env.config.write_text(original)


def _store(env: WalEnv) -> WalStore:
    settings = load(env={"SEEDVAULT_CONFIG": str(env.config)})
    with open(env.primary.data_dir / "global" / "pg_control", "rb") as fh:
        sid = int.from_bytes(fh.read(8), "little")
    return WalStore(Repository(open_storage(settings), settings.key_source()), sid)


def _failed_count(env: WalEnv) -> int:
    with env.connect() as conn:
        return conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0]


def _archive_one(env: WalEnv) -> tuple[str, dict]:
    with env.connect() as conn:
        conn.execute("INSERT INTO ev (ts, note) SELECT clock_timestamp(), 'daemon' FROM generate_series(1, 2000)")
    seg = env.wait_archived()
    store = _store(env)
    header = store.read_header(store.object_key(wn.classify(seg)))
    fetched = env.base / f"check-{seg}"
    store.fetch(seg, fetched)
    assert fetched.read_bytes() == (env.primary.data_dir / "pg_wal" / seg).read_bytes()
    return seg, header


def test_daemon_serves_postgres_and_works_ahead(wal_env: WalEnv, sock: Path) -> None:
    env = wal_env
    failed = _failed_count(env)
    d = Daemon(env, sock, env.base / "daemon-1.log")
    try:
        for _ in range(3):
            seg, header = _archive_one(env)
            assert header["source"] == "wal-daemon", d.log.read_text()
    finally:
        d.stop()
    log = d.log.read_text()
    assert "serving" in log and "stopped;" in log and f"pushed {seg}" in log
    assert _failed_count(env) == failed
    assert not sock.exists()  # removed on a clean stop


@pytest.mark.parametrize("kill_at", ["wal-push-uploaded", "wal-push-committed"])
def test_daemon_killed_mid_push_loses_nothing(wal_env: WalEnv, sock: Path, kill_at: str) -> None:
    env = wal_env
    failed = _failed_count(env)
    d = Daemon(env, sock, env.base / f"daemon-{kill_at}.log", kill_at=kill_at)
    seg, header = _archive_one(env)  # the daemon dies inside this push; wal-push falls back, PostgreSQL sees 0
    assert d.proc.wait(timeout=30) == -signal.SIGKILL
    # Uploaded but unpublished: the direct path stores it. Published but unanswered: found identical.
    assert header["source"] == ("archive_command" if kill_at == "wal-push-uploaded" else "wal-daemon")
    assert _failed_count(env) == failed  # the fallback happened inside the same archive_command call
    with env.connect() as conn:
        assert conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0] >= seg
    # The dead daemon's socket file is left behind: the next call falls back; a restarted daemon replaces it.
    assert sock.exists()
    seg2, header2 = _archive_one(env)
    assert header2["source"] == "archive_command"
    d2 = Daemon(env, sock, env.base / f"daemon-{kill_at}-2.log")
    try:
        seg3, header3 = _archive_one(env)
        assert header3["source"] == "wal-daemon" and seg3 > seg2 > seg
    finally:
        d2.stop()
    assert _failed_count(env) == failed


def test_wal_daemon_auto_is_started_by_the_archiver_and_stops_when_idle(wal_env: WalEnv, sock: Path) -> None:
    """``wal_daemon = "auto"``: PostgreSQL's archiver starts the daemon itself (pgBackRest archive-async style)."""
    env = wal_env
    failed = _failed_count(env)
    log = Path(f"{sock}.log")
    with env.config.open("a") as fh:
        fh.write('wal_daemon = "auto"\nwal_daemon_idle = 8\n')
    pid = None
    try:
        seg, header = _archive_one(env)  # no daemon yet: archived directly, and one is started
        assert header["source"] == "archive_command"
        deadline = time.monotonic() + 60
        while "serving" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "no daemon was started"
            time.sleep(0.1)
        (pid,) = daemon_pids(log.read_text())
        assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam(env.primary.run_as).pw_uid  # the server's user
        assert os.getsid(pid) != os.getsid(
            int((env.primary.data_dir / "postmaster.pid").read_text().split()[0])
        )  # its own session: not PostgreSQL's to signal
        seg2, header2 = _archive_one(env)
        assert header2["source"] == "wal-daemon" and seg2 > seg
        deadline = time.monotonic() + 60
        while "stopped;" not in log.read_text():  # nothing more to archive: it stops by itself
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert "no requests for 8 s: stopping" in log.read_text() and not sock.exists()
        assert log.read_text().count("serving") == 1  # started once, not once per push
        pid = None
        assert _failed_count(env) == failed
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
