"""Offline dump and load of a real Neo4j server through the CLI: stop/start commands, readiness, error paths.

Needs a Neo4j install in ``NEO4J_HOME`` (Community or Enterprise, 5.x): the tests run their own server from it,
with conf, data, logs and run directories of their own, on free loopback ports, with authentication on.
``bin/neo4j start`` returns before the server answers, which is exactly what an operator's start command
does; the stop and start commands the tests hand seedvault are small scripts around ``bin/neo4j``.
Without ``NEO4J_HOME`` every test here skips, saying so.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import run_cli

START_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    home: Path
    base: Path
    conf: Path
    bolt_port: int
    password: str = field(repr=False)
    env: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def uri(self) -> str:
        return f"bolt://127.0.0.1:{self.bolt_port}"

    def script(self, name: str) -> str:
        return str(self.base / "bin" / name)

    def neo4j(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.home / "bin" / "neo4j"), *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"neo4j {' '.join(args)}: {proc.stdout[-500:]} {proc.stderr[-500:]}")
        return proc

    def driver(self):
        import neo4j

        return neo4j.GraphDatabase.driver(self.uri, auth=("neo4j", self.password))

    def serving(self) -> bool:
        try:
            with self.driver() as d, d.session(database="neo4j") as s:
                s.run("RETURN 1").consume()
            return True
        except Exception:
            return False

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.serving():
            assert time.monotonic() < deadline, f"Neo4j did not come up: {(self.base / 'logs').glob('*')}"
            time.sleep(0.5)

    def query(self, cypher: str, **params):
        with self.driver() as d, d.session(database="neo4j") as s:
            return [r.data() for r in s.run(cypher, params)]

    def cli_env(self, repo_env: dict[str, str], *, password: str | None = None) -> dict[str, str]:
        return dict(
            repo_env, NEO4J_HOME=str(self.home), NEO4J_CONF=str(self.conf), NEO4J_PASSWORD=password or self.password
        )

    def service(self) -> list[str]:
        return ["--stop-command", self.script("stop"), "--start-command", self.script("start")]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    home_text = os.environ.get("NEO4J_HOME")
    if not home_text:
        pytest.skip("NEO4J_HOME is not set: no Neo4j install to run a server from (Neo4j is not packaged here)")
    home = Path(home_text)
    if not (home / "bin" / "neo4j").exists() or not (home / "bin" / "neo4j-admin").exists():
        pytest.fail(f"NEO4J_HOME={home} has no bin/neo4j and bin/neo4j-admin")
    base = tmp_path_factory.mktemp("neo4j-server")
    conf = base / "conf"
    shutil.copytree(home / "conf", conf)
    bolt, http = _free_port(), _free_port()
    settings = {
        "server.default_listen_address": "127.0.0.1",
        "server.bolt.listen_address": f"127.0.0.1:{bolt}",
        "server.http.listen_address": f"127.0.0.1:{http}",
        "server.https.enabled": "false",
        "server.directories.data": str(base / "data"),
        "server.directories.logs": str(base / "logs"),
        "server.directories.run": str(base / "run"),
        "server.memory.heap.initial_size": "512m",
        "server.memory.heap.max_size": "512m",
        "server.memory.pagecache.size": "128m",
        "dbms.security.auth_enabled": "true",
    }
    conf_file = conf / "neo4j.conf"
    kept = [ln for ln in conf_file.read_text().splitlines() if ln.split("=", 1)[0].strip() not in settings]
    conf_file.write_text("\n".join(kept) + "\n" + "".join(f"{k}={v}\n" for k, v in settings.items()))
    password = "sv-neo4j-" + secrets.token_hex(8)
    env = dict(os.environ, NEO4J_HOME=str(home), NEO4J_CONF=str(conf))
    srv = Server(home, base, conf, bolt, password, env)
    # The initial password reaches neo4j-admin on stdin? It takes it as an argument only; a throwaway test value.
    subprocess.run(
        [str(home / "bin" / "neo4j-admin"), "dbms", "set-initial-password", password],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (base / "bin").mkdir()
    for verb in ("stop", "start"):
        script = base / "bin" / verb
        script.write_text(
            f"#!/bin/sh\nexport NEO4J_HOME='{home}' NEO4J_CONF='{conf}'\nexec '{home}/bin/neo4j' {verb}\n"
        )
        script.chmod(0o755)
    srv.neo4j("start")
    try:
        srv.wait_serving()
        yield srv
    finally:
        srv.neo4j("stop", check=False)


class DownWatch:
    """Polls Bolt in a thread; records each window in which the database did not serve."""

    def __init__(self, server: Server) -> None:
        self.server, self.windows, self._stop = server, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DownWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        down_since = None
        while not self._stop.is_set():
            up = self.server.serving()
            now = time.monotonic()
            if not up and down_since is None:
                down_since = now
            elif up and down_since is not None:
                self.windows.append(now - down_since)
                down_since = None
            time.sleep(0.2)


GRAPH = [
    "UNWIND range(1, 300) AS i CREATE (:Person {id: i, name: 'p' + i, home: point({x: i, y: -i}),"
    " seen: point({longitude: 10.5, latitude: i / 10.0})})",
    "MATCH (a:Person), (b:Person) WHERE b.id = a.id + 1 CREATE (a)-[:KNOWS {since: 2000 + a.id % 20}]->(b)",
]


@pytest.fixture(scope="module")
def graph(server: Server) -> Server:
    server.query("MATCH (n) DETACH DELETE n")
    for statement in GRAPH:
        server.query(statement)
    server.query("CREATE POINT INDEX person_home IF NOT EXISTS FOR (p:Person) ON (p.home)")
    server.query("CREATE CONSTRAINT person_id IF NOT EXISTS FOR (p:Person) REQUIRE p.id IS UNIQUE")
    server.query("CALL db.awaitIndexes(120)")
    return server


def _backup(server: Server, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return run_cli(["backup", "neo4j", "--uri", server.uri, *server.service(), "--json", *extra], env, timeout=600)


def test_offline_dump_and_restore_with_a_point_index_downtime_until_serving(graph: Server, local_repo):
    env = graph.cli_env(local_repo.env)
    with DownWatch(graph) as watch:
        proc = _backup(graph, env)
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    # The POINT index's configuration (floats) is recorded in the manifest's counts.
    indexes = {i["name"]: i for i in summary["counts"]["indexes"]}
    assert indexes["person_home"]["type"] == "POINT" and summary["counts"]["labels"]["Person"] == 300
    assert len(watch.windows) == 1, watch.windows
    assert summary["downtime_seconds"] >= watch.windows[0] - 0.5, (summary["downtime_seconds"], watch.windows)
    body = json.loads(run_cli(["show", summary["id"], "--json"], env, check=True).stdout)
    assert body["source"]["downtime_until"] == "serving"

    graph.query("MATCH (p:Person) WHERE p.id > 100 DETACH DELETE p")  # the mistake the restore undoes
    with DownWatch(graph) as watch:
        proc = run_cli(
            ["restore", "neo4j", summary["id"], "--uri", graph.uri, *graph.service(), "--json"], env, timeout=600
        )
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert "Connection refused" not in stderr and "routing" not in stderr, stderr
    report = json.loads(proc.stdout)
    assert report["safety_copy"] and report["downtime_until"] == "serving"
    assert len(watch.windows) == 1, f"one stop for the safety copy and the load, not a restart between: {watch.windows}"
    assert report["downtime"] >= watch.windows[0] - 0.5
    assert graph.query("MATCH (p:Person) RETURN count(p) AS c")[0]["c"] == 300
    assert graph.query("MATCH ()-[r:KNOWS]->() RETURN count(r) AS c")[0]["c"] == 299


def test_a_dump_of_a_database_in_use_names_the_cause(graph: Server, local_repo):
    """A stop command that does not stop the server: neo4j-admin's reason is shown, and the database serves."""
    env = graph.cli_env(local_repo.env)
    proc = run_cli(
        ["backup", "neo4j", "--uri", graph.uri, "--stop-command", "true", "--start-command", "true"], env, timeout=600
    )
    err = proc.stderr.decode()
    assert proc.returncode == 50, err
    assert "in use" in err.lower() and len(err.strip().splitlines()) == 1, err
    assert graph.serving()


