"""Issue 14.6c: tables backed up with estimated row counts are reported as not verified by a restore."""

from __future__ import annotations

import json

from seedvault.sources.postgres.sample import load_sample
from tests.helpers import run_cli


def _dsn(pg_server, db: str) -> str:
    return f"postgresql://{pg_server.user}@{pg_server.host}:{pg_server.port}/{db}"


def test_estimate_above_end_to_end_reports_the_estimated_tables_as_unverified(local_repo, pg_server, pg_db):
    env = dict(local_repo.env, **pg_server.env())
    with pg_server.connect(pg_db) as conn:
        counts = load_sample(conn)
        conn.execute("ANALYZE")  # planner estimates (reltuples) for every table
    threshold = sorted(counts.values())[len(counts) // 2 - 1]  # about half the tables estimate above it
    argv = ["backup", "postgres", "--dsn", _dsn(pg_server, pg_db), "--estimate-above", str(threshold), "--json"]
    backup_id = json.loads(run_cli(argv, env, check=True).stdout)["id"]
    body = json.loads(run_cli(["show", backup_id, "--json"], env, check=True).stdout)
    tables = body["source"]["tables"]
    estimated = sorted(f"{t['schema']}.{t['name']}" for t in tables if t["estimated"])
    exact = [t for t in tables if not t["estimated"]]
    assert estimated and exact, tables  # both kinds, or the test shows nothing
    target = f"{pg_db}_estimated"
    try:
        argv = ["restore", "postgres", backup_id, "--target-dsn", _dsn(pg_server, target)]
        report = json.loads(run_cli([*argv, "--json"], env, check=True).stdout)
        assert sorted(report["tables_unverified"]) == estimated
        assert report["tables_verified"] == len(exact)
        assert report["rows_verified"] == sum(t["rows"] for t in exact)
        pg_server.drop_database(target)
        res = run_cli(argv, env, check=True)  # the human line says so too
        line = res.stdout.decode()
        assert f"{len(exact)} tables, " in line and f"{len(estimated)} tables not verified" in line, line
        assert all(name in line for name in estimated), line
    finally:
        pg_server.drop_database(target)
