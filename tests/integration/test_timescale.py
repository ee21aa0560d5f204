"""TimescaleDB as the platform has it, against the real extension: backup, every restore path, jobs after.

Needs the timescaledb extension installed for the test server's PostgreSQL (its control file and library
in the server's share and library directories); the session server preloads it whenever it is installed
(``LocalCluster.initdb``). Skips with that reason where it is not installed. The refusal tests that need no
extension run everywhere.

The data: a hypertable with a time and a space dimension, compression (segmentby/orderby) with compressed
and uncompressed chunks, a continuous aggregate and a hierarchical one on it with a refresh policy,
compression and retention policies, plain tables with foreign keys between them and the hypertable, and a
plain schema. After each restore, rows, chunks, compressed chunks, continuous aggregate contents, dimensions
and ``timescaledb_information.jobs`` must equal the source's, and a job made due runs on the restored
database within a minute.
"""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest

from seedvault.errors import TargetError
from seedvault.sources.postgres.sample import load_sample
from tests.helpers import run_cli

PLATFORM_SQL = """
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE TABLE devices (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO devices SELECT g, 'device-' || g FROM generate_series(0, 9) g;
CREATE TABLE metrics (
    ts timestamptz NOT NULL, device_id int NOT NULL REFERENCES devices (id), value double precision NOT NULL
);
SELECT create_hypertable('metrics', by_range('ts', interval '1 day'));
SELECT add_dimension('metrics', by_hash('device_id', 4));
INSERT INTO metrics SELECT timestamptz '2026-11-01' + g * interval '1 minute', g % 10, g * 0.5
    FROM generate_series(1, 20000) g;
ALTER TABLE metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                         timescaledb.compress_orderby = 'ts DESC');
SELECT compress_chunk(c) FROM show_chunks('metrics', older_than => timestamptz '2026-11-08') c;
CREATE MATERIALIZED VIEW metrics_hourly WITH (timescaledb.continuous) AS
    SELECT time_bucket('1 hour', ts) AS bucket, device_id, avg(value) AS avg_value, count(*) AS n
    FROM metrics GROUP BY bucket, device_id WITH NO DATA;
CREATE MATERIALIZED VIEW metrics_daily WITH (timescaledb.continuous) AS
    SELECT time_bucket('1 day', bucket) AS day, device_id, sum(n) AS n
    FROM metrics_hourly GROUP BY day, device_id WITH NO DATA;
CALL refresh_continuous_aggregate('metrics_hourly', NULL, NULL);
CALL refresh_continuous_aggregate('metrics_daily', NULL, NULL);
SELECT add_continuous_aggregate_policy('metrics_hourly', start_offset => interval '90 days',
    end_offset => interval '1 hour', schedule_interval => interval '1 hour', initial_start => now() + interval '1 day');
SELECT add_compression_policy('metrics', compress_after => interval '365 days',
    initial_start => now() + interval '1 day');
SELECT add_retention_policy('metrics', drop_after => interval '10 years', initial_start => now() + interval '1 day');
CREATE TABLE alerts (
    id serial PRIMARY KEY, device_id int NOT NULL REFERENCES devices (id), raised_at timestamptz NOT NULL, note text
);
INSERT INTO alerts (device_id, raised_at, note)
    SELECT g % 10, timestamptz '2026-11-02' + g * interval '1 hour', 'alert ' || g FROM generate_series(1, 50) g;
CREATE SCHEMA inventory;
CREATE TABLE inventory.parts (id int PRIMARY KEY, device_id int REFERENCES devices (id), part text);
INSERT INTO inventory.parts SELECT g, g % 10, 'part-' || g FROM generate_series(1, 30) g;
"""


