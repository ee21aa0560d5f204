"""Run RUNBOOK.md's WAL archiving / base backup / PITR / daemon / streaming / monitoring blocks
(```bash runbook-pitr), extracted from the file itself, in order, against the ``wal_env`` archiving
PostgreSQL (moto S3), as root would at 3 a.m.

The blocks configure archiving themselves (their own settings, key and credentials files, chowned to the
server's user, and ``ALTER SYSTEM``), take and list a base backup, and recover three servers: to a time,
to the latest WAL after that PITR made a new timeline, and along a chosen timeline (a copy that does not
archive). Then they run the archiver daemon as the server's user, stream with ``wal-receive`` on a slot
(synchronously) and check archiving freshness as a ``pg_monitor`` role. Between sections the test plays
the world (writes rows, notes the target time, sets the monitoring role's password) and checks what each
section left behind: recovered rows, refused plans, who stored which WAL object, stopped processes. A
block that fails names its section; background processes it left are stopped in a finalizer.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import signal
import time
import tomllib
from datetime import UTC
from pathlib import Path

import psycopg

from seedvault import process
from seedvault.config import Settings, load
from seedvault.repository import Repository
from seedvault.sources.postgres.cluster import LocalCluster
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.daemon import daemon_pids
from seedvault.sources.postgres.wal.store import WalStore
from seedvault.storage.open import open_storage
from tests.fixtures.s3 import S3_REGION
from tests.fixtures.walenv import WalEnv
from tests.helpers import base_env
from tests.test_runbook import fenced_blocks, run_blocks, runbook_blocks

TAG = "runbook-pitr"
SECTIONS = (
    *("13.1", "13.2", "13.3", "14.", "15.", "16.1", "16.2", "16.3", "16.4", "16.5"),
    *("17.2", "17.3", "17.4", "17.5", "18.1", "18.2", "18.3", "18.4", "19.1", "19.2"),
)
# Background processes the blocks start, by the pid file they write: (pid file, what its command line holds).
BACKGROUND = (("wal-daemon.pid", "wal-daemon"), ("wal-receive.pid", "wal-receive"))
DOC_REQUIRED = {"repository", "key_file", "s3_credentials_file", "wal_state_dir"}


def test_runbook_pitr_blocks_cover_every_section() -> None:
    sections = [s for s, _ in runbook_blocks(TAG)]
    for prefix in SECTIONS:
        assert any(s.startswith(prefix) for s in sections), f"no runbook-pitr block in RUNBOOK section {prefix}"
    assert not set(sections) & {s for s, _ in runbook_blocks("runbook")}


def _doc_settings() -> dict:
    """The settings file shown in RUNBOOK 13.1: valid TOML, only real settings, the ones archiving needs."""
    blocks = [body for section, body in fenced_blocks("toml") if section.startswith("13.1")]
    assert len(blocks) == 1, "RUNBOOK 13.1 shows exactly one seedvault.toml"
    doc = tomllib.loads(blocks[0])
    unknown = set(doc) - set(Settings.__dataclass_fields__)
    assert not unknown, f"RUNBOOK 13.1 shows unknown settings {sorted(unknown)}"
    assert set(doc) >= DOC_REQUIRED, f"RUNBOOK 13.1 lacks {sorted(DOC_REQUIRED - set(doc))}"
    return doc


def _insert(conn: psycopg.Connection, n: int, note: str) -> None:
    for _ in range(n):  # one transaction per row: commit times are what a time target compares
        conn.execute("INSERT INTO ev (ts, note) VALUES (clock_timestamp(), %s)", (note,))


def _report(env: dict[str, str], name: str) -> dict:
    return json.loads((Path(env["WORK"]) / f"{name}.json").read_text())


def _notes(wal: WalEnv, report: dict) -> dict[str, int]:
    with wal.connect(LocalCluster(Path(report["data_dir"]))) as conn:
        return dict(conn.execute("SELECT note, count(*) FROM ev GROUP BY note").fetchall())


def _stop_all(restore: Path) -> None:
    for data in restore.iterdir() if restore.exists() else []:
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                LocalCluster(data).stop("immediate", timeout=30)


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _exited(pidfile: Path, timeout: float = 30) -> bool:
    """The process of a block's pid file has exited (its last log line comes just before)."""
    pid, deadline = int(pidfile.read_text()), time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _stop_pid(pid: int, timeout: float = 60) -> None:
    """SIGTERM (a clean stop: the partial pushed, requests finished), SIGKILL after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        if not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)


def _stop_background(work: Path, run: Path | None = None) -> None:
    """Stop what a failed block left running: the blocks' daemon and receiver (and pg_receivewal), and
    a daemon wal-push started (17.5; its pid is in its log)."""
    pids: list[tuple[str, str]] = []
    for pidfile, marker in BACKGROUND:
        with contextlib.suppress(OSError):
            pids.append(((work / pidfile).read_text(), marker))
    auto = run / "wal.sock.log" if run is not None else None
    if auto is not None and auto.exists():
        pids += [(str(pid), "wal-daemon") for pid in daemon_pids(auto.read_text())]
    for text, marker in pids:
        try:
            pid = int(text)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if marker not in cmdline or not _alive(pid):
            continue  # gone, or the pid was reused
        children = _children(pid)
        _stop_pid(pid)
        for child in children:  # pg_receivewal outlives a killed supervisor
            _stop_pid(child, timeout=10)


def _undo_streaming(wal: WalEnv) -> None:
    """If 18.4 did not run: commits must not wait for a receiver that is gone, and the slot must go."""
    with contextlib.suppress(Exception), wal.connect() as conn:
        if conn.execute("SHOW synchronous_standby_names").fetchone()[0]:
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            conn.execute("SELECT pg_reload_conf()")
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = 'seedvault' AND NOT active"
        )


def _store(wal: WalEnv) -> WalStore:
    settings = load(env={"SEEDVAULT_CONFIG": str(wal.config)})
    with open(wal.primary.data_dir / "global" / "pg_control", "rb") as fh:
        sid = int.from_bytes(fh.read(8), "little")
    return WalStore(Repository(open_storage(settings), settings.key_source()), sid)


def _source(store: WalStore, name: str) -> str:
    return store.read_header(store.object_key(wn.classify(name)))["source"]


def test_runbook_pitr_blocks_run(wal_env: WalEnv, request) -> None:
    wal = wal_env
    doc = _doc_settings()
    work, etc, state, restore = (wal.base / n for n in ("runbook-work", "runbook-etc", "runbook-state", "restore"))
    run, spool = wal.base / "runbook-run", wal.base / "runbook-spool"
    work.mkdir()
    etc.mkdir(mode=0o755)
    request.addfinalizer(lambda: _stop_all(restore))
    request.addfinalizer(lambda: _undo_streaming(wal))
    request.addfinalizer(lambda: _stop_background(work, run))  # finalizers run last-in first-out: this first

    # What the operator puts in place by hand (13.1): copies of the master key and the credentials, still
    # root's (the block must give them to the server's user), and the settings file of the runbook.
    fixture_conf = tomllib.loads(wal.config.read_text())
    for name, setting in (("master.key", "key_file"), ("aws-credentials", "s3_credentials_file")):
        (etc / name).write_bytes(Path(fixture_conf[setting]).read_bytes())
        (etc / name).chmod(0o600)
    values = {
        "repository": f"s3://{wal.bucket}/repo",
        "s3_endpoint": wal.endpoint,
        "s3_region": S3_REGION,
        "key_file": str(etc / "master.key"),
        "s3_credentials_file": str(etc / "aws-credentials"),
        "wal_state_dir": str(state),
    }
    assert set(doc) <= set(values), f"no test value for {sorted(set(doc) - set(values))}"
    lines = [f"{k} = {json.dumps(values[k])}" for k in [*doc, *(["s3_endpoint"] if "s3_endpoint" not in doc else [])]]
    (etc / "seedvault.toml").write_text("\n".join(lines) + "\n")

    env = base_env(
        WORK=str(work),
        SV_ETC=str(etc),
        SV_STATE=str(state),
        SEEDVAULT_CONFIG=str(etc / "seedvault.toml"),
        SEEDVAULT_BIN=str(wal.exe),
        PG_OS_USER=wal.primary.run_as,
        LIVE_PGDATA=str(wal.primary.data_dir),
        PG_BINDIR=str(wal.primary.binaries.bindir),
        PG_DSN=wal.dsn(),
        PGPASSFILE=str(wal.pgpass),
        RESTORE_DIR=str(restore),
        CHECK_SQL="SELECT note, count(*) FROM ev GROUP BY note ORDER BY note",
        SV_RUN=str(run),
        SV_SPOOL=str(spool),
    )
    env["PATH"] = f"{env['PATH']}:/usr/sbin:/sbin"  # runuser
    if os.geteuid() != 0:  # the server runs as ourselves: runuser/setpriv <user options> cmd is just cmd
        (work / "bin").mkdir()
        shim = work / "bin" / "runuser"
        shim.write_text('#!/bin/sh\n[ "$1" = -u ] && shift 2\n[ "$1" = -- ] && shift\nexec "$@"\n')
        shim.chmod(0o755)
        shim = work / "bin" / "setpriv"
        shim.write_text('#!/bin/sh\nwhile [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')
        shim.chmod(0o755)

    def make_history(_env: dict[str, str]) -> dict[str, str]:
        """After the base backup: rows before the target, the target time, rows after it, all archived."""
        with wal.connect() as conn:
            # No autovacuum ANALYZE of these rows: its WAL would make the idle primary archive again after
            # 16.1's copy branched off, and 16.2's plain --latest would then (rightly) be refused.
            conn.execute("ALTER TABLE ev SET (autovacuum_enabled = off)")
            conn.execute("TRUNCATE ev")
            _insert(conn, 30, "before-target")
            time.sleep(0.3)
            target = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            time.sleep(0.3)
            _insert(conn, 30, "after-target")
        wal.wait_archived()
        return {"TARGET_TIME": target.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}

    def check_to_time_then_write(env: dict[str, str]) -> None:
        rep, base = _report(env, "to-time"), _report(env, "base")
        assert rep["plan"]["backup_id"] == base["id"] and rep["timeline"] == 2, rep
        assert "recovery stopping before commit" in (rep["stop_reason"] or ""), rep
        assert _notes(wal, rep) == {"before-target": 30}
        # The recovered server becomes the primary: it works and archives on timeline 2.
        copy = LocalCluster(Path(rep["data_dir"]))
        with wal.connect(copy) as conn:
            _insert(conn, 20, "on-timeline-2")
        wal.wait_archived(copy)

    def check_latest_then_primary_works(env: dict[str, str]) -> None:
        rep = _report(env, "latest")
        assert rep["plan"]["timeline"] == 2 and rep["timeline"] == 3, rep
        assert _notes(wal, rep) == {"before-target": 30, "on-timeline-2": 20}
        assert rep["read_ahead"] and "requests" in rep["read_ahead"], rep  # derived restore_command: read-ahead
        # The old primary kept working on timeline 1 after the copy branched off: a plain --latest is refused
        # (16.3), before anything is written, naming both timelines.
        with wal.connect() as conn:
            _insert(conn, 10, "primary-kept-working")
        wal.wait_archived()
        refused = restore / "refused"
        proc = wal.cli("restore", "postgres-pitr", "--data-dir", str(refused), "--latest", "--json", check=False)
        assert proc.returncode == 2, (proc.returncode, proc.stderr)
        assert re.search(r"timeline 2 branched from timeline 1 at .*timeline 1 kept archiving", proc.stderr)
        assert "--timeline 1" in proc.stderr and not proc.stdout.strip() and not refused.exists()

    def check_timeline(env: dict[str, str]) -> None:
        rep = _report(env, "timeline")
        assert rep["plan"]["timeline"] == 1 and rep["timeline"] not in (1, 2, 3), rep
        assert _notes(wal, rep) == {"before-target": 30, "after-target": 30, "primary-kept-working": 10}
        # One timeline, several segments: the read-ahead daemon had the next ones ready before they were asked.
        ahead = re.search(r"\((\d+) read ahead\)", rep["read_ahead"] or "")
        assert ahead and int(ahead.group(1)) >= 1, rep["read_ahead"]
        # --archive-mode off: the copy does not archive (ALTER SYSTEM's archive_mode of 13.2 is disabled in its
        # auto.conf), and its timeline is not recorded as a branch of the archive.
        copy = LocalCluster(Path(rep["data_dir"]))
        with wal.connect(copy) as conn:
            assert conn.execute("SHOW archive_mode").fetchone()[0] == "off"
        auto = (copy.data_dir / "postgresql.auto.conf").read_text()
        assert re.search(r"^# disabled by seedvault restore .*archive_mode", auto, re.M), auto
        assert rep["timeline"] not in {o.timeline for o in _store(wal).list_histories()}

    def missing_segment(env: dict[str, str]) -> dict[str, str]:
        seg = _report(env, "base")["wal"][0]  # archived, and kept in pg_wal by wal_keep_size
        assert (wal.primary.data_dir / "pg_wal" / seg).exists()
        return {"MISSING_SEG": seg}

    def check_daemon(env: dict[str, str]) -> None:
        """17: what the daemon pushed is stored by it; stopped, it is gone; wal-push then goes direct."""
        log = (work / "wal-daemon.log").read_text()
        assert "stopped;" in log and _exited(work / "wal-daemon.pid"), log
        assert not (run / "wal.sock").exists(), log  # removed on a clean stop
        stored = re.findall(r"pushed ([0-9A-F]{24}) \(stored,", log)  # not "duplicate": someone was first
        assert stored, log
        store = _store(wal)
        assert {seg: _source(store, seg) for seg in stored} == dict.fromkeys(stored, "wal-daemon"), log
        # 17.5: wal-push started one daemon itself, it served requests, stopped on SIGTERM, removed its socket.
        auto = (run / "wal.sock.log").read_text()
        assert auto.count("wal-daemon: serving") == 1 and re.search(r"stopped; [1-9]\d* requests", auto), auto
        auto_pid = daemon_pids(auto)[-1]
        deadline = time.monotonic() + 30
        while _alive(auto_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(auto_pid), auto
        assert "wal_daemon" not in Path(env["SEEDVAULT_CONFIG"]).read_text()
        with wal.connect() as conn:
            _insert(conn, 5, "after-daemon")
        seg = wal.wait_archived()
        assert _source(store, seg) == "archive_command"
        assert "archiving directly" in wal.primary.log_file.read_text(errors="replace")

    def check_streaming(env: dict[str, str]) -> None:
        """18: the receiver stopped cleanly, pushed partial copies of its own, and left no slot behind."""
        log = (work / "wal-receive.log").read_text()
        # A partial copy appears only if the segment was still in progress at an upload tick; on a busy machine
        # it may complete first (test_wal_receive.py proves recovery through a partial copy).
        assert "stopped;" in log and re.search(r"pushed (partial )?[0-9A-F]{24}", log), log
        assert _exited(work / "wal-receive.pid"), log
        with wal.connect() as conn:
            assert conn.execute("SHOW synchronous_standby_names").fetchone()[0] == ""
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
        # 18.3's segment went up as a partial copy while in progress, then whole (by the receiver or by
        # archive_command, whichever was first); the partial copies of a whole segment are deleted.
        partial = re.findall(r"pushed partial ([0-9A-F]{24})\.partial", log)
        whole = dict(re.findall(r"pushed ([0-9A-F]{24}) \((stored|duplicate),", log))
        assert whole and (not partial or set(partial) & set(whole) or partial[-1] > max(whole)), log
        store = _store(wal)
        assert {seg: _source(store, seg) for seg, how in whole.items() if how == "stored"} == {
            seg: "pg_receivewal" for seg, how in whole.items() if how == "stored"
        }
        left = {o.segment for o in store.list(1) if o.kind == "partial"}
        assert not left & set(whole), left

    def monitor_password(env: dict[str, str]) -> dict[str, str]:
        """19.1's manual step: the monitoring role's password, set with \\password and kept in pgpass."""
        password = "sv-mon-" + secrets.token_urlsafe(16)
        process.register_secret(password)
        with wal.connect() as conn:
            conn.execute(f"ALTER ROLE seedvault_monitor PASSWORD '{password}'")
            assert conn.execute(
                "SELECT pg_has_role('seedvault_monitor', 'pg_monitor', 'USAGE')"
                " AND NOT rolsuper FROM pg_roles WHERE rolname = 'seedvault_monitor'"
            ).fetchone()[0]
        with open(wal.pgpass, "a") as fh:
            fh.write(f"127.0.0.1:*:*:seedvault_monitor:{password}\n")
        return {"MONITOR_DSN": f"postgresql://seedvault_monitor@127.0.0.1:{wal.primary.port}/postgres"}

    t0 = time.monotonic()
    run_blocks(
        env,
        TAG,
        before={
            "16.1": make_history,
            "16.2": check_to_time_then_write,
            "16.3": check_latest_then_primary_works,
            "16.4": check_timeline,
            "16.5": missing_segment,
            "18.1": check_daemon,
            "19.1": check_streaming,
            "19.2": monitor_password,
        },
        timeout=600,
    )
    print(f"runbook-pitr blocks ran in {time.monotonic() - t0:.1f} s")

    # 13.1/13.2 took effect: the server archives through the runbook's settings (their state dir is used,
    # by the server's user), and 16.4 removed the copy it stopped.
    with wal.connect() as conn:
        assert str(etc / "seedvault.toml") in conn.execute("SHOW archive_command").fetchone()[0]
    cached = list(state.glob("wal-epoch-*.json"))
    assert cached and all(pwd.getpwuid(p.stat().st_uid).pw_name == wal.primary.run_as for p in cached)
    assert all((etc / n).stat().st_mode & 0o077 == 0 for n in ("seedvault.toml", "master.key", "aws-credentials"))
    assert not (restore / "to-time").exists()
    # 19: archiving is fresh, as the pg_monitor role sees it, with nothing it could not see.
    fresh = _report(env, "freshness")
    base = _report(env, "base")
    assert fresh["ok"] and fresh["problems"] == [], fresh
    assert fresh["system_id"] == base["system_id"] and fresh["base_backup"] == base["id"], fresh
    assert fresh["timeline"] == 1 and fresh["segments_checked"] >= 2, fresh
    assert not [n for n in fresh["notes"] if "grant" in n], fresh
