"""A platform group over a real Neo4j server (``NEO4J_HOME``) and a real PostgreSQL archiving to an S3 endpoint.

The application writes each reading to PostgreSQL and then, with the same id and timestamp, as a node to the
graph over Bolt (retrying while the graph is stopped for its dump); the ingest writes PostgreSQL only, as fast as
it can. ``restore platform`` must give PostgreSQL exactly the ingest rows whose insert finished before the
restore point, the graph back as the dump had it (counts verified over Bolt), and the two stores one moment
apart by at most the application's one in-flight write. Without ``NEO4J_HOME`` the module skips, saying so.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time

import psycopg

from seedvault.sources.postgres.cluster import LocalCluster
from seedvault.sources.postgres.wal import names as wn
from tests.fixtures.walenv import WalEnv
from tests.integration.test_neo4j_server import Server, server  # noqa: F401 - the module's Neo4j server fixture


class Writers:
    def __init__(self, env: WalEnv, graph: Server) -> None:
        self.env, self.graph = env, graph
        self.metrics: list[tuple[int, int]] = []
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
            t.join(timeout=120)
        assert not self.errors, self.errors

    def _guard(self, fn) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - surfaced in __exit__
            self.errors.append(exc)

    def _ingest(self) -> None:
        with self.env.connect() as conn:
            i = 0
            while not self._stop.is_set():
                i += 1
                with conn.transaction():
                    lsn = conn.execute(
                        "INSERT INTO metrics VALUES (%s, clock_timestamp())"
                        " RETURNING pg_current_wal_insert_lsn()::text",
                        (i,),
                    ).fetchone()[0]
                self.metrics.append((i, wn.parse_lsn(lsn)))
                time.sleep(0.002)

    def _app(self) -> None:
        import neo4j

        with self.env.connect() as conn:
            i = 0
            while not self._stop.is_set():
                i += 1
                stamp = conn.execute("INSERT INTO readings VALUES (%s, clock_timestamp()) RETURNING ts::text", (i,))
                ts = stamp.fetchone()[0]
                while True:
                    try:
                        with self.graph.driver() as d, d.session(database="neo4j") as s:
                            s.run("CREATE (:Reading {id: $i, ts: $ts})", i=i, ts=ts).consume()
                        break
                    except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError):
                        if self._stop.is_set():
                            return
                        time.sleep(0.2)  # the graph is stopped for its dump: the application waits
                time.sleep(0.02)


def _run(env: WalEnv, graph: Server, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    full = graph.cli_env(env.cli_env())
    return subprocess.run([sys.executable, "-m", "seedvault.cli.app", *args], env=full, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_restore_platform_over_a_real_neo4j_gives_one_moment(server: Server, wal_env: WalEnv) -> None:  # noqa: F811
    env, graph = wal_env, server
    with env.connect() as conn:
        conn.execute("CREATE TABLE metrics (id bigint PRIMARY KEY, ts timestamptz NOT NULL)")
        conn.execute("CREATE TABLE readings (id bigint PRIMARY KEY, ts timestamptz NOT NULL)")
    graph.query("MATCH (n) DETACH DELETE n")
    env.cli("backup", "postgres-base", "--dsn", env.dsn(), "--json")
    neo4j_args = ["--uri", graph.uri, *graph.service()]
    with Writers(env, graph) as writers:
        time.sleep(2.0)
        proc = _run(env, graph, "backup", "platform", "--pg-dsn", env.dsn(), *neo4j_args, "--json")
        time.sleep(1.0)
    assert proc.returncode == 0, proc.stderr
    group = json.loads(proc.stdout)
    assert group["neo4j_mode"] == "dump" and group["skew_seconds"] == 0
    graph.wait_serving()
    graph.query("MATCH (n) DETACH DELETE n")  # the disaster
    data = env.new_dir()
    back = _run(env, graph, "restore", "platform", group["id"], "--data-dir", str(data), *neo4j_args, "--json")
    assert back.returncode == 0, back.stderr
    report = json.loads(back.stdout)
    assert report["neo4j"]["counts"] is not None and report["neo4j"]["safety_copy"]
    cluster = LocalCluster(data, port=report["postgres"]["port"])
    try:
        with psycopg.connect(cluster.conninfo("postgres"), passfile=str(env.pgpass), autocommit=True) as conn:
            metrics = {r[0] for r in conn.execute("SELECT id FROM metrics")}
            readings = {r[0] for r in conn.execute("SELECT id FROM readings")}
    finally:
        with contextlib.suppress(Exception):
            cluster.destroy()
    rp = wn.parse_lsn(group["restore_point"]["lsn"])
    assert metrics == {i for i, lsn in writers.metrics if lsn < rp}
    nodes = {r["id"] for r in graph.query("MATCH (r:Reading) RETURN r.id AS id")}
    assert nodes and nodes <= readings and len(readings - nodes) <= 1, sorted(readings - nodes)
