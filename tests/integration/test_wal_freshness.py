"""``seedvault check wal-freshness`` against a real archiving PostgreSQL (``wal_env``: archive_command =
``seedvault wal-push %p`` into a moto S3 bucket), run as a separate process like cron or a probe would.

The module's primary is shared by its tests, so a test that breaks archiving (archive_command, a deleted
object) repairs it in ``finally`` and waits until archiving has caught up again.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from tests.fixtures.s3 import free_loopback_port
from tests.fixtures.walenv import WalEnv, boto3_client, list_all

MAX_LAG = 3.0  # seconds; small so that "longer than max-lag" costs a few seconds of waiting


def _check(env: WalEnv, *extra: str, max_lag: float = MAX_LAG):
    proc = env.cli("check", "wal-freshness", "--dsn", env.dsn(), "--max-lag", str(max_lag), *extra, check=False)
    report = json.loads(proc.stdout) if "--json" in extra and proc.stdout.strip() else None
    return proc, report


def _write(env: WalEnv, rows: int = 20, note: str = "freshness") -> None:
    with env.connect() as conn:
        for _ in range(rows):
            conn.execute("INSERT INTO ev (ts, note) VALUES (clock_timestamp(), %s)", (note,))


def _archiver(conn: psycopg.Connection) -> tuple:
    return conn.execute("SELECT last_archived_wal, last_failed_wal, last_failed_time FROM pg_stat_archiver").fetchone()


@pytest.fixture(scope="module")
def base_backup(wal_env: WalEnv) -> dict:
    """One physical base backup, so that the check walks the WAL since it (as a restore would)."""
    return json.loads(wal_env.cli("backup", "postgres-base", "--dsn", wal_env.dsn(), "--json").stdout)


def test_healthy_archiving_server_passes_with_a_report(wal_env: WalEnv, base_backup: dict) -> None:
    env = wal_env
    _write(env)
    seg = env.wait_archived()
    proc, report = _check(env, "--json")
    assert proc.returncode == 0, proc.stderr
    assert report["ok"] and report["problems"] == []
    assert report["last_archived_wal"] == seg and report["system_id"] == base_backup["system_id"]
    assert report["timeline"] == 1 and 0 <= report["age_seconds"] < 60 and report["pending"] == 0
    assert report["base_backup"] == base_backup["id"] and report["first_segment"] == base_backup["wal"][0]
    assert report["last_segment"] == seg and report["segments_checked"] >= 2
    # The plain output is one summary line naming the last archived segment.
    plain, _ = _check(env)
    assert plain.returncode == 0 and plain.stdout.count("\n") == 1
    assert "is fresh" in plain.stdout and seg in plain.stdout and base_backup["id"] in plain.stdout


def test_idle_server_passes_however_old_its_last_archival(wal_env: WalEnv, base_backup: dict) -> None:
    env = wal_env
    seg = env.wait_archived()
    time.sleep(MAX_LAG + 1.5)  # nothing is written meanwhile
    proc, report = _check(env, "--json")
    assert proc.returncode == 0, proc.stderr
    assert report["age_seconds"] > MAX_LAG and report["last_archived_wal"].startswith(seg)  # or its .backup
    assert report["pending"] == 0
    # At most a few bytes of "unimportant" WAL (standby snapshots) beyond the archived segment.
    assert report["lag_bytes"] < 8192


def test_failing_archive_command_fails_with_wal_stale_naming_the_segment(wal_env: WalEnv, base_backup: dict) -> None:
    env = wal_env
    with env.connect() as conn:
        conn.execute("ALTER SYSTEM SET archive_command = 'false'")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)  # the archiver reloads on its next wake-up
        try:
            broken_at = conn.execute("SELECT now()").fetchone()[0]
            _write(env, note="unarchived")
            switched = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                _, stuck, failed_at = _archiver(conn)
                if failed_at is not None and failed_at > broken_at:
                    break  # the oldest unarchived file (normally the one just switched) keeps failing
                time.sleep(0.2)
            assert failed_at is not None and failed_at > broken_at, "archive_command = 'false' did not fail"
            assert stuck <= switched
            time.sleep(MAX_LAG + 1)
            proc, report = _check(env, "--json")
            assert proc.returncode == 61, proc.stderr
            line = proc.stderr.strip()
            assert len(line.splitlines()) == 1 and line.startswith("seedvault: error: WAL archiving is failing on ")
            assert stuck in line and "HINT:" in line
            kinds = [p["kind"] for p in report["problems"]]
            assert kinds[:2] == ["failing", "lag"] and not report["ok"]  # ... and wal-push is not in the command
            assert report["oldest_pending"] == stuck and report["oldest_pending_age_seconds"] > MAX_LAG
            assert report["last_failed_wal"] == stuck and report["failed_count"] >= 1
        finally:
            conn.execute("ALTER SYSTEM RESET archive_command")
            conn.execute("SELECT pg_reload_conf()")
    # Repaired: the archiver retries the stuck segment and catches up, and the check passes again.
    env.wait_archived()
    proc, report = _check(env, "--json")
    assert proc.returncode == 0, proc.stderr
    assert report["failed_count"] >= 1 and report["pending"] == 0


def test_deleted_segments_fail_with_wal_gap_naming_them(wal_env: WalEnv, base_backup: dict) -> None:
    env = wal_env
    segs = []
    for i in range(3):
        _write(env, rows=5, note=f"gap-{i}")
        segs.append(env.wait_archived())
    client = boto3_client(env)
    prefix = f"repo/v1/wal/{base_backup['system_id']}/"
    keys = {o["Key"].rsplit("/", 1)[-1]: o["Key"] for o in list_all(client, env.bucket, prefix)}
    # The newest one is "the last archived" unless the server archived more meanwhile (autovacuum WAL plus
    # archive_timeout on a loaded machine): then it is a hole before later WAL, named just the same.
    for victim, expected in (
        (segs[1], ("but later WAL",)),
        (segs[2], ("according to pg_stat_archiver", "but later WAL")),
    ):
        saved = client.get_object(Bucket=env.bucket, Key=keys[victim])["Body"].read()
        client.delete_object(Bucket=env.bucket, Key=keys[victim])
        try:
            proc, _ = _check(env)
            assert proc.returncode == 25, proc.stderr
            line = proc.stderr.strip()
            assert len(line.splitlines()) == 1 and victim in line and any(e in line for e in expected), line
            assert "missing from s3://" in line and "seedvault backup postgres-base" in line
        finally:
            client.put_object(Bucket=env.bucket, Key=keys[victim], Body=saved)
    assert _check(env)[0].returncode == 0


def test_password_in_dsn_is_refused_and_unreachable_server_named(wal_env: WalEnv) -> None:
    env = wal_env
    secret_dsn = env.dsn().replace("postgres@", f"postgres:{env.password}@")
    proc = env.cli("check", "wal-freshness", "--dsn", secret_dsn, check=False)
    assert proc.returncode == 3 and "contains a password" in proc.stderr
    assert env.password not in proc.stdout + proc.stderr
    down = f"postgresql://postgres@127.0.0.1:{free_loopback_port()}/postgres"
    proc = env.cli("check", "wal-freshness", "--dsn", down, check=False)
    assert proc.returncode == 52 and proc.stderr.startswith("seedvault: error: cannot connect to PostgreSQL")
