"""Issue 5 acceptance: real PostgreSQL archiving through ``seedvault wal-push %p`` to a moto S3 endpoint,
physical base backups, and point-in-time recovery into new data directories.

The server runs as an unprivileged OS user with a minimal environment, exactly like production:
``archive_command`` runs the seedvault command built by ``tests/fixtures/pgvenv.py`` with a TOML config
(repository, endpoint, key *file*, shared-credentials *file*), and the restored server's
``restore_command`` is derived from it. Nothing here is mocked: wal-push/wal-fetch are separate processes
talking HTTP to moto, recovery is PostgreSQL's own.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg

from seedvault.sources.postgres.binaries import preferred_server_binaries
from seedvault.sources.postgres.cluster import HOST, LocalCluster, free_loopback_port
from tests.fixtures.postgres import TEST_SERVER_CONF
from tests.fixtures.walenv import ARCHIVE_TIMEOUT, WalEnv, boto3_client, list_all


def _insert(conn: psycopg.Connection, n: int, note: str) -> None:
    for _ in range(n):  # one transaction per row: commit times are what recovery targets compare
        conn.execute("INSERT INTO ev (ts, note) VALUES (clock_timestamp(), %s)", (note,))


def _rows(env: WalEnv, cluster: LocalCluster) -> list[tuple]:
    with env.connect(cluster) as conn:
        return conn.execute("SELECT id, ts, note FROM ev ORDER BY id").fetchall()


def _restored(data_dir: Path) -> LocalCluster:
    return LocalCluster(data_dir)


def _base_backup(env: WalEnv) -> dict:
    out = env.cli("backup", "postgres-base", "--dsn", env.dsn(), "--json")
    return json.loads(out.stdout)


def test_archive_push_is_idempotent_and_never_overwrites(wal_env: WalEnv) -> None:
    env = wal_env
    seg = env.wait_archived()
    wal = env.primary.data_dir / "pg_wal" / seg
    assert wal.exists()  # kept by wal_keep_size
    again = subprocess.run(
        [str(env.exe), "--config", str(env.config), "wal-push", f"pg_wal/{seg}"],
        cwd=env.primary.data_dir,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert again.returncode == 0, again.stderr
    assert "already archived with identical content" in again.stderr
    forged = env.base / "forged" / "pg_wal"
    forged.mkdir(parents=True)
    (forged.parent / "global").mkdir()
    (forged.parent / "global" / "pg_control").write_bytes((env.primary.data_dir / "global" / "pg_control").read_bytes())
    data = bytearray(wal.read_bytes())
    data[100_000] ^= 0xFF
    (forged / seg).write_bytes(bytes(data))
    bad = env.cli("wal-push", "--pgdata", str(forged.parent), f"pg_wal/{seg}", check=False)
    assert bad.returncode == 16, bad.stderr
    assert seg in bad.stderr and "different content" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    out = env.base / "fetched"
    got = env.cli("wal-fetch", "--pgdata", str(env.primary.data_dir), seg, str(out))
    assert got.returncode == 0 and out.read_bytes() == wal.read_bytes()  # the first content is kept
    missing = env.cli(
        "wal-fetch", "--pgdata", str(env.primary.data_dir), "0000000100000000000000FF", str(out) + "x", check=False
    )
    assert missing.returncode == 1 and missing.stderr == ""


def test_pitr_to_time_then_again_from_the_new_timeline(wal_env: WalEnv) -> None:
    env = wal_env
    with env.connect() as conn:
        conn.execute("TRUNCATE ev")
        _insert(conn, 50, "before-backup")
        backup = _base_backup(env)
        assert backup["system_id"] and backup["start_lsn"] and backup["wal"][0] <= backup["wal"][1]
        _insert(conn, 50, "after-backup")
        time.sleep(0.3)
        target = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(0.3)
        _insert(conn, 50, "after-target")
    env.wait_archived()
    d1 = env.new_dir()
    rep = env.cli("restore", "postgres-pitr", "--data-dir", str(d1), "--to-time", target.isoformat(), "--json")
    report = json.loads(rep.stdout)
    r1 = _restored(d1)
    try:
        rows = _rows(env, r1)
        notes = [r[2] for r in rows]
        assert notes.count("before-backup") == 50 and notes.count("after-backup") == 50
        assert "after-target" not in notes and all(r[1] <= target for r in rows)
        assert report["timeline"] == 2 and report["plan"]["backup_id"] == backup["id"]
        # Recovery was served by the read-ahead daemon (parallel downloads ahead of replay).
        m = re.search(r"(\d+) fetched \((\d+) read ahead\)", report["read_ahead"] or "")
        assert m and int(m.group(1)) >= 2 and int(m.group(2)) >= 1, report["read_ahead"]
        assert "recovery stopping before commit" in (report["stop_reason"] or "")
        # Audited (issue 14.3): one pitr event naming the base backup, the target and the new timeline.
        pitr = [e for e in json.loads(env.cli("audit", "--json").stdout)["events"] if e["operation"] == "pitr"]
        assert pitr[-1]["backup_ids"] == [backup["id"]] and pitr[-1]["result"] == "ok"
        assert pitr[-1]["details"]["timeline"] == 2 and pitr[-1]["details"]["target"].startswith("time ")
        # The new timeline's history is in the store before the restore returned.
        listing = env.cli("wal-fetch", "--pgdata", str(d1), "00000002.history", str(env.base / "h2"))
        assert listing.returncode == 0 and "0/" in (env.base / "h2").read_text()
        # Work on the restored server (it archives to the same repository, on timeline 2) ...
        with env.connect(r1) as conn:
            _insert(conn, 20, "on-timeline-2")
        env.wait_archived(r1)
    finally:
        r1.stop()
    # ... then restore again, from the same (timeline 1) base backup, following timeline 2 to its end.
    d2 = env.new_dir()
    # --timeline 2 explicitly: the primary still runs on timeline 1 (autovacuum may make it archive more),
    # and then a default --latest is refused as diverged (unit-tested in test_wal_store.py).
    rep2 = json.loads(
        env.cli("restore", "postgres-pitr", "--data-dir", str(d2), "--latest", "--timeline", "2", "--json").stdout
    )
    r2 = _restored(d2)
    try:
        notes = [r[2] for r in _rows(env, r2)]
        assert notes.count("on-timeline-2") == 20 and "after-target" not in notes
        assert rep2["timeline"] == 3 and rep2["plan"]["timeline"] == 2
    finally:
        r2.stop()


def _foreign_record(env: WalEnv, name: str, tmp_path: Path) -> bytes:
    """A valid record of segment ``name`` archived by another database system (same key, same bucket)."""
    from seedvault.config import load
    from seedvault.repository import Repository
    from seedvault.sources.postgres.wal import names as wn
    from seedvault.sources.postgres.wal.store import WalStore
    from seedvault.storage.open import open_storage

    settings = load(env={"SEEDVAULT_CONFIG": str(env.config)})
    repo = Repository(open_storage(settings), settings.key_source())
    other = 6999999999999999999
    wal = wn.classify(name)
    seg_size = 16 * 1024 * 1024
    head = wn.LONG_HEADER.pack(wn.PAGE_MAGIC[15], wn.XLP_LONG_HEADER, wal.timeline,
                               wal.segno(seg_size) * seg_size, 0, other, seg_size, 8192)  # fmt: skip
    seg = tmp_path / name
    seg.write_bytes(head + b"\0" * (seg_size - len(head)))
    res = WalStore(repo, other).push(seg)
    with repo.storage.open_read(res.key) as fh:
        return fh.read()


def test_gap_and_corrupt_segment_stop_the_restore_naming_the_segment(wal_env: WalEnv, tmp_path: Path) -> None:
    env = wal_env
    with env.connect() as conn:
        _insert(conn, 10, "gap-1")
    backup = _base_backup(env)
    segs = []
    with env.connect() as conn:
        for i in range(3):
            _insert(conn, 10, f"gap-{i + 2}")
            segs.append(env.wait_archived())
    client = boto3_client(env)
    prefix = f"repo/v1/wal/{backup['system_id']}/"
    keys = {o["Key"].rsplit("/", 1)[-1]: o["Key"] for o in list_all(client, env.bucket, prefix)}
    victim = segs[1]
    # 1) a corrupted segment: the plan passes (it is listed), recovery stops with wal-fetch's FATAL
    body = bytearray(client.get_object(Bucket=env.bucket, Key=keys[victim])["Body"].read())
    saved = bytes(body)
    body[len(body) // 2] ^= 0x01
    client.put_object(Bucket=env.bucket, Key=keys[victim], Body=bytes(body))
    d = env.new_dir()
    bad = env.cli("restore", "postgres-pitr", "--data-dir", str(d), "--latest", "--timeline", "1", check=False)
    assert bad.returncode == 55, bad.stderr
    assert victim in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not d.exists()  # the empty directory it was given is not left half-recovered
    # 2) a foreign segment: another database system's record of the same name put in its place
    foreign = _foreign_record(env, victim, tmp_path)
    client.put_object(Bucket=env.bucket, Key=keys[victim], Body=foreign)
    bad = env.cli("restore", "postgres-pitr", "--data-dir", str(d), "--latest", "--timeline", "1", check=False)
    assert bad.returncode == 55, bad.stderr
    assert victim in bad.stderr and len(bad.stderr.strip().splitlines()) == 1 and not d.exists()
    # 3) a missing segment: refused before anything is laid out
    client.delete_object(Bucket=env.bucket, Key=keys[victim])
    try:
        gap = env.cli("restore", "postgres-pitr", "--data-dir", str(d), "--latest", "--timeline", "1", check=False)
        assert gap.returncode == 25, gap.stderr
        assert victim in gap.stderr and not d.exists()
    finally:
        client.put_object(Bucket=env.bucket, Key=keys[victim], Body=saved)


def test_kill_primary_then_latest_loses_at_most_archive_timeout(wal_env: WalEnv, pg_base_dir: Path) -> None:
    env = wal_env
    _base_backup(env)
    last: list = []
    stop = threading.Event()

    def writer() -> None:
        with env.connect() as conn:
            while not stop.is_set():
                try:
                    last.append(
                        conn.execute(
                            "INSERT INTO ev (ts, note) VALUES (clock_timestamp(), 'load') RETURNING ts"
                        ).fetchone()[0]
                    )
                except psycopg.Error:
                    return
                time.sleep(0.05)

    th = threading.Thread(target=writer)
    th.start()
    time.sleep(ARCHIVE_TIMEOUT * 1.5 + 3)
    env.primary.kill()  # kill -9 of the postmaster and its children
    stop.set()
    th.join()
    committed = last[-1]
    d = env.new_dir()
    rep = json.loads(
        env.cli("restore", "postgres-pitr", "--data-dir", str(d), "--latest", "--timeline", "1", "--json").stdout
    )
    r = _restored(d)
    try:
        with env.connect(r) as conn:
            newest = conn.execute("SELECT max(ts) FROM ev WHERE note = 'load'").fetchone()[0]
        loss = (committed - newest).total_seconds()
        print(f"loss window after kill -9: {loss:.2f} s (archive_timeout {ARCHIVE_TIMEOUT} s); report {rep['lsn']}")
        assert 0 <= loss <= ARCHIVE_TIMEOUT + 5
    finally:
        r.stop()
        env.primary.start(timeout=60)  # later tests (if any) use the primary again


def test_restore_refuses_non_empty_dir_and_unarchived_server(wal_env: WalEnv, pg_base_dir: Path) -> None:
    env = wal_env
    d = env.new_dir()
    d.mkdir(parents=True)
    (d / "PG_VERSION").write_text("15\n")
    res = env.cli("restore", "postgres-pitr", "--data-dir", str(d), "--latest", check=False)
    assert res.returncode == 51 and "not empty" in res.stderr
    assert (d / "PG_VERSION").read_text() == "15\n"
    # A server that does not archive to seedvault: the base backup is refused before pg_basebackup runs.
    other = LocalCluster(
        pg_base_dir / f"noarch-{uuid.uuid4().hex[:6]}" / "data",
        port=free_loopback_port(),
        binaries=preferred_server_binaries(),
    )
    try:
        other.initdb("postgres", password=env.password, extra_conf=dict(TEST_SERVER_CONF), sync=False)
        other.start(timeout=60)
        res = env.cli(
            "backup", "postgres-base", "--dsn", f"postgresql://postgres@{HOST}:{other.port}/postgres", check=False
        )
        assert res.returncode == 50 and "archive_mode" in res.stderr
    finally:
        other.destroy()


def test_recovered_server_that_refuses_the_poll_fails_at_once_naming_why(wal_env: WalEnv) -> None:
    """No password for the recovered copy's superuser: a clear refusal at once, not an hour's wait."""
    env = wal_env
    _base_backup(env)
    env.wait_archived()
    data = env.new_dir()
    no_password = {k: v for k, v in env.cli_env().items() if k not in ("PGPASSFILE", "PGPASSWORD")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "seedvault.cli.app", "restore", "postgres-pitr", "--data-dir", str(data), "--immediate"]
        + ["--timeline", "1"],  # earlier tests of this file left a diverged timeline
        env=no_password,
        capture_output=True,
        text=True,
        timeout=300,
    )
    took = time.monotonic() - started
    assert proc.returncode != 0, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "refuses seedvault's connection" in line and "password" in line, proc.stderr
    assert took < 120, f"took {took:.0f} s: the refusal was waited out"
    assert not data.exists() or not any(data.iterdir()), "a failed restore leaves no half-made data directory"