def facts(conn: psycopg.Connection) -> dict:
    """What a TimescaleDB restore must bring back, read through TimescaleDB's own views and the data itself."""

    def one(query: str):
        return conn.execute(query).fetchone()[0]

    def chunks(where: str = "") -> int:
        return one(f"SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'metrics' {where}")

    return {
        "rows": one("SELECT count(*) FROM metrics"),
        "sum": one("SELECT sum(value) FROM metrics"),
        "chunks": chunks(),
        "compressed": chunks("AND is_compressed"),
        "dimensions": one("SELECT count(*) FROM timescaledb_information.dimensions WHERE hypertable_name = 'metrics'"),
        "hourly": one("SELECT count(*) || '/' || sum(n) FROM metrics_hourly"),
        "daily": one("SELECT count(*) || '/' || sum(n) FROM metrics_daily"),
        "caggs": one("SELECT count(*) FROM timescaledb_information.continuous_aggregates"),
        "jobs": conn.execute(
            "SELECT job_id, proc_name, schedule_interval::text, config::text, hypertable_name"
            " FROM timescaledb_information.jobs WHERE job_id >= 1000 ORDER BY job_id"
        ).fetchall(),
        "devices": one("SELECT count(*) FROM devices"),
        "alerts": one("SELECT count(*) FROM alerts"),
        "parts": one("SELECT count(*) FROM inventory.parts"),
    }


def _require_timescale(pg_server) -> None:
    if not pg_server.cluster.binaries.has_extension("timescaledb"):
        pytest.skip(
            f"timescaledb is not installed for PostgreSQL {pg_server.major} ({pg_server.cluster.binaries.bindir});"
            " it is not packaged for this machine's registries"
        )
    with pg_server.connect() as conn:
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    assert "timescaledb" in preload, "the extension is installed, so the test server must preload it"


class Platform:
    """The source database and one backup of it (with checksums), shared by this file's tests."""

    def __init__(self, pg_server, repo, db: str, backup_id: str, before: dict, version: str) -> None:
        self.pg_server, self.repo, self.db, self.backup_id, self.before = pg_server, repo, db, backup_id, before
        self.env = dict(repo.env, **pg_server.env())
        self.version = version  # the source's timescaledb extension version

    def dsn(self, db: str) -> str:
        s = self.pg_server
        return f"postgresql://{s.user}@{s.host}:{s.port}/{db}"

    def restore(self, target: str, *args: str, check: bool = True):
        argv = ["restore", "postgres", self.backup_id, "--target-dsn", self.dsn(target), *args]
        return run_cli(argv, self.env, check=check)


@pytest.fixture(scope="module")
def platform(pg_server, local_repo_module):
    _require_timescale(pg_server)
    db = f"ts_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(db)
    with pg_server.connect(db) as conn:
        _load_platform(conn)
        before = facts(conn)
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()[0]
    assert before["compressed"] > 0 and before["compressed"] < before["chunks"], before
    assert before["dimensions"] == 2 and before["caggs"] == 2 and len(before["jobs"]) == 3, before
    env = dict(local_repo_module.env, **pg_server.env())
    dsn = f"postgresql://{pg_server.user}@{pg_server.host}:{pg_server.port}/{db}"
    proc = run_cli(["backup", "postgres", "--dsn", dsn, "--checksums", "--json"], env, check=True)
    backup_id = json.loads(proc.stdout)["id"]
    yield Platform(pg_server, local_repo_module, db, backup_id, before, version)
    with pg_server.connect() as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (db + "%",))]
    for name in names:
        pg_server.drop_database(name)


def _load_platform(conn: psycopg.Connection) -> None:
    for statement in PLATFORM_SQL.split(";\n"):  # one by one: refresh_continuous_aggregate() is no-transaction
        if statement.strip():
            conn.execute(statement)


def _scheduler_runs_a_due_job(pg_server, db: str) -> None:
    """TimescaleDB's scheduler serves the database: a policy made due now runs within a minute."""
    with pg_server.connect(db) as conn:
        _due_job_runs(conn, db)


def _due_job_runs(conn: psycopg.Connection, db: str) -> None:
    """The continuous-aggregate refresh policy, made due now, runs successfully within a minute."""
    job = conn.execute(
        "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_refresh_continuous_aggregate'"
    ).fetchone()[0]
    conn.execute("SELECT alter_job(%s, next_start => now())", (job,))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT total_successes, last_run_status FROM timescaledb_information.job_stats WHERE job_id = %s",
            (job,),
        ).fetchone()
        if row and row[0] >= 1:
            assert row[1] == "Success"
            return
        time.sleep(1)
    pytest.fail(f"job {job} made due on {db} did not run within 60 s: the scheduler is not running there")