def test_a_failing_stop_command_starts_nothing_and_leaves_the_server_running(graph: Server, local_repo):
    env = graph.cli_env(local_repo.env)
    proc = run_cli(
        ["backup", "neo4j", "--uri", graph.uri, "--stop-command", "false", "--start-command", graph.script("start")],
        env,
        timeout=600,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 50, err  # not 57 "left stopped": it never stopped
    assert "nothing was dumped and it still serves" in err and len(err.strip().splitlines()) == 1, err
    assert graph.serving()
    assert run_cli(["list", "--json"], env, check=True).stdout.strip() in (b"[]", b""), "no backup listed"


def test_restore_into_a_database_community_cannot_have_is_refused(graph: Server, local_repo):
    env = graph.cli_env(local_repo.env)
    summary = json.loads(_backup(graph, env).stdout)
    edition = graph.query("CALL dbms.components() YIELD edition RETURN edition")[0]["edition"]
    if edition.lower() != "community":
        pytest.skip("an Enterprise server can create the database")
    for extra in (["--uri", graph.uri], []):
        proc = run_cli(
            ["restore", "neo4j", summary["id"], "--database", "nosuch", *graph.service(), *extra], env, timeout=600
        )
        err = proc.stderr.decode()
        assert proc.returncode == 51 and "nosuch" in err and len(err.strip().splitlines()) == 1, err
    assert not (graph.base / "data" / "databases" / "nosuch").exists()
    assert graph.serving()


def test_wrong_password_and_server_down_are_one_line_without_the_password(graph: Server, local_repo):
    wrong = "wrong-" + secrets.token_hex(6)
    env = graph.cli_env(local_repo.env, password=wrong)
    codes = []
    for _ in range(4):  # Neo4j rate-limits logins after repeated failures: still "refused", never a crash
        proc = run_cli(["backup", "neo4j", "--uri", graph.uri, *graph.service()], env, timeout=300)
        err = proc.stderr.decode()
        assert wrong not in err and graph.password not in err and len(err.strip().splitlines()) == 1, err
        codes.append(proc.returncode)
    assert set(codes) == {56}, codes
    graph.wait_serving()  # the right password works again once the rate limit's lock (5 s) has passed
    port = _free_port()
    proc = run_cli(["backup", "neo4j", "--uri", f"bolt://127.0.0.1:{port}", *graph.service()], env, timeout=300)
    assert proc.returncode == 52 and len(proc.stderr.decode().strip().splitlines()) == 1, proc.stderr
