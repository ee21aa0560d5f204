"""TimescaleDB: hypertables recorded at backup, pre/post restore hooks, and a clear refusal without it.

The real-server round trip needs the timescaledb extension installed in the server's binaries (not
packaged for this machine); it skips with that reason where the extension is absent and runs wherever it
is present. The refusal path runs everywhere.
"""

from __future__ import annotations

import json

import pytest

from seedvault.errors import TargetError
from seedvault.sources.postgres.cluster import LocalCluster
from seedvault.sources.postgres.sample import load_sample
from tests.helpers import run_cli


def _has_timescale(pg_server) -> bool:
    with pg_server.connect() as conn:
        return conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone() is not None


def test_target_without_the_extension_version_is_refused(pg_server, pg_db, local_repo, monkeypatch):
    from seedvault.ops.postgres_restore import RestoreOptions, _Restore
    from seedvault.sources.postgres.connection import PgTarget

    with pg_server.connect(pg_db) as conn:
        load_sample(conn, customers=5, orders=5, readings=5)
    env = dict(local_repo.env, **pg_server.env())
    dsn = f"postgresql://{pg_server.user}@{pg_server.host}:{pg_server.port}/{pg_db}"
    bid = json.loads(run_cli(["backup", "postgres", "--dsn", dsn, "--json"], env, check=True).stdout)["id"]
    monkeypatch.setenv("PGPASSFILE", str(pg_server.pgpass_file))
    job = _Restore(local_repo.repository(), bid, PgTarget.from_dsn(dsn + "_new"), RestoreOptions(), None)
    job.timescale = {"version": "99.9.9", "hypertables": []}
    with pg_server.connect() as admin, pytest.raises(TargetError, match="timescaledb extension version 99.9.9"):
        job.preflight(admin)


def test_hypertable_round_trip(pg_server, pg_base_dir, local_repo, tmp_path):
    if not _has_timescale(pg_server):
        pytest.skip("timescaledb extension not installed for this PostgreSQL (not packaged on this machine)")
    cluster = LocalCluster(pg_base_dir / "tsdb" / "data", binaries=pg_server.cluster.binaries)
    pw = tmp_path / "pw"
    pw.write_text(pg_server.password + "\n")
    cluster.initdb(password_file=pw, extra_conf={"shared_preload_libraries": "'timescaledb'"}, sync=False)
    cluster.start()
    try:
        with cluster.connect(autocommit=True, password=pg_server.password) as conn:
            conn.execute("CREATE DATABASE tsdb")
        with cluster.connect("tsdb", autocommit=True, password=pg_server.password) as conn:
            load_sample(conn)
        env = dict(local_repo.env, PGPASSWORD=pg_server.password)
        dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}"
        summary = json.loads(run_cli(["backup", "postgres", "--dsn", f"{dsn}/tsdb", "--json"], env, check=True).stdout)
        body = json.loads(run_cli(["show", summary["id"], "--json"], env, check=True).stdout)
        hyper = body["source"]["timescaledb"]["hypertables"]
        assert hyper[0]["table"] == "readings" and hyper[0]["chunks"] > 0
        run_cli(["restore", "postgres", summary["id"], "--target-dsn", f"{dsn}/tsdb_restored"], env, check=True)
        with cluster.connect("tsdb_restored", autocommit=True, password=pg_server.password) as conn:
            assert conn.execute("SELECT count(*) FROM telemetry.readings").fetchone()[0] == 20000
            assert conn.execute("SELECT count(*) FROM timescaledb_information.hypertables").fetchone()[0] == 1
    finally:
        cluster.destroy()