def test_backup_records_hypertables_not_their_chunks(platform):
    body = json.loads(run_cli(["show", platform.backup_id, "--json"], platform.env, check=True).stdout)
    source = body["source"]
    names = {f"{t['schema']}.{t['name']}": t for t in source["tables"]}
    assert names["public.metrics"]["hypertable"] and names["public.metrics"]["rows"] == platform.before["rows"]
    assert "sha256" in names["public.metrics"] and "sha256" in names["public.devices"]
    assert not [n for n in names if n.startswith("_timescaledb_internal._hyper_") or "compress" in n], names
    hyper = {h["table"]: h for h in source["timescaledb"]["hypertables"]}
    assert hyper["metrics"]["chunks"] == platform.before["chunks"]
    assert hyper["metrics"]["compressed_chunks"] == platform.before["compressed"]
    assert len(source["timescaledb"]["jobs"]) == 3


@pytest.mark.parametrize("jobs", [None, 2, 4], ids=["serial", "jobs2", "jobs4"])
def test_restore_into_a_new_database(platform, jobs):
    target = f"{platform.db}_{'serial' if jobs is None else f'j{jobs}'}"
    proc = platform.restore(target, *([] if jobs is None else ["--jobs", str(jobs)]), "--json")
    report = json.loads(proc.stdout)
    assert report["checksums_verified"] >= 4
    with platform.pg_server.connect(target) as conn:
        assert facts(conn) == platform.before
        assert conn.execute("SHOW timescaledb.restoring").fetchone()[0] == "off"
    _scheduler_runs_a_due_job(platform.pg_server, target)


def test_replace_keeps_a_safety_copy_and_jobs_run(platform):
    target = f"{platform.db}_live"
    platform.restore(target)
    with platform.pg_server.connect(target) as conn:
        conn.execute("DELETE FROM alerts WHERE id > 10")  # the mistake the replace undoes
    report = json.loads(platform.restore(target, "--replace", "--json").stdout)
    with platform.pg_server.connect(target) as conn:
        assert facts(conn) == platform.before
    with platform.pg_server.connect(report["safety_copy"]) as conn:
        assert conn.execute("SELECT count(*) FROM alerts").fetchone()[0] == 10
    _scheduler_runs_a_due_job(platform.pg_server, target)


