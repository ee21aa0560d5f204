"""Audit events of a real PostgreSQL logical backup, restore and drill restore (the pg_server fixture)."""

from __future__ import annotations

import json

import pytest

from seedvault import audit
from seedvault.ops.postgres_restore import RestoreOptions, restore_postgres
from seedvault.sources.postgres.connection import PgTarget
from seedvault.sources.postgres.sample import load_sample
from tests.helpers import run_cli


def _dsn(pg_server, db: str) -> str:
    return f"postgresql://{pg_server.user}@{pg_server.host}:{pg_server.port}/{db}"


def test_backup_restore_and_drill_are_audited_and_listed(local_repo, pg_server, pg_db, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("PGPASSFILE", str(pg_server.pgpass_file))
    env = dict(local_repo.env, XDG_CACHE_HOME=str(cache), **pg_server.env())
    with pg_server.connect(pg_db) as conn:
        load_sample(conn)
    backup = run_cli(["backup", "postgres", "--dsn", _dsn(pg_server, pg_db), "--json"], env, check=True)
    bid = json.loads(backup.stdout)["id"]
    restored, drill = f"{pg_db}_r", f"{pg_db}_drill"
    try:
        run_cli(["restore", "postgres", bid, "--target-dsn", _dsn(pg_server, restored)], env, check=True)
        report = restore_postgres(
            local_repo.repository(), bid, PgTarget.from_dsn(_dsn(pg_server, drill)), RestoreOptions(), purpose="drill"
        )
        assert report.tables_verified == 4
        with pytest.raises(Exception, match="unknown restore purpose"):
            restore_postgres(local_repo.repository(), bid, PgTarget.from_dsn(_dsn(pg_server, drill)), purpose="x")
    finally:
        pg_server.drop_database(restored)
        pg_server.drop_database(drill)
    events = json.loads(run_cli(["audit", "--json"], env, check=True).stdout)["events"]
    assert [(e["operation"], e["backup_ids"], e["result"]) for e in events] == [
        ("backup", [bid], "ok"),
        ("restore", [bid], "ok"),
        ("restore-test", [bid], "ok"),
    ]
    assert events[0]["details"]["kind"] == "postgres-logical" and events[0]["details"]["label"] == pg_db
    assert events[1]["details"]["database"] == restored and events[1]["details"]["tables_verified"] == 4
    assert events[2]["details"]["rows_verified"] == events[1]["details"]["rows_verified"] > 0
    stored = b"".join(p.read_bytes() for p in (local_repo.root / audit.EVENTS).iterdir())
    assert pg_server.password.encode() not in stored
    row = json.loads(run_cli(["list", "--json"], env, check=True).stdout)[0]
    assert row["last_restore_tested"]["ok"] is True and row["last_restore_tested"]["seq"] == 3
    assert row["last_verified"] is None
