"""Run RUNBOOK.md's WAL archiving / base backup / PITR blocks (```bash runbook-pitr), extracted from the
file itself, in order, against the ``wal_env`` archiving PostgreSQL (moto S3), as root would at 3 a.m.

The blocks configure archiving themselves (their own settings, key and credentials files, chowned to the
server's user, and ``ALTER SYSTEM``), take and list a base backup, and recover three servers: to a time,
to the latest WAL after that PITR made a new timeline, and along a chosen timeline. Between sections the
test plays the world (writes rows, notes the target time) and checks each recovered server's rows; a
block that fails names its section.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import time
import tomllib
from datetime import UTC
from pathlib import Path

import psycopg

from seedvault.config import Settings
from seedvault.sources.postgres.cluster import LocalCluster
from tests.fixtures.s3 import S3_REGION
from tests.fixtures.walenv import WalEnv
from tests.helpers import base_env
from tests.test_runbook import fenced_blocks, run_blocks, runbook_blocks

TAG = "runbook-pitr"
SECTIONS = ("13.1", "13.2", "13.3", "14.", "15.", "16.1", "16.2", "16.3", "16.4", "16.5")
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


def test_runbook_pitr_blocks_run(wal_env: WalEnv, request) -> None:
    wal = wal_env
    doc = _doc_settings()
    work, etc, state, restore = (wal.base / n for n in ("runbook-work", "runbook-etc", "runbook-state", "restore"))
    work.mkdir()
    etc.mkdir(mode=0o755)
    request.addfinalizer(lambda: _stop_all(restore))

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
    )
    env["PATH"] = f"{env['PATH']}:/usr/sbin:/sbin"  # runuser
    if os.geteuid() != 0:  # the server runs as ourselves: runuser -u <us> -- cmd is just cmd
        (work / "bin").mkdir()
        shim = work / "bin" / "runuser"
        shim.write_text('#!/bin/sh\n[ "$1" = -u ] && shift 2\n[ "$1" = -- ] && shift\nexec "$@"\n')
        shim.chmod(0o755)

    def make_history(_env: dict[str, str]) -> dict[str, str]:
        """After the base backup: rows before the target, the target time, rows after it, all archived."""
        with wal.connect() as conn:
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

    def check_latest(env: dict[str, str]) -> None:
        rep = _report(env, "latest")
        assert rep["plan"]["timeline"] == 2 and rep["timeline"] == 3, rep
        assert _notes(wal, rep) == {"before-target": 30, "on-timeline-2": 20}

    def check_timeline(env: dict[str, str]) -> None:
        rep = _report(env, "timeline")
        assert rep["plan"]["timeline"] == 1 and rep["timeline"] not in (1, 2, 3), rep
        assert _notes(wal, rep) == {"before-target": 30, "after-target": 30}

    def missing_segment(env: dict[str, str]) -> dict[str, str]:
        seg = _report(env, "base")["wal"][0]  # archived, and kept in pg_wal by wal_keep_size
        assert (wal.primary.data_dir / "pg_wal" / seg).exists()
        return {"MISSING_SEG": seg}

    t0 = time.monotonic()
    run_blocks(
        env,
        TAG,
        before={
            "16.1": make_history,
            "16.2": check_to_time_then_write,
            "16.3": check_latest,
            "16.4": check_timeline,
            "16.5": missing_segment,
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