@pytest.mark.parametrize("selection", [["--table", "public.metrics"], ["--schema", "public"]])
def test_selective_restore_of_a_hypertable_is_refused_naming_it(platform, selection):
    target = f"{platform.db}_sel_{selection[0][2:]}"
    proc = platform.restore(target, *selection, check=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0, err
    assert "public.metrics" in err and "hypertable" in err and len(err.strip().splitlines()) <= 2, err
    with platform.pg_server.connect() as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s", (target + "%",)).fetchone()[0]
    assert left == 0, "a refused restore creates no database"


def test_selective_restore_of_plain_tables_and_a_schema(platform):
    target = f"{platform.db}_plain"
    proc = platform.restore(target, "--table", "public.alerts", "--table", "public.devices", "--json")
    report = json.loads(proc.stdout)
    assert report["rows_verified"] == 60
    with platform.pg_server.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM alerts").fetchone()[0] == 50
        conn.execute("INSERT INTO alerts (device_id, raised_at) VALUES (1, now())")  # its sequence came along
    target = f"{platform.db}_schema"
    platform.restore(target, "--schema", "inventory", "--table", "public.devices")
    with platform.pg_server.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM inventory.parts").fetchone()[0] == 30


def test_target_without_the_backups_extension_version_is_refused_before_loading(platform, pg_server, monkeypatch):
    """The restored database's extension version must be the dump's: both versions and the fix are named."""
    from seedvault.ops.postgres_restore import RestoreOptions, _Restore
    from seedvault.sources.postgres.connection import PgTarget

    monkeypatch.setenv("PGPASSFILE", str(pg_server.pgpass_file))
    target = PgTarget.from_dsn(platform.dsn(f"{platform.db}_never"))
    job = _Restore(platform.repo.repository(), platform.backup_id, target, RestoreOptions(), None)
    job.timescale = dict(job.timescale, version="2.1.0")
    with pg_server.connect() as admin, pytest.raises(TargetError) as caught:
        job.preflight(admin)
    message = caught.value.one_line()
    assert "2.1.0" in message and platform.version in message and "install" in message, message


def test_target_without_the_extension_version_is_refused(pg_server, pg_db, local_repo, monkeypatch):
    """Runs everywhere: a backup that needs a TimescaleDB version the target lacks is refused up front."""
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


def test_prefect_backup_and_restore_flows_with_their_defaults(platform, prefect_harness, tmp_path):
    """The nightly flow's defaults (checksums on) on compressed chunks, then restore-postgres: all as before."""
    from blocks import PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository
    from flows.backup_postgres import backup_postgres_flow
    from flows.restore_postgres import restore_postgres_flow
    from seedvault.crypto.keys import generate_raw_key

    server = platform.pg_server
    SeedvaultRepository(local_path=str(tmp_path / "repo")).save("ts-repo", overwrite=True)
    SeedvaultEncryptionKey(kind="raw", value=generate_raw_key()).save("ts-key", overwrite=True)
    PostgresTarget(
        host=server.host, port=server.port, user=server.user, password=server.password, database=platform.db
    ).save("ts-source", overwrite=True)
    params = {"repository": "ts-repo", "key": "ts-key", "target": "ts-source"}
    backup = backup_postgres_flow(**params, retry_delay_seconds=0)
    assert backup["table_rows"]["public.metrics"] == platform.before["rows"]
    target = f"{platform.db}_flow"
    report = restore_postgres_flow(**params, database=target)
    assert report["backup_id"] == backup["id"] and report["checksums_verified"] >= 4
    with server.connect(target) as conn:
        assert facts(conn) == platform.before
    _scheduler_runs_a_due_job(server, target)


def test_point_in_time_recovery_of_the_platform(wal_env):
    """PITR to a time between two batches: rows, chunks (compressed ones too), aggregates and jobs as at that
    time, and the scheduler runs a due job on the recovered server."""
    env = wal_env
    if not env.primary.binaries.has_extension("timescaledb"):
        pytest.skip(f"timescaledb is not installed for the WAL test server ({env.primary.binaries.bindir})")
    db = f"tsp_{uuid.uuid4().hex[:6]}"
    with env.connect() as conn:
        conn.execute(f"CREATE DATABASE {db}")

    def connect(cluster=None) -> psycopg.Connection:
        c = cluster or env.primary
        return psycopg.connect(c.conninfo(db), passfile=str(env.pgpass), autocommit=True, connect_timeout=10)

    with connect() as conn:
        _load_platform(conn)
    env.cli("backup", "postgres-base", "--dsn", env.dsn(), "--json")
    later = (
        "INSERT INTO metrics SELECT timestamptz '2026-11-20' + g * interval '1 minute', g %% 10, %s"
        " FROM generate_series(1, 500) g"
    )
    with connect() as conn:
        conn.execute(later, (1.0,))
        conn.execute(
            "SELECT compress_chunk(c, if_not_compressed => true)"
            " FROM show_chunks('metrics', older_than => timestamptz '2026-11-10') c"
        )
        conn.execute("CALL refresh_continuous_aggregate('metrics_hourly', NULL, NULL)")
        at_target = facts(conn)
        time.sleep(0.3)
        target = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(0.3)
        conn.execute(later, (2.0,))
        conn.execute("DELETE FROM alerts")
    env.wait_archived()
    data = env.new_dir()
    env.cli("restore", "postgres-pitr", "--data-dir", str(data), "--to-time", target.isoformat(), "--json")
    from seedvault.sources.postgres.cluster import LocalCluster

    recovered = LocalCluster(data)
    try:
        with connect(recovered) as conn:
            assert facts(conn) == at_target
            assert at_target["compressed"] > 0 and at_target["alerts"] == 50
            _due_job_runs(conn, db)
    finally:
        recovered.stop()
