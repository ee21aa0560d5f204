"""Platform groups on a real PostgreSQL archiving to an S3 endpoint, with the fake ``neo4j-admin`` as the graph.

Two writers run through every group backup here, as the platform's applications do:

* the time-series ingest inserts into ``metrics`` as fast as it can, one row per transaction, and records
  ``pg_current_wal_insert_lsn()`` right after each insert (inside its transaction);
* the application writes each ``readings`` row to PostgreSQL and then the same id and timestamp to the graph
  (the fake store, one line per write), retrying the graph while it is stopped.

The restore point is made under SHARE locks on every table, so an insert either finished before it (and its
transaction committed before the snapshot) or ran after the locks went (its LSN is past the restore point): the
recovered ``metrics`` must be exactly the rows whose insert LSN is below the restore point's LSN.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from seedvault.sources.postgres.cluster import LocalCluster
from seedvault.sources.postgres.wal import names as wn
from tests.fixtures import fake_neo4j
from tests.fixtures.walenv import WalEnv, boto3_client, list_all

DB = "neo4j"
HISTORY = 6 * 24 * 60  # rows of history in metrics, one a minute over six days (ids -1 .. -HISTORY)
FAKE = Path(fake_neo4j.__file__)
SERVICE = ["--stop-command", f"fake-neo4j stop {DB}", "--start-command", f"fake-neo4j start {DB}"]


class Graph:
    """The fake Neo4j: its state directory, its commands on PATH."""

    def __init__(self, root: Path) -> None:
        self.state = root / "neo4j-state"
        self.state.mkdir(parents=True)
        (self.state / "version").write_text("5.26.1")
        (self.state / "edition").write_text("community")
        (self.state / f"store-{DB}").write_text("")
        (self.state / f"running-{DB}").touch()
        self.bindir = root / "bin"
        self.bindir.mkdir()
        for name, extra in (("neo4j-admin", ""), ("fake-neo4j", " --service")):
            script = self.bindir / name
            script.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE}{extra} "$@"\n')
            script.chmod(0o755)

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bindir}:{os.environ['PATH']}", fake_neo4j.STATE_ENV: str(self.state)}

    def ids(self) -> list[int]:
        return [int(line.split()[0]) for line in (self.state / f"store-{DB}").read_text().splitlines() if line]

    def running(self) -> bool:
        return (self.state / f"running-{DB}").exists()

    def events(self) -> list[list[str]]:
        path = self.state / "events.log"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


class Writers:
    """The two writers of the module docstring, in threads, until stopped."""

    def __init__(self, env: WalEnv, graph: Graph) -> None:
        self.env, self.graph = env, graph
        self.metrics: list[tuple[int, int]] = []  # (id, insert LSN)
        self.readings: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._guard, args=(f,)) for f in (self._ingest, self._app)]

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        assert not self.errors, self.errors

    def _guard(self, fn) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - surfaced in __exit__
            self.errors.append(exc)

    def _ingest(self) -> None:
        with self.env.connect() as conn:
            start = conn.execute("SELECT greatest(max(id), 0) FROM metrics").fetchone()[0]
            i = start
            while not self._stop.is_set():
                i += 1
                with conn.transaction():
                    lsn = conn.execute(
                        "INSERT INTO metrics VALUES (%s, clock_timestamp(), random())"
                        " RETURNING pg_current_wal_insert_lsn()::text",
                        (i,),
                    ).fetchone()[0]
                self.metrics.append((i, wn.parse_lsn(lsn)))
                time.sleep(0.002)

    def _app(self) -> None:
        with self.env.connect() as conn:
            i = conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0]
            while not self._stop.is_set():
                i += 1
                ts = conn.execute("INSERT INTO readings VALUES (%s, clock_timestamp()) RETURNING ts::text", (i,))
                stamp = ts.fetchone()[0]
                while not fake_neo4j.app_write(self.graph.state, DB, f"{i} {stamp}"):
                    if self._stop.is_set():
                        return
                    time.sleep(0.01)  # the graph is down: the application waits for it
                self.readings.append(i)
                time.sleep(0.01)


def run(env: WalEnv, graph: Graph, *args: str, extra: dict[str, str] | None = None, timeout: float = 300):
    full = {**env.cli_env(), **graph.env(), **(extra or {})}
    full.pop("NEO4J_HOME", None)
    full.pop("NEO4J_CONF", None)
    return subprocess.run([sys.executable, "-m", "seedvault.cli.app", *args], env=full, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def platform(wal_env: WalEnv, tmp_path_factory) -> dict:
    env = wal_env
    graph = Graph(tmp_path_factory.mktemp("platform"))
    timescale = env.primary.binaries.has_extension("timescaledb")
    with env.connect() as conn:
        conn.execute("CREATE TABLE metrics (id bigint, ts timestamptz NOT NULL, v float8, PRIMARY KEY (id, ts))")
        if timescale:  # the platform's time series: a hypertable, its older chunks compressed
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.execute("SELECT create_hypertable('metrics', 'ts', chunk_time_interval => interval '1 day')")
            conn.execute(
                "ALTER TABLE metrics SET (timescaledb.compress, timescaledb.compress_segmentby = '',"
                " timescaledb.compress_orderby = 'ts, id')"
            )
        conn.execute(
            "INSERT INTO metrics SELECT -g, now() - interval '6 days' + g * interval '1 minute', g"
            " FROM generate_series(1, %s) g",
            (HISTORY,),
        )
        if timescale:
            conn.execute("SELECT compress_chunk(c) FROM show_chunks('metrics', older_than => interval '2 days') c")
        conn.execute("CREATE TABLE readings (id bigint PRIMARY KEY, ts timestamptz NOT NULL)")
        conn.execute("CREATE UNLOGGED TABLE scratch (id int)")  # a recovery brings it back empty: not recorded
        conn.execute("INSERT INTO scratch SELECT generate_series(1, 10)")
    base = json.loads(env.cli("backup", "postgres-base", "--dsn", env.dsn(), "--json").stdout)
    with Writers(env, graph) as writers:
        time.sleep(1.0)
        proc = run(env, graph, "backup", "platform", "--pg-dsn", env.dsn(), *SERVICE, "--json")
        time.sleep(1.0)
    assert proc.returncode == 0, proc.stderr
    group = json.loads(proc.stdout)
    return {"env": env, "graph": graph, "base": base, "group": group, "writers": writers, "timescale": timescale}


def test_a_group_records_both_sides_and_a_zero_skew_for_a_dump(platform: dict) -> None:
    g, base = platform["group"], platform["base"]
    rp = g["restore_point"]
    assert g["neo4j_mode"] == "dump" and g["base_backup"] == base["id"]
    assert rp["system_id"] == base["system_id"] and rp["timeline"] == 1 and rp["name"].startswith("seedvault-")
    assert g["skew_seconds"] == 0 and g["skew_bound_seconds"] == 0
    assert g["tables"] == 3 and g["rows"] > 0  # ev, metrics, readings; the unlogged table is not recorded
    env = platform["env"]
    listed = json.loads(env.cli("list", "--json").stdout)
    kinds = {b["id"]: b["kind"] for b in listed}
    assert kinds[g["id"]] == "platform" and kinds[g["neo4j_backup"]] == "neo4j"
    verify = env.cli("verify", g["id"], check=False)
    assert verify.returncode == 0, verify.stderr
    events = platform["graph"].events()
    assert events[:2] == [["stop", DB], ["start", DB]]  # stopped once, started again


def test_restore_platform_gives_exactly_the_rows_up_to_the_restore_point(platform: dict) -> None:
    env, graph, g, writers = platform["env"], platform["graph"], platform["group"], platform["writers"]
    rp_lsn = wn.parse_lsn(g["restore_point"]["lsn"])
    before = {i for i, lsn in writers.metrics if lsn < rp_lsn}
    after = {i for i, lsn in writers.metrics if lsn >= rp_lsn}
    assert len(before) > 10 and len(after) > 10, (len(before), len(after))  # writes on both sides of the point
    (graph.state / f"store-{DB}").write_text("999999 lost\n")  # the graph as the disaster left it
    data = env.new_dir()
    proc = run(env, graph, "restore", "platform", g["id"], "--data-dir", str(data), *SERVICE, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    cluster = LocalCluster(data, port=report["postgres"]["port"])
    try:
        with psycopg.connect(cluster.conninfo("postgres"), passfile=str(env.pgpass), autocommit=True) as conn:
            metrics = {r[0] for r in conn.execute("SELECT id FROM metrics WHERE id > 0")}
            history = conn.execute("SELECT count(*) FROM metrics WHERE id < 0").fetchone()[0]
            chunks = (
                conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE is_compressed) FROM timescaledb_information.chunks"
                    " WHERE hypertable_name = 'metrics'"
                ).fetchone()
                if platform["timescale"]
                else None
            )
            readings = {r[0] for r in conn.execute("SELECT id FROM readings")}
            scratch = conn.execute("SELECT count(*) FROM scratch").fetchone()[0]
        assert metrics == before  # exactly the inserts that finished before the restore point
        assert history == HISTORY
        if chunks is not None:  # TimescaleDB: every chunk back, the compressed ones still compressed
            assert chunks[0] >= 6 and chunks[1] >= 3, chunks
        assert scratch == 0
        graph_ids = set(graph.ids())
        assert 999999 not in graph_ids and graph_ids  # the graph is the group's again
        # The application writes PostgreSQL first, then the graph: at one moment the graph holds every reading
        # but at most the one whose graph write was waiting for the stopped database.
        assert graph_ids <= readings and len(readings - graph_ids) <= 1, sorted(readings - graph_ids)
        v = report["postgres"]["verified"]
        assert v["tables"] == 3 and v["checksums"] == 3 and v["rows"] == g["rows"]
        assert report["moments"]["skew_seconds"] == 0 and report["moments"]["postgres_lsn"] == g["restore_point"]["lsn"]
        assert report["neo4j"]["safety_copy"]  # the lost graph was kept first
    finally:
        with contextlib.suppress(Exception):
            cluster.destroy()
    audit = json.loads(env.cli("audit", "--json").stdout)
    restores = [e for e in audit["events"] if e["operation"] == "restore" and g["id"] in e["backup_ids"]]
    assert restores and restores[-1]["result"] == "ok"


def test_a_group_whose_wal_has_a_gap_is_refused_before_anything_is_touched(platform: dict) -> None:
    env, graph, g = platform["env"], platform["graph"], platform["group"]
    client = boto3_client(env)
    first = platform["base"]["wal"][0]
    segs = sorted(
        item["Key"] for item in list_all(client, env.bucket, "repo/v1/wal/")
        if len(name := item["Key"].rsplit("/", 1)[-1]) == 24 and first <= name <= g["restore_point"]["segment"]
    )  # fmt: skip
    assert len(segs) >= 2, "the base backup's and the restore point's segments"
    victim = segs[len(segs) // 2]
    saved = client.get_object(Bucket=env.bucket, Key=victim)["Body"].read()
    store = (graph.state / f"store-{DB}").read_bytes()
    events = len(graph.events())
    data = env.new_dir()
    client.delete_object(Bucket=env.bucket, Key=victim)
    try:
        proc = run(env, graph, "restore", "platform", g["id"], "--data-dir", str(data), *SERVICE)
    finally:
        client.put_object(Bucket=env.bucket, Key=victim, Body=saved)
    assert proc.returncode == 25, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and victim.rsplit("/", 1)[-1] in lines[0], lines
    assert not data.exists() and (graph.state / f"store-{DB}").read_bytes() == store and len(graph.events()) == events
    bad = run(env, graph, "verify", g["id"])
    assert bad.returncode == 0, bad.stderr  # the segment is back: the group is whole again


def test_export_mode_is_refused_for_a_group_while_writes_go_on(platform: dict) -> None:
    env, graph = platform["env"], platform["graph"]
    proc = run(env, graph, "backup", "platform", "--pg-dsn", env.dsn(), "--mode", "export")
    assert proc.returncode == 3 and "no point in time" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "point",
    ["platform-restore-point", "platform-neo4j-committed", "platform-wal-archived", "key-object-written:2",
     "data-complete:2", "manifest-writing:2"],
)  # fmt: skip
def test_kill_9_during_backup_platform_never_lists_an_incomplete_group(platform: dict, point: str) -> None:
    env, graph = platform["env"], platform["graph"]
    before = {b["id"] for b in json.loads(env.cli("list", "--json").stdout) if b["kind"] == "platform"}
    proc = run(env, graph, "backup", "platform", "--pg-dsn", env.dsn(), *SERVICE,
               extra={"SEEDVAULT_FAULT_KILL_AT": point})  # fmt: skip
    assert proc.returncode == -9, (proc.returncode, proc.stderr)
    if not graph.running():  # killed while the graph was stopped for its dump: the operator starts it
        subprocess.run(["fake-neo4j", "start", DB], env={**os.environ, **graph.env()}, check=True)
    groups = [b for b in json.loads(env.cli("list", "--json").stdout) if b["kind"] == "platform"]
    assert {b["id"] for b in groups} == before, point  # the killed run's group is not listed
    for b in groups:
        assert env.cli("verify", b["id"], check=False).returncode == 0
    cleanup = env.cli("cleanup", "--grace", "0", check=False)
    assert cleanup.returncode == 0, cleanup.stderr


def test_a_groups_members_cannot_be_deleted_while_it_exists(platform: dict) -> None:
    env, g = platform["env"], platform["group"]
    for member in (g["neo4j_backup"], g["base_backup"]):
        proc = env.cli("delete", member, "--yes", check=False)
        assert proc.returncode == 2 and f"member of platform group {g['id']}" in proc.stderr, proc.stderr


def test_the_group_is_taken_over_timescaledb_hypertables(platform: dict) -> None:
    """Where TimescaleDB is installed the time series above are a hypertable with compressed chunks."""
    if not platform["timescale"]:
        pytest.skip(f"timescaledb is not installed for the WAL test server ({platform['env'].primary.binaries.bindir})")
    env, g = platform["env"], platform["group"]
    body = json.loads(env.cli("show", g["id"], "--json").stdout)
    assert body["kind"] == "platform" and body["source"]["postgres"]["checksums"] is True
    tables = {t["name"]: t for t in json.loads(env.cli("get", g["id"], "--object", "postgres-tables.json").stdout)}
    assert set(tables) == {"ev", "metrics", "readings"}  # no chunk listed: counted through the hypertable
    assert tables["metrics"].get("hypertable") is True and tables["metrics"]["rows"] > HISTORY
    assert "sha256" in tables["metrics"]


def test_an_online_backup_group_reports_its_skew_within_the_bound(platform: dict) -> None:
    """Enterprise (the fake's online backup): the restore point follows the backup; skew <= bound, both > 0."""
    env, graph = platform["env"], platform["graph"]
    (graph.state / "edition").write_text("enterprise")
    try:
        proc = run(env, graph, "backup", "platform", "--pg-dsn", env.dsn(), "--mode", "online", "--json")
    finally:
        (graph.state / "edition").write_text("community")
    assert proc.returncode == 0, proc.stderr
    g = json.loads(proc.stdout)
    assert (
        g["neo4j_mode"] == "online"
        and 0 <= g["skew_seconds"] <= g["skew_bound_seconds"]
        and g["skew_bound_seconds"] > 0
    )
    assert env.cli("verify", g["id"], check=False).returncode == 0


def test_an_unreachable_postgresql_stops_nothing_and_writes_nothing(platform: dict) -> None:
    env, graph = platform["env"], platform["graph"]
    before = len(graph.events())
    listed = len(json.loads(env.cli("list", "--json").stdout))
    proc = run(env, graph, "backup", "platform", "--pg-dsn", "postgresql://postgres@127.0.0.1:1/postgres", *SERVICE)
    assert proc.returncode == 52, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot connect to PostgreSQL" in proc.stderr
    assert len(graph.events()) == before and graph.running()  # the graph was never stopped
    assert len(json.loads(env.cli("list", "--json").stdout)) == listed
