"""TimescaleDB: hypertables recorded at backup, pre/post restore hooks, and a clear refusal without it.

The real-server round trip needs the timescaledb extension installed in the server's binaries (not
packaged for this machine); it skips with that reason where the extension is absent and runs wherever it
is present. The refusal path runs everywhere.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

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


@contextlib.contextmanager
def _timescale_cluster(pg_server, base: Path, password_dir: Path) -> Iterator[LocalCluster]:
    """A cluster of its own with timescaledb preloaded (the session server has no shared_preload_libraries)."""
    if not _has_timescale(pg_server):
        pytest.skip("timescaledb extension not installed for this PostgreSQL (not packaged on this machine)")
    cluster = LocalCluster(base / "data", binaries=pg_server.cluster.binaries)
    pw = password_dir / "pw"
    pw.write_text(pg_server.password + "\n")
    cluster.initdb(password_file=pw, extra_conf={"shared_preload_libraries": "'timescaledb'"}, sync=False)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_hypertable_round_trip(pg_server, pg_base_dir, local_repo, tmp_path):
    with _timescale_cluster(pg_server, pg_base_dir / "tsdb", tmp_path) as cluster:
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


TS_FEATURES_SQL = """
CREATE TABLE metrics (ts timestamptz NOT NULL, device int NOT NULL, value double precision NOT NULL);
SELECT create_hypertable('metrics', 'ts', chunk_time_interval => interval '1 day');
INSERT INTO metrics SELECT timestamptz '2026-11-01' + g * interval '1 minute', g % 10, g * 0.5
    FROM generate_series(1, 20000) g;
ALTER TABLE metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'device');
SELECT compress_chunk(c) FROM show_chunks('metrics', older_than => timestamptz '2026-11-10') c;
CREATE MATERIALIZED VIEW metrics_hourly WITH (timescaledb.continuous) AS
    SELECT time_bucket('1 hour', ts) AS bucket, device, avg(value) AS avg_value, count(*) AS n
    FROM metrics GROUP BY bucket, device WITH NO DATA;
CALL refresh_continuous_aggregate('metrics_hourly', NULL, NULL);
"""


def _ts_facts(conn) -> dict:
    """What a TimescaleDB restore must bring back, read through TimescaleDB's own views and the data itself."""
    one = lambda q: conn.execute(q).fetchone()[0]  # noqa: E731
    return {
        "rows": one("SELECT count(*) FROM metrics"),
        "sum": one("SELECT sum(value) FROM metrics"),
        "chunks": one("SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'metrics'"),
        "compressed": one(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'metrics' AND is_compressed"
        ),
        "cagg_rows": one("SELECT count(*) FROM metrics_hourly"),
        "cagg_sum": one("SELECT sum(n) FROM metrics_hourly"),
        "caggs": one("SELECT count(*) FROM timescaledb_information.continuous_aggregates"),
    }


def test_compressed_chunks_and_continuous_aggregate_parallel_restore(pg_server, pg_base_dir, local_repo, tmp_path):
    """Hypertable with compressed chunks and a continuous aggregate, restored with --jobs 2 (spooled archive).

    TimescaleDB's documented procedure: create the extension at the backup's version in the new database, run
    ``timescaledb_pre_restore()`` (which sets ``timescaledb.restoring`` on the database, so every parallel
    pg_restore connection inherits it), pg_restore, then ``timescaledb_post_restore()``.
    """
    with _timescale_cluster(pg_server, pg_base_dir / "tsdb-par", tmp_path) as cluster:
        with cluster.connect(autocommit=True, password=pg_server.password) as conn:
            conn.execute("CREATE DATABASE tsfeat")
        with cluster.connect("tsfeat", autocommit=True, password=pg_server.password) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute(TS_FEATURES_SQL)
            before = _ts_facts(conn)
        assert before["compressed"] > 0 and before["cagg_rows"] > 0
        env = dict(local_repo.env, PGPASSWORD=pg_server.password)
        dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}"
        summary = json.loads(
            run_cli(["backup", "postgres", "--dsn", f"{dsn}/tsfeat", "--json", "--checksums"], env, check=True).stdout
        )
        run_cli(
            ["restore", "postgres", summary["id"], "--target-dsn", f"{dsn}/tsfeat_par", "--jobs", "2"], env, check=True
        )
        with cluster.connect("tsfeat_par", autocommit=True, password=pg_server.password) as conn:
            assert _ts_facts(conn) == before
            # post_restore ran: the database is out of restoring mode and new rows land in chunks as usual.
            assert conn.execute("SHOW timescaledb.restoring").fetchone()[0] == "off"
            conn.execute("INSERT INTO metrics VALUES ('2026-12-01', 1, 1.0)")
            assert conn.execute("SELECT count(*) FROM metrics").fetchone()[0] == before["rows"] + 1
